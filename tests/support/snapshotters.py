"""The snapshotters the shared suite (``tests/integration/test_snapshotters.py``) runs against.

Every test of the suite runs once per entry of :data:`SNAPSHOTTERS`. To add a
snapshotter, append one :class:`SnapshotterCase`::

    async def _btrfs(root: Path) -> Snapshotter:
        return await BtrfsSnapshotter.open(root)

    SNAPSHOTTERS.append(SnapshotterCase("btrfs", _btrfs, unavailable=_btrfs_unavailable))

- ``name``: the plugin ID (``io.containerd.snapshotter.v1.<name>``), used as the test id;
- ``factory(root)``: a new snapshotter on the empty folder ``root`` (the suite
  closes it; a second call on the same root must reopen it with its snapshots);
- ``unavailable()``: a reason to skip on this machine (no root, no kernel
  support, missing tools), or None when the snapshotter can run; called once;
- ``renames_lower_dirs``: False when renaming a directory that came from a
  parent layer fails (overlayfs without ``redirect_dir``, as containerd's
  suite notes); the rename test then renames files only;
- ``copies_parents``: True when a snapshot's storage holds a full copy of its
  parents (native): its usage then includes their files, as containerd's does.

The suite mounts what snapshotters return with the real mount code (as root)
and fails a test that leaves anything mounted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiocontainerd.snapshots import Snapshotter


def _no_reason() -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class SnapshotterCase:
    """One snapshotter under test (see the module doc)."""

    name: str
    factory: Callable[[Path], Awaitable[Snapshotter]]
    unavailable: Callable[[], str | None] = _no_reason
    renames_lower_dirs: bool = True
    copies_parents: bool = False

    def __str__(self) -> str:
        return self.name


def need_root() -> str | None:
    """The usual reason: snapshotters are mounted, which needs root."""
    return None if os.geteuid() == 0 else "snapshotters are mounted: the suite needs root"


# -- native


async def _native(root: Path) -> Snapshotter:
    from aiocontainerd.snapshotters.native import NativeSnapshotter

    return await NativeSnapshotter.open(root)


# -- overlayfs


async def _overlay(root: Path) -> Snapshotter:
    from aiocontainerd.snapshotters.overlay import OverlaySnapshotter

    return await OverlaySnapshotter.open(root)


@functools.cache
def _overlay_unavailable() -> str | None:
    from aiocontainerd.snapshotters.overlay import OverlayUnsupported, check_overlay, overlay_options

    reason = need_root()
    if reason:
        return reason
    base = Path(tempfile.mkdtemp(prefix="overlay-check-"))
    try:
        check_overlay(base, overlay_options(base, []))
    except OverlayUnsupported as e:
        return str(e)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return None


SNAPSHOTTERS: list[SnapshotterCase] = [
    SnapshotterCase("native", _native, unavailable=need_root, copies_parents=True),
    SnapshotterCase("overlayfs", _overlay, unavailable=_overlay_unavailable, renames_lower_dirs=False),
]


# -- btrfs: each snapshotter gets a folder of one loop-device btrfs filesystem shared by
# the test process (tests/support/btrfs.py), made when availability is checked (before
# any test) and taken down when the process exits


async def _btrfs(root: Path) -> Snapshotter:
    import asyncio

    from aiocontainerd.snapshotters.btrfs import BtrfsSnapshotter
    from tests.support.btrfs import folder_for

    return await BtrfsSnapshotter.open(await asyncio.to_thread(folder_for, root))


@functools.cache
def _btrfs_unavailable() -> str | None:
    from tests.support.btrfs import btrfs_unavailable, shared_btrfs

    reason = btrfs_unavailable()
    if reason is None:
        shared_btrfs()
    return reason


SNAPSHOTTERS.append(SnapshotterCase("btrfs", _btrfs, unavailable=_btrfs_unavailable))
