"""Mounting (aiocontainerd.mount.mounting): option parsing, and real mounts as root."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontainerd.mount import Mount, unescape_mountinfo
from aiocontainerd.mount import mounting as mnt
from aiocontainerd.mount.mounting import (
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    compact_lowerdir,
    is_mountpoint,
    mount_all,
    mount_points,
    parse_options,
    readonly,
    remove_volatile,
    split_options,
    temp_mount,
    unmount,
    unmount_all,
)
from aiocontainerd.tasks import complete


def test_parse_options() -> None:
    o = parse_options(["rbind", "ro", "nosuid", "nodev"])
    assert o.flags == MS_BIND | MS_REC | MS_RDONLY | MS_NOSUID | MS_NODEV and o.data == ()
    assert parse_options(["ro", "rw"]).flags == 0, "later words win, as containerd's parser"
    o = parse_options(["lowerdir=/a:/b,upperdir=/u", "workdir=/w", "index=off", "rprivate"])
    assert o.data == ("lowerdir=/a:/b", "upperdir=/u", "workdir=/w", "index=off")
    assert o.data_string == "lowerdir=/a:/b,upperdir=/u,workdir=/w,index=off"
    assert o.propagation == MS_PRIVATE | MS_REC and o.flags == 0
    for word in ("loop", "uidmap=0:1000:1", "X-containerd.mkdir.path=/x"):
        with pytest.raises(OSError, match="not supported"):
            parse_options([word])


def test_split_options() -> None:
    assert split_options(["a,b", "c", "", r"lowerdir=/x\,y"]) == ["a", "b", "c", r"lowerdir=/x\,y"]


def test_compact_lowerdir() -> None:
    dirs = [f"/var/lib/x/snapshots/{i}/fs" for i in (12, 1, 100)]
    chdir, opts = compact_lowerdir(["workdir=/w", "lowerdir=" + ":".join(dirs), "index=off"])
    assert chdir == "/var/lib/x/snapshots/"
    assert opts == ["workdir=/w", "index=off", "lowerdir=12/fs:1/fs:100/fs"]
    assert compact_lowerdir(["lowerdir=/a/fs"]) == ("", ["lowerdir=/a/fs"])  # one lower: nothing to do
    assert compact_lowerdir(["lowerdir=/a:/b"])[0] == ""  # common parent "/" is no help
    assert compact_lowerdir(["lowerdir=/r/a:/r/a/b"]) == ("/r/", ["lowerdir=a:a/b"])
    assert compact_lowerdir(["upperdir=/u"]) == ("", ["upperdir=/u"])


def test_remove_volatile_and_readonly() -> None:
    ov = Mount("overlay", "overlay", ("lowerdir=/l2:/l1", "upperdir=/u", "workdir=/w", "volatile"))
    bind = Mount("bind", "/s", ("rbind", "rw"))
    assert remove_volatile([ov, bind]) == [
        Mount("overlay", "overlay", ("lowerdir=/l2:/l1", "upperdir=/u", "workdir=/w")), bind]
    assert remove_volatile([Mount("bind", "/s", ("volatile",))])[0].options == ("volatile",)
    assert readonly([ov, bind]) == [Mount("overlay", "overlay", ("lowerdir=/u:/l2:/l1", "volatile")),
                                    Mount("bind", "/s", ("rbind", "ro"))]


def test_root_path_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink("/etc", tmp_path / "a" / "abs")
    os.symlink("../../../..", tmp_path / "a" / "up")
    assert mnt._root_path(str(tmp_path), "a/abs/x") == str(tmp_path / "etc" / "x")
    assert mnt._root_path(str(tmp_path), "a/up/y") == str(tmp_path / "y")
    assert mnt._root_path(str(tmp_path), "../../z") == str(tmp_path / "z")
    assert mnt._root_path(str(tmp_path), "") == str(tmp_path)


def test_mount_points_unescape() -> None:
    assert unescape_mountinfo(r"/a\040b\011c\134d") == "/a b\tc\\d"
    assert "/proc" in mount_points()
    assert is_mountpoint("/proc") and is_mountpoint("/proc/../proc") and not is_mountpoint("/proc/1")


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def area(tmp_path: Path) -> Iterator[Path]:
    """A folder for mounts; the test fails if it leaves any mounted."""
    yield tmp_path
    left = mount_points(tmp_path)
    for point in sorted(left, key=len, reverse=True):
        os.system(f"umount -l '{point}'")
    assert not left, f"mounts left behind: {left}"


@root_only
async def test_bind_rw_and_ro(area: Path) -> None:
    src, dst = area / "src", area / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("hello")
    await mount_all([Mount("bind", str(src), ("rbind", "rw"))], dst)
    assert is_mountpoint(dst) and not os.path.ismount(dst), "bind mounts are seen (ismount misses them)"
    (dst / "g").write_text("through")
    await unmount(dst)
    assert not is_mountpoint(dst) and (src / "g").read_text() == "through"
    await mount_all([Mount("bind", str(src), ("rbind", "ro"))], dst)
    try:
        assert (dst / "f").read_text() == "hello"
        with pytest.raises(OSError) as e:
            (dst / "h").write_text("x")
        assert e.value.errno == errno.EROFS
    finally:
        await unmount(dst)
    await unmount(dst)  # not mounted any more: nothing to do
    await unmount(area / "missing")


@root_only
async def test_mount_error_names_the_mount(area: Path) -> None:
    with pytest.raises(OSError) as e:
        await mount_all([Mount("bind", str(area / "nope"), ("rbind",))], area)
    assert e.value.errno == errno.ENOENT and e.value.filename == str(area)
    assert "mount bind" in str(e.value) and "nope" in str(e.value)


@root_only
async def test_mount_all_is_all_or_nothing(area: Path) -> None:
    src, dst = area / "src", area / "dst"
    (src / "sub").mkdir(parents=True)
    dst.mkdir()
    mounts = [Mount("bind", str(src), ("rbind",)), Mount("bind", str(area / "absent"), ("bind",), "sub")]
    with pytest.raises(OSError):
        await mount_all(mounts, dst)
    assert mount_points(area) == []


@root_only
async def test_targets_and_recursive_unmount(area: Path) -> None:
    a, b, dst = area / "a", area / "b", area / "dst"
    (a / "inner").mkdir(parents=True)
    b.mkdir()
    (b / "marker").write_text("b")
    dst.mkdir()
    await mount_all([Mount("bind", str(a), ("rbind",)), Mount("bind", str(b), ("bind", "ro"), "inner")], dst)
    assert (dst / "inner" / "marker").read_text() == "b"
    assert mount_points(dst) == [str(dst), str(dst / "inner")]
    await unmount_all(dst)
    assert mount_points(area) == []


@root_only
async def test_stacked_mounts_all_unmounted(area: Path) -> None:
    src, dst = area / "src", area / "dst"
    src.mkdir()
    dst.mkdir()
    for _ in range(3):
        await mount_all([Mount("bind", str(src), ("bind",))], dst)
    assert len(mount_points(dst)) == 3
    await unmount(dst)
    assert mount_points(area) == []


@root_only
async def test_temp_mount(area: Path) -> None:
    src = area / "src"
    src.mkdir()
    async with temp_mount([Mount("bind", str(src), ("rbind", "rw"))], root=area) as d:
        assert is_mountpoint(d) and d.parent == area
        (d / "f").write_text("x")
    assert not d.exists() and (src / "f").read_text() == "x"

    with pytest.raises(RuntimeError, match="boom"):
        async with temp_mount([Mount("bind", str(src), ("rbind",))], root=area) as d:
            raise RuntimeError("boom")
    assert not d.exists()

    with pytest.raises(OSError):
        async with temp_mount([Mount("bind", str(area / "absent"), ("rbind",))], root=area):
            pytest.fail("not reached")
    assert sorted(os.listdir(area)) == ["src"]

    async with temp_mount([Mount("bind", str(src), ("rbind",))], root=area, read_only=True) as d:
        with pytest.raises(OSError):
            (d / "g").write_text("x")


@root_only
async def test_temp_mount_cancelled(area: Path) -> None:
    src = area / "src"
    src.mkdir()
    entered = asyncio.Event()
    folders: list[Path] = []

    async def body() -> None:
        async with temp_mount([Mount("bind", str(src), ("rbind",))], root=area) as d:
            folders.append(d)
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(body())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await task
    assert not folders[0].exists()

    # cancelled while mounting: nothing stays mounted
    for delay in (0, 0.001, 0.003):
        task = asyncio.create_task(body())
        await asyncio.sleep(delay)
        task.cancel()
        try:
            async with asyncio.timeout(10):  # a swallowed cancellation would sleep 60 s
                await task
        except asyncio.CancelledError:
            pass
        assert mount_points(area) == [] and sorted(os.listdir(area)) == ["src"]


async def test_complete_never_swallows_a_cancellation() -> None:
    """Work awaited to its end still lets the caller's cancellation through, even one
    that arrives as the work finishes."""
    for i in range(300):
        work = asyncio.ensure_future(asyncio.sleep(0, result=i))
        caller = asyncio.create_task(complete(work))
        for _ in range(i % 3):
            await asyncio.sleep(0)
        if caller.cancel():
            with pytest.raises(asyncio.CancelledError):
                await caller
            assert work.done() and not work.cancelled(), "the work itself ran to its end"
        else:
            assert await caller == i


def _overlay_dirs(base: Path, n: int) -> list[Path]:
    lowers = []
    for i in range(n):
        d = base / "snapshots" / str(i) / "fs"
        d.mkdir(parents=True)
        (d / f"file-{i}").write_text(str(i))
        (d / "top").write_text(str(i))
        lowers.append(d)
    return lowers


@root_only
async def test_overlay_long_lowerdir(area: Path) -> None:
    lowers = _overlay_dirs(area, 150)
    upper, work = area / "upper", area / "work"
    upper.mkdir()
    work.mkdir()
    options = ("lowerdir=" + ":".join(str(p) for p in reversed(lowers)), f"upperdir={upper}",
               f"workdir={work}", "index=off")
    assert sum(map(len, options)) > os.sysconf("SC_PAGE_SIZE"), "longer than one page"
    cwd = os.getcwd()
    async with temp_mount([Mount("overlay", "overlay", options)], root=area) as d:
        assert os.getcwd() == cwd, "the daemon never changes folder"
        assert len(os.listdir(d)) == 151 and (d / "top").read_text() == "149"
        (d / "new").write_text("up")
    assert (upper / "new").read_text() == "up"


@root_only
async def test_overlay_too_long_even_compacted(area: Path) -> None:
    lowers = [area / ("x" * 200 + str(i)) for i in range(30)]
    for p in lowers:
        p.mkdir()
    target = area / "t"
    target.mkdir()
    with pytest.raises(OSError) as e:
        await mount_all([Mount("overlay", "overlay", ("lowerdir=" + ":".join(map(str, lowers)),))], target)
    assert e.value.errno == errno.E2BIG


@root_only
async def test_temp_mount_drops_volatile(area: Path) -> None:
    lowers = _overlay_dirs(area, 2)
    upper, work = area / "upper", area / "work"
    upper.mkdir()
    work.mkdir()
    m = Mount("overlay", "overlay", (f"lowerdir={lowers[1]}:{lowers[0]}", f"upperdir={upper}",
                                     f"workdir={work}", "volatile"))
    for _ in range(2):  # a volatile overlay could not be mounted on the same upper/work again
        async with temp_mount([m], root=area) as d:
            assert (d / "top").read_text() == "1"
