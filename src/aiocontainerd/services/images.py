"""``containerd.services.images.v1.Images`` (plugin ``io.containerd.grpc.v1.images``)."""

from __future__ import annotations

from ..api.containerd.services.images import v1 as api
from ..api.google import protobuf as pb
from ..errors import InvalidArgument
from ..metadata.images import Image
from ..metadata.plugin import Metadata
from ..plugin import GRPC, METADATA, InitContext, Registration
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
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata
        self._store = metadata.images

    async def get(self, message: api.GetImageRequest) -> api.GetImageResponse:
        return api.GetImageResponse(image=_wire(self._store.get(context.namespace(), message.name)))

    async def list(self, message: api.ListImagesRequest) -> api.ListImagesResponse:
        items = self._store.list(context.namespace(), message.filters)
        return api.ListImagesResponse(images=[_wire(i) for i in items])

    async def create(self, message: api.CreateImageRequest) -> api.CreateImageResponse:
        image = await self._store.create(context.namespace(), _core(message.image))
        return api.CreateImageResponse(image=_wire(image))

    async def update(self, message: api.UpdateImageRequest) -> api.UpdateImageResponse:
        if message.image is None:
            raise InvalidArgument("image must be set")
        i = message.image
        # an unset target only passes validation when the mask leaves the target alone
        target = from_descriptor(i.target) if i.target is not None else Descriptor("", "", 0)
        core = Image(i.name, target, dict(i.labels))
        updated = await self._store.update(context.namespace(), core, mask_paths(message.update_mask))
        return api.UpdateImageResponse(image=_wire(updated))

    async def delete(self, message: api.DeleteImageRequest) -> pb.Empty:
        target = message.target.digest if message.target is not None else None
        await self._store.delete(context.namespace(), message.name, target)
        if message.sync:
            await self._metadata.collect()
        return pb.Empty()


async def _init(ctx: InitContext) -> ImagesService:
    return ImagesService(ctx.get(METADATA))


PLUGIN = Registration(GRPC, "images", _init, requires=(METADATA,))
