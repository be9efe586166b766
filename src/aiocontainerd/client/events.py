"""``client.events``: the daemon's event stream (Events.Subscribe) and Events.Publish.

::

    async with client.events.subscribe('topic~="/tasks/"') as events:
        async for envelope in events:
            print(envelope.topic, envelope.event)      # e.g. /tasks/exit TaskExit(...)

Filters use containerd's syntax on ``topic``, ``namespace`` and ``event.*``
fields; several filters match when any does. Subscribing is not namespaced:
the daemon sends every namespace's events (filter on ``namespace==…``).
:attr:`Envelope.event` is the decoded message when its type is known here
(containerd's task, container, image, snapshot, content and namespace
events), else the raw ``Any``. Errors are :mod:`aiocontainerd.errors` classes;
the stream ends with Unavailable if the daemon goes away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
from collections.abc import AsyncIterator, Mapping
from typing import Any

import betterproto2
from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from ..api.containerd import events as _task_events  # noqa: F401 - registers the event types
from ..api.containerd.services.events import v1 as events_api
from ..api.containerd.services.images import v1 as _image_events  # noqa: F401 - ImageCreate, ...
from ..api.google import protobuf as pb
from ..errors import Unavailable, from_status


@dataclasses.dataclass(frozen=True)
class Envelope:
    """One event: when, in which namespace, its topic, and the event (decoded or ``Any``)."""

    timestamp: datetime.datetime | None
    namespace: str
    topic: str
    event: betterproto2.Message | pb.Any | None

    @property
    def type_url(self) -> str:
        if isinstance(self.event, pb.Any):
            return self.event.type_url
        if self.event is None:
            return ""
        from ..api.message_pool import default_message_pool

        return default_message_pool.type_to_url.get(type(self.event), "")


def decode(value: pb.Any | None) -> betterproto2.Message | pb.Any | None:
    """The message in ``value`` when its type is registered, else ``value`` itself."""
    if value is None or not value.type_url:
        return None
    from ..api.message_pool import default_message_pool

    # containerd names proto events by their full name alone (``containerd.events.TaskExit``)
    types = default_message_pool.url_to_type
    kind = types.get(value.type_url) or types.get("type.googleapis.com/" + value.type_url.rpartition("/")[2])
    if kind is None:
        return value
    try:
        return kind.parse(value.value)
    except (TypeError, ValueError):
        return value


def _time(ts: pb.Timestamp | None) -> datetime.datetime | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts.seconds, datetime.UTC).replace(microsecond=ts.nanos // 1000)


class Events:
    """Events service calls."""

    def __init__(self, channel: Channel, metadata: Mapping[str, str], timeout: float | None = None) -> None:
        self._channel = channel
        self._metadata = dict(metadata)
        self._stub = events_api.EventsStub(channel, timeout=timeout, metadata=self._metadata)

    @contextlib.asynccontextmanager
    async def subscribe(self, *filters: str) -> AsyncIterator[AsyncIterator[Envelope]]:
        """An async iterator of :class:`Envelope` until the block exits (the call is cancelled)."""
        from grpclib.const import Cardinality

        stream = self._channel.request("/containerd.services.events.v1.Events/Subscribe",
                                       Cardinality.UNARY_STREAM, events_api.SubscribeRequest,
                                       _envelope_type(), metadata=dict(self._metadata))
        await stream.__aenter__()
        try:
            await stream.send_message(events_api.SubscribeRequest(filters=list(filters)), end=True)
        except GRPCError as e:
            await stream.__aexit__(None, None, None)
            raise from_status(e.status, e.message or e.status.name) from None

        async def envelopes() -> AsyncIterator[Envelope]:
            try:
                while (message := await stream.recv_message()) is not None:
                    yield Envelope(_time(message.timestamp), message.namespace, message.topic,
                                   decode(message.event))
            except GRPCError as e:
                raise from_status(e.status, e.message or e.status.name) from None
            except (StreamTerminatedError, ConnectionError) as e:
                raise Unavailable(f"event stream ended: {e}") from None

        try:
            yield envelopes()
        finally:
            with contextlib.suppress(Exception):
                await stream.cancel()
            with contextlib.suppress(Exception):
                await stream.__aexit__(None, None, None)

    async def publish(self, topic: str, event: betterproto2.Message) -> None:
        """Publish ``event`` on ``topic`` in the client's namespace. Raises InvalidArgument."""
        try:
            await self._stub.publish(events_api.PublishRequest(topic=topic, event=pb.Any.pack(event)))
        except GRPCError as e:
            raise from_status(e.status, e.message or e.status.name) from None


def _envelope_type() -> Any:
    from ..api.containerd import types as ctypes

    return ctypes.Envelope
