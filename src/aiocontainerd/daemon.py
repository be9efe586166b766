"""The daemon: plugins, the gRPC socket and the metrics endpoint on the caller's event loop.

Embedding::

    async with aiocontainerd.Daemon(config) as daemon:
        ...                      # serving on daemon.address until the block ends

or ``await daemon.start()`` … ``await daemon.stop()``. The ``aiocontainerd``
command does the same and stops on SIGTERM/SIGINT.

Start-up order: root (0700) and state (0711) folders; an exclusive lock on
``<root>/aiocontainerd.lock`` (a second daemon on the same root is refused,
the kernel drops the lock of a killed one); the socket path is
checked (its folder must exist unless it is the state folder; a live socket
there is refused, a stale one removed); plugins are initialised in dependency
order; the gRPC server binds the socket (0660, owned by ``[grpc] uid/gid``);
the metrics server starts if ``[metrics] address`` is set. Any failure undoes
what was done and raises :class:`StartError` (or
:class:`~aiocontainerd.plugin.PluginError`) with the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import builtins
from .config import Config
from .metrics import Metrics, MetricsServer
from .plugin import GRPC, PluginSet, Registration
from .services.server import Server

log = logging.getLogger(__name__)
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


def _prepare_socket(path: str, state: Path) -> None:
    folder = Path(path).parent
    if not folder.is_dir():
        if folder == state:
            folder.mkdir(parents=True, exist_ok=True, mode=0o711)
        else:
            raise StartError(f"cannot listen on {path}: folder {folder} does not exist")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartError(f"cannot listen on {path}: a file that is not a socket is there")
    if _socket_in_use(path):
        raise StartError(f"cannot listen on {path}: another daemon is serving it")
    os.unlink(path)


def _prepare_folders(root: Path, state: Path, address: str) -> int:
    """Create root and state, lock root, check the socket path; returns the lock's fd."""
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        state.mkdir(parents=True, exist_ok=True, mode=0o711)
    except OSError as e:
        raise StartError(f"cannot create {e.filename}: {e.strerror}") from None
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _prepare_socket(address, state)
    except BlockingIOError:
        os.close(fd)
        raise StartError(f"root {root} is in use by another daemon "
                         "(a root folder cannot be shared)") from None
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
        self._lock_fd = await asyncio.to_thread(_prepare_folders, root, state, cfg.grpc.address)
        try:
            await self.plugins.init_all(
                self.registrations,
                configs=lambda r: cfg.plugin_config(r.uri, r.config),
                root=root, state=state,
                properties={"grpc.address": cfg.grpc.address,
                            "ttrpc.address": cfg.ttrpc_address},
                disabled=cfg.disabled_plugins,
                required=cfg.required_plugins,
            )
            handlers = [p.instance for p in self.plugins.of_type(GRPC)
                        if p.ok and hasattr(p.instance, "__mapping__")]
            self._server = Server(handlers, self.metrics)
            try:
                await self._server.start(path=cfg.grpc.address)
            except OSError as e:
                raise StartError(f"cannot listen on {cfg.grpc.address}: {e.strerror}") from None
            os.chmod(cfg.grpc.address, 0o660)
            os.chown(cfg.grpc.address, cfg.grpc.uid, cfg.grpc.gid)
            if cfg.metrics.address:
                self._metrics_server = MetricsServer(self.metrics, cfg.metrics.address)
                try:
                    await self._metrics_server.start()
                except OSError as e:
                    raise StartError(f"cannot serve metrics on {cfg.metrics.address}: "
                                     f"{e.strerror}") from None
        except BaseException:
            await self._teardown()
            raise
        log.info("aiocontainerd successfully booted",
                 extra={"fields": {"address": cfg.grpc.address, "pid": os.getpid()}})

    async def stop(self) -> None:
        """Stop serving: close the sockets, let running calls end, close plugins."""
        await self._teardown()
        self._stopped.set()

    async def wait(self) -> None:
        """Wait until :meth:`stop` has completed."""
        await self._stopped.wait()

    async def _teardown(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(RuntimeError):
                server.close()
                try:
                    await asyncio.wait_for(server.wait_closed(), 5)
                except TimeoutError:
                    log.warning("requests still running at shutdown were cancelled")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.grpc.address)
        if self._metrics_server is not None:
            await self._metrics_server.close()
            self._metrics_server = None
        await self.plugins.close_all()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> Any:
        await self.stop()
