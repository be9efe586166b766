"""CRI container RPCs: the :class:`ContainerRPCs` mixin of ``runtime.v1.RuntimeService``.

Follows containerd's ``internal/cri/server``: ``container_create.go``,
``container_start.go``, ``container_stop.go``, ``container_remove.go``,
``container_list.go``, ``container_status.go``, ``container_update_resources.go``,
``container_log_reopen.go``, ``container_execsync.go``, ``container_exec.go``,
``container_attach.go``, ``container_checkpoint_linux.go``, ``container_stats*.go``
and the exit handling of ``events.go`` (``handleContainerExit``).

The mixin works on ``self.state`` (:class:`~.state.CRIState`: records, name
index, per-ID locks, container events) and ``self.plugin`` (:class:`~.plugin.CRIPlugin`:
config, metadata store, image service, shim manager ``runtime``, exchange).
All objects live in namespace ``k8s.io``.

Lifecycle of one container::

    CreateContainer  name reserved (AlreadyExists for the same name/attempt in the pod),
                     pod READY (else FailedPrecondition), image resolved locally
                     (NotFound), snapshot ``<id>`` prepared from the image's chain ID in
                     the handler's snapshotter (under a short lease), OCI spec built by
                     cri/spec.py (joins the pause task's namespaces, pod files, CRI
                     annotations so the container runs in the pod's shim), container
                     record with runtime = the handler's runtime_type and options,
                     CRI metadata in its extension. State CREATED. Any failure undoes
                     all of it (record, snapshot, folders, name).
    StartContainer   CREATED only. The task is created now (as containerd does) with
                     stdout/stderr going to the CRI log (``log_directory/log_path``),
                     stdin from a FIFO when the config asks for stdin; started;
                     ``started_at``/``pid`` recorded; a monitor waits for the exit.
                     A failed start leaves the container EXITED with exit code 128,
                     reason ``StartError``.
    (exit)           the monitor deletes the task and records ``finished_at``,
                     ``exit_code`` and reason ``Completed``/``Error``/``OOMKilled``
                     (a ``/tasks/oom`` event seen for it); CONTAINER_STOPPED event.
    StopContainer    unknown or not running: success (idempotent). ``timeout`` > 0:
                     the stop signal (config ``stop_signal``, else the image's
                     ``StopSignal``, else SIGTERM), wait up to ``timeout`` s; then
                     SIGKILL and wait for the exit.
    RemoveContainer  unknown: success. Running: stopped with timeout 0 first. Task,
                     record, snapshot and folders deleted, name released; the log
                     file stays (kubelet owns it). CONTAINER_DELETED event.

Output: stdout/stderr reach the CRI log through the ``binary://`` logger of
``cri/logger.py`` when it is available (the shim side writes the log, so logs
survive a daemon restart); otherwise through FIFOs whose contents the daemon
writes in the CRI log format (:class:`CRILogCopier`).

Folders: ``<cri root>/containers/<id>`` (image volumes) and
``<cri state>/containers/<id>`` (FIFOs: ``stdin``, ``stdout``, ``stderr``, ``exec/``).

Errors (``aiocontainerd.errors``): NotFound (container, pod, image), AlreadyExists
(name), FailedPrecondition (wrong state), InvalidArgument (bad request),
DeadlineExceeded (ExecSync timeout), Unimplemented (checkpoint without CRIU, stats
before cri/stats.py), Unavailable (no shim manager / streaming server).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import secrets
import shutil
import signal as signal_
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.errors import (
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
    reworded,
)
from aiocontainerd.metadata.containers import Container, Runtime
from aiocontainerd.types import TypedValue

from . import exec as exec_
from . import spec as spec_
from .state import (
    CONTAINER_CREATED,
    CONTAINER_EXITED,
    CONTAINER_EXTENSION,
    CONTAINER_RUNNING,
    CONTAINER_UNKNOWN,
    KIND_CONTAINER,
    REASON_COMPLETED,
    REASON_ERROR,
    REASON_OOM_KILLED,
    REASON_START_ERROR,
    SANDBOX_READY,
    ContainerRecord,
    SandboxRecord,
    build_labels,
    go_json,
    make_container_name,
)

if TYPE_CHECKING:
    from .plugin import CRIPlugin
    from .state import CRIState

log = logging.getLogger(__name__)

SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
CRIU = "/usr/sbin/criu"
#: exit code of a container whose start failed (containerd's errorStartExitCode)
START_ERROR_EXIT_CODE = 128
SIGKILL = 9
SIGTERM = 15


def _makedirs(*paths: str) -> None:
    for path in paths:
        os.makedirs(path, 0o755, exist_ok=True)


def _rmtrees(*paths: str) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def _now() -> int:
    return time.time_ns()


def _parse_signal(name: str) -> int:
    """A signal number from ``"SIGTERM"``, ``"TERM"`` or ``"15"``. Raises InvalidArgument."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal_.Signals[text])
    except KeyError:
        raise InvalidArgument(f"unknown stop signal {name!r}") from None


def cri_signal_name(sig: api.Signal | int) -> str:
    """The OCI stop-signal name of a CRI ``Signal`` ("" for RUNTIME_DEFAULT); InvalidArgument if unknown."""
    if not sig:
        return ""
    try:
        name = api.Signal(sig).name
    except ValueError:
        raise InvalidArgument(f"unknown stop signal {sig!r}") from None
    if not name or not name.startswith("SIG"):
        raise InvalidArgument(f"unknown stop signal {sig!r}")
    return name


# -- CRI log format (the daemon-side fallback) --------------------------------------------------

def rfc3339_nano(ns: int | None = None) -> str:
    """Go's ``time.RFC3339Nano`` of local time (trailing zeros of the fraction trimmed)."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    dt = datetime.datetime.fromtimestamp(secs).astimezone()
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    off = dt.utcoffset() or datetime.timedelta(0)
    if not off:
        return text + "Z"
    minutes = int(off.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class CRILogCopier:
    """Copies a process's stdout/stderr FIFOs into a CRI-format log file (containerd's
    ``cio.NewCRILogger``): ``<RFC3339Nano> <stream> <P|F> <content>\\n``, lines longer
    than ``max_line`` split into ``P`` parts. Used when no ``binary://`` logger exists.
    """

    def __init__(self, path: str, max_line: int) -> None:
        self.path = path
        self.max_line = max_line if max_line > 0 else 0
        self._fd: int | None = None
        self._lock = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []

    def open(self) -> None:
        if self.path:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        old = self._fd
        self.open()
        if old is not None:
            with contextlib.suppress(OSError):
                os.close(old)

    def _emit(self, stream: str, content: bytes, full: bool) -> None:
        if self._fd is None:
            return
        line = b"%s %s %s %s\n" % (rfc3339_nano().encode(), stream.encode(), b"F" if full else b"P", content)
        with contextlib.suppress(OSError):
            os.write(self._fd, line)

    async def copy(self, fifos: exec_.FifoSet, name: str) -> None:
        buf = b""
        limit = self.max_line

        async def sink(data: bytes) -> None:
            nonlocal buf
            buf += data
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line, buf = buf[:nl], buf[nl + 1:]
                while limit and len(line) > limit:
                    self._emit(name, line[:limit], False)
                    line = line[limit:]
                self._emit(name, line, True)
            while limit and len(buf) >= limit:
                self._emit(name, buf[:limit], False)
                buf = buf[limit:]

        await fifos.copy_out(name, sink)
        if buf:
            self._emit(name, buf, False)

    def start(self, fifos: exec_.FifoSet, tty: bool) -> None:
        self.tasks.append(asyncio.ensure_future(self.copy(fifos, "stdout")))
        if not tty:
            self.tasks.append(asyncio.ensure_future(self.copy(fifos, "stderr")))

    async def wait(self, limit: float | None = None) -> None:
        """Until both copies reached EOF, at most ``limit`` seconds."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=limit)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await t
        self.tasks.clear()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


@dataclasses.dataclass
class _Live:
    """Per-container runtime objects kept in memory (not persisted)."""

    exited: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    monitor: asyncio.Task[None] | None = None
    fifos: exec_.FifoSet | None = None
    copier: CRILogCopier | None = None
    oom: bool = False
    stop_signaled: bool = False


# -- LinuxContainerResources → OCI -------------------------------------------------------------

def oci_resources(r: api.LinuxContainerResources | None, base: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """OCI ``linux.resources`` with CRI resources applied over ``base`` (containerd's
    ``WithResources``): zero/empty CRI fields leave the base value alone."""
    out: dict[str, Any] = json.loads(json.dumps(dict(base or {})))
    if r is None:
        return out
    cpu = out.setdefault("cpu", {})
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    if r.cpu_shares:
        cpu["shares"] = r.cpu_shares
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if not cpu:
        out.pop("cpu")
    mem = out.setdefault("memory", {})
    if r.memory_limit_in_bytes:
        mem["limit"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes:
        mem["swap"] = r.memory_swap_limit_in_bytes
    if not mem:
        out.pop("memory")
    if r.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in r.hugepage_limits]
    if r.unified:
        out.setdefault("unified", {}).update(dict(r.unified))
    return out


def cri_resources(res: Mapping[str, Any] | None, oom_score_adj: int = 0) -> api.LinuxContainerResources:
    """The CRI view of OCI ``linux.resources`` (containerd's ``toCRIContainerResources``)."""
    res = res or {}
    cpu = res.get("cpu") or {}
    mem = res.get("memory") or {}
    return api.LinuxContainerResources(
        cpu_period=int(cpu.get("period") or 0), cpu_quota=int(cpu.get("quota") or 0),
        cpu_shares=int(cpu.get("shares") or 0), memory_limit_in_bytes=int(mem.get("limit") or 0),
        memory_swap_limit_in_bytes=int(mem.get("swap") or 0), oom_score_adj=oom_score_adj,
        cpuset_cpus=str(cpu.get("cpus") or ""), cpuset_mems=str(cpu.get("mems") or ""),
        hugepage_limits=[api.HugepageLimit(page_size=h.get("pageSize", ""), limit=int(h.get("limit") or 0))
                         for h in res.get("hugepageLimits") or []],
        unified=dict(res.get("unified") or {}))


class ContainerRPCs:
    """Container RPCs of ``runtime.v1.RuntimeService`` (see the module doc).

    Needs ``self.state`` (CRIState) and ``self.plugin`` (CRIPlugin). Other parts call:
    :meth:`stream_runtime` (the StreamRuntime for the streaming server),
    :meth:`recover_containers` (after a restart, once sandboxes are loaded),
    :meth:`stop_container` / :meth:`remove_container` (StopPodSandbox/RemovePodSandbox).
    """

    state: CRIState
    plugin: CRIPlugin

    # -- small helpers -------------------------------------------------------------------------

    @property
    def _ns(self) -> str:
        return self.state.namespace

    @property
    def _live(self) -> dict[str, _Live]:
        live = self.__dict__.get("_cri_live")
        if live is None:
            live = self.__dict__["_cri_live"] = {}
        return live

    def _live_of(self, id_: str) -> _Live:
        live = self._live.get(id_)
        if live is None:
            live = self._live[id_] = _Live()
        return live

    def _tasks(self) -> Any:
        runtime = self.plugin.runtime
        if runtime is None:
            raise Unavailable("the CRI has no runtime: io.containerd.runtime.v2.task is not loaded")
        return runtime

    def _container_root(self, id_: str) -> str:
        return str(Path(self.plugin.root) / "containers" / id_)

    def _container_state_dir(self, id_: str) -> str:
        return str(Path(self.plugin.state) / "containers" / id_)

    def _task_or_none(self, id_: str) -> Any:
        runtime = self.plugin.runtime
        if runtime is None:
            return None
        try:
            return runtime.get(self._ns, id_)
        except NotFound:
            return None

    def _require_running(self, record: ContainerRecord) -> None:
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition(f"container is in {record.state} state")

    def _streaming(self) -> Any:
        for owner in (self.plugin, self):
            for attr in ("streaming_server", "streaming", "stream_server"):
                server = getattr(owner, attr, None)
                if server is not None:
                    return server
        raise Unavailable("the CRI streaming server is not running")

    def stream_runtime(self) -> exec_.CRIStreamRuntime:
        """The :class:`~.streaming.StreamRuntime` to give the streaming server."""
        return exec_.CRIStreamRuntime(self)  # type: ignore[arg-type]

    @property
    def drain_exec_io_timeout(self) -> float:
        return self.plugin.config.drain_exec_sync_io_timeout_seconds

    def exec_target(self, container_id: str) -> exec_.ExecTarget:
        """A running container for exec/attach. Raises NotFound, FailedPrecondition."""
        record = self.state.get_container(container_id)
        self._require_running(record)
        task = self._task_or_none(record.id)
        if task is None:
            raise FailedPrecondition(f"container {record.id} has no running task")
        state_dir = self._container_state_dir(record.id)
        stdin = os.path.join(state_dir, "io", "stdin") if record.config.stdin else ""
        return exec_.ExecTarget(
            id=record.id, task=task, process=dict((record.spec or {}).get("process") or {}),
            fifo_root=os.path.join(state_dir, "exec"), log_path=self._output_log(record),
            stdin_path=stdin, stdin_once=record.config.stdin_once, tty=record.config.tty,
            exited=self._live_of(record.id).exited)

    # -- CreateContainer ---------------------------------------------------------------------

    async def create_container(self, message: api.CreateContainerRequest) -> api.CreateContainerResponse:
        """Create a container in a READY pod (see the module doc). Returns its ID."""
        config = message.config
        if config is None or config.metadata is None:
            raise InvalidArgument("container config must include metadata")
        sandbox = self.state.get_sandbox(message.pod_sandbox_id)
        if sandbox.state != SANDBOX_READY:
            raise FailedPrecondition(f"sandbox container {sandbox.id!r} is not running")
        sandbox_config = message.sandbox_config or sandbox.config
        if sandbox_config.metadata is None:
            sandbox_config = dataclasses.replace(sandbox_config, metadata=sandbox.metadata) \
                if dataclasses.is_dataclass(sandbox_config) else sandbox.config
        stop_signal = cri_signal_name(config.stop_signal)
        id_ = secrets.token_hex(32)
        name = make_container_name(config.metadata, sandbox_config.metadata or sandbox.metadata)
        try:
            self.state.names.reserve(name, id_)
        except ContainerdError as e:
            raise type(e)(f"failed to reserve container name {name!r}: {e.message}") from None
        undo: list[Any] = []
        try:
            record = await self._create(id_, name, sandbox, sandbox_config, config, stop_signal, undo)
        except BaseException:
            for step in reversed(undo):
                try:
                    await asyncio.shield(step())
                except Exception as e:
                    log.warning("undoing container create %s: %s", id_, e)
            self.state.names.release(name)
            raise
        self.state.add_container(record)
        self.state.container_event(id_, api.ContainerEventType.CONTAINER_CREATED_EVENT)
        return api.CreateContainerResponse(container_id=id_)

    async def _create(self, id_: str, name: str, sandbox: SandboxRecord, sandbox_config: api.PodSandboxConfig,
                      config: api.ContainerConfig, stop_signal: str, undo: list[Any]) -> ContainerRecord:
        plugin = self.plugin
        ref = config.image.image if config.image else ""
        try:
            image = await plugin.image_service.resolve(ref)
        except NotFound as e:
            raise NotFound(f"failed to resolve image {ref!r}: {e.message}") from None
        image_name = self._image_record_name(ref, image)
        spec_image_name = (config.image.user_specified_image if config.image else "") or image_name
        handler = sandbox.runtime_handler
        runtime_cfg = plugin.config.runtime(handler)
        runtime_type = sandbox.runtime_type or runtime_cfg.runtime_type
        snapshotter_name = plugin.config.snapshotter_for(handler)
        snapshotter = plugin.metadata.snapshotters.get(snapshotter_name)
        if snapshotter is None:
            raise FailedPrecondition(f"snapshotter {snapshotter_name!r} is not loaded")

        root_dir, state_dir = self._container_root(id_), self._container_state_dir(id_)

        undo.append(lambda: asyncio.to_thread(_rmtrees, root_dir, state_dir))
        _makedirs(root_dir, state_dir)   # two mkdirs: cheaper here than a thread hop

        # the rootfs: always writable (runc makes it read-only after creating mount points)
        lease = f"cri-create-{id_}"
        await plugin.metadata.leases.create(self._ns, lease, {"containerd.io/gc.expire":
                                                             rfc3339_nano(_now() + 3600 * 10**9)})
        try:
            mounts = await snapshotter.prepare(self._ns, id_, image.chain_id, lease=lease)

            async def rm_snapshot() -> None:
                with contextlib.suppress(NotFound):
                    await snapshotter.remove(self._ns, id_)
            undo.append(rm_snapshot)

            spec = await self._build_spec(id_, sandbox, sandbox_config, config, image, spec_image_name,
                                          root_dir, mounts)
            runtime_options = None
            if runtime_cfg.options:
                from aiocontainerd.runtimes.v2.manager import runc_options

                try:
                    runtime_options = TypedValue(RUNC_OPTIONS_URL, bytes(runc_options(runtime_cfg.options)))
                except ValueError as e:
                    raise InvalidArgument(f"runtime handler {handler!r}: {e}") from None
            log_path = ""
            if sandbox_config.log_directory and config.log_path:
                log_path = os.path.join(sandbox_config.log_directory, config.log_path)
            inner = image.config.get("config") or {}
            if not stop_signal and inner.get("StopSignal"):
                stop_signal = str(inner["StopSignal"])
            record = ContainerRecord(
                id=id_, name=name, sandbox_id=sandbox.id, config=config, image_ref=image.id,
                image_name=image_name, log_path=log_path, created_at=_now(), state=CONTAINER_CREATED,
                snapshotter=snapshotter_name, snapshot_key=id_, runtime_handler=handler, spec=spec,
                extra={"stop_signal": stop_signal, "runtime_type": runtime_type,
                       "image_digest": image.info.manifest.digest if image.info.manifest else ""})
            labels = build_labels(dict(config.labels), dict(inner.get("Labels") or {}), KIND_CONTAINER)
            container = Container(
                id=id_, runtime=Runtime(runtime_type, runtime_options),
                spec=TypedValue(SPEC_TYPE_URL, json.dumps(spec).encode()), labels=labels,
                image=image_name, snapshotter=snapshotter_name, snapshot_key=id_,
                extensions={CONTAINER_EXTENSION: record.extension()}, sandbox=sandbox.id)
            await plugin.metadata.containers.create(self._ns, container)

            async def rm_record() -> None:
                with contextlib.suppress(NotFound):
                    await plugin.metadata.containers.delete(self._ns, id_)
            undo.append(rm_record)
        finally:
            # the lease only kept the snapshot from the collector until the record (or the
            # undo) took over: it goes in the background, not on the RPC's critical path
            self._in_background(self._delete_lease(lease), f"cri-lease-{id_[:12]}")
        return record

    async def _delete_lease(self, lease: str) -> None:
        with contextlib.suppress(Exception):
            await self.plugin.metadata.leases.delete(self._ns, lease)

    def _in_background(self, work: Any, name: str) -> None:
        """Run ``work`` (a coroutine that never raises) as a task kept until it ends."""
        tasks: set[asyncio.Task[Any]] = self.__dict__.setdefault("_cri_background", set())
        task = asyncio.ensure_future(work)
        task.set_name(name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    @staticmethod
    def _image_record_name(ref: str, image: Any) -> str:
        """The image record name the reference resolved through (containerd's ``Image.Name()``)."""
        from .reference import normalize

        with contextlib.suppress(Exception):
            name = normalize(ref)
            if name in image.references:
                return name
        tags = image.repo_tags
        if tags:
            return tags[0]
        return image.repo_digests[0] if image.repo_digests else image.id

    async def _build_spec(self, id_: str, sandbox: SandboxRecord, sandbox_config: api.PodSandboxConfig,
                          config: api.ContainerConfig, image: Any, image_name: str, root_dir: str,
                          mounts: list[Any]) -> dict[str, Any]:
        from aiocontainerd.oci.rootfs import from_mounts

        target_pid = None
        ns_opts = (config.linux.security_context.namespace_options
                   if config.linux and config.linux.security_context else None)
        if ns_opts is not None and ns_opts.pid == api.NamespaceMode.TARGET:
            target = self.state.get_container(ns_opts.target_id)
            if target.state != CONTAINER_RUNNING or target.sandbox_id != sandbox.id:
                raise InvalidArgument(f"invalid target container {ns_opts.target_id!r}: not running in "
                                      "the same pod")
            target_pid = target.pid
        rootfs = from_mounts(mounts)
        cri_config = self.plugin.config
        handler = sandbox.runtime_handler or cri_config.containerd.default_runtime_name
        features = getattr(self, "handler_features", {}).get(handler)

        def build() -> dict[str, Any]:
            extra: list[api.Mount] = []
            if not cri_config.ignore_image_defined_volumes:
                extra = spec_.image_volume_mounts(config, image.config, root_dir)
            return spec_.container_spec(
                id_, sandbox.id, config, sandbox_config, image.config, sandbox_pid=sandbox.pid,
                files=spec_.SandboxFiles.of(sandbox.root_dir, sandbox.state_dir), cri_config=cri_config,
                runtime_handler=sandbox.runtime_handler, image_name=image_name, target_pid=target_pid,
                extra_mounts=extra, rootfs=rootfs, features=features)

        # not pure computation: it reads the rootfs's passwd/group, /proc and /sys files, the
        # seccomp profile, and scans /dev for a privileged container — off the loop
        return await asyncio.to_thread(build)

    # -- StartContainer ----------------------------------------------------------------------

    async def start_container(self, message: api.StartContainerRequest) -> api.StartContainerResponse:
        """Create and start the container's task (see the module doc)."""
        record = self.state.get_container(message.container_id)
        async with self.state.lock(record.id):
            record = self.state.get_container(record.id)
            if record.state != CONTAINER_CREATED:
                raise FailedPrecondition(f"container is in {record.state} state")
            try:
                await self._start(record)
            except BaseException as e:
                record.finished_at = _now()
                record.exit_code = START_ERROR_EXIT_CODE
                record.reason = REASON_START_ERROR
                record.message = getattr(e, "message", None) or str(e) or type(e).__name__
                record.state = CONTAINER_EXITED
                record.pid = 0
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.state.save_container(record))
                self._live_of(record.id).exited.set()
                raise
        self.state.container_event(record.id, api.ContainerEventType.CONTAINER_STARTED_EVENT)
        return api.StartContainerResponse()

    async def _start(self, record: ContainerRecord) -> None:
        sandbox = self.state.get_sandbox(record.sandbox_id)
        if sandbox.state != SANDBOX_READY:
            raise FailedPrecondition(f"sandbox container {sandbox.id!r} is not running")
        ns_opts = (record.config.linux.security_context.namespace_options
                   if record.config.linux and record.config.linux.security_context else None)
        if ns_opts is not None and ns_opts.pid == api.NamespaceMode.TARGET:
            target = self.state.get_container(ns_opts.target_id)
            if target.state != CONTAINER_RUNNING:
                raise FailedPrecondition(f"invalid target container {ns_opts.target_id!r}: not running")
        runtime = self._tasks()
        runtime_cfg = self.plugin.config.runtime(record.runtime_handler)
        live = self._live_of(record.id)
        live.exited.clear()
        tty = bool(record.config.tty)
        state_dir = self._container_state_dir(record.id)
        stdio = await self._container_io(record, state_dir, live)
        task = None
        try:
            with reworded("failed to create containerd task"):
                task = await runtime.create(self._ns, record.id, stdin=stdio[0], stdout=stdio[1],
                                            stderr=stdio[2], terminal=tty,
                                            runtime_path=runtime_cfg.runtime_path)
            if live.copier is not None and live.fifos is not None:
                live.copier.start(live.fifos, tty)
            waiter = asyncio.ensure_future(task.wait())
            try:
                with reworded(f"failed to start containerd task {json.dumps(record.id)}"):
                    pid = await task.start()
            except BaseException:
                waiter.cancel()
                raise
            if live.fifos is not None:
                live.fifos.shim_opened()
        except BaseException:
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._delete_task(record.id, kill=True))
            await self._close_io(live)
            raise
        record.pid = pid
        record.started_at = _now()
        record.state = CONTAINER_RUNNING
        await self.state.save_container(record)
        self._ensure_oom_watch()
        live.monitor = asyncio.create_task(self._monitor(record.id, waiter),
                                           name=f"cri-exit-monitor-{record.id[:12]}")

    async def _container_io(self, record: ContainerRecord, state_dir: str,
                            live: _Live) -> tuple[str, str, str]:
        """(stdin, stdout, stderr) for the task: the CRI logger's URI when cri/logger.py offers
        one (its script installed, an absolute log path), else FIFOs copied by the daemon into
        the CRI log (:class:`CRILogCopier`)."""
        tty = bool(record.config.tty)
        want_stdin = bool(record.config.stdin)
        log_path = self._output_log(record)
        uri = self._logger_uri(log_path)
        if uri:
            fifos = await asyncio.to_thread(exec_.FifoSet.create, os.path.join(state_dir, "io"),
                                            stdin=True, stdout=False, stderr=False) if want_stdin else None
            live.fifos = fifos
            return (fifos.stdin if fifos else "", uri, "" if tty else uri)
        fifos = await asyncio.to_thread(exec_.FifoSet.create, os.path.join(state_dir, "io"), stdin=want_stdin,
                                        stdout=True, stderr=not tty)
        fifos.open_outputs()
        live.fifos = fifos
        copier = CRILogCopier(log_path, self.plugin.config.max_container_log_line_size)
        try:
            await asyncio.to_thread(copier.open)
        except OSError as e:
            fifos.close()
            raise FailedPrecondition(f"failed to create and open log file {log_path!r}: {e}") from None
        live.copier = copier
        return (fifos.stdin, fifos.stdout, fifos.stderr)

    def _output_log(self, record: ContainerRecord) -> str:
        """Where the container's output is logged: kubelet's log path, or, when the request named
        none, a private file in the container's folder (attach follows the log, as containerd's
        attach follows the live output whether or not a log file is kept)."""
        return record.log_path or os.path.join(self._container_root(record.id), "output.log")

    def _logger_uri(self, log_path: str) -> str:
        """The ``binary://`` CRI logger URI of cri/logger.py for ``log_path`` ("" if unavailable:
        the logger script is not installed, or the log path is not absolute)."""
        from . import logger as logger_

        try:
            return logger_.log_uri(log_path, max_line=self.plugin.config.max_container_log_line_size)
        except (ValueError, OSError, AttributeError) as e:
            log.info("no CRI logger for %s (%s); the daemon copies the output", log_path, e)
            return ""

    async def _close_io(self, live: _Live) -> None:
        if live.copier is not None:
            await live.copier.wait(2)
            await live.copier.close()
            live.copier = None
        if live.fifos is not None:
            fifos, live.fifos = live.fifos, None
            fifos.close()

    async def _monitor(self, id_: str, waiter: asyncio.Future[Any]) -> None:
        """Wait for the task's exit; delete the task and record the exit (containerd's
        ``handleContainerExit``)."""
        try:
            exit_ = await waiter
            status, exited_at = exit_.status, exit_.exited_at
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("waiting for container %s: %s", id_, e)
            status, exited_at = 255, _now()
        await self._handle_exit(id_, status, exited_at)

    async def _handle_exit(self, id_: str, status: int, exited_at: int) -> None:
        """A container's init exited: task deleted, exit recorded, CONTAINER_STOPPED — once,
        whoever reports it first."""
        live = self._live_of(id_)
        try:
            await self._delete_task(id_, kill=False)
        except Exception as e:
            log.warning("deleting the task of exited container %s: %s", id_, e)
        await self._close_io(live)
        record = self.state.containers.get(id_)
        if record is not None and record.state in (CONTAINER_RUNNING, CONTAINER_UNKNOWN):
            record.state = CONTAINER_EXITED
            record.pid = 0
            record.exit_code = status
            record.finished_at = exited_at or _now()
            if live.oom:
                record.reason = REASON_OOM_KILLED
            elif not record.reason or record.reason in (REASON_COMPLETED, REASON_ERROR):
                record.reason = REASON_COMPLETED if status == 0 else REASON_ERROR
            try:
                await self.state.save_container(record)
            except NotFound:
                pass
            except Exception as e:
                log.warning("recording the exit of container %s: %s", id_, e)
            self.state.container_event(id_, api.ContainerEventType.CONTAINER_STOPPED_EVENT)
        live.exited.set()
        live.monitor = None

    async def _delete_task(self, id_: str, *, kill: bool) -> None:
        task = self._task_or_none(id_)
        if task is None:
            return
        if kill:
            with contextlib.suppress(NotFound, FailedPrecondition):
                await task.kill(SIGKILL, all=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task.wait(), 10)
        try:
            await self._tasks().delete(self._ns, id_)
        except NotFound:
            pass

    def _ensure_oom_watch(self) -> None:
        if self.__dict__.get("_cri_oom_task") is not None or self.plugin.events is None:
            return
        self.__dict__["_cri_oom_task"] = asyncio.create_task(self._oom_watch(), name="cri-oom-watch")

    async def _oom_watch(self) -> None:
        from aiocontainerd.api.containerd import events as eventsapi

        try:
            async with self.plugin.events.subscribe(f'namespace=="{self._ns}",topic=="/tasks/oom"') as sub:
                async for env in sub:
                    try:
                        ev = eventsapi.TaskOom.parse(env.event.value)
                    except Exception:
                        continue
                    if ev.container_id in self.state.containers:
                        self._live_of(ev.container_id).oom = True
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("OOM watch ended: %s", e)
        finally:
            self.__dict__["_cri_oom_task"] = None

    # -- recovery -------------------------------------------------------------------------------

    async def recover_containers(self) -> None:
        """After a restart (records loaded, tasks adopted by the shim manager): watch running
        containers again; those whose task is gone are recorded EXITED (the task's exit when the
        shim still knows it, else 255 "Unknown"). Call once sandboxes are recovered."""
        for record in list(self.state.containers.values()):
            if record.state not in (CONTAINER_RUNNING, CONTAINER_UNKNOWN):
                continue
            task = self._task_or_none(record.id)
            live = self._live_of(record.id)
            if task is None:
                record.state = CONTAINER_RUNNING
                await self._handle_exit(record.id, 255, _now())
                continue
            waiter = asyncio.ensure_future(task.wait())
            live.monitor = asyncio.create_task(self._monitor(record.id, waiter),
                                               name=f"cri-exit-monitor-{record.id[:12]}")
        self._ensure_oom_watch()

    # -- StopContainer --------------------------------------------------------------------------

    async def stop_container(self, message: api.StopContainerRequest) -> api.StopContainerResponse:
        """Stop with the stop signal, then SIGKILL after ``timeout`` s. Unknown or stopped: success."""
        try:
            record = self.state.get_container(message.container_id)
        except NotFound:
            return api.StopContainerResponse()
        await self._stop(record, float(message.timeout))
        return api.StopContainerResponse()

    def _stop_signal(self, record: ContainerRecord) -> int:
        name = cri_signal_name(record.config.stop_signal) or str(record.extra.get("stop_signal") or "")
        return _parse_signal(name) if name else SIGTERM

    async def _stop(self, record: ContainerRecord, grace: float) -> None:
        if record.state not in (CONTAINER_RUNNING, CONTAINER_UNKNOWN):
            return
        live = self._live_of(record.id)
        task = self._task_or_none(record.id)
        if task is None:
            if not live.exited.is_set():
                await self._handle_exit(record.id, 255, _now())
            return
        if live.monitor is None:   # e.g. an UNKNOWN container: watch it now
            waiter = asyncio.ensure_future(task.wait())
            live.monitor = asyncio.create_task(self._monitor(record.id, waiter))
        if grace > 0:
            sig = self._stop_signal(record)
            if not live.stop_signaled:
                live.stop_signaled = True
                with contextlib.suppress(NotFound):
                    await task.kill(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.exited.wait(), grace)
                return
        with contextlib.suppress(NotFound):
            await task.kill(SIGKILL)
        await live.exited.wait()

    # -- RemoveContainer ------------------------------------------------------------------------

    async def remove_container(self, message: api.RemoveContainerRequest) -> api.RemoveContainerResponse:
        """Force-stop, then delete task, record, snapshot, folders, name. Unknown: success."""
        try:
            record = self.state.get_container(message.container_id)
        except NotFound:
            return api.RemoveContainerResponse()
        async with self.state.lock(record.id):
            if record.id not in self.state.containers:
                return api.RemoveContainerResponse()
            if record.state in (CONTAINER_RUNNING, CONTAINER_UNKNOWN):
                await self._stop(record, 0)
            await self._remove(record)
        self.state.forget_lock(record.id)
        self.state.container_event(record.id, api.ContainerEventType.CONTAINER_DELETED_EVENT)
        return api.RemoveContainerResponse()

    async def _remove(self, record: ContainerRecord) -> None:
        await self._delete_task(record.id, kill=True)
        live = self._live.pop(record.id, None)
        if live is not None:
            if live.monitor is not None:
                live.monitor.cancel()
            await self._close_io(live)
        metadata = self.plugin.metadata

        async def delete_record() -> None:
            with contextlib.suppress(NotFound):
                await metadata.containers.delete(self._ns, record.id)

        async def remove_snapshot() -> None:
            snapshotter = metadata.snapshotters.get(record.snapshotter) if record.snapshotter else None
            if snapshotter is not None and record.snapshot_key:
                try:
                    await snapshotter.remove(self._ns, record.snapshot_key)
                except NotFound:
                    pass
                except Exception as e:
                    log.warning("removing the snapshot of container %s: %s", record.id, e)

        # independent: the record, the snapshot and the folders go at the same time
        await asyncio.gather(delete_record(), remove_snapshot(), asyncio.to_thread(
            _rmtrees, self._container_root(record.id), self._container_state_dir(record.id)))
        self.state.remove_container(record.id)

    # -- entry points for the sandbox RPCs (StopPodSandbox / RemovePodSandbox) ----------------

    async def stop_container_record(self, record: ContainerRecord, grace: float = 0) -> None:
        """Stop one container of a pod being stopped (kill after ``grace`` s)."""
        await self._stop(record, grace)

    async def remove_container_record(self, record: ContainerRecord) -> None:
        """Remove one container of a pod being removed (stopped first), with its event."""
        if record.id not in self.state.containers:
            return
        if record.state in (CONTAINER_RUNNING, CONTAINER_UNKNOWN):
            await self._stop(record, 0)
        await self._remove(record)
        self.state.forget_lock(record.id)
        self.state.container_event(record.id, api.ContainerEventType.CONTAINER_DELETED_EVENT)

    # -- List / Status ------------------------------------------------------------------------

    def _image_spec(self, record: ContainerRecord) -> api.ImageSpec:
        img = record.config.image or api.ImageSpec()
        return api.ImageSpec(image=img.image, annotations=dict(img.annotations),
                             user_specified_image=img.user_specified_image,
                             runtime_handler=img.runtime_handler)

    def _to_cri(self, record: ContainerRecord) -> api.Container:
        return api.Container(
            id=record.id, pod_sandbox_id=record.sandbox_id, metadata=record.metadata,
            image=self._image_spec(record), image_ref=record.image_ref, state=record.cri_state,
            created_at=record.created_at, labels=dict(record.config.labels),
            annotations=dict(record.config.annotations), image_id=record.image_ref)

    async def list_containers(self, message: api.ListContainersRequest) -> api.ListContainersResponse:
        """Containers matching the filter: ID (or unique prefix), state, pod ID (or prefix), labels."""
        f = message.filter
        records = list(self.state.containers.values())
        if f is not None:
            if f.id:
                try:
                    want = self.state.get_container(f.id).id
                except (NotFound, InvalidArgument):
                    return api.ListContainersResponse()
                records = [r for r in records if r.id == want]
            if f.pod_sandbox_id:
                try:
                    pod = self.state.get_sandbox(f.pod_sandbox_id).id
                except (NotFound, InvalidArgument):
                    pod = f.pod_sandbox_id
                records = [r for r in records if r.sandbox_id == pod]
            if f.state is not None:
                records = [r for r in records if r.cri_state == f.state.state]
            if f.label_selector:
                records = [r for r in records
                           if all(r.config.labels.get(k) == v for k, v in f.label_selector.items())]
        records.sort(key=lambda r: r.created_at)
        from .sandbox import WireCache, repeated_wire, with_wire  # list answers: cached encodings

        wires = WireCache.of(self, "_container_wire", self.state.containers)
        cached = [wires.get(r.id, (r.state, r.created_at, r.image_ref, r.sandbox_id, id(r.config)),
                            lambda r=r: self._to_cri(r)) for r in records]
        return with_wire(api.ListContainersResponse(containers=[item for item, _ in cached]),
                         repeated_wire(1, [wire for _, wire in cached]))

    def cri_container_status(self, record: ContainerRecord, image: Any = None) -> api.ContainerStatus:
        """The ``ContainerStatus`` message of a record (containerd's ``toCRIContainerStatus``):
        ``image`` = the image's first repo tag and ``image_ref`` its first repo digest when the
        image (a CRIImage) is given and has them; resources from the spec."""
        spec = self._image_spec(record)
        image_ref = record.image_ref
        if image is not None:
            if image.repo_tags:
                spec.image = image.repo_tags[0]
            if image.repo_digests:
                image_ref = image.repo_digests[0]
        linux = (record.spec or {}).get("linux") or {}
        oom = ((record.spec or {}).get("process") or {}).get("oomScoreAdj", 0)
        resources = api.ContainerResources(linux=cri_resources(linux.get("resources"), oom))
        return api.ContainerStatus(
            id=record.id, metadata=record.metadata, state=record.cri_state, created_at=record.created_at,
            started_at=record.started_at, finished_at=record.finished_at, exit_code=record.exit_code,
            image=spec, image_ref=image_ref, reason=record.reason, message=record.message,
            labels=dict(record.config.labels), annotations=dict(record.config.annotations),
            mounts=list(record.config.mounts), log_path=record.log_path, resources=resources,
            image_id=record.image_ref, stop_signal=self._cri_stop_signal(record))

    async def container_status(self, message: api.ContainerStatusRequest) -> api.ContainerStatusResponse:
        """The container's status (``verbose``: ``info`` = JSON as containerd's)."""
        record = self.state.get_container(message.container_id)
        image = None
        with contextlib.suppress(Exception):
            image = await self.plugin.image_service.get(record.image_ref)
        status = self.cri_container_status(record, image)
        info: dict[str, str] = {}
        if message.verbose:
            info["info"] = json.dumps(self._verbose_info(record), indent=2)
        return api.ContainerStatusResponse(status=status, info=info)

    def _cri_stop_signal(self, record: ContainerRecord) -> api.Signal:
        name = cri_signal_name(record.config.stop_signal) or str(record.extra.get("stop_signal") or "")
        if name and not name.startswith("SIG") and not name.isdigit():
            name = "SIG" + name.upper()
        if name.isdigit():
            with contextlib.suppress(ValueError):
                name = signal_.Signals(int(name)).name
        return api.Signal.__members__.get(name, api.Signal.RUNTIME_DEFAULT)

    def _verbose_info(self, record: ContainerRecord) -> dict[str, Any]:
        runtime_cfg = None
        with contextlib.suppress(NotFound):
            runtime_cfg = self.plugin.config.runtime(record.runtime_handler)
        return {
            "sandboxID": record.sandbox_id,
            "pid": record.pid,
            "removing": False,
            "snapshotKey": record.snapshot_key,
            "snapshotter": record.snapshotter,
            "runtimeType": record.extra.get("runtime_type", ""),
            "runtimeOptions": dict(runtime_cfg.options) if runtime_cfg and runtime_cfg.options else None,
            "config": go_json(record.config),
            "runtimeSpec": record.spec,
        }

    # -- UpdateContainerResources ---------------------------------------------------------------

    async def update_container_resources(self, message: api.UpdateContainerResourcesRequest
                                         ) -> api.UpdateContainerResourcesResponse:
        """New Linux resources: stored in the spec (record), applied to a running task."""
        record = self.state.get_container(message.container_id)
        async with self.state.lock(record.id):
            if record.state not in (CONTAINER_CREATED, CONTAINER_RUNNING):
                raise FailedPrecondition(f"container is in {record.state} state")
            spec = json.loads(json.dumps(record.spec or {}))
            linux = spec.setdefault("linux", {})
            new = oci_resources(message.linux, linux.get("resources"))
            old_spec = record.spec
            linux["resources"] = new
            if message.linux is not None and message.linux.oom_score_adj:
                spec.setdefault("process", {})["oomScoreAdj"] = message.linux.oom_score_adj
            c = self.plugin.metadata.containers.get(self._ns, record.id)
            c.spec = TypedValue(SPEC_TYPE_URL, json.dumps(spec).encode())
            await self.plugin.metadata.containers.update(self._ns, c, ["spec"])
            record.spec = spec
            record.resources = message.linux.to_dict() if message.linux is not None else None
            try:
                task = self._task_or_none(record.id) if record.state == CONTAINER_RUNNING else None
                if task is not None:
                    await task.update(pb.Any(type_url=RESOURCES_TYPE_URL, value=json.dumps(new).encode()),
                                      dict(message.annotations))
            except BaseException:
                record.spec = old_spec
                c.spec = TypedValue(SPEC_TYPE_URL, json.dumps(old_spec or {}).encode())
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.plugin.metadata.containers.update(self._ns, c, ["spec"]))
                raise
            await self.state.save_container(record)
        return api.UpdateContainerResourcesResponse()

    # -- ReopenContainerLog ---------------------------------------------------------------------

    async def reopen_container_log(self, message: api.ReopenContainerLogRequest
                                   ) -> api.ReopenContainerLogResponse:
        """Reopen the log file after kubelet rotated it. FailedPrecondition unless running."""
        record = self.state.get_container(message.container_id)
        if record.state != CONTAINER_RUNNING:
            raise FailedPrecondition("container is not running")
        live = self._live_of(record.id)
        if live.copier is not None:
            await asyncio.to_thread(live.copier.reopen)
            return api.ReopenContainerLogResponse()
        if record.log_path:
            from . import logger as logger_

            try:
                await asyncio.to_thread(logger_.reopen_log, record.log_path)
            except OSError as e:
                raise FailedPrecondition(f"failed to reopen log {record.log_path!r}: {e}") from None
        return api.ReopenContainerLogResponse()

    # -- ExecSync / Exec / Attach ---------------------------------------------------------------

    async def exec_sync(self, message: api.ExecSyncRequest) -> api.ExecSyncResponse:
        """Run ``cmd`` to completion; stdout/stderr capped at ``max_exec_sync_output_size``."""
        if not message.cmd:
            raise InvalidArgument("cmd must not be empty")
        target = self.exec_target(message.container_id)
        limit = self.plugin.config.max_exec_sync_output_size
        out, err = exec_.CappedBuffer(limit), exec_.CappedBuffer(limit)
        code = await exec_.run_exec(
            target.task, target.process, list(message.cmd), fifo_root=target.fifo_root,
            stdout=out.write, stderr=err.write, timeout=float(message.timeout),
            drain_timeout=self.drain_exec_io_timeout)
        return api.ExecSyncResponse(stdout=out.getvalue(), stderr=err.getvalue(), exit_code=code)

    async def exec(self, message: api.ExecRequest) -> api.ExecResponse:
        """The streaming URL of an exec in a running container."""
        if not message.cmd:
            raise InvalidArgument("cmd must not be empty")
        self.exec_target(message.container_id)
        return self._streaming().get_exec(message)

    async def attach(self, message: api.AttachRequest) -> api.AttachResponse:
        """The streaming URL of an attach to a running container."""
        self.exec_target(message.container_id)
        return self._streaming().get_attach(message)

    # -- CheckpointContainer --------------------------------------------------------------------

    async def checkpoint_container(self, message: api.CheckpointContainerRequest
                                   ) -> api.CheckpointContainerResponse:
        """CRIU checkpoint of a running container into the tar archive ``location``
        (checkpoint images under ``checkpoint/``, plus ``config.dump``/``spec.dump``, as
        containerd's ``CheckpointContainer``). Unimplemented without ``/usr/sbin/criu``."""
        if not os.access(CRIU, os.X_OK):
            raise Unimplemented(f"checkpointing needs CRIU, and {CRIU} is not installed")
        record = self.state.get_container(message.container_id)
        self._require_running(record)
        if not message.location:
            raise InvalidArgument("checkpoint location must be set")
        task = self._task_or_none(record.id)
        if task is None:
            raise FailedPrecondition(f"container {record.id} has no running task")
        from aiocontainerd.api.containerd.runc import v1 as runcopts

        work = await asyncio.to_thread(tempfile.mkdtemp, prefix="cri-checkpoint-",
                                       dir=self._container_state_dir(record.id))
        try:
            images = os.path.join(work, "checkpoint")
            opts = runcopts.CheckpointOptions(exit=False, image_path=images,
                                              work_path=os.path.join(work, "work"))
            try:
                await asyncio.wait_for(task.checkpoint(images, pb.Any(
                    type_url="containerd.runc.v1.CheckpointOptions", value=bytes(opts))),
                    message.timeout or None)
            except TimeoutError:
                raise FailedPrecondition("checkpoint timed out") from None
            except Unimplemented:
                raise
            except ContainerdError as e:
                raise FailedPrecondition(f"failed to checkpoint container {record.id}: {e.message}") from None

            def pack() -> None:
                with open(os.path.join(work, "config.dump"), "w") as f:
                    json.dump({"id": record.id, "name": record.name, "rootfsImageRef": record.image_ref,
                               "rootfsImageName": record.image_name, "createdTime": record.created_at,
                               "checkpointedTime": _now()}, f)
                with open(os.path.join(work, "spec.dump"), "w") as f:
                    json.dump(record.spec or {}, f)
                with open(os.path.join(work, "status"), "w") as f:
                    json.dump(record.to_json(), f)
                os.makedirs(os.path.dirname(os.path.abspath(message.location)), exist_ok=True)
                with tarfile.open(message.location, "w") as tar:
                    for name in ("checkpoint", "config.dump", "spec.dump", "status"):
                        path = os.path.join(work, name)
                        if os.path.exists(path):
                            tar.add(path, arcname=name)

            await asyncio.to_thread(pack)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        return api.CheckpointContainerResponse()

    # -- stats -----------------------------------------------------------------------------------

    async def cri_container_stats(self, record: ContainerRecord,
                                  pids: list[int] | None = None) -> api.ContainerStats:
        """One container's stats through cri/stats.py: its task's cgroup metrics (the shim's
        ``Stats``, else read from the pid's cgroup; none when not running) and the writable
        layer's usage (containerd's ``linuxContainerMetrics``). ``pids`` gets the cgroup's
        ``pids.current`` appended (the pod's process count sums them)."""
        from . import stats as stats_

        tracker = self.__dict__.get("_cri_usage_tracker")
        if tracker is None:
            tracker = self.__dict__["_cri_usage_tracker"] = stats_.UsageTracker()
        metrics = None
        task = self._task_or_none(record.id) if record.state == CONTAINER_RUNNING else None
        if task is not None:
            try:
                metrics = stats_.unpack_metrics(await task.stats())
            except Exception:
                with contextlib.suppress(Exception):
                    metrics = await stats_.read_metrics(pid=record.pid or task.pid)
        layer = None
        snapshotter = self.plugin.metadata.snapshotters.get(record.snapshotter)
        if snapshotter is not None and record.snapshot_key:
            ns = self._ns

            class _Bound:
                async def usage(self, key: str) -> Any:
                    return await snapshotter.usage(ns, key)

            mountpoint = self.plugin.image_service.snapshotter_root(record.snapshotter)
            layer = await stats_.writable_layer(_Bound(), record.snapshot_key, mountpoint)
        if pids is not None:
            pids.append(stats_.pids_current(metrics))
        return stats_.container_stats(id=record.id, config=record.config, metrics=metrics, layer=layer,
                                      tracker=tracker)

    async def container_stats(self, message: api.ContainerStatsRequest) -> api.ContainerStatsResponse:
        """Stats of one container. NotFound for an unknown one."""
        record = self.state.get_container(message.container_id)
        return api.ContainerStatsResponse(stats=await self.cri_container_stats(record))

    async def list_container_stats(self, message: api.ListContainerStatsRequest
                                   ) -> api.ListContainerStatsResponse:
        """Stats of the containers matching the filter (ID / pod ID, whole or prefix; labels)."""
        f = message.filter
        records = list(self.state.containers.values())
        if f is not None:
            if f.id:
                records = [r for r in records if r.id.startswith(f.id)]
            if f.pod_sandbox_id:
                records = [r for r in records if r.sandbox_id.startswith(f.pod_sandbox_id)]
            if f.label_selector:
                records = [r for r in records
                           if all(r.config.labels.get(k) == v for k, v in f.label_selector.items())]
        records.sort(key=lambda r: r.created_at)
        stats = await asyncio.gather(*(self.cri_container_stats(r) for r in records))
        return api.ListContainerStatsResponse(stats=list(stats))
