"""The pre-imported fork server behind ``containerd-shim-aiorunc-v2 start``.

A Python shim that imports asyncio, betterproto2, the task API and its own
modules afresh for every container spends ~0.2 s of CPU before it can serve.
The fork server pays that once: it is started (double-forked, own session,
stdio on ``/dev/null``, cwd ``/``) by the first ``start`` with

* fd 3: the bound, listening shim socket of that first request,
* fd 4: the bound, listening ``SOCK_SEQPACKET`` abstract socket it answers on
  (``main.forkserver_key``: daemon address + installed shim version), and
* fd 5: a memfd holding the first request (JSON, see ``main.Options.to_request``),

imports everything a shim needs (creating **no** event loop and no thread),
forks the first shim, and then serves requests: one datagram of JSON carrying
the bound shim socket as ``SCM_RIGHTS``; it answers ``{"pid": N}`` (or
``{"error": "..."}``).  Every shim is double-forked (so it is not the fork
server's child, nothing is left to reap) and calls ``setsid``; the grandchild
then takes the request's environment and bundle cwd, creates its own event loop
and serves (:func:`.shim.run`).  The intermediate child is reaped at once, so
the fork server never holds zombies.

After ``AIORUNC_FORKSERVER_IDLE`` seconds without a request (default 600) the
fork server exits; a later ``start`` launches a new one.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys

IDLE_SECONDS = 600.0


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

    import betterproto2  # noqa: F401

    from aiocontainerd.api.containerd.task import v2  # noqa: F401

    from . import service, shim  # noqa: F401

    gc.collect()
    gc.freeze()


def _spawn(req: dict, sock: socket.socket, conn: socket.socket | None,
           listener: socket.socket | None) -> None:
    """Double-fork a shim serving ``sock`` for ``req``; the child answers on ``conn``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setsid()
            pid2 = os.fork()
            if pid2:
                if conn is not None:
                    try:
                        conn.send(json.dumps({"pid": pid2}).encode())
                    except OSError:
                        os.kill(pid2, signal.SIGKILL)  # the caller gave up: no second shim
                os._exit(0)
            if listener is not None:
                listener.close()
            if conn is not None:
                conn.close()
            code = become_shim(req, sock)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def become_shim(req: dict, sock: socket.socket) -> int:
    """In the forked grandchild: adopt ``req``'s environment and bundle, then serve."""
    from .shim import ShimConfig, run

    os.chdir(req["bundle"])
    os.environ.clear()
    os.environ.update(req.get("env") or {})
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    cfg = ShimConfig(namespace=req["namespace"], id=req["id"], address=req["address"],
                     ttrpc_address=req.get("ttrpc_address", ""),
                     publish_binary=req.get("publish_binary", ""), bundle=req["bundle"],
                     debug=bool(req.get("debug")), oom_score_adj=req.get("oom_score_adj"))
    return run(cfg, sock)


def _handle(conn: socket.socket, listener: socket.socket) -> None:
    conn.settimeout(5)
    fds: list[int] = []
    try:
        data, anc, _, _ = conn.recvmsg(1 << 20, socket.CMSG_SPACE(16))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                        for i in range(0, len(payload) - len(payload) % 4, 4)]
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
            _spawn(req, sock, conn, listener)
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


def serve(listener: socket.socket, idle: float) -> None:
    """Answer fork requests until ``idle`` seconds pass without one."""
    while True:
        r, _, _ = select.select([listener], [], [], idle)
        if not r:
            return
        try:
            conn, _ = listener.accept()
        except OSError:
            continue
        _handle(conn, listener)


def main(argv: list[str]) -> int:
    """``python -m aiocontainerd.runtimes.aiorunc.forkserver`` with fds 3, 4 and 5."""
    os.chdir("/")
    with open(5, "rb") as f:
        req = json.loads(f.read())
    sock = socket.socket(fileno=3)
    try:
        listener: socket.socket | None = socket.socket(fileno=4)
    except OSError:
        listener = None
    try:
        idle = float(req.get("env", {}).get("AIORUNC_FORKSERVER_IDLE") or IDLE_SECONDS)
    except ValueError:
        idle = IDLE_SECONDS
    try:
        preimport()
    except Exception:
        if listener is not None:
            listener.close()
            listener = None
    _spawn(req, sock, None, listener)
    sock.close()
    if listener is not None:
        serve(listener, idle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
