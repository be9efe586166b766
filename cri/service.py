"""CRI ``runtime.v1.RuntimeService``: the class, the runtime-wide RPCs and its lifecycle.

:class:`RuntimeService` = :class:`~.sandbox.SandboxRPCs` (pods, PortForward) +
``ContainerRPCs`` (``cri/container.py``: containers, exec, attach, stats of
containers) + the generated ``RuntimeServiceBase``. Every mixin uses
``self.plugin`` (:class:`~.plugin.CRIPlugin`) and ``self.state``
(:class:`~.state.CRIState`). This module adds, after containerd's
``internal/cri/server`` (``version.go``, ``status.go``, ``runtime_config*.go``,
``update_runtime_config.go``, ``container_events.go``, ``events.go``,
``list_metric_descriptors.go``, ``list_pod_sandbox_metrics.go``,
``sandbox_stats*.go``):

- ``Version`` → ``version "0.1.0"``, ``runtime_name "aiocontainerd"``,
  ``runtime_version`` (this package's), ``runtime_api_version "v1"``.
  We name ourselves: crictl prints it, and nothing in kubelet keys on it.
- ``Status(verbose)`` → conditions ``RuntimeReady`` (true) and ``NetworkReady``
  (false with reason ``NetworkPluginNotReady`` and containerd's message
  ``Network plugin returns error: cni plugin not initialized`` while CNI has no
  config); ``runtime_handlers`` sorted by name plus the default one again with
  the name ``""`` (as containerd), features ``recursive_read_only_mounts``
  (the OCI runtime's ``features`` lists ``rro``: runc ≥ 1.1 prints them;
  1.1.5 has no ``rro``) and ``user_namespaces`` (``linux.idmap`` of
  ``features`` … and never for runc 1.1); verbose ``info``: ``config``,
  ``cniconfig``, ``lastCNILoadStatus``, ``python`` (containerd: ``golang``).
- ``RuntimeConfig`` → cgroup driver ``SYSTEMD`` when the default handler's
  options set ``SystemdCgroup``, else ``CGROUPFS``.
- ``UpdateRuntimeConfig(pod_cidr)`` → with ``cni.conf_template`` set and no
  CNI config loaded, the template rendered (``{{.PodCIDR}}``,
  ``{{.PodCIDRRanges}}``, ``{{.Routes}}``) to ``<conf_dir>/10-containerd-net.conflist``;
  otherwise accepted and ignored.
- ``GetContainerEvents`` → a stream of every container event from now on
  (every subscriber gets every event; :meth:`CRIState.container_event`).
- ``ListMetricDescriptors`` → ``cri.metrics.metric_descriptors()``;
  ``ListPodSandboxMetrics`` → empty (not collected yet); ``PodSandboxStats``/``ListPodSandboxStats`` (READY
  pods; filter by ID prefix and labels) built with ``cri.stats.pod_stats`` from
  the pod cgroup (``cgroup_parent``, else the pause task's), the containers'
  ``cri_container_stats`` and the pod netns interfaces (containerd's
  ``sandbox_stats_linux.go``).

Exits (containerd's ``events.go`` handles ``/tasks/exit``): each READY pod has a
watcher awaiting its pause task's ``wait()`` (which also answers 255 when the
shim dies); the exit makes the pod NOTREADY and deletes the task
(:meth:`SandboxRPCs.handle_sandbox_exit`). Containers' exits are watched by the
container mixin the same way (``cri/container.py``).

Lifecycle: :func:`setup` (called by the plugin's init) builds the state, CNI,
service, streaming server, starts the monitor, runs recovery
(:mod:`.recovery`) and registers the closers; closing never stops containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.api.runtime.v1 import RuntimeServiceBase
from aiocontainerd.errors import ContainerdError, NotFound

from .container import ContainerRPCs
from .sandbox import SandboxRPCs
from .state import CRIState

if TYPE_CHECKING:
    from .plugin import CRIPlugin

log = logging.getLogger(__name__)

KUBE_API_VERSION = "0.1.0"
RUNTIME_NAME = "aiocontainerd"
CRI_VERSION = "v1"
NETWORK_NOT_READY = "NetworkPluginNotReady"
CNI_TEMPLATE_FILE = "10-containerd-net.conflist"


def _package_version() -> str:
    try:
        from aiocontainerd.version import version

        return version()
    except Exception:
        return "0.0.0"


async def runtime_features(binary: str) -> dict[str, Any]:
    """``<binary> features`` JSON (runc ≥ 1.1), or ``{}`` when it cannot tell."""
    try:
        proc = await asyncio.create_subprocess_exec(binary, "features", stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        if proc.returncode != 0:
            return {}
        return json.loads(out)
    except (OSError, TimeoutError, ValueError):
        return {}


def render_cni_template(template: str, pod_cidrs: list[str]) -> str:
    """containerd's CNI conf template variables: ``{{.PodCIDR}}`` (the first CIDR),
    ``{{.PodCIDRRanges}}`` (JSON-less list, each CIDR as ``"cidr"`` joined by ``,``... as
    containerd's range/join funcs render them) and ``{{.Routes}}`` (default routes)."""
    first = pod_cidrs[0] if pod_cidrs else ""
    ranges = ",".join(f'[{{"subnet": "{c}"}}]' for c in pod_cidrs)
    routes = ",".join('{"dst": "%s"}' % ("::/0" if ":" in c else "0.0.0.0/0") for c in pod_cidrs)
    return (template.replace("{{.PodCIDR}}", first).replace("{{ .PodCIDR }}", first)
            .replace("{{.PodCIDRRanges}}", ranges).replace("{{.Routes}}", routes))


#: containerd's JSON names that are not the plain camelCase of the TOML key
_JSON_NAMES = {"restrict_oom_score_adj": "restrictOOMScoreAdj",
               "enable_unprivileged_icmp": "enableUnprivilegedICMP",
               "enable_cdi": "enableCDI", "enable_criu": "enableCRIU",
               "enable_tls_streaming": "enableTLSStreaming",
               "ignore_blockio_not_enabled_errors": "ignoreBlockIONotEnabledErrors",
               "max_container_log_line_size": "maxContainerLogSize", "drain_exec_sync_io_timeout":
               "drainExecSyncIOTimeout", "pod_annotations": "PodAnnotations",
               "container_annotations": "ContainerAnnotations"}
#: keys containerd keeps in snake_case (or values that are free-form maps)
_KEEP = {"device_ownership_from_security_context", "privileged_without_host_devices", "options", "io_type",
         "pinned_images", "headers", "configs"}


def _camel_keys(value: Any) -> Any:
    """``value`` with its dict keys renamed from TOML snake_case to containerd's JSON names."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or "_" not in k:
                name = k
            elif k in _JSON_NAMES:
                name = _JSON_NAMES[k]
            elif k in _KEEP:
                name = k
            else:
                head, *rest = k.split("_")
                name = head + "".join(p[:1].upper() + p[1:] for p in rest)
            if k in ("options", "configs", "headers"):
                out[name] = v
            elif k == "runtimes" and isinstance(v, dict):   # handler names stay as they are
                out[name] = {h: _camel_keys(r) for h, r in v.items()}
            else:
                out[name] = _camel_keys(v)
        return out
    if isinstance(value, list):
        return [_camel_keys(v) for v in value]
    return value


class RuntimeService(SandboxRPCs, ContainerRPCs, RuntimeServiceBase):
    """``runtime.v1.RuntimeService`` (see the module doc).

    ``plugin``: the CRI plugin; ``state``: the CRI state. ``handler_features``:
    per handler name, the RuntimeHandlerFeatures (filled by :meth:`probe_handlers`).
    """

    def __init__(self, plugin: CRIPlugin, state: CRIState) -> None:
        self.plugin = plugin
        self.state = state
        self.handler_features: dict[str, api.RuntimeHandlerFeatures] = {}
        #: sandbox ID → the task waiting for its pause task's exit
        self.sandbox_watchers: dict[str, asyncio.Task[None]] = {}
        state.event_builder = self._build_event

    # -- handlers and their features ---------------------------------------------------------

    async def probe_handlers(self) -> None:
        """Ask each handler's OCI runtime binary for its features (``<BinaryName> features``)."""
        cache: dict[str, dict[str, Any]] = {}
        for name, rt in self.plugin.config.containerd.runtimes.items():
            binary = str(rt.options.get("BinaryName") or rt.options.get("binary_name") or "runc")
            if binary not in cache:
                cache[binary] = await runtime_features(binary)
            feats = cache[binary]
            rro = "rro" in (feats.get("mountOptions") or [])
            idmap = bool(((feats.get("linux") or {}).get("mountExtensions") or {}).get("idmap", {})
                         .get("enabled"))
            self.handler_features[name] = api.RuntimeHandlerFeatures(
                recursive_read_only_mounts=rro, user_namespaces=idmap)

    def runtime_handlers(self) -> list[api.RuntimeHandler]:
        default = self.plugin.config.containerd.default_runtime_name
        out = []
        for name in sorted(self.plugin.config.containerd.runtimes):
            feats = self.handler_features.get(name, api.RuntimeHandlerFeatures())
            if name == default:
                out.append(api.RuntimeHandler(name="", features=feats))
            out.append(api.RuntimeHandler(name=name, features=feats))
        return out

    # -- runtime-wide RPCs ----------------------------------------------------------------------

    async def version(self, message: api.VersionRequest) -> api.VersionResponse:
        return api.VersionResponse(version=KUBE_API_VERSION, runtime_name=RUNTIME_NAME,
                                   runtime_version=_package_version(), runtime_api_version=CRI_VERSION)

    async def status(self, message: api.StatusRequest) -> api.StatusResponse:
        runtime_ready = api.RuntimeCondition(type="RuntimeReady", status=self.plugin.runtime is not None)
        if self.plugin.runtime is None:
            runtime_ready.reason = "RuntimeNotLoaded"
            runtime_ready.message = "io.containerd.runtime.v2.task is not loaded"
        network = api.RuntimeCondition(type="NetworkReady", status=True)
        cni = getattr(self.plugin, "cni", None)
        if cni is None:
            network.status = False
            network.reason = NETWORK_NOT_READY
            network.message = "Network plugin returns error: cni plugin not initialized"
        else:
            ready, reason = await asyncio.to_thread(cni.status)
            if not ready:
                network.status = False
                network.reason = NETWORK_NOT_READY
                network.message = f"Network plugin returns error: {reason}"
        resp = api.StatusResponse(status=api.RuntimeStatus(conditions=[runtime_ready, network]),
                                  runtime_handlers=self.runtime_handlers(),
                                  features=api.RuntimeFeatures())
        if message.verbose:
            info = {"config": json.dumps(self._config_info()),
                    "python": json.dumps(platform.python_version())}
            if cni is not None:
                info["cniconfig"] = json.dumps(await asyncio.to_thread(cni.config_info))
                info["lastCNILoadStatus"] = cni.last_load_status
            else:
                info["lastCNILoadStatus"] = "cni plugin not initialized"
            streaming = getattr(self.plugin, "streaming", None)
            if streaming is not None:
                info["streamServerURL"] = json.dumps(streaming.url)
            resp.info = info
        return resp

    def _config_info(self) -> dict[str, Any]:
        """The plugin config as containerd's ``Status`` verbose ``config`` shows it: its JSON
        (camelCase) keys plus the folders (``stateDir`` is what critest reads) and endpoint."""
        out = _camel_keys(dataclasses.asdict(self.plugin.config))
        plugin = self.plugin
        out.update({"rootDir": str(plugin.root), "stateDir": str(plugin.state),
                    "containerdRootDir": str(getattr(plugin, "daemon_root", "")),
                    "containerdEndpoint": getattr(plugin, "grpc_address", "")})
        return out

    async def runtime_config(self, message: api.RuntimeConfigRequest) -> api.RuntimeConfigResponse:
        cfg = self.plugin.config
        rt = cfg.containerd.runtimes.get(cfg.containerd.default_runtime_name)
        systemd = bool(rt and (rt.options.get("SystemdCgroup") or rt.options.get("systemd_cgroup")))
        driver = api.CgroupDriver.SYSTEMD if systemd else api.CgroupDriver.CGROUPFS
        return api.RuntimeConfigResponse(linux=api.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def update_runtime_config(self, message: api.UpdateRuntimeConfigRequest
                                    ) -> api.UpdateRuntimeConfigResponse:
        rc = message.runtime_config
        cidr = rc.network_config.pod_cidr if rc is not None and rc.network_config is not None else ""
        template = self.plugin.config.cni.conf_template
        if not cidr or not template:
            return api.UpdateRuntimeConfigResponse()
        cni = getattr(self.plugin, "cni", None)
        if cni is not None and (await asyncio.to_thread(cni.status))[0]:
            log.info("network plugin is ready, skipping the CNI config template")
            return api.UpdateRuntimeConfigResponse()
        cidrs = [c.strip() for c in cidr.split(",") if c.strip()]

        def write() -> None:
            text = render_cni_template(Path(template).read_text(), cidrs)
            conf_dir = Path(self.plugin.config.cni.conf_dir)
            conf_dir.mkdir(parents=True, exist_ok=True)
            tmp = conf_dir / f".{CNI_TEMPLATE_FILE}.tmp"
            tmp.write_text(text)
            os.replace(tmp, conf_dir / CNI_TEMPLATE_FILE)

        await asyncio.to_thread(write)
        return api.UpdateRuntimeConfigResponse()

    # -- container events ----------------------------------------------------------------------

    async def get_container_events(self, message: api.GetEventsRequest
                                   ) -> AsyncIterator[api.ContainerEventResponse]:
        async with self.state.subscribe_events() as events:
            async for event in events:
                yield event

    def _build_event(self, container_id: str, event_type: api.ContainerEventType
                     ) -> api.ContainerEventResponse:
        """The event for ``container_id`` (a container or a sandbox ID) with its pod's status."""
        event = api.ContainerEventResponse(container_id=container_id, container_event_type=event_type,
                                           created_at=time.time_ns())
        sandbox_id = container_id
        c = self.state.containers.get(container_id)
        if c is not None:
            sandbox_id = c.sandbox_id
        sb = self.state.sandboxes.get(sandbox_id)
        if sb is not None:
            event.pod_sandbox_status = self.sandbox_status(sb)
            statuses = []
            for rec in self.state.sandbox_containers(sandbox_id):
                with contextlib.suppress(Exception):
                    statuses.append(self.cri_container_status(rec))
                    continue
                statuses.append(api.ContainerStatus(
                    id=rec.id, metadata=rec.config.metadata, state=rec.cri_state,
                    created_at=rec.created_at, started_at=rec.started_at, finished_at=rec.finished_at,
                    exit_code=rec.exit_code, image=rec.config.image, image_ref=rec.image_ref,
                    reason=rec.reason, message=rec.message, labels=dict(rec.config.labels),
                    annotations=dict(rec.config.annotations), log_path=rec.log_path))
            event.containers_statuses = statuses
        return event

    # -- metrics and stats -------------------------------------------------------------------

    async def list_metric_descriptors(self, message: api.ListMetricDescriptorsRequest
                                      ) -> api.ListMetricDescriptorsResponse:
        from .metrics import metric_descriptors

        return api.ListMetricDescriptorsResponse(descriptors=metric_descriptors())

    async def list_pod_sandbox_metrics(self, message: api.ListPodSandboxMetricsRequest
                                       ) -> api.ListPodSandboxMetricsResponse:
        # not collected yet: cri.metrics builds the messages (container_metrics,
        # pod_sandbox_metrics) but nothing gathers their inputs
        return api.ListPodSandboxMetricsResponse()

    async def cri_pod_stats(self, record: Any) -> api.PodSandboxStats:
        """One pod's stats from ``cri/stats.py``: the pod cgroup (``cgroup_parent``, else the
        pause task's cgroup), its containers' stats, the pod netns interfaces."""
        from . import stats

        tracker = self.__dict__.setdefault("_pod_usage_tracker", stats.UsageTracker())
        metrics = None
        with contextlib.suppress(ContainerdError, OSError):
            if record.cgroup_parent:
                metrics = await stats.read_metrics(path=record.cgroup_parent)
            elif record.pid:
                metrics = await stats.read_metrics(pid=record.pid)
        containers = []
        pids: list[int] = []
        for c in self.state.sandbox_containers(record.id):
            if c.state == "CONTAINER_RUNNING":
                with contextlib.suppress(ContainerdError, OSError):
                    containers.append(await self.cri_container_stats(c, pids))
        interfaces = None
        if not record.host_network and record.netns_path:
            with contextlib.suppress(OSError):
                interfaces = await stats.netns_interfaces(record.netns_path)
        return stats.pod_stats(id=record.id, config=record.config, metrics=metrics,
                               containers=containers, interfaces=interfaces, tracker=tracker,
                               process_count=sum(pids))

    async def pod_sandbox_stats(self, message: api.PodSandboxStatsRequest) -> api.PodSandboxStatsResponse:
        record = self.state.get_sandbox(message.pod_sandbox_id)
        return api.PodSandboxStatsResponse(stats=await self.cri_pod_stats(record))

    async def list_pod_sandbox_stats(self, message: api.ListPodSandboxStatsRequest
                                     ) -> api.ListPodSandboxStatsResponse:
        f = message.filter
        out = []
        for record in sorted(self.state.sandboxes.values(), key=lambda r: r.created_at):
            if f is not None:
                if f.id and not record.id.startswith(f.id):
                    continue
                if any(record.config.labels.get(k) != v for k, v in f.label_selector.items()):
                    continue
            if record.state != "SANDBOX_READY":
                continue
            try:
                out.append(await self.cri_pod_stats(record))
            except ContainerdError as e:
                log.debug("stats of sandbox %s: %s", record.id, e)
        return api.ListPodSandboxStatsResponse(stats=out)

    # -- pause task exits ------------------------------------------------------------------------

    async def handle_exit(self, id_: str, status: int, exited_at: int) -> None:
        """One init-process exit of a pod's pause task or of a container (never raises)."""
        try:
            if id_ in self.state.sandboxes:
                async with self.state.lock(id_):
                    await self.handle_sandbox_exit(id_, status, exited_at)
        except NotFound:
            pass
        except Exception:
            log.exception("handling the exit of %s", id_)

    async def close(self) -> None:
        """Stop watching pause tasks and end event streams; containers keep running."""
        for t in list(self.sandbox_watchers.values()):
            t.cancel()
        self.sandbox_watchers.clear()
        self.state.close_events()


def make_cni(plugin: CRIPlugin) -> Any:
    """The CNI object of the plugin's config (conf dir, plugin dirs, max conf num), or None
    when CNI cannot be set up at all (logged)."""
    from .cni import CNI

    cfg = plugin.config.cni
    try:
        return CNI(conf_dir=cfg.conf_dir, bin_dirs=cfg.plugin_dirs, max_conf_num=cfg.max_conf_num)
    except Exception as e:
        log.error("CNI setup failed: %s", e)
        return None


async def setup(plugin: CRIPlugin) -> RuntimeService:
    """Build and start the runtime side of the CRI plugin (see the module doc); sets
    ``plugin.runtime_service``, ``plugin.cri_state``, ``plugin.cni``, ``plugin.streaming``."""
    from .recovery import recover

    state = CRIState(plugin.metadata.containers, plugin.namespace)
    plugin.cri_state = state  # type: ignore[attr-defined]
    plugin.cni = await asyncio.to_thread(make_cni, plugin)  # type: ignore[attr-defined]
    service = RuntimeService(plugin, state)
    await service.probe_handlers()
    plugin.streaming = None  # type: ignore[attr-defined]

    async def close() -> None:
        await service.close()
        if plugin.streaming is not None:  # type: ignore[attr-defined]
            await plugin.streaming.close()  # type: ignore[attr-defined]

    plugin.on_close(close)
    try:
        plugin.streaming = await start_streaming(plugin, service)  # type: ignore[attr-defined]
    except Exception as e:
        log.error("the CRI streaming server did not start: %s", e)
    await recover(service)
    plugin.runtime_service = service
    return service


async def start_streaming(plugin: CRIPlugin, service: RuntimeService) -> Any:
    """The streaming server on ``stream_server_address:stream_server_port`` with the
    StreamRuntime of ``cri/exec.py``."""
    from .exec import CRIStreamRuntime
    from .streaming import StreamingServer

    cfg = plugin.config
    server = StreamingServer(CRIStreamRuntime(service), address=cfg.stream_server_address,
                             port=int(cfg.stream_server_port),
                             idle_timeout=cfg.stream_idle_timeout_seconds or None)
    await server.start()
    log.info("CRI streaming server listening on %s", server.url)
    return server
