"""``containerd.services.leases.v1.Leases`` (plugin ``io.containerd.grpc.v1.leases``)."""

from __future__ import annotations

import base64
import secrets
import time

from ..api.containerd.services.leases import v1 as api
from ..api.google import protobuf as pb
from ..metadata.leases import Lease, Resource
from ..metadata.plugin import Metadata
from ..plugin import GRPC, METADATA, InitContext, Registration
from . import context
from .convert import timestamp


def generate_lease_id() -> str:
    """A lease ID for a Create without one, as containerd's lease service makes it:
    ``<nanoseconds of the current second>-<4 URL-safe base64 characters of 3 random bytes>``."""
    return f"{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(secrets.token_bytes(3)).decode()}"


def _lease(lease: Lease) -> api.Lease:
    return api.Lease(id=lease.id, created_at=timestamp(lease.created_at), labels=dict(lease.labels))


class LeasesService(api.LeasesBase):
    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata
        self._store = metadata.leases

    async def create(self, message: api.CreateRequest) -> api.CreateResponse:
        lease = await self._store.create(context.namespace(), message.id or generate_lease_id(),
                                         message.labels)
        return api.CreateResponse(lease=_lease(lease))

    async def delete(self, message: api.DeleteRequest) -> pb.Empty:
        await self._store.delete(context.namespace(), message.id)
        if message.sync:
            await self._metadata.collect()
        else:
            self._metadata.deleted()
        return pb.Empty()

    async def list(self, message: api.ListRequest) -> api.ListResponse:
        items = self._store.list(context.namespace(), message.filters)
        return api.ListResponse(leases=[_lease(x) for x in items])

    async def add_resource(self, message: api.AddResourceRequest) -> pb.Empty:
        r = message.resource or api.Resource()
        await self._store.add_resource(context.namespace(), message.id, Resource(r.id, r.type))
        return pb.Empty()

    async def delete_resource(self, message: api.DeleteResourceRequest) -> pb.Empty:
        r = message.resource or api.Resource()
        await self._store.delete_resource(context.namespace(), message.id, Resource(r.id, r.type))
        self._metadata.deleted()
        return pb.Empty()

    async def list_resources(self, message: api.ListResourcesRequest) -> api.ListResourcesResponse:
        items = self._store.resources(context.namespace(), message.id)
        return api.ListResourcesResponse(resources=[api.Resource(id=r.id, type=r.type) for r in items])


async def _init(ctx: InitContext) -> LeasesService:
    return LeasesService(ctx.get(METADATA))


PLUGIN = Registration(GRPC, "leases", _init, requires=(METADATA,))
