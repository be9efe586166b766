"""Small value types the core shares, free of any wire codec."""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class TypedValue:
    """An ``Any``: a type URL and its serialised bytes, kept opaque and round-tripped unchanged.

    containerd's own types use ``types.containerd.io/<go path>`` URLs; OCI
    specs use ``types.containerd.io/opencontainers/runtime-spec/1/Spec`` with
    JSON bytes. The core never rewrites either.
    """

    type_url: str
    value: bytes = b""

    def to_json(self) -> dict[str, str]:
        return {"type_url": self.type_url, "value": base64.b64encode(self.value).decode()}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> TypedValue | None:
        if data is None:
            return None
        return cls(data["type_url"], base64.b64decode(data["value"]))


def now_ns() -> int:
    """Wall-clock time in nanoseconds since the epoch (timestamps keep nanoseconds)."""
    return time.time_ns()


@dataclasses.dataclass(frozen=True)
class Platform:
    """An OCI platform: ``os``/``architecture``[/``variant``]."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a blob is (media type), its digest and size in bytes."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)
    urls: tuple[str, ...] = ()
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"media_type": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        return cls(data["media_type"], data["digest"], data["size"], dict(data.get("annotations", {})))
