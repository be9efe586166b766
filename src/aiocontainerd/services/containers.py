"""``containerd.services.containers.v1.Containers`` (plugin ``io.containerd.grpc.v1.containers``).

Publishes, in the request's namespace once the change is stored (as
containerd's containers service): ``/containers/create`` (``ContainerCreate``:
id, image, runtime name and options), ``/containers/update``
(``ContainerUpdate``: id, image, labels, snapshot key of the updated
container) and ``/containers/delete`` (``ContainerDelete``: id).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..api.containerd import events
from ..api.containerd.services.containers import v1 as api
from ..api.google import protobuf as pb
from ..errors import InvalidArgument
from ..events import Exchange
from ..metadata import ContainerStore
from ..metadata.containers import Container, Runtime
from ..plugin import EVENT, GRPC, METADATA, InitContext, Registration
from . import context
from .convert import any_, from_any, mask_paths, timestamp


def _wire(c: Container) -> api.Container:
    return api.Container(
        id=c.id,
        labels=dict(c.labels),
        image=c.image,
        runtime=api.ContainerRuntime(name=c.runtime.name, options=any_(c.runtime.options)),
        spec=any_(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=timestamp(c.created_at),
        updated_at=timestamp(c.updated_at),
        extensions={k: any_(v) for k, v in c.extensions.items()},
        sandbox=c.sandbox,
    )


def _core(c: api.Container | None) -> Container:
    if c is None:
        raise InvalidArgument("container must be set")
    runtime = c.runtime or api.ContainerRuntime()
    return Container(
        id=c.id,
        runtime=Runtime(runtime.name, from_any(runtime.options)),
        spec=from_any(c.spec),
        labels=dict(c.labels),
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={k: v for k, v in ((k, from_any(v)) for k, v in c.extensions.items()) if v},
        sandbox=c.sandbox,
    )


class ContainersService(api.ContainersBase):
    def __init__(self, store: ContainerStore, exchange: Exchange) -> None:
        self._store = store
        self._events = exchange

    async def get(self, message: api.GetContainerRequest) -> api.GetContainerResponse:
        return api.GetContainerResponse(
            container=_wire(self._store.get(context.namespace(), message.id)))

    async def list(self, message: api.ListContainersRequest) -> api.ListContainersResponse:
        items = self._store.list(context.namespace(), message.filters)
        return api.ListContainersResponse(containers=[_wire(c) for c in items])

    async def list_stream(
        self, message: api.ListContainersRequest
    ) -> AsyncIterator[api.ListContainerMessage]:
        for c in self._store.list(context.namespace(), message.filters):
            yield api.ListContainerMessage(container=_wire(c))

    async def create(self, message: api.CreateContainerRequest) -> api.CreateContainerResponse:
        namespace = context.namespace()
        c = await self._store.create(namespace, _core(message.container))
        wire = _wire(c)
        self._events.publish(namespace, "/containers/create", events.ContainerCreate(
            id=c.id, image=c.image,
            runtime=events.ContainerCreateRuntime(name=c.runtime.name, options=wire.runtime.options)))
        return api.CreateContainerResponse(container=wire)

    async def update(self, message: api.UpdateContainerRequest) -> api.UpdateContainerResponse:
        namespace = context.namespace()
        c = await self._store.update(namespace, _core(message.container),
                                     mask_paths(message.update_mask))
        self._events.publish(namespace, "/containers/update", events.ContainerUpdate(
            id=c.id, image=c.image, labels=dict(c.labels), snapshot_key=c.snapshot_key))
        return api.UpdateContainerResponse(container=_wire(c))

    async def delete(self, message: api.DeleteContainerRequest) -> pb.Empty:
        namespace = context.namespace()
        await self._store.delete(namespace, message.id)
        self._events.publish(namespace, "/containers/delete", events.ContainerDelete(id=message.id))
        return pb.Empty()


async def _init(ctx: InitContext) -> ContainersService:
    return ContainersService(ctx.get(METADATA).containers, ctx.get(EVENT))


PLUGIN = Registration(GRPC, "containers", _init, requires=(METADATA, EVENT))
