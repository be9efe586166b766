"""Prometheus metrics of one daemon, served over HTTP by aiohttp at ``/v1/metrics``.

Each :class:`Metrics` owns its own ``CollectorRegistry`` (two daemons in one
process never mix their figures). Exported:

- ``grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}``: calls
  completed (``grpc_type``: unary, server_stream, client_stream, bidi_stream; ``grpc_code``
  as Go names codes: OK, NotFound, AlreadyExists, ...);
- ``grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}``: latency, seconds;
- ``aiocontainerd_build_info{version,revision,python}``: always 1.

The names follow go-grpc-prometheus, which containerd exports.

Scrape hooks (:meth:`Metrics.add_scrape_hook`) are async functions awaited before
each render at ``/v1/metrics``, for collectors whose figures must be fetched
asynchronously first (task cgroup statistics from shims:
:mod:`aiocontainerd.cgroups.prometheus`).
"""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .version import REVISION, version

if TYPE_CHECKING:
    from aiohttp import web

PATH = "/v1/metrics"
log = logging.getLogger("aiocontainerd.metrics")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _split(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``)."""
    _, _, rest = method.partition("/")
    service, _, name = rest.partition("/")
    return service, name


class Metrics:
    """The daemon's metric families and their registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.handled = Counter(
            "grpc_server_handled_total", "Total number of RPCs completed on the server.",
            ("grpc_type", "grpc_service", "grpc_method", "grpc_code"), registry=self.registry)
        self.latency = Histogram(
            "grpc_server_handling_seconds", "Response latency (seconds) of gRPC handled by the server.",
            ("grpc_type", "grpc_service", "grpc_method"), buckets=_BUCKETS, registry=self.registry)
        build = Gauge("aiocontainerd_build_info", "Build information of the daemon.",
                      ("version", "revision", "python"), registry=self.registry)
        build.labels(version(), REVISION, platform.python_version()).set(1)
        self._scrape_hooks: list[Callable[[], Awaitable[None]]] = []

    def add_scrape_hook(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], None]:
        """Await ``hook()`` before every scrape (see :meth:`refresh`); returns its remover."""
        self._scrape_hooks.append(hook)

        def remove() -> None:
            if hook in self._scrape_hooks:
                self._scrape_hooks.remove(hook)
        return remove

    async def refresh(self) -> None:
        """Run the scrape hooks concurrently; a failing hook is logged, never raised."""
        if not self._scrape_hooks:
            return
        results = await asyncio.gather(*(h() for h in list(self._scrape_hooks)), return_exceptions=True)
        for r in results:
            if isinstance(r, Exception):
                log.warning("metrics scrape hook failed: %s", r)

    def observe_grpc(self, method: str, kind: str, code: str, seconds: float) -> None:
        """Record one completed call of ``method`` (``/pkg.Service/Method``) of type ``kind``."""
        service, name = _split(method)
        self.handled.labels(kind, service, name, code).inc()
        self.latency.labels(kind, service, name).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every family."""
        return generate_latest(self.registry)


class MetricsServer:
    """aiohttp server for ``GET /v1/metrics`` on ``host:port``.

    aiohttp is imported on :meth:`start`, not with this module: it costs about
    100 ms of daemon start-up, and the endpoint is off by default.
    """

    def __init__(self, metrics: Metrics, address: str) -> None:
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"metrics address {address!r} is not host:port")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self._metrics = metrics
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        from aiohttp import web

        await self._metrics.refresh()
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get(PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server  # the bound port, for "host:0" in tests
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
