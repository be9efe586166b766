"""The Diff service over gRPC (``containerd.services.diff.v1.Diff``) through a running daemon.

Apply: a layer blob in content onto bind and overlay mounts (the applied
descriptor carries the diff ID), and the errors containerd's codes name.
Diff: the layer between two mount lists written into content with the
uncompressed label, under the request's lease, and applied back.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpclib.const
import pytest
from grpclib.exceptions import GRPCError

from aiocontainerd import Client, Daemon, builtins
from aiocontainerd.api.containerd import types as ctypes
from aiocontainerd.api.containerd.services.content import v1 as content_api
from aiocontainerd.api.containerd.services.diff import v1 as diff_api
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.diff import compression
from aiocontainerd.diff.apply import apply_layer
from aiocontainerd.diff.service import PLUGIN as DIFF_SERVICE
from aiocontainerd.diff.service import DiffService
from aiocontainerd.plugin import METADATA, SERVICE
from aiocontainerd.remotes import mediatypes
from aiocontainerd.services.diff import PLUGIN as DIFF_GRPC
from tests.conftest import make_config

pytestmark = pytest.mark.integration

NS = {"containerd-namespace": "default"}


def registrations() -> list[Any]:
    regs = builtins.registrations()
    have = {r.uri for r in regs}
    return regs + [r for r in (DIFF_SERVICE, DIFF_GRPC) if r.uri not in have]


@pytest.fixture
async def ddaemon(tmp_short: Path) -> AsyncIterator[Daemon]:
    """A daemon with the diff plugins (whether or not builtins lists them yet)."""
    async with Daemon(make_config(tmp_short), plugins=registrations()) as d:
        yield d


@pytest.fixture
async def stubs(ddaemon: Daemon) -> AsyncIterator[tuple[diff_api.DiffStub, content_api.ContentStub]]:
    async with Client(ddaemon.address) as c:
        yield diff_api.DiffStub(c._channel, metadata=NS), content_api.ContentStub(c._channel, metadata=NS)


def layer() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, mode in (("etc/", None, 0o755), ("etc/hosts", b"127.0.0.1 localhost\n", 0o644),
                                 ("bin/", None, 0o755), ("bin/sh", b"#!elf", 0o4755),
                                 ("lib/.wh.old", b"", 0o644)):
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mode, ti.mtime = mode, 1_700_000_000
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("bin/ash")
        link.type, link.linkname = tarfile.SYMTYPE, "sh"
        tf.addfile(link)
    return out.getvalue()


async def put_blob(daemon: Daemon, data: bytes) -> str:
    """Store ``data`` under a lease, as a client does: unreferenced content is garbage for
    the daemon's next collection (the first runs 100 ms after start)."""
    md = daemon.plugins.instance(METADATA)
    dgst = "sha256:" + hashlib.sha256(data).hexdigest()
    lease = "blob-" + dgst[7:19]
    await md.leases.create("default", lease)
    w = await md.content.writer("default", "upload-" + dgst[7:19], lease=lease)
    await w.write(data)
    await w.commit(len(data), dgst)
    return dgst


def bind(path: Path, *options: str) -> ctypes.Mount:
    return ctypes.Mount(type="bind", source=str(path), options=["rbind", *options])


def wire_desc(media_type: str, dgst: str, size: int) -> ctypes.Descriptor:
    return ctypes.Descriptor(media_type=media_type, digest=dgst, size=size)


async def test_plugins_are_registered(ddaemon: Daemon) -> None:
    assert isinstance(ddaemon.plugins.instance(SERVICE, "diff-service"), DiffService)
    assert ddaemon.plugins.get("io.containerd.grpc.v1.diff").ok


@pytest.mark.parametrize("media_type", [mediatypes.OCI_LAYER_GZIP, mediatypes.DOCKER_LAYER_GZIP,
                                        mediatypes.OCI_LAYER, mediatypes.DOCKER_LAYER])
async def test_apply_onto_a_bind_mount(ddaemon: Daemon, stubs: Any, tmp_path: Path, media_type: str) -> None:
    diff, _ = stubs
    tar = layer()
    blob = tar if media_type == mediatypes.OCI_LAYER else gzip.compress(tar)
    dgst = await put_blob(ddaemon, blob)
    target = tmp_path / "snapshot"
    (target / "lib").mkdir(parents=True)
    (target / "lib" / "old").write_text("from a lower layer")
    resp = await diff.apply(diff_api.ApplyRequest(diff=wire_desc(media_type, dgst, len(blob)),
                                                  mounts=[bind(target, "rw")]))
    assert resp.applied.media_type == mediatypes.OCI_LAYER
    assert resp.applied.digest == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert resp.applied.size == len(tar)
    assert (target / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert stat.S_IMODE(os.stat(target / "bin" / "sh").st_mode) == 0o4755
    assert os.readlink(target / "bin" / "ash") == "sh"
    assert not (target / "lib" / "old").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (overlay)")
async def test_apply_onto_an_overlay_writes_its_upper_folder(ddaemon: Daemon, stubs: Any,
                                                             tmp_path: Path) -> None:
    diff, _ = stubs
    blob = gzip.compress(layer())
    dgst = await put_blob(ddaemon, blob)
    lower, upper, work = tmp_path / "lower", tmp_path / "upper", tmp_path / "work"
    for d in (lower / "lib", upper, work):
        d.mkdir(parents=True)
    (lower / "lib" / "old").write_text("lower")
    mount = ctypes.Mount(type="overlay", source="overlay",
                         options=[f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"])
    await diff.apply(diff_api.ApplyRequest(diff=wire_desc(mediatypes.OCI_LAYER_GZIP, dgst, len(blob)),
                                           mounts=[mount], sync_fs=True))
    st = os.lstat(upper / "lib" / "old")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # an overlay whiteout
    assert (lower / "lib" / "old").exists()
    assert (upper / "etc" / "hosts").exists()


async def test_apply_errors(ddaemon: Daemon, stubs: Any, tmp_path: Path) -> None:
    diff, _ = stubs
    target = tmp_path / "t"
    target.mkdir()
    missing = "sha256:" + "0" * 64
    with pytest.raises(GRPCError) as e:
        await diff.apply(diff_api.ApplyRequest(diff=wire_desc(mediatypes.OCI_LAYER, missing, 1),
                                               mounts=[bind(target)]))
    assert e.value.status == grpclib.const.Status.NOT_FOUND
    cfg = await put_blob(ddaemon, b"{}")
    with pytest.raises(GRPCError) as e:
        await diff.apply(diff_api.ApplyRequest(diff=wire_desc(mediatypes.OCI_CONFIG, cfg, 2),
                                               mounts=[bind(target)]))
    assert e.value.status == grpclib.const.Status.UNIMPLEMENTED
    junk = await put_blob(ddaemon, b"not a tar archive, not at all" * 50)
    with pytest.raises(GRPCError) as e:
        await diff.apply(diff_api.ApplyRequest(diff=wire_desc(mediatypes.OCI_LAYER, junk, 1450),
                                               mounts=[bind(target)]))
    assert e.value.status == grpclib.const.Status.INVALID_ARGUMENT
    assert "invalid layer tar" in (e.value.message or "")
    with pytest.raises(GRPCError) as e:
        await diff.apply(diff_api.ApplyRequest(diff=wire_desc(mediatypes.OCI_LAYER, junk, 1450), mounts=[]))
    assert e.value.status == grpclib.const.Status.INVALID_ARGUMENT
    with pytest.raises(GRPCError) as e:
        await diff.apply(diff_api.ApplyRequest(mounts=[bind(target)]))
    assert e.value.status == grpclib.const.Status.INVALID_ARGUMENT


async def test_diff_writes_a_layer_and_it_applies_back(ddaemon: Daemon, stubs: Any, tmp_path: Path) -> None:
    diff, content = stubs
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "gone").write_text("gone")
    (lower / "etc" / "keep").write_text("keep")
    shutil.copytree(lower, upper, symlinks=True)
    os.unlink(upper / "etc" / "gone")
    (upper / "etc" / "new").write_text("new")
    (upper / "usr" / "bin").mkdir(parents=True)
    (upper / "usr" / "bin" / "tool").write_bytes(b"\x7fELF")
    os.symlink("../usr/bin/tool", upper / "etc" / "tool")
    os.utime(upper / "etc" / "keep", ns=(os.stat(lower / "etc" / "keep").st_atime_ns,
                                         os.stat(lower / "etc" / "keep").st_mtime_ns))

    leases = ddaemon.plugins.instance(METADATA).leases
    await leases.create("default", "diff-lease")
    leased = diff_api.DiffStub(diff.channel, metadata={**NS, "containerd-lease": "diff-lease"})
    resp = await leased.diff(diff_api.DiffRequest(left=[bind(lower, "ro")], right=[bind(upper, "ro")],
                                                  ref="commit-1", labels={"origin": "test"}))
    desc = resp.diff
    assert desc.media_type == mediatypes.OCI_LAYER_GZIP
    info = (await content.info(content_api.InfoRequest(digest=desc.digest))).info
    assert info.size == desc.size and info.labels["origin"] == "test"
    diff_id = info.labels["containerd.io/uncompressed"]
    assert any(r.id == desc.digest for r in leases.resources("default", "diff-lease"))

    blob = b"".join([r.data async for r in content.read(content_api.ReadContentRequest(digest=desc.digest))])
    with compression.decompress(io.BytesIO(blob)) as r:
        tar = r.read()
    assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        names = tf.getnames()
    assert "etc/.wh.gone" in names and "etc/keep" not in names and "usr/bin/tool" in names

    target = tmp_path / "target"
    shutil.copytree(lower, target, symlinks=True)
    applied = await diff.apply(diff_api.ApplyRequest(diff=desc, mounts=[bind(target, "rw")]))
    assert applied.applied.digest == diff_id
    assert sorted(os.listdir(target / "etc")) == ["keep", "new", "tool"]
    assert (target / "usr" / "bin" / "tool").read_bytes() == b"\x7fELF"


@pytest.mark.parametrize("media_type", [mediatypes.OCI_LAYER, mediatypes.OCI_LAYER_ZSTD])
async def test_diff_media_types_and_epoch(ddaemon: Daemon, stubs: Any, tmp_path: Path,
                                          media_type: str) -> None:
    diff, content = stubs
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "f").write_text("x")
    resp = await diff.diff(diff_api.DiffRequest(right=[bind(upper, "ro")], media_type=media_type,
                                                source_date_epoch=pb.Timestamp(seconds=1000)))
    assert resp.diff.media_type == media_type
    request = content_api.ReadContentRequest(digest=resp.diff.digest)
    blob = b"".join([r.data async for r in content.read(request)])
    with compression.decompress(io.BytesIO(blob)) as r, tarfile.open(fileobj=r, mode="r|") as tf:
        (entry,) = list(tf)
    assert entry.name == "f" and entry.mtime == 1000
    dest = tmp_path / "dest"
    dest.mkdir()
    with compression.decompress(io.BytesIO(blob)) as r:
        apply_layer(r, dest)
    assert (dest / "f").read_text() == "x"


async def test_diff_errors(stubs: Any, tmp_path: Path) -> None:
    diff, _ = stubs
    with pytest.raises(GRPCError) as e:
        await diff.diff(diff_api.DiffRequest(right=[bind(tmp_path)], media_type=mediatypes.DOCKER_LAYER_GZIP))
    assert e.value.status == grpclib.const.Status.UNIMPLEMENTED
    with pytest.raises(GRPCError) as e:
        await diff.diff(diff_api.DiffRequest(left=[bind(tmp_path)], right=[]))
    assert e.value.status == grpclib.const.Status.INVALID_ARGUMENT


async def test_leftover_temporary_mounts_are_cleaned_at_start(tmp_path: Path) -> None:
    """A killed daemon's temporary mounts (under <root>/…diff-service/tmpmounts) go at start."""
    import subprocess

    from aiocontainerd.diff.service import clean_tmp_mounts
    from aiocontainerd.mount.mounting import mount_points

    folder = tmp_path / "tmpmounts"
    left = folder / "aiocontainerd-mount-x"
    left.mkdir(parents=True)
    source = tmp_path / "src"
    source.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(left)], check=True)
    try:
        assert mount_points(folder) == [str(left)]
        await clean_tmp_mounts(folder)
        assert mount_points(folder) == []
        assert not left.exists()
    finally:
        subprocess.run(["umount", str(left)], capture_output=True)
