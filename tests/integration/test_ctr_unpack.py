"""The real ``ctr images pull`` unpacking into our snapshotters, and ``ctr snapshots``.

For overlayfs, native and btrfs (the daemon rooted on a btrfs loop filesystem):
pull + unpack, the chain in ``ctr snapshots tree``, a snapshot whose mounts (from
``ctr snapshots mounts``) show exactly the image's files, then removal: after
``images rm --sync`` no snapshot, snapshot folder, mount or blob is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiocontainerd.images.unpack import chain_ids
from aiocontainerd.mount.mounting import mount_points
from tests.conftest import DaemonProcess, need_ctr
from tests.support.btrfs import BtrfsLoop, btrfs_unavailable
from tests.support.images import busybox_image, push, rootfs
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def daemon_on(snapshotter: str) -> AsyncIterator[DaemonProcess]:
    """A daemon process; for btrfs, rooted on a fresh btrfs loop filesystem."""
    async with contextlib.AsyncExitStack() as stack:
        if snapshotter == "btrfs":
            reason = btrfs_unavailable()
            if reason:
                pytest.skip(reason)
            base = stack.enter_context(BtrfsLoop())
        else:
            base = Path(tempfile.mkdtemp(prefix="aioc-", dir="/tmp"))
        d = DaemonProcess(base)
        await asyncio.to_thread(d.start)
        try:
            yield d
        finally:
            if d.proc is not None:
                await asyncio.to_thread(d.stop)


def tree_of(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """{"/path": (kind, mode, data or link target)} of a mounted tree."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = "/" + str(full.relative_to(root))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", 0, os.readlink(full).encode())
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), full.read_bytes())
    return out


def expected_tree(image) -> dict[str, tuple[str, int, bytes]]:
    out = {}
    entries = rootfs(image)
    for path, e in entries.items():
        if path == "/":
            continue
        if e.kind == "symlink":
            out[path] = ("symlink", 0, e.target.encode())
        elif e.kind == "dir":
            out[path] = ("dir", e.mode & 0o7777, b"")
        elif e.kind == "hardlink":
            target = entries[e.target]
            out[path] = ("file", target.mode & 0o7777, target.data)
        else:
            out[path] = ("file", e.mode & 0o7777, e.data)
    return out


async def check_chain_and_mount(d: DaemonProcess, snapshotter: str, chains: list[str], image) -> None:
    """``ctr snapshots tree`` shows the chain; a snapshot on its top, mounted with the
    commands ``ctr snapshots mounts`` prints, holds exactly the image's files."""
    sn = ["snapshots", "--snapshotter", snapshotter]
    tree = (await asyncio.to_thread(d.ctr, *sn, "tree")).stdout
    lines = [line.strip() for line in tree.splitlines() if line.strip()]
    assert lines == [chains[0]] + ["\\_ " + c for c in chains[1:]], tree
    # active, not a view: a view nobody leases is garbage for the next collection, in
    # containerd as here (an active snapshot is a GC root)
    await asyncio.to_thread(d.ctr, *sn, "prepare", "look", chains[-1])
    target = Path(tempfile.mkdtemp(prefix="aioc-view-", dir="/tmp"))
    commands = (await asyncio.to_thread(d.ctr, *sn, "mounts", str(target), "look")).stdout
    subprocess.run(["sh", "-c", commands], check=True)
    try:
        assert tree_of(target) == expected_tree(image)
    finally:
        subprocess.run(["umount", "-R", str(target)], check=True)
        target.rmdir()


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native", "btrfs"])
async def test_pull_unpack_mount_and_remove(registry: Registry, snapshotter: str) -> None:
    need_ctr()
    image = busybox_image(3)
    await push(registry.host, "test/unpack", "1", image)
    ref = f"{registry.host}/test/unpack:1"
    chains = chain_ids(list(image.diff_ids))
    async with daemon_on(snapshotter) as d:
        sn = ["snapshots", "--snapshotter", snapshotter]
        await asyncio.to_thread(d.ctr, "images", "pull", "--plain-http", "--snapshotter", snapshotter, ref)
        # a snapshot on the top of the chain, mounted with the commands ctr prints
        await check_chain_and_mount(d, snapshotter, chains, image)
        await asyncio.to_thread(d.ctr, *sn, "rm", "look")
        # the image's layers know their diff IDs; its config holds the chain for GC
        labels = (await asyncio.to_thread(d.ctr, "content", "ls")).stdout
        assert f"containerd.io/gc.ref.snapshot.{snapshotter}={chains[-1]}" in labels
        assert f"containerd.io/uncompressed={image.diff_ids[0]}" in labels
        # remove the image: GC takes snapshots, their folders and the blobs
        await asyncio.to_thread(d.ctr, "images", "rm", "--sync", ref)
        assert (await asyncio.to_thread(d.ctr, *sn, "ls")).stdout.splitlines()[1:] == []
        assert (await asyncio.to_thread(d.ctr, "content", "ls")).stdout.splitlines()[1:] == []
        root = d.root / f"io.containerd.snapshotter.v1.{snapshotter}"
        leftovers = [p for sub in ("snapshots", "active", "view") if (root / sub).exists()
                     for p in (root / sub).iterdir()]
        assert leftovers == []
        assert mount_points(d.root) == []
        blobs = d.root / "io.containerd.content.v1.content" / "blobs" / "sha256"
        assert list(blobs.iterdir()) == []


async def test_snapshots_commands(daemon_process: DaemonProcess) -> None:
    need_ctr()
    d = daemon_process
    sn = ["snapshots", "--snapshotter", "overlayfs"]
    d.ctr(*sn, "prepare", "base-work", "")
    target = Path(tempfile.mkdtemp(prefix="aioc-snap-", dir="/tmp"))
    subprocess.run(["sh", "-c", d.ctr(*sn, "mounts", str(target), "base-work").stdout], check=True)
    try:
        (target / "hello").write_text("hi\n")
    finally:
        subprocess.run(["umount", str(target)], check=True)
    d.ctr(*sn, "commit", "base", "base-work")
    d.ctr(*sn, "prepare", "child", "base")
    info = d.ctr(*sn, "info", "child").stdout
    assert '"Parent": "base"' in info and '"Kind": "Active"' in info
    d.ctr(*sn, "label", "base", "team=a")
    assert '"team": "a"' in d.ctr(*sn, "info", "base").stdout
    usage = d.ctr(*sn, "usage", "base").stdout
    assert "base" in usage
    r = d.ctr(*sn, "rm", "base", check=False)
    assert r.returncode != 0  # it has a child
    d.ctr(*sn, "rm", "child")
    d.ctr(*sn, "rm", "base")
    assert d.ctr(*sn, "ls").stdout.splitlines()[1:] == []
    target.rmdir()


@pytest.mark.parametrize("snapshotter", ["overlayfs", "native"])
async def test_daemon_side_unpack_matches_the_image(registry: Registry, snapshotter: str) -> None:
    """actr's pull unpacks in the daemon (overlayfs: all layers at once, committed in order);
    the result holds exactly the image's files, whiteouts and opaque folders applied."""
    need_ctr()
    image = busybox_image(3)
    await push(registry.host, "test/parallel", "1", image)
    ref = f"{registry.host}/test/parallel:1"
    chains = chain_ids(list(image.diff_ids))
    async with daemon_on(snapshotter) as d:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aiocontainerd.cli.actr", "--address", d.address, "images", "pull",
            "--plain-http", "--snapshotter", snapshotter, ref, stdout=subprocess.DEVNULL)
        assert await proc.wait() == 0
        await check_chain_and_mount(d, snapshotter, chains, image)
