"""``containerd.task.v2.Task`` served by our shim: Go's ``task/service.go`` on asyncio.

One :class:`TaskService` per shim process serves every container of its
group.  Calls and their containerd behaviour:

* ``Create`` mounts ``rootfs`` mounts on ``<bundle>/rootfs``, writes
  ``options.json``/``runtime`` into the bundle, opens stdio, runs
  ``runc create`` (console socket for a terminal; ``runc restore`` when a
  checkpoint is given), publishes ``/tasks/create`` and answers the init pid.
* ``Start`` runs ``runc start`` (init, ``/tasks/start``) or
  ``runc exec --detach`` (exec, ``/tasks/exec-started``).
* ``Delete`` waits for the output to be copied, runs ``runc delete``, unmounts
  the rootfs, publishes ``/tasks/delete`` (init only) and answers
  pid/exit status/exited_at.
* ``Exec`` stores the OCI process spec until Start (``/tasks/exec-added``);
  ``AlreadyExists`` for an exec id in use.
* ``State``, ``Pause``/``Resume`` (``/tasks/paused``, ``/tasks/resumed``),
  ``Kill``, ``Pids``, ``CloseIO``, ``ResizePty``, ``Checkpoint``, ``Update``,
  ``Stats`` (cgroups Metrics as ``Any``), ``Wait``, ``Connect``, ``Shutdown``.

Exits come from the :class:`.reaper.Reaper`; an init exit first kills the
rest of the container when it shares a pid namespace, waits for the running
execs' exits, and is published (``/tasks/exit``) last, as Go's
``handleInitExit``.  Unknown container: ``NotFound("container not created")``;
unknown exec: ``NotFound``; wrong state: ``FailedPrecondition``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any

import betterproto2

from aiocontainerd import errors
from aiocontainerd.api.containerd import events as ev
from aiocontainerd.api.containerd.runc import v1 as runcopts
from aiocontainerd.api.containerd.task import v2 as api
from aiocontainerd.api.containerd.v1.types import ProcessInfo
from aiocontainerd.api.google import protobuf as pb

from .process import Container, Process, Stdio
from .publisher import Publisher, pack_any
from .runc import DEFAULT_BINARY, RUNC_ROOT, Runc, RuncError, read_pid_file

if TYPE_CHECKING:
    from .reaper import Reaper
    from .shim import ShimConfig

log = logging.getLogger("aiorunc.service")

TASK_SERVICE = "containerd.task.v2.Task"
#: seconds Delete waits for an exec's output to drain (Go: 2 s)
EXEC_IO_WAIT = 2.0
#: seconds Delete waits for the init's output to drain
INIT_IO_WAIT = 10.0
#: seconds an init exit waits for running execs before marking them exited
EXEC_EXIT_WAIT = 5.0

_RUNC_OPTION_URLS = ("containerd.runc.v1.Options", "io.containerd.runc.v1.Options",
                     "io.containerd.runc.v2.Options")
_CRI_OPTION_URL = "runtimeoptions.v1.Options"


def parse_options(any_: pb.Any | None) -> runcopts.Options:
    """The runc options of a CreateTaskRequest.

    Accepts ``containerd.runc.v1.Options`` (and the older ``io.containerd.runc.v1``
    name) and CRI's ``runtimeoptions.v1.Options`` whose TOML body carries
    ``BinaryName``/``Root``/``SystemdCgroup``; anything else is InvalidArgument.
    """
    if any_ is None or (not any_.type_url and not any_.value):
        return runcopts.Options()
    url = any_.type_url.rsplit("/", 1)[-1]
    if url in _RUNC_OPTION_URLS:
        return runcopts.Options.parse(any_.value)
    if url == _CRI_OPTION_URL:
        import tomllib

        from aiocontainerd.api.runtimeoptions.v1 import Options as CriOptions

        cri = CriOptions.parse(any_.value)
        body = cri.config_body.decode() if cri.config_body else ""
        if not body and cri.config_path:
            with open(cri.config_path) as f:
                body = f.read()
        cfg = tomllib.loads(body) if body else {}
        return runcopts.Options(binary_name=cfg.get("BinaryName", ""), root=cfg.get("Root", ""),
                                systemd_cgroup=bool(cfg.get("SystemdCgroup", False)),
                                no_pivot_root=bool(cfg.get("NoPivotRoot", False)),
                                no_new_keyring=bool(cfg.get("NoNewKeyring", False)))
    raise errors.InvalidArgument(f"unsupported runtime options type {any_.type_url!r}")


def _write_bundle_options(bundle: str, opts: runcopts.Options) -> None:
    """``options.json`` and ``runtime`` in the bundle, read back by ``delete`` (Go's
    ``WriteOptions``/``WriteRuntime``)."""
    data = {k: v for k, v in (("binary_name", opts.binary_name), ("root", opts.root),
                              ("systemd_cgroup", opts.systemd_cgroup),
                              ("no_pivot_root", opts.no_pivot_root),
                              ("no_new_keyring", opts.no_new_keyring)) if v}
    with open(os.path.join(bundle, "options.json"), "w") as f:
        json.dump(data, f)
    with open(os.path.join(bundle, "runtime"), "w") as f:
        f.write(opts.binary_name or DEFAULT_BINARY)


@contextlib.contextmanager
def _runtime_failed(what: str) -> Iterator[None]:
    """A failed OCI runtime call as the Go shim's ``runtimeError`` reports it:
    ``"<what>: <the runtime's own last error>"``, code Unknown (not the runtime's
    NotFound/AlreadyExists: the daemon and kubelet read it as a failure to run)."""
    try:
        yield
    except RuncError as e:
        raise errors.ContainerdError(f"{what}: {e.message}") from None


class TaskService:
    """The task API of one shim; ``methods()`` is what ``ttrpc.Server.register`` takes."""

    def __init__(self, cfg: ShimConfig, reaper: Reaper, publisher: Publisher) -> None:
        self.cfg = cfg
        self.namespace = cfg.namespace
        self.reaper = reaper
        self.publisher = publisher
        self.containers: dict[str, Container] = {}
        self.shutdown_requested = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._oom = None

    # -- plumbing ---------------------------------------------------------------

    def methods(self) -> dict[str, tuple[type[betterproto2.Message],
                                         Callable[[betterproto2.Message], Awaitable[betterproto2.Message]]]]:
        """``{method: (request type, handler)}`` for ``containerd.task.v2.Task``."""
        return {
            "State": (api.StateRequest, self.state),
            "Create": (api.CreateTaskRequest, self.create),
            "Start": (api.StartRequest, self.start),
            "Delete": (api.DeleteRequest, self.delete),
            "Pids": (api.PidsRequest, self.pids),
            "Pause": (api.PauseRequest, self.pause),
            "Resume": (api.ResumeRequest, self.resume),
            "Checkpoint": (api.CheckpointTaskRequest, self.checkpoint),
            "Kill": (api.KillRequest, self.kill),
            "Exec": (api.ExecProcessRequest, self.exec),
            "ResizePty": (api.ResizePtyRequest, self.resize_pty),
            "CloseIO": (api.CloseIoRequest, self.close_io),
            "Update": (api.UpdateTaskRequest, self.update),
            "Wait": (api.WaitRequest, self.wait),
            "Stats": (api.StatsRequest, self.stats),
            "Connect": (api.ConnectRequest, self.connect),
            "Shutdown": (api.ShutdownRequest, self.shutdown),
        }

    def request_shutdown(self) -> None:
        """Make the shim exit (after in-flight calls)."""
        self.shutdown_requested.set()

    def _bg(self, coro: Coroutine[Any, Any, object]) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _get(self, id: str) -> Container:
        try:
            return self.containers[id]
        except KeyError:
            raise errors.NotFound("container not created") from None

    def _runc(self, opts: runcopts.Options, bundle: str):
        return Runc(self.reaper, binary=opts.binary_name or DEFAULT_BINARY,
                    root=os.path.join(opts.root or RUNC_ROOT, self.namespace),
                    log=os.path.join(bundle, "log.json"),
                    systemd_cgroup=opts.systemd_cgroup, debug=self.cfg.debug)

    async def _open_io(self, c: Container, p: Process):
        from .stdio import open_stdio

        return await open_stdio(stdin=p.stdio.stdin, stdout=p.stdio.stdout,
                                stderr=p.stdio.stderr, terminal=p.stdio.terminal,
                                id=p.id, namespace=self.namespace, reaper=self.reaper)

    def _watch(self, c: Container, p: Process) -> None:
        fut = self.reaper.watch(p.pid)

        def done(f: asyncio.Future[int]) -> None:
            if not f.cancelled():
                self._bg(self._on_exit(c, p, f.result()))

        fut.add_done_callback(done)

    async def _on_exit(self, c: Container, p: Process, status: int) -> None:
        if p.exit_handled:
            return
        p.exit_handled = True
        self.reaper.forget(p.pid)
        if p.start_gate is not None:
            await asyncio.shield(p.start_gate)
        if p.is_init:
            if c.should_kill_all_on_exit():
                with contextlib.suppress(Exception):
                    await c.runc.kill(c.id, signal.SIGKILL, all=True)
            running = c.running_execs()
            if running:
                await asyncio.wait([asyncio.ensure_future(e.exited.wait()) for e in running],
                                   timeout=EXEC_EXIT_WAIT)
                for e in c.running_execs():
                    e.exit_handled = True
                    self._exited(c, e, 128 + signal.SIGKILL)
            if self._oom is not None:
                self._oom.remove(c.id)
        self._exited(c, p, status)

    def _exited(self, c: Container, p: Process, status: int) -> None:
        deleted = p.state == "deleted"
        p.set_exited(status)
        if deleted:
            return
        self.publisher.publish("/tasks/exit", ev.TaskExit(
            container_id=c.id, id=p.id, pid=p.pid, exit_status=status, exited_at=p.exited_at()))

    async def close(self) -> None:
        """Release watchers and background work at shim exit."""
        if self._oom is not None:
            self._oom.close()
        for t in list(self._tasks):
            t.cancel()

    # -- Create / Start / Delete ---------------------------------------------------

    async def create(self, r: api.CreateTaskRequest) -> api.CreateTaskResponse:
        if r.id in self.containers:
            raise errors.AlreadyExists(f"container {r.id}: already exists")
        opts = parse_options(r.options)
        bundle = r.bundle or self.cfg.bundle
        c = Container(r.id, bundle, self._runc(opts, bundle),
                      Stdio(r.stdin, r.stdout, r.stderr, r.terminal))
        self.containers[r.id] = c
        p = c.init
        console = None
        try:
            _write_bundle_options(bundle, opts)  # two small files: no worker thread
            if r.rootfs:
                from aiocontainerd.mount import Mount
                from aiocontainerd.mount.mounting import mount_all

                os.makedirs(c.rootfs, mode=0o711, exist_ok=True)
                await mount_all([Mount(m.type, m.source, tuple(m.options), m.target)
                                 for m in r.rootfs], c.rootfs)
                c.rootfs_mounted = True
            p.io = await self._open_io(c, p)
            pid_file = os.path.join(bundle, "init.pid")
            if r.terminal:
                from .console import ConsoleSocket

                console = await ConsoleSocket.create()
            master = None
            if console is not None:
                master = asyncio.ensure_future(console.receive_master())
            try:
                if r.checkpoint:
                    with _runtime_failed("OCI runtime restore failed"):
                        await c.runc.restore(r.id, bundle, r.checkpoint, pid_file=pid_file,
                                             work_path=opts.criu_work_path or None,
                                             parent_path=r.parent_checkpoint or None,
                                             console_socket=console, stdio=p.io,
                                             no_pivot=opts.no_pivot_root)
                else:
                    with _runtime_failed("OCI runtime create failed"):
                        await c.runc.create(r.id, bundle, pid_file=pid_file, console_socket=console,
                                            stdio=p.io, no_pivot=opts.no_pivot_root,
                                            no_new_keyring=opts.no_new_keyring)
                p.io.start_copying()
                if master is not None:
                    await p.io.attach_console(await asyncio.wait_for(master, 10))
            finally:
                if master is not None and not master.done():
                    master.cancel()
            p.pid = read_pid_file(pid_file)
            if r.checkpoint:
                p.state = "running"
        except BaseException:
            del self.containers[r.id]
            await self._cleanup_failed(c)
            raise
        finally:
            if console is not None:
                console.close()
        self._watch(c, p)
        self.publisher.publish("/tasks/create", ev.TaskCreate(
            container_id=r.id, bundle=bundle, rootfs=list(r.rootfs),
            io=ev.TaskIo(stdin=r.stdin, stdout=r.stdout, stderr=r.stderr, terminal=r.terminal),
            checkpoint=r.checkpoint, pid=p.pid))
        self._watch_oom(c)
        return api.CreateTaskResponse(pid=p.pid)

    async def _cleanup_failed(self, c: Container) -> None:
        p = c.init
        if p.io is not None:
            with contextlib.suppress(Exception):
                await p.io.close()
        with contextlib.suppress(Exception):
            await c.runc.delete(c.id, force=True)
        if c.rootfs_mounted:
            from aiocontainerd.mount.mounting import unmount

            with contextlib.suppress(OSError):
                await unmount(c.rootfs, recursive=True)

    def _watch_oom(self, c: Container) -> None:
        try:
            if self._oom is None:
                from .oom import OOMWatcher

                self._oom = OOMWatcher(lambda id: self.publisher.publish(
                    "/tasks/oom", ev.TaskOom(container_id=id)))
            self._oom.add(c.id, c.init.pid)
        except Exception as e:
            log.warning("cannot watch OOM events of %s: %s", c.id, e)

    async def start(self, r: api.StartRequest) -> api.StartResponse:
        c = self._get(r.id)
        p = c.process(r.exec_id)
        if not p.is_init and c.init.state in ("stopped", "deleted"):
            raise errors.FailedPrecondition(f"container {c.id} init process is not running")
        p.check_start()
        gate = p.start_gate = asyncio.get_running_loop().create_future()
        p.state = "running"
        try:
            if p.is_init:
                try:
                    with _runtime_failed("OCI runtime start failed"):
                        await c.runc.start(c.id)
                except BaseException:
                    if p.state == "running":
                        p.state = "created"
                    raise
                self.publisher.publish("/tasks/start", ev.TaskStart(container_id=c.id, pid=p.pid))
            else:
                try:
                    await self._start_exec(c, p)
                except BaseException:
                    if p.state == "running" and not p.pid:
                        p.state = "created"
                    raise
                self.publisher.publish("/tasks/exec-started", ev.TaskExecStarted(
                    container_id=c.id, exec_id=p.id, pid=p.pid))
                self._watch(c, p)
        finally:
            gate.set_result(None)
            p.start_gate = None
        return api.StartResponse(pid=p.pid)

    async def _start_exec(self, c: Container, p: Process) -> None:
        p.io = await self._open_io(c, p)
        pid_file = os.path.join(c.bundle, f"{p.id}.pid")
        import tempfile

        fd, spec_path = tempfile.mkstemp(prefix="runc-process", dir=c.bundle)
        with os.fdopen(fd, "wb") as f:
            f.write(p.spec)
        console = None
        master = None
        try:
            if p.stdio.terminal:
                from .console import ConsoleSocket

                console = await ConsoleSocket.create()
                master = asyncio.ensure_future(console.receive_master())
            with _runtime_failed("OCI runtime exec failed"):
                await c.runc.exec(c.id, spec_path, pid_file=pid_file, console_socket=console,
                                  stdio=p.io, detach=True)
            p.io.start_copying()
            if master is not None:
                await p.io.attach_console(await asyncio.wait_for(master, 10))
            p.pid = read_pid_file(pid_file)
        except BaseException:
            with contextlib.suppress(Exception):
                await p.io.close()
            p.io = None
            raise
        finally:
            if master is not None and not master.done():
                master.cancel()
            if console is not None:
                console.close()
            with contextlib.suppress(OSError):
                os.unlink(spec_path)

    async def delete(self, r: api.DeleteRequest) -> api.DeleteResponse:
        c = self._get(r.id)
        p = c.process(r.exec_id)
        p.check_delete()
        if p.is_init:
            await self._delete_init(c)
        else:
            if p.io is not None:
                with contextlib.suppress(Exception):
                    await p.io.wait(EXEC_IO_WAIT)
                with contextlib.suppress(Exception):
                    await p.io.close()
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(c.bundle, f"{p.id}.pid"))
            p.state = "deleted"
            c.execs.pop(p.id, None)
        if not p.exited_at_ns:
            p.exited_at_ns = p.exited_at_ns or __import__("time").time_ns()
        return api.DeleteResponse(pid=p.pid, exit_status=p.exit_status, exited_at=p.exited_at())

    async def _delete_init(self, c: Container) -> None:
        p = c.init
        was_created = p.state == "created"
        p.state = "deleted"
        if p.io is not None and not was_created:
            with contextlib.suppress(Exception):
                await p.io.wait(INIT_IO_WAIT)
        try:
            await c.runc.delete(c.id, force=was_created)
        except errors.NotFound:
            pass
        except Exception:
            p.state = "created" if was_created else "stopped"
            raise
        if p.io is not None:
            with contextlib.suppress(Exception):
                await p.io.close()
        for e in list(c.execs.values()):
            if e.io is not None:
                with contextlib.suppress(Exception):
                    await e.io.close()
        if c.rootfs_mounted:
            from aiocontainerd.mount.mounting import unmount

            await unmount(c.rootfs, recursive=True)
            c.rootfs_mounted = False
        if self._oom is not None:
            self._oom.remove(c.id)
        self.containers.pop(c.id, None)
        self.publisher.publish("/tasks/delete", ev.TaskDelete(
            container_id=c.id, pid=p.pid, exit_status=p.exit_status, exited_at=p.exited_at()))

    # -- exec / io ------------------------------------------------------------------

    async def exec(self, r: api.ExecProcessRequest) -> pb.Empty:
        c = self._get(r.id)
        if r.exec_id in c.execs or r.exec_id in c.reserved or not r.exec_id:
            raise errors.AlreadyExists(f"id {r.exec_id}")
        if c.init.state in ("stopped", "deleted"):
            raise errors.FailedPrecondition(f"cannot exec in a {c.init.state} state")
        spec = r.spec.value if r.spec is not None else b""
        try:
            json.loads(spec or b"{}")
        except ValueError as e:
            raise errors.InvalidArgument(f"invalid process spec: {e}") from None
        c.execs[r.exec_id] = Process(c, r.exec_id, Stdio(r.stdin, r.stdout, r.stderr, r.terminal),
                                     spec=bytes(spec))
        self.publisher.publish("/tasks/exec-added", ev.TaskExecAdded(
            container_id=c.id, exec_id=r.exec_id))
        return pb.Empty()

    async def resize_pty(self, r: api.ResizePtyRequest) -> pb.Empty:
        p = self._get(r.id).process(r.exec_id)
        if p.io is not None and p.stdio.terminal:
            p.io.resize(r.width, r.height)
        return pb.Empty()

    async def close_io(self, r: api.CloseIoRequest) -> pb.Empty:
        p = self._get(r.id).process(r.exec_id)
        if r.stdin and p.io is not None:
            await p.io.close_stdin()
        return pb.Empty()

    # -- state / control ----------------------------------------------------------------

    async def state(self, r: api.StateRequest) -> api.StateResponse:
        c = self._get(r.id)
        p = c.process(r.exec_id)
        return api.StateResponse(
            id=p.id, bundle=c.bundle, pid=p.pid, status=p.status(), stdin=p.stdio.stdin,
            stdout=p.stdio.stdout, stderr=p.stdio.stderr, terminal=p.stdio.terminal,
            exit_status=p.exit_status, exited_at=p.exited_at(), exec_id=r.exec_id)

    async def pause(self, r: api.PauseRequest) -> pb.Empty:
        c = self._get(r.id)
        p = c.init
        p.check_pause()
        p.state = "pausing"
        try:
            await c.runc.pause(c.id)
        except BaseException:
            if p.state == "pausing":
                p.state = "running"
            raise
        if p.state == "pausing":
            p.state = "paused"
        self.publisher.publish("/tasks/paused", ev.TaskPaused(container_id=c.id))
        return pb.Empty()

    async def resume(self, r: api.ResumeRequest) -> pb.Empty:
        c = self._get(r.id)
        p = c.init
        p.check_resume()
        await c.runc.resume(c.id)
        if p.state == "paused":
            p.state = "running"
        self.publisher.publish("/tasks/resumed", ev.TaskResumed(container_id=c.id))
        return pb.Empty()

    async def kill(self, r: api.KillRequest) -> pb.Empty:
        c = self._get(r.id)
        p = c.process(r.exec_id)
        p.check_kill()
        if p.is_init:
            try:
                await c.runc.kill(c.id, r.signal, all=r.all)
            except errors.NotFound:
                raise errors.NotFound("process already finished") from None
        else:
            try:
                os.kill(p.pid, r.signal)
            except ProcessLookupError:
                raise errors.NotFound("process already finished") from None
        return pb.Empty()

    async def pids(self, r: api.PidsRequest) -> api.PidsResponse:
        c = self._get(r.id)
        pids = await c.runc.ps(c.id)
        by_pid = {e.pid: e.id for e in c.execs.values() if e.pid}
        out = []
        for pid in pids:
            info = None
            if pid in by_pid:
                info = pack_any(runcopts.ProcessDetails(exec_id=by_pid[pid]))
            out.append(ProcessInfo(pid=pid, info=info))
        return api.PidsResponse(processes=out)

    async def checkpoint(self, r: api.CheckpointTaskRequest) -> pb.Empty:
        c = self._get(r.id)
        p = c.init
        if p.state not in ("running", "paused"):
            raise errors.FailedPrecondition(f"cannot checkpoint a task in {p.state} state")
        o = runcopts.CheckpointOptions()
        if r.options is not None and r.options.value:
            o = runcopts.CheckpointOptions.parse(r.options.value)
        image = o.image_path or r.path
        await c.runc.checkpoint(
            c.id, image, work_path=o.work_path or None, leave_running=not o.exit,
            parent_path=o.parent_path or None, allow_open_tcp=o.open_tcp,
            allow_external_unix_sockets=o.external_unix_sockets, allow_terminal=o.terminal,
            file_locks=o.file_locks, cgroups_mode=o.cgroups_mode or None,
            empty_namespaces=list(o.empty_namespaces))
        return pb.Empty()

    async def update(self, r: api.UpdateTaskRequest) -> pb.Empty:
        c = self._get(r.id)
        if r.resources is None or not r.resources.value:
            raise errors.InvalidArgument("update: no resources")
        try:
            resources = json.loads(r.resources.value)
        except ValueError as e:
            raise errors.InvalidArgument(f"invalid resources: {e}") from None
        await c.runc.update(c.id, resources)
        return pb.Empty()

    async def wait(self, r: api.WaitRequest) -> api.WaitResponse:
        p = self._get(r.id).process(r.exec_id)
        await p.exited.wait()
        return api.WaitResponse(exit_status=p.exit_status, exited_at=p.exited_at())

    async def stats(self, r: api.StatsRequest) -> api.StatsResponse:
        c = self._get(r.id)
        from aiocontainerd import cgroups

        pid = c.init.pid if not c.init.exited.is_set() else None
        path = c.cgroups_path()
        try:
            if pid:
                m = await asyncio.to_thread(cgroups.stats, pid)
            elif path:
                m = await asyncio.to_thread(cgroups.stats, path=path)
            else:
                raise errors.NotFound("cgroup does not exist")
        except FileNotFoundError:
            raise errors.NotFound("cgroup does not exist") from None
        return api.StatsResponse(stats=pack_any(m))

    async def connect(self, r: api.ConnectRequest) -> api.ConnectResponse:
        c = self.containers.get(r.id)
        return api.ConnectResponse(shim_pid=os.getpid(), task_pid=c.init.pid if c else 0)

    async def shutdown(self, r: api.ShutdownRequest) -> pb.Empty:
        # As Go's runc shim (1.6 and 2.x): ``now`` is not looked at; a shim still
        # serving containers keeps running.
        if self.containers:
            return pb.Empty()
        asyncio.get_running_loop().call_soon(self.request_shutdown)
        return pb.Empty()
