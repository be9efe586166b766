"""``client.tasks``: running containers (the Tasks service) and their processes.

A task is a container's init process, run by a shim; more processes join it
with :meth:`Task.exec`. The lifecycle, as containerd's client drives it::

    task = await container.new_task(cio.with_streams(stdout=sys.stdout.buffer))  # Tasks.Create
    waiter = asyncio.ensure_future(task.wait())     # Tasks.Wait, sent before Start as ctr does
    await task.start()                              # Tasks.Start
    status = await waiter                           # ExitStatus(code, exited_at)
    await task.delete()                             # Tasks.Delete (after the output is copied)

:class:`Process` covers what an exec'd process and the task share (start,
wait, kill, resize, close_io, status, delete); :class:`Task` adds pause,
resume, pids, metrics, update and exec. ``client.tasks`` lists tasks and
loads one without attaching to its I/O (containerd's ``cio.Load``).
Errors are :mod:`aiocontainerd.errors` classes: NotFound (no task or
process), FailedPrecondition (wrong state, e.g. deleting a running task),
AlreadyExists (an exec id in use).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import signal as signals
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from grpclib.client import Channel

from ..api.containerd import types as ctypes
from ..api.containerd.services.tasks import v1 as tasks_api
from ..api.containerd.v1 import types as v1types
from ..api.google import protobuf as pb
from ..errors import FailedPrecondition, NotFound
from . import cio
from .images import _call

if TYPE_CHECKING:
    from .containers import Container

#: what containerd reports when a process's exit status is not known
UNKNOWN_EXIT_STATUS = 255
PROCESS_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


def _time(ts: pb.Timestamp | None) -> datetime.datetime | None:
    if ts is None or (ts.seconds <= 0 and ts.nanos == 0):
        return None
    return datetime.datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, datetime.UTC)


@dataclasses.dataclass(frozen=True)
class ExitStatus:
    """How a process ended: ``code`` (128+signal for a killed one, as shims report) and when."""

    code: int
    exited_at: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class ProcessStatus:
    """A process as the Tasks service describes it (``containerd.v1.types.Process``).

    ``status`` is ``CREATED``, ``RUNNING``, ``STOPPED``, ``PAUSED``, ``PAUSING`` or ``UNKNOWN``.
    """

    container_id: str
    id: str
    pid: int
    status: str
    exit_status: int = 0
    exited_at: datetime.datetime | None = None
    terminal: bool = False
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""

    @classmethod
    def from_wire(cls, p: v1types.Process) -> ProcessStatus:
        try:
            status = v1types.Status(p.status).name or "UNKNOWN"
        except ValueError:
            status = "UNKNOWN"
        return cls(p.container_id, p.id, p.pid, status, p.exit_status, _time(p.exited_at), p.terminal,
                   p.stdin, p.stdout, p.stderr)


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """One pid of a task (``ListPids``); ``info`` is the shim's extra data ``Any`` or None."""

    pid: int
    info: pb.Any | None = None


def _signal(sig: int | str) -> int:
    """``9``, ``SIGKILL`` or ``KILL`` as a number (ValueError when unknown)."""
    if isinstance(sig, int):
        return sig
    text = sig.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signals.Signals[text])
    except KeyError:
        raise ValueError(f"unknown signal {sig!r}") from None


class Process:
    """A process of a task: the task itself (``exec_id`` empty) or an exec'd one."""

    def __init__(self, tasks: Tasks, container_id: str, exec_id: str, pid: int,
                 io: cio.IO | None) -> None:
        self._tasks = tasks
        self.container_id = container_id
        self.exec_id = exec_id
        self.pid = pid
        self.io = io
        self._stdin_closer: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.exec_id or self.container_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.id!r}, pid={self.pid})"

    async def start(self) -> int:
        """Start the process (Tasks.Start); returns its pid. When its stdin source ends, stdin
        is closed in the process too (CloseIO)."""
        try:
            r = await _call(self._tasks._stub.start(tasks_api.StartRequest(
                container_id=self.container_id, exec_id=self.exec_id)))
        except BaseException:
            if self.io is not None:
                await self.io.cancel()
                await self.io.close()
            raise
        self.pid = r.pid
        done = self.io.stdin_done if self.io is not None else None
        if done is not None:
            async def close_stdin() -> None:
                await done
                with contextlib.suppress(Exception):
                    await self.close_io(stdin=True)
            self._stdin_closer = asyncio.ensure_future(close_stdin())
        return self.pid

    async def wait(self) -> ExitStatus:
        """Wait for the process to exit (Tasks.Wait); returns at once if it has."""
        r = await _call(self._tasks._stub.wait(tasks_api.WaitRequest(
            container_id=self.container_id, exec_id=self.exec_id), timeout=None))
        return ExitStatus(r.exit_status, _time(r.exited_at))

    async def kill(self, sig: int | str = signals.SIGTERM, *, all: bool = False) -> None:
        """Send ``sig`` (number or name); ``all``: to every process of the task."""
        await _call(self._tasks._stub.kill(tasks_api.KillRequest(
            container_id=self.container_id, exec_id=self.exec_id, signal=_signal(sig), all=all)))

    async def resize(self, width: int, height: int) -> None:
        """Resize the process's terminal (Tasks.ResizePty)."""
        await _call(self._tasks._stub.resize_pty(tasks_api.ResizePtyRequest(
            container_id=self.container_id, exec_id=self.exec_id, width=width, height=height)))

    async def close_io(self, *, stdin: bool = True) -> None:
        """Close the process's stdin (Tasks.CloseIO): it reads EOF."""
        await _call(self._tasks._stub.close_io(tasks_api.CloseIoRequest(
            container_id=self.container_id, exec_id=self.exec_id, stdin=stdin)))

    async def status(self) -> ProcessStatus:
        """The process's state (Tasks.Get)."""
        r = await _call(self._tasks._stub.get(tasks_api.GetRequest(
            container_id=self.container_id, exec_id=self.exec_id)))
        return ProcessStatus.from_wire(r.process)

    async def _finish_io(self) -> None:
        if self._stdin_closer is not None and not self._stdin_closer.done():
            self._stdin_closer.cancel()
        if self.io is not None:
            await self.io.cancel()
            await self.io.wait()

    async def _close_io(self) -> None:
        if self.io is not None:
            await self.io.close()

    async def delete(self, *, force: bool = False) -> ExitStatus:
        """Delete the stopped process (Tasks.DeleteProcess) once its output is copied.

        ``force`` kills it first (SIGKILL) and waits. Raises FailedPrecondition
        when it is still running.
        """
        if force:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.kill(signals.SIGKILL)
            await self.wait()
        await self._finish_io()
        r = await _call(self._tasks._stub.delete_process(tasks_api.DeleteProcessRequest(
            container_id=self.container_id, exec_id=self.exec_id)))
        await self._close_io()
        return ExitStatus(r.exit_status, _time(r.exited_at))


class Task(Process):
    """A container's task (its init process; ``id`` is the container id)."""

    def __init__(self, tasks: Tasks, container_id: str, pid: int, io: cio.IO | None) -> None:
        super().__init__(tasks, container_id, "", pid, io)

    async def pause(self) -> None:
        """Freeze every process of the task."""
        await _call(self._tasks._stub.pause(tasks_api.PauseTaskRequest(container_id=self.container_id)))

    async def resume(self) -> None:
        await _call(self._tasks._stub.resume(tasks_api.ResumeTaskRequest(container_id=self.container_id)))

    async def pids(self) -> list[ProcessInfo]:
        """The task's processes (Tasks.ListPids)."""
        r = await _call(self._tasks._stub.list_pids(tasks_api.ListPidsRequest(
            container_id=self.container_id)))
        return [ProcessInfo(p.pid, p.info) for p in r.processes]

    async def metrics(self) -> ctypes.Metric:
        """The task's cgroup metrics (Tasks.Metrics ``id==<id>``): ``data`` is an ``Any`` of
        ``io.containerd.cgroups.v1.Metrics`` or ``…v2.Metrics``. Raises NotFound."""
        r = await _call(self._tasks._stub.metrics(tasks_api.MetricsRequest(
            filters=[f"id=={self.container_id}"])))
        if not r.metrics:
            raise NotFound(f"no metrics for task {self.container_id}")
        return r.metrics[0]

    async def update(self, resources: Mapping[str, Any],
                     annotations: Mapping[str, str] | None = None) -> None:
        """Change the task's resources (runtime-spec ``linux.resources`` object)."""
        value = pb.Any(type_url=RESOURCES_SPEC_TYPE_URL, value=json.dumps(dict(resources)).encode())
        await _call(self._tasks._stub.update(tasks_api.UpdateTaskRequest(
            container_id=self.container_id, resources=value, annotations=dict(annotations or {}))))

    async def exec(self, exec_id: str, process: Mapping[str, Any],
                   io: cio.IOCreator = cio.null_io) -> Process:
        """Add process ``exec_id`` (runtime-spec ``process`` object, e.g. the task's spec's
        process with other ``args``); start it with :meth:`Process.start`. Raises AlreadyExists."""
        pio = await io(exec_id)
        try:
            await _call(self._tasks._stub.exec(tasks_api.ExecProcessRequest(
                container_id=self.container_id, exec_id=exec_id, stdin=pio.config.stdin,
                stdout=pio.config.stdout, stderr=pio.config.stderr, terminal=pio.config.terminal,
                spec=pb.Any(type_url=PROCESS_SPEC_TYPE_URL, value=json.dumps(dict(process)).encode()))))
        except BaseException:
            await pio.cancel()
            await pio.close()
            raise
        return Process(self._tasks, self.container_id, exec_id, 0, pio)

    async def load_process(self, exec_id: str) -> Process:
        """An existing exec'd process, without its I/O. Raises NotFound."""
        p = await Process(self._tasks, self.container_id, exec_id, 0, None).status()
        return Process(self._tasks, self.container_id, exec_id, p.pid, None)

    async def delete(self, *, force: bool = False) -> ExitStatus:
        """Delete the task (Tasks.Delete) once its output is copied; the shim goes away.

        Like containerd's client, refuses (FailedPrecondition) unless the task is
        stopped; ``force`` kills every process (SIGKILL) and waits first.
        """
        if force:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await self.kill(signals.SIGKILL, all=True)
            with contextlib.suppress(NotFound):
                await self.wait()
        else:
            status = await self.status()
            if status.status not in ("STOPPED", "UNKNOWN"):
                raise FailedPrecondition(f"task must be stopped before deletion: {status.status.lower()}")
        await self._finish_io()
        r = await _call(self._tasks._stub.delete(tasks_api.DeleteTaskRequest(container_id=self.container_id)))
        await self._close_io()
        return ExitStatus(r.exit_status, _time(r.exited_at))


class Tasks:
    """The Tasks service of the client's namespace."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str], timeout: float | None = None) -> None:
        self._stub = tasks_api.TasksStub(channel, timeout=timeout, metadata=dict(metadata))

    async def create(self, container: Container, io: cio.IOCreator = cio.null_io, *,
                     runtime_options: pb.Any | None = None, runtime_path: str = "") -> Task:
        """Create ``container``'s task (Tasks.Create) with its snapshot's mounts as rootfs and
        the stdio ``io`` makes; the process does not run until :meth:`Task.start`.

        Raises NotFound (container or snapshot), AlreadyExists (a task exists).
        """
        from .containers import wire_mounts

        info = await container.info()
        rootfs = []
        if info.snapshotter and info.snapshot_key:
            rootfs = wire_mounts(await container._containers.mounts(info.snapshotter, info.snapshot_key))
        pio = await io(container.id)
        try:
            r = await _call(self._stub.create(tasks_api.CreateTaskRequest(
                container_id=container.id, rootfs=rootfs, stdin=pio.config.stdin,
                stdout=pio.config.stdout, stderr=pio.config.stderr, terminal=pio.config.terminal,
                options=runtime_options, runtime_path=runtime_path)))
        except BaseException:
            await pio.cancel()
            await pio.close()
            raise
        return Task(self, container.id, r.pid, pio)

    async def load(self, container_id: str) -> Task:
        """The task of ``container_id`` without attaching to its I/O. Raises NotFound."""
        r = await _call(self._stub.get(tasks_api.GetRequest(container_id=container_id)))
        return Task(self, container_id, r.process.pid, None)

    async def get(self, container_id: str, exec_id: str = "") -> ProcessStatus:
        """State of a task or one of its processes. Raises NotFound."""
        r = await _call(self._stub.get(tasks_api.GetRequest(container_id=container_id, exec_id=exec_id)))
        return ProcessStatus.from_wire(r.process)

    async def list(self, filter: str = "") -> list[ProcessStatus]:
        """Every task of the namespace (Tasks.List)."""
        r = await _call(self._stub.list(tasks_api.ListTasksRequest(filter=filter)))
        return [ProcessStatus.from_wire(p) for p in r.tasks]

    async def metrics(self, *filters: str) -> list[ctypes.Metric]:
        """Metrics of the tasks matching ``filters`` (e.g. ``id==c1``; none: all)."""
        r = await _call(self._stub.metrics(tasks_api.MetricsRequest(filters=list(filters))))
        return list(r.metrics)
