"""Limits on what a registry may make us fetch, and the checks that enforce them.

A registry (or a man in the middle of a mirror) controls manifest bytes; these
bounds keep a pull finite:

- ``max_manifest_size``: a manifest or index body larger than this is refused
  (containerd: 4 MiB) — checked on the advertised size and on the bytes read.
- ``max_children``: layers + config of a manifest, or entries of an index.
- ``max_depth``: nesting of indexes (index → index → … → manifest).

Over a limit, or an index that refers to itself (directly or through its
descendants: a cycle), raises :class:`~aiocontainerd.errors.InvalidArgument`
naming the digest and the limit.

:func:`children` parses a manifest/index body into its child descriptors
with these checks (and containerd's media-type consistency check);
:func:`walk` visits a whole tree, parents first.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import InvalidArgument
from . import mediatypes
from .descriptor import Descriptor

DEFAULT_MAX_MANIFEST_SIZE = 4 << 20
DEFAULT_MAX_CHILDREN = 1000
DEFAULT_MAX_DEPTH = 8


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on manifests (see the module doc). All must be positive."""

    max_manifest_size: int = DEFAULT_MAX_MANIFEST_SIZE
    max_children: int = DEFAULT_MAX_CHILDREN
    max_depth: int = DEFAULT_MAX_DEPTH

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgument(f"limit {f.name} must be a positive integer, got {value!r}")

    def check_manifest_size(self, size: int, what: str) -> None:
        """Raise InvalidArgument when ``size`` exceeds :attr:`max_manifest_size`."""
        if size > self.max_manifest_size:
            raise InvalidArgument(
                f"manifest {what} is {size} bytes, larger than the limit of "
                f"{self.max_manifest_size} bytes (max_manifest_size)")


def _document(body: bytes, desc: Descriptor) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"manifest {desc.digest}: invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"manifest {desc.digest}: expected a JSON object")
    return doc


def _validate_media_type(doc: dict[str, Any], desc: Descriptor) -> None:
    """containerd's check: the body must be the kind its descriptor says."""
    if "fsLayers" in doc or doc.get("schemaVersion") == 1:
        mediatypes.check_not_schema1(mediatypes.DOCKER_SCHEMA1_MANIFEST)
    declared = doc.get("mediaType", "")
    if mediatypes.is_manifest(desc.media_type) and (doc.get("manifests") or mediatypes.is_index(declared)):
        raise InvalidArgument(f"manifest {desc.digest}: media-type: expected manifest but found index "
                              f"({desc.media_type})")
    if mediatypes.is_index(desc.media_type) and (
            doc.get("config") or doc.get("layers") or mediatypes.is_manifest(declared)):
        raise InvalidArgument(f"manifest {desc.digest}: media-type: expected index but found manifest "
                              f"({desc.media_type})")


def children(desc: Descriptor, body: bytes, limits: Limits | None = None) -> list[Descriptor]:
    """The child descriptors of a manifest (config, then layers) or an index (manifests).

    Other media types have no children (``[]``). Raises InvalidArgument for an
    oversized body, too many children, an index listing itself, a body whose
    kind contradicts ``desc.media_type``, or malformed descriptors;
    Unimplemented for schema 1.
    """
    limits = limits or Limits()
    if not mediatypes.is_manifest_or_index(desc.media_type):
        mediatypes.check_not_schema1(desc.media_type)
        return []
    limits.check_manifest_size(len(body), desc.digest)
    doc = _document(body, desc)
    _validate_media_type(doc, desc)
    if mediatypes.is_manifest(desc.media_type):
        config = doc.get("config")
        layers = doc.get("layers") or []
        if config is None:
            raise InvalidArgument(f"manifest {desc.digest}: no config descriptor")
        if not isinstance(layers, list):
            raise InvalidArgument(f"manifest {desc.digest}: 'layers' must be a list")
        if len(layers) + 1 > limits.max_children:
            raise InvalidArgument(f"manifest {desc.digest} has {len(layers)} layers, more than the limit "
                                  f"of {limits.max_children} (max_children)")
        raw = [config, *layers]
    else:
        raw = doc.get("manifests") or []
        if not isinstance(raw, list):
            raise InvalidArgument(f"index {desc.digest}: 'manifests' must be a list")
        if len(raw) > limits.max_children:
            raise InvalidArgument(f"index {desc.digest} lists {len(raw)} manifests, more than the limit "
                                  f"of {limits.max_children} (max_children)")
    try:
        out = [Descriptor.from_json(d) for d in raw]
    except InvalidArgument as e:
        raise InvalidArgument(f"manifest {desc.digest}: {e.message}") from None
    for child in out:
        if child.digest == desc.digest:
            raise InvalidArgument(f"index {desc.digest} refers to itself (cycle)")
    return out


async def walk(root: Descriptor, get_children: Callable[[Descriptor], Awaitable[list[Descriptor]]],
               limits: Limits | None = None) -> list[Descriptor]:
    """Every descriptor of the tree under ``root``, parents before children, each digest once.

    ``get_children(desc)`` fetches and returns the children (typically via
    :func:`children`, possibly filtered by platform). Raises InvalidArgument for a
    cycle (a descriptor among its own ancestors), nesting deeper than
    ``max_depth``, or more than ``max_children * max_depth`` descriptors in all.
    """
    limits = limits or Limits()
    seen: set[str] = set()
    out: list[Descriptor] = []
    total_max = limits.max_children * limits.max_depth

    async def visit(desc: Descriptor, ancestors: tuple[str, ...]) -> None:
        if desc.digest in ancestors:
            raise InvalidArgument(f"index {ancestors[-1]} refers back to {desc.digest} (cycle)")
        if len(ancestors) > limits.max_depth:
            raise InvalidArgument(f"manifest {desc.digest} is nested {len(ancestors)} levels deep, more "
                                  f"than the limit of {limits.max_depth} (max_depth)")
        if desc.digest in seen:
            return
        seen.add(desc.digest)
        out.append(desc)
        if len(out) > total_max:
            raise InvalidArgument(f"image {root.digest} has more than {total_max} descriptors")
        for child in await get_children(desc):
            await visit(child, (*ancestors, desc.digest))

    await visit(root, ())
    return out
