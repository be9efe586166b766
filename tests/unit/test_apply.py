"""Applying layers: changeset rules, metadata, compression, diff IDs, streaming, mounts."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import stat
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import zstandard

from aiocontainerd.diff import apply as apply_module
from aiocontainerd.diff import compression
from aiocontainerd.diff.apply import apply, apply_layer
from aiocontainerd.errors import ContainerdError, InvalidArgument, Unimplemented
from aiocontainerd.mount import Mount
from aiocontainerd.remotes import mediatypes
from tests.unit.test_breakouts import Tar, apply_bytes

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def tc(**kw: Any) -> Tar:
    return Tar(**kw)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def lower_tree(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost")
    (root / "etc" / "keep").write_text("keep")
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "libx.so").write_bytes(b"\0\1")
    (root / "usr" / "lib" / "sub").mkdir()
    (root / "usr" / "lib" / "sub" / "deep").write_text("deep")
    (root / "link").symlink_to("etc/hosts")


# -- changeset rules ---------------------------------------------------------------------------------

def test_files_dirs_symlinks_hardlinks(root: Path) -> None:
    data = (tc().dir("a", 0o750).file("a/f", b"hello", 0o640).symlink("f", "a/rel")
            .symlink("/a/f", "a/abs").link("a/f", "a/hard", mode=0o640).fifo("a/p", 0o600).bytes())
    diff_id, size = apply_bytes(data, root)
    assert (diff_id, size) == (digest(data), len(data))
    assert stat.S_IMODE(os.stat(root / "a").st_mode) == 0o750
    assert (root / "a" / "f").read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(root / "a" / "f").st_mode) == 0o640
    assert os.readlink(root / "a" / "rel") == "f"
    assert os.readlink(root / "a" / "abs") == "/a/f"
    assert os.path.samefile(root / "a" / "f", root / "a" / "hard")
    assert os.stat(root / "a" / "f").st_nlink == 2
    assert stat.S_ISFIFO(os.lstat(root / "a" / "p").st_mode)


def test_directory_creation_with_missing_parents(root: Path) -> None:
    """containerd's TestApplyTar/DirectoryCreation."""
    (root / "etc").mkdir()
    apply_bytes(tc().dir("/etc/subdir").dir("/etc/subdir2/").dir("/etc/subdir2/more")
                .dir("/other/noparent-1/1").dir("/other/noparent-2/2/").bytes(), root)
    for d in ("etc/subdir", "etc/subdir2", "etc/subdir2/more", "other/noparent-1/1", "other/noparent-2/2"):
        assert (root / d).is_dir()
    assert stat.S_IMODE(os.stat(root / "other").st_mode) == 0o755


def test_existing_directory_is_merged_and_other_types_replaced(root: Path) -> None:
    lower_tree(root)
    apply_bytes(tc().dir("etc", 0o700).file("usr/lib/sub", b"now a file").dir("link").bytes(), root)
    assert (root / "etc" / "keep").read_text() == "keep"
    assert stat.S_IMODE(os.stat(root / "etc").st_mode) == 0o700
    assert (root / "usr" / "lib" / "sub").read_bytes() == b"now a file"
    assert (root / "link").is_dir() and not (root / "link").is_symlink()


def test_whiteouts_delete(root: Path) -> None:
    lower_tree(root)
    apply_bytes(tc().file("etc/.wh.hosts").file("usr/.wh.lib").file(".wh.link").file(".wh.absent")
                .file("etc/.wh..wh.plnk").bytes(), root)
    assert sorted(os.listdir(root / "etc")) == ["keep"]
    assert sorted(os.listdir(root / "usr")) == []
    assert not os.path.lexists(root / "link")
    assert not os.path.lexists(root / "absent")


@root_only
def test_whiteouts_overlay(root: Path) -> None:
    apply_bytes(tc(uid=1000, gid=1001).file("etc/.wh.hosts").file(".wh.gone").bytes(), root,
                whiteouts="overlay")
    for p in (root / "etc" / "hosts", root / "gone"):
        st = os.lstat(p)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        assert (st.st_uid, st.st_gid) == (1000, 1001)
    assert not os.path.lexists(root / "etc" / ".wh.hosts")


def test_opaque_delete_removes_only_lower_entries(root: Path) -> None:
    lower_tree(root)
    # marker after an entry of this layer, and marker before one
    layer = (tc().dir("usr/lib").file("usr/lib/new", b"new").dir("usr/lib/sub")
             .file("usr/lib/.wh..wh..opq").file("etc/.wh..wh..opq").file("etc/later", b"later"))
    apply_bytes(layer.bytes(), root)
    assert sorted(os.listdir(root / "usr" / "lib")) == ["new", "sub"]
    assert os.listdir(root / "usr" / "lib" / "sub") == []  # sub came from this layer, deep did not
    assert sorted(os.listdir(root / "etc")) == ["later"]
    assert not os.path.lexists(root / "usr" / "lib" / ".wh..wh..opq")


@root_only
@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
@pytest.mark.parametrize("prefix", ["trusted", "user"])
def test_opaque_overlay_sets_xattr(root: Path, prefix: str, proc: bool,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if not proc:
        monkeypatch.setattr(apply_module, "_proc_available", lambda: False)
    lower_tree(root)
    apply_bytes(tc().dir("etc").file("etc/.wh..wh..opq").bytes(), root, whiteouts="overlay",
                xattr_prefix=prefix)
    assert os.getxattr(root / "etc", f"{prefix}.overlay.opaque") == b"y"
    assert (root / "etc" / "keep").exists()  # the overlay hides it, apply does not delete


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "a/.wh..", "a/.wh..."])
def test_invalid_whiteouts(root: Path, name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid whiteout name"):
        apply_bytes(tc().file(name).bytes(), root)


# -- metadata ----------------------------------------------------------------------------------------

@root_only
def test_ownership_and_special_modes(root: Path) -> None:
    data = (tc(uid=1000, gid=1000).dir("d", 0o1777).file("d/suid", b"x", 0o4755)
            .file("d/sgid", b"x", 0o2750).symlink("suid", "d/l", uid=1001, gid=1002)
            .file("d/other", b"x", 0o644, uid=0, gid=1000).bytes())
    apply_bytes(data, root)
    for name, mode in (("d", 0o1777), ("d/suid", 0o4755), ("d/sgid", 0o2750), ("d/other", 0o644)):
        assert stat.S_IMODE(os.lstat(root / name).st_mode) == mode, name
    assert (os.stat(root / "d/suid").st_uid, os.stat(root / "d/suid").st_gid) == (1000, 1000)
    assert (os.lstat(root / "d/l").st_uid, os.lstat(root / "d/l").st_gid) == (1001, 1002)
    assert (os.stat(root / "d/other").st_uid, os.stat(root / "d/other").st_gid) == (0, 1000)


def test_no_same_owner_keeps_the_applier(root: Path) -> None:
    apply_bytes(tc(uid=4242, gid=4243).file("f", b"x", 0o4711).bytes(), root, same_owner=False)
    st = os.stat(root / "f")
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert stat.S_IMODE(st.st_mode) == 0o4711


def test_times(root: Path) -> None:
    data = (tc(mtime=1_600_000_000).dir("d").file("d/f", b"x").symlink("f", "d/l", mtime=1_500_000_000)
            .file("ns", b"x", pax={"mtime": "1234567890.123456789", "atime": "1234567999.5"})
            .file("old", b"x", mtime=1_000, pax={"atime": "5"})
            .file("neg", b"x", pax={"mtime": "-100.5"}).bytes())
    apply_bytes(data, root)
    assert os.stat(root / "d").st_mtime_ns == 1_600_000_000 * 10**9  # after its content was written
    assert os.stat(root / "d" / "f").st_mtime_ns == 1_600_000_000 * 10**9
    assert os.lstat(root / "d" / "l").st_mtime_ns == 1_500_000_000 * 10**9
    st = os.stat(root / "ns")
    assert st.st_mtime_ns == 1_234_567_890_123_456_789
    assert st.st_atime_ns == 1_234_567_999_500_000_000
    assert os.stat(root / "old").st_atime_ns == 1_000 * 10**9  # atime is never before mtime
    assert os.stat(root / "neg").st_mtime_ns == 0  # before the epoch: the epoch


@pytest.mark.parametrize("proc", [True, False], ids=["proc", "no-proc"])
def test_xattrs(root: Path, proc: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not proc:  # no /proc/self/fd: xattrs through real descriptors of files and folders
        monkeypatch.setattr(apply_module, "_proc_available", lambda: False)
    cap = b"\x01\x00\x00\x02\xff\xfe\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    xattrs = {"user.key": "value", "user.bin": b"\xff\x00\x80"}
    if os.geteuid() == 0:
        xattrs["security.capability"] = cap
    data = (tc().file("f", b"x", xattrs=xattrs).dir("d", xattrs={"user.dir": "yes"})
            .symlink("f", "l", xattrs={"user.on-symlink": "ignored"})
            .file("t", b"x", xattrs={"trusted.overlay.opaque": "y", "trusted.evil": "1"}).bytes())
    apply_bytes(data, root)
    assert os.getxattr(root / "f", "user.key") == b"value"
    assert os.getxattr(root / "f", "user.bin") == b"\xff\x00\x80"
    if os.geteuid() == 0:
        assert os.getxattr(root / "f", "security.capability") == cap
    assert os.getxattr(root / "d", "user.dir") == b"yes"
    assert [k for k in os.listxattr(root / "t") if k.startswith("trusted.")] == []


@root_only
def test_device_nodes(root: Path) -> None:
    apply_bytes(tc().device("dev/null", tarfile.CHRTYPE, 1, 3, 0o666)
                .device("dev/loop0", tarfile.BLKTYPE, 7, 0, 0o660).bytes(), root)
    st = os.lstat(root / "dev" / "null")
    assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(root / "dev" / "loop0")
    assert stat.S_ISBLK(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 0)


def test_device_nodes_skipped_when_not_permitted(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    real = os.mknod

    def mknod(path: Any, mode: int = 0o600, device: int = 0, *, dir_fd: int | None = None) -> None:
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            raise PermissionError(1, "Operation not permitted")
        real(path, mode, device, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mknod", mknod)
    apply_bytes(tc().device("dev/null", tarfile.CHRTYPE, 1, 3).fifo("p").file("after", b"x").bytes(), root)
    assert not os.path.lexists(root / "dev" / "null")
    assert stat.S_ISFIFO(os.lstat(root / "p").st_mode) and (root / "after").exists()
    assert "not permitted to create a device node" in caplog.text


def test_parents_give_created_folders_their_attributes(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "a" / "b").mkdir(parents=True)
    os.chmod(lower / "a", 0o711)
    os.setxattr(lower / "a", "user.inherit", b"1")
    os.utime(lower / "a", ns=(10**9, 2 * 10**9))
    (lower / "x").write_text("file, not a folder")
    upper.mkdir()
    apply_bytes(tc().file("a/b/f", b"x").file("x/y/z", b"x").bytes(), upper, parents=[lower])
    st = os.stat(upper / "a")
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_atime_ns == 10**9  # mtime: changed by b/
    assert os.getxattr(upper / "a", "user.inherit") == b"1"
    assert stat.S_IMODE(os.stat(upper / "x").st_mode) == 0o755  # replaced in the lower: defaults


# -- archives, compression, diff IDs -----------------------------------------------------------------

def sample() -> bytes:
    return tc().dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n" * 100).symlink("hosts", "etc/l").bytes()


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd", "gzip-multi", "zstd-skippable"])
def test_compression_and_diff_id(root: Path, kind: str) -> None:
    tar = sample()
    if kind == "none":
        blob, mt = tar, mediatypes.OCI_LAYER
    elif kind == "gzip":
        blob, mt = gzip.compress(tar), mediatypes.OCI_LAYER_GZIP
    elif kind == "gzip-multi":
        blob, mt = gzip.compress(tar[:1000]) + gzip.compress(tar[1000:]), mediatypes.DOCKER_LAYER_GZIP
    elif kind == "zstd":
        blob, mt = zstandard.ZstdCompressor().compress(tar), mediatypes.OCI_LAYER_ZSTD
    else:
        skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"skip"
        blob, mt = skippable + zstandard.ZstdCompressor().compress(tar), mediatypes.DOCKER_LAYER
    with compression.open_layer(io.BytesIO(blob), mt) as reader:
        diff_id, size = apply_layer(reader, root)
    assert (diff_id, size) == (digest(tar), len(tar))
    assert (root / "etc" / "l").is_symlink()


def test_detect_and_media_types() -> None:
    assert compression.detect(gzip.compress(b"x")) is compression.Compression.GZIP
    assert compression.detect(zstandard.ZstdCompressor().compress(b"x")) is compression.Compression.ZSTD
    assert compression.detect(b"plain tar") is compression.Compression.UNCOMPRESSED
    assert compression.for_media_type(mediatypes.OCI_LAYER) is compression.Compression.UNCOMPRESSED
    assert compression.for_media_type(mediatypes.OCI_LAYER_GZIP) is None  # sniffed, as containerd
    assert compression.for_media_type(mediatypes.DOCKER_LAYER) is None
    # suffixes are sorted, as containerd's DiffCompression: tar+zstd+encrypted reads as zstd
    assert compression.for_media_type(mediatypes.OCI_LAYER_ZSTD + "+encrypted") is None
    plain = compression.for_media_type(mediatypes.OCI_LAYER + "+encrypted")
    assert plain is compression.Compression.UNCOMPRESSED
    with pytest.raises(Unimplemented):
        compression.for_media_type(mediatypes.OCI_CONFIG)
    with pytest.raises(Unimplemented, match="unsupported diff media type"):
        compression.media_type_compression(mediatypes.DOCKER_LAYER_GZIP)


@pytest.mark.parametrize("kind", list(compression.Compression))
def test_compressor_round_trip(kind: compression.Compression) -> None:
    data = os.urandom(3 << 20) + b"\0" * (1 << 20)
    out = io.BytesIO()
    with compression.compressor(out, kind) as w:
        for i in range(0, len(data), 100_000):
            w.write(data[i:i + 100_000])
    assert not out.closed
    assert compression.detect(out.getvalue()[:10]) is kind
    with compression.decompress(io.BytesIO(out.getvalue())) as r:
        assert r.read() == data


def test_corrupt_compressed_data_is_invalid(root: Path) -> None:
    blob = bytearray(gzip.compress(sample()))
    blob[len(blob) // 2] ^= 0xFF
    blob[-5] ^= 0xFF
    with pytest.raises(InvalidArgument):
        with compression.open_layer(io.BytesIO(bytes(blob)), mediatypes.OCI_LAYER_GZIP) as reader:
            apply_layer(reader, root)
    with pytest.raises(InvalidArgument):
        truncated = gzip.compress(sample())[:-20]
        with compression.open_layer(io.BytesIO(truncated), mediatypes.OCI_LAYER_GZIP) as r:
            apply_layer(r, root)


def test_trailing_bytes_count_in_the_diff_id(root: Path) -> None:
    data = sample() + b"\0" * 9000 + b"trailing garbage"
    assert apply_bytes(data, root) == (digest(data), len(data))


@pytest.mark.parametrize("data", [b"", b"\0" * 1024, b"\0" * 512], ids=["empty", "zeros", "one-zero-block"])
def test_empty_layers(root: Path, data: bytes) -> None:
    assert apply_bytes(data, root) == (digest(data), len(data))
    assert os.listdir(root) == []


def test_malformed_archives(root: Path) -> None:
    tar = sample()
    cases = {
        "garbage": b"this is not a tar archive at all" * 40,
        "truncated header": tar[:512 + 200],
        "truncated data": tar[:512 * 3 + 100],
        "bad header after two entries": tar[:3072] + b"x" * 512 + tar[3584:],
        "bad checksum": tar[:3072 + 148] + b"0000000\0" + tar[3072 + 156:],
    }
    for name, data in cases.items():
        with pytest.raises(InvalidArgument, match="invalid layer tar"):
            apply_bytes(data, root)
        assert name


def test_unknown_entry_type(root: Path) -> None:
    t = tc().file("ok", b"x")
    ti = tarfile.TarInfo("weird")
    ti.type = b"V"
    t.entries.append((ti, b""))
    with pytest.raises(InvalidArgument, match="unhandled tar header type"):
        apply_bytes(t.bytes(), root)


def test_filesystem_errors_name_the_entry(root: Path) -> None:
    with pytest.raises(ContainerdError, match="'f/x'"):
        apply_bytes(tc().file("f", b"x").file("f/x", b"y").bytes(), root)


def test_long_names_and_gnu_format(root: Path) -> None:
    long = "/".join(["d" * 60] * 5) + "/" + "f" * 200
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        t = Tar(fmt=fmt).file(long, b"x").symlink("t" * 300, "s")
        apply_bytes(t.bytes(), root)
        assert (root / long).read_bytes() == b"x"
        assert os.readlink(root / "s") == "t" * 300


# -- streaming -----------------------------------------------------------------------------------------

class LazyTar(io.RawIOBase):
    """A tar with one ``size``-byte file of a repeated pattern, produced as it is read."""

    def __init__(self, size: int) -> None:
        ti = tarfile.TarInfo("big")
        ti.size = size
        ti.mtime = 1
        head = ti.tobuf(tarfile.PAX_FORMAT)
        self._parts = [(head, len(head)), (None, size), (b"\0" * (-size % 512 + 1024), -size % 512 + 1024)]
        self._pattern = bytes(range(256)) * 4096  # 1 MiB
        self.total = sum(n for _, n in self._parts)
        self.hash = hashlib.sha256()
        self.max_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        self.max_read = max(self.max_read, len(b))
        while self._parts:
            data, left = self._parts[0]
            if left == 0:
                self._parts.pop(0)
                continue
            n = min(len(b), left)
            if data is None:
                pat = self._pattern
                chunk = (pat * (n // len(pat) + 2))[: n] if n > len(pat) else pat[:n]
            else:
                chunk = data[len(data) - left: len(data) - left + n]
            b[:n] = chunk
            self.hash.update(chunk)
            self._parts[0] = (data, left - n)
            return n
        return 0


def test_large_layer_is_streamed(root: Path) -> None:
    size = 256 << 20
    src = LazyTar(size)
    tracemalloc.start()
    try:
        diff_id, total = apply_layer(io.BufferedReader(src, 1 << 16), root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (diff_id, total) == ("sha256:" + src.hash.hexdigest(), src.total)
    assert os.stat(root / "big").st_size == size
    assert peak < 16 << 20, f"peak {peak} bytes: the layer was buffered"


# -- the async side --------------------------------------------------------------------------------------

async def test_apply_into_bind_mount_source(tmp_path: Path) -> None:
    target = tmp_path / "snap"
    target.mkdir()
    data = sample()
    result = await apply([Mount("bind", str(target), ("rbind", "rw"))], lambda: io.BytesIO(data))
    assert result == (digest(data), len(data))
    assert (target / "etc" / "hosts").exists()


async def test_apply_needs_mounts() -> None:
    with pytest.raises(InvalidArgument):
        await apply([], lambda: io.BytesIO(b""))


@root_only
async def test_apply_into_overlay_upper(tmp_path: Path) -> None:
    from aiocontainerd.mount.mounting import temp_mount

    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower, upper, work):
        d.mkdir()
    lower_tree(lower)
    os.chmod(lower / "usr", 0o700)
    m = Mount("overlay", "overlay", (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"))
    data = (tc().file("etc/.wh.hosts").dir("usr/lib").file("usr/lib/.wh..wh..opq").file("usr/lib/new", b"n")
            .file("usr/share/doc", b"d").bytes())
    assert await apply([m], lambda: io.BytesIO(data)) == (digest(data), len(data))
    st = os.lstat(upper / "etc" / "hosts")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(upper / "usr" / "lib", "trusted.overlay.opaque") == b"y"
    assert stat.S_IMODE(os.stat(upper / "usr").st_mode) == 0o700  # inherited from the lower folder
    async with temp_mount([m], read_only=True) as merged:
        assert sorted(os.listdir(merged / "etc")) == ["keep"]
        assert sorted(os.listdir(merged / "usr" / "lib")) == ["new"]
        assert (merged / "usr" / "share" / "doc").read_bytes() == b"d"
        assert (merged / "link").is_symlink()


@root_only
async def test_apply_through_a_temporary_mount(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "sub").mkdir()
    mounts = [Mount("bind", str(a), ("rbind",)), Mount("bind", str(b), ("rbind",), target="sub")]
    data = tc().file("top", b"1").file("sub/inner", b"2").bytes()
    assert await apply(mounts, lambda: io.BytesIO(data)) == (digest(data), len(data))
    assert (a / "top").read_bytes() == b"1"
    assert (b / "inner").read_bytes() == b"2"
    assert not (a / "sub" / "inner").exists()


async def test_cancelled_apply_stops_its_thread(tmp_path: Path) -> None:
    target = tmp_path / "snap"
    target.mkdir()
    started = threading.Event()

    class Endless(io.RawIOBase):
        """A header announcing a 1 TiB file, then data forever."""

        def __init__(self) -> None:
            ti = tarfile.TarInfo("f")
            ti.size = 1 << 40
            self.head = io.BytesIO(ti.tobuf(tarfile.PAX_FORMAT))

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            started.set()
            n = self.head.readinto(b)
            if n:
                return n
            time.sleep(0.001)
            b[:len(b)] = b"y" * len(b)
            return len(b)

    task = asyncio.create_task(apply([Mount("bind", str(target), ())], Endless))
    await asyncio.to_thread(started.wait, 5)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    size = os.stat(target / "f").st_size
    await asyncio.sleep(0.1)
    assert os.stat(target / "f").st_size == size  # nothing writes any more
