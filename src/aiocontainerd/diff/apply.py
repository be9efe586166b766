"""Applying an OCI layer (a changeset tar) onto a directory tree, safely.

:func:`apply_layer` is containerd's ``archive.Apply`` (``pkg/archive/tar.go``):
a *blocking* function for a worker thread that streams the uncompressed tar
once (never buffering it), hashes every byte of it (the layer's *diff ID*,
trailing bytes after the end-of-archive blocks included) and applies the
entries in order, following the OCI image-spec changeset rules (layer.md,
"Applying Changesets"):

- ``.wh.<name>`` removes ``<name>`` (and everything below it) from the tree;
  with ``whiteouts="overlay"`` (applying straight into an overlayfs upper
  folder) it becomes an overlay whiteout instead, a 0/0 character device
  owned by the entry's uid/gid;
- ``.wh..wh..opq`` makes its folder opaque: every entry below it that this
  layer did not itself unpack is removed (the marker may come before or after
  the layer's own entries), or, with overlay whiteouts, the folder gets the
  ``<prefix>.overlay.opaque=y`` xattr (``trusted`` or, for ``userxattr``
  overlays, ``user``); a whiteout whose name is empty, ``.`` or ``..`` is an
  invalid archive;
- any other entry replaces what is at its path, except that a folder entry on
  an existing folder only updates the folder's metadata (merge);
- regular files, folders, symlinks, hard links, character and block devices
  and FIFOs are created; then, as containerd, ownership (``lchown``, unless
  ``same_owner=False``), PAX ``SCHILY.xattr.*`` attributes, the mode with its
  setuid/setgid/sticky bits (after the chown, which clears them; symlinks are
  never chmod-ed), and access/modification times (``lutimes``; nanoseconds
  from PAX; times before the epoch become the epoch; folders get theirs after
  the whole layer so their content does not touch them);
- missing parent folders are created 0755, or, given ``parents`` (the lower
  layers of an overlay), with the owner, mode, times and non-``trusted``
  xattrs of the same folder in the first lower layer that has it;
- xattrs: ``trusted.*`` (and, ours, ``user.overlay.*``) from an archive are
  refused with a warning, as are attributes the filesystem does not support
  (ENOTSUP) and ``user.*`` on anything but files and folders (EPERM);
- device nodes that cannot be made (in a user namespace, or EPERM) are skipped
  with a warning; device numbers beyond 32 bits are an invalid archive;
- the root itself (``./``, ``/``, ``..``) is never replaced: such entries are ignored.

Safety: every path is resolved *inside* ``root``, with ``root`` as ``/``
(containerd's ``fs.RootPath`` semantics, also the kernel's
``RESOLVE_IN_ROOT``): a symlink met while resolving a parent folder is read
and interpreted by this module, an absolute target restarting at ``root`` and
``..`` stopping at ``root``; the final component of a path is never followed.
Resolution is *openat-style*: it walks one component at a time from an
``O_PATH`` descriptor of ``root``, opening each folder with
``O_PATH|O_DIRECTORY|O_NOFOLLOW`` relative to its parent's descriptor, and
every change is a ``*at`` call (``mkdirat``, ``openat(O_CREAT|O_EXCL|O_NOFOLLOW)``,
``symlinkat``, ``linkat`` without ``AT_SYMLINK_FOLLOW``, ``mknodat``,
``fchownat``/``utimensat`` with ``AT_SYMLINK_NOFOLLOW``, ``unlinkat``) on a
single name relative to a descriptor; xattrs go through
``/proc/self/fd/<parent>/<name>`` with ``lsetxattr``. A regular file gets its
owner, xattrs, mode and times through the descriptor it was created and
written with (``fchown``, ``fsetxattr``, ``fchmod``, ``futimens``). No path with a ``/`` or
``..`` from the archive ever reaches the kernel, so nothing outside ``root``
is created, modified or removed — whatever symlinks (absolute, relative,
chained, dangling), hard links, whiteouts or ``..`` names a layer holds.
Hard link targets are resolved the same way (inside ``root``), and linking a
symlink links the symlink itself. A folder swapped for a symlink between the
check and the open makes the open fail (``O_NOFOLLOW``) rather than escape;
the tree is otherwise assumed to have no concurrent writer while a layer is
applied (as containerd assumes).

Errors: a malformed archive (bad header, truncated stream, unknown entry
type, invalid whiteout name, device number out of range, hard link to the
root) raises :class:`~aiocontainerd.errors.InvalidArgument`; a filesystem
failure raises :class:`~aiocontainerd.errors.ContainerdError` (gRPC UNKNOWN,
as containerd) naming the entry and the system error.

:func:`apply` is the async side (containerd's ``core/diff/apply``): it picks
where to apply from the mounts — a single overlay mount with an ``upperdir``
is applied straight into that folder with overlay whiteouts (its
``lowerdir`` folders as ``parents``), as ``apply_linux.go`` does outside a user
namespace; a single writable bind mount is applied into its source folder;
anything else is mounted on a temporary folder (:func:`~aiocontainerd.mount.mounting.temp_mount`)
— and runs :func:`apply_layer` in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import io
import logging
import os
import re
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from ..errors import ContainerdError, InvalidArgument
from ..mount import Mount

log = logging.getLogger(__name__)

Whiteouts = Literal["delete", "overlay"]
XattrPrefix = Literal["trusted", "user"]

#: ``.wh.<name>`` marks ``<name>`` deleted (OCI layer.md "Whiteouts").
WHITEOUT_PREFIX = ".wh."
#: ``.wh..wh.`` starts whiteout names with a special meaning.
WHITEOUT_META_PREFIX = WHITEOUT_PREFIX + WHITEOUT_PREFIX
#: The opaque-folder marker.
WHITEOUT_OPAQUE = WHITEOUT_META_PREFIX + ".opq"
#: PAX record prefix carrying extended attributes.
PAX_XATTR = "SCHILY.xattr."
#: Symlinks followed while resolving one path before giving up (ELOOP), as containerd.
MAX_SYMLINKS = 255
#: Bytes copied per read/write of file content, and read-ahead of the tar stream.
CHUNK = 1 << 20

_O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# tarfile's header errors (CPython has them since 3.2; typeshed does not list them)
_EOF: type[Exception] = tarfile.EOFHeaderError  # type: ignore[attr-defined]  # a zero block
_EMPTY: type[Exception] = tarfile.EmptyHeaderError  # type: ignore[attr-defined]  # no bytes left
_TRUNCATED: type[Exception] = tarfile.TruncatedHeaderError  # type: ignore[attr-defined]
_MAX_TIME_NS = (1 << 63) - 1


class _Cancelled(Exception):
    """Raised inside the worker thread when the async caller was cancelled."""


def clean(path: str) -> list[str]:
    """The components of ``path`` cleaned as if it were absolute (``/`` + path):
    empty and ``.`` parts dropped, ``..`` removing the previous part and
    stopping at the top. ``[]`` is the root itself."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return out


def _clean_parts(parts: Sequence[str]) -> list[str]:
    return clean("/".join(parts))


class _Dir:
    """An open folder inside the tree: an ``O_PATH`` descriptor and its resolved path."""

    __slots__ = ("fd", "owned", "rel")

    def __init__(self, fd: int, rel: tuple[str, ...], owned: bool) -> None:
        self.fd = fd
        self.rel = rel
        self.owned = owned

    def close(self) -> None:
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> _Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Tree:
    """Root-bounded, descriptor-based resolution under one root folder (see the module doc)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)
        self.fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def root_dir(self) -> _Dir:
        return _Dir(self.fd, (), owned=False)

    def resolve(self, comps: Sequence[str], *, create: bool = False,
                on_create: Callable[[int, str, tuple[str, ...]], None] | None = None) -> _Dir:
        """Open the folder at ``comps`` (cleaned components), following symlinks inside the root.

        Missing folders are created (mode 0755, then ``on_create(parent_fd, name,
        rel)``) when ``create``, else FileNotFoundError. A component that is not a
        folder raises NotADirectoryError; more than :data:`MAX_SYMLINKS` links, ELOOP.
        """
        parts = list(comps)
        links = 0
        while True:
            opened: list[int] = []
            cur = self.fd
            restart: list[str] | None = None
            try:
                i = 0
                while i < len(parts):
                    name = parts[i]
                    try:  # a folder, the common case (O_NOFOLLOW|O_DIRECTORY: never a symlink)
                        fd = os.open(name, _O_DIR, dir_fd=cur)
                    except OSError:
                        pass  # missing, a symlink or not a folder: look below
                    else:
                        opened.append(fd)
                        cur = fd
                        i += 1
                        continue
                    try:
                        st: os.stat_result | None = os.stat(name, dir_fd=cur, follow_symlinks=False)
                    except FileNotFoundError:
                        if not create:
                            raise
                        _mkdir(cur, name, 0o755)
                        if on_create is not None:
                            on_create(cur, name, tuple(parts[:i + 1]))
                        st = None
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        links += 1
                        if links > MAX_SYMLINKS:
                            raise OSError(errno.ELOOP, "too many links", "/".join(parts[:i + 1]))
                        target = os.readlink(name, dir_fd=cur)
                        base = [] if target.startswith("/") else parts[:i]
                        restart = _clean_parts([*base, target]) + parts[i + 1:]
                        break
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        raise NotADirectoryError(errno.ENOTDIR, "not a directory",
                                                 "/".join(parts[:i + 1]))
                    fd = os.open(name, _O_DIR, dir_fd=cur)
                    opened.append(fd)
                    cur = fd
                    i += 1
                if restart is None:
                    result = _Dir(cur, tuple(parts), owned=bool(opened))
                    opened = opened[:-1]
                    return result
            finally:
                for fd in opened:
                    os.close(fd)
            parts = restart


def root_path(root: str | os.PathLike[str], path: str) -> Path:
    """``path`` joined to ``root`` with every symlink (the last one too) evaluated
    inside ``root``, as containerd's ``fs.RootPath``: absolute targets restart at
    ``root``, ``..`` stops there, missing components are taken as they are.

    For inspection (tests, tools): it reads the tree with ``lstat``/``readlink``
    and returns a path string, which is only as safe as the tree is still.
    """
    base = os.fspath(root)
    pending = clean(path)
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        candidate = os.path.join(base, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, "too many links", candidate)
        target = os.readlink(candidate)
        prefix = [] if target.startswith("/") else resolved
        merged = _clean_parts([*prefix, target])
        resolved, pending = [], merged + pending
    return Path(base, *resolved)


def _mkdir(dir_fd: int, name: str, mode: int) -> None:
    """mkdirat then an explicit chmod (the umask must not narrow the mode)."""
    os.mkdir(name, mode, dir_fd=dir_fd)
    os.chmod(name, mode, dir_fd=dir_fd)  # just made: a folder, not a symlink


def _remove_all(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd`` and, for a folder, everything below it; never follows
    a symlink (iterative, one descriptor per level). Absent: nothing to do."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    stack: list[tuple[int, Iterator[str]]] = [(top, iter(os.listdir(top)))]
    names: list[str] = []
    try:
        while stack:
            fd, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                os.close(fd)
                if names:
                    os.rmdir(names.pop(), dir_fd=stack[-1][0])
                continue
            try:
                cst = os.stat(child, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(cst.st_mode):
                sub = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
                stack.append((sub, iter(os.listdir(sub))))
                names.append(child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


_PROC_FD = "/proc/self/fd"


def _proc_available() -> bool:
    return os.path.isdir(_PROC_FD)


def _xattr_path(dir_fd: int, name: str | None) -> str:
    """A path naming ``name`` in the folder ``dir_fd`` (or the folder itself) through
    /proc, for the xattr calls that take no descriptor-relative form."""
    return f"{_PROC_FD}/{dir_fd}" if name is None else f"{_PROC_FD}/{dir_fd}/{name}"


def _setxattr(dir_fd: int, name: str | None, key: str, value: bytes, flags: int = 0) -> None:
    """lsetxattr of ``name`` in ``dir_fd`` (``None``: the folder itself), never following it."""
    if _proc_available():
        os.setxattr(_xattr_path(dir_fd, name), key, value, flags, follow_symlinks=name is None)
        return
    # no /proc: files and folders through a real descriptor, anything else unsupported
    if name is None:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    else:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise OSError(errno.ENOTSUP, "xattrs need /proc for this file type", name)
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.setxattr(fd, key, value, flags)
    finally:
        os.close(fd)


def _listxattr(dir_fd: int) -> list[str]:
    if _proc_available():
        return os.listxattr(_xattr_path(dir_fd, None))
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listxattr(fd)
    finally:
        os.close(fd)


def _getxattr(dir_fd: int, key: str) -> bytes:
    if _proc_available():
        return os.getxattr(_xattr_path(dir_fd, None), key)
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.getxattr(fd, key)
    finally:
        os.close(fd)


def _running_in_userns() -> bool:
    from ..mount.mounting import running_in_userns

    return running_in_userns()


_DECIMAL_TIME = re.compile(r"([+-]?)(\d*)(?:\.(\d*))?")


def _pax_time_ns(value: str | None) -> int | None:
    """A PAX time record (``seconds[.fraction]``) in nanoseconds, exactly (digits past the
    ninth truncated toward zero); None if absent/bad."""
    if not value:
        return None
    m = _DECIMAL_TIME.fullmatch(value.strip())
    if m is None or not (m.group(2) or m.group(3)):
        return None
    sign, whole, frac = m.groups()
    ns = int(whole or 0) * 1_000_000_000 + int(((frac or "") + "000000000")[:9])
    return -ns if sign == "-" else ns


def _bound(ns: int) -> int:
    """containerd's boundTime: times before the epoch or past the 64-bit limit become the epoch."""
    return ns if 0 <= ns <= _MAX_TIME_NS else 0


def _entry_times(ti: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns for an entry: atime is the later of the two (containerd's latestTime)."""
    mtime = _pax_time_ns(ti.pax_headers.get("mtime"))
    if mtime is None:
        mtime = (ti.mtime * 1_000_000_000 if isinstance(ti.mtime, int)
                 else _pax_time_ns(repr(ti.mtime)) or int(ti.mtime * 1_000_000_000))
    atime = _pax_time_ns(ti.pax_headers.get("atime"))
    if atime is None or atime < mtime:
        atime = mtime
    return _bound(atime), _bound(mtime)


class _HashingReader(io.RawIOBase):
    """Reads ``raw``, hashing and counting every byte (the diff ID is the sha256 of it all).

    A raw stream: :func:`apply_layer` reads it through an :class:`io.BufferedReader`,
    whose read-ahead is hashed here as it is read, so the digest covers every byte
    taken from ``raw`` whatever the tar reader consumed of it."""

    def __init__(self, raw: IO[bytes], cancel: threading.Event | None) -> None:
        super().__init__()
        self._raw = raw
        self._cancel = cancel
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._cancel is not None and self._cancel.is_set():
            raise _Cancelled
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        if not data:
            return 0
        n = len(data)
        view[:n] = data
        self.hash.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever follows the end of the archive."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _tarinfo_class(errors_seen: list[BaseException]) -> type[tarfile.TarInfo]:
    """A TarInfo that records the header error which ended the archive, so a clean
    end (zero block, or no more bytes) can be told from garbage or truncation."""

    class _Info(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tarfile_: tarfile.TarFile) -> Any:
            try:
                return super().fromtarfile(tarfile_)
            except tarfile.HeaderError as e:
                errors_seen.append(e)
                raise

    return _Info


class _Applier:
    """The state of one :func:`apply_layer` call."""

    def __init__(self, root: str | os.PathLike[str], *, whiteouts: Whiteouts, xattr_prefix: XattrPrefix,
                 parents: Sequence[str | os.PathLike[str]], same_owner: bool,
                 cancel: threading.Event | None) -> None:
        if whiteouts not in ("delete", "overlay"):
            raise InvalidArgument(f"whiteouts must be 'delete' or 'overlay', not {whiteouts!r}")
        if xattr_prefix not in ("trusted", "user"):
            raise InvalidArgument(f"xattr_prefix must be 'trusted' or 'user', not {xattr_prefix!r}")
        self.tree = _Tree(root)
        self.whiteouts = whiteouts
        self.opaque_xattr = f"{xattr_prefix}.overlay.opaque"
        self.parent_paths = [os.fspath(p) for p in parents]
        self._parents: list[_Tree] | None = None
        self.same_owner = same_owner
        self.cancel = cancel
        self.unpacked: set[tuple[str, ...]] = set()
        self.dirs: list[tuple[tuple[str, ...], int, int]] = []
        self._cached: _Dir | None = None
        self._cached_key: tuple[str, ...] = ()
        self._cache_valid = False
        self._userns: bool | None = None

    def close(self) -> None:
        if self._cached is not None:
            self._cached.close()
            self._cached = None
        for t in self._parents or ():
            t.close()
        self.tree.close()

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _Cancelled

    # -- parents ----------------------------------------------------------------------------

    def _parent(self, comps: list[str]) -> _Dir:
        """The (created if missing) parent folder, cached until something is removed."""
        key = tuple(comps)
        if self._cached is not None:
            if self._cache_valid and self._cached_key == key:
                return self._cached
            self._cached.close()
            self._cached = None
        if not comps:
            d = self.tree.root_dir()
        else:
            d = self.tree.resolve(comps, create=True, on_create=self._copy_parent_info)
        self._cached, self._cached_key, self._cache_valid = d, key, True
        return d

    def _invalidate(self) -> None:
        """Something was removed: parent resolutions may differ now (the descriptor stays
        open for the entry in progress and is closed at the next lookup)."""
        self._cache_valid = False

    def _copy_parent_info(self, dir_fd: int, name: str, rel: tuple[str, ...]) -> None:
        """mkparent's inheritance: give a folder created for a parent the attributes of the
        same folder in the first lower layer that has one (containerd's copyDirInfo and
        copyUpXAttrs); a lower layer with a non-folder there stops the search."""
        if not self.parent_paths:
            return
        if self._parents is None:
            self._parents = [_Tree(p) for p in self.parent_paths]
        for lower in self._parents:
            try:
                src = lower.resolve(list(rel))
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                break
            with src:
                st = os.fstat(src.fd)
                try:
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=dir_fd, follow_symlinks=False)
                except PermissionError:
                    mine = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid):
                        raise
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)
                os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dir_fd,
                         follow_symlinks=False)
                self._copy_up_xattrs(src.fd, dir_fd, name)
            return
        log.debug("parent directory not found in lower layers: default permissions (0755) used",
                  extra={"fields": {"path": "/".join(rel)}})

    def _copy_up_xattrs(self, src_fd: int, dir_fd: int, name: str) -> None:
        try:
            keys = _listxattr(src_fd)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.ENODATA):
                return
            raise
        for key in keys:
            if key.startswith("trusted."):
                continue
            try:
                value = _getxattr(src_fd, key)
                _setxattr(dir_fd, name, key, value, os.XATTR_CREATE)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.ENODATA, errno.EEXIST):
                    raise

    # -- entries ----------------------------------------------------------------------------

    def entry(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        """Apply one archive entry (see the module doc for the rules)."""
        name = ti.name
        comps = clean(name)
        if not comps:
            log.debug("file ignored: resolved to root", extra={"fields": {"name": name}})
            return
        if (ti.ischr() or ti.isblk()) and self._in_userns():
            log.warning("file ignored: device nodes cannot be created in a user namespace",
                        extra={"fields": {"name": name}})
            return
        parent = self._parent(comps[:-1])
        base = comps[-1]
        if base == WHITEOUT_OPAQUE:
            self._opaque(parent)
            return
        if base.startswith(WHITEOUT_PREFIX):
            original = base[len(WHITEOUT_PREFIX):]
            if original in ("", ".", ".."):
                raise InvalidArgument(f"invalid whiteout name {base!r} in {name!r}: invalid archive")
            self._whiteout(parent, original, ti)
            return
        if ti.isreg():
            self._regular(tf, ti, parent, base)
            return
        if ti.isdir() or ti.issym():
            # the common types: create first, and look at what is there only if that fails
            existing: os.stat_result | None = None
            if not self._create_new(ti, parent, base):
                existing = os.stat(base, dir_fd=parent.fd, follow_symlinks=False)
                if not (stat.S_ISDIR(existing.st_mode) and ti.isdir()):
                    self._replace(parent, base)
                    existing = None
                    self._create(tf, ti, parent, base, None)
            self._metadata(ti, parent, base, is_link=ti.issym())
            return
        try:
            existing = os.stat(base, dir_fd=parent.fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            self._replace(parent, base)
            existing = None
        if not self._create(tf, ti, parent, base, existing):
            return
        # a hard link to a symlink is a symlink: look before chmod-ing
        is_link = ti.islnk() and stat.S_ISLNK(os.stat(base, dir_fd=parent.fd, follow_symlinks=False).st_mode)
        self._metadata(ti, parent, base, is_link=is_link)

    def _replace(self, parent: _Dir, base: str) -> None:
        """Remove what is at ``base`` (an entry replaces it)."""
        _remove_all(parent.fd, base)
        self._invalidate()

    def _create_new(self, ti: tarfile.TarInfo, parent: _Dir, base: str) -> bool:
        """mkdirat/symlinkat of a folder or symlink entry; False if the name exists."""
        try:
            if ti.isdir():
                os.mkdir(base, ti.mode & 0o7777, dir_fd=parent.fd)  # mode set exactly later
            else:
                os.symlink(ti.linkname, base, dir_fd=parent.fd)
        except FileExistsError:
            return False
        return True

    def _chown_error(self, ti: tarfile.TarInfo, e: OSError) -> OSError:
        return OSError(e.errno, f"failed to Lchown for UID {ti.uid}, GID {ti.gid}: {e.strerror}")

    def _metadata(self, ti: tarfile.TarInfo, parent: _Dir, base: str, *, is_link: bool) -> None:
        """Owner, xattrs, mode (not on a symlink), times of a made entry, in that order."""
        if self.same_owner:
            try:
                os.chown(base, ti.uid, ti.gid, dir_fd=parent.fd, follow_symlinks=False)
            except OSError as e:
                raise self._chown_error(ti, e) from e
        self._xattrs(ti, parent, base)
        if not is_link:
            os.chmod(base, ti.mode & 0o7777, dir_fd=parent.fd)  # made here: not a symlink
        atime, mtime = _entry_times(ti)
        os.utime(base, ns=(atime, mtime), dir_fd=parent.fd, follow_symlinks=False)
        key = (*parent.rel, base)
        if ti.isdir():
            self.dirs.append((key, atime, mtime))
        self.unpacked.add(key)

    def _regular(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: _Dir, base: str) -> None:
        """A regular file: openat(O_CREAT|O_EXCL|O_NOFOLLOW) (replacing what is there only
        when that fails with EEXIST), content, then owner, xattrs, mode and times through
        the descriptor."""
        src = tf.extractfile(ti)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            out = os.open(base, flags, 0o600, dir_fd=parent.fd)
        except FileExistsError:
            self._replace(parent, base)
            out = os.open(base, flags, 0o600, dir_fd=parent.fd)
        try:
            if src is not None:
                self._copy(src, out)
            if self.same_owner:
                try:
                    os.fchown(out, ti.uid, ti.gid)
                except OSError as e:
                    raise self._chown_error(ti, e) from e
            self._xattrs(ti, parent, base, fd=out)
            os.fchmod(out, ti.mode & 0o7777)
            atime, mtime = _entry_times(ti)
            os.utime(out, ns=(atime, mtime))
        finally:
            os.close(out)
        self.unpacked.add((*parent.rel, base))

    def _in_userns(self) -> bool:
        if self._userns is None:
            self._userns = _running_in_userns()
        return self._userns

    def _create(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parent: _Dir, base: str,
                existing: os.stat_result | None) -> bool:
        """Make the entry's file object (not a regular file); False when it is skipped."""
        fd = parent.fd
        mode = ti.mode & 0o7777
        if ti.isdir():
            if existing is None:
                _mkdir(fd, base, mode)
        elif ti.issym():
            os.symlink(ti.linkname, base, dir_fd=fd)
        elif ti.islnk():
            target = clean(ti.linkname)
            if not target:
                raise InvalidArgument(f"hard link {ti.name!r} to the root directory: invalid archive")
            with self.tree.resolve(target[:-1]) as src:
                os.link(target[-1], base, src_dir_fd=src.fd, dst_dir_fd=fd, follow_symlinks=False)
        elif ti.ischr() or ti.isblk() or ti.isfifo():
            kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK if ti.isblk() else stat.S_IFIFO
            if not (0 <= ti.devmajor <= 0xFFFFFFFF and 0 <= ti.devminor <= 0xFFFFFFFF):
                raise InvalidArgument(f"device number {ti.devmajor}:{ti.devminor} for {ti.name!r} "
                                      "out of range: invalid archive")
            try:
                os.mknod(base, kind | mode, os.makedev(ti.devmajor, ti.devminor), dir_fd=fd)
            except PermissionError:
                if kind == stat.S_IFIFO:
                    raise
                log.warning("file ignored: not permitted to create a device node",
                            extra={"fields": {"name": ti.name}})
                return False
        else:
            raise InvalidArgument(f"unhandled tar header type {ti.type!r} for {ti.name!r}")
        return True

    def _copy(self, src: IO[bytes], out: int) -> None:
        while True:
            self.check_cancel()
            chunk = src.read(CHUNK)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                n = os.write(out, view)
                view = view[n:]

    def _xattrs(self, ti: tarfile.TarInfo, parent: _Dir, base: str, fd: int | None = None) -> None:
        """PAX xattrs of the entry; ``fd``: the open regular file itself."""
        for record, value in ti.pax_headers.items():
            if not record.startswith(PAX_XATTR):
                continue
            key = record[len(PAX_XATTR):]
            fields = {"name": ti.name, "xattr": key}
            if key.startswith(("trusted.", "user.overlay.")):
                log.warning("ignored xattr in archive: admin and overlay attributes are not "
                            "taken from archives", extra={"fields": fields})
                continue
            data = value.encode("utf-8", "surrogateescape")
            try:
                if fd is not None:
                    os.setxattr(fd, key, data)
                else:
                    _setxattr(parent.fd, base, key, data)
            except OSError as e:
                if e.errno == errno.EPERM and key.startswith("user.") and fd is None:
                    st = os.stat(base, dir_fd=parent.fd, follow_symlinks=False)
                    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                        log.warning("ignored xattr in archive (user.* only on files and folders)",
                                    extra={"fields": fields})
                        continue
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    log.warning("ignored xattr in archive: not supported",
                                extra={"fields": fields})
                    continue
                raise OSError(e.errno, f"failed to setxattr for key {key!r}: {e.strerror}") from e

    def _whiteout(self, parent: _Dir, original: str, ti: tarfile.TarInfo) -> None:
        """Delete ``original`` or, for an overlay upper folder, mark it with a 0/0 char device."""
        _remove_all(parent.fd, original)
        self._invalidate()
        if self.whiteouts == "overlay":
            os.mknod(original, stat.S_IFCHR, 0, dir_fd=parent.fd)
            if self.same_owner:
                os.chown(original, ti.uid, ti.gid, dir_fd=parent.fd, follow_symlinks=False)

    def _opaque(self, folder: _Dir) -> None:
        """``.wh..wh..opq``: hide the lower layers' content of ``folder``."""
        if self.whiteouts == "overlay":
            _setxattr(folder.fd, None, self.opaque_xattr, b"y")
            return
        self._invalidate()
        stack: list[tuple[int, tuple[str, ...], bool]] = [(folder.fd, folder.rel, False)]
        while stack:
            fd, rel, owned = stack.pop()
            try:
                lister = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                try:
                    names = sorted(os.listdir(lister))
                finally:
                    os.close(lister)
                for child in names:
                    key = (*rel, child)
                    if key not in self.unpacked:
                        _remove_all(fd, child)
                        continue
                    try:
                        st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((os.open(child, _O_DIR, dir_fd=fd), key, True))
            finally:
                if owned:
                    os.close(fd)

    def finish_dirs(self) -> None:
        """Folder times last, so creating their content did not change them."""
        for key, atime, mtime in self.dirs:
            try:
                with self.tree.resolve(list(key[:-1])) as parent:
                    st = os.stat(key[-1], dir_fd=parent.fd, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        os.utime(key[-1], ns=(atime, mtime), dir_fd=parent.fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed or replaced later in the same layer


def apply_layer(reader: IO[bytes], root: str | os.PathLike[str], *, whiteouts: Whiteouts = "delete",
                xattr_prefix: XattrPrefix = "trusted", parents: Sequence[str | os.PathLike[str]] = (),
                same_owner: bool = True, cancel: threading.Event | None = None) -> tuple[str, int]:
    """Apply the uncompressed layer tar read from ``reader`` onto the folder ``root``.

    Blocking (run it in a worker thread). Returns ``(diff_id, size)``: the
    ``sha256:`` digest and byte count of everything read from ``reader`` (to
    its end). ``whiteouts``: ``"delete"`` removes whited-out files, ``"overlay"``
    writes overlayfs whiteouts and opaque xattrs (``xattr_prefix``) for an
    overlay upper folder; ``parents``: lower folders that missing parent folders
    inherit their attributes from; ``same_owner=False`` skips ``lchown`` (as
    ``tar --no-same-owner``); ``cancel`` set: stop at the next entry or chunk.

    Raises InvalidArgument (malformed archive), ContainerdError (filesystem
    failure, naming the entry). The tree is left as far as it got on error.
    """
    hashing = _HashingReader(reader, cancel)
    buffered = io.BufferedReader(hashing, CHUNK)
    errors_seen: list[BaseException] = []
    current = ""
    applier: _Applier | None = None
    try:
        applier = _Applier(root, whiteouts=whiteouts, xattr_prefix=xattr_prefix, parents=parents,
                           same_owner=same_owner, cancel=cancel)
        try:
            # tarfile's stream reader copies its leftover buffer on every read, so it gets a
            # small one (a record) and the read-ahead is done by the BufferedReader instead
            tf = tarfile.open(fileobj=buffered, mode="r|",  # type: ignore[call-overload]
                              bufsize=tarfile.RECORDSIZE,
                              tarinfo=_tarinfo_class(errors_seen), encoding="utf-8",
                              errors="surrogateescape")
        except tarfile.ReadError as e:
            if not (errors_seen and isinstance(errors_seen[-1], _EMPTY)):
                raise InvalidArgument(f"invalid layer tar: {e}") from None
            tf = None  # an empty stream is an empty layer
        if tf is not None:
            with tf:
                while True:
                    applier.check_cancel()
                    ti = tf.next()
                    tf.members = []  # stream mode: keep no member list
                    if ti is None:
                        break
                    current = ti.name
                    applier.entry(tf, ti)
                current = ""
                _check_end(errors_seen)
            applier.finish_dirs()
        hashing.drain()
    except (InvalidArgument, _Cancelled):
        raise
    except ContainerdError:
        raise
    except tarfile.TarError as e:
        raise InvalidArgument(f"invalid layer tar{_at(current)}: {e}") from None
    except ValueError as e:  # e.g. an embedded NUL byte in a name
        raise InvalidArgument(f"invalid layer tar{_at(current)}: {e}") from None
    except OSError as e:
        detail = e.strerror or str(e)
        where = f" ({e.filename})" if e.filename and isinstance(e.filename, str) and \
            not e.filename.startswith(_PROC_FD) else ""
        raise ContainerdError(f"failed to apply layer{_at(current)}{where}: {detail}") from e
    finally:
        if applier is not None:
            applier.close()
    return hashing.digest, hashing.size


def _at(name: str) -> str:
    return f" at entry {name!r}" if name else ""


def _check_end(errors_seen: list[BaseException]) -> None:
    """The archive ended: a zero block or the end of the stream is clean, anything else is not."""
    if not errors_seen:
        return
    last = errors_seen[-1]
    if isinstance(last, (_EOF, _EMPTY)):
        return
    if isinstance(last, _TRUNCATED):
        raise InvalidArgument("invalid layer tar: unexpected end of stream inside a header")
    raise InvalidArgument(f"invalid layer tar: {last}")


# -- async side ---------------------------------------------------------------------------------

def overlay_dirs(options: Sequence[str]) -> tuple[str, list[str]]:
    """``(upperdir, lowerdirs)`` of overlay mount options (``""``/``[]`` when absent)."""
    from ..mount.mounting import split_options

    upper, lower = "", []
    for word in split_options(options):
        if word.startswith("upperdir="):
            upper = word[len("upperdir="):]
        elif word.startswith("lowerdir="):
            lower = [d for d in word[len("lowerdir="):].split(":") if d]
    return upper, lower


def _syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"failed to syncfs for {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


async def run_in_thread(fn: Callable[[threading.Event], Any]) -> Any:
    """Run ``fn(cancel)`` in a worker thread; if the caller is cancelled, set ``cancel``
    and wait for the thread to stop before re-raising (so mounts outlive their use)."""
    cancel = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(fn, cancel))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        cancel.set()
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        with contextlib.suppress(BaseException):
            task.result()
        raise


async def apply(mounts: Sequence[Mount], reader_factory: Callable[[], IO[bytes]], *,
                sync_fs: bool = False, same_owner: bool = True, overlay_upper: bool = False,
                tmp_root: str | os.PathLike[str] | None = None) -> tuple[str, int]:
    """Apply a layer onto ``mounts`` (containerd's ``core/diff/apply``); returns ``(diff_id, size)``.

    ``reader_factory()`` is called in the worker thread and returns the
    *uncompressed* tar stream (it is closed afterwards). Where the layer goes:
    a single overlay mount with ``upperdir`` → that folder, with overlay
    whiteouts, ``trusted``/``user`` (``userxattr``) opaque xattrs and the
    ``lowerdir`` folders as parents (not in a user namespace, where overlay
    whiteouts cannot be made); a single writable bind mount → its source
    folder; otherwise the mounts are mounted on a temporary folder for the
    apply. ``sync_fs``: syncfs(2) the target's filesystem afterwards.

    Raises InvalidArgument (no mounts, malformed layer), ContainerdError,
    OSError from mounting.
    """
    mounts = list(mounts)
    if not mounts:
        raise InvalidArgument("no mounts to apply the layer onto")

    async def run(root: str, **kwargs: Any) -> tuple[str, int]:
        def work(cancel: threading.Event) -> tuple[str, int]:
            with contextlib.closing(reader_factory()) as reader:
                result = apply_layer(reader, root, same_owner=same_owner, cancel=cancel, **kwargs)
            if sync_fs:
                _syncfs(root)
            return result

        return await run_in_thread(work)

    if len(mounts) == 1:
        m = mounts[0]
        if m.type == "overlay" and not _running_in_userns():
            from ..mount.mounting import split_options

            upper, lowers = overlay_dirs(m.options)
            if upper:
                prefix: XattrPrefix = "user" if "userxattr" in split_options(m.options) else "trusted"
                return await run(upper, whiteouts="overlay", xattr_prefix=prefix, parents=lowers)
        if m.type == "bind" and not m.readonly and not m.target:
            if overlay_upper and not _running_in_userns():
                # the source is an overlay upper folder of its own (a parentless overlayfs
                # snapshot to be committed onto its parent): keep whiteouts as overlay ones
                return await run(m.source, whiteouts="overlay", xattr_prefix="trusted")
            return await run(m.source)
    from ..mount.mounting import temp_mount

    async with temp_mount(mounts, root=tmp_root) as root:
        return await run(os.fspath(root))


__all__ = ["WHITEOUT_OPAQUE", "WHITEOUT_PREFIX", "apply", "apply_layer", "clean", "overlay_dirs",
           "root_path", "run_in_thread"]
