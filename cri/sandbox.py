"""Pod sandboxes: the ``*PodSandbox*`` RPCs of ``runtime.v1.RuntimeService`` and PortForward.

Follows containerd's CRI (``internal/cri/server/sandbox_run.go``,
``sandbox_stop.go``, ``sandbox_remove.go``, ``sandbox_status.go``,
``sandbox_list.go``, ``sandbox_portforward.go`` and the pause-container
controller ``internal/cri/server/podsandbox/``). :class:`SandboxRPCs` is a
mixin of :class:`~.service.RuntimeService`; it uses ``self.plugin``
(:class:`~.plugin.CRIPlugin`: config, metadata, runtime = TaskManager, image
service, ``cni``, ``streaming``) and ``self.state`` (:class:`~.state.CRIState`).

RunPodSandbox(config, runtime_handler) → ``pod_sandbox_id`` (64 hex digits):

1. the name ``<name>_<namespace>_<uid>_<attempt>`` is reserved (AlreadyExists
   for a second pod with the same metadata; the first keeps it);
2. the runtime handler is resolved (``containerd.runtimes``; NotFound), the
   sandbox image (``sandbox_image``) found in ``k8s.io`` or pulled through the
   CRI image service (pinned);
3. folders: ``<root>/sandboxes/<id>`` (``hostname``, ``hosts``,
   ``resolv.conf``) and ``<state>/sandboxes/<id>`` (``shm``: a 64 MiB tmpfs
   unless the pod uses the host's IPC namespace);
4. unless hostNetwork: a network namespace pinned under ``/var/run/netns``
   (``<state>/netns`` with ``netns_mounts_under_state_dir``) and CNI ADD with
   containerd's CNI_ARGS and capability args (``portMappings``, ``dns``, pod
   annotations); the pod IPs recorded (``cni.ip_pref``);
5. ``resolv.conf`` from the request's DNS config (``search``/``nameserver``/
   ``options`` lines) or a copy of the host's; ``hostname`` = the request's
   (the host's with hostNetwork); ``hosts`` = localhost lines and
   ``<pod ip> <hostname>`` (a copy of the host's with hostNetwork);
6. the pause container: a container record ``<id>`` in ``k8s.io``
   (label ``io.cri-containerd.kind=sandbox``, the :class:`~.state.SandboxRecord`
   in its extension, the handler's runtime type and options, the spec from
   :func:`aiocontainerd.cri.spec.sandbox_spec`), a snapshot ``<id>`` on the
   image's chain ID, and a task created and started through the TaskManager;
7. the record saved READY, events CONTAINER_CREATED and CONTAINER_STARTED sent
   for the sandbox ID (as containerd 2.x does).

Any failure undoes every step taken, in reverse (task, snapshot, container
record, CNI DEL, netns, shm mount, folders, name), and raises the error
(containerd's codes: InvalidArgument, NotFound, AlreadyExists, Unavailable...).

StopPodSandbox(id): unknown ID → success. Every container of the pod is stopped
(SIGKILL at once, as containerd's timeout 0), the pause task killed and
deleted, ``/dev/shm`` unmounted, CNI DEL (retried; the netns is removed only
after DEL succeeded, so neither a netns nor a lease leaks; an error is raised
for kubelet to retry), the netns removed — the pause task's kill and delete
overlapping the shm/network teardown; state NOTREADY, CONTAINER_STOPPED.

RemovePodSandbox(id): unknown ID → success. Stops first when needed, removes
every container of the pod, the pause container record and snapshot, the
folders and the name; CONTAINER_DELETED.

PodSandboxStatus(id, verbose) → status (IP only while the netns is open) and,
with ``verbose``, ``info = {"info": JSON}`` shaped as containerd's
``SandboxInfo``: ``pid``, ``processStatus`` (``running``/``stopped``/
``unknown``/``deleted``), ``netNamespaceClosed``, ``image``, ``snapshotKey``,
``snapshotter``, ``runtimeHandler``, ``runtimeType``, ``runtimeOptions``,
``config``, ``runtimeSpec``, ``cniResult``, ``sandboxMetadata``.

ListPodSandbox(filter): ``id`` (whole or unique prefix), ``state``,
``label_selector`` (every pair must match).

PortForward(pod_sandbox_id, port) → the streaming server's URL; the pod must
be READY (FailedPrecondition otherwise). Port-forward runs inside the pod's
netns (:meth:`SandboxRPCs.sandbox_netns` for ``cri/exec.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.errors import (
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    reworded,
)

from . import netns as netns_
from . import spec as spec_  # at load, not at the first pod: ~10 ms of imports, ~0.5 MiB
from .state import (
    CONTAINER_EXITED,
    KIND_SANDBOX,
    SANDBOX_EXTENSION,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
    SANDBOX_UNKNOWN,
    CRIState,
    SandboxRecord,
    build_labels,
    go_json,
    make_sandbox_name,
)

if TYPE_CHECKING:
    from .plugin import CRIPlugin

log = logging.getLogger(__name__)

SANDBOXES_DIR = "sandboxes"
SHM_SIZE = 64 << 20
DEFAULT_IFNAME = "eth0"
TEARDOWN_ATTEMPTS = 3
STOP_WAIT = 10.0
HOSTS_LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
RUNC_OPTIONS_URL = "containerd.runc.v1.Options"


# -- pure helpers ---------------------------------------------------------------------------------

def namespace_options(config: api.PodSandboxConfig | None) -> api.NamespaceOption:
    """The pod's NamespaceOption (all POD when unset)."""
    linux = config.linux if config is not None else None
    sc = linux.security_context if linux is not None else None
    return (sc.namespace_options if sc is not None and sc.namespace_options is not None
            else api.NamespaceOption())


def host_network(config: api.PodSandboxConfig | None) -> bool:
    return namespace_options(config).network == api.NamespaceMode.NODE


def host_ipc(config: api.PodSandboxConfig | None) -> bool:
    return namespace_options(config).ipc == api.NamespaceMode.NODE


def resolv_conf(dns: api.DnsConfig) -> str:
    """resolv.conf text of a CRI DNSConfig (containerd's ``parseDNSOptions``)."""
    out = ""
    if dns.searches:
        out += "search " + " ".join(dns.searches) + "\n"
    for server in dns.servers:
        out += f"nameserver {server}\n"
    if dns.options:
        out += "options " + " ".join(dns.options) + "\n"
    return out


def hosts_file(hostname: str, ip: str) -> str:
    """/etc/hosts of a pod with its own network: localhost lines, then ``<ip>\\t<hostname>``."""
    text = HOSTS_LOCALHOST
    if ip and hostname:
        text += f"{ip}\t{hostname}\n"
    return text


def match_sandbox_filter(record: SandboxRecord, f: api.PodSandboxFilter | None) -> bool:
    """Whether a sandbox passes a ListPodSandbox filter (``id`` already resolved to a whole ID)."""
    if f is None:
        return True
    if f.id and f.id != record.id:
        return False
    if f.state is not None and f.state.state != record.cri_state:
        return False
    labels = record.config.labels
    return all(labels.get(k) == v for k, v in f.label_selector.items())


def _task_status_name(status: Any) -> str:
    names = {1: "created", 2: "running", 3: "stopped", 4: "paused", 5: "pausing"}
    return names.get(int(status), "unknown")


class SandboxRPCs:
    """The pod sandbox RPCs (see the module doc). Needs ``self.plugin`` and ``self.state``,
    and calls :class:`~.container.ContainerRPCs`'s ``stop_container_record`` /
    ``remove_container_record`` and :meth:`~.service.RuntimeService.handle_exit`."""

    plugin: CRIPlugin
    state: CRIState

    # -- places ---------------------------------------------------------------------------

    def sandbox_root_dir(self, id_: str) -> str:
        return str(Path(self.plugin.root) / SANDBOXES_DIR / id_)

    def sandbox_state_dir(self, id_: str) -> str:
        return str(Path(self.plugin.state) / SANDBOXES_DIR / id_)

    def netns_dir(self) -> str:
        if self.plugin.config.netns_mounts_under_state_dir:
            return str(Path(self.plugin.state) / "netns")
        return netns_.DEFAULT_NETNS_DIR

    @property
    def tasks(self) -> Any:
        runtime = self.plugin.runtime
        if runtime is None:
            raise FailedPrecondition("no runtime: io.containerd.runtime.v2.task is not loaded")
        return runtime

    @property
    def cni(self) -> Any:
        return getattr(self.plugin, "cni", None)

    # -- the sandbox image ----------------------------------------------------------------

    async def ensure_sandbox_image(self, snapshotter: str) -> Any:
        """The sandbox image (a CRIImage), pulled through the CRI image service if missing."""
        images = self.plugin.image_service
        ref = self.plugin.config.sandbox_image
        try:
            return await images.resolve(ref)
        except NotFound:
            pass
        log.info("pulling sandbox image %s", ref)
        image_id = await images.pull(ref, snapshotter=snapshotter)
        return await images.get(image_id)

    # -- RunPodSandbox ---------------------------------------------------------------------

    async def run_pod_sandbox(self, message: api.RunPodSandboxRequest) -> api.RunPodSandboxResponse:
        config = message.config
        if config is None or config.metadata is None:
            raise InvalidArgument("sandbox config must include metadata")
        md = config.metadata
        if not md.name or not md.namespace or not md.uid:
            raise InvalidArgument("sandbox metadata must have name, namespace and uid")
        id_ = secrets.token_hex(32)
        name = make_sandbox_name(md)
        try:
            self.state.names.reserve(name, id_)
        except ContainerdError as e:
            raise type(e)(f"failed to reserve sandbox name {name!r}: {e.message}") from None
        undo: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("release name", self._release_name(name, id_))]
        started = time.monotonic()
        try:
            record = await self._run_sandbox(id_, name, config, message.runtime_handler, undo)
        except BaseException as e:
            await asyncio.shield(self._rollback(id_, undo, e))
            raise
        log.info("RunPodSandbox %s returns sandbox id %s (%.0f ms)", name, id_,
                 (time.monotonic() - started) * 1000)
        self.state.container_event(record.id, api.ContainerEventType.CONTAINER_CREATED_EVENT)
        self.state.container_event(record.id, api.ContainerEventType.CONTAINER_STARTED_EVENT)
        return api.RunPodSandboxResponse(pod_sandbox_id=id_)

    def _release_name(self, name: str, id_: str) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            if self.state.names.get(name) == id_:
                self.state.names.release(name)
        return release

    async def _rollback(self, id_: str, undo: list[tuple[str, Callable[[], Awaitable[Any]]]],
                        error: BaseException) -> None:
        log.warning("RunPodSandbox %s failed, rolling back: %s", id_, error)
        self.state.sandboxes.pop(id_, None)
        for what, step in reversed(undo):
            try:
                await step()
            except Exception as e:
                log.error("rollback of sandbox %s: %s failed: %s", id_, what, e)

    async def _run_sandbox(self, id_: str, name: str, config: api.PodSandboxConfig, handler: str,
                           undo: list[tuple[str, Callable[[], Awaitable[Any]]]]) -> SandboxRecord:
        cfg = self.plugin.config
        try:
            rt = cfg.runtime(handler)
        except NotFound:
            raise NotFound(f"failed to get sandbox runtime: no runtime for {handler!r} "
                           "is configured") from None
        # kept as requested ("" = the default runtime), as containerd reports it back
        snapshotter_name = cfg.snapshotter_for(handler)
        snapshotter = self.plugin.metadata.snapshotters.get(snapshotter_name)
        if snapshotter is None:
            raise FailedPrecondition(f"snapshotter {snapshotter_name!r} is not loaded")
        image = await self.ensure_sandbox_image(snapshotter_name)
        tasks = self.tasks
        hostnet = host_network(config)
        record = SandboxRecord(
            id=id_, name=name, config=config, runtime_handler=handler, state=SANDBOX_UNKNOWN,
            cgroup_parent=config.linux.cgroup_parent if config.linux else "",
            created_at=time.time_ns(), root_dir=self.sandbox_root_dir(id_),
            state_dir=self.sandbox_state_dir(id_), image=image.id, image_name=cfg.sandbox_image_ref,
            runtime_type=rt.runtime_type, snapshotter=snapshotter_name, snapshot_key=id_)

        cni = None
        if not hostnet:
            cni = self.cni
            if cni is None:
                raise FailedPrecondition("cni plugin not initialized")

        # Independent steps overlap (each branch appends its own undo entries, in its order;
        # _concurrently lets every branch finish before a failure is raised, so the rollback
        # sees them all): folders + /dev/shm with the netns; then CNI ADD with the pause
        # container's files, spec, record, snapshot and task create. The pause task is
        # started once the network is set up, as before.
        async def folders() -> None:
            await asyncio.to_thread(_make_dirs, record)
            undo.append(("remove folders", lambda: asyncio.to_thread(_remove_dirs, record)))
            shm = os.path.join(record.state_dir, "shm")
            if not host_ipc(config):
                await _mount_shm(shm)
                undo.append(("unmount shm", lambda: _unmount(shm)))

        async def namespace() -> None:
            record.netns_path = await netns_.create(self.netns_dir())
            undo.append(("remove netns", lambda: netns_.remove(record.netns_path)))
            undo.append(("cni teardown", lambda: self.teardown_network(record)))

        async def network() -> None:
            assert cni is not None
            result = await cni.setup(id_, record.netns_path, **self._cni_args(record))
            pref = cfg.cni.ip_pref or "ipv4"
            record.ip, record.additional_ips = result.pod_ips(pref if pref != "cni" else "cni")
            record.cni_result = _cni_result_json(result)

        async def pause_container() -> Any:
            # files the pause container mounts (resolv.conf) or that need no IP; tiny writes
            _write_files(record, ("hostname", "resolv.conf"))
            spec = await self._sandbox_spec(record, image)
            record.spec = spec
            await self._create_container_record(record, rt, spec, image)
            undo.append(("delete container record",
                         lambda: self.plugin.metadata.containers.delete(self.state.namespace, id_)))
            await snapshotter.prepare(self.state.namespace, id_, image.chain_id)
            undo.append(("remove snapshot", lambda: snapshotter.remove(self.state.namespace, id_)))
            create_kwargs: dict[str, Any] = {}
            if rt.runtime_path:
                create_kwargs["runtime_path"] = rt.runtime_path
            with reworded("failed to create containerd task"):
                task = await tasks.create(self.state.namespace, id_, **create_kwargs)
            undo.append(("delete task", lambda: self._kill_and_delete_task(id_)))
            return task

        if hostnet:
            await folders()
            (task,) = await _concurrently(pause_container())
        else:
            await _concurrently(folders(), namespace())
            _, task = await _concurrently(network(), pause_container())
        _write_files(record, ("hosts",))   # <pod ip> <hostname>: after CNI ADD
        record.pid = task.pid or 0
        pid = await task.start()
        record.pid = pid or record.pid
        record.state = SANDBOX_READY
        await self.state.save_sandbox(record)
        self.state.add_sandbox(record)
        self.watch_sandbox(record.id, task)
        return record

    def _cni_args(self, record: SandboxRecord) -> dict[str, Any]:
        from .cni import capability_args, pod_args

        md = record.metadata
        config = record.config
        ports = [{"hostPort": p.host_port, "containerPort": p.container_port,
                  "protocol": api.Protocol(p.protocol).name.lower(), "hostIP": p.host_ip}
                 for p in config.port_mappings]
        dns = None
        if config.dns_config is not None:
            d = config.dns_config
            dns = {"servers": list(d.servers), "searches": list(d.searches), "options": list(d.options)}
        caps = capability_args(port_mappings=ports, dns=dns, annotations=dict(config.annotations),
                               cgroup_path=record.cgroup_parent)
        return {"args": pod_args(record.id, namespace=md.namespace, name=md.name, uid=md.uid),
                "capability_args": caps}

    async def _sandbox_spec(self, record: SandboxRecord, image: Any) -> dict[str, Any]:
        files = spec_.SandboxFiles.of(record.root_dir, record.state_dir)
        return await asyncio.to_thread(
            spec_.sandbox_spec, record.id, record.config, image.config, netns_path=record.netns_path,
            files=files, cri_config=self.plugin.config, runtime_handler=record.runtime_handler,
            image_name=record.image_name)

    async def _create_container_record(self, record: SandboxRecord, rt: Any, spec: dict[str, Any],
                                       image: Any) -> None:
        from aiocontainerd import oci
        from aiocontainerd.metadata.containers import Container, Runtime
        from aiocontainerd.types import TypedValue

        options = None
        if rt.options:
            from aiocontainerd.runtimes.v2.manager import runc_options

            try:
                options = TypedValue(RUNC_OPTIONS_URL, bytes(runc_options(rt.options)))
            except ValueError as e:
                raise InvalidArgument(f"runtime options of {record.runtime_handler!r}: {e}") from None
        any_spec = oci.to_any(spec)
        image_labels = (image.config.get("config") or {}).get("Labels") or {}
        labels = build_labels(dict(record.config.labels), image_labels, KIND_SANDBOX)
        container = Container(
            id=record.id, runtime=Runtime(rt.runtime_type, options),
            spec=TypedValue(any_spec.type_url, any_spec.value), labels=labels,
            image=record.image_name, snapshotter=record.snapshotter, snapshot_key=record.snapshot_key,
            extensions={SANDBOX_EXTENSION: record.extension()})
        await self.plugin.metadata.containers.create(self.state.namespace, container)

    async def _kill_and_delete_task(self, id_: str) -> None:
        """Kill (SIGKILL) and delete the task ``id_``; absent is fine."""
        try:
            task = self.tasks.get(self.state.namespace, id_)
        except NotFound:
            return
        with contextlib.suppress(NotFound, FailedPrecondition):
            await task.kill(9, all=True)
        with contextlib.suppress(TimeoutError, ContainerdError):
            await asyncio.wait_for(task.wait(), STOP_WAIT)
        with contextlib.suppress(NotFound):
            await self.tasks.delete(self.state.namespace, id_)

    # -- network teardown -------------------------------------------------------------------

    async def teardown_network(self, record: SandboxRecord) -> None:
        """CNI DEL of the pod, retried; raises the last error when every attempt failed."""
        cni = self.cni
        if cni is None or not record.netns_path:
            return
        path = record.netns_path if netns_.exists(record.netns_path) else ""
        last: Exception | None = None
        for attempt in range(TEARDOWN_ATTEMPTS):
            try:
                await cni.teardown(record.id, path, **self._cni_args(record))
                return
            except Exception as e:
                last = e
                log.warning("CNI teardown of %s failed (attempt %d): %s", record.id, attempt + 1, e)
                await asyncio.sleep(0.2 * (attempt + 1))
        assert last is not None
        raise Unavailable(f"failed to destroy network for sandbox {record.id!r}: {last}")

    # -- StopPodSandbox ---------------------------------------------------------------------

    async def stop_pod_sandbox(self, message: api.StopPodSandboxRequest) -> api.StopPodSandboxResponse:
        try:
            record = self.state.get_sandbox(message.pod_sandbox_id)
        except NotFound:
            return api.StopPodSandboxResponse()
        async with self.state.lock(record.id):
            await self.stop_sandbox(record)
        return api.StopPodSandboxResponse()

    async def stop_sandbox(self, record: SandboxRecord) -> None:
        """Stop containers, pause task, network and shm of a pod (idempotent)."""
        for c in self.state.sandbox_containers(record.id):
            if c.state != CONTAINER_EXITED:
                await self.stop_container_record(c, 0)
        changed = record.state != SANDBOX_NOTREADY
        was_ready = False   # READY until the pause task was stopped here, not by its exit handler

        async def pause_task() -> None:
            nonlocal was_ready
            await self._kill_and_delete_task(record.id)
            # handle_sandbox_exit may have run meanwhile (the pause task exited): it set
            # NOTREADY and announced CONTAINER_STOPPED already
            if record.state != SANDBOX_NOTREADY:
                was_ready = record.state == SANDBOX_READY
                record.state = SANDBOX_NOTREADY
                record.pid = 0
                record.exited_at = record.exited_at or time.time_ns()

        async def network() -> None:
            await _unmount(os.path.join(record.state_dir, "shm"))
            if record.netns_path:
                await self.teardown_network(record)
                await netns_.remove(record.netns_path)

        # shm, network and the saved record are done once per daemon life: a stop (or the
        # stop inside RemovePodSandbox) after a complete one skips a second CNI DEL; after a
        # failed one (or a restart) everything is done again. The pause task's kill and
        # delete (a shim round trip or two) and the CNI DEL (plugin processes) do not depend
        # on each other — the netns is a bind mount, not the pause process's — so they
        # overlap; the record is saved once both are done.
        stopped = self.__dict__.setdefault("_sandboxes_stopped", set())
        if record.id not in stopped or changed:
            await _concurrently(pause_task(), network())
            await self.state.save_sandbox(record)
            stopped.add(record.id)
        else:
            await pause_task()
        if was_ready:
            self.state.container_event(record.id, api.ContainerEventType.CONTAINER_STOPPED_EVENT)

    # -- RemovePodSandbox -------------------------------------------------------------------

    async def remove_pod_sandbox(self, message: api.RemovePodSandboxRequest) -> api.RemovePodSandboxResponse:
        try:
            record = self.state.get_sandbox(message.pod_sandbox_id)
        except NotFound:
            return api.RemovePodSandboxResponse()
        async with self.state.lock(record.id):
            if record.id not in self.state.sandboxes:
                return api.RemovePodSandboxResponse()
            await self.stop_sandbox(record)
            for c in self.state.sandbox_containers(record.id):
                await self.remove_container_record(c)
            await self._remove_sandbox_record(record)
        self.state.forget_lock(record.id)
        self.state.container_event(record.id, api.ContainerEventType.CONTAINER_DELETED_EVENT)
        return api.RemovePodSandboxResponse()

    async def _remove_sandbox_record(self, record: SandboxRecord) -> None:
        ns = self.state.namespace

        async def delete_record() -> None:
            with contextlib.suppress(NotFound):
                await self.plugin.metadata.containers.delete(ns, record.id)

        async def remove_snapshot() -> None:
            sn = self.plugin.metadata.snapshotters.get(record.snapshotter)
            if sn is not None and record.snapshot_key:
                with contextlib.suppress(NotFound):
                    await sn.remove(ns, record.snapshot_key)

        # independent: the record, the snapshot and the folders go at the same time
        await _concurrently(delete_record(), remove_snapshot(), asyncio.to_thread(_remove_dirs, record))
        self.state.remove_sandbox(record.id)
        self.__dict__.get("_sandboxes_stopped", set()).discard(record.id)

    # -- PodSandboxStatus -------------------------------------------------------------------

    def sandbox_status(self, record: SandboxRecord) -> api.PodSandboxStatus:
        """The CRI status of a sandbox (containerd's ``toCRISandboxStatus``)."""
        ip, additional = record.ip, record.additional_ips
        if record.host_network or not record.netns_path or not netns_.exists(record.netns_path):
            ip, additional = "", []
        return api.PodSandboxStatus(
            id=record.id, metadata=record.config.metadata, state=record.cri_state,
            created_at=record.created_at,
            network=api.PodSandboxNetworkStatus(ip=ip, additional_ips=[api.PodIp(ip=a) for a in additional]),
            linux=api.LinuxPodSandboxStatus(namespaces=api.Namespace(options=namespace_options(record.config))),
            labels=dict(record.config.labels), annotations=dict(record.config.annotations),
            runtime_handler=record.runtime_handler)

    async def sandbox_info(self, record: SandboxRecord) -> dict[str, str]:
        """Verbose ``info`` of a sandbox (containerd's ``toCRISandboxInfo``)."""
        status = "deleted"
        try:
            task = self.tasks.get(self.state.namespace, record.id)
            try:
                st = await task.state()
                status = _task_status_name(st.status)
            except ContainerdError:
                status = "unknown"
        except (NotFound, FailedPrecondition):
            pass
        runtime_options = None
        try:
            c = self.plugin.metadata.containers.get(self.state.namespace, record.id)
            if c.runtime.options is not None and c.runtime.options.type_url == RUNC_OPTIONS_URL:
                from aiocontainerd.api.containerd.runc import v1 as runcopts

                runtime_options = runcopts.Options.parse(c.runtime.options.value).to_dict()
        except NotFound:
            pass
        info = {
            "pid": record.pid, "processStatus": status,
            "netNamespaceClosed": bool(record.netns_path) and not netns_.exists(record.netns_path),
            "image": record.image_name, "snapshotKey": record.snapshot_key,
            "snapshotter": record.snapshotter, "runtimeHandler": record.runtime_handler,
            "runtimeType": record.runtime_type, "runtimeOptions": runtime_options,
            "config": go_json(record.config), "runtimeSpec": record.spec,
            "cniResult": record.cni_result,
            "sandboxMetadata": {"ID": record.id, "Name": record.name, "NetNSPath": record.netns_path,
                                "IP": record.ip, "AdditionalIPs": record.additional_ips,
                                "RuntimeHandler": record.runtime_handler},
        }
        return {"info": json.dumps(info)}

    async def pod_sandbox_status(self, message: api.PodSandboxStatusRequest) -> api.PodSandboxStatusResponse:
        record = self.state.get_sandbox(message.pod_sandbox_id)
        resp = api.PodSandboxStatusResponse(status=self.sandbox_status(record))
        if message.verbose:
            resp.info = await self.sandbox_info(record)
        return resp

    # -- ListPodSandbox ---------------------------------------------------------------------

    async def list_pod_sandbox(self, message: api.ListPodSandboxRequest) -> api.ListPodSandboxResponse:
        f = message.filter
        if f is not None and f.id:
            try:
                f.id = self.state.get_sandbox(f.id).id
            except (NotFound, InvalidArgument):
                return api.ListPodSandboxResponse()
        items = []
        wires = WireCache.of(self, "_sandbox_wire", self.state.sandboxes)
        parts = []
        for r in sorted(self.state.sandboxes.values(), key=lambda r: r.created_at):
            if match_sandbox_filter(r, f):
                item, wire = wires.get(r.id, (r.state, r.created_at, id(r.config), r.runtime_handler),
                                       lambda r=r: api.PodSandbox(
                    id=r.id, metadata=r.config.metadata, state=r.cri_state, created_at=r.created_at,
                    labels=dict(r.config.labels), annotations=dict(r.config.annotations),
                    runtime_handler=r.runtime_handler))
                items.append(item)
                parts.append(wire)
        return with_wire(api.ListPodSandboxResponse(items=items), repeated_wire(1, parts))

    # -- PortForward ------------------------------------------------------------------------

    async def port_forward(self, message: api.PortForwardRequest) -> api.PortForwardResponse:
        record = self.state.get_sandbox(message.pod_sandbox_id)
        if record.state != SANDBOX_READY:
            raise FailedPrecondition(f"sandbox container {record.id!r} is not running")
        server = getattr(self.plugin, "streaming", None)
        if server is None:
            raise Unavailable("the streaming server is not running")
        message.pod_sandbox_id = record.id
        return server.get_port_forward(message)

    def sandbox_netns(self, pod_sandbox_id: str) -> str:
        """The netns path of a READY pod for port-forward ("" = host network).
        Raises NotFound, FailedPrecondition (not ready, netns closed)."""
        record = self.state.get_sandbox(pod_sandbox_id)
        if record.state != SANDBOX_READY:
            raise FailedPrecondition(f"sandbox {record.id!r} is not running")
        if record.host_network:
            return ""
        if not record.netns_path or not netns_.exists(record.netns_path):
            raise FailedPrecondition(f"network namespace of sandbox {record.id!r} is closed")
        return record.netns_path

    # -- exits of pause tasks ----------------------------------------------------------------

    def watch_sandbox(self, sandbox_id: str, task: Any) -> None:
        """Await the pause task's exit in the background, then :meth:`handle_exit` it."""
        watchers: dict[str, asyncio.Task[None]] = self.__dict__.setdefault("sandbox_watchers", {})
        old = watchers.pop(sandbox_id, None)
        if old is not None:
            old.cancel()

        async def watch() -> None:
            try:
                exit_ = await task.wait()
                status, exited_at = exit_.status, exit_.exited_at
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("waiting for the pause task of %s: %s", sandbox_id, e)
                status, exited_at = 255, time.time_ns()
            if watchers.get(sandbox_id) is asyncio.current_task():
                del watchers[sandbox_id]
            await self.handle_exit(sandbox_id, status, exited_at)

        watchers[sandbox_id] = asyncio.create_task(watch(), name=f"cri-sandbox-exit-{sandbox_id[:12]}")

    async def handle_sandbox_exit(self, sandbox_id: str, status: int, exited_at: int) -> None:
        """The pause task exited: NOTREADY, task deleted (containerd's handleSandboxTaskExit)."""
        record = self.state.sandboxes.get(sandbox_id)
        if record is None:
            return
        with contextlib.suppress(NotFound, FailedPrecondition, Unavailable):
            await self.tasks.delete(self.state.namespace, sandbox_id)
        if record.state == SANDBOX_NOTREADY:
            return
        record.state = SANDBOX_NOTREADY
        record.pid = 0
        record.exit_code = status
        record.exited_at = exited_at or time.time_ns()
        with contextlib.suppress(NotFound):
            await self.state.save_sandbox(record)
        self.state.container_event(sandbox_id, api.ContainerEventType.CONTAINER_STOPPED_EVENT)


# -- list answers ----------------------------------------------------------------------------------
#
# Encoding 100 list items with betterproto2 costs about 3 ms per call, most of a List RPC. An
# item's encoding only changes with the few record fields it shows, so each is cached (keyed by
# those fields) and the answer's wire form is put together from the cached parts.

class WireCache:
    """List items and their encodings by record ID, each valid while its key (the record
    fields the item shows) is unchanged."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[Any, Any, bytes]] = {}

    @classmethod
    def of(cls, owner: Any, attr: str, live: Mapping[str, Any]) -> WireCache:
        """``owner``'s cache in attribute ``attr``, without entries of records no longer in ``live``."""
        cache = owner.__dict__.get(attr)
        if cache is None:
            cache = owner.__dict__[attr] = cls()
        if len(cache.entries) > len(live) + 64:
            cache.entries = {k: v for k, v in cache.entries.items() if k in live}
        return cache

    def get(self, id_: str, key: Any, build: Callable[[], Any]) -> tuple[Any, bytes]:
        """(item, its encoding) of the record ``id_``; ``build()`` makes the item when ``key``
        (the fields it is built from) changed since last time. Items are shared: read only."""
        hit = self.entries.get(id_)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        item = build()
        wire = bytes(item)
        self.entries[id_] = (key, item, wire)
        return item, wire


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def repeated_wire(number: int, parts: list[bytes]) -> bytes:
    """The wire form of a message whose only field ``number`` (repeated, a message) holds
    the encoded ``parts``."""
    tag = _varint(number << 3 | 2)
    return b"".join(tag + _varint(len(p)) + p for p in parts)


def with_wire(message: Any, wire: bytes) -> Any:
    """``message`` whose gRPC encoding (grpclib calls ``SerializeToString``) is ``wire``, equal
    to ``bytes(message)``; its fields stay set for in-process callers."""
    message.SerializeToString = lambda: wire
    return message


# -- files, dirs, mounts ---------------------------------------------------------------------------

def _make_dirs(record: SandboxRecord) -> None:
    os.makedirs(record.root_dir, mode=0o755, exist_ok=True)
    os.makedirs(record.state_dir, mode=0o755, exist_ok=True)


def _remove_dirs(record: SandboxRecord) -> None:
    from aiocontainerd.mount.mounting import unmount_blocking

    shm = os.path.join(record.state_dir, "shm")
    with contextlib.suppress(OSError):
        unmount_blocking(shm, recursive=True, lazy=True)
    for d in (record.root_dir, record.state_dir):
        shutil.rmtree(d, ignore_errors=True)


SANDBOX_FILES = ("hostname", "hosts", "resolv.conf")


def _write_files(record: SandboxRecord, names: tuple[str, ...] = SANDBOX_FILES) -> None:
    """Write the pod's ``names`` files (of SANDBOX_FILES) into its root dir (``hosts`` needs
    ``record.ip``). A few hundred bytes each: cheap enough to write from the event loop."""
    config = record.config
    hostnet = record.host_network
    hostname = config.hostname or (socket.gethostname() if hostnet or not config.hostname else "")
    root = record.root_dir
    if "hostname" in names:
        _write(os.path.join(root, "hostname"), hostname + "\n")
    if "hosts" in names:
        if hostnet:
            try:
                shutil.copyfile("/etc/hosts", os.path.join(root, "hosts"))
            except FileNotFoundError:
                _write(os.path.join(root, "hosts"), HOSTS_LOCALHOST)
        else:
            _write(os.path.join(root, "hosts"), hosts_file(hostname, record.ip))
    if "resolv.conf" in names:
        resolv = os.path.join(root, "resolv.conf")
        if config.dns_config is not None:
            _write(resolv, resolv_conf(config.dns_config))
        else:
            try:
                shutil.copyfile("/etc/resolv.conf", resolv)
            except FileNotFoundError:
                _write(resolv, "")
    for name in names:
        os.chmod(os.path.join(root, name), 0o644)


async def _concurrently(*steps: Awaitable[Any]) -> list[Any]:
    """Run ``steps`` at the same time and return their results in order. Every step runs to
    its end even when another fails (so their undo entries are all recorded), then the first
    failure is raised; when the caller is cancelled, the steps are cancelled and awaited."""
    tasks = [asyncio.ensure_future(s) for s in steps]
    try:
        await asyncio.wait(tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)
        raise
    failures = [t.exception() for t in tasks if not t.cancelled()]
    for e in failures:
        if e is not None:
            raise e
    for t in tasks:
        if t.cancelled():
            raise asyncio.CancelledError()
    return [t.result() for t in tasks]


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


async def _mount_shm(target: str) -> None:
    from aiocontainerd.mount import Mount
    from aiocontainerd.mount.mounting import mount_all

    await asyncio.to_thread(os.makedirs, target, 0o700, True)
    await mount_all([Mount("tmpfs", "shm", ("nosuid", "nodev", "noexec", "mode=1777", f"size={SHM_SIZE}"))],
                    target)


async def _unmount(target: str) -> None:
    from aiocontainerd.mount.mounting import unmount

    with contextlib.suppress(FileNotFoundError):
        await unmount(target, recursive=True)


def _cni_result_json(result: Any) -> dict[str, Any]:
    """go-cni ``Result`` shape: ``{"Interfaces": {name: {"IPConfigs": [...], "Mac", "Sandbox"}},
    "DNS": [...], "Routes": [...]}``."""
    def ipconf(ip: Any) -> dict[str, Any]:
        return {"IP": getattr(ip, "ip", ""), "Gateway": getattr(ip, "gateway", "") or ""}

    def plain(obj: Any) -> Any:
        import dataclasses

        if dataclasses.is_dataclass(obj):
            return {k: plain(v) for k, v in dataclasses.asdict(obj).items()}
        if isinstance(obj, (list, tuple)):
            return [plain(x) for x in obj]
        return obj

    return {
        "Interfaces": {name: {"IPConfigs": [ipconf(ip) for ip in conf.ip_configs], "Mac": conf.mac,
                              "Sandbox": conf.sandbox}
                       for name, conf in result.interfaces.items()},
        "DNS": [plain(d) for d in result.dns],
        "Routes": [plain(r) for r in result.routes],
    }


