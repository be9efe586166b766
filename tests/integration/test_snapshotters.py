"""The shared snapshotter suite, after containerd's ``core/snapshots/testsuite``.

Runs every test once per snapshotter of ``tests.support.snapshotters.SNAPSHOTTERS``.
Files are written and checked through real mounts (``temp_mount``), and each
snapshot is compared with a flat folder that had the same changes applied
(containerd's ``checkSnapshots``): type, mode (setuid and friends included),
owner, content, symlink target, device number, extended attributes, hard links.
A test that leaves anything mounted fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import os
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from aiocontainerd.mount import Mount
from aiocontainerd.mount.mounting import mount_points, temp_mount, unmount_all
from aiocontainerd.snapshots import Info, Kind, Snapshotter, Usage
from aiocontainerd.snapshots.storage import MetaStoreSnapshotter
from tests.support.snapshotters import SNAPSHOTTERS, SnapshotterCase

pytestmark = pytest.mark.integration

GC_ROOT = {"containerd.io/gc.root": "testsuite"}

# -- appliers: changes applied to a folder (containerd's fstest)

Applier = Callable[[Path], None]


def _p(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def create_file(path: str, content: bytes, mode: int) -> Applier:
    def apply(root: Path) -> None:
        p = _p(root, path)
        p.write_bytes(content)
        os.chmod(p, mode)
    return apply


def create_dir(path: str, mode: int) -> Applier:
    def apply(root: Path) -> None:
        p = _p(root, path)
        p.mkdir()
        os.chmod(p, mode)
    return apply


def remove_all(path: str) -> Applier:
    def apply(root: Path) -> None:
        p = _p(root, path)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    return apply


def chown(path: str, uid: int, gid: int) -> Applier:
    return lambda root: os.lchown(_p(root, path), uid, gid)


def chmod(path: str, mode: int) -> Applier:
    return lambda root: os.chmod(_p(root, path), mode)


def rename(old: str, new: str) -> Applier:
    return lambda root: os.rename(_p(root, old), _p(root, new))


def link(old: str, new: str) -> Applier:
    return lambda root: os.link(_p(root, old), _p(root, new))


def symlink(target: str, path: str) -> Applier:
    return lambda root: os.symlink(target, _p(root, path))


def set_xattr(path: str, name: str, value: bytes) -> Applier:
    return lambda root: os.setxattr(_p(root, path), name, value, follow_symlinks=False)


def mknod(path: str, mode: int, device: int = 0) -> Applier:
    return lambda root: os.mknod(_p(root, path), mode, device)


def apply(*appliers: Applier) -> Applier:
    def run(root: Path) -> None:
        for a in appliers:
            a(root)
    return run


# -- comparing trees


def manifest(root: Path) -> dict[str, Any]:
    """Everything the suite compares, per path below ``root`` (the root itself excluded)."""
    entries: dict[str, dict[str, Any]] = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in itertools.chain(dirnames, filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            fmt = stat.S_IFMT(st.st_mode)
            entry: dict[str, Any] = {"type": fmt, "uid": st.st_uid, "gid": st.st_gid}
            if fmt != stat.S_IFLNK:
                entry["mode"] = oct(stat.S_IMODE(st.st_mode))
            if fmt == stat.S_IFREG:
                entry["sha256"] = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
            elif fmt == stat.S_IFLNK:
                entry["target"] = os.readlink(full)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            entry["xattrs"] = {x: os.getxattr(full, x, follow_symlinks=False)
                               for x in sorted(os.listxattr(full, follow_symlinks=False))}
            entries[rel] = entry
    for paths in inodes.values():
        for rel in paths:
            entries[rel]["links"] = sorted(paths)
    return entries


def assert_same_tree(expected: Path, actual: Path) -> None:
    want, got = manifest(expected), manifest(actual)
    if want == got:
        return
    lines = []
    for path in sorted(set(want) | set(got)):
        if want.get(path) != got.get(path):
            lines.append(f"  {path}: expected {want.get(path)}, got {got.get(path)}")
    raise AssertionError(f"{actual} differs from {expected}:\n" + "\n".join(lines))


# -- the per-test environment


@dataclasses.dataclass
class Env:
    """A snapshotter on a fresh root, a work folder, and the suite's helpers."""

    case: SnapshotterCase
    sn: Snapshotter
    root: Path
    work: Path
    counter: itertools.count = dataclasses.field(default_factory=itertools.count)

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{next(self.counter)}"

    async def apply_to(self, mounts: list[Mount], applier: Applier) -> None:
        async with temp_mount(mounts, root=self.work) as d:
            await asyncio.to_thread(applier, d)

    async def create_snapshot(self, parent: str, applier: Applier) -> str:
        """containerd's createSnapshot: prepare on parent, apply, commit; returns the name."""
        name = self.unique("snapshot")
        mounts = await self.sn.prepare(f"{name}-prepare", parent, GC_ROOT)
        await self.apply_to(mounts, applier)
        await self.sn.commit(name, f"{name}-prepare", GC_ROOT)
        return name

    async def check_snapshot(self, name: str, expected: Path) -> None:
        """Mount a view of ``name`` and compare it with the flat folder ``expected``."""
        view = f"{name}-view"
        mounts = await self.sn.view(view, name, GC_ROOT)
        try:
            async with temp_mount(mounts, root=self.work) as d:
                await asyncio.to_thread(assert_same_tree, expected, d)
        finally:
            await self.sn.remove(view)

    async def check_snapshots(self, *appliers: Applier) -> list[str]:
        """containerd's checkSnapshots: a chain, one snapshot per applier, each checked
        against a flat folder with every change so far applied."""
        flat = Path(tempfile.mkdtemp(prefix="flat-", dir=self.work))
        parent, names = "", []
        for applier in appliers:
            parent = await self.create_snapshot(parent, applier)
            names.append(parent)
            await asyncio.to_thread(applier, flat)
            await self.check_snapshot(parent, flat)
        return names

    async def reopen(self) -> None:
        await self.sn.close()
        self.sn = await self.case.factory(self.root)


@pytest.fixture(params=SNAPSHOTTERS, ids=str)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    case: SnapshotterCase = request.param
    reason = case.unavailable()
    if reason:
        pytest.skip(f"{case.name}: {reason}")
    base = Path(tempfile.mkdtemp(prefix=f"snapshot-suite-{case.name}-"))
    root, work = base / "root", base / "work"
    root.mkdir()
    work.mkdir()
    e = Env(case, await case.factory(root), root, work)
    try:
        yield e
    finally:
        await e.sn.close()
        left = mount_points(base)
        if left:
            await unmount_all(base, lazy=True)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"the test left mounts behind: {left}"


# -- containerd's testsuite.go


async def test_basic(env: Env) -> None:
    sn = env.sn
    initial = apply(create_file("/foo", b"foo\n", 0o777), create_dir("/a", 0o755),
                    create_dir("/a/b", 0o755), create_dir("/a/b/c", 0o755))
    diff = apply(create_file("/bar", b"bar\n", 0o777), create_file("/foo", b"bar\n", 0o777),
                 remove_all("/a/b"))

    mounts = await sn.prepare("preparing", "", GC_ROOT)
    assert mounts
    await env.apply_to(mounts, initial)
    await sn.commit("committed", "preparing", GC_ROOT)
    si = await sn.stat("committed")
    assert (si.parent, si.kind) == ("", Kind.COMMITTED)
    with pytest.raises(NotFound):
        await sn.stat("preparing")

    mounts = await sn.prepare("nextlayer", "committed", GC_ROOT)
    flat = Path(tempfile.mkdtemp(dir=env.work))
    initial(flat)
    async with temp_mount(mounts, root=env.work) as d:
        assert_same_tree(flat, d)
        diff(d)
    ni = await sn.stat("nextlayer")
    assert (ni.parent, ni.kind) == ("committed", Kind.ACTIVE)
    await sn.commit("committed-next", "nextlayer", GC_ROOT)
    si2 = await sn.stat("committed-next")
    assert (si2.parent, si2.kind) == ("committed", Kind.COMMITTED)
    with pytest.raises(NotFound):
        await sn.stat("nextlayer")

    walked = {i.name: i for i in await sn.walk()}
    assert walked == {"committed": si, "committed-next": si2}

    mounts = await sn.view("nextnextlayer", "committed-next", GC_ROOT)
    diff(flat)
    async with temp_mount(mounts, root=env.work) as d:
        assert_same_tree(flat, d)
    await sn.remove("nextnextlayer")

    with pytest.raises(FailedPrecondition, match="remove"):
        await sn.remove("committed")
    await sn.remove("committed-next")
    await sn.remove("committed")
    assert await sn.walk() == []


async def test_stat_active(env: Env) -> None:
    mounts = await env.sn.prepare("preparing", "", GC_ROOT)
    await env.apply_to(mounts, create_file("/foo", b"foo\n", 0o777))
    si = await env.sn.stat("preparing")
    assert (si.name, si.kind, si.parent, si.labels) == ("preparing", Kind.ACTIVE, "", GC_ROOT)


async def test_stat_committed(env: Env) -> None:
    mounts = await env.sn.prepare("preparing", "", GC_ROOT)
    await env.apply_to(mounts, create_file("/foo", b"foo\n", 0o777))
    await env.sn.commit("committed", "preparing", GC_ROOT)
    si = await env.sn.stat("committed")
    assert (si.name, si.kind, si.parent) == ("committed", Kind.COMMITTED, "")


async def test_transitivity(env: Env) -> None:
    sn = env.sn
    await env.apply_to(await sn.prepare("preparing", "", GC_ROOT), create_file("/foo", b"foo\n", 0o777))
    await sn.commit("snapA", "preparing", GC_ROOT)
    await env.apply_to(await sn.prepare("next", "snapA", GC_ROOT), create_file("/foo", b"foo bar\n", 0o777))
    await sn.commit("snapB", "next", GC_ROOT)
    a, b = await sn.stat("snapA"), await sn.stat("snapB")
    assert (a.parent, b.parent, (await sn.stat(b.parent)).parent) == ("", "snapA", "")


async def test_prepare_view_same_key(env: Env) -> None:
    sn = env.sn
    await sn.prepare("preparing", "", GC_ROOT)
    await sn.commit("snapA", "preparing", GC_ROOT)
    await sn.prepare("newlayer", "snapA", GC_ROOT)
    with pytest.raises(AlreadyExists):
        await sn.view("newlayer", "snapA", GC_ROOT)
    await sn.prepare("prepLayer", "snapA", GC_ROOT)
    with pytest.raises(AlreadyExists):
        await sn.prepare("prepLayer", "snapA", GC_ROOT)
    await sn.view("viewLayer", "snapA", GC_ROOT)
    with pytest.raises(AlreadyExists):
        await sn.view("viewLayer", "snapA", GC_ROOT)
    with pytest.raises(AlreadyExists):
        await sn.prepare("snapA", "", GC_ROOT)


async def base_snapshots(sn: Snapshotter) -> None:
    """c1 <- c2 committed; a1 on c2, a2 alone; v1 on c2, v2 alone."""
    await sn.prepare("c1-a", "", GC_ROOT)
    await sn.commit("c1", "c1-a", GC_ROOT)
    await sn.prepare("c2-a", "c1", GC_ROOT)
    await sn.commit("c2", "c2-a", GC_ROOT)
    await sn.prepare("a1", "c2", GC_ROOT)
    await sn.prepare("a2", "", GC_ROOT)
    await sn.view("v1", "c2", GC_ROOT)
    await sn.view("v2", "", GC_ROOT)


BASE = [("c1", Kind.COMMITTED, ""), ("c2", Kind.COMMITTED, "c1"), ("a1", Kind.ACTIVE, "c2"),
        ("a2", Kind.ACTIVE, ""), ("v1", Kind.VIEW, "c2"), ("v2", Kind.VIEW, "")]


def plain(labels: dict[str, str]) -> dict[str, str]:
    """Labels without those a snapshotter adds on its own (overlay's upperdir label)."""
    return {k: v for k, v in labels.items() if k != "containerd.io/snapshot/overlay.upperdir"}


async def test_update(env: Env) -> None:
    sn = env.sn
    t1 = time.time_ns()
    await base_snapshots(sn)
    t2 = time.time_ns()
    for name, kind, parent in BASE:
        st = await sn.stat(name)
        assert t1 <= st.created_at <= t2 and st.created_at == st.updated_at
        assert (st.kind, st.parent, st.name) == (kind, parent, name)
        created = st.created_at

        expected = {"l1": "v1", "l2": "v2", "l3": "v3", "containerd.io/gc.root": "now"}
        st = dataclasses.replace(st, parent="doesnotexist", labels=dict(expected))
        u1 = time.time_ns()
        st = await sn.update(st)
        u2 = time.time_ns()
        assert st.created_at == created and u1 <= st.updated_at <= u2
        assert (st.kind, st.parent, st.name, plain(st.labels)) == (kind, parent, name, expected)

        st.labels = {"l1": "updated", "l4": "v4"}
        st = await sn.update(st, ["labels.l1", "labels.l2"])
        assert plain(st.labels) == {"l1": "updated", "l3": "v3", "containerd.io/gc.root": "now"}

        st.labels = {"l4": "v4", "containerd.io/gc.root": "now"}
        st = await sn.update(st, ["labels"])
        assert plain(st.labels) == {"l4": "v4", "containerd.io/gc.root": "now"}
        assert plain((await sn.stat(name)).labels) == plain(st.labels)

        st.parent = "doesnotexist"
        with pytest.raises(InvalidArgument):
            await sn.update(st, ["parent"])
    with pytest.raises(NotFound):
        await sn.update(Info(Kind.ACTIVE, "missing"))


async def test_remove_and_reuse_keys(env: Env) -> None:
    sn = env.sn
    await sn.prepare("committed-a", "", GC_ROOT)
    await sn.commit("committed-1", "committed-a", GC_ROOT)
    await sn.prepare("reuse-1", "committed-1", GC_ROOT)
    await sn.remove("reuse-1")
    await sn.view("reuse-1", "committed-1", GC_ROOT)
    await sn.remove("reuse-1")
    await sn.prepare("reuse-1", "", GC_ROOT)
    await sn.remove("committed-1")
    await sn.commit("committed-1", "reuse-1", GC_ROOT)
    assert [i.name for i in await sn.walk()] == ["committed-1"]


async def test_walk(env: Env) -> None:
    sn = env.sn
    walk_root = {"containerd.io/gc.root": "check-walk"}
    await sn.prepare("a-np", "", walk_root)
    await sn.prepare("p-tmp", "", walk_root)
    await sn.commit("p", "p-tmp", walk_root)
    await sn.prepare("a", "p", walk_root)
    await sn.view("v", "p", walk_root)
    await sn.prepare("p-wl-tmp", "", walk_root)
    await sn.commit("p-wl", "p-wl-tmp", {"l": "1", **walk_root})
    await sn.prepare("a-wl", "p-wl", {"l": "2", **walk_root})
    await sn.view("v-wl", "p-wl", {"l": "3", **walk_root})
    await sn.prepare("a-np-wl", "", {"l": "2", **walk_root})
    cases = [
        (["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
         ['labels."containerd.io/gc.root"==check-walk']),
        (["a-np", "a", "a-wl", "a-np-wl"], ['kind==active,labels."containerd.io/gc.root"==check-walk']),
        (["v", "v-wl"], ['kind==view,labels."containerd.io/gc.root"==check-walk']),
        (["p", "p-wl"], ['kind==committed,labels."containerd.io/gc.root"==check-walk']),
        (["p", "a-np-wl"], ["name==p", "name==a-np-wl"]),
        (["a-wl"], ["name==a-wl,labels.l"]),
        (["a", "v"], ["parent==p"]),
        (["a", "v", "a-wl", "v-wl"], ['parent!="",labels."containerd.io/gc.root"==check-walk']),
        (["p-wl", "a-wl", "v-wl", "a-np-wl"], ["labels.l"]),
        (["a-wl", "a-np-wl"], ["labels.l==2"]),
        (["a-np", "a-np-wl"], ["name~=^a-np"]),
    ]
    for matches, filters in cases:
        assert sorted(i.name for i in await sn.walk(filters)) == sorted(matches), filters
    with pytest.raises(InvalidArgument):
        await sn.walk(["name=="])


async def test_stat_in_walk(env: Env) -> None:
    sn = env.sn
    await sn.prepare("stats-in-walk-c1-a", "", GC_ROOT)
    await sn.commit("stats-in-walk-c1", "stats-in-walk-c1-a", GC_ROOT)
    await sn.prepare("stats-in-walk-c2-a", "stats-in-walk-c1", GC_ROOT)
    await sn.commit("stats-in-walk-c2", "stats-in-walk-c2-a", GC_ROOT)
    await sn.prepare("stats-in-walk-a1", "stats-in-walk-c2", GC_ROOT)
    await sn.view("stats-in-walk-v1", "stats-in-walk-c2", GC_ROOT)
    infos = await sn.walk()
    assert len(infos) == 4
    for info in infos:
        assert await sn.stat(info.name) == info


async def test_remove_intermediate_snapshot(env: Env) -> None:
    sn = env.sn
    await env.apply_to(await sn.prepare("base", "", GC_ROOT), create_file("/f", b"f", 0o644))
    await sn.commit("committed-base", "base", GC_ROOT)
    await sn.prepare("intermediate", "committed-base", GC_ROOT)
    await sn.commit("committed-inter", "intermediate", GC_ROOT)
    await sn.prepare("toplayer", "committed-inter", GC_ROOT)
    with pytest.raises(FailedPrecondition):
        await sn.remove("committed-inter")
    with pytest.raises(FailedPrecondition):
        await sn.remove("committed-base")
    await sn.remove("toplayer")
    await sn.remove("committed-inter")
    await sn.remove("committed-base")
    assert await sn.walk() == []


async def test_view_readonly(env: Env) -> None:
    sn = env.sn
    await env.apply_to(await sn.prepare("preparing", "", GC_ROOT), create_file("/f", b"f", 0o644))
    await sn.commit("committed", "preparing", GC_ROOT)
    for key, parent in (("view", "committed"), ("empty-view", "")):
        mounts = await sn.view(key, parent, GC_ROOT)
        async with temp_mount(mounts, root=env.work) as d:
            with pytest.raises(OSError):
                (d / "testfile").write_text("testcontent")
        await sn.remove(key)
    await sn.remove("committed")


async def test_view_of_a_deep_chain_is_readonly(env: Env) -> None:
    parent = ""
    for i in range(3):
        parent = await env.create_snapshot(parent, create_file(f"/f{i}", b"x", 0o644))
    mounts = await env.sn.view("view", parent, GC_ROOT)
    async with temp_mount(mounts, root=env.work) as d:
        assert sorted(os.listdir(d)) == ["f0", "f1", "f2"]
        with pytest.raises(OSError):
            (d / "testfile").write_text("testcontent")


async def test_close_twice(env: Env) -> None:
    await env.sn.prepare("closeTwice-prepare", "", GC_ROOT)
    await env.sn.commit("closeTwice", "closeTwice-prepare", GC_ROOT)
    await env.sn.remove("closeTwice")
    await env.sn.close()
    await env.sn.close()


async def test_root_permission(env: Env) -> None:
    mounts = await env.sn.prepare("preparing", "", GC_ROOT)
    async with temp_mount(mounts, root=env.work) as d:
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o755


async def test_root_permission_whatever_the_umask(env: Env) -> None:
    """The daemon's umask (0077 under some service managers) does not leak into snapshots."""
    old = os.umask(0o077)
    try:
        mounts = await env.sn.prepare("preparing", "", GC_ROOT)
        view = await env.sn.view("view", "", GC_ROOT)
    finally:
        os.umask(old)
    for m in (mounts, view):
        async with temp_mount(m, root=env.work) as d:
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o755


async def test_128_layers_mount(env: Env) -> None:
    sn = env.sn
    appliers = [apply(create_file("/bottom", b"way at the bottom\n", 0o777),
                      create_file("/overwriteme", b"FIRST!\n", 0o777),
                      create_dir("/addhere", 0o755), create_dir("/onlyme", 0o755),
                      create_file("/onlyme/bottom", b"bye!\n", 0o777))]
    for i in range(1, 128):
        appliers.append(apply(create_file("/overwriteme", f"{i} WAS HERE!\n".encode(), 0o777),
                              create_file(f"/addhere/file-{i}", b"same\n", 0o755),
                              remove_all("/onlyme"), create_dir("/onlyme", 0o755),
                              create_file(f"/onlyme/file-{i}", b"only me!\n", 0o777)))
    flat = Path(tempfile.mkdtemp(prefix="flat-", dir=env.work))
    parent = ""
    for i, applier in enumerate(appliers):
        mounts = await sn.prepare(f"prepare-layer-{i}", parent, GC_ROOT)
        async with temp_mount(mounts, root=env.work) as d:
            await asyncio.to_thread(assert_same_tree, flat, d)
            applier(flat)
            applier(d)
            await asyncio.to_thread(assert_same_tree, flat, d)
        parent = f"committed-{i}"
        await sn.commit(parent, f"prepare-layer-{i}", GC_ROOT)
    mounts = await sn.view("fullview", parent, GC_ROOT)
    async with temp_mount(mounts, root=env.work) as d:
        await asyncio.to_thread(assert_same_tree, flat, d)
        assert (d / "overwriteme").read_text() == "127 WAS HERE!\n"
        assert os.listdir(d / "onlyme") == ["file-127"]
    # an active snapshot on the whole chain mounts too (its options are longest)
    mounts = await sn.prepare("top", parent, GC_ROOT)
    async with temp_mount(mounts, root=env.work) as d:
        (d / "bottom").write_text("changed")
    assert (await sn.usage("top")).inodes >= 1


# -- containerd's issues.go


async def test_layer_file_update(env: Env) -> None:
    """docker/docker#21555: updating one file in an upper layer."""
    l1 = apply(create_dir("/etc", 0o700), create_file("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
               create_file("/etc/profile", b"PATH=/usr/bin", 0o644))
    l2 = apply(create_file("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
               create_file("/etc/profile", b"PATH=/usr/bin", 0o666),
               create_dir("/root", 0o700), create_file("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644))
    for _ in range(2):
        await env.check_snapshots(l1, l2)


async def test_remove_directory_in_lower_layer(env: Env) -> None:
    """docker/docker#25244: a directory removed and re-created above (an opaque directory)."""
    await env.check_snapshots(
        apply(create_dir("/lib", 0o700), create_file("/lib/hidden", b"", 0o644)),
        apply(remove_all("/lib"), create_dir("/lib", 0o700), create_file("/lib/not-hidden", b"", 0o644)),
        apply(create_file("/lib/newfile", b"", 0o644)))


async def test_chown(env: Env) -> None:
    """docker/docker#20240, #24913, #28391: chown of files and directories of a lower layer."""
    await env.check_snapshots(
        apply(create_dir("/opt", 0o700), create_dir("/opt/a", 0o700), create_dir("/opt/a/b", 0o700),
              create_file("/opt/a/b/file.txt", b"hello", 0o644)),
        apply(chown("/opt", 1, 1), chown("/opt/a", 1, 1), chown("/opt/a/b", 1, 1),
              chown("/opt/a/b/file.txt", 1, 1)))


async def test_rename(env: Env) -> None:
    """docker/docker#25409: renames over and of files (and directories) of a lower layer."""
    l1 = apply(create_dir("/dir1", 0o700), create_dir("/somefiles", 0o700),
               create_file("/somefiles/f1", b"was here first!", 0o644),
               create_file("/somefiles/f2", b"nothing interesting", 0o644))
    changes = [] if not env.case.renames_lower_dirs else [rename("/dir1", "/dir2")]
    changes += [create_file("/somefiles/f1-overwrite", b"new content 1", 0o644),
                rename("/somefiles/f1-overwrite", "/somefiles/f1"), rename("/somefiles/f2", "/somefiles/f3")]
    await env.check_snapshots(l1, apply(*changes))


async def test_directory_permission_on_commit(env: Env) -> None:
    """docker/docker#27298: directory owners through removals and re-creations."""
    await env.check_snapshots(
        apply(create_dir("/dir1", 0o700), create_dir("/dir2", 0o700), create_dir("/dir3", 0o700),
              create_dir("/dir4", 0o700), create_file("/dir4/f1", b"...", 0o644),
              create_dir("/dir5", 0o700), create_file("/dir5/f1", b"...", 0o644),
              chown("/dir1", 1, 1), chown("/dir2", 1, 1), chown("/dir3", 1, 1),
              chown("/dir5", 1, 1), chown("/dir5/f1", 1, 1)),
        apply(chown("/dir2", 0, 0), remove_all("/dir3"), chown("/dir4", 1, 1), chown("/dir4/f1", 1, 1)),
        apply(create_dir("/dir3", 0o700), chown("/dir3", 1, 1), remove_all("/dir5"),
              create_dir("/dir5", 0o700), chown("/dir5", 1, 1)))


async def test_deleted_files_in_child_snapshot(env: Env) -> None:
    await env.check_snapshots(
        apply(create_file("/foo", b"foo\n", 0o777), create_file("/foobar", b"foobar\n", 0o777)),
        apply(remove_all("/foobar")),
        apply())


async def test_move_file_from_lower_layer(env: Env) -> None:
    await env.check_snapshots(
        apply(create_dir("/dir1", 0o700), create_file("/dir1/f1", b"Hello", 0o644),
              create_dir("/dir2", 0o700), create_file("/dir2/f2", b"...", 0o644)),
        apply(create_dir("/dir3", 0o700), create_file("/dir3/f1", b"Hello", 0o644), remove_all("/dir1"),
              link("/dir2/f2", "/dir3/f2"), remove_all("/dir2/f2")))


async def test_chmod(env: Env) -> None:
    """docker/machine#3327 (issues.go's to-do list): modes changed above, setuid included."""
    await env.check_snapshots(
        apply(create_dir("/bin", 0o755), create_file("/bin/tool", b"#!/bin/sh\n", 0o755),
              create_file("/bin/other", b"x", 0o644), create_dir("/tmp", 0o777)),
        apply(chmod("/bin/tool", 0o4755), chmod("/bin/other", 0o2711), chmod("/tmp", 0o1777),
              chmod("/bin", 0o700)))


# -- beyond containerd's suite: ownership and special files through layers, the contract's errors


async def test_ownership_and_special_files(env: Env) -> None:
    """Owners (uid/gid 1000), setuid/setgid/sticky modes, symlinks, hard links, fifos,
    device nodes and extended attributes survive every layer above the one that made them."""
    await env.check_snapshots(
        apply(create_dir("/home", 0o755), create_dir("/home/user", 0o750), chown("/home/user", 1000, 1000),
              create_file("/home/user/.profile", b"export A=1\n", 0o640),
              chown("/home/user/.profile", 1000, 1000),
              create_dir("/usr", 0o755), create_dir("/usr/bin", 0o755),
              create_file("/usr/bin/passwd", b"\x7fELF", 0o4755),
              create_file("/usr/bin/wall", b"\x7fELF", 0o2755), chown("/usr/bin/wall", 0, 5),
              create_dir("/tmp", 0o1777),
              symlink("../usr/bin/passwd", "/home/user/passwd-link"),
              chown("/home/user/passwd-link", 1000, 1000),
              link("/usr/bin/passwd", "/usr/bin/passwd-hardlink"),
              mknod("/fifo", stat.S_IFIFO | 0o600), create_dir("/dev", 0o755),
              mknod("/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
              set_xattr("/usr/bin/passwd", "user.origin", b"layer-1"),
              set_xattr("/home/user", "user.quota", b"10G")),
        apply(create_file("/home/user/new", b"new", 0o600), chown("/home/user/new", 1000, 1000)),
        apply(chown("/usr/bin/wall", 1000, 1000), chmod("/usr/bin/wall", 0o2755),
              set_xattr("/home/user/.profile", "user.changed", b"yes")))


async def test_errors(env: Env) -> None:
    sn = env.sn
    with pytest.raises(NotFound):
        await sn.view("v", "missing-parent")
    with pytest.raises(NotFound):
        await sn.prepare("a", "missing-parent")
    await sn.prepare("active", "")
    with pytest.raises(InvalidArgument):
        await sn.prepare("child", "active")
    with pytest.raises(InvalidArgument):
        await sn.view("child", "active")
    await sn.view("view", "")
    with pytest.raises(FailedPrecondition):
        await sn.commit("from-view", "view")
    await sn.prepare("tmp", "")
    await sn.commit("committed", "tmp")
    with pytest.raises(FailedPrecondition):
        await sn.commit("again", "committed")
    with pytest.raises(FailedPrecondition):
        await sn.mounts("committed")
    with pytest.raises(AlreadyExists):
        await sn.commit("committed", "active")
    with pytest.raises(NotFound):
        await sn.commit("new", "missing")
    for call in (sn.stat("missing"), sn.usage("missing"), sn.mounts("missing"), sn.remove("missing"),
                 sn.update(Info(Kind.ACTIVE, "missing"))):
        with pytest.raises(NotFound):
            await call
    # nothing above changed what exists
    assert sorted((i.name, i.kind) for i in await sn.walk()) == [
        ("active", Kind.ACTIVE), ("committed", Kind.COMMITTED), ("view", Kind.VIEW)]


async def test_mounts_again(env: Env) -> None:
    """``mounts`` gives back what prepare/view gave, for actives and views."""
    sn = env.sn
    await sn.prepare("tmp", "")
    await sn.commit("base", "tmp")
    for key, make in (("a", sn.prepare), ("v", sn.view)):
        mounts = await make(key, "base")
        assert await sn.mounts(key) == mounts
    a = await sn.prepare("a2", "")
    assert await sn.mounts("a2") == a


async def test_labels_inherited_on_commit(env: Env) -> None:
    """Labels under containerd.io/snapshot/ (and snapshot.ref) pass from the active snapshot
    to the committed one; the commit's own labels are merged over them; others stay behind."""
    sn = env.sn
    await sn.prepare("extract", "", {"containerd.io/snapshot/diff-id": "sha256:1",
                                     "containerd.io/snapshot.ref": "sha256:chain",
                                     "containerd.io/snapshot/x": "from-prepare", "other": "active-only"})
    assert plain((await sn.stat("extract")).labels)["other"] == "active-only"
    await sn.commit("layer", "extract", {"containerd.io/snapshot/x": "from-commit", "l": "1"})
    assert plain((await sn.stat("layer")).labels) == {
        "containerd.io/snapshot/diff-id": "sha256:1", "containerd.io/snapshot.ref": "sha256:chain",
        "containerd.io/snapshot/x": "from-commit", "l": "1"}


async def test_usage(env: Env) -> None:
    sn = env.sn
    mounts = await sn.prepare("a", "", GC_ROOT)
    empty = await sn.usage("a")
    await env.apply_to(mounts, apply(create_file("/big", b"x" * 1_000_000, 0o644),
                                     create_file("/small", b"y", 0o644), link("/big", "/big-link")))
    usage = await sn.usage("a")
    assert usage.size - empty.size >= 1_000_000 and usage.inodes - empty.inodes == 2
    await sn.commit("c", "a", GC_ROOT)
    assert await sn.usage("c") == usage
    mounts = await sn.prepare("b", "c", GC_ROOT)
    base = await sn.usage("b")
    if not env.case.copies_parents:
        assert base.size < 1_000_000, "an active snapshot's usage leaves out its parents"
    await env.apply_to(mounts, create_file("/third", b"z" * 100_000, 0o644))
    grown = await sn.usage("b")
    assert grown.size - base.size >= 100_000 and grown.inodes == base.inodes + 1
    await sn.commit("c2", "b", GC_ROOT)
    assert await sn.usage("c2") == grown
    await sn.view("v", "c2")
    assert await sn.usage("v") == Usage()


async def test_reopen(env: Env) -> None:
    """Records and trees survive closing and opening the snapshotter again."""
    names = await env.check_snapshots(apply(create_file("/a", b"a", 0o644)),
                                      apply(create_file("/b", b"b", 0o600)))
    mounts = await env.sn.prepare("active", names[-1], GC_ROOT)
    before = {i.name: i for i in await env.sn.walk()}
    await env.reopen()
    assert {i.name: i for i in await env.sn.walk()} == before
    assert await env.sn.mounts("active") == mounts
    async with temp_mount(mounts, root=env.work) as d:
        assert sorted(os.listdir(d)) == ["a", "b"]
    await env.sn.prepare("after", names[-1])
    assert (await env.sn.stat("after")).parent == names[-1]


async def test_concurrent_prepares(env: Env) -> None:
    sn = env.sn
    base = await env.create_snapshot("", create_file("/f", b"base", 0o644))
    results = await asyncio.gather(*(sn.prepare(f"c{i}", base if i % 2 else "", GC_ROOT) for i in range(16)))
    assert len({tuple(m) for m in results}) == 16
    await asyncio.gather(*(env.apply_to(m, create_file(f"/mine-{i}", b"x", 0o644))
                           for i, m in enumerate(results)))
    await asyncio.gather(*(sn.commit(f"done-{i}", f"c{i}", GC_ROOT) for i in range(16)))
    assert len(await sn.walk(["kind==committed"])) == 17


async def test_cancelled_prepare_leaves_nothing(env: Env) -> None:
    sn = env.sn
    base = await env.create_snapshot("", apply(*(create_file(f"/f{i}", b"x" * 1000, 0o644)
                                                 for i in range(200))))
    for delay in (0, 0.001, 0.005, 0.02):
        task = asyncio.create_task(sn.prepare(f"cancelled-{delay}", base))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
            await sn.remove(f"cancelled-{delay}")  # finished before the cancel
        except asyncio.CancelledError:
            try:
                await sn.remove(f"cancelled-{delay}")  # the record may exist: then it is whole
            except NotFound:
                pass
    assert [i.name for i in await sn.walk()] == [base]
    if isinstance(sn, MetaStoreSnapshotter):
        await sn.cleanup()
        assert set(os.listdir(sn.snapshots_dir)) <= sn.ms.ids() == {sn.ms.get_info(base)[0]}


async def test_cleanup(env: Env) -> None:
    """Storage of removed snapshots and of interrupted creations goes at cleanup; live ones stay."""
    sn = env.sn
    if not isinstance(sn, MetaStoreSnapshotter):
        pytest.skip("storage layout is backend-specific")
    keep = await env.create_snapshot("", create_file("/keep", b"k", 0o644))
    gone = await env.create_snapshot(keep, create_file("/gone", b"g", 0o644))
    active = await sn.prepare("active", keep)
    await sn.remove(gone)
    (sn.snapshots_dir / "new-crashed").mkdir()
    (sn.snapshots_dir / "99999" / "fs").mkdir(parents=True)
    live = sn.ms.ids()
    await sn.cleanup()
    assert sn.ms.ids() == live
    left = set(os.listdir(sn.snapshots_dir))
    assert left <= live, f"cleanup left {left - live}"
    await env.check_snapshot(keep, _flat_with(env, create_file("/keep", b"k", 0o644)))
    await env.apply_to(active, create_file("/still-writable", b"", 0o644))


def _flat_with(env: Env, applier: Applier) -> Path:
    flat = Path(tempfile.mkdtemp(prefix="flat-", dir=env.work))
    applier(flat)
    return flat


async def test_root_owner_and_mode_carry_to_children(env: Env) -> None:
    """A layer that changes the root folder's owner or mode keeps it for the layers above."""
    base = await env.create_snapshot("", apply(chown("/", 1000, 1000), chmod("/", 0o750)))
    child = await env.create_snapshot(base, create_file("/f", b"", 0o644))
    for name in (base, child):
        mounts = await env.sn.view(f"{name}-root-view", name)
        async with temp_mount(mounts, root=env.work) as d:
            st = os.stat(d)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o750), name
    mounts = await env.sn.prepare("top", child)
    async with temp_mount(mounts, root=env.work) as d:
        st = os.stat(d)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o750)


# -- overlayfs specifics


def _overlay_case() -> SnapshotterCase:
    case = next((c for c in SNAPSHOTTERS if c.name == "overlayfs"), None)
    if case is None:
        pytest.skip("overlayfs is not in the registry")
    reason = case.unavailable()
    if reason:
        pytest.skip(reason)
    return case


@pytest.fixture
async def overlay_root() -> AsyncIterator[Path]:
    _overlay_case()
    base = Path(tempfile.mkdtemp(prefix="overlay-specific-"))
    try:
        yield base
    finally:
        left = mount_points(base)
        if left:
            await unmount_all(base, lazy=True)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"the test left mounts behind: {left}"


async def test_overlay_mount_shapes(overlay_root: Path) -> None:
    from aiocontainerd.snapshotters.overlay import OverlaySnapshotter, supports_index

    sn = await OverlaySnapshotter.open(overlay_root / "root", mount_options=["metacopy=off"])
    try:
        up = lambda sid: str(overlay_root / "root" / "snapshots" / sid / "fs")  # noqa: E731
        extra = ("metacopy=off", "index=off") if supports_index() else ("metacopy=off",)
        assert await sn.prepare("a", "") == [Mount("bind", up("1"), ("rw", "rbind"))]
        assert await sn.view("v0", "") == [Mount("bind", up("2"), ("ro", "rbind"))]
        await sn.commit("c1", "a")
        assert await sn.view("v1", "c1") == [Mount("bind", up("1"), ("ro", "rbind"))]
        assert await sn.prepare("a2", "c1") == [Mount("overlay", "overlay", (
            f"workdir={overlay_root}/root/snapshots/4/work", f"upperdir={up('4')}",
            f"lowerdir={up('1')}", *extra))]
        await sn.commit("c2", "a2")
        assert await sn.view("v2", "c2") == [Mount("overlay", "overlay", (
            f"lowerdir={up('4')}:{up('1')}", *extra))]
        assert not (overlay_root / "root" / "snapshots" / "5" / "work").exists(), "views have no workdir"
    finally:
        await sn.close()


def test_overlay_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from aiocontainerd.snapshotters import overlay

    monkeypatch.setattr(overlay, "supports_index", lambda: True)
    monkeypatch.setattr(overlay, "running_in_userns", lambda: False)
    assert overlay.overlay_options(tmp_path, []) == ["index=off"]
    assert overlay.overlay_options(tmp_path, ["index=on"]) == ["index=on"], "a configured index wins"
    monkeypatch.setattr(overlay, "supports_index", lambda: False)
    assert overlay.overlay_options(tmp_path, ["volatile"]) == ["volatile"]
    # in a user namespace: userxattr on Linux >= 5.11, never on tmpfs, never twice
    monkeypatch.setattr(overlay, "running_in_userns", lambda: True)
    monkeypatch.setattr(overlay, "_kernel_at_least", lambda major, minor: True)
    monkeypatch.setattr(overlay, "filesystem_type", lambda path: "ext4")
    assert overlay.overlay_options(tmp_path, []) == ["userxattr"]
    assert overlay.overlay_options(tmp_path, ["userxattr"]) == ["userxattr"]
    monkeypatch.setattr(overlay, "filesystem_type", lambda path: "tmpfs")
    assert overlay.overlay_options(tmp_path, []) == []
    # older kernels: decided by a test mount with userxattr
    monkeypatch.setattr(overlay, "filesystem_type", lambda path: "ext4")
    monkeypatch.setattr(overlay, "_kernel_at_least", lambda major, minor: False)
    tried: list[list[str]] = []
    monkeypatch.setattr(overlay, "_try_mount", lambda base, options: tried.append(list(options)))
    assert overlay.overlay_options(tmp_path, []) == ["userxattr"] and tried == [["userxattr"]]


async def test_overlay_remove_async_and_sync(overlay_root: Path) -> None:
    from aiocontainerd.snapshotters.overlay import OverlaySnapshotter

    for sync_remove in (False, True):
        root = overlay_root / f"root-{sync_remove}"
        sn = await OverlaySnapshotter.open(root, sync_remove=sync_remove)
        try:
            await sn.prepare("a", "")
            await sn.remove("a")
            assert (root / "snapshots" / "1").exists() is not sync_remove
            await sn.cleanup()
            assert os.listdir(root / "snapshots") == []
        finally:
            await sn.close()


async def test_overlay_upperdir_label(overlay_root: Path) -> None:
    from aiocontainerd.snapshotters.overlay import UPPERDIR_LABEL, OverlaySnapshotter

    sn = await OverlaySnapshotter.open(overlay_root / "root", upperdir_label=True)
    try:
        await sn.prepare("a", "", {"x": "1"})
        upper = str(overlay_root / "root" / "snapshots" / "1" / "fs")
        assert (await sn.stat("a")).labels == {"x": "1", UPPERDIR_LABEL: upper}
        assert (await sn.update(Info(Kind.ACTIVE, "a", labels={"y": "2"}))).labels == {
            "y": "2", UPPERDIR_LABEL: upper}
        assert [i.labels for i in await sn.walk(["labels.y==2"])] == [{"y": "2", UPPERDIR_LABEL: upper}]
        await sn.commit("c", "a")
        assert UPPERDIR_LABEL not in sn.ms.get_info("c")[1].labels, "the label is not stored"
    finally:
        await sn.close()


async def test_overlay_volatile(overlay_root: Path) -> None:
    """``volatile`` from the config reaches overlay mounts; temporary mounts drop it so
    the same snapshot mounts again."""
    from aiocontainerd.snapshotters.overlay import OverlaySnapshotter

    sn = await OverlaySnapshotter.open(overlay_root / "root", mount_options=["volatile"])
    try:
        await sn.prepare("a", "")
        await sn.commit("c", "a")
        mounts = await sn.prepare("b", "c")
        assert "volatile" in mounts[0].options
        for i in range(2):
            async with temp_mount(mounts, root=overlay_root) as d:
                (d / f"f{i}").write_text("x")
        assert sorted(os.listdir(overlay_root / "root" / "snapshots" / "2" / "fs")) == ["f0", "f1"]
    finally:
        await sn.close()


async def test_overlay_plugin(overlay_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiocontainerd.plugin import PluginSet
    from aiocontainerd.snapshotters import overlay
    from aiocontainerd.snapshotters.native import PLUGIN as NATIVE
    from aiocontainerd.snapshotters.overlay import PLUGIN, OverlayConfig

    async def init(config: OverlayConfig, root: Path) -> PluginSet:
        ps = PluginSet()
        await ps.init_all([PLUGIN, NATIVE], configs=lambda r: config if r is PLUGIN else r.config(),
                          root=root, state=overlay_root / "state", properties={})
        return ps

    ps = await init(OverlayConfig(sync_remove=True), overlay_root / "ok")
    try:
        p = ps.get("io.containerd.snapshotter.v1.overlayfs")
        assert p.ok and p.instance.sync_remove
        assert p.exports == {"root": str(overlay_root / "ok" / "io.containerd.snapshotter.v1.overlayfs")}
        assert ps.get("io.containerd.snapshotter.v1.native").ok
    finally:
        await ps.close_all()

    ps = await init(OverlayConfig(mount_options=["no_such_option"]), overlay_root / "bad")
    p = ps.get("io.containerd.snapshotter.v1.overlayfs")
    assert not p.ok and not p.skipped and "mount_options" in str(p.error), "a bad option is an error"

    def no_overlay(base: Path, options: object) -> None:
        raise OSError(19, "No such device")

    monkeypatch.setattr(overlay, "_try_mount", no_overlay)
    ps = await init(OverlayConfig(), overlay_root / "none")
    p = ps.get("io.containerd.snapshotter.v1.overlayfs")
    assert p.skipped and "overlayfs cannot be mounted" in str(p.error)
