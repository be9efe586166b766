"""``containerd.services.snapshots.v1.Snapshots`` (plugin ``io.containerd.grpc.v1.snapshots``).

Every request names its snapshotter (``overlayfs``, ``native``, ``btrfs``, ...);
an unknown or failed one is NotFound / FailedPrecondition. Keys are namespaced
by the metadata layer; snapshots created under the request's lease are added
to it. ``Cleanup`` runs the backend's cleanup of unreferenced storage.

Events, in the request's namespace once the change is made (as containerd's
metadata snapshotter): ``/snapshot/prepare`` (``SnapshotPrepare``: key,
parent, snapshotter), ``/snapshot/commit`` (``SnapshotCommit``: key, name,
snapshotter), ``/snapshot/remove`` (``SnapshotRemove``: key, snapshotter).
``View`` publishes nothing, as in containerd.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..api.containerd import events
from ..api.containerd import types as ctypes
from ..api.containerd.services.snapshots import v1 as api
from ..api.google import protobuf as pb
from ..errors import InvalidArgument, NotFound
from ..events import Exchange
from ..metadata.plugin import Metadata
from ..metadata.snapshots import NamespacedSnapshotter
from ..mount import Mount
from ..plugin import EVENT, GRPC, METADATA, InitContext, Registration
from ..snapshots import Info, Kind
from . import context
from .convert import mask_paths, timestamp


def _info(i: Info) -> api.Info:
    return api.Info(name=i.name, parent=i.parent, kind=api.Kind(int(i.kind)),
                    created_at=timestamp(i.created_at), updated_at=timestamp(i.updated_at),
                    labels=dict(i.labels))


def _mounts(mounts: list[Mount]) -> list[ctypes.Mount]:
    return [ctypes.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
            for m in mounts]


class SnapshotsService(api.SnapshotsBase):
    def __init__(self, metadata: Metadata, exchange: Exchange) -> None:
        self._metadata = metadata
        self._events = exchange

    def _sn(self, name: str) -> NamespacedSnapshotter:
        if not name:
            raise InvalidArgument("snapshotter must be set")
        try:
            return self._metadata.snapshotters[name]
        except KeyError:
            raise NotFound(f"snapshotter {name!r} not loaded") from None

    async def prepare(self, message: api.PrepareSnapshotRequest) -> api.PrepareSnapshotResponse:
        namespace = context.namespace()
        mounts = await self._sn(message.snapshotter).prepare(
            namespace, message.key, message.parent, message.labels, context.lease())
        self._events.publish(namespace, "/snapshot/prepare", events.SnapshotPrepare(
            key=message.key, parent=message.parent, snapshotter=message.snapshotter))
        return api.PrepareSnapshotResponse(mounts=_mounts(mounts))

    async def view(self, message: api.ViewSnapshotRequest) -> api.ViewSnapshotResponse:
        mounts = await self._sn(message.snapshotter).view(
            context.namespace(), message.key, message.parent, message.labels, context.lease())
        return api.ViewSnapshotResponse(mounts=_mounts(mounts))

    async def mounts(self, message: api.MountsRequest) -> api.MountsResponse:
        mounts = await self._sn(message.snapshotter).mounts(context.namespace(), message.key)
        return api.MountsResponse(mounts=_mounts(mounts))

    async def commit(self, message: api.CommitSnapshotRequest) -> pb.Empty:
        namespace = context.namespace()
        await self._sn(message.snapshotter).commit(namespace, message.name, message.key,
                                                   message.labels, context.lease())
        self._events.publish(namespace, "/snapshot/commit", events.SnapshotCommit(
            key=message.key, name=message.name, snapshotter=message.snapshotter))
        return pb.Empty()

    async def remove(self, message: api.RemoveSnapshotRequest) -> pb.Empty:
        namespace = context.namespace()
        await self._sn(message.snapshotter).remove(namespace, message.key)
        self._events.publish(namespace, "/snapshot/remove", events.SnapshotRemove(
            key=message.key, snapshotter=message.snapshotter))
        return pb.Empty()

    async def stat(self, message: api.StatSnapshotRequest) -> api.StatSnapshotResponse:
        info = self._sn(message.snapshotter).stat(context.namespace(), message.key)
        return api.StatSnapshotResponse(info=_info(info))

    async def update(self, message: api.UpdateSnapshotRequest) -> api.UpdateSnapshotResponse:
        if message.info is None:
            raise InvalidArgument("info must be set")
        info = Info(Kind(int(message.info.kind)), message.info.name, labels=dict(message.info.labels))
        updated = await self._sn(message.snapshotter).update(context.namespace(), info,
                                                             mask_paths(message.update_mask))
        return api.UpdateSnapshotResponse(info=_info(updated))

    async def list(self, message: api.ListSnapshotsRequest) -> AsyncIterator[api.ListSnapshotsResponse]:
        items = self._sn(message.snapshotter).walk(context.namespace(), message.filters)
        for start in range(0, len(items), 100):
            yield api.ListSnapshotsResponse(info=[_info(i) for i in items[start:start + 100]])

    async def usage(self, message: api.UsageRequest) -> api.UsageResponse:
        u = await self._sn(message.snapshotter).usage(context.namespace(), message.key)
        return api.UsageResponse(size=u.size, inodes=u.inodes)

    async def cleanup(self, message: api.CleanupRequest) -> pb.Empty:
        await self._sn(message.snapshotter).backend.cleanup()
        return pb.Empty()


async def _init(ctx: InitContext) -> SnapshotsService:
    return SnapshotsService(ctx.get(METADATA), ctx.get(EVENT))


PLUGIN = Registration(GRPC, "snapshots", _init, requires=(METADATA, EVENT))
