"""Events over the wire: the gRPC and ttrpc faces of the daemon's exchange.

- ``containerd.services.events.v1.Events`` (plugin ``io.containerd.grpc.v1.events``):
  ``Publish`` (the event goes out under the request's namespace, see
  ``context.py``), ``Forward`` (an envelope sent on unchanged, with its own
  namespace and timestamp) and ``Subscribe`` (a server stream of
  ``containerd.types.Envelope`` for every namespace, narrowed by containerd
  filter strings on ``topic``, ``namespace`` and ``event.<field>``). A
  subscriber that falls :data:`~aiocontainerd.events.DEFAULT_QUEUE_SIZE`
  events behind has its stream ended with ``RESOURCE_EXHAUSTED``.
- ``containerd.services.events.ttrpc.v1.Events/Forward`` (plugin
  ``io.containerd.ttrpc.v1.events``): what shims call on the daemon's
  ``<socket>.ttrpc`` to report task events; served by whatever ttrpc server
  the daemon hands to :meth:`TTRPCEventsService.register_ttrpc`.

Errors follow containerd's exchange: an invalid topic or namespace, or a
forwarded envelope without a timestamp, is INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..api.containerd import types as ctypes
from ..api.containerd.services.events import v1 as api
from ..api.containerd.services.events.ttrpc import v1 as ttrpc_api
from ..api.google import protobuf as pb
from ..errors import InvalidArgument
from ..events import Envelope, Exchange
from ..plugin import EVENT, GRPC, TTRPC, InitContext, Registration
from ..types import TypedValue
from . import context
from .convert import from_timestamp, timestamp

TTRPC_SERVICE = "containerd.services.events.ttrpc.v1.Events"


def wire_envelope(e: Envelope) -> ctypes.Envelope:
    """A core envelope as ``containerd.types.Envelope`` (no event: ``event`` unset)."""
    event = e.event
    return ctypes.Envelope(
        timestamp=timestamp(e.timestamp), namespace=e.namespace, topic=e.topic,
        event=pb.Any(type_url=event.type_url, value=event.value)
        if event.type_url or event.value else None)


def core_envelope(e: ctypes.Envelope | None) -> Envelope:
    """A wire envelope as a core one; InvalidArgument when it is unset."""
    if e is None:
        raise InvalidArgument("envelope must be set")
    return Envelope(from_timestamp(e.timestamp), e.namespace, e.topic, _event(e.event))


def _event(value: pb.Any | None) -> TypedValue:
    return TypedValue(value.type_url, bytes(value.value)) if value is not None else TypedValue("")


class EventsService(api.EventsBase):
    """The gRPC Events service (see the module doc)."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def publish(self, message: api.PublishRequest) -> pb.Empty:
        self._exchange.publish(context.namespace(), message.topic, _event(message.event))
        return pb.Empty()

    async def forward(self, message: api.ForwardRequest) -> pb.Empty:
        self._exchange.forward(core_envelope(message.envelope))
        return pb.Empty()

    async def subscribe(self, message: api.SubscribeRequest) -> AsyncIterator[ctypes.Envelope]:
        async with self._exchange.subscribe(*message.filters) as events:
            async for envelope in events:
                yield wire_envelope(envelope)


class TTRPCEventsService:
    """``containerd.services.events.ttrpc.v1.Events``: ``Forward`` for shims (see the module doc)."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def forward(self, request: ttrpc_api.ForwardRequest) -> pb.Empty:
        """Put a shim's envelope on the exchange unchanged; InvalidArgument when invalid."""
        self._exchange.forward(core_envelope(request.envelope))
        return pb.Empty()

    def register_ttrpc(self, server: Any) -> None:
        """Register ``Forward`` on an :class:`aiocontainerd.ttrpc.Server`."""
        server.register(TTRPC_SERVICE, {"Forward": (ttrpc_api.ForwardRequest, self.forward)})


async def _init(ctx: InitContext) -> EventsService:
    return EventsService(ctx.get(EVENT))


async def _init_ttrpc(ctx: InitContext) -> TTRPCEventsService:
    return TTRPCEventsService(ctx.get(EVENT))


PLUGIN = Registration(GRPC, "events", _init, requires=(EVENT,))
TTRPC_PLUGIN = Registration(TTRPC, "events", _init_ttrpc, requires=(EVENT,))
PLUGINS = (PLUGIN, TTRPC_PLUGIN)
