"""``containerd.services.namespaces.v1.Namespaces`` (plugin ``io.containerd.grpc.v1.namespaces``)."""

from __future__ import annotations

from ..api.containerd.services.namespaces import v1 as api
from ..api.google import protobuf as pb
from ..errors import InvalidArgument
from ..metadata import NamespaceStore
from ..metadata.namespaces import Namespace
from ..plugin import GRPC, METADATA, InitContext, Registration
from .convert import mask_paths


def _wire(ns: Namespace) -> api.Namespace:
    return api.Namespace(name=ns.name, labels=dict(ns.labels))


class NamespacesService(api.NamespacesBase):
    def __init__(self, store: NamespaceStore) -> None:
        self._store = store

    async def get(self, message: api.GetNamespaceRequest) -> api.GetNamespaceResponse:
        return api.GetNamespaceResponse(namespace=_wire(self._store.get(message.name)))

    async def list(self, message: api.ListNamespacesRequest) -> api.ListNamespacesResponse:
        return api.ListNamespacesResponse(namespaces=[_wire(n) for n in self._store.list()])

    async def create(self, message: api.CreateNamespaceRequest) -> api.CreateNamespaceResponse:
        if message.namespace is None:
            raise InvalidArgument("namespace must be set")
        ns = await self._store.create(message.namespace.name, message.namespace.labels)
        return api.CreateNamespaceResponse(namespace=_wire(ns))

    async def update(self, message: api.UpdateNamespaceRequest) -> api.UpdateNamespaceResponse:
        if message.namespace is None:
            raise InvalidArgument("namespace must be set")
        ns = await self._store.update(message.namespace.name, message.namespace.labels,
                                mask_paths(message.update_mask))
        return api.UpdateNamespaceResponse(namespace=_wire(ns))

    async def delete(self, message: api.DeleteNamespaceRequest) -> pb.Empty:
        await self._store.delete(message.name)
        return pb.Empty()


async def _init(ctx: InitContext) -> NamespacesService:
    return NamespacesService(ctx.get(METADATA).namespaces)


PLUGIN = Registration(GRPC, "namespaces", _init, requires=(METADATA,))
