"""A btrfs filesystem in a file, on a loop device, for the btrfs snapshotter's tests.

:class:`BtrfsLoop` makes a sparse image file (``truncate``), formats it
(``mkfs.btrfs``), mounts it with ``mount -o loop`` on a fresh folder, and on
:meth:`BtrfsLoop.close` takes everything down again: every mount below the
folder (lazily if busy), the loop device (``losetup -d`` if the kernel did not
free it on unmount), the image and the folders.

:func:`btrfs_unavailable` gives the reason to skip when this cannot work here:
not root, btrfs-progs missing (``apt-get install btrfs-progs``), no btrfs in
the kernel, or no free loop device. Anything else that fails is an error.

Uses, each with its teardown:

- :func:`mounted_btrfs` and the ``btrfs_mount`` fixture: a fresh filesystem per test;
- :func:`shared_btrfs`: one filesystem for the whole test process (the shared
  snapshotter suite makes a snapshotter per test in a folder of it), taken
  down when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DEFAULT_SIZE = 1 << 30  # sparse: only what is written takes space


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


def _kernel_has_btrfs() -> bool:
    try:
        with open("/proc/filesystems") as f:
            if any(line.split()[-1:] == ["btrfs"] for line in f):
                return True
    except OSError:
        return False
    # a module not loaded yet is loaded by the first mount
    return Path(f"/lib/modules/{os.uname().release}/kernel/fs/btrfs").exists()


@functools.cache
def btrfs_unavailable() -> str | None:
    """Why a btrfs loop filesystem cannot be made here, or None when it can."""
    if os.geteuid() != 0:
        return "a btrfs loop filesystem needs root (mount, losetup)"
    for tool in ("mkfs.btrfs", "btrfs"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install btrfs-progs"
    for tool in ("losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install mount"
    if not _kernel_has_btrfs():
        return "the kernel has no btrfs filesystem"
    free = _run("losetup", "--find", check=False)
    if free.returncode != 0:
        return f"no free loop device: {free.stderr.strip() or free.stdout.strip()}"
    return None


def _mounts_below(folder: Path) -> list[str]:
    from aiocontainerd.mount.mounting import mount_points

    return mount_points(folder)


class BtrfsLoop:
    """One btrfs filesystem on a loop device (see the module doc)."""

    def __init__(self, size: int = DEFAULT_SIZE, mkfs_options: tuple[str, ...] = ()) -> None:
        self.size = size
        self.mkfs_options = mkfs_options
        self.base = Path(tempfile.mkdtemp(prefix="aioc-btrfs-", dir="/tmp"))
        self.image = self.base / "btrfs.img"
        self.mount_point = self.base / "mnt"
        self._closed = False

    def open(self) -> Path:
        """Make, format and mount the filesystem; returns the mount point."""
        try:
            with open(self.image, "wb") as f:
                f.truncate(self.size)
            _run("mkfs.btrfs", "-q", *self.mkfs_options, str(self.image))
            self.mount_point.mkdir()
            _run("mount", "-t", "btrfs", "-o", "loop", str(self.image), str(self.mount_point))
        except subprocess.CalledProcessError as e:
            self.close()
            raise RuntimeError(f"{' '.join(e.cmd)} failed: {e.stderr.strip()}") from None
        except BaseException:
            self.close()
            raise
        return self.mount_point

    def loop_devices(self) -> list[str]:
        """Loop devices backed by the image (``losetup -j``)."""
        if not self.image.exists():
            return []
        out = _run("losetup", "-j", str(self.image), check=False).stdout
        return [line.split(":", 1)[0] for line in out.splitlines() if line.strip()]

    def close(self) -> None:
        """Unmount everything below the mount point, free the loop device, delete the files."""
        if self._closed:
            return
        self._closed = True
        for point in sorted(_mounts_below(self.mount_point), key=len, reverse=True):
            if _run("umount", point, check=False).returncode != 0:
                time.sleep(0.2)
                if _run("umount", point, check=False).returncode != 0:
                    _run("umount", "-l", point, check=False)
        for device in self.loop_devices():
            _run("losetup", "-d", device, check=False)
        leftover = _mounts_below(self.mount_point)
        if leftover:
            raise RuntimeError(f"btrfs loop filesystem still mounted at {leftover}")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Path:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def mounted_btrfs(size: int = DEFAULT_SIZE) -> Iterator[Path]:
    """A fresh, empty btrfs filesystem for the ``with`` body (the test is skipped, with the
    reason, where :func:`btrfs_unavailable` says it cannot be made); taken down after."""
    reason = btrfs_unavailable()
    if reason:
        pytest.skip(reason)
    with BtrfsLoop(size) as mount_point:
        yield mount_point


@pytest.fixture
def btrfs_mount() -> Iterator[Path]:
    """A fresh, empty btrfs filesystem mounted for the test; taken down after it. Import it
    into a conftest.py (``from tests.support.btrfs import btrfs_mount  # noqa: F401``)."""
    with mounted_btrfs() as mount_point:
        yield mount_point


_shared: BtrfsLoop | None = None
_shared_lock = threading.Lock()


def shared_btrfs() -> Path:
    """One btrfs filesystem for the whole process (made on first use, taken down at exit).

    Raises RuntimeError if it cannot be made (check :func:`btrfs_unavailable` first).
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            loop = BtrfsLoop()
            loop.open()
            _shared = loop
            atexit.register(_close_shared)
        return _shared.mount_point


def _close_shared() -> None:
    global _shared
    if _shared is not None:
        with contextlib.suppress(Exception):
            _shared.close()
        _shared = None


def folder_for(root: Path) -> Path:
    """A folder of the shared btrfs standing for the (non-btrfs) folder ``root``: the same
    ``root`` gives the same folder (a reopened snapshotter finds its snapshots). Folders
    whose ``root`` is gone (the test finished) are deleted, subvolumes and all."""
    from aiocontainerd.snapshotters.btrfs import is_subvolume, subvolume_delete

    mount_point = shared_btrfs()
    for entry in mount_point.iterdir():
        marker = entry / ".root"
        if marker.exists() and not Path(marker.read_text()).exists():
            for dirpath, dirnames, _ in os.walk(entry, topdown=False):
                for d in dirnames:
                    full = os.path.join(dirpath, d)
                    if is_subvolume(full):
                        subvolume_delete(full)
            shutil.rmtree(entry, ignore_errors=True)
    name = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]
    folder = mount_point / name
    folder.mkdir(exist_ok=True)
    (folder / ".root").write_text(os.path.realpath(root))
    return folder / "snapshotter"
