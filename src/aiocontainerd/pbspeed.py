"""A speed fix for betterproto2's encoder, applied once at import by the daemon and the shim.

``Message.__bytes__`` (and ``is_set``/``to_dict``) compare every field with its
default, which betterproto2 0.10 obtains through ``Message._get_field_default``:
a ``warnings.catch_warnings()`` block around a call of the field's default
factory, ~2 µs per field per message encoded, about half the cost of encoding a
CreateTaskRequest. The factories (``field()`` in betterproto2: ``list``, ``dict``,
``type(None)``, ``bool``/``int``/``float``/``str``/``bytes``, or an enum member
factory from generated code) never warn, so the guard only costs time.

The replacement returns the same value: immutable defaults (None, numbers,
strings, bytes, enum members) are produced once per class and field and then
reused; mutable ones (``list``/``dict``) come fresh from their factory every
time, as before. Nothing else in betterproto2 changes; a test checks that every
generated message type encodes byte-identically with and without it.

Imports only betterproto2 (the shim may load it).
"""

from __future__ import annotations

import enum
from typing import Any

import betterproto2

_IMMUTABLE = (type(None), bool, int, float, str, bytes, enum.Enum)
_CACHE = "_aiocd_field_defaults"
_original = betterproto2.Message._get_field_default


def _get_field_default(self: betterproto2.Message, field_name: str) -> Any:
    cls = type(self)
    cache = cls.__dict__.get(_CACHE)
    if cache is None:
        cache = {}
        setattr(cls, _CACHE, cache)
    try:
        return cache[field_name]
    except KeyError:
        pass
    value = cls._betterproto.default_gen[field_name]()
    if isinstance(value, _IMMUTABLE):
        cache[field_name] = value
    return value


def apply() -> None:
    """Install the replacement (idempotent)."""
    betterproto2.Message._get_field_default = _get_field_default  # type: ignore[method-assign]


def restore() -> None:
    """Put betterproto2's own method back (tests compare both)."""
    betterproto2.Message._get_field_default = _original  # type: ignore[method-assign]
