"""The labels containerd writes on image content, so GC and ``ctr`` read them the same way.

On a parent blob, one label per child (the garbage collector follows them)::

    index    containerd.io/gc.ref.content.m.<i>      = <manifest digest>
    manifest containerd.io/gc.ref.content.config     = <config digest>
             containerd.io/gc.ref.content.l.<i>      = <layer digest>

On every blob pulled from a registry, where it came from (a later push may
mount it from there)::

    containerd.io/distribution.source.<registry host> = <repository path>
"""

from __future__ import annotations

from ..remotes import mediatypes
from ..remotes.descriptor import Descriptor
from ..remotes.pusher import distribution_source_key
from ..remotes.reference import Reference

GC_CONTENT = "containerd.io/gc.ref.content"


def gc_labels(desc: Descriptor, kids: list[Descriptor]) -> dict[str, str]:
    """The ``containerd.io/gc.ref.content.*`` labels for ``desc`` with children ``kids``."""
    if mediatypes.is_index(desc.media_type):
        return {f"{GC_CONTENT}.m.{i}": c.digest for i, c in enumerate(kids)}
    if mediatypes.is_manifest(desc.media_type) and kids:
        labels = {f"{GC_CONTENT}.config": kids[0].digest}
        labels.update({f"{GC_CONTENT}.l.{i}": c.digest for i, c in enumerate(kids[1:])})
        return labels
    return {}


def source_label(ref: Reference) -> tuple[str, str]:
    """``(containerd.io/distribution.source.<host>, <repository path>)`` for a pulled reference."""
    return distribution_source_key(ref), ref.path
