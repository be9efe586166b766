"""``grpc.health.v1.Health`` (plugin ``io.containerd.grpc.v1.healthcheck``).

The daemon serves once every plugin has initialised, so a connected client
always sees SERVING; ``Watch`` sends that once and holds the stream open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..api.grpc.health import v1 as api
from ..plugin import GRPC, InitContext, Registration

SERVING = api.HealthCheckResponseServingStatus.SERVING


class HealthService(api.HealthBase):
    async def check(self, message: api.HealthCheckRequest) -> api.HealthCheckResponse:
        return api.HealthCheckResponse(status=SERVING)

    async def list(self, message: api.HealthListRequest) -> api.HealthListResponse:
        return api.HealthListResponse(statuses={"": api.HealthCheckResponse(status=SERVING)})

    async def watch(self, message: api.HealthCheckRequest) -> AsyncIterator[api.HealthCheckResponse]:
        yield api.HealthCheckResponse(status=SERVING)
        await asyncio.Event().wait()  # until the client goes away (the call is cancelled)


async def _init(ctx: InitContext) -> HealthService:
    return HealthService()


PLUGIN = Registration(GRPC, "healthcheck", _init)
