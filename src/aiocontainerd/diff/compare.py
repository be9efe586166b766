"""Computing a layer: the changes between two trees as an OCI changeset tar.

containerd's walking differ (``plugins/diff/walking``) on top of
``pkg/archive`` ``WriteDiff``/``ChangeWriter`` and continuity's ``fs.Changes``:

- :func:`changes` walks the *lower* and *upper* folders together in path
  order (names sorted bytewise, a folder before its content, ``/`` sorting
  before any other byte) and reports each path as added, modified, deleted
  or — for hard-linked files, which must be written with their links —
  unmodified. Two entries are the same file when they are the same inode, or
  when type and mode, owner, device number and ``security.capability`` match
  and, for non-folders, size and modification time match (times with no
  nanoseconds on either side, as tar archives truncate them, fall back to
  comparing the content, or the symlink target). A deleted folder yields one
  deletion, not one per entry below it. Without a lower folder every upper
  entry is an addition.
- With ``overlay_upper`` the upper folder is an overlayfs *upper* folder
  whose lower layers are exactly the lower tree (continuity's
  ``DiffDirChanges`` for overlayfs): only it is walked; a 0/0 character
  device is a deletion (when the lower tree has the path; a stray whiteout is
  dropped), a folder with ``trusted.overlay.opaque=y`` (or ``user.``) yields an
  opaque marker, and a folder whose size, mode and time equal the lower one's
  is skipped. ``redirect_dir``/``metacopy`` upper folders are not supported.
- :func:`write_diff` writes those changes as a tar (PAX): deletions as
  ``.wh.<name>`` empty files with time 0 (containerd ≥ 2.0), the opaque
  marker as ``.wh..wh..opq``, everything else with its owner, mode,
  modification time truncated to seconds (bounded by ``source_date_epoch``
  when given), symlink target, device numbers and ``security.capability``;
  sockets are left out; a parent folder not yet written is written before
  its first changed entry; the first changed path of a hard-linked inode
  carries the content and every other path of the inode (even unchanged
  ones) follows as a hard link to it.
- :func:`compare` is the walking differ's ``Compare``: it makes the two
  trees visible (a single bind mount is read from its source folder, other
  mounts are mounted read-only on temporary folders; an overlay upper mount
  whose lower folders are exactly the lower mounts' layers is read from its
  upper folder, see above), writes the tar compressed for the media type
  (OCI tar, ``+gzip`` — the default — or ``+zstd``) into the content store
  under ``ref`` (default: a unique one; an existing ingest of the ref is
  restarted), and commits it with the ``containerd.io/uncompressed`` label
  (the diff ID) for compressed types. Blocking work runs in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import errno
import hashlib
import io
import logging
import os
import posixpath
import stat
import tarfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Protocol

from ..errors import AlreadyExists, InvalidArgument
from ..mount import Mount
from ..remotes import mediatypes
from ..types import Descriptor
from .apply import WHITEOUT_PREFIX, _Cancelled, overlay_dirs, run_in_thread
from .compression import Compression, compressor, media_type_compression

log = logging.getLogger(__name__)

#: Content label naming a compressed blob's uncompressed digest (its diff ID).
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"
CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_CAPABILITY = "security.capability"


class ChangeKind(enum.IntEnum):
    """continuity's ChangeKind."""

    UNMODIFIED = 0
    ADD = 1
    MODIFY = 2
    DELETE = 3


def _listdir_sorted(path: str) -> list[str]:
    return sorted(os.listdir(path), key=os.fsencode)


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """``(path, lstat)`` of every entry below ``root`` in filepath.Walk order; paths
    start with ``/``; symlinks are not followed."""
    stack: list[tuple[str, Iterator[str]]] = [("", iter(_listdir_sorted(root)))]
    while stack:
        rel, it = stack[-1]
        name = next(it, None)
        if name is None:
            stack.pop()
            continue
        path = f"{rel}/{name}"
        try:
            st = os.lstat(root + path)
        except FileNotFoundError:
            continue
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            stack.append((path, iter(_listdir_sorted(root + path))))


def _dir_compare(a: str, b: str) -> int:
    """Path order of the walks: ``/`` sorts before every other byte."""
    ka = os.fsencode(a).replace(b"/", b"\x00")
    kb = os.fsencode(b).replace(b"/", b"\x00")
    return (ka > kb) - (ka < kb)


def _lgetxattr(path: str, key: str) -> bytes:
    try:
        return os.getxattr(path, key, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return b""
        raise


def _same_content(p1: str, p2: str) -> bool:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(p1, flags), "rb") as f1, open(os.open(p2, flags), "rb") as f2:
        while True:
            b1, b2 = f1.read(CHUNK), f2.read(CHUNK)
            if b1 != b2:
                return False
            if not b1:
                return True


def _same_file(p1: str, s1: os.stat_result, p2: str, s2: os.stat_result) -> bool:
    """continuity's sameFile (see the module doc)."""
    if (s1.st_dev, s1.st_ino) == (s2.st_dev, s2.st_ino):
        return True
    if (s1.st_mode, s1.st_uid, s1.st_gid, s1.st_rdev) != (s2.st_mode, s2.st_uid, s2.st_gid, s2.st_rdev):
        return False
    if _lgetxattr(p1, _CAPABILITY) != _lgetxattr(p2, _CAPABILITY):
        return False
    if not stat.S_ISDIR(s1.st_mode):
        if s1.st_size != s2.st_size:
            return False
        sec1, ns1 = divmod(s1.st_mtime_ns, 1_000_000_000)
        sec2, ns2 = divmod(s2.st_mtime_ns, 1_000_000_000)
        if sec1 != sec2:
            return False
        if ns1 == 0 and ns2 == 0:
            if stat.S_ISLNK(s1.st_mode):
                return os.readlink(p1) == os.readlink(p2)
            if s1.st_size == 0 or not stat.S_ISREG(s1.st_mode):
                return True
            return _same_content(p1, p2)
        if ns1 != ns2:
            return False
    return True


def _is_linked(st: os.stat_result) -> bool:
    return not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1


Change = tuple[ChangeKind, str, "os.stat_result | None"]


class Writable(Protocol):
    """Where a diff is written: anything with a blocking ``write``."""

    def write(self, data: Any, /) -> Any: ...


def _double_walk(lower: str, upper: str) -> Iterator[Change]:
    ia, ib = _walk(lower), _walk(upper)
    f1 = next(ia, None)
    f2 = next(ib, None)
    rmdir = ""
    while f1 is not None or f2 is not None:
        if f1 is None:
            kind, path = ChangeKind.ADD, f2[0]  # type: ignore[index]
        elif f2 is None:
            kind, path = ChangeKind.DELETE, f1[0]
        else:
            c = _dir_compare(f1[0], f2[0])
            kind, path = ((ChangeKind.DELETE, f1[0]) if c < 0 else
                          (ChangeKind.ADD, f2[0]) if c > 0 else (ChangeKind.MODIFY, f2[0]))
        info: os.stat_result | None = None
        if kind == ChangeKind.ADD:
            rmdir = ""
            info = f2[1]  # type: ignore[index]
            f2 = next(ib, None)
        elif kind == ChangeKind.DELETE:
            assert f1 is not None
            if rmdir and f1[0].startswith(rmdir):
                f1 = next(ia, None)
                continue
            rmdir = f1[0] + "/" if stat.S_ISDIR(f1[1].st_mode) else ""
            f1 = next(ia, None)
        else:
            assert f1 is not None and f2 is not None
            same = _same_file(lower + f1[0], f1[1], upper + f2[0], f2[1])
            if stat.S_ISDIR(f1[1].st_mode) and not stat.S_ISDIR(f2[1].st_mode):
                rmdir = f1[0] + "/"
            else:
                rmdir = ""
            info = f2[1]
            f1 = next(ia, None)
            f2 = next(ib, None)
            if same:
                if not _is_linked(info):
                    continue
                kind = ChangeKind.UNMODIFIED
        yield kind, path, info


def _opaque_value(path: str) -> bytes:
    for key in ("trusted.overlay.opaque", "user.overlay.opaque"):
        value = _lgetxattr(path, key)
        if value:
            return value
    return b""


def _same_fs_time(a: int, b: int) -> bool:
    if a == b:
        return True
    sa, na = divmod(a, 1_000_000_000)
    sb, nb = divmod(b, 1_000_000_000)
    return sa == sb and (na == 0 or nb == 0)


def _overlay_walk(base: str | None, upper: str) -> Iterator[Change]:
    changed_dirs: set[str] = set()
    for path, st in _walk(upper):
        deleted = False
        if stat.S_ISCHR(st.st_mode):
            deleted = st.st_rdev == 0
        elif stat.S_ISDIR(st.st_mode) and _opaque_value(upper + path) == b"y":
            yield ChangeKind.DELETE, posixpath.join(path, WHITEOUT_PREFIX + ".opq"), None
        base_st: os.stat_result | None = None
        if base is not None:
            try:
                base_st = os.lstat(base + path)
            except (FileNotFoundError, NotADirectoryError):
                base_st = None
        if deleted and base_st is None:
            continue  # a whiteout with nothing below it to hide
        if deleted:
            kind = ChangeKind.DELETE
        elif base_st is None:
            kind = ChangeKind.ADD
        else:
            if (stat.S_ISDIR(base_st.st_mode) and stat.S_ISDIR(st.st_mode)
                    and st.st_size == base_st.st_size and st.st_mode == base_st.st_mode
                    and _same_fs_time(st.st_mtime_ns, base_st.st_mtime_ns)):
                continue
            kind = ChangeKind.MODIFY
        if stat.S_ISDIR(st.st_mode):
            changed_dirs.add(path)
        if kind in (ChangeKind.ADD, ChangeKind.DELETE):
            parent = posixpath.dirname(path)
            if parent not in changed_dirs and parent != "/":
                yield ChangeKind.MODIFY, parent, os.stat(upper + parent)
                changed_dirs.add(parent)
        yield kind, path, None if kind == ChangeKind.DELETE else st


def changes(lower: str | os.PathLike[str] | None, upper: str | os.PathLike[str], *,
            overlay_upper: bool = False) -> Iterator[Change]:
    """The changes from ``lower`` (None: an empty tree) to ``upper``, in apply order:
    ``(kind, path, lstat of the upper entry or None for deletions)`` with paths
    starting at ``/`` (see the module doc)."""
    up = os.fspath(upper).rstrip("/") or "/"
    low = None if lower is None else (os.fspath(lower).rstrip("/") or "/")
    if overlay_upper:
        return _overlay_walk(low, up)
    if low is None:
        return ((ChangeKind.ADD, p, st) for p, st in _walk(up))
    return _double_walk(low, up)


class ChangeWriter:
    """Writes changes as an OCI layer tar to a binary writer (containerd's ChangeWriter)."""

    def __init__(self, out: Writable, source: str | os.PathLike[str], *,
                 mod_time_upper_bound_ns: int | None = None,
                 cancel: threading.Event | None = None) -> None:
        self._out = out
        self._source = os.fspath(source).rstrip("/") or "/"
        self._bound = mod_time_upper_bound_ns
        self._cancel = cancel
        self._inode_src: dict[tuple[int, int], str] = {}
        self._inode_refs: dict[tuple[int, int], list[str]] = {}
        self._added_dirs: set[str] = set()

    def _full(self, rel: str) -> str:
        return self._source + "/" + rel.lstrip("/") if rel.strip("/") else self._source

    def _write_header(self, ti: tarfile.TarInfo) -> None:
        self._out.write(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def handle(self, kind: ChangeKind, path: str, st: os.stat_result | None) -> None:
        """Write the entry (or whiteout) for one change."""
        if self._cancel is not None and self._cancel.is_set():
            raise _Cancelled
        if kind == ChangeKind.DELETE:
            directory, base = posixpath.split(path)
            ti = tarfile.TarInfo(posixpath.join(directory, WHITEOUT_PREFIX + base).lstrip("/"))
            ti.type, ti.size, ti.mtime, ti.mode = tarfile.REGTYPE, 0, 0, 0
            ti.uname = ti.gname = ""
            self._include_parents(ti)
            self._write_header(ti)
            return
        assert st is not None
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            return
        source = self._full(path)
        name = path.lstrip("/")
        ti = tarfile.TarInfo(name)
        ti.mode = stat.S_IMODE(mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        mtime_ns = st.st_mtime_ns
        if self._bound is not None and mtime_ns > self._bound:
            mtime_ns = self._bound
        ti.mtime = mtime_ns // 1_000_000_000
        ti.size = 0
        if stat.S_ISREG(mode):
            ti.type, ti.size = tarfile.REGTYPE, st.st_size
        elif stat.S_ISDIR(mode):
            ti.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(source)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            ti.type = tarfile.FIFOTYPE
        else:
            raise InvalidArgument(f"unsupported file type {oct(stat.S_IFMT(mode))} at {path}")

        additional: list[str] = []
        if _is_linked(st):
            inode = (st.st_dev, st.st_ino)
            if inode in self._inode_src:
                ti.type, ti.linkname, ti.size = tarfile.LNKTYPE, self._inode_src[inode], 0
            else:
                if kind == ChangeKind.UNMODIFIED:
                    self._inode_refs.setdefault(inode, []).append(name)
                    return
                self._inode_src[inode] = name
                additional = self._inode_refs.pop(inode, [])
        elif kind == ChangeKind.UNMODIFIED:
            return

        capability = _lgetxattr(source, _CAPABILITY)
        if capability:
            ti.pax_headers = {"SCHILY.xattr." + _CAPABILITY: capability.decode("utf-8", "surrogateescape")}

        self._include_parents(ti)
        self._write_header(ti)
        if ti.type == tarfile.REGTYPE and ti.size > 0:
            self._copy(source, ti.size)
        for extra in additional:
            link = tarfile.TarInfo(extra)
            for field in ("mode", "uid", "gid", "mtime", "uname", "gname", "pax_headers"):
                setattr(link, field, getattr(ti, field))
            link.type, link.linkname, link.size = tarfile.LNKTYPE, name, 0
            self._include_parents(link)
            self._write_header(link)

    def _copy(self, source: str, size: int) -> None:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0) as f:
            left = size
            while left > 0:
                if self._cancel is not None and self._cancel.is_set():
                    raise _Cancelled
                data = f.read(min(CHUNK, left))
                if not data:
                    break
                self._out.write(data)
                left -= len(data)
            if left or f.read(1):
                raise OSError(errno.EIO, f"short write copying file: {source} changed size while "
                                         "the diff was written")
        pad = -size % _BLOCK
        if pad:
            self._out.write(b"\0" * pad)

    def _include_parents(self, ti: tarfile.TarInfo) -> None:
        name = ti.name.rstrip("/")
        parent = posixpath.dirname(name)
        if name and parent and parent not in self._added_dirs:
            self._added_dirs.add(parent)
            self.handle(ChangeKind.MODIFY, parent, os.stat(self._full(parent)))
        if ti.type == tarfile.DIRTYPE:
            self._added_dirs.add(name)

    def close(self) -> None:
        """Write the end of the archive (two zero blocks)."""
        self._out.write(b"\0" * (2 * _BLOCK))


def write_diff(out: Writable, lower: str | os.PathLike[str] | None, upper: str | os.PathLike[str], *,
               overlay_upper: bool = False, source_date_epoch_ns: int | None = None,
               cancel: threading.Event | None = None) -> None:
    """Write the changes from ``lower`` to ``upper`` as an OCI layer tar to ``out``.

    Blocking (use a worker thread). ``source_date_epoch_ns`` bounds entry
    times (reproducible builds); whiteouts always carry time 0.
    """
    cw = ChangeWriter(out, upper, mod_time_upper_bound_ns=source_date_epoch_ns, cancel=cancel)
    for kind, path, st in changes(lower, upper, overlay_upper=overlay_upper):
        cw.handle(kind, path, st)
    cw.close()


# -- into the content store -----------------------------------------------------------------------

class _HashWriter(io.RawIOBase):
    """Passes writes on to ``dest`` and hashes them (the diff ID of the uncompressed tar)."""

    def __init__(self, dest: Writable) -> None:
        self._dest = dest
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.hash.update(b)
        self._dest.write(b)
        n = len(memoryview(b).cast("B"))
        self.size += n
        return n


class _LoopSink(io.RawIOBase):
    """A blocking writer for a worker thread feeding an async content writer on ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: Any) -> None:
        self._loop = loop
        self._writer = writer
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._buf += b
        if len(self._buf) >= CHUNK:
            self._send()
        return len(memoryview(b).cast("B"))

    def _send(self) -> None:
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            asyncio.run_coroutine_threadsafe(self._writer.write(data), self._loop).result()

    def flush(self) -> None:
        self._send()


def unique_ref() -> str:
    """A content ingest ref for a diff nobody named (containerd's uniqueRef)."""
    return f"{time.time_ns()}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def _is_bind(m: Mount) -> bool:
    return m.type == "bind" and not m.target


def _layers(mounts: Sequence[Mount]) -> list[str] | None:
    """The folders, top first, a mount list shows merged (None: cannot tell)."""
    if not mounts:
        return []
    if len(mounts) != 1 or mounts[0].target:
        return None
    m = mounts[0]
    if m.type == "bind":
        return [m.source]
    if m.type == "overlay":
        upper, lowers = overlay_dirs(m.options)
        return ([upper] if upper else []) + lowers
    return None


def overlay_upper_dir(lower: Sequence[Mount], upper: Sequence[Mount]) -> str:
    """The upper folder to walk alone when ``upper`` is one overlay mount with an
    ``upperdir`` over exactly the layers ``lower`` shows; ``""`` otherwise."""
    if len(upper) != 1 or upper[0].type != "overlay" or upper[0].target:
        return ""
    up, lowers = overlay_dirs(upper[0].options)
    if not up:
        return ""
    below = _layers(lower)
    if below is None or [os.path.normpath(p) for p in below] != [os.path.normpath(p) for p in lowers]:
        return ""
    return up


@contextlib.asynccontextmanager
async def _view(mounts: Sequence[Mount],
                tmp_root: str | os.PathLike[str] | None = None) -> AsyncIterator[str | None]:
    """A folder showing ``mounts`` read-only for the body (None for no mounts)."""
    if not mounts:
        yield None
        return
    if len(mounts) == 1 and _is_bind(mounts[0]):
        yield mounts[0].source
        return
    from ..mount.mounting import temp_mount

    async with temp_mount(mounts, read_only=True, root=tmp_root) as root:
        yield os.fspath(root)


async def compare(content: Any, namespace: str, lower: Sequence[Mount], upper: Sequence[Mount], *,
                  media_type: str = "", ref: str = "", labels: Mapping[str, str] | None = None,
                  lease: str | None = None, source_date_epoch_ns: int | None = None,
                  tmp_root: str | os.PathLike[str] | None = None) -> tuple[Descriptor, str]:
    """Write the diff of ``lower`` → ``upper`` into ``content`` (a namespaced
    :class:`~aiocontainerd.metadata.content.ContentStore`); returns ``(descriptor, diff_id)``.

    ``media_type`` (default ``…tar+gzip``) must be an OCI layer tar, ``+gzip``
    or ``+zstd`` (else Unimplemented). ``labels`` are set on the blob, with
    ``containerd.io/uncompressed`` for compressed types. Raises Unimplemented,
    InvalidArgument, NotFound (lease), OSError (mounting), ContainerdError.
    """
    media_type = media_type or mediatypes.OCI_LAYER_GZIP
    comp = media_type_compression(media_type)
    labels = dict(labels or {})
    upper_dir = overlay_upper_dir(lower, upper)
    new_ref = not ref
    ref = ref or unique_ref()
    loop = asyncio.get_running_loop()

    async with contextlib.AsyncExitStack() as stack:
        lower_root = await stack.enter_async_context(_view(lower, tmp_root))
        if upper_dir:
            upper_root, overlay = upper_dir, True
        else:
            view = await stack.enter_async_context(_view(upper, tmp_root))
            upper_root, overlay = (view if view is not None else ""), False
        if not upper_root:
            raise InvalidArgument("no upper mounts to compute a diff from")
        writer = await content.writer(namespace, ref, lease=lease)
        committed = False
        try:
            if not new_ref and writer.offset:
                await writer.truncate(0)

            def work(cancel: threading.Event) -> str:
                sink = _LoopSink(loop, writer)
                packed = compressor(sink, comp)
                try:
                    hashed = _HashWriter(packed)
                    write_diff(hashed, lower_root, upper_root, overlay_upper=overlay,
                               source_date_epoch_ns=source_date_epoch_ns, cancel=cancel)
                finally:
                    packed.close()  # stops the compressor's threads, on error too
                sink.flush()
                return "sha256:" + hashed.hash.hexdigest()

            diff_id = await run_in_thread(work)
            if comp is not Compression.UNCOMPRESSED:
                labels[LABEL_UNCOMPRESSED] = diff_id
            digest = writer.digest()
            try:
                info = await writer.commit(0, digest, labels)
            except AlreadyExists:
                info = content.info(namespace, digest)
            committed = True
        finally:
            if not committed:
                writer.close()
                if new_ref:
                    with contextlib.suppress(Exception):
                        await content.abort(namespace, ref)
    if comp is not Compression.UNCOMPRESSED and LABEL_UNCOMPRESSED not in info.labels:
        info.labels[LABEL_UNCOMPRESSED] = diff_id
        info = await content.update(namespace, info, [f"labels.{LABEL_UNCOMPRESSED}"])
    return Descriptor(media_type, info.digest, info.size), diff_id


__all__ = ["LABEL_UNCOMPRESSED", "ChangeKind", "ChangeWriter", "changes", "compare",
           "overlay_upper_dir", "unique_ref", "write_diff"]
