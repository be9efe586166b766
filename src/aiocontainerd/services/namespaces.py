"""``containerd.services.namespaces.v1.Namespaces`` (plugin ``io.containerd.grpc.v1.namespaces``).

Publishes ``/namespaces/create``, ``/namespaces/update`` (``NamespaceCreate``/
``NamespaceUpdate`` with the name and the request's labels) and
``/namespaces/delete`` (``NamespaceDelete``) in the namespace itself, once the
change is stored, as containerd's namespaces service does.
"""

from __future__ import annotations

from ..api.containerd import events
from ..api.containerd.services.namespaces import v1 as api
from ..api.google import protobuf as pb
from ..errors import InvalidArgument
from ..events import Exchange
from ..metadata import NamespaceStore
from ..metadata.namespaces import Namespace
from ..plugin import EVENT, GRPC, METADATA, InitContext, Registration
from .convert import mask_paths


def _wire(ns: Namespace) -> api.Namespace:
    return api.Namespace(name=ns.name, labels=dict(ns.labels))


class NamespacesService(api.NamespacesBase):
    def __init__(self, store: NamespaceStore, exchange: Exchange) -> None:
        self._store = store
        self._events = exchange

    async def get(self, message: api.GetNamespaceRequest) -> api.GetNamespaceResponse:
        return api.GetNamespaceResponse(namespace=_wire(self._store.get(message.name)))

    async def list(self, message: api.ListNamespacesRequest) -> api.ListNamespacesResponse:
        return api.ListNamespacesResponse(namespaces=[_wire(n) for n in self._store.list()])

    async def create(self, message: api.CreateNamespaceRequest) -> api.CreateNamespaceResponse:
        if message.namespace is None:
            raise InvalidArgument("namespace must be set")
        ns = await self._store.create(message.namespace.name, message.namespace.labels)
        self._events.publish(ns.name, "/namespaces/create", events.NamespaceCreate(
            name=ns.name, labels=dict(message.namespace.labels)))
        return api.CreateNamespaceResponse(namespace=_wire(ns))

    async def update(self, message: api.UpdateNamespaceRequest) -> api.UpdateNamespaceResponse:
        if message.namespace is None:
            raise InvalidArgument("namespace must be set")
        ns = await self._store.update(message.namespace.name, message.namespace.labels,
                                mask_paths(message.update_mask))
        self._events.publish(ns.name, "/namespaces/update", events.NamespaceUpdate(
            name=ns.name, labels=dict(message.namespace.labels)))
        return api.UpdateNamespaceResponse(namespace=_wire(ns))

    async def delete(self, message: api.DeleteNamespaceRequest) -> pb.Empty:
        await self._store.delete(message.name)
        self._events.publish(message.name, "/namespaces/delete", events.NamespaceDelete(name=message.name))
        return pb.Empty()


async def _init(ctx: InitContext) -> NamespacesService:
    return NamespacesService(ctx.get(METADATA).namespaces, ctx.get(EVENT))


PLUGIN = Registration(GRPC, "namespaces", _init, requires=(METADATA, EVENT))
