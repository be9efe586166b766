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

prometheus_client is loaded only when it is needed
--------------------------------------------------
prometheus_client costs an idle daemon about 2 MiB (it imports http.server, wsgiref,
urllib.request, email, ...), and the metrics endpoint is off by default. So figures
are kept in plain Python structures (:class:`Counter`, :class:`Gauge`,
:class:`Histogram`, made by :meth:`Metrics.counter` and co.), and the
``CollectorRegistry`` is built on first use of :attr:`Metrics.registry`: the first
:meth:`Metrics.render`, or :meth:`MetricsServer.start` when ``[metrics] address`` is
set. Each family is then a custom collector yielding exactly the samples
prometheus_client's own ``Counter``/``Gauge``/``Histogram`` would (same names,
labels, buckets, values, ``_created`` timestamps, order), so figures recorded before
the registry existed are all there. Other collectors register through
:meth:`Metrics.on_registry`, which defers them until the registry is built.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .version import REVISION, version

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

__all__ = ["PATH", "Counter", "Gauge", "Histogram", "Metrics", "MetricsServer"]

PATH = "/v1/metrics"
log = logging.getLogger("aiocontainerd.metrics")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: prometheus_client's default histogram buckets (``Histogram.DEFAULT_BUCKETS``, +Inf added)
DEFAULT_BUCKETS = (.005, .01, .025, .05, .075, .1, .25, .5, .75, 1.0, 2.5, 5.0, 7.5, 10.0)
_INF = float("inf")
#: time series names a family of each type holds besides its own (prometheus_client's registry)
_C = TypeVar("_C", "_CounterChild", "_GaugeChild", "_HistogramChild")
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": (),
             "histogram": ("_bucket", "_sum", "_count", "_created")}


def _split(method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` as (``pkg.Service``, ``Method``)."""
    _, _, rest = method.partition("/")
    service, _, name = rest.partition("/")
    return service, name


def _go_float(d: float) -> str:
    """A bucket bound as prometheus_client writes it in ``le`` (``utils.floatToGoString``)."""
    from prometheus_client.utils import floatToGoString

    return floatToGoString(d)


def _use_created() -> bool:
    """Whether prometheus_client exports ``_created`` series now (PROMETHEUS_DISABLE_CREATED_SERIES)."""
    from prometheus_client import metrics

    return metrics._use_created


# -- plain metric families --------------------------------------------------------------------

class _CounterChild:
    """One labelled series of a :class:`Counter`."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (not negative, as prometheus_client requires)."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        out = [("_total", {}, self.value)]
        if _use_created():
            out.append(("_created", {}, self.created))
        return out


class _GaugeChild:
    """One labelled series of a :class:`Gauge`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value += -amount

    def set(self, value: float) -> None:
        self.value = float(value)

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        return [("", {}, self.value)]


class _HistogramChild:
    """One labelled series of a :class:`Histogram`: per-bucket (not cumulative) counts and the sum."""

    __slots__ = ("bounds", "buckets", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0.0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose bound is >= it (none for NaN), add it to the sum."""
        self.sum += amount
        bounds = self.bounds
        i = bisect_left(bounds, amount)
        if i < len(bounds) and amount <= bounds[i]:
            self.buckets[i] += 1

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        out: list[tuple[str, dict[str, str], float]] = []
        acc = 0.0
        for bound, n in zip(self.bounds, self.buckets, strict=True):
            acc += n
            out.append(("_bucket", {"le": _go_float(bound)}, acc))
        out.append(("_count", {}, acc))
        if self.bounds[0] >= 0:
            out.append(("_sum", {}, self.sum))
        if _use_created():
            out.append(("_created", {}, self.created))
        return out


class _Family(Generic[_C]):
    """A metric family in plain Python structures, exposed as a prometheus_client collector.

    Recording needs no prometheus_client (see the module doc); :meth:`collect` yields
    what the prometheus_client metric of the same type, name and labels would. As
    there, an unlabelled family has its one series from construction on, a labelled
    one gets a series on the first :meth:`labels` call for its values. Not locked:
    figures are recorded on the daemon's event loop.
    """

    type = ""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> None:
        if self.type == "counter" and name.endswith("_total"):
            name = name[:-6]  # as prometheus_client: the exposition adds _total back
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _C] = {}
        if not self.labelnames:
            self._children[()] = self._new()

    def _new(self) -> _C:
        raise NotImplementedError

    def labels(self, *values: Any) -> _C:
        """The series of these label values (created on first use)."""
        child = self._children.get(values)
        if child is None:
            if not self.labelnames:
                raise ValueError(f"No label names were set when constructing {self.type}:{self.name}")
            if len(values) != len(self.labelnames):
                raise ValueError("Incorrect label count")
            key = tuple(str(v) for v in values)
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new()
        return child

    def _only(self) -> _C:
        """The series of an unlabelled family."""
        if self.labelnames:
            raise ValueError(f"{self.type} metric is missing label values")
        return self._children[()]

    def series_names(self) -> list[str]:
        """The time series names this family holds (what the registry checks for duplicates)."""
        return [self.name, *(self.name + s for s in _SUFFIXES[self.type])]

    def describe(self) -> list[Metric]:
        from prometheus_client.metrics_core import Metric

        return [Metric(self.name, self.documentation, self.type)]

    def collect(self) -> list[Metric]:
        from prometheus_client.metrics_core import Metric

        metric = Metric(self.name, self.documentation, self.type)
        for values, child in list(self._children.items()):
            series = dict(zip(self.labelnames, values, strict=True))
            for suffix, labels, value in child.samples():
                metric.add_sample(self.name + suffix, {**series, **labels}, value)
        return [metric]


class Counter(_Family[_CounterChild]):
    """A counter family (prometheus_client ``Counter`` API: ``labels(...).inc()``, ``inc()``)."""

    type = "counter"

    def _new(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)


class Gauge(_Family[_GaugeChild]):
    """A gauge family (prometheus_client ``Gauge`` API: ``inc``, ``dec``, ``set``)."""

    type = "gauge"

    def _new(self) -> _GaugeChild:
        return _GaugeChild()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._only().dec(amount)

    def set(self, value: float) -> None:
        self._only().set(value)


class Histogram(_Family[_HistogramChild]):
    """A histogram family (prometheus_client ``Histogram`` API: ``observe``); +Inf is added to ``buckets``."""

    type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds and bounds[-1] != _INF:
            bounds.append(_INF)
        if len(bounds) < 2:
            raise ValueError("Must have at least two buckets")
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames)

    def _new(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, amount: float) -> None:
        self._only().observe(amount)


_F = TypeVar("_F", Counter, Gauge, Histogram)


# -- the daemon's metrics ---------------------------------------------------------------------

class Metrics:
    """The daemon's metric families, and its prometheus_client registry once needed."""

    def __init__(self) -> None:
        self._registry: CollectorRegistry | None = None
        self._pending: list[Callable[[CollectorRegistry], None]] = []
        self._names: set[str] = set()
        self._scrape_hooks: list[Callable[[], Awaitable[None]]] = []
        self._methods: dict[str, tuple[str, str]] = {}
        #: state that metric users keep once per daemon (``cri.metrics.CRIMetrics`` shares its families)
        self.shared: dict[str, Any] = {}
        self.handled = self.counter(
            "grpc_server_handled_total", "Total number of RPCs completed on the server.",
            ("grpc_type", "grpc_service", "grpc_method", "grpc_code"))
        self.latency = self.histogram(
            "grpc_server_handling_seconds", "Response latency (seconds) of gRPC handled by the server.",
            ("grpc_type", "grpc_service", "grpc_method"), buckets=_BUCKETS)
        build = self.gauge("aiocontainerd_build_info", "Build information of the daemon.",
                           ("version", "revision", "python"))
        build.labels(version(), REVISION, platform.python_version()).set(1)

    # -- families and collectors --

    def _add(self, family: _F) -> _F:
        names = family.series_names()
        taken = self._names.intersection(names)
        if taken:  # what prometheus_client would refuse at registration, said now
            raise ValueError(f"Duplicated timeseries in CollectorRegistry: {taken}")
        self._names.update(names)
        self.on_registry(lambda registry: registry.register(family))
        return family

    def counter(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> Counter:
        """A new :class:`Counter` exported by this daemon (``name`` as prometheus_client takes it)."""
        return self._add(Counter(name, documentation, labelnames))

    def gauge(self, name: str, documentation: str, labelnames: Iterable[str] = ()) -> Gauge:
        """A new :class:`Gauge` exported by this daemon."""
        return self._add(Gauge(name, documentation, labelnames))

    def histogram(self, name: str, documentation: str, labelnames: Iterable[str] = (), *,
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        """A new :class:`Histogram` exported by this daemon."""
        return self._add(Histogram(name, documentation, labelnames, buckets))

    def on_registry(self, fn: Callable[[CollectorRegistry], None]) -> Callable[[], None]:
        """Call ``fn(registry)`` once the registry exists: now if it does, else when it is built.

        Calls happen in the order they were asked for (the order families are
        exposed in). Returns a function that drops a call not made yet.
        """
        if self._registry is not None:
            fn(self._registry)
            return lambda: None
        self._pending.append(fn)

        def cancel() -> None:
            if fn in self._pending:
                self._pending.remove(fn)
        return cancel

    @property
    def registry(self) -> CollectorRegistry:
        """The ``CollectorRegistry`` of every family; imports prometheus_client and builds it on first use."""
        registry = self._registry
        if registry is None:
            from prometheus_client import CollectorRegistry

            registry = self._registry = CollectorRegistry(auto_describe=True)
            pending, self._pending = self._pending, []
            for fn in pending:
                try:
                    fn(registry)
                except Exception:  # its caller is gone: say so, and let the other collectors in
                    log.exception("metrics: a collector could not be registered")
        return registry

    # -- recording and rendering --

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
        """Record one completed call of ``method`` (``/pkg.Service/Method``) of type ``kind``.

        On every call's path: two dict look-ups and three float additions once the
        method's series exist (the served methods are few: their split names are cached).
        """
        split = self._methods.get(method)
        if split is None:
            split = self._methods[method] = _split(method)
        service, name = split
        self.handled.labels(kind, service, name, code).inc()
        self.latency.labels(kind, service, name).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every family."""
        from prometheus_client.exposition import generate_latest

        return generate_latest(self.registry)


class MetricsServer:
    """aiohttp server for ``GET /v1/metrics`` on ``host:port``.

    aiohttp and prometheus_client are imported on :meth:`start`, not with this module:
    they cost about 100 ms of daemon start-up and megabytes of memory, and the
    endpoint is off by default.
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
        from prometheus_client.exposition import CONTENT_TYPE_LATEST

        await self._metrics.refresh()
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        """Listen; the registry is built now (prometheus_client loaded), as it will be scraped."""
        from aiohttp import web

        self._metrics.registry  # noqa: B018 - built for its side effect

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
