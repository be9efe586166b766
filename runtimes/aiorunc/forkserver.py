"""The pre-imported fork server behind ``containerd-shim-aiorunc-v2 start``.

A Python shim that imports asyncio, betterproto2, the task API and its own
modules afresh for every container spends ~0.2 s of CPU before it can serve.
The fork server pays that once: it is started (double-forked, own session,
stdio on ``/dev/null``, cwd ``/``) by the first ``start`` with

* fd 3: the bound, listening shim socket of that first request (absent when the
  daemon starts it ahead of any container: ``main.warm_forkserver``),
* fd 4: the bound, listening ``SOCK_SEQPACKET`` abstract socket it answers on
  (``main.forkserver_key``: daemon address + installed shim version), and
* fd 5: a memfd holding the first request (JSON, see ``main.Options.to_request``),

imports everything a shim needs (creating **no** event loop and no thread),
forks the first shim, and then serves requests: one datagram of JSON carrying
the bound shim socket as ``SCM_RIGHTS``; it answers ``{"pid": N}`` (or
``{"error": "..."}``).  Every shim is forked once and calls ``setsid``; it then
takes the request's environment and bundle cwd, creates its own event loop and
serves (:func:`.shim.run`).  The fork server ignores ``SIGCHLD``, so the kernel
reaps the shims it forked when they exit: it never holds zombies; once it exits
itself, its live shims are re-parented like any orphan.

A shim is also forked *ahead* of its request: the fork server keeps one spare
(``comm`` ``aiorunc-spare``), forked and in its own session, waiting on a socket
pair for a request (JSON plus the bound shim socket as ``SCM_RIGHTS``). A request
goes to the spare when there is one, so the fork and the first copy-on-write
faults of the new process (~1,200 pages, about half of the ~5 ms a freshly forked
shim needs before it serves) are off the caller's path; the next spare is forked
once no request waits. A spare whose fork server is gone reads end-of-file and
exits; one that cannot take a request (it died) is replaced by a plain fork.

Lifetime: there is at most one fork server per key (the abstract name is bound
exclusively, by the ``start`` that launches it).  It exits after
``AIORUNC_FORKSERVER_IDLE`` seconds without a request (default 60), and as soon
as the daemon it serves is gone: every ``AIORUNC_FORKSERVER_CHECK`` seconds
(default 5) it checks that the daemon's ttrpc or gRPC socket (the first
request's ``TTRPC_ADDRESS``/``-address``) still exists and accepts a connection.
A later ``start`` launches a new one; a ``start`` whose request the exiting
fork server dropped unanswered simply asks again.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

from aiocontainerd import heap

#: seconds without a request before the fork server exits
IDLE_SECONDS = 60.0
#: seconds between two checks that the daemon still listens
CHECK_SECONDS = 5.0


def preimport() -> None:
    """Import what a serving shim needs, so forked shims start warm (no loop, no threads).

    ``ssl`` is kept out (asyncio imports it optionally; the shim never uses TLS and
    OpenSSL alone costs ~4 MB of RSS per shim).  ``gc.freeze()`` then moves every
    object imported so far out of the collector's reach, so forked shims do not
    dirty (copy) those pages when they collect garbage.
    """
    import gc

    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    import asyncio  # noqa: F401
    import logging  # noqa: F401

    from aiocontainerd.version import light_metadata

    with light_metadata():
        import betterproto2  # noqa: F401

        from aiocontainerd.api.containerd.task import v2  # noqa: F401

    # besides the serving code, what every shim needs by its first Create (else ~17 ms of
    # imports per shim, in private pages): runc, stdio, reaper, mounts, OOM watcher, console
    from aiocontainerd.mount import mounting

    from . import console, main, oom, process, publisher, reaper, runc, service, shim, stdio  # noqa: F401

    try:
        # libc for mount(2)/umount2(2): find_library runs ``ldconfig -p`` (a child process)
        mounting._lib()
    except Exception:  # pragma: no cover - the shim loads it on first use then
        pass
    warm_messages()

    gc.collect()
    gc.freeze()
    heap.trim()


def warm_messages() -> int:
    """Build betterproto2's per-class metadata (``Message._betterproto``) of every message
    class imported so far. betterproto2 builds it lazily, on a class's first encode or
    decode, with ``typing.get_type_hints`` over string annotations (~1 ms per class, ~30
    classes per container): done once here, every forked shim inherits it. Returns how
    many classes were warmed."""
    import betterproto2

    done = 0
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("aiocontainerd.api."):
            continue
        for obj in list(vars(module).values()):
            if (isinstance(obj, type) and issubclass(obj, betterproto2.Message)
                    and obj is not betterproto2.Message and obj.__module__ == name):
                try:
                    obj._betterproto  # noqa: B018 - computed and cached on the class
                    done += 1
                except Exception:  # pragma: no cover - left to its first use
                    pass
    return done


def _spawn(req: dict, sock: socket.socket, conn: socket.socket | None,
           listener: socket.socket | None) -> None:
    """Fork a shim serving ``sock`` for ``req`` (in its own session) and answer its pid on
    ``conn``. One fork: the fork server ignores SIGCHLD, so the kernel reaps its exited
    shims (no zombies) and the answer needs no intermediate process to be scheduled."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setsid()
            if listener is not None:
                listener.close()
            if conn is not None:
                conn.close()
            # a waiting ``start`` got the pid and writes shim.pid; else the shim does
            code = become_shim(req, sock, write_pid=conn is None)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    if conn is not None:
        try:
            conn.send(json.dumps({"pid": pid}).encode())
        except OSError:
            os.kill(pid, signal.SIGKILL)  # the caller gave up: no second shim


#: ``/proc/<pid>/comm`` of the fork server and of the shims it forks (``ps``, ``pgrep``)
FORKSERVER_NAME = b"aiorunc-forksrv"
SHIM_NAME = b"aiorunc-shim"
#: ... and of the spare shim waiting for its request
SPARE_NAME = b"aiorunc-spare"


class Spare:
    """One shim process forked ahead of its request (see the module doc)."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.conn = conn

    @classmethod
    def fork(cls, listener: socket.socket | None) -> Spare | None:
        """Fork a spare; None if the fork fails (requests then fork as they come)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            return None
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                ours.close()
                os.setsid()
                if listener is not None:
                    listener.close()
                set_name(SPARE_NAME)
                code = _wait_and_serve(theirs)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def take(self, req: dict, sock: socket.socket) -> int | None:
        """Hand ``req`` and its shim socket to the spare; its pid, or None if it is gone.
        Either way the spare is used up (:meth:`close` is done)."""
        try:
            socket.send_fds(self.conn, [json.dumps(req).encode()], [sock.fileno()])
        except OSError:
            return None
        finally:
            self.close()
        return self.pid

    def close(self) -> None:
        """Let the spare go (it reads end-of-file and exits unless it took a request)."""
        self.conn.close()


def _wait_and_serve(conn: socket.socket) -> int:  # pragma: no cover - runs in the spare
    """The spare: make the event loop, wait on it for a request, then serve it (exit 0 at
    end-of-file)."""
    from aiocontainerd.tasks import wait_fd

    from .shim import run_spare

    async def receive() -> tuple[Any, socket.socket] | None:
        await wait_fd(conn.fileno(), write=False)
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 4)
        conn.close()
        if not data or not fds:
            return None
        for fd in fds[1:]:
            os.close(fd)
        # the fork server answered the caller with our pid: the caller writes shim.pid
        return adopt(json.loads(data), write_pid=False), socket.socket(fileno=fds[0])

    return run_spare(receive)


def set_name(name: bytes) -> None:
    """Set this process's ``comm`` (``prctl(PR_SET_NAME)``, 15 bytes at most)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def adopt(req: dict, *, write_pid: bool) -> Any:
    """Become the shim of ``req``: its name, bundle (cwd) and environment; returns its
    :class:`~.shim.ShimConfig`."""
    from .shim import ShimConfig

    set_name(SHIM_NAME)
    os.chdir(req["bundle"])
    # the environment becomes req's; only what differs is set (putenv per variable is
    # most of this function's time, and a daemon's shims mostly share one environment)
    env = req.get("env") or {}
    for name in [n for n in os.environ if n not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    return ShimConfig(namespace=req["namespace"], id=req["id"], address=req["address"],
                      ttrpc_address=req.get("ttrpc_address", ""),
                      publish_binary=req.get("publish_binary", ""), bundle=req["bundle"],
                      debug=bool(req.get("debug")), oom_score_adj=req.get("oom_score_adj"),
                      write_pid=write_pid)


def become_shim(req: dict, sock: socket.socket, *, write_pid: bool = True) -> int:
    """In the forked child: adopt ``req`` (:func:`adopt`), then serve ``sock``."""
    from .shim import run

    return run(adopt(req, write_pid=write_pid), sock)


def _handle(conn: socket.socket, listener: socket.socket, spares: Spares | None = None) -> None:
    from aiocontainerd.ttrpc.server import same_user

    conn.settimeout(5)
    fds: list[int] = []
    try:
        # an abstract socket has no file permissions: anyone on the host (or in its network
        # namespace) may connect, and a shim runs as root - only our own user is answered
        if not same_user(conn):
            return
        data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 4)
        if not fds:
            conn.send(b'{"error": "no socket passed"}')
            return
        req = json.loads(data)
        # the caller may have timed out and fallen back: then do nothing
        p = select.poll()
        p.register(conn, select.POLLHUP | select.POLLERR)
        if p.poll(0):
            return
        sock = socket.socket(fileno=fds.pop(0))
        try:
            pid = spares.take(req, sock) if spares is not None else None
            if pid is None:
                _spawn(req, sock, conn, listener)
            else:
                try:
                    conn.send(json.dumps({"pid": pid}).encode())
                except OSError:
                    os.kill(pid, signal.SIGKILL)  # the caller gave up: no second shim
        finally:
            sock.close()
    except (OSError, ValueError, KeyError) as e:
        try:
            conn.send(json.dumps({"error": str(e)}).encode())
        except OSError:
            pass
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


def _accepts(address: str) -> bool:
    """Whether the unix socket ``address`` (``unix://`` path, path or ``@abstract``) accepts."""
    if address.startswith("unix://"):
        address = address[len("unix://"):]
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("\0"):
        try:
            if not stat.S_ISSOCK(os.stat(address).st_mode):
                return False
        except OSError:
            return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(1)
        s.connect(address)
        return True
    except OSError:
        return False
    finally:
        s.close()


def daemon_alive(req: dict) -> bool:
    """Whether the daemon of ``req`` still serves: its ttrpc or its gRPC socket accepts.

    True when the request names no daemon socket (nothing to watch).
    """
    addresses = [a for a in (req.get("ttrpc_address"), req.get("address")) if a]
    return not addresses or any(_accepts(a) for a in addresses)


class Spares:
    """The fork server's spare shim: at most one, forked when no request waits."""

    def __init__(self, listener: socket.socket | None) -> None:
        self._listener = listener
        self._spare: Spare | None = None

    def take(self, req: dict, sock: socket.socket) -> int | None:
        """Serve ``req`` by the spare: its pid, or None (no spare, or it is gone)."""
        spare, self._spare = self._spare, None
        return spare.take(req, sock) if spare is not None else None

    def refill(self) -> None:
        """Fork a spare if there is none."""
        if self._spare is None:
            self._spare = Spare.fork(self._listener)

    def close(self) -> None:
        """Let the spare go."""
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()


def serve(listener: socket.socket, idle: float, *, alive: Callable[[], bool] = lambda: True,
          check: float = CHECK_SECONDS, spare: bool = False) -> str:
    """Answer fork requests until ``idle`` seconds pass without one or ``alive()`` fails.

    ``alive`` is called every ``check`` seconds.  With ``spare``, a shim is kept forked
    ahead (:class:`Spares`), forked again whenever no request waits.  Returns why it
    stopped (``"idle"`` or ``"daemon gone"``); the spare goes with it.
    """
    spares = Spares(listener) if spare else None
    last = now = time.monotonic()
    next_check = now + check
    try:
        while True:
            now = time.monotonic()
            if now - last >= idle:
                return "idle"
            if now >= next_check:
                if not alive():
                    return "daemon gone"
                next_check = now + check
            if spares is not None and not select.select([listener], [], [], 0)[0]:
                spares.refill()
            r, _, _ = select.select([listener], [], [], max(0.0, min(last + idle, next_check) - now))
            if not r:
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            _handle(conn, listener, spares)
            last = time.monotonic()
    finally:
        if spares is not None:
            spares.close()


def _env_seconds(req: dict, name: str, default: float) -> float:
    try:
        value = float((req.get("env") or {}).get(name) or default)
    except ValueError:
        return default
    return value if value > 0 else default


def main(argv: list[str]) -> int:
    """``python -m aiocontainerd.runtimes.aiorunc.forkserver`` with fds 3, 4 and 5."""
    os.chdir("/")
    set_name(FORKSERVER_NAME)
    heap.one_arena()
    with open(5, "rb") as f:
        req = json.loads(f.read())
    # a warm start (``main.warm_forkserver``) passes no first shim socket
    sock = None if req.get("warm") else socket.socket(fileno=3)
    try:
        listener: socket.socket | None = socket.socket(fileno=4)
    except OSError:
        listener = None
    idle = _env_seconds(req, "AIORUNC_FORKSERVER_IDLE", IDLE_SECONDS)
    check = _env_seconds(req, "AIORUNC_FORKSERVER_CHECK", CHECK_SECONDS)
    try:
        preimport()
    except Exception:
        if listener is not None:
            listener.close()
            listener = None
    # shims are our children: let the kernel reap them (after preimport, whose helpers
    # wait for their own child processes)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    if sock is not None:
        _spawn(req, sock, None, listener)
        sock.close()
    if listener is not None:
        try:
            serve(listener, idle, alive=lambda: daemon_alive(req), check=check, spare=True)
        finally:
            listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
