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

Second, ``Message._type_hints()`` (``typing.get_type_hints`` over the class's string
annotations) is computed anew on every call, and betterproto2 calls it once per field
while it builds a class's metadata on the class's first encode or decode (O(fields²)
annotation evaluations; a CRI CreateContainerRequest's ~40 classes took ~14 ms of the
first CreateContainer after a start) and once per message in ``to_dict``. The hints of a
generated class never change, so they are computed once per class and the same dict is
returned after (betterproto2 only reads it); a test checks every class's hints are equal.

Imports only betterproto2 (the shim may load it).
"""

from __future__ import annotations

import enum
from typing import Any

import betterproto2

_IMMUTABLE = (type(None), bool, int, float, str, bytes, enum.Enum)
_CACHE = "_aiocd_field_defaults"
_HINTS = "_aiocd_type_hints"
_original = betterproto2.Message._get_field_default
_original_hints = betterproto2.Message.__dict__["_type_hints"]


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


def _type_hints(cls: type[betterproto2.Message]) -> dict[str, type]:
    hints = cls.__dict__.get(_HINTS)
    if hints is None:
        hints = _original_hints.__func__(cls)
        setattr(cls, _HINTS, hints)
    return hints


def apply() -> None:
    """Install the replacements (idempotent)."""
    betterproto2.Message._get_field_default = _get_field_default  # type: ignore[method-assign]
    betterproto2.Message._type_hints = classmethod(_type_hints)  # type: ignore[method-assign, assignment]


def restore() -> None:
    """Put betterproto2's own methods back (tests compare both)."""
    betterproto2.Message._get_field_default = _original  # type: ignore[method-assign]
    betterproto2.Message._type_hints = _original_hints  # type: ignore[method-assign]
