"""Mounting and unmounting :class:`~aiocontainerd.mount.Mount` lists (containerd's ``core/mount``).

Contract:

- :func:`mount_all` mounts a list in order on ``target`` (a mount's
  ``target`` is a folder below it, resolved without leaving it). It is
  all-or-nothing: if one mount fails, or the caller is cancelled, the mounts
  it made are undone before the error (or :class:`asyncio.CancelledError`)
  reaches the caller.
- :func:`unmount` unmounts ``target`` (every mount stacked on it); with
  ``recursive`` every mount below it too, deepest first; with ``lazy`` the
  kernel detaches them (``MNT_DETACH``). A path that is not mounted (or does
  not exist) is not an error; a busy mount is retried for 2.5 s.
- :func:`temp_mount` mounts on a fresh folder for the body of an ``async
  with`` and always unmounts and removes it afterwards, on error and on
  cancellation too (overlay's ``volatile`` is dropped, as containerd drops it:
  a volatile overlay cannot be mounted twice on the same upper/work folders).
- Every system call runs in a worker thread, never on the event loop, and an
  unmount, once started, runs to completion even if its caller is cancelled.
- Failures raise :class:`OSError` with the kernel's errno, a message naming
  the mount (type, source, target, options) and ``filename`` set to the target.

Options are ``mount -o`` words, parsed as containerd parses them
(:func:`parse_options`): flag words (``ro``, ``rw``, ``bind``, ``rbind``,
``nodev``, ``nosuid``, ``noexec``, ``remount``, ``noatime``, ...) and
propagation words (``private``, ``rshared``, ...) become ``mount(2)`` flags,
the rest is the filesystem's data string (``lowerdir=…``, ``index=off``).
A read-only bind mount is made in two steps (bind, then remount read-only), as
the kernel requires. An overlay whose options approach the page size (a long
``lowerdir`` chain) is mounted from a short-lived thread with its own
working-folder context (``unshare(CLONE_FS)``) that changes into the lower
folders' common parent and passes relative paths, as containerd does; the
process's own directory never changes, and no child process is involved (so it
is safe inside a shim whose reaper calls ``waitpid(-1)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from ..tasks import complete
from . import Mount, unescape_mountinfo

log = logging.getLogger(__name__)
T = TypeVar("T")

# mount(2) flags (linux/mount.h)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

# umount2(2) flags
MNT_FORCE = 0x1
MNT_DETACH = 0x2

#: word -> (clears the flag?, flag), as containerd's parseMountOptions.
FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "nosymfollow": (False, MS_NOSYMFOLLOW),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}

#: Propagation words (applied by a second mount(2) call, as the kernel requires).
PROPAGATION_FLAGS: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

# statvfs f_flag bits -> the mount flags a user namespace locks (CL_UNPRIVILEGED).
_LOCKED_FLAGS = {
    os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV,
    os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME, os.ST_NODIRATIME: MS_NODIRATIME,
    os.ST_RELATIME: MS_RELATIME,
}

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: Overlay option strings at least this long are mounted with relative lowerdirs.
COMPACT_THRESHOLD = PAGE_SIZE - 512
#: Retries of an unmount that fails with EBUSY (50 ms apart), as containerd.
BUSY_RETRIES = 50

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                              ctypes.c_char_p]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        _libc = lib
    return _libc


@dataclasses.dataclass(frozen=True)
class MountOptions:
    """``mount -o`` words split into ``mount(2)`` arguments."""

    flags: int = 0
    propagation: int = 0
    data: tuple[str, ...] = ()

    @property
    def data_string(self) -> str:
        return ",".join(self.data)


def split_options(options: Iterable[str]) -> list[str]:
    """Options one word each: an element holding several comma-joined words
    (``"lowerdir=a,upperdir=b"``) is split at commas not escaped by a backslash."""
    out: list[str] = []
    for option in options:
        out.extend(w for w in re.split(r"(?<!\\),", option) if w)
    return out


def parse_options(options: Iterable[str]) -> MountOptions:
    """Parse ``mount -o`` words into flags, propagation flags and data.

    Raises :class:`OSError` (EINVAL) for ``loop`` (not supported yet),
    ``uidmap=``/``gidmap=`` (id-mapped mounts are not supported yet) and
    ``X-containerd.*`` words (the mount manager's, never the kernel's).
    """
    flags = propagation = 0
    data: list[str] = []
    for word in split_options(options):
        if word in FLAGS:
            clear, flag = FLAGS[word]
            flags = flags & ~flag if clear else flags | flag
        elif word in PROPAGATION_FLAGS:
            propagation |= PROPAGATION_FLAGS[word]
        elif word == "loop" or word.startswith(("uidmap=", "gidmap=", "X-containerd.")):
            raise OSError(errno.EINVAL, f"mount option {word!r} is not supported")
        else:
            data.append(word)
    return MountOptions(flags, propagation, tuple(data))


def _common_parent(dirs: Sequence[str]) -> str:
    """The folder all ``dirs`` are below (containerd's compactLowerdirOption), or ""."""
    if len(dirs) < 2:
        return ""
    if not all(d.startswith("/") for d in dirs):
        return ""
    parent = os.path.commonpath([os.path.normpath(d) for d in dirs])
    if any(os.path.normpath(d) == parent for d in dirs):
        parent = os.path.dirname(parent)
    if parent in ("", "/"):
        return ""
    parent += "/"
    if any(len(d) <= len(parent) for d in dirs):
        return ""
    return parent


def compact_lowerdir(options: Sequence[str]) -> tuple[str, list[str]]:
    """``(folder, options)`` with ``lowerdir=`` made relative to the lower folders'
    common parent ``folder``; ``("", options)`` when they have none."""
    words = split_options(options)
    for i, word in enumerate(words):
        if word.startswith("lowerdir="):
            dirs = re.split(r"(?<!\\):", word[len("lowerdir="):])
            parent = _common_parent(dirs)
            if not parent:
                return "", words
            rest = words[:i] + words[i + 1:]
            return parent, [*rest, "lowerdir=" + ":".join(d[len(parent):] for d in dirs)]
    return "", words


CLONE_FS = 0x00000200


def _mount_in(chdir: str, source: str, target: str, fstype: str, flags: int, data: str,
              result: list[int]) -> None:
    # Runs in its own thread: unshare(CLONE_FS) gives this thread a private working
    # folder, so the chdir is seen by this thread only (which then ends).
    lib = _lib()
    if lib.unshare(CLONE_FS) != 0:
        result.append(ctypes.get_errno())
        return
    try:
        os.chdir(chdir)
    except OSError as e:
        result.append(e.errno or errno.EIO)
        return
    rc = lib.mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype), flags,
                   os.fsencode(data) if data else None)
    result.append(ctypes.get_errno() if rc != 0 else 0)


def _describe(m: Mount, target: str) -> str:
    return f"mount {m.type} {m.source!r} on {target!r} (options {','.join(m.options)!r})"


def _raise(err: int, what: str, target: str) -> None:
    raise OSError(err, f"{what}: {os.strerror(err)}", target)


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str, what: str) -> None:
    rc = _lib().mount(os.fsencode(source), os.fsencode(target), os.fsencode(fstype), flags,
                      os.fsencode(data) if data else None)
    if rc != 0:
        _raise(ctypes.get_errno(), what, target)


def _child_mount(chdir: str, source: str, target: str, fstype: str, flags: int, data: str,
                 what: str) -> None:
    """Mount with ``data`` relative to ``chdir``, from a helper thread (see the module doc)."""
    import threading

    result: list[int] = []
    t = threading.Thread(target=_mount_in, args=(chdir, source, target, fstype, flags, data, result),
                         name="mount-relative", daemon=True)
    t.start()
    t.join()
    err = result[0] if result else errno.EIO
    if err:
        _raise(err, f"{what} (relative lowerdirs in {chdir})", target)


def _locked_flags(target: str) -> int:
    st = os.statvfs(target)
    return sum(ms for st_flag, ms in _LOCKED_FLAGS.items() if st.f_flag & st_flag)


def _mount_one(m: Mount, target: str) -> None:
    what = _describe(m, target)
    opts = parse_options(m.options)
    words = split_options(m.options)
    chdir = ""
    if m.type == "overlay" and sum(map(len, words)) >= COMPACT_THRESHOLD:
        chdir, words = compact_lowerdir(words)
        opts = parse_options(words)
    flags = opts.flags & ~PROPAGATION
    data = opts.data_string
    if len(data) > PAGE_SIZE:
        _raise(errno.E2BIG, f"{what}: {len(data)} bytes of options, more than a page "
                            f"({PAGE_SIZE}) even with relative lowerdirs", target)
    if chdir:
        _child_mount(chdir, m.source, target, m.type, flags, data, what)
    else:
        _sys_mount(m.source, target, m.type, flags, data, what)
    try:
        if opts.propagation:
            _sys_mount("", target, "", opts.propagation | (opts.flags & MS_REC) | MS_SILENT, "",
                       what + " (propagation)")
        if flags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY and not flags & MS_REMOUNT:
            # the kernel ignores MS_RDONLY on a new bind mount: remount it read-only,
            # keeping the flags a user namespace locks
            locked = _locked_flags(target) if running_in_userns() else 0
            _sys_mount("", target, "", flags | locked | MS_REMOUNT, "", what + " (remount ro)")
    except BaseException:
        _unmount_stack(target, 0)
        raise


def _root_path(root: str, sub: str) -> str:
    """``sub`` below ``root`` with symlinks resolved inside ``root`` (never above it)."""
    resolved: list[str] = []
    pending = sub.split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            link = os.readlink(candidate)
        except OSError:
            resolved.append(part)
            continue
        hops += 1
        if hops > 255:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {sub!r} in {root!r}", candidate)
        if link.startswith("/"):
            resolved = []
        pending = link.split("/") + pending
    return os.path.join(root, *resolved)


def _mount_all_sync(mounts: Sequence[Mount], target: str) -> None:
    target = os.path.abspath(target)
    done: list[str] = []
    try:
        for m in mounts:
            dest = _root_path(target, m.target)
            _mount_one(m, dest)
            done.append(dest)
    except BaseException:
        for dest in reversed(done):
            try:
                _unmount_stack(dest, 0)
            except OSError:
                log.exception("cannot undo a mount", extra={"fields": {"target": dest}})
        raise


def _umount(target: str, flags: int) -> bool:
    """One umount2; False when ``target`` is not a mount point (EINVAL) or absent."""
    for _ in range(BUSY_RETRIES):
        if _lib().umount2(os.fsencode(target), flags) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOENT):
            return False
        if err != errno.EBUSY:
            _raise(err, "unmount", target)
        time.sleep(0.05)
    _raise(errno.EBUSY, f"unmount (still busy after {BUSY_RETRIES} tries)", target)
    return False


def _unmount_stack(target: str, flags: int) -> None:
    """Unmount every mount stacked on ``target`` (containerd's UnmountAll)."""
    for _ in range(1024):
        if not _umount(target, flags):
            return
    _raise(errno.ELOOP, "unmount: more than 1024 mounts stacked", target)


def mount_points(under: str | os.PathLike[str] | None = None) -> list[str]:
    """Mount points of this process's mount namespace (``/proc/self/mountinfo``), in
    mount order; with ``under``, only that path and those below it."""
    prefix = None if under is None else os.path.realpath(under)
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            point = unescape_mountinfo(fields[4])
            if prefix is None or point == prefix or point.startswith(prefix.rstrip("/") + "/"):
                points.append(point)
    return points


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The filesystem type (``ext4``, ``tmpfs``, ``overlay``, ...) of the mount holding
    ``path`` (symlinks resolved), from ``/proc/self/mountinfo``; "" if unknown."""
    real = os.path.realpath(path)
    best, fstype = -1, ""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            head, sep, tail = line.partition(" - ")
            fields = head.split(" ")
            if not sep or len(fields) < 5:
                continue
            point = unescape_mountinfo(fields[4])
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= best:  # the last of equal mount points is on top
                best, fstype = len(point), tail.split(" ")[0]
    return fstype


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (symlinks resolved) is a mount point, bind mounts included
    (which :func:`os.path.ismount` misses). Reads ``/proc/self/mountinfo``."""
    real = os.path.realpath(path)
    return real in mount_points(real)


def _unmount_sync(target: str, recursive: bool, lazy: bool) -> None:
    flags = MNT_DETACH if lazy else 0
    target = os.path.abspath(target)
    if not os.path.lexists(target):
        return
    real = os.path.realpath(target)
    if not recursive:
        _unmount_stack(real, flags)
        return
    points = sorted(set(mount_points(real)), key=len, reverse=True)  # deepest first
    for i, point in enumerate(points):
        try:
            _unmount_stack(point, flags)
        except OSError:
            if i == len(points) - 1:
                raise
            log.warning("cannot unmount", extra={"fields": {"target": point}})


def mount_all_blocking(mounts: Iterable[Mount], target: str | os.PathLike[str]) -> None:
    """:func:`mount_all` for code already running in a worker thread (blocks)."""
    _mount_all_sync(list(mounts), os.fspath(target))


def unmount_blocking(target: str | os.PathLike[str], *, recursive: bool = False,
                     lazy: bool = False) -> None:
    """:func:`unmount` for code already running in a worker thread (blocks)."""
    _unmount_sync(os.fspath(target), recursive, lazy)


async def mount_all(mounts: Iterable[Mount], target: str | os.PathLike[str]) -> None:
    """Mount ``mounts`` in order on the existing folder ``target``.

    All or nothing: on failure (:class:`OSError`) or cancellation the mounts
    already made are unmounted before the exception propagates.
    """
    mounts, dest = list(mounts), os.fspath(target)
    try:
        await complete(asyncio.to_thread(_mount_all_sync, mounts, dest))
    except asyncio.CancelledError:
        await complete(asyncio.to_thread(_unmount_sync, dest, True, False))
        raise


async def unmount(target: str | os.PathLike[str], *, recursive: bool = False, lazy: bool = False) -> None:
    """Unmount ``target``: every mount stacked on it, and with ``recursive`` every
    mount below it first (deepest first). ``lazy`` detaches (``MNT_DETACH``).

    Not mounted or absent: nothing to do. Raises :class:`OSError` (EBUSY after
    2.5 s of retries, EPERM, ...). Runs to completion even if cancelled.
    """
    await complete(asyncio.to_thread(_unmount_sync, os.fspath(target), recursive, lazy))


async def unmount_all(target: str | os.PathLike[str], *, lazy: bool = False) -> None:
    """Unmount every mount at and below ``target``, deepest first (``unmount(recursive=True)``)."""
    await unmount(target, recursive=True, lazy=lazy)


def remove_volatile(mounts: Iterable[Mount]) -> list[Mount]:
    """``mounts`` without overlay's ``volatile`` (it forbids mounting the same
    upper/work folders again, which a temporary mount would do)."""
    out = []
    for m in mounts:
        if m.type == "overlay":
            words = split_options(m.options)
            if "volatile" in words or "fsync=volatile" in words:
                m = dataclasses.replace(m, options=tuple(
                    w for w in words if w not in ("volatile", "fsync=volatile")))
        out.append(m)
    return out


def readonly(mounts: Iterable[Mount]) -> list[Mount]:
    """``mounts`` made read-only (containerd's readonlyMounts): an overlay's upperdir
    becomes its top lowerdir and workdir is dropped; any other mount gets ``ro``."""
    out = []
    for m in mounts:
        words = split_options(m.options)
        if m.type == "overlay":
            upper = next((w[len("upperdir="):] for w in words if w.startswith("upperdir=")), "")
            words = [w for w in words if not w.startswith(("upperdir=", "workdir="))]
            if upper:
                words = ["lowerdir=" + upper + ":" + w[len("lowerdir="):]
                         if w.startswith("lowerdir=") else w for w in words]
        else:
            words = [w for w in words if w not in ("ro", "rw")] + ["ro"]
        out.append(dataclasses.replace(m, options=tuple(words)))
    return out


@contextlib.asynccontextmanager
async def temp_mount(mounts: Iterable[Mount], *, root: str | os.PathLike[str] | None = None,
                     read_only: bool = False) -> AsyncIterator[Path]:
    """Mount ``mounts`` on a fresh folder in ``root`` (default: the system temp folder)
    and yield it; unmount (recursively) and remove it afterwards, whatever happens.

    ``read_only`` mounts them read-only (:func:`readonly`). Overlay's
    ``volatile`` is dropped (:func:`remove_volatile`). If unmounting fails the
    folder is left in place (never emptied: it may still show the snapshot) and
    the :class:`OSError` is raised.
    """
    mounts = remove_volatile(mounts)
    if read_only:
        mounts = readonly(mounts)
    base = os.fspath(root) if root is not None else tempfile.gettempdir()
    making = asyncio.ensure_future(asyncio.to_thread(tempfile.mkdtemp, prefix="aiocontainerd-mount-",
                                                     dir=base))
    try:
        folder = Path(await complete(making))
    except asyncio.CancelledError:
        if not making.cancelled() and making.exception() is None:  # made, but too late
            await complete(asyncio.to_thread(os.rmdir, making.result()))
        raise
    unmounted = False
    try:
        await mount_all(mounts, folder)
        try:
            yield folder
        finally:
            await unmount(folder, recursive=True)
        unmounted = True
    finally:
        if unmounted or not await complete(asyncio.to_thread(is_mountpoint, folder)):
            # an error in mount_all left nothing mounted; rmdir never deletes contents
            await complete(asyncio.to_thread(os.rmdir, folder))


def running_in_userns() -> bool:
    """Whether this process runs in a user namespace other than the initial one
    (its uid map is not the identity over all ids), as moby/sys/userns decides."""
    try:
        with open("/proc/self/uid_map", encoding="ascii") as f:
            lines = f.read().split("\n")
    except OSError:
        return False
    fields = lines[0].split() if lines else []
    return not (len([x for x in lines if x.strip()]) == 1 and fields == ["0", "0", "4294967295"])


__all__ = [
    "MountOptions",
    "compact_lowerdir",
    "filesystem_type",
    "is_mountpoint",
    "mount_all",
    "mount_all_blocking",
    "mount_points",
    "parse_options",
    "readonly",
    "remove_volatile",
    "running_in_userns",
    "split_options",
    "temp_mount",
    "unmount",
    "unmount_all",
    "unmount_blocking",
]
