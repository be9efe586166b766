"""``containerd.services.diff.v1.Diff`` (plugin ``io.containerd.grpc.v1.diff``).

A thin adapter over :class:`aiocontainerd.diff.service.DiffService`:
``Apply`` applies the descriptor's layer onto the mounts and answers the
applied (uncompressed) descriptor; ``Diff`` writes the layer between the
``left`` (lower) and ``right`` (upper) mounts into content, under the
request's lease, and answers its descriptor. The namespace comes from the
request headers.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..api.containerd import types as ctypes
from ..api.containerd.services.diff import v1 as api
from ..diff.service import DiffService
from ..mount import Mount
from ..plugin import GRPC, SERVICE, InitContext, Registration
from . import context
from .convert import descriptor, from_any, from_descriptor, from_timestamp


def mounts(wire: Sequence[ctypes.Mount]) -> list[Mount]:
    """Wire mounts as core mounts."""
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in wire]


class DiffGRPC(api.DiffBase):
    def __init__(self, service: DiffService) -> None:
        self._service = service

    async def apply(self, message: api.ApplyRequest) -> api.ApplyResponse:
        payloads = {k: v for k, v in ((k, from_any(a)) for k, a in message.payloads.items())
                    if v is not None}
        applied = await self._service.apply(context.namespace(), from_descriptor(message.diff),
                                            mounts(message.mounts), payloads=payloads,
                                            sync_fs=message.sync_fs)
        return api.ApplyResponse(applied=descriptor(applied))

    async def diff(self, message: api.DiffRequest) -> api.DiffResponse:
        epoch = (from_timestamp(message.source_date_epoch)
                 if message.source_date_epoch is not None else None)
        desc = await self._service.diff(context.namespace(), mounts(message.left), mounts(message.right),
                                        media_type=message.media_type, ref=message.ref,
                                        labels=dict(message.labels), lease=context.lease(),
                                        source_date_epoch_ns=epoch)
        return api.DiffResponse(diff=descriptor(desc))


async def _init(ctx: InitContext) -> DiffGRPC:
    return DiffGRPC(ctx.get(SERVICE, "diff-service"))


PLUGIN = Registration(GRPC, "diff", _init, requires=(SERVICE,))
