"""Events: the exchange (publish, forward, subscribe with filters), as containerd's ``events/exchange``."""

from .exchange import (
    DEFAULT_QUEUE_SIZE,
    Envelope,
    Exchange,
    Publisher,
    SubscriberTooSlow,
    Subscription,
    message_field,
    pack,
    type_url,
    unpack,
    validate_envelope,
    validate_topic,
)
from .plugin import PLUGIN

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "PLUGIN",
    "Envelope",
    "Exchange",
    "Publisher",
    "SubscriberTooSlow",
    "Subscription",
    "message_field",
    "pack",
    "type_url",
    "unpack",
    "validate_envelope",
    "validate_topic",
]
