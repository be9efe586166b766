"""Network namespaces for pod sandboxes, pinned by a bind mount (as containerd's pkg/netns).

A namespace lives as long as a process is in it or a mount pins it. ``create``
makes a new one and pins it at ``<base_dir>/cni-<uuid>`` (default base
``/var/run/netns``, where ``ip netns`` looks), so the pause container can join it
by path and CNI plugins get it as ``CNI_NETNS`` (CNI SPEC.md section 3,
"Lifecycle & Ordering": the runtime creates the namespace before any plugin and
cleans it up after).

How: a dedicated, short-lived OS thread calls ``unshare(CLONE_NEWNET)`` — only
that thread moves — bind-mounts ``/proc/self/task/<tid>/ns/net`` onto the pin
file, brings ``lo`` up (SIOCSIFFLAGS on a socket opened in that thread, which
talks to the new namespace), and exits; it never runs anything else, so no
other code can find itself in the wrong namespace. Nothing here blocks the
event loop: the async functions hand the work to threads.

Errors: ``OSError`` from the syscalls (EPERM without CAP_SYS_ADMIN, ...); a
failed ``create`` unmounts and unlinks what it made before raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

DEFAULT_NETNS_DIR = "/var/run/netns"

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _check(ret: int, what: str, path: str = "") -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path or None)


def _mount_bind(source: str, target: str) -> None:
    _check(_c().mount(source.encode(), target.encode(), b"none", MS_BIND, None), "bind mount netns", target)


def _unmount(path: str) -> None:
    if _c().umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point
            raise OSError(err, f"unmount netns: {os.strerror(err)}", path)


def _in_dedicated_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh OS thread that ends with it (it may leave the thread in
    another namespace); re-raise its exception."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e

    th = threading.Thread(target=main, name="netns", daemon=True)
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _bring_up_lo() -> None:
    # SIOCGIFFLAGS/SIOCSIFFLAGS on a socket opened in this thread (so in the new netns):
    # two ioctls instead of a netlink session (and no pyroute2 import on the first pod)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0))
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise OSError(errno.ENODEV, "no loopback interface in the new netns") from None
            raise
        flags = struct.unpack("16sh", req[:18])[1]
        if not flags & IFF_UP:
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def create_sync(base_dir: str = DEFAULT_NETNS_DIR, *, loopback_up: bool = True) -> str:
    """Blocking :func:`create`."""
    os.makedirs(base_dir, mode=0o755, exist_ok=True)
    path = os.path.join(base_dir, f"cni-{uuid.uuid4()}")
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    try:
        def unshare_and_pin() -> None:
            _check(_c().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _mount_bind(f"/proc/self/task/{threading.get_native_id()}/ns/net", path)
            if loopback_up:
                _bring_up_lo()

        _in_dedicated_thread(unshare_and_pin)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_sync(path)
        raise
    return path


async def create(base_dir: str = DEFAULT_NETNS_DIR, *, loopback_up: bool = True) -> str:
    """Create a network namespace pinned at ``<base_dir>/cni-<uuid4>`` and return that path.

    ``lo`` is brought up inside unless ``loopback_up`` is False (containerd leaves
    that to the CNI ``loopback`` plugin unless ``use_internal_loopback``).
    Raises ``OSError``; nothing is left behind on failure.
    """
    return await asyncio.to_thread(create_sync, base_dir, loopback_up=loopback_up)


def remove_sync(path: str) -> None:
    """Blocking :func:`remove`."""
    if not os.path.lexists(path):
        return
    _unmount(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        os.rmdir(path)


async def remove(path: str) -> None:
    """Unpin (lazy unmount) and unlink the namespace at ``path``. Idempotent: a
    missing path or a file that is not a mount is fine. Raises ``OSError`` otherwise."""
    await asyncio.to_thread(remove_sync, path)


def exists(path: str) -> bool:
    """Whether ``path`` is a pinned network namespace (an nsfs mount, not a plain file).

    Every namespace file lives on the one nsfs filesystem, so its device equals
    that of ``/proc/self/ns/net``. Blocking but cheap (two stats).
    """
    try:
        st = os.stat(path)
        ns = os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return st.st_dev == ns.st_dev


def run_in_sync(path: str, fn: Callable[[], T]) -> T:
    """Blocking :func:`run_in`."""
    def enter_and_run() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_c().setns(fd, CLONE_NEWNET), "setns", path)
        finally:
            os.close(fd)
        return fn()

    return _in_dedicated_thread(enter_and_run)


async def run_in(path: str, fn: Callable[[], T]) -> T:
    """Run blocking ``fn()`` inside the netns at ``path`` (in a dedicated thread that
    ends with it) and return its value — e.g. pyroute2 queries for pod network
    stats: ``await run_in(p, lambda: IPRoute().get_links())``. Raises ``OSError``
    for a path that is not a netns, or what ``fn`` raises."""
    return await asyncio.to_thread(run_in_sync, path, fn)
