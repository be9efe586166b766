"""A connected shim serving one task: the ``containerd.task.v2.Task`` ttrpc client side.

One :class:`Shim` per task (containerd's ``shimTask``): its bundle, the binary
that started it, and a ttrpc connection to the address the shim printed.
Several tasks of one group may share one shim process; each still has its own
connection. Every call carries the namespace in ttrpc metadata
``containerd-namespace-ttrpc``; shim errors arrive as ContainerdError
subclasses (``errors.from_status``), a lost connection as ``ttrpc.Closed``.

Process calls take ``exec_id`` ("" = the task's init process), as the shim API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from typing import TypeVar

import betterproto2

from aiocontainerd import ttrpc
from aiocontainerd.api.containerd import types as ctypes
from aiocontainerd.api.containerd.task import v2 as taskapi
from aiocontainerd.api.containerd.v1 import types as ptypes
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.errors import DeadlineExceeded, NotFound

from .binary import ShimCommand, StartResult
from .bundle import LOG, Bundle

log = logging.getLogger(__name__)
M = TypeVar("M", bound=betterproto2.Message)

CONNECT_TIMEOUT = 10.0     # seconds to reach a freshly started shim's socket
SHUTDOWN_TIMEOUT = 3.0     # containerd's io.containerd.timeout.shim.shutdown
STATE_TIMEOUT = 2.0        # per State call when listing


class ShimLog:
    """The shim's log: ``<bundle>/log``, a FIFO the shim opens for writing as it starts (and
    fails to start without). Created and opened read-write, non-blocking, *before* the shim
    runs, as containerd does; what the shim writes is copied to our log line by line."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._fd: int | None = None
        self._pending = bytearray()

    @classmethod
    def open(cls, bundle: Bundle) -> ShimLog:
        """Create/open the FIFO and start copying (needs a running loop). Never raises: a log
        that cannot be opened is logged and left out."""
        self = cls(bundle)
        path = bundle.path / LOG
        try:
            if not path.exists():
                os.mkfifo(path, 0o700)
            self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.warning("cannot open shim log", extra={"fields": {"id": bundle.id, "error": str(e)}})
            return self
        asyncio.get_running_loop().add_reader(self._fd, self._readable)
        return self

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._pending.extend(data)
        *lines, rest = self._pending.split(b"\n")
        self._pending[:] = rest
        for line in lines:
            if line.strip():
                log.info(line.decode(errors="replace"),
                         extra={"fields": {"id": self.bundle.id, "namespace": self.bundle.namespace,
                                           "source": "shim"}})

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)


class Shim:
    """The client side of one task's shim. Create with :meth:`connect`."""

    def __init__(self, bundle: Bundle, command: ShimCommand, start: StartResult,
                 client: ttrpc.Client) -> None:
        self.bundle = bundle
        self.command = command
        self.start_result = start
        self.client = client
        self.service = start.service
        self.pid = 0                 #: the init process's pid, once known
        self.log: ShimLog | None = None

    @property
    def id(self) -> str:
        return self.bundle.id

    @property
    def namespace(self) -> str:
        return self.bundle.namespace

    @classmethod
    async def connect(cls, bundle: Bundle, command: ShimCommand, start: StartResult, *,
                      limit: float = CONNECT_TIMEOUT, retry: bool = True,
                      log_: ShimLog | None = None) -> Shim:
        """Connect to the shim at ``start.address``; with ``retry`` the socket may take
        up to ``limit`` seconds to appear (a shim just started). Raises OSError, ttrpc.Closed,
        TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            try:
                client = await ttrpc.Client.connect(start.address, timeout=max(0.1, deadline - loop.time()))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if not retry or loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.01)
        shim = cls(bundle, command, start, client)
        shim.log = log_
        return shim

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()

    async def close(self) -> None:
        """Close the connection and the log (the shim keeps running)."""
        self.close_log()
        with contextlib.suppress(Exception):
            await self.client.close()

    # -- calls ---------------------------------------------------------------------------------

    async def call(self, method: str, request: betterproto2.Message, response: type[M], *,
                   call_timeout: float | None = None) -> M:
        """One Task call with the namespace in the metadata; ``call_timeout`` travels in the request."""
        return await self.client.call(self.service, method, request, response, timeout=call_timeout,
                                      metadata={ttrpc.METADATA_NAMESPACE: self.namespace})

    async def create(self, *, rootfs: Sequence[ctypes.Mount], stdin: str, stdout: str, stderr: str,
                     terminal: bool, options: pb.Any | None, checkpoint: str = "") -> int:
        """Create the task (``runc create``); returns its pid."""
        r = await self.call("Create", taskapi.CreateTaskRequest(
            id=self.id, bundle=str(self.bundle.path), rootfs=list(rootfs), terminal=terminal,
            stdin=stdin, stdout=stdout, stderr=stderr, checkpoint=checkpoint, options=options),
            taskapi.CreateTaskResponse)
        self.pid = r.pid
        return r.pid

    async def start(self, exec_id: str = "") -> int:
        r = await self.call("Start", taskapi.StartRequest(id=self.id, exec_id=exec_id),
                            taskapi.StartResponse)
        if not exec_id:
            self.pid = r.pid
        return r.pid

    async def delete(self, exec_id: str = "") -> taskapi.DeleteResponse:
        return await self.call("Delete", taskapi.DeleteRequest(id=self.id, exec_id=exec_id),
                               taskapi.DeleteResponse)

    async def exec(self, exec_id: str, *, spec: pb.Any | None, stdin: str, stdout: str, stderr: str,
                   terminal: bool) -> None:
        await self.call("Exec", taskapi.ExecProcessRequest(
            id=self.id, exec_id=exec_id, terminal=terminal, stdin=stdin, stdout=stdout,
            stderr=stderr, spec=spec), taskapi.ExecProcessResponse)

    async def state(self, exec_id: str = "", *, call_timeout: float | None = None) -> taskapi.StateResponse:
        return await self.call("State", taskapi.StateRequest(id=self.id, exec_id=exec_id),
                               taskapi.StateResponse, call_timeout=call_timeout)

    async def kill(self, signal: int, *, exec_id: str = "", all: bool = False) -> None:
        await self.call("Kill", taskapi.KillRequest(id=self.id, exec_id=exec_id, signal=signal, all=all),
                        pb.Empty)

    async def pids(self) -> list[ptypes.ProcessInfo]:
        r = await self.call("Pids", taskapi.PidsRequest(id=self.id), taskapi.PidsResponse)
        return list(r.processes)

    async def pause(self) -> None:
        await self.call("Pause", taskapi.PauseRequest(id=self.id), pb.Empty)

    async def resume(self) -> None:
        await self.call("Resume", taskapi.ResumeRequest(id=self.id), pb.Empty)

    async def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        await self.call("ResizePty", taskapi.ResizePtyRequest(
            id=self.id, exec_id=exec_id, width=width, height=height), pb.Empty)

    async def close_io(self, exec_id: str = "", stdin: bool = True) -> None:
        await self.call("CloseIO", taskapi.CloseIoRequest(id=self.id, exec_id=exec_id, stdin=stdin),
                        pb.Empty)

    async def checkpoint(self, path: str, options: pb.Any | None) -> None:
        await self.call("Checkpoint", taskapi.CheckpointTaskRequest(id=self.id, path=path, options=options),
                        pb.Empty)

    async def update(self, resources: pb.Any | None, annotations: dict[str, str]) -> None:
        await self.call("Update", taskapi.UpdateTaskRequest(
            id=self.id, resources=resources, annotations=dict(annotations)), pb.Empty)

    async def stats(self) -> pb.Any | None:
        r = await self.call("Stats", taskapi.StatsRequest(id=self.id), taskapi.StatsResponse)
        return r.stats

    async def wait(self, exec_id: str = "") -> taskapi.WaitResponse:
        """Until the process exits (no timeout)."""
        return await self.call("Wait", taskapi.WaitRequest(id=self.id, exec_id=exec_id),
                               taskapi.WaitResponse)

    async def connect_info(self, *, call_timeout: float | None = None) -> taskapi.ConnectResponse:
        """``Connect``: the shim's pid and the task's pid (containerd's ``shimTask.PID``)."""
        return await self.call("Connect", taskapi.ConnectRequest(id=self.id), taskapi.ConnectResponse,
                               call_timeout=call_timeout)

    async def shutdown(self, *, now: bool = False) -> None:
        """Ask the shim to exit (it does once it serves no task). A closed connection is
        success: the shim has gone."""
        try:
            await self.call("Shutdown", taskapi.ShutdownRequest(id=self.id, now=now), pb.Empty,
                            call_timeout=SHUTDOWN_TIMEOUT)
        except (ttrpc.Closed, NotFound, DeadlineExceeded, TimeoutError, ConnectionError):
            pass
