"""The daemon: plugins, the gRPC socket and the metrics endpoint on the caller's event loop.

Embedding::

    async with aiocontainerd.Daemon(config) as daemon:
        ...                      # serving on daemon.address until the block ends

or ``await daemon.start()`` … ``await daemon.stop()``. The ``aiocontainerd``
command does the same and stops on SIGTERM/SIGINT.

Start-up order: root (0700) and state (0711) folders; exclusive locks on
``<root>/aiocontainerd.lock`` and ``<state>/aiocontainerd.lock`` (a second
daemon on the same root or state is refused, the kernel drops the locks of a
killed one); the socket path is
checked (its folder must exist unless it is the state folder; a live socket
there is refused) and a socket bound beside it (0660, owned by ``[grpc]
uid/gid``); plugins are initialised in dependency order; the gRPC server
listens, and only then is the socket linked to its path (a stale one there
replaced), so a client never finds the path without a listener;
the ttrpc server (the ``io.containerd.ttrpc.v1`` plugins, e.g. the events
shims forward) is published the same way on ``[ttrpc] address``
(``<grpc.address>.ttrpc`` by default); the metrics server starts if
``[metrics] address`` is set; last, the heap freed during start-up is handed back
to the kernel (``malloc_trim``). Any failure undoes
what was done and raises :class:`StartError` (or
:class:`~aiocontainerd.plugin.PluginError`) with the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import builtins, heap, pbspeed
from .config import Config
from .metrics import Metrics, MetricsServer
from .plugin import GRPC, TTRPC, PluginSet, Registration
from .services.server import Server

if TYPE_CHECKING:
    from .ttrpc import Server as TTRPCServer

log = logging.getLogger(__name__)
pbspeed.apply()   # betterproto2's encoder without its per-field warnings guard (every message we send)
LOCK_FILE = "aiocontainerd.lock"


class StartError(RuntimeError):
    """The daemon could not start: bad folders, socket in use or in a missing folder."""


def _socket_in_use(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def _bind_socket(path: str, state: Path, uid: int, gid: int,
                 tag: str = "grpc") -> tuple[socket.socket, str]:
    """Bind a unix socket (0660, ``uid:gid``) beside ``path``, to be published there later.

    The socket is bound under a temporary name in the same folder; once the
    server listens, :func:`_publish_socket` links it to ``path``, so the path
    never exists without a listener behind it. Returns the socket and its name.
    """
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise StartError(f"cannot listen on {path}: the path is {len(path.encode())} bytes, "
                         f"unix sockets allow at most {MAX_SOCKET_PATH}")
    folder = Path(path).parent
    if not folder.is_dir():
        if folder == state:
            folder.mkdir(parents=True, exist_ok=True, mode=0o711)
        else:
            raise StartError(f"cannot listen on {path}: folder {folder} does not exist")
    _check_existing(path)
    tmp = str(folder / f".{os.getpid()}.{tag}.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        os.chmod(tmp, 0o660)
        os.chown(tmp, uid, gid)
    except OSError as e:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise StartError(f"cannot listen on {path}: {e.strerror or e}") from None
    return sock, tmp


def _check_existing(path: str) -> bool:
    """Whether a stale socket is at ``path``; StartError for a live one or another file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise StartError(f"cannot listen on {path}: a file that is not a socket is there")
    if _socket_in_use(path):
        raise StartError(f"cannot listen on {path}: another daemon is serving it")
    return True


def _publish_socket(tmp: str, path: str) -> None:
    """Link the listening socket ``tmp`` to ``path``; a stale socket there is replaced.

    The link fails if ``path`` exists, so two daemons racing for one path cannot
    both publish; the loser finds the winner's live socket and gets StartError.
    """
    try:
        for _ in range(3):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                if _check_existing(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
        raise StartError(f"cannot listen on {path}: it keeps being replaced")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _prepare(root: Path, state: Path, cfg: Config) -> tuple[int, int, socket.socket, str]:
    """Create root and state, lock both, bind the socket; returns the locks' fds and the socket."""
    for folder, mode in ((root, 0o700), (state, 0o711)):
        if not str(folder):
            raise StartError("root and state must not be empty")
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=mode)
        except FileExistsError:
            raise StartError(f"cannot use {folder}: it exists and is not a folder") from None
        except OSError as e:
            raise StartError(f"cannot create {e.filename}: {e.strerror}") from None
    fd = _lock(root, "root")
    try:   # one folder for both: its one lock is enough
        state_fd = _lock(state, "state") if state.resolve() != root.resolve() else os.dup(fd)
    except BaseException:
        os.close(fd)
        raise
    try:
        return (fd, state_fd, *_bind_socket(cfg.grpc.address, state, cfg.grpc.uid, cfg.grpc.gid))
    except BaseException:
        os.close(fd)
        os.close(state_fd)
        raise


def _lock(folder: Path, what: str) -> int:
    """An exclusive lock on ``<folder>/aiocontainerd.lock``; StartError if another daemon holds it.

    Root and state are both locked: a second daemon on the same state would take the first
    one's shim bundles for its own (and clean up those it has no record of).
    """
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartError(f"{what} {folder} is in use by another daemon "
                         f"(a {what} folder cannot be shared)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class Daemon:
    """One containerd daemon. Not reusable: start once, stop once."""

    def __init__(self, config: Config | None = None, *,
                 plugins: Sequence[Registration] | None = None) -> None:
        self.config = config or Config()
        self.registrations = list(plugins) if plugins is not None else builtins.registrations()
        self.plugins = PluginSet()
        self.metrics = Metrics()
        self._server: Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._stopped = asyncio.Event()
        self._lock_fd: int | None = None
        self._state_lock_fd: int | None = None
        self._socket_ino: int | None = None
        self._socket_tmp: str | None = None
        self._ttrpc: TTRPCServer | None = None
        self._ttrpc_ino: int | None = None

    @property
    def address(self) -> str:
        """The gRPC unix socket path."""
        return self.config.grpc.address

    @property
    def metrics_address(self) -> str | None:
        """``host:port`` of the metrics endpoint (the bound port), or None when disabled."""
        if self._metrics_server is None:
            return None
        return f"{self._metrics_server.host}:{self._metrics_server.port}"

    async def start(self) -> None:
        """Start serving. Raises StartError, PluginError; nothing is left running on failure."""
        cfg = self.config
        root, state = Path(cfg.root), Path(cfg.state)
        # shielded: a cancelled start must still get the lock and socket back to release them
        prepare = asyncio.ensure_future(asyncio.to_thread(_prepare, root, state, cfg))
        try:
            self._lock_fd, self._state_lock_fd, sock, tmp = await asyncio.shield(prepare)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                fd, state_fd, sock, tmp = await prepare
                sock.close()
                os.unlink(tmp)
                os.close(fd)
                os.close(state_fd)
            raise
        self._socket_tmp = tmp
        try:
            await self.plugins.init_all(
                self.registrations,
                configs=lambda r: cfg.plugin_config(r.uri, r.config),
                root=root, state=state,
                properties={"grpc.address": cfg.grpc.address,
                            "ttrpc.address": cfg.ttrpc_address},
                disabled=cfg.disabled_plugins,
                required=cfg.required_plugins,
                metrics=self.metrics,
            )
            handlers = [p.instance for p in self.plugins.of_type(GRPC)
                        if p.ok and hasattr(p.instance, "__mapping__")]
            self._server = Server(handlers, self.metrics)
            await self._server.start(sock=sock)
            sock = None
            await asyncio.to_thread(_publish_socket, tmp, cfg.grpc.address)
            self._socket_tmp = None
            self._socket_ino = os.stat(cfg.grpc.address).st_ino
            await self._start_ttrpc(state)
            if cfg.metrics.address:
                self._metrics_server = MetricsServer(self.metrics, cfg.metrics.address)
                try:
                    await self._metrics_server.start()
                except OSError as e:
                    raise StartError(f"cannot serve metrics on {cfg.metrics.address}: "
                                     f"{e.strerror}") from None
        except BaseException:
            if sock is not None:
                sock.close()
            await self._teardown()
            raise
        # start-up garbage (import-time cycles, plugin init) back to the kernel: an idle
        # daemon should not keep the heap its imports and compilations once needed
        gc.collect()
        heap.trim()
        log.info("aiocontainerd successfully booted",
                 extra={"fields": {"address": cfg.grpc.address, "pid": os.getpid()}})

    async def _start_ttrpc(self, state: Path) -> None:
        """Serve the ``io.containerd.ttrpc.v1`` plugins on ``[ttrpc] address``."""
        cfg = self.config
        services = [p.instance for p in self.plugins.of_type(TTRPC) if p.ok]
        if not services:
            return
        from .ttrpc import Server as TTRPCServer

        self._ttrpc = TTRPCServer()
        for service in services:
            service.register_ttrpc(self._ttrpc)
        sock, tmp = await asyncio.to_thread(_bind_socket, cfg.ttrpc_address, state,
                                            cfg.ttrpc.uid, cfg.ttrpc.gid, "ttrpc")
        try:
            await self._ttrpc.start(sock=sock)
            await asyncio.to_thread(_publish_socket, tmp, cfg.ttrpc_address)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._ttrpc_ino = os.stat(cfg.ttrpc_address).st_ino

    async def stop(self) -> None:
        """Stop serving: close the sockets, let running calls end, close plugins."""
        await self._teardown()
        self._stopped.set()

    async def wait(self) -> None:
        """Wait until :meth:`stop` has completed."""
        await self._stopped.wait()

    def _remove_socket(self) -> None:
        """Remove the socket file if it is still the one this daemon bound."""
        if self._socket_tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket_tmp)
            self._socket_tmp = None
        if self._socket_ino is None:
            return
        path, self._socket_ino, ino = self.config.grpc.address, None, self._socket_ino
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == ino:
                os.unlink(path)

    async def _teardown(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(RuntimeError):
                server.close()
                try:
                    await asyncio.wait_for(server.wait_closed(), 5)
                except TimeoutError:
                    log.warning("requests still running at shutdown were cancelled")
        self._remove_socket()
        if self._ttrpc is not None:
            ttrpc_server, self._ttrpc = self._ttrpc, None
            await ttrpc_server.close()
            path, ino, self._ttrpc_ino = self.config.ttrpc_address, self._ttrpc_ino, None
            with contextlib.suppress(FileNotFoundError):
                if ino is not None and os.stat(path).st_ino == ino:
                    os.unlink(path)
        if self._metrics_server is not None:
            await self._metrics_server.close()
            self._metrics_server = None
        await self.plugins.close_all()
        for fd in (self._lock_fd, self._state_lock_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._state_lock_fd = None

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> Any:
        await self.stop()
