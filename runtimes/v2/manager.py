"""The task manager: plugin ``io.containerd.runtime.v2.task`` (containerd's ``TaskManager``
and ``ShimManager``, ``core/runtime/v2``).

Lifecycle of a task (``create`` → ``start`` → ``wait`` → ``delete``):

1. ``create(ns, id, ...)``: the container record gives the runtime name, runtime
   options and the OCI spec; the rootfs is the request's mounts or the mounts of
   the container's snapshot. A bundle is written (:mod:`.bundle`), the runtime
   name is resolved to a shim binary (:func:`.binary.resolve`), ``<shim> start``
   prints the shim's address (for our own shim with its fork server running, the
   daemon does those steps itself, no process spawned: :mod:`.fastpath`), we
   connect over ttrpc and call ``Create``. Any
   failure undoes everything: the shim is asked to delete and shut down,
   ``<shim> delete`` cleans up after it, and the bundle is removed.
2. Process calls go straight to the shim (:class:`Task`).
3. ``delete(ns, id)``: the shim deletes the init process, is told to
   ``Shutdown`` (it exits once it serves no task), the bundle is removed
   (rootfs unmounted). The shim itself publishes TaskDelete.
4. A shim whose connection drops (killed, crashed) is cleaned up as containerd
   does: ``<shim> delete`` in its bundle, bundle removed, TaskExit and TaskDelete
   published with exit status 255 and the time of the cleanup. Later calls get
   NotFound; a Wait in progress or later answers 255.
5. Restart (:meth:`TaskManager.load`, at plugin init): each bundle under
   ``<state>/io.containerd.runtime.v2.task/<ns>/<id>`` is reconnected from its
   ``address``; a live shim is adopted (``Connect``, ``State``), a dead one is
   cleaned up as in 4, a bundle without a container record is removed (its shim
   deleted). Running containers are never killed by a daemon restart.

Config (``[plugins."io.containerd.runtime.v2.task".runtimes."<runtime name>"]``)::

    path = "/usr/bin/containerd-shim-runc-v2"          # explicit shim binary
    options = { BinaryName = "crun", SystemdCgroup = true }   # runc options

``options`` keys are the Go names of ``containerd.runc.v1.Options`` (``BinaryName``,
``Root``, ``SystemdCgroup``, ``NoPivotRoot``, ``NoNewKeyring``, ``ShimCgroup``,
``IoUid``, ``IoGid``, ``CriuImagePath``, ``CriuWorkPath``); they are sent when
neither the Create request nor the container record carries options.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiocontainerd import ttrpc
from aiocontainerd.api.containerd import events as eventsapi
from aiocontainerd.api.containerd import types as ctypes
from aiocontainerd.api.containerd.runc import v1 as runcopts
from aiocontainerd.api.containerd.task import v2 as taskapi
from aiocontainerd.api.containerd.v1 import types as ptypes
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.errors import (
    AlreadyExists,
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    reworded,
)
from aiocontainerd.plugin import EVENT, METADATA, RUNTIME, InitContext, Registration
from aiocontainerd.services.convert import from_timestamp, timestamp
from aiocontainerd.tasks import complete

from . import binary as binary_
from . import fastpath
from .binary import ShimCommand, StartResult
from .bundle import Bundle
from .shim import STATE_TIMEOUT, Shim, ShimLog

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PLUGIN_ID = "task"
#: the exit status of a task whose shim died (containerd's value)
DEAD_SHIM_STATUS = 255
LOAD_TIMEOUT = 5.0        # containerd's io.containerd.timeout.shim.load
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
TASK_EXIT = "/tasks/exit"
TASK_DELETE = "/tasks/delete"

_RUNC_FIELDS = {f.name for f in dataclasses.fields(runcopts.Options)}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def runc_options(options: dict[str, Any]) -> runcopts.Options:
    """``{"BinaryName": "crun", ...}`` (Go field names, or snake_case) as runc Options.
    Raises ValueError for an unknown key or a wrong type."""
    kwargs = {}
    for key, value in options.items():
        field = _snake(key)
        if field not in _RUNC_FIELDS:
            raise ValueError(f"unknown runc option {key!r}")
        kwargs[field] = value
    try:
        msg = runcopts.Options(**kwargs)
        bytes(msg)
    except Exception as e:
        raise ValueError(f"invalid runc options {options!r}: {e}") from None
    return msg


@dataclasses.dataclass
class RuntimeConfig:
    """One runtime name's settings: ``path`` of the shim binary ("" = resolve by name),
    ``options`` (runc options by Go field name)."""

    path: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.options:
            runc_options(self.options)


@dataclasses.dataclass
class TaskConfig:
    """``[plugins."io.containerd.runtime.v2.task"]``: ``runtimes`` maps runtime names
    (``io.containerd.runc.v2``) to :class:`RuntimeConfig`. ``env``: ``K=V`` added to shims'
    environment."""

    runtimes: dict[str, RuntimeConfig] = dataclasses.field(default_factory=dict)
    env: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        for item in self.env:
            if "=" not in item:
                raise ValueError(f"key 'env': {item!r} is not K=V")


@dataclasses.dataclass(frozen=True)
class Exit:
    """How a process ended: ``status`` (code, or 128+signal), ``exited_at`` (ns), ``pid``."""

    status: int
    exited_at: int
    pid: int = 0


class Task:
    """A task (container's init process and its execs) served by a shim.

    Methods take ``exec_id`` ("" = init). Errors are the shim's (ContainerdError
    subclasses); once the shim is gone every call raises NotFound, except
    :meth:`wait`, which answers the 255 exit.
    """

    def __init__(self, manager: TaskManager, shim: Shim, runtime: str) -> None:
        self.manager = manager
        self.shim = shim
        self.runtime = runtime          #: runtime name (or path) as the container gives it
        self.closing = False            #: set when we close the connection on purpose
        self.dead: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
        self.cleaned = asyncio.Event()  #: set once a dead shim has been cleaned up
        self._watcher: asyncio.Task[None] | None = None

    @property
    def id(self) -> str:
        return self.shim.id

    @property
    def namespace(self) -> str:
        return self.shim.namespace

    @property
    def bundle(self) -> Bundle:
        return self.shim.bundle

    @property
    def pid(self) -> int:
        return self.shim.pid

    def watch(self) -> None:
        """Start watching the connection; a drop not caused by us cleans the task up."""
        self._watcher = asyncio.create_task(self._watch(), name=f"shim-watch-{self.namespace}/{self.id}")

    async def _watch(self) -> None:
        await self.shim.client.wait_closed()
        if self.closing:
            return
        log.info("shim disconnected", extra={"fields": {"id": self.id, "namespace": self.namespace}})
        await self.manager._cleanup_dead(self)

    async def _call(self, coro_fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        """``coro_fn(*args, **kwargs)`` on the shim; NotFound once it is gone (see the class doc)."""
        if self.dead.done():
            raise NotFound(f"task {self.id} not found")
        try:
            return await coro_fn(*args, **kwargs)
        except (ttrpc.Closed, ConnectionError) as e:
            if self.closing and not self.dead.done():
                raise Unavailable(f"task {self.id}: shim connection closed") from None
            # the watcher runs the cleanup; let it finish before answering
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.cleaned.wait()), 15)
            raise NotFound(f"task {self.id} not found: shim disconnected ({e})") from None

    async def start(self, exec_id: str = "") -> int:
        return await self._call(self.shim.start, exec_id)

    async def state(self, exec_id: str = "", *, call_timeout: float | None = None) -> taskapi.StateResponse:
        return await self._call(self.shim.state, exec_id, call_timeout=call_timeout)

    async def kill(self, signal: int, *, exec_id: str = "", all: bool = False) -> None:
        await self._call(self.shim.kill, signal, exec_id=exec_id, all=all)

    async def exec(self, exec_id: str, *, spec: pb.Any | None, stdin: str = "", stdout: str = "",
                   stderr: str = "", terminal: bool = False) -> None:
        if not exec_id:
            raise InvalidArgument("exec id cannot be empty")
        await self._call(self.shim.exec, exec_id, spec=spec, stdin=stdin, stdout=stdout,
                         stderr=stderr, terminal=terminal)

    async def delete_process(self, exec_id: str) -> Exit:
        """Delete an exec process (the init goes through :meth:`TaskManager.delete`)."""
        if not exec_id:
            raise InvalidArgument("exec id must be set to delete a process")
        r = await self._call(self.shim.delete, exec_id)
        return Exit(r.exit_status, from_timestamp(r.exited_at), r.pid)

    async def pids(self) -> list[ptypes.ProcessInfo]:
        return await self._call(self.shim.pids)

    async def pause(self) -> None:
        await self._call(self.shim.pause)

    async def resume(self) -> None:
        await self._call(self.shim.resume)

    async def resize_pty(self, width: int, height: int, exec_id: str = "") -> None:
        await self._call(self.shim.resize_pty, width, height, exec_id)

    async def close_io(self, exec_id: str = "") -> None:
        await self._call(self.shim.close_io, exec_id, True)

    async def checkpoint(self, path: str, options: pb.Any | None) -> None:
        await self._call(self.shim.checkpoint, path, options)

    async def update(self, resources: pb.Any | None, annotations: dict[str, str] | None = None) -> None:
        await self._call(self.shim.update, resources, dict(annotations or {}))

    async def stats(self) -> pb.Any | None:
        return await self._call(self.shim.stats)

    async def wait(self, exec_id: str = "") -> Exit:
        """Until the process exits; 255 (and the cleanup time) if the shim dies meanwhile."""
        if self.dead.done():
            return self.dead.result()
        try:
            r = await self.shim.wait(exec_id)
        except (ttrpc.Closed, ConnectionError):
            if self.closing and not self.dead.done():
                raise Unavailable(f"task {self.id}: shim connection closed") from None
            return await asyncio.shield(self.dead)
        return Exit(r.exit_status, from_timestamp(r.exited_at), 0)


class TaskManager:
    """Every task of every namespace, keyed by (namespace, id). See the module doc."""

    def __init__(self, *, state: Path, root: Path, config: TaskConfig | None = None,
                 metadata: Any = None, exchange: Any = None, grpc_address: str = "",
                 ttrpc_address: str = "", debug: bool = False) -> None:
        self.state = Path(state)
        self.root = Path(root)
        self.config = config or TaskConfig()
        self.metadata = metadata
        self.exchange = exchange
        self.grpc_address = grpc_address
        self.ttrpc_address = ttrpc_address or (grpc_address + ".ttrpc" if grpc_address else "")
        self.debug = debug
        self._tasks: dict[tuple[str, str], Task] = {}
        self._busy: set[tuple[str, str]] = set()
        self.collector: Any = None   #: the cgroups Prometheus collector, when metrics are served
        self._warming: asyncio.Task[None] | None = None   #: :meth:`warm` started by the plugin

    # -- resolution and options ---------------------------------------------------------------

    def resolve(self, runtime: str) -> str:
        """The shim binary of ``runtime`` (config ``path`` first). Raises NotFound/InvalidArgument."""
        explicit = {name: rc.path for name, rc in self.config.runtimes.items() if rc.path}
        return binary_.resolve(runtime, explicit)

    def default_options(self, runtime: str) -> pb.Any | None:
        """The configured runc options of ``runtime`` as an Any, or None."""
        rc = self.config.runtimes.get(runtime)
        if rc is None or not rc.options:
            return None
        return pb.Any(type_url=RUNC_OPTIONS_URL, value=bytes(runc_options(rc.options)))

    def _command(self, bundle: Bundle, binary: str) -> ShimCommand:
        return ShimCommand(binary=binary, id=bundle.id, namespace=bundle.namespace,
                           bundle=str(bundle.path), grpc_address=self.grpc_address,
                           ttrpc_address=self.ttrpc_address, debug=self.debug,
                           env=tuple(self.config.env))

    # -- lookup -----------------------------------------------------------------------------------

    def get(self, namespace: str, id_: str) -> Task:
        """The live task ``id_``. Raises NotFound."""
        t = self._tasks.get((namespace, id_))
        if t is None or t.dead.done():
            raise NotFound(f"task {id_} not found")
        return t

    def list(self, namespace: str | None = None) -> list[Task]:
        """Live tasks of ``namespace`` (None: all namespaces), by ID."""
        return sorted((t for (ns, _), t in self._tasks.items()
                       if (namespace is None or ns == namespace) and not t.dead.done()),
                      key=lambda t: (t.namespace, t.id))

    # -- create ----------------------------------------------------------------------------------

    async def _rootfs_of(self, namespace: str, container: Any) -> list[ctypes.Mount]:
        if not container.snapshot_key:
            return []
        sn = self.metadata.snapshotters.get(container.snapshotter) if self.metadata else None
        if sn is None:
            raise NotFound(f"snapshotter {container.snapshotter!r} not loaded")
        mounts = await sn.mounts(namespace, container.snapshot_key)
        return [ctypes.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
                for m in mounts]

    async def create(self, namespace: str, id_: str, *, rootfs: Sequence[ctypes.Mount] | None = None,
                     stdin: str = "", stdout: str = "", stderr: str = "", terminal: bool = False,
                     options: pb.Any | None = None, runtime_path: str = "",
                     checkpoint: str = "") -> Task:
        """Create task ``id_`` for container ``id_`` of ``namespace`` (see the module doc).

        ``rootfs``: mounts for the bundle's rootfs (None/empty: the container's snapshot
        mounts); ``options``: task options overriding the container's runtime options;
        ``runtime_path``: a shim binary overriding the container's runtime.
        Raises NotFound (container, snapshotter, shim binary), AlreadyExists (task),
        InvalidArgument, FailedPrecondition (shim start failed), and the shim's errors.
        """
        key = (namespace, id_)
        if key in self._busy or (key in self._tasks and not self._tasks[key].dead.done()):
            raise AlreadyExists(f"task {id_}: already exists")
        if self.metadata is None:
            raise FailedPrecondition("no metadata store")
        container = self.metadata.containers.get(namespace, id_)
        self._busy.add(key)
        try:
            return await self._create(namespace, container, rootfs, stdin, stdout, stderr,
                                      terminal, options, runtime_path, checkpoint)
        finally:
            self._busy.discard(key)

    async def _create(self, namespace: str, container: Any, rootfs: Sequence[ctypes.Mount] | None,
                      stdin: str, stdout: str, stderr: str, terminal: bool, options: pb.Any | None,
                      runtime_path: str, checkpoint: str) -> Task:
        runtime = container.runtime.name
        binary = self.resolve(runtime_path or runtime)
        mounts = list(rootfs) if rootfs else await self._rootfs_of(namespace, container)
        if options is None or not options.type_url:
            ro = container.runtime.options
            options = (pb.Any(type_url=ro.type_url, value=ro.value) if ro is not None and ro.type_url
                       else self.default_options(runtime))
        spec = container.spec.value if container.spec is not None else None
        bundle = await asyncio.to_thread(Bundle.create, self.state, self.root, namespace,
                                         container.id, spec)
        command = self._command(bundle, binary)
        shim: Shim | None = None
        started = True  # from here on a shim may exist: undo runs ``<shim> delete``
        shim_log = ShimLog.open(bundle)
        try:
            start = await _start_shim(command, options)
            _write_start(bundle, start.address, binary)   # two small files: no worker thread
            shim = await Shim.connect(bundle, command, start, log_=shim_log)
            with reworded("failed to create shim task"):   # "...: OCI runtime create failed: ..."
                await shim.create(rootfs=mounts, stdin=stdin, stdout=stdout, stderr=stderr,
                                  terminal=terminal, options=options, checkpoint=checkpoint)
        except BaseException as e:
            log.warning("failed to create task", extra={"fields": {
                "id": container.id, "namespace": namespace, "runtime": runtime, "error": str(e)}})
            await complete(self._undo_create(bundle, command, shim, started))
            shim_log.close()
            if isinstance(e, ContainerdError) and not isinstance(e, binary_.ShimError):
                raise
            if isinstance(e, binary_.ShimError):
                raise FailedPrecondition(f"failed to start shim: start failed: {e}") from None
            if isinstance(e, (OSError, TimeoutError, ttrpc.Closed)):
                raise Unavailable(f"failed to create shim task: {e}") from None
            raise
        task = Task(self, shim, runtime)
        self._tasks[(namespace, container.id)] = task
        task.watch()
        return task

    async def _undo_create(self, bundle: Bundle, command: ShimCommand, shim: Shim | None,
                           started: bool) -> None:
        if shim is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(shim.delete(), 5)
            with contextlib.suppress(Exception):
                await shim.shutdown(now=True)
            await shim.close()
        if started:
            try:
                await command.delete()
            except Exception as e:
                log.debug("shim delete after failed start",
                          extra={"fields": {"id": bundle.id, "error": str(e)}})
        try:
            await asyncio.to_thread(bundle.delete)
        except Exception as e:
            log.error("failed to remove bundle", extra={"fields": {"id": bundle.id, "error": str(e)}})

    # -- delete ----------------------------------------------------------------------------------

    async def delete(self, namespace: str, id_: str) -> Exit:
        """Delete task ``id_``: the shim deletes the init process, is shut down, the bundle is
        removed. Returns the init's exit. Raises NotFound, and the shim's errors (e.g.
        FailedPrecondition for a running task)."""
        task = self.get(namespace, id_)
        shim = task.shim
        try:
            r = await shim.delete()
            exit_ = Exit(r.exit_status, from_timestamp(r.exited_at), r.pid)
        except (ttrpc.Closed, ConnectionError):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task.cleaned.wait()), 15)
            raise NotFound(f"task {id_} not found") from None
        except NotFound:
            exit_ = Exit(0, time.time_ns(), task.pid)
        task.closing = True
        self._tasks.pop((namespace, id_), None)
        if not task.dead.done():
            task.dead.set_result(exit_)
        await complete(self._finish_delete(task))
        return exit_

    async def _finish_delete(self, task: Task) -> None:
        await task.shim.shutdown()
        await task.shim.close()
        if task._watcher is not None:
            task._watcher.cancel()
        try:
            await asyncio.to_thread(task.bundle.delete)
        except Exception as e:
            log.error("failed to delete bundle", extra={"fields": {"id": task.id, "error": str(e)}})
        task.cleaned.set()

    # -- dead shims ----------------------------------------------------------------------------

    async def _cleanup_dead(self, task: Task, *, publish: bool = True) -> None:
        """A shim went away: ``<shim> delete``, remove the bundle, publish TaskExit/TaskDelete
        (status 255), forget the task."""
        exited_at = time.time_ns()
        exit_ = Exit(DEAD_SHIM_STATUS, exited_at, task.pid)
        try:
            try:
                r = await task.shim.command.delete()
                exit_ = Exit(DEAD_SHIM_STATUS, exited_at, r.pid or task.pid)
            except Exception as e:
                log.warning("failed to clean up after shim disconnected", extra={"fields": {
                    "id": task.id, "namespace": task.namespace, "error": str(e)}})
            task.shim.close_log()
            with contextlib.suppress(Exception):
                await task.shim.client.close()
            try:
                await asyncio.to_thread(task.bundle.delete)
            except Exception as e:
                log.error("failed to delete bundle of dead shim",
                          extra={"fields": {"id": task.id, "error": str(e)}})
        finally:
            # whatever failed above, the task is gone: waiters get 255, later calls NotFound
            registered = self._tasks.get((task.namespace, task.id)) is task
            if registered:
                del self._tasks[(task.namespace, task.id)]
            if not task.dead.done():
                task.dead.set_result(exit_)
            if publish and registered:
                self._publish_dead(task.namespace, task.id, exit_)
            task.cleaned.set()

    def _publish_dead(self, namespace: str, id_: str, exit_: Exit) -> None:
        if self.exchange is None:
            return
        ts = timestamp(exit_.exited_at)
        try:
            self.exchange.publish(namespace, TASK_EXIT, eventsapi.TaskExit(
                container_id=id_, id=id_, pid=exit_.pid, exit_status=exit_.status, exited_at=ts))
            self.exchange.publish(namespace, TASK_DELETE, eventsapi.TaskDelete(
                container_id=id_, pid=exit_.pid, exit_status=exit_.status, exited_at=ts))
        except Exception as e:
            log.warning("failed to publish task exit", extra={"fields": {"id": id_, "error": str(e)}})

    # -- restart ---------------------------------------------------------------------------------

    async def load(self) -> None:
        """Re-adopt the shims of a previous daemon (see the module doc). Never raises."""
        if not self.state.is_dir():
            return
        jobs = []
        for nsdir in sorted(self.state.iterdir()):
            if not nsdir.is_dir() or nsdir.name.startswith("."):
                continue
            for bdir in sorted(nsdir.iterdir()):
                if bdir.is_dir() and not bdir.name.startswith("."):
                    jobs.append(self._load_one(Bundle(bdir.name, nsdir.name, bdir)))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.error("failed to load shim", extra={"fields": {"error": str(r)}})
        await asyncio.to_thread(self._cleanup_work_dirs)

    def _cleanup_work_dirs(self) -> None:
        """Remove work folders (``<root>/<ns>/<id>``) whose bundle is gone."""
        if not self.root.is_dir():
            return
        for nsdir in self.root.iterdir():
            if not nsdir.is_dir():
                continue
            for wdir in nsdir.iterdir():
                if not (self.state / nsdir.name / wdir.name).exists():
                    shutil.rmtree(wdir, ignore_errors=True)

    async def _load_one(self, bundle: Bundle) -> None:
        ns, id_ = bundle.namespace, bundle.id
        fields = {"id": id_, "namespace": ns}
        if await asyncio.to_thread(bundle.is_empty):
            await asyncio.to_thread(bundle.delete)
            return
        container = None
        if self.metadata is not None:
            with contextlib.suppress(NotFound):
                container = self.metadata.containers.get(ns, id_)
        runtime = container.runtime.name if container is not None else ""
        binary = await asyncio.to_thread(bundle.read_shim_binary)
        if binary is None:
            try:
                binary = self.resolve(runtime)
            except ContainerdError:
                binary = None
        command = self._command(bundle, binary) if binary else None
        shim_log = ShimLog.open(bundle)
        adopted = False
        try:
            adopted = await self._load_connect(bundle, container, runtime, command, shim_log, fields)
        finally:
            if not adopted:
                shim_log.close()

    async def _load_connect(self, bundle: Bundle, container: Any, runtime: str,
                            command: ShimCommand | None, shim_log: ShimLog, fields: dict) -> bool:
        """Connect to a bundle's shim and adopt its task (True), or clean up (False)."""
        ns, id_ = bundle.namespace, bundle.id
        shim: Shim | None = None
        try:
            start = await asyncio.to_thread(bundle.read_start)
            shim = await asyncio.wait_for(Shim.connect(bundle, command or self._command(bundle, ""),
                                                       start, retry=False, log_=shim_log),
                                          LOAD_TIMEOUT)
            info = await shim.connect_info(call_timeout=LOAD_TIMEOUT)
            state = await shim.state(call_timeout=LOAD_TIMEOUT)
        except NotFound:
            # the shim lives but its task was never created (a daemon crash mid-create)
            if shim is not None:
                log.info("cleaning leaked shim process", extra={"fields": fields})
                await shim.shutdown(now=True)
                await shim.close()
            await asyncio.to_thread(bundle.delete)
            return False
        except Exception as e:
            log.info("shim of a previous daemon is dead", extra={"fields": {**fields, "error": str(e)}})
            if shim is not None:
                await shim.close()
            shim = None
        if container is None:
            # an orphaned bundle: no container record, the task cannot be reached
            log.info("removing bundle without container", extra={"fields": fields})
            if shim is not None:
                with contextlib.suppress(Exception):
                    await shim.delete()
                await shim.shutdown(now=True)
                await shim.close()
            if command is not None:
                with contextlib.suppress(Exception):
                    await command.delete()
            await asyncio.to_thread(bundle.delete)
            return False
        if shim is None:
            if command is None:
                await asyncio.to_thread(bundle.delete)
                self._publish_dead(ns, id_, Exit(DEAD_SHIM_STATUS, time.time_ns()))
                return False
            # a shim we could not reach: its task is cleaned up through the shim binary's delete
            dummy = Shim(bundle, command, StartResult(""), _ClosedClient())  # type: ignore[arg-type]
            task = Task(self, dummy, runtime)
            self._tasks[(ns, id_)] = task
            await self._cleanup_dead(task)
            return False
        shim.pid = state.pid or info.task_pid
        task = Task(self, shim, runtime)
        self._tasks[(ns, id_)] = task
        task.watch()
        log.info("shim re-adopted", extra={"fields": {**fields, "pid": shim.pid,
                                                      "status": ptypes.Status(state.status).name}})
        return True

    # -- metrics -----------------------------------------------------------------------------------

    async def stats(self, namespace: str | None = None) -> list[tuple[Task, pb.Any]]:
        """The Stats of every live task (of ``namespace``); tasks that fail are left out."""
        tasks = self.list(namespace)

        async def one(t: Task) -> pb.Any | None:
            try:
                return await asyncio.wait_for(t.stats(), STATE_TIMEOUT * 2)
            except Exception:
                return None

        results = await asyncio.gather(*(one(t) for t in tasks))
        return [(t, s) for t, s in zip(tasks, results, strict=True) if s is not None]

    async def metric_samples(self) -> list[tuple[str, str, Any]]:
        """``(namespace, container_id, cgroups Metrics)`` of every live task, for the cgroups
        Prometheus collector (``/v1/metrics``); stats that fail or do not decode are left out."""
        out = []
        for task, any_ in await self.stats():
            msg = unpack_any(any_)
            if msg is not None:
                out.append((task.namespace, task.id, msg))
        return out

    async def warm(self, runtime: str = binary_.AIORUNC_RUNTIMES[0]) -> None:
        """Have the shim of ``runtime`` ready before the first task (our shim's fork server,
        :func:`.fastpath.warm`); nothing for other shims. Never raises: a cold start is
        only slower."""
        try:
            binary = self.resolve(runtime)
            await fastpath.warm(ShimCommand(
                binary=binary, id="", namespace="", bundle=str(self.state),
                grpc_address=self.grpc_address, ttrpc_address=self.ttrpc_address,
                debug=self.debug, env=tuple(self.config.env)))
        except Exception as e:   # only slower without it: never fail the caller
            log.debug("shim not warmed", extra={"fields": {"runtime": runtime, "error": str(e)}})

    # -- shutdown ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Disconnect from every shim; the shims and their containers keep running."""
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        if self.collector is not None:
            self.collector.close()
            self.collector = None
        for task in list(self._tasks.values()):
            task.closing = True
            if task._watcher is not None:
                task._watcher.cancel()
            await task.shim.close()
        self._tasks.clear()


class _ClosedClient:
    """The connection of a shim we could not reach after a restart (cleanup only closes it)."""

    async def close(self) -> None:
        pass


def unpack_any(value: pb.Any | None) -> Any:
    """Decode an Any by its type URL, with or without the ``type.googleapis.com/`` prefix
    (Go shims send ``io.containerd.cgroups.v1.Metrics``); None when unknown."""
    if value is None or not value.type_url:
        return None
    from aiocontainerd.api.message_pool import default_message_pool as pool

    name = value.type_url.rsplit("/", 1)[-1]
    for url in (value.type_url, "type.googleapis.com/" + name):
        cls = pool.url_to_type.get(url)
        if cls is not None:
            try:
                return cls.parse(value.value)
            except Exception:
                return None
    return None


async def _start_shim(command: ShimCommand, options: pb.Any | None) -> binary_.StartResult:
    """``<shim> start``: in-process for our own shim when its fork server runs
    (:mod:`.fastpath`), else the binary as a subprocess."""
    try:
        result = await fastpath.start(command)
    except (OSError, ValueError) as e:
        log.debug("in-process shim start failed", extra={"fields": {"id": command.id, "error": str(e)}})
        result = None
    if result is not None:
        return result
    return await command.start(bytes(options) if options is not None else b"")


def _write_start(bundle: Bundle, address: str, binary: str) -> None:
    bundle.write_address(address)
    bundle.write_shim_binary(binary)




async def _init(ctx: InitContext) -> TaskManager:
    config: TaskConfig = ctx.config or TaskConfig()
    metadata = ctx.get(METADATA)
    try:
        exchange = ctx.get(EVENT)
    except ContainerdError as e:
        log.warning("runtime without events", extra={"fields": {"error": str(e)}})
        exchange = None
    for d in (ctx.root, ctx.state):
        d.mkdir(parents=True, exist_ok=True, mode=0o711)
    manager = TaskManager(state=ctx.state, root=ctx.root, config=config, metadata=metadata,
                          exchange=exchange, grpc_address=ctx.properties.get("grpc.address", ""),
                          ttrpc_address=ctx.properties.get("ttrpc.address", ""),
                          debug=logging.getLogger("aiocontainerd").isEnabledFor(logging.DEBUG))
    ctx.exports["log-uri-schemes"] = "fifo,binary,file"
    await manager.load()
    # in the background: the daemon serves meanwhile, the first task finds the shim warm
    manager._warming = asyncio.ensure_future(manager.warm())
    daemon_metrics = getattr(ctx, "metrics", None)
    if daemon_metrics is not None:
        try:
            from aiocontainerd.cgroups import prometheus as cgroup_metrics

            manager.collector = cgroup_metrics.install(daemon_metrics, manager.metric_samples)
        except Exception as e:  # metrics are an extra: never fail the runtime for them
            log.warning("task metrics not exported", extra={"fields": {"error": str(e)}})
    return manager


PLUGIN = Registration(RUNTIME, PLUGIN_ID, _init, requires=(METADATA, EVENT), config=TaskConfig)
