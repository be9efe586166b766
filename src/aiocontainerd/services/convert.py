"""Conversions between wire messages and core types, shared by every service."""

from __future__ import annotations

from ..api.google import protobuf as pb
from ..api.google import rpc
from ..types import TypedValue


def timestamp(ns: int) -> pb.Timestamp:
    """Nanoseconds since the epoch as a wire Timestamp (nanoseconds kept)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return pb.Timestamp(seconds=seconds, nanos=nanos)


def from_timestamp(ts: pb.Timestamp | None) -> int:
    """A wire Timestamp as nanoseconds since the epoch (0 when unset)."""
    return 0 if ts is None else ts.seconds * 1_000_000_000 + ts.nanos


def any_(value: TypedValue | None) -> pb.Any | None:
    """A core TypedValue as a wire Any, type URL unchanged."""
    return None if value is None else pb.Any(type_url=value.type_url, value=value.value)


def from_any(value: pb.Any | None) -> TypedValue | None:
    """A wire Any as a core TypedValue, type URL unchanged."""
    return None if value is None else TypedValue(value.type_url, bytes(value.value))


def status(code: int, message: str) -> rpc.Status:
    """A google.rpc.Status (e.g. a plugin's init error)."""
    return rpc.Status(code=code, message=message)


def mask_paths(mask: pb.FieldMask | None) -> list[str]:
    """The paths of a FieldMask, [] when unset."""
    return list(mask.paths) if mask is not None else []


def descriptor(d):  # -> containerd.types.Descriptor
    """A core Descriptor as the wire's ``containerd.types.Descriptor``."""
    from ..api.containerd import types as ctypes

    return ctypes.Descriptor(media_type=d.media_type, digest=d.digest, size=d.size,
                             annotations=dict(d.annotations))


def from_descriptor(d):  # -> aiocontainerd.types.Descriptor
    """The wire's Descriptor as a core Descriptor; InvalidArgument when unset."""
    from ..errors import InvalidArgument
    from ..types import Descriptor

    if d is None:
        raise InvalidArgument("descriptor must be set")
    return Descriptor(d.media_type, d.digest, d.size, dict(d.annotations))
