"""``containerd.services.content.v1.Content`` (plugin ``io.containerd.grpc.v1.content``).

The Write stream follows containerd's content server: the first message
names the ref (and may give ``total``/``expected``); every message answers
with the writer's offset; ``STAT`` reports, ``WRITE`` appends (an ``offset``
must equal the current one; offset 0 on a started ingest restarts it),
``COMMIT`` verifies and commits with labels, then the stream ends. An
``expected`` digest the namespace already has ends the stream AlreadyExists.
Reads stream 1 MiB chunks.

Events, in the request's namespace (as containerd's metadata content store):
``/content/create`` (``ContentCreate``: digest, size; no media type, which a
Write does not carry) when a Write commits a blob new to the namespace,
``/content/delete`` (``ContentDelete``: digest) on Delete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpclib.const import Status as Code
from grpclib.exceptions import GRPCError

from ..api.containerd import events
from ..api.containerd.services.content import v1 as api
from ..api.google import protobuf as pb
from ..content import Status
from ..errors import InvalidArgument
from ..events import Exchange
from ..metadata.content import ContentStore, Info
from ..plugin import EVENT, GRPC, METADATA, InitContext, Registration
from . import context
from .convert import mask_paths, timestamp


def _info(i: Info) -> api.Info:
    return api.Info(digest=i.digest, size=i.size, created_at=timestamp(i.created_at),
                    updated_at=timestamp(i.updated_at), labels=dict(i.labels))


def _status(s: Status) -> api.Status:
    return api.Status(started_at=timestamp(s.started_at), updated_at=timestamp(s.updated_at),
                      ref=s.ref, offset=s.offset, total=s.total, expected=s.expected)


class ContentService(api.ContentBase):
    def __init__(self, store: ContentStore, exchange: Exchange) -> None:
        self._store = store
        self._events = exchange

    async def info(self, message: api.InfoRequest) -> api.InfoResponse:
        return api.InfoResponse(info=_info(self._store.info(context.namespace(), message.digest)))

    async def update(self, message: api.UpdateRequest) -> api.UpdateResponse:
        if message.info is None:
            raise InvalidArgument("info must be set")
        info = Info(message.info.digest, message.info.size, labels=dict(message.info.labels))
        updated = await self._store.update(context.namespace(), info, mask_paths(message.update_mask))
        return api.UpdateResponse(info=_info(updated))

    async def list(self, message: api.ListContentRequest) -> AsyncIterator[api.ListContentResponse]:
        items = self._store.list(context.namespace(), message.filters)
        for start in range(0, len(items), 100):
            yield api.ListContentResponse(info=[_info(i) for i in items[start:start + 100]])

    async def delete(self, message: api.DeleteContentRequest) -> pb.Empty:
        namespace = context.namespace()
        await self._store.delete(namespace, message.digest)
        self._events.publish(namespace, "/content/delete", events.ContentDelete(digest=message.digest))
        return pb.Empty()

    async def read(self, message: api.ReadContentRequest) -> AsyncIterator[api.ReadContentResponse]:
        offset = message.offset
        async for chunk in self._store.read(context.namespace(), message.digest, message.offset,
                                            message.size):
            yield api.ReadContentResponse(offset=offset, data=chunk)
            offset += len(chunk)

    async def status(self, message: api.StatusRequest) -> api.StatusResponse:
        st = await self._store.status(context.namespace(), message.ref)
        return api.StatusResponse(status=_status(st))

    async def list_statuses(self, message: api.ListStatusesRequest) -> api.ListStatusesResponse:
        items = await self._store.list_statuses(context.namespace(), message.filters)
        return api.ListStatusesResponse(statuses=[_status(s) for s in items])

    async def abort(self, message: api.AbortRequest) -> pb.Empty:
        await self._store.abort(context.namespace(), message.ref)
        return pb.Empty()

    async def write(
        self, messages: AsyncIterator[api.WriteContentRequest]
    ) -> AsyncIterator[api.WriteContentResponse]:
        namespace = context.namespace()
        req = await anext(messages, None)
        if req is None:
            return
        if not req.ref:
            raise InvalidArgument("first message must have a reference")
        ref, total, expected = req.ref, req.total, req.expected
        writer = await self._store.writer(namespace, ref, total, expected, context.lease())
        try:
            while True:
                if req.expected:
                    expected = req.expected
                    if self._store.has(namespace, expected):
                        writer.close()
                        await self._store.abort(namespace, ref)
                        raise GRPCError(Code.ALREADY_EXISTS,
                                        f"blob with expected digest {expected} exists")
                if req.total > 0:
                    total = req.total
                out = api.WriteContentResponse(action=req.action, offset=writer.offset)
                if req.action == api.WriteAction.STAT:
                    st = writer.status()
                    out.digest = writer.digest()
                    out.started_at = timestamp(st.started_at)
                    out.updated_at = timestamp(st.updated_at)
                    out.total = total
                elif req.action in (api.WriteAction.WRITE, api.WriteAction.COMMIT):
                    if req.offset > 0 and req.offset != writer.offset:
                        raise GRPCError(Code.OUT_OF_RANGE, f"write @{req.offset} must occur at "
                                                           f"current offset {writer.offset}")
                    if req.offset == 0 and writer.offset > 0:
                        await writer.truncate(0)
                    if req.data:
                        await writer.write(req.data)
                    out.offset = writer.offset
                    if req.action == api.WriteAction.COMMIT:
                        info = await writer.commit(total, expected, req.labels)
                        self._events.publish(namespace, "/content/create", events.ContentCreate(
                            digest=info.digest, size=info.size))
                    out.digest = writer.digest()
                else:
                    raise InvalidArgument(f"unknown write action {req.action}")
                yield out
                if req.action == api.WriteAction.COMMIT:
                    return
                req = await anext(messages, None)
                if req is None:
                    return
        finally:
            writer.close()


async def _init(ctx: InitContext) -> ContentService:
    return ContentService(ctx.get(METADATA).content, ctx.get(EVENT))


PLUGIN = Registration(GRPC, "content", _init, requires=(METADATA, EVENT))
