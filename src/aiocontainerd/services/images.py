"""``containerd.services.images.v1.Images`` (plugin ``io.containerd.grpc.v1.images``).

Publishes ``/images/create`` and ``/images/update`` (``ImageCreate``/``ImageUpdate``:
name and stored labels) and ``/images/delete`` (``ImageDelete``: name) in the
request's namespace once the change is stored, as containerd's images store does.
"""

from __future__ import annotations

from ..api.containerd.services.images import v1 as api
from ..api.google import protobuf as pb
from ..errors import InvalidArgument
from ..events import Exchange
from ..metadata.images import Image
from ..metadata.plugin import Metadata
from ..plugin import EVENT, GRPC, METADATA, InitContext, Registration
from ..types import Descriptor
from . import context
from .convert import descriptor, from_descriptor, mask_paths, timestamp


def _wire(i: Image) -> api.Image:
    return api.Image(name=i.name, labels=dict(i.labels), target=descriptor(i.target),
                     created_at=timestamp(i.created_at), updated_at=timestamp(i.updated_at))


def _core(i: api.Image | None) -> Image:
    if i is None:
        raise InvalidArgument("image must be set")
    return Image(i.name, from_descriptor(i.target), dict(i.labels))


class ImagesService(api.ImagesBase):
    def __init__(self, metadata: Metadata, exchange: Exchange) -> None:
        self._metadata = metadata
        self._store = metadata.images
        self._events = exchange

    async def get(self, message: api.GetImageRequest) -> api.GetImageResponse:
        return api.GetImageResponse(image=_wire(self._store.get(context.namespace(), message.name)))

    async def list(self, message: api.ListImagesRequest) -> api.ListImagesResponse:
        items = self._store.list(context.namespace(), message.filters)
        return api.ListImagesResponse(images=[_wire(i) for i in items])

    async def create(self, message: api.CreateImageRequest) -> api.CreateImageResponse:
        namespace = context.namespace()
        image = await self._store.create(namespace, _core(message.image))
        self._events.publish(namespace, "/images/create",
                             api.ImageCreate(name=image.name, labels=dict(image.labels)))
        return api.CreateImageResponse(image=_wire(image))

    async def update(self, message: api.UpdateImageRequest) -> api.UpdateImageResponse:
        if message.image is None:
            raise InvalidArgument("image must be set")
        i = message.image
        # an unset target only passes validation when the mask leaves the target alone
        target = from_descriptor(i.target) if i.target is not None else Descriptor("", "", 0)
        core = Image(i.name, target, dict(i.labels))
        namespace = context.namespace()
        updated = await self._store.update(namespace, core, mask_paths(message.update_mask))
        self._events.publish(namespace, "/images/update",
                             api.ImageUpdate(name=updated.name, labels=dict(updated.labels)))
        return api.UpdateImageResponse(image=_wire(updated))

    async def delete(self, message: api.DeleteImageRequest) -> pb.Empty:
        target = message.target.digest if message.target is not None else None
        namespace = context.namespace()
        await self._store.delete(namespace, message.name, target)
        self._events.publish(namespace, "/images/delete", api.ImageDelete(name=message.name))
        if message.sync:
            await self._metadata.collect()
        return pb.Empty()


async def _init(ctx: InitContext) -> ImagesService:
    return ImagesService(ctx.get(METADATA), ctx.get(EVENT))


PLUGIN = Registration(GRPC, "images", _init, requires=(METADATA, EVENT))
