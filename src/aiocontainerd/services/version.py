"""``containerd.services.version.v1.Version`` (plugin ``io.containerd.grpc.v1.version``)."""

from __future__ import annotations

from ..api.containerd.services.version import v1 as api
from ..api.google import protobuf as pb
from ..plugin import GRPC, InitContext, Registration
from ..version import REVISION, version


class VersionService(api.VersionBase):
    async def version(self, message: pb.Empty) -> api.VersionResponse:
        return api.VersionResponse(version=version(), revision=REVISION)


async def _init(ctx: InitContext) -> VersionService:
    return VersionService()


PLUGIN = Registration(GRPC, "version", _init)
