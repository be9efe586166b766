"""Computing layers: the changes between two trees, written as OCI layer tars.

containerd's ``TestDiffTar`` cases (entry by entry), the diff-then-apply
round trips of ``TestSymlinks``/``TestRelativeSymlinks``/``TestBaseDiff``
(applying the diff of lower → upper onto a copy of lower reproduces upper),
the overlayfs upper-folder walk, and the walking differ writing into the
content store.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import shutil
import socket
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aiocontainerd.content import LocalStore
from aiocontainerd.diff import compression
from aiocontainerd.diff.apply import apply_layer
from aiocontainerd.diff.compare import LABEL_UNCOMPRESSED, ChangeKind, changes, compare, write_diff
from aiocontainerd.errors import Unimplemented
from aiocontainerd.metadata import MetadataDB
from aiocontainerd.metadata.content import ContentStore
from aiocontainerd.mount import Mount
from aiocontainerd.remotes import mediatypes

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# -- building trees (continuity's fstest appliers) -------------------------------------------------

Applier = Callable[[Path], None]


def create_dir(p: str, mode: int) -> Applier:
    def apply(root: Path) -> None:
        (root / p.strip("/")).mkdir(parents=True, exist_ok=True)
        os.chmod(root / p.strip("/"), mode)
    return apply


def create_file(p: str, data: bytes, mode: int) -> Applier:
    def apply(root: Path) -> None:
        (root / p.strip("/")).write_bytes(data)
        os.chmod(root / p.strip("/"), mode)
    return apply


def link(old: str, new: str) -> Applier:
    return lambda root: os.link(root / old.strip("/"), root / new.strip("/"))


def symlink(target: str, p: str) -> Applier:
    return lambda root: os.symlink(target, root / p.strip("/"))


def remove(p: str) -> Applier:
    return lambda root: os.unlink(root / p.strip("/"))


def remove_all(p: str) -> Applier:
    def apply(root: Path) -> None:
        target = root / p.strip("/")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    return apply


def chmod(p: str, mode: int) -> Applier:
    return lambda root: os.chmod(root / p.strip("/"), mode)


def chtimes(p: str, when: datetime.datetime) -> Applier:
    ns = int(when.timestamp()) * 10**9
    return lambda root: os.utime(root / p.strip("/"), ns=(ns, ns))


def create_socket(p: str, mode: int) -> Applier:
    def apply(root: Path) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(root / p.strip("/")))
        s.close()
        os.chmod(root / p.strip("/"), mode)
    return apply


def fs(*appliers: Applier) -> Applier:
    def apply(root: Path) -> None:
        for a in appliers:
            a(root)
    return apply


def copy_tree(src: Path, dst: Path) -> None:
    """continuity's CopyDir: content, modes, owners, times (ns), xattrs and hard links."""
    links: dict[tuple[int, int], Path] = {}
    dirs: list[tuple[Path, os.stat_result]] = []
    dst.mkdir(exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for name in sorted(dirnames + filenames):
            s, d = Path(dirpath) / name, dst / rel / name
            st = os.lstat(s)
            key = (st.st_dev, st.st_ino)
            if stat.S_ISDIR(st.st_mode):
                d.mkdir()
                dirs.append((d, st))
                continue
            if st.st_nlink > 1 and key in links:
                os.link(links[key], d)
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(s), d)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(s, d, follow_symlinks=False)
            else:
                continue  # sockets and others are not copied
            links[key] = d
            if os.geteuid() == 0:
                os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
            os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    for d, st in reversed(dirs):
        os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    shutil.copystat(src, dst)


def diff_bytes(a: Path | None, b: Path, **kw: Any) -> bytes:
    out = io.BytesIO()
    write_diff(out, a, b, **kw)
    return out.getvalue()


# -- TestDiffTar -----------------------------------------------------------------------------------------

Validator = Callable[[tarfile.TarInfo, bytes], None]


def dir_entry(name: str, mode: int) -> Validator:
    def v(ti: tarfile.TarInfo, data: bytes) -> None:
        assert ti.isdir(), f"{ti.name}: not a directory"
        assert ti.name + "/" == name, f"wrong name {ti.name!r}, expected {name!r}"
        assert ti.mode == mode, f"{name}: wrong mode {ti.mode:o}, expected {mode:o}"
    return v


def file_entry(name: str, content: bytes, mode: int) -> Validator:
    def v(ti: tarfile.TarInfo, data: bytes) -> None:
        assert ti.isreg() and ti.name == name, f"got {ti.name!r} ({ti.type!r}), expected file {name!r}"
        assert ti.mode == mode, f"{name}: wrong mode {ti.mode:o}, expected {mode:o}"
        assert data == content
    return v


def link_entry(name: str, target: str) -> Validator:
    def v(ti: tarfile.TarInfo, data: bytes) -> None:
        assert ti.islnk() and ti.name == name and ti.linkname == target, \
            f"got {ti.name!r} -> {ti.linkname!r} ({ti.type!r}), expected link {name!r} -> {target!r}"
    return v


def whiteout_entry(name: str) -> Validator:
    directory, base = os.path.split(name)
    expected = os.path.join(directory, ".wh." + base)

    def v(ti: tarfile.TarInfo, data: bytes) -> None:
        assert ti.isreg() and ti.name == expected, f"got {ti.name!r}, expected whiteout {expected!r}"
    return v


def mod_time(when: datetime.datetime) -> Validator:
    def v(ti: tarfile.TarInfo, data: bytes) -> None:
        assert ti.mtime == int(when.timestamp()), f"{ti.name}: mtime {ti.mtime}, expected {when}"
    return v


def both(*vs: Validator) -> Validator:
    def v(ti: tarfile.TarInfo, data: bytes) -> None:
        for x in vs:
            x(ti, data)
    return v


def read_entries(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for ti in tf:
            body = tf.extractfile(ti).read() if ti.isreg() and ti.size else b""  # type: ignore[union-attr]
            out.append((ti, body))
    return out


SDE = datetime.datetime(2022, 1, 23, 12, 34, 56, tzinfo=datetime.UTC)
PAST = datetime.datetime(2022, 1, 1, tzinfo=datetime.UTC)
RECENT = datetime.datetime.now(datetime.UTC)

DIFF_TAR_CASES: dict[str, tuple[list[Validator], Applier, Applier, dict[str, Any]]] = {
    "EmptyDiff": ([], fs(create_dir("/etc/", 0o755)), fs(), {}),
    "ParentInclusion": (
        [dir_entry("d1/", 0o755), dir_entry("d1/d/", 0o700), dir_entry("d2/", 0o770),
         file_entry("d2/f", b"ok", 0o644)],
        fs(create_dir("/d1/", 0o755), create_dir("/d2/", 0o770)),
        fs(create_dir("/d1/d", 0o700), create_file("/d2/f", b"ok", 0o644)), {}),
    "HardlinkParentInclusion": (
        [dir_entry("d2/", 0o755), file_entry("d2/l1", b"link me", 0o644),
         dir_entry("d1/", 0o755), link_entry("d1/f1", "d2/l1"),
         dir_entry("d3/", 0o755), file_entry("d3/l1", b"link me", 0o644),
         dir_entry("d4/", 0o755), link_entry("d4/f1", "d3/l1"),
         dir_entry("d6/", 0o755), whiteout_entry("d6/l1"), whiteout_entry("d6/l2")],
        fs(create_dir("/d1/", 0o755), create_file("/d1/f1", b"link me", 0o644),
           create_dir("/d2/", 0o755), create_file("/d2/f1", b"link me", 0o644),
           create_dir("/d3/", 0o755), create_dir("/d4/", 0o755), create_file("/d4/f1", b"link me", 0o644),
           create_dir("/d5/", 0o755), create_file("/d5/f1", b"link me", 0o644),
           create_dir("/d6/", 0o755), link("/d1/f1", "/d6/l1"), link("/d5/f1", "/d6/l2")),
        fs(link("/d1/f1", "/d2/l1"), link("/d4/f1", "/d3/l1"), remove("/d6/l1"), remove("/d6/l2")), {}),
    "UpdateDirectoryPermission": (
        [dir_entry("d1/", 0o777), dir_entry("d1/d/", 0o700), dir_entry("d2/", 0o770),
         file_entry("d2/f", b"ok", 0o644)],
        fs(create_dir("/d1/", 0o755), create_dir("/d2/", 0o770)),
        fs(chmod("/d1", 0o777), create_dir("/d1/d", 0o700), create_file("/d2/f", b"ok", 0o644)), {}),
    "HardlinkUpdatedParent": (
        [dir_entry("d1/", 0o777), dir_entry("d2/", 0o755), file_entry("d2/l1", b"link me", 0o644),
         link_entry("d1/f1", "d2/l1"), dir_entry("d4/", 0o777), file_entry("d4/l1", b"link me", 0o644),
         dir_entry("d3/", 0o755), link_entry("d3/f1", "d4/l1")],
        fs(create_dir("/d1/", 0o755), create_file("/d1/f1", b"link me", 0o644),
           create_dir("/d2/", 0o755), create_file("/d2/f1", b"link me", 0o644),
           create_dir("/d3/", 0o755), create_file("/d3/f1", b"link me", 0o644), create_dir("/d4/", 0o755)),
        fs(chmod("/d1", 0o777), link("/d1/f1", "/d2/l1"), chmod("/d4", 0o777), link("/d3/f1", "/d4/l1")), {}),
    "WhiteoutIncludesParents": (
        [dir_entry("d1/", 0o755), whiteout_entry("d1/f1"),
         dir_entry("d2/", 0o755), whiteout_entry("d2/f1"), file_entry("d2/f2", b"content", 0o777),
         dir_entry("d3/", 0o755), whiteout_entry("d3/f1"), file_entry("d3/f2", b"content", 0o644),
         dir_entry("d4/", 0o755), file_entry("d4/f0", b"content", 0o644), whiteout_entry("d4/f1"),
         whiteout_entry("d5")],
        fs(create_dir("/d1/", 0o755), create_file("/d1/f1", b"content", 0o644),
           create_dir("/d2/", 0o755), create_file("/d2/f1", b"content", 0o644),
           create_file("/d2/f2", b"content", 0o644),
           create_dir("/d3/", 0o755), create_file("/d3/f1", b"content", 0o644),
           create_dir("/d4/", 0o755), create_file("/d4/f1", b"content", 0o644),
           create_dir("/d5/", 0o755), create_file("/d5/f1", b"content", 0o644)),
        fs(remove("/d1/f1"), remove("/d2/f1"), chmod("/d2/f2", 0o777), remove("/d3/f1"),
           create_file("/d3/f2", b"content", 0o644), remove("/d4/f1"),
           create_file("/d4/f0", b"content", 0o644), remove_all("/d5")), {}),
    "WhiteoutParentRemoval": (
        [whiteout_entry("d1"), whiteout_entry("d2"), dir_entry("d3/", 0o755)],
        fs(create_dir("/d1/", 0o755), create_dir("/d2/", 0o755), create_file("/d2/f1", b"content", 0o644)),
        fs(remove_all("/d1"), remove_all("/d2"), create_dir("/d3/", 0o755)), {}),
    "IgnoreSockets": (
        [file_entry("f2", b"content", 0o644), file_entry("f3", b"content", 0o644)],
        fs(create_file("/f1", b"content", 0o644)),
        fs(create_file("/f2", b"content", 0o644), create_socket("/s0", 0o644),
           create_file("/f3", b"content", 0o644)), {}),
    "SourceDateEpoch": (
        [both(whiteout_entry("f1"), mod_time(datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC))),
         both(file_entry("f2", b"content2", 0o644), mod_time(PAST)),
         both(file_entry("f3", b"content3", 0o644), mod_time(SDE))],
        fs(create_file("/f1", b"content", 0o644)),
        fs(remove_all("/f1"), create_file("/f2", b"content2", 0o644), chtimes("/f2", PAST),
           create_file("/f3", b"content3", 0o644), chtimes("/f3", RECENT)),
        {"source_date_epoch_ns": int(SDE.timestamp()) * 10**9}),
}


def make_pair(tmp: Path, a: Applier, b: Applier) -> tuple[Path, Path]:
    ad, bd = tmp / "a", tmp / "b"
    ad.mkdir()
    a(ad)
    copy_tree(ad, bd)
    b(bd)
    return ad, bd


@pytest.mark.parametrize("name", list(DIFF_TAR_CASES))
def test_diff_tar(tmp_path: Path, name: str) -> None:
    validators, a, b, kw = DIFF_TAR_CASES[name]
    ad, bd = make_pair(tmp_path, a, b)
    entries = read_entries(diff_bytes(ad, bd, **kw))
    assert len(entries) == len(validators), [ti.name for ti, _ in entries]
    for (ti, data), v in zip(entries, validators, strict=True):
        v(ti, data)


def test_diff_is_reproducible(tmp_path: Path) -> None:
    """containerd's SourceDateEpoch repro test: the same trees give the same digest."""
    _, a, b, kw = DIFF_TAR_CASES["SourceDateEpoch"]
    digests = set()
    for i in range(3):
        base = tmp_path / str(i)
        base.mkdir()
        ad, bd = make_pair(base, a, b)
        digests.add(hashlib.sha256(diff_bytes(ad, bd, **kw)).hexdigest())
    assert len(digests) == 1


def test_changes_kinds(tmp_path: Path) -> None:
    ad, bd = make_pair(tmp_path, fs(create_file("/keep", b"k", 0o644), create_file("/mod", b"1", 0o644),
                                    create_file("/gone", b"g", 0o644), create_dir("/dir", 0o755),
                                    create_file("/dir/x", b"x", 0o644)),
                       fs(create_file("/mod", b"22", 0o644), remove("/gone"), remove_all("/dir"),
                          create_file("/dir", b"now a file", 0o600), create_file("/new", b"n", 0o644)))
    got = [(k, p) for k, p, _ in changes(ad, bd)]
    assert got == [(ChangeKind.MODIFY, "/dir"), (ChangeKind.DELETE, "/gone"), (ChangeKind.MODIFY, "/mod"),
                   (ChangeKind.ADD, "/new")]
    first_two = [(k, p) for k, p, _ in changes(None, bd)][:2]
    assert first_two == [(ChangeKind.ADD, "/dir"), (ChangeKind.ADD, "/keep")]


# -- diff, then apply onto the lower: the upper comes back ----------------------------------------------

def describe_tree(root: Path) -> dict[str, tuple[Any, ...]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body: Any = None
            if stat.S_ISREG(st.st_mode):
                body = Path(p).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                body = st.st_rdev
            if stat.S_ISSOCK(st.st_mode):
                continue
            xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)))
            mtime = st.st_mtime_ns // 10**9 if not stat.S_ISDIR(st.st_mode) else None
            links = st.st_nlink if not stat.S_ISDIR(st.st_mode) else None
            out[os.path.relpath(p, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                                             st.st_gid, body, mtime, links, xattrs)
    return out


BASE = fs(create_dir("/etc/", 0o755), create_file("/etc/hosts", b"127.0.0.1 localhost", 0o644),
          link("/etc/hosts", "/etc/hosts.allow"), create_dir("/usr/local/lib", 0o755),
          create_file("/usr/local/lib/libnothing.so", b"\0\0", 0o755),
          symlink("libnothing.so", "/usr/local/lib/libnothing.so.2"), create_dir("/home", 0o755),
          create_dir("/home/derek", 0o700))

ROUND_TRIPS: dict[str, tuple[Applier, Applier]] = {
    # TestBaseDiff / TestUnpack
    "Base": (fs(), BASE),
    # TestRelativeSymlinks
    "RelativeSymlinks": (BASE, fs(symlink("../other", "/home/derek/other"),
                                  symlink("../../etc", "/home/derek/etc"),
                                  symlink("up/../../other", "/home/derek/updown"))),
    "RelativeBreakout": (BASE, fs(symlink("../../../breakout", "/home/derek/breakout"))),
    "RootBreakout": (BASE, fs(symlink("../../breakout", "/breakout"))),
    "UpAndOut": (BASE, fs(symlink("etc/../../upandout", "/breakout"))),
    "DownAndOut": (BASE, fs(symlink("derek/../../../downandout", "/home/breakout"))),
    "LocalEtc": (BASE, fs(symlink("/etc", "/localetc"))),
    # TestSymlinks
    "Symlinks1": (fs(create_dir("/bin/", 0o755), create_file("/bin/superbinary", b"\0\0", 0o755),
                     symlink("../bin/superbinary", "/bin/other1")),
                  fs(remove("/bin/other1"), symlink("/bin/superbinary", "/bin/other1"),
                     symlink("../bin/superbinary", "/bin/other2"), symlink("superbinary", "/bin/other3"))),
    "Symlinks2": (fs(create_dir("/bin/", 0o755), create_dir("/sbin/", 0o755),
                     create_file("/sbin/superbinary", b"\0\0", 0o755),
                     symlink("/sbin/superbinary", "/bin/superbinary"),
                     symlink("../bin/superbinary", "/bin/other1")),
                  fs(remove("/bin/other1"), symlink("/bin/superbinary", "/bin/other1"),
                     symlink("superbinary", "/bin/other2"))),
    "Symlinks3": (fs(create_dir("/bin/", 0o755), create_file("/bin/actualbinary", b"\0\0", 0o755),
                     symlink("actualbinary", "/bin/myapp")),
                  fs(remove("/bin/myapp"), create_dir("/bin/myapp", 0o755))),
    # more shapes
    "ReplaceAndDelete": (BASE, fs(remove_all("/usr"), create_file("/usr", b"a file now", 0o600),
                                  remove("/etc/hosts.allow"),
                                  create_file("/etc/hosts", b"::1 localhost", 0o640),
                                  create_dir("/home/derek/deep/er", 0o700),
                                  create_file("/home/derek/deep/er/f", b"f", 0o4755))),
    "DirBecomesSymlink": (BASE, fs(remove_all("/home"), symlink("/etc", "/home"))),
    "HardlinksAcrossDirs": (BASE, fs(create_dir("/x", 0o755), link("/usr/local/lib/libnothing.so", "/x/l1"),
                                     link("/etc/hosts", "/x/l2"))),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_diff_then_apply_reproduces_upper(tmp_path: Path, name: str) -> None:
    a, b = ROUND_TRIPS[name]
    ad, bd = make_pair(tmp_path, a, b)
    dest = tmp_path / "dest"
    copy_tree(ad, dest)
    data = diff_bytes(ad if name != "Base" else None, bd)
    assert apply_layer(io.BytesIO(data), dest)[0] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert describe_tree(dest) == describe_tree(bd)


@root_only
def test_round_trip_with_owners_devices_and_capabilities(tmp_path: Path) -> None:
    cap = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

    def upper(root: Path) -> None:
        (root / "dev").mkdir()
        os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mkfifo(root / "dev" / "fifo", 0o600)
        (root / "bin" / "ping").write_bytes(b"elf")
        os.chown(root / "bin" / "ping", 1000, 1000)
        os.chmod(root / "bin" / "ping", 0o4755)
        os.setxattr(root / "bin" / "ping", "security.capability", cap)
        os.symlink("ping", root / "bin" / "l")
        os.chown(root / "bin" / "l", 1001, 1002, follow_symlinks=False)

    ad, bd = make_pair(tmp_path, fs(create_dir("/bin", 0o755)), upper)
    dest = tmp_path / "dest"
    copy_tree(ad, dest)
    data = diff_bytes(ad, bd)
    names = [ti.name for ti, _ in read_entries(data)]
    assert "bin/ping" in names and "dev/null" in names
    apply_layer(io.BytesIO(data), dest)
    assert describe_tree(dest) == describe_tree(bd)


# -- overlayfs upper folders -----------------------------------------------------------------------------

@root_only
async def test_overlay_upper_walk(tmp_path: Path) -> None:
    from aiocontainerd.mount.mounting import temp_mount

    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    lower.mkdir()
    upper.mkdir()
    work.mkdir()
    BASE(lower)
    (lower / "opq").mkdir()
    (lower / "opq" / "old").write_text("old")
    m = Mount("overlay", "overlay", (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"))
    async with temp_mount([m]) as merged:
        os.unlink(merged / "etc" / "hosts.allow")          # whiteout
        shutil.rmtree(merged / "usr")                       # whiteout of a folder
        shutil.rmtree(merged / "opq")                       # recreated: opaque
        (merged / "opq").mkdir()
        (merged / "opq" / "new").write_text("new")
        (merged / "etc" / "hosts").write_text("changed")    # copy-up
        (merged / "home" / "derek" / "f").write_text("f")   # new file in an existing folder
        (merged / "tmpfile").write_text("x")
        os.unlink(merged / "tmpfile")                       # created and deleted: nothing
        expected = tmp_path / "expected"
        copy_tree(merged, expected)
    data = diff_bytes(lower, upper, overlay_upper=True)
    names = [ti.name for ti, _ in read_entries(data)]
    assert "opq/.wh..wh..opq" in names and "etc/.wh.hosts.allow" in names and "usr/.wh.usr" not in names
    assert ".wh.usr" in names and not any("tmpfile" in n for n in names)
    dest = tmp_path / "dest"
    copy_tree(lower, dest)
    apply_layer(io.BytesIO(data), dest)
    assert describe_tree(dest) == describe_tree(expected)


# -- into the content store -------------------------------------------------------------------------------

@pytest.fixture
def content(tmp_path: Path) -> Any:
    db = MetadataDB.open(tmp_path / "db", map_size=64 << 20)
    yield ContentStore(db, LocalStore(tmp_path / "content"))
    db.close()


@pytest.mark.parametrize("media_type", ["", mediatypes.OCI_LAYER_GZIP, mediatypes.OCI_LAYER_ZSTD,
                                        mediatypes.OCI_LAYER])
async def test_compare_writes_content(tmp_path: Path, content: ContentStore, media_type: str) -> None:
    ad, bd = make_pair(tmp_path, BASE, ROUND_TRIPS["ReplaceAndDelete"][1])
    lower, upper = [Mount("bind", str(ad), ("rbind", "ro"))], [Mount("bind", str(bd), ("rbind", "ro"))]
    desc, diff_id = await compare(content, "default", lower, upper, media_type=media_type,
                                  labels={"x": "y"})
    assert desc.media_type == (media_type or mediatypes.OCI_LAYER_GZIP)
    info = content.info("default", desc.digest)
    assert info.size == desc.size and info.labels["x"] == "y"
    blob = content.local.blob_path(desc.digest).read_bytes()
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == desc.digest
    with compression.decompress(io.BytesIO(blob)) as r:
        tar = r.read()
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
    if desc.media_type == mediatypes.OCI_LAYER:
        assert diff_id == desc.digest and LABEL_UNCOMPRESSED not in info.labels
    else:
        assert info.labels[LABEL_UNCOMPRESSED] == diff_id
    dest = tmp_path / "dest"
    copy_tree(ad, dest)
    apply_layer(io.BytesIO(tar), dest)
    assert describe_tree(dest) == describe_tree(bd)
    assert await content.list_statuses("default") == []


async def test_compare_twice_and_named_refs(tmp_path: Path, content: ContentStore) -> None:
    ad, bd = make_pair(tmp_path, BASE, ROUND_TRIPS["LocalEtc"][1])
    lower, upper = [Mount("bind", str(ad), ())], [Mount("bind", str(bd), ())]
    first, _ = await compare(content, "default", lower, upper, media_type=mediatypes.OCI_LAYER_ZSTD)
    w = await content.writer("default", "my-ref")
    await w.write(b"stale bytes of an earlier attempt")
    w.close()
    again, _ = await compare(content, "default", lower, upper, media_type=mediatypes.OCI_LAYER_ZSTD,
                             ref="my-ref")
    assert again == first
    assert await content.list_statuses("default") == []
    # the label is set even on a blob that existed without it
    await content.update("default", dataclass_replace(content.info("default", first.digest), labels={}))
    third, diff_id = await compare(content, "default", lower, upper, media_type=mediatypes.OCI_LAYER_ZSTD)
    assert third == first and content.info("default", first.digest).labels[LABEL_UNCOMPRESSED] == diff_id


def dataclass_replace(obj: Any, **kw: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **kw)


async def test_compare_refuses_other_media_types(tmp_path: Path, content: ContentStore) -> None:
    with pytest.raises(Unimplemented, match="unsupported diff media type"):
        await compare(content, "default", [], [Mount("bind", str(tmp_path), ())],
                      media_type=mediatypes.DOCKER_LAYER_GZIP)


async def test_compare_from_nothing(tmp_path: Path, content: ContentStore) -> None:
    up = tmp_path / "up"
    up.mkdir()
    BASE(up)
    desc, diff_id = await compare(content, "default", [], [Mount("bind", str(up), ())],
                                  media_type=mediatypes.OCI_LAYER)
    dest = tmp_path / "dest"
    dest.mkdir()
    blob = content.local.blob_path(desc.digest).read_bytes()
    assert apply_layer(io.BytesIO(blob), dest)[0] == diff_id
    assert describe_tree(dest) == describe_tree(up)
