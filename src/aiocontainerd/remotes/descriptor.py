"""Descriptor: what a manifest or index says about one piece of content.

A descriptor names content by ``digest`` and ``size`` and says how to read it
(``media_type``); ``urls`` are alternative locations (foreign layers),
``annotations`` free-form metadata, ``platform`` the target of a manifest
listed in an index. The JSON form is the OCI one (``mediaType``, ``digest``,
``size``, ``urls``, ``annotations``, ``platform``, ``artifactType``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidArgument
from .platforms import Platform

_DIGEST = re.compile(r"^(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})$")
_ANY_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a valid sha256/sha384/sha512 digest; else raise InvalidArgument."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        if isinstance(digest, str) and _ANY_DIGEST.match(digest):
            algorithm = digest.partition(":")[0]
            if algorithm not in ("sha256", "sha384", "sha512"):
                raise InvalidArgument(f"digest {digest!r}: unsupported digest algorithm {algorithm!r}")
        raise InvalidArgument(f"invalid digest {digest!r}")
    return digest


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor. Immutable; ``annotations`` should not be mutated."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str = ""

    def __str__(self) -> str:
        return f"{self.digest} ({self.media_type}, {self.size} bytes)"

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON object; empty optional fields are omitted."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, data: Any) -> Descriptor:
        """Build from an OCI JSON object, checking types and the digest. Raises InvalidArgument."""
        if not isinstance(data, Mapping):
            raise InvalidArgument(f"descriptor must be an object, got {type(data).__name__}")
        media_type = data.get("mediaType", "")
        size = data.get("size")
        urls = data.get("urls") or ()
        annotations = data.get("annotations") or {}
        artifact_type = data.get("artifactType", "")
        if not isinstance(media_type, str) or not isinstance(artifact_type, str):
            raise InvalidArgument("descriptor mediaType and artifactType must be strings")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"descriptor size must be a non-negative integer, got {size!r}")
        if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
            raise InvalidArgument("descriptor urls must be a list of strings")
        if not isinstance(annotations, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
            raise InvalidArgument("descriptor annotations must map strings to strings")
        platform = data.get("platform")
        return cls(media_type=media_type, digest=validate_digest(data.get("digest", "")), size=size,
                   urls=tuple(urls), annotations=dict(annotations),
                   platform=Platform.from_json(platform) if platform is not None else None,
                   artifact_type=artifact_type)
