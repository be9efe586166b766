"""``containerd.services.version.v1.Version`` (plugin ``io.containerd.grpc.v1.version``)."""

from __future__ import annotations

from ..api.containerd.services.version import v1 as api
from ..api.google import protobuf as pb
from ..plugin import GRPC, InitContext, Registration
from ..version import REVISION, version


class VersionService(api.VersionBase):
    def __init__(self) -> None:
        # read once: importlib.metadata parses the dist-info on every call (~0.1 ms)
        self._version = version()

    async def version(self, message: pb.Empty) -> api.VersionResponse:
        return api.VersionResponse(version=self._version, revision=REVISION)


async def _init(ctx: InitContext) -> VersionService:
    return VersionService()


PLUGIN = Registration(GRPC, "version", _init)
