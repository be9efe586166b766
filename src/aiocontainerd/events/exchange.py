"""The event exchange: one broadcaster per daemon, as containerd's ``core/events/exchange``.

Terms:

- An **event** is a protobuf message (``containerd.events.TaskExit``, ...).
  On the exchange it travels packed in an :class:`Envelope` with the
  namespace it happened in, its **topic** (``/tasks/exit``) and the time it
  was first published.
- A **topic** is ``/`` followed by one or more ``/``-separated components,
  each an identifier (``[A-Za-z0-9]+`` runs joined by single ``.``, ``_``
  or ``-``; see :mod:`aiocontainerd.identifiers`).
- The packed event's **type URL** is what Go's ``typeurl.MarshalAny`` writes
  for a protobuf message: its bare full name (``containerd.events.TaskExit``,
  ``containerd.services.images.v1.ImageCreate``), not
  ``type.googleapis.com/…``. containerd 1.6 ``ctr events`` resolves the
  type URL as written, so the prefixed form would not decode there. Either
  form is accepted when reading.

Lifecycle::

    exchange = Exchange()
    async with exchange.subscribe('topic~="^/tasks/"', "namespace==k8s.io") as events:
        exchange.publish("default", "/tasks/exit", TaskExit(container_id="c1"))
        async for envelope in events:      # ends when the exchange closes
            ...

- :meth:`Exchange.publish` packs a message, stamps the time and delivers it;
  :meth:`Exchange.forward` delivers an envelope packed elsewhere (a shim, a
  client's ``Events/Forward``). Both are synchronous, never wait for a
  subscriber and must be called on the event loop's thread.
- :meth:`Exchange.subscribe` takes containerd filter strings
  (:mod:`aiocontainerd.filters`, OR'd) over the envelope's fields
  ``topic``, ``namespace`` and ``event.<field>...`` (see :meth:`Envelope.field`);
  no filter receives everything. Each subscriber gets every matching envelope
  in publication order.
- **Slow subscribers.** Each subscriber has a bounded queue
  (``queue_size``, :data:`DEFAULT_QUEUE_SIZE` envelopes). A publisher never
  waits: when a subscriber's queue is full, that subscription is cut off — it
  still receives everything queued before the gap, then its iteration raises
  :class:`SubscriberTooSlow` (``RESOURCE_EXHAUSTED``). Events are never lost
  silently, memory stays bounded, and the other subscribers are not affected.
  (containerd queues without bound instead.)
- A subscription ends when its ``async with`` block exits (also on
  cancellation of the task iterating it), when :meth:`Subscription.close` is
  called (iteration stops after what is queued) or when the exchange closes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import betterproto2

from .. import filters as filters_
from .. import identifiers
from ..api.google import protobuf as pb
from ..api.message_pool import default_message_pool
from ..errors import Code, ContainerdError, FailedPrecondition, InvalidArgument
from ..types import TypedValue, now_ns

log = logging.getLogger(__name__)

#: envelopes a subscriber may have waiting before it is cut off
DEFAULT_QUEUE_SIZE = 4096
_GOOGLE_PREFIX = "type.googleapis.com/"


class SubscriberTooSlow(ContainerdError):
    """A subscriber let its queue fill up; its subscription was ended (RESOURCE_EXHAUSTED)."""

    code = Code.RESOURCE_EXHAUSTED


# -- packing ---------------------------------------------------------------------------------

def type_url(message: betterproto2.Message | type[betterproto2.Message]) -> str:
    """The type URL Go's ``typeurl`` gives a protobuf message: its bare full name.

    ``type_url(TaskExit()) == "containerd.events.TaskExit"``. Raises
    :class:`InvalidArgument` for a message type no generated module registered.
    """
    cls = message if isinstance(message, type) else type(message)
    try:
        url = default_message_pool.type_to_url[cls]
    except KeyError:
        raise InvalidArgument(f"event type {cls.__name__} is not a registered message") from None
    return url.rsplit("/", 1)[-1]


def pack(event: betterproto2.Message | TypedValue) -> TypedValue:
    """``event`` as a :class:`TypedValue` with a Go-style type URL.

    An already packed event (a ``TypedValue`` or a ``google.protobuf.Any``)
    is kept as it is, as ``typeurl.MarshalAny`` keeps an ``Any``.
    """
    if isinstance(event, TypedValue):
        return event
    if isinstance(event, pb.Any):
        return TypedValue(event.type_url, bytes(event.value))
    return TypedValue(type_url(event), bytes(event))


def unpack(value: TypedValue) -> betterproto2.Message | None:
    """The message in ``value``, or None when its type is unknown here or its bytes are bad.

    The type must be registered, i.e. its generated module imported (the
    containerd event modules are imported by this module).
    """
    if not value.type_url:
        return None
    name = value.type_url.rsplit("/", 1)[-1]
    cls = default_message_pool.url_to_type.get(_GOOGLE_PREFIX + name)
    if cls is None:
        return None
    try:
        return cls.parse(value.value)
    except Exception:
        return None


# -- the envelope and its filter fields ------------------------------------------------------

def message_field(message: Any, path: Sequence[str]) -> str | None:
    """A message's field by path, the way containerd's generated ``Field`` methods read it.

    A string field is its value (absent when empty); a bool is ``true`` or
    ``false``; a map (``labels``) is looked up with the rest of the path joined
    by ``.``; a nested message is read with the rest of the path (an ``Any``
    is unpacked first). Numbers, timestamps and lists are not filterable,
    as in containerd.
    """
    if not path or not dataclasses.is_dataclass(message):
        return None
    names = {f.name for f in dataclasses.fields(message)}
    if path[0] not in names:
        return None
    value = getattr(message, path[0])
    rest = path[1:]
    if isinstance(value, bool):
        return ("true" if value else "false") if not rest else None
    if isinstance(value, str):
        return value if value and not rest else None
    if isinstance(value, dict):
        return filters_.map_field(path, value)
    if isinstance(value, pb.Any):
        return message_field(unpack(TypedValue(value.type_url, bytes(value.value))), rest)
    if isinstance(value, betterproto2.Message):
        return message_field(value, rest)
    return None


@dataclasses.dataclass(frozen=True)
class Envelope:
    """An event as the exchange carries it (containerd's ``events.Envelope``).

    ``timestamp``: nanoseconds since the epoch, set when first published;
    ``event``: the packed message (type URL and bytes, unchanged on the way).
    """

    timestamp: int
    namespace: str
    topic: str
    event: TypedValue

    def field(self, path: Sequence[str]) -> str | None:
        """Filter adaptor: ``namespace``, ``topic`` (absent when empty), ``event.<field>...``."""
        if not path:
            return None
        if path[0] == "namespace":
            return self.namespace or None
        if path[0] == "topic":
            return self.topic or None
        if path[0] == "event":
            return message_field(unpack(self.event), path[1:])
        return None

    def unpack(self) -> betterproto2.Message | None:
        """The event message, or None when its type is not known here."""
        return unpack(self.event)


def validate_topic(topic: str) -> str:
    """Return ``topic`` if valid (``/a/b``, components identifiers); else InvalidArgument."""
    if not topic:
        raise InvalidArgument("envelope topic: must not be empty")
    if not topic.startswith("/"):
        raise InvalidArgument(f"envelope topic {topic!r}: must start with '/'")
    if len(topic) == 1:
        raise InvalidArgument(f"envelope topic {topic!r}: must have at least one component")
    for component in topic[1:].split("/"):
        try:
            identifiers.validate(component)
        except InvalidArgument as e:
            raise InvalidArgument(f"envelope topic {topic!r}: component {component!r}: {e.message}") \
                from None
    return topic


def validate_envelope(envelope: Envelope) -> Envelope:
    """What ``forward`` checks: a valid namespace and topic and a set timestamp."""
    try:
        identifiers.validate(envelope.namespace)
    except InvalidArgument as e:
        raise InvalidArgument(f"event envelope has invalid namespace: {e.message}") from None
    validate_topic(envelope.topic)
    if not envelope.timestamp:
        raise InvalidArgument("timestamp must be set on forwarded event")
    return envelope


# -- subscriptions ---------------------------------------------------------------------------

class Subscription:
    """One subscriber's queue; an async iterator of :class:`Envelope` and an async context manager.

    Made by :meth:`Exchange.subscribe`; receives from ``__aenter__`` until
    ``__aexit__`` (or :meth:`close`, or the exchange closing).
    """

    def __init__(self, exchange: Exchange, filter_: filters_.Filter, queue_size: int) -> None:
        self._exchange = exchange
        self.filter = filter_
        self.queue_size = queue_size
        self._queue: collections.deque[Envelope] = collections.deque()
        self._wakeup = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None

    # registration
    async def __aenter__(self) -> Subscription:
        self._exchange._add(self)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._exchange._remove(self)
        self._end(None)
        self._queue.clear()

    def close(self) -> None:
        """Stop receiving; iteration ends once what is queued has been taken."""
        self._exchange._remove(self)
        self._end(None)

    @property
    def closed(self) -> bool:
        return self._ended

    def __len__(self) -> int:
        """Envelopes waiting to be taken."""
        return len(self._queue)

    # delivery (called by the exchange, on the loop's thread)
    def _offer(self, envelope: Envelope) -> None:
        if self._ended:
            return
        if len(self._queue) >= self.queue_size:
            log.warning("event subscriber too slow: subscription ended",
                        extra={"fields": {"queued": len(self._queue), "topic": envelope.topic}})
            self._exchange._remove(self)
            self._end(SubscriberTooSlow(
                f"event subscriber fell {self.queue_size} events behind; subscription ended"))
            return
        self._queue.append(envelope)
        self._wakeup.set()

    def _end(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._error = error
        self._wakeup.set()

    # iteration
    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        while not self._queue:
            if self._ended:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    async def get(self) -> Envelope:
        """The next envelope; FailedPrecondition once the subscription has ended.

        Wrap it in ``asyncio.timeout`` to bound the wait.
        """
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            raise FailedPrecondition("subscription ended") from None


class Exchange:
    """Fans every published or forwarded envelope out to the matching subscribers (see module doc)."""

    def __init__(self, *, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscribers: list[Subscription] = []
        self._closed = False

    @property
    def subscribers(self) -> int:
        """How many subscriptions are receiving."""
        return len(self._subscribers)

    def publish(self, namespace: str, topic: str,
                event: betterproto2.Message | TypedValue) -> Envelope:
        """Pack ``event``, stamp it now and deliver it under ``namespace`` and ``topic``.

        Follows containerd's ``Exchange.Publish``. Raises FailedPrecondition
        for an empty namespace, InvalidArgument for an invalid namespace or
        topic or an unregistered message type. Returns the envelope sent.
        """
        if not namespace:
            raise FailedPrecondition("failed publishing event: namespace is required")
        identifiers.validate(namespace)
        validate_topic(topic)
        envelope = Envelope(now_ns(), namespace, topic, pack(event))
        self._deliver(envelope)
        return envelope

    def forward(self, envelope: Envelope) -> None:
        """Deliver an envelope packed and stamped elsewhere, unchanged (``Exchange.Forward``).

        Raises InvalidArgument for an invalid namespace or topic or a zero timestamp.
        """
        self._deliver(validate_envelope(envelope))

    def subscribe(self, *filters: str, queue_size: int | None = None) -> Subscription:
        """A subscription to the envelopes matching any of ``filters`` (all when none).

        Use it as ``async with exchange.subscribe(...) as events: async for e in events``.
        Raises InvalidArgument at once for a filter that does not parse.
        """
        parsed = filters_.parse(filters) if filters else filters_.Filter()
        sub = Subscription(self, parsed, queue_size or self.queue_size)
        if self._closed:
            sub._end(None)
        return sub

    async def close(self) -> None:
        """End every subscription (each iteration stops after its queue); later ones end at once."""
        self._closed = True
        for sub in list(self._subscribers):
            sub.close()

    # internals
    def _add(self, sub: Subscription) -> None:
        if self._closed or sub._ended:
            sub._end(None)
            return
        if sub not in self._subscribers:
            self._subscribers.append(sub)

    def _remove(self, sub: Subscription) -> None:
        try:
            self._subscribers.remove(sub)
        except ValueError:
            pass

    def _deliver(self, envelope: Envelope) -> None:
        if not self._subscribers:
            return
        decoded: list[Any] = []

        def adaptor(path: Sequence[str]) -> str | None:
            if path and path[0] == "event":
                if not decoded:
                    decoded.append(envelope.unpack())
                return message_field(decoded[0], path[1:])
            return envelope.field(path)

        for sub in list(self._subscribers):
            try:
                matched = sub.filter.match(adaptor)
            except Exception:  # a filter must never break a publisher
                log.exception("event filter failed")
                matched = False
            if matched:
                sub._offer(envelope)


Publisher = Callable[[str, str, betterproto2.Message], Any]
"""What a component that only publishes needs: ``Exchange.publish`` or a stand-in."""


def _import_event_types() -> None:
    # containerd's event messages are registered by importing their modules
    from ..api.containerd import events  # noqa: F401


_import_event_types()
