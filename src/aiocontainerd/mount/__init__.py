"""Mounts: what snapshotters return and what the daemon mounts.

A :class:`Mount` is containerd's ``mount.Mount``: ``type`` (``bind``,
``overlay``, ``btrfs``, ``ext4``, ...), ``source``, ``options`` (as ``mount -o``
takes them, including ``ro``/``rbind`` and overlay's ``lowerdir=``,
``upperdir=``, ``workdir=``), and an optional ``target`` below the mount point.
Mounting and unmounting (and temporary mounts for apply/diff) arrive in
:mod:`aiocontainerd.mount.mounting`.
"""

from __future__ import annotations

import dataclasses
import re

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape_mountinfo(field: str) -> str:
    """A ``/proc/<pid>/mountinfo`` path field with its octal escapes decoded (the kernel
    writes space, tab, newline and backslash as ``\\040``, ``\\011``, ``\\012``, ``\\134``)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field) if "\\" in field else field


@dataclasses.dataclass(frozen=True)
class Mount:
    """One mount to perform; ``options`` in ``mount -o`` form."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


__all__ = ["Mount", "unescape_mountinfo"]
