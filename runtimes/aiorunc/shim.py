"""The serving shim process: one event loop serving ``containerd.task.v2.Task`` over ttrpc.

Entered from a fork of the fork server or from ``main serve``, with the bound,
listening shim socket.  As Go's ``pkg/shim`` serve path: logs go to the
``log`` FIFO of the bundle when the daemon reads it (else nowhere), the
process becomes the child subreaper (:class:`.reaper.Reaper`), writes
``shim.pid`` into the bundle, sets its ``oom_score_adj`` (daemon's + 1),
serves until Shutdown leaves no containers (or ``SIGTERM``), then flushes its
events, closes the server and removes its socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

from aiocontainerd import pbspeed, ttrpc

log = logging.getLogger("aiorunc")
pbspeed.apply()   # betterproto2's encoder without its per-field warnings guard


@dataclasses.dataclass
class ShimConfig:
    """What a serving shim needs: its flags and environment (see ``main.Options``)."""

    namespace: str
    id: str
    address: str
    ttrpc_address: str
    publish_binary: str = ""
    bundle: str = ""
    debug: bool = False
    oom_score_adj: int | None = None
    #: write ``shim.pid`` (False when ``start`` learnt the pid and writes it itself:
    #: one writer per file)
    write_pid: bool = True


class _LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace('"', '\\"')
        level = {"WARNING": "warning", "CRITICAL": "fatal"}.get(record.levelname,
                                                               record.levelname.lower())
        line = f'time="{self.formatTime(record, "%Y-%m-%dT%H:%M:%S")}" level={level} msg="{msg}"'
        if record.exc_info:
            line += ' error="' + self.formatException(record.exc_info).replace("\n", "\\n") + '"'
        return line


def setup_logging(debug: bool) -> None:
    """Send log records to the bundle's ``log`` FIFO (as Go's ``openLog``), non-blocking."""
    logging.raiseExceptions = False
    fd = -1
    with contextlib.suppress(OSError):
        fd = os.open("log", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(fd, 2, inheritable=True)
    if fd != 2:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    handler = logging.StreamHandler(open(2, "w", closefd=False, buffering=1))
    handler.setFormatter(_LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _write_self(cfg: ShimConfig) -> None:
    if cfg.write_pid:
        from .main import _atomic_write

        with contextlib.suppress(OSError):
            _atomic_write("shim.pid", str(os.getpid()))
    if cfg.oom_score_adj is not None:
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(cfg.oom_score_adj))


async def serve(cfg: ShimConfig, sock: socket.socket) -> None:
    """Serve the task API on ``sock`` until shut down (see module doc)."""
    from .publisher import Publisher
    from .reaper import Reaper
    from .service import TASK_SERVICE, TaskService

    loop = asyncio.get_running_loop()
    reaper = Reaper()
    reaper.install(loop)
    publisher = Publisher(cfg.ttrpc_address, cfg.namespace)
    service = TaskService(cfg, reaper, publisher)
    server = ttrpc.Server(require_same_user=True)  # as the Go shim (UnixSocketRequireSameUser)
    server.register(TASK_SERVICE, service.methods())
    try:
        path = sock.getsockname()
    except OSError:
        path = ""
    await server.start(sock=sock)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_shutdown)
    log.debug("serving %s", path)
    try:
        await service.shutdown_requested.wait()
    finally:
        with contextlib.suppress(Exception):
            await server.shutdown(2.0)
        with contextlib.suppress(Exception):
            await server.close()
        await service.close()
        await publisher.close(5.0)
        if isinstance(path, str) and path and not path.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        reaper.uninstall()


def run(cfg: ShimConfig, sock: socket.socket) -> int:
    """Process entry: logging, pid file, OOM score, then :func:`serve` on a fresh loop."""

    async def given() -> tuple[ShimConfig, socket.socket]:
        return cfg, sock

    return run_spare(given)


def run_spare(receive: Callable[[], Awaitable[tuple[ShimConfig, socket.socket] | None]]) -> int:
    """Process entry of a spare shim (forked ahead of its request by the fork server): the
    event loop is made first; ``receive()`` awaits the request on it and adopts it (cwd,
    environment), returning the config and the bound socket to serve, or None (nothing to
    serve: exit 0). Then as :func:`run`: logging, pid file, OOM score, :func:`serve`."""

    async def main() -> None:
        # the worker thread the first Create's mount runs on: starting one in a fresh
        # process takes ~1.4 ms, which a spare spends before it is asked for
        await asyncio.get_running_loop().run_in_executor(None, int)
        got = await receive()
        if got is None:
            return
        cfg, sock = got
        setup_logging(cfg.debug)
        _write_self(cfg)
        await serve(cfg, sock)

    try:
        asyncio.run(main())
    except Exception:
        log.exception("shim failed")
        return 1
    return 0
