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
