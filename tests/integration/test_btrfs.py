"""The btrfs snapshotter on a real btrfs filesystem (a loop device): subvolume layout,
read-only flags, ``subvolid`` mounts, copy-on-write usage, qgroups, nested subvolumes,
cleanup, the plugin's skip off btrfs, and the loop-device fixture's teardown.

The shared snapshotter suite (``test_snapshotters.py``) runs every common case on
btrfs too; these are the btrfs-only ones.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiocontainerd.mount.mounting import filesystem_type, mount_points, temp_mount
from aiocontainerd.plugin import PluginSet, SkipPlugin
from aiocontainerd.snapshots import Kind
from aiocontainerd.snapshotters import btrfs
from aiocontainerd.snapshotters.btrfs import BtrfsConfig, BtrfsSnapshotter
from tests.support.btrfs import BtrfsLoop, btrfs_unavailable, mounted_btrfs

pytestmark = pytest.mark.integration


def run(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


def readonly_property(path: Path) -> bool:
    """``btrfs property get -ts <path> ro`` (btrfs-progs' view of the read-only flag)."""
    return run("btrfs", "property", "get", "-ts", str(path), "ro").strip() == "ro=true"


@pytest.fixture
def fs() -> Iterator[Path]:
    """A fresh btrfs filesystem on a loop device (skipped where none can be made)."""
    with mounted_btrfs() as mount_point:
        yield mount_point


@pytest.fixture
async def sn(fs: Path) -> AsyncIterator[BtrfsSnapshotter]:
    s = await BtrfsSnapshotter.open(fs / "snapshotter")
    yield s
    await s.close()


async def write(mounts: list, files: dict[str, bytes], work: Path) -> None:
    async with temp_mount(mounts, root=work) as d:
        for name, data in files.items():
            (d / name).write_bytes(data)


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="btrfs-work-"))
    yield d
    assert not mount_points(d)
    os.rmdir(d)


async def test_layout_and_read_only_flags(sn: BtrfsSnapshotter, fs: Path, work: Path) -> None:
    root = fs / "snapshotter"
    assert oct(root.stat().st_mode & 0o777) == "0o700"
    assert sorted(os.listdir(root)) == ["active", "metadata.lmdb", "snapshots", "view"]

    mounts = await sn.prepare("a")
    sid = sn.ms.get_info("a")[0]
    assert btrfs.is_subvolume(root / "active" / sid) and not readonly_property(root / "active" / sid)
    await write(mounts, {"f": b"data"}, work)
    await sn.commit("A", "a")
    assert not (root / "active" / sid).exists()
    assert btrfs.is_subvolume(root / "snapshots" / sid) and readonly_property(root / "snapshots" / sid)
    assert (root / "snapshots" / sid / "f").read_bytes() == b"data"

    await sn.view("v", "A")
    vid = sn.ms.get_info("v")[0]
    assert readonly_property(root / "view" / vid)
    await sn.prepare("b", "A")
    bid = sn.ms.get_info("b")[0]
    assert not readonly_property(root / "active" / bid)
    assert (root / "active" / bid / "f").read_bytes() == b"data"

    await sn.remove("v")
    await sn.remove("b")
    assert os.listdir(root / "view") == [] and os.listdir(root / "active") == []


async def test_mounts_use_the_device_and_subvolid(sn: BtrfsSnapshotter, fs: Path, work: Path) -> None:
    device = btrfs.lookup_mount(fs).source
    assert device.startswith("/dev/loop")
    mounts = await sn.prepare("a")
    sid = sn.ms.get_info("a")[0]
    rootid = run("btrfs", "inspect-internal", "rootid", str(fs / "snapshotter/active" / sid)).strip()
    assert [(m.type, m.source, m.options) for m in mounts] == [("btrfs", device, (f"subvolid={rootid}",))]
    assert await sn.mounts("a") == mounts
    await sn.commit("A", "a")
    view = await sn.view("v", "A")
    assert view[0].options[-1] == "ro"
    async with temp_mount(view, root=work) as d:
        assert filesystem_type(d) == "btrfs"
        with pytest.raises(OSError, match="Read-only"):
            (d / "x").write_bytes(b"")


async def test_children_share_extents(sn: BtrfsSnapshotter, work: Path) -> None:
    await write(await sn.prepare("a"), {"big": os.urandom(4 << 20)}, work)
    await sn.commit("A", "a")
    assert (await sn.usage("A")).size >= 4 << 20
    await write(await sn.prepare("b", "A"), {"small": b"s" * 10_000}, work)
    usage = await sn.usage("b")
    assert 10_000 <= usage.size < 1 << 20 and usage.inodes == 1
    await sn.commit("B", "b")
    assert await sn.usage("B") == usage


async def test_usage_from_qgroups(sn: BtrfsSnapshotter, fs: Path, work: Path) -> None:
    run("btrfs", "quota", "enable", str(fs))
    run("btrfs", "quota", "rescan", "-w", str(fs))
    await write(await sn.prepare("a"), {"big": os.urandom(2 << 20)}, work)
    await sn.commit("A", "a")
    mounts = await sn.prepare("b", "A")
    sid = sn.ms.get_info("b")[0]
    await write(mounts, {"new": os.urandom(1 << 20)}, work)
    exclusive = await asyncio.to_thread(btrfs.qgroup_exclusive, fs / "snapshotter/active" / sid)
    assert exclusive is not None and exclusive >= 1 << 20
    usage = await sn.usage("b")
    assert 1 << 20 <= usage.size < 2 << 20  # its own extents, not the parent's 2 MiB
    assert usage.inodes == 1


async def test_qgroups_off(sn: BtrfsSnapshotter, fs: Path) -> None:
    await sn.prepare("a")
    sid = sn.ms.get_info("a")[0]
    assert await asyncio.to_thread(btrfs.qgroup_exclusive, fs / "snapshotter/active" / sid) is None


async def test_nested_subvolumes_are_removed(sn: BtrfsSnapshotter, fs: Path, work: Path) -> None:
    mounts = await sn.prepare("a")
    async with temp_mount(mounts, root=work) as d:  # a container making its own subvolumes
        await asyncio.to_thread(btrfs.subvolume_create, d / "inner")
        await asyncio.to_thread(btrfs.subvolume_create, d / "inner" / "deeper")
    await sn.remove("a")
    assert os.listdir(fs / "snapshotter/active") == []


async def test_cleanup_deletes_orphan_subvolumes(sn: BtrfsSnapshotter, fs: Path, work: Path) -> None:
    root = fs / "snapshotter"
    await write(await sn.prepare("a"), {"f": b"1"}, work)
    await sn.commit("A", "a")
    await sn.prepare("b", "A")
    await sn.view("v", "A")
    live = {k: sorted(os.listdir(root / k)) for k in ("active", "view", "snapshots")}
    for orphan in ("active/999", "view/rm-7", "snapshots/1000"):
        btrfs.subvolume_create(root / orphan)
    (root / "active" / "new-crashed").mkdir()
    await sn.cleanup()
    assert {k: sorted(os.listdir(root / k)) for k in ("active", "view", "snapshots")} == live
    assert (await sn.stat("A")).kind == Kind.COMMITTED


async def test_reopen_keeps_device(fs: Path) -> None:
    s = await BtrfsSnapshotter.open(fs / "s")
    mounts = await s.prepare("a")
    await s.close()
    s = await BtrfsSnapshotter.open(fs / "s")
    try:
        assert await s.mounts("a") == mounts
    finally:
        await s.close()


# -- the plugin


async def _init(root: Path, config: BtrfsConfig | None) -> PluginSet:
    plugins = PluginSet()
    await plugins.init_all([btrfs.PLUGIN], configs=lambda r: config, root=root, state=root / "state",
                           properties={})
    return plugins


async def test_plugin_skips_off_btrfs(tmp_path: Path) -> None:
    plugins = await _init(tmp_path / "daemon", None)
    p = plugins.get("io.containerd.snapshotter.v1.btrfs")
    assert p.skipped and isinstance(p.error, SkipPlugin)
    fs = filesystem_type(tmp_path)
    expected = f"path {tmp_path}/daemon/io.containerd.snapshotter.v1.btrfs ({fs}) must be a btrfs " \
               "filesystem to be used with the btrfs snapshotter"
    assert str(p.error) == expected
    assert not (tmp_path / "daemon").exists()  # nothing made for a skipped plugin


async def test_plugin_on_btrfs(fs: Path, tmp_path: Path) -> None:
    plugins = await _init(tmp_path, BtrfsConfig(root_path=str(fs / "configured")))
    p = plugins.get("io.containerd.snapshotter.v1.btrfs")
    try:
        assert p.ok and p.exports == {"root": str(fs / "configured")}
        assert isinstance(p.instance, BtrfsSnapshotter)
    finally:
        await plugins.close_all()


# -- the fixture itself


def test_loop_fixture_tears_everything_down() -> None:
    reason = btrfs_unavailable()
    if reason:
        pytest.skip(reason)
    loop = BtrfsLoop(size=256 << 20)
    mount_point = loop.open()
    assert filesystem_type(mount_point) == "btrfs"
    assert loop.loop_devices()
    btrfs.subvolume_create(mount_point / "subvolume")
    image = str(loop.image)
    loop.close()
    assert not mount_points(loop.base)
    assert image not in run("losetup", "-a")  # the loop device is detached
    assert not loop.base.exists()
