"""The CRI plugin, ``io.containerd.grpc.v1.cri``: Kubernetes' runtime on the daemon's socket.

One plugin, one object (:class:`CRIPlugin`) holding the CRI's shared state —
its config, the core objects it calls directly (metadata store, image
transfer service with the diff service, event exchange, the shim manager when
it is loaded) and its folders — and serving two grpclib services on the daemon's
gRPC socket:

- ``runtime.v1.ImageService`` (:class:`~.images.CRIImageService`), and
- ``runtime.v1.RuntimeService`` (:class:`~.service.RuntimeService`), set by
  :func:`~.service.setup` during init (with ``cri_state``, ``cni`` and ``streaming``;
  closing the plugin stops the streaming server and the task-exit monitor, never a
  container).

How two services come out of one plugin: the daemon serves every ``GRPC``
plugin instance that has grpclib's ``__mapping__()`` (method path → handler),
and grpclib's server merges the mappings of all handlers it is given. The
plugin's ``__mapping__`` is the union of its services' mappings, so no change
to the daemon is needed and both services share this one object's state;
Introspection shows one plugin, as containerd does. The set is read when the
server starts (after every plugin's ``init``), so services must be attached
during ``init``.

Registration: type ``io.containerd.grpc.v1``, ID ``cri``, config
:class:`~.config.CRIConfig`; requires the metadata plugin, the transfer
(image) service, the snapshotters, the event exchange and the v2 runtime.
The runtime is optional: when ``io.containerd.runtime.v2.task`` is missing or
failed, :attr:`CRIPlugin.runtime` is None and the image service still loads.
Init fails (reported by Introspection, the daemon goes on) when the configured
snapshotter is not loaded, as containerd's CRI does.

All CRI objects live in the metadata store's ``k8s.io`` namespace
(:data:`NAMESPACE`). Folders: ``<root>/io.containerd.grpc.v1.cri`` and
``<state>/io.containerd.grpc.v1.cri`` (created by whoever first needs them).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpclib.const

from aiocontainerd.errors import FailedPrecondition
from aiocontainerd.images.service import TRANSFER
from aiocontainerd.plugin import EVENT, GRPC, METADATA, RUNTIME, SNAPSHOTTER, InitContext, Registration

from .config import CRIConfig
from .images import NAMESPACE, CRIImageService

if TYPE_CHECKING:
    from aiocontainerd.events import Exchange
    from aiocontainerd.images.service import ImageService as CoreImageService
    from aiocontainerd.metadata.plugin import Metadata

log = logging.getLogger(__name__)

PLUGIN_ID = "cri"
URI = f"{GRPC}.{PLUGIN_ID}"
__all__ = ["NAMESPACE", "PLUGIN", "URI", "CRIPlugin"]


class CRIPlugin:
    """The CRI's shared state and its gRPC services (see the module doc).

    ``metadata``, ``transfer`` (the core image service: pulls, diff service,
    image events), ``events`` (the exchange), ``runtime`` (the shim manager, or
    None), ``root``/``state`` (this plugin's folders), ``daemon_root`` (where
    the other plugins' folders are).
    """

    def __init__(self, config: CRIConfig, *, metadata: Metadata, transfer: CoreImageService | None,
                 events: Exchange | None, runtime: Any = None, root: Path, state: Path,
                 daemon_root: Path, init: InitContext | None = None) -> None:
        self.config = config
        self.metadata = metadata
        self.transfer = transfer
        self.events = events
        self.runtime = runtime
        self.root = root
        self.state = state
        self.daemon_root = daemon_root
        #: the daemon's gRPC socket (containerd's ``containerdEndpoint``)
        self.grpc_address = init.properties.get("grpc.address", "") if init is not None else ""
        self.namespace = NAMESPACE
        self.image_service = CRIImageService(
            config, metadata=metadata, transfer=transfer, events=events, root=daemon_root,
            metrics=init.metrics if init is not None else None)
        #: ``runtime.v1.RuntimeService``; set by the runtime part during init
        self.runtime_service: Any = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def services(self) -> list[Any]:
        """The grpclib services this plugin serves (ImageService, and RuntimeService when set)."""
        return [s for s in (self.runtime_service, self.image_service) if s is not None]

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """Every method of every service, for the daemon's gRPC server."""
        mapping: dict[str, grpclib.const.Handler] = {}
        for service in self.services():
            mapping.update(service.__mapping__())
        return mapping

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run ``closer`` when the daemon stops (last added, first run)."""
        self._closers.append(closer)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.exception("error closing a CRI component")
        self._closers.clear()


async def _init(ctx: InitContext) -> CRIPlugin:
    config: CRIConfig = ctx.config
    metadata = ctx.get(METADATA)
    if config.snapshotter not in metadata.snapshotters:
        loaded = ", ".join(sorted(metadata.snapshotters)) or "none"
        raise FailedPrecondition(f"failed to find snapshotter {config.snapshotter!r} "
                                 f"(loaded: {loaded})")
    transfer = ctx.get_all(TRANSFER).get("local")
    if transfer is None:
        raise FailedPrecondition(f"the image transfer plugin {TRANSFER}.local is not loaded")
    runtime = ctx.get_all(RUNTIME).get("task")
    if runtime is None:
        log.info("CRI loads without a runtime: io.containerd.runtime.v2.task is not loaded")
    plugin = CRIPlugin(config, metadata=metadata, transfer=transfer, events=ctx.get(EVENT),
                       runtime=runtime, root=ctx.root, state=ctx.state, daemon_root=ctx.root.parent,
                       init=ctx)
    # the runtime side (cri/service.py): state recovered, CNI, streaming server, task-exit monitor
    from .service import setup

    try:
        await setup(plugin)
    except Exception:
        log.exception("the CRI RuntimeService failed to start; serving ImageService only")
    return plugin


PLUGIN = Registration(GRPC, PLUGIN_ID, _init, requires=(METADATA, TRANSFER, SNAPSHOTTER, EVENT, RUNTIME),
                      config=CRIConfig)
