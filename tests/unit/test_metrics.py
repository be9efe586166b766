"""The daemon's metrics without prometheus_client until needed, and exactly its exposition then.

:mod:`aiocontainerd.metrics` keeps figures in plain structures and builds the
prometheus_client registry on first use (an idle daemon does not pay ~2 MiB for it).
These tests hold the exposition byte for byte to what prometheus_client's own
``Counter``/``Gauge``/``Histogram`` give for the same calls, figures recorded before
the registry existed included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PCounter
from prometheus_client import Gauge as PGauge
from prometheus_client import Histogram as PHistogram
from prometheus_client import metrics as pmetrics
from prometheus_client.exposition import generate_latest

from aiocontainerd.metrics import _BUCKETS, Metrics
from aiocontainerd.version import REVISION, version
from tests.support.imports import loaded

NOW = 1_700_000_000.25


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_created`` series are ``time.time()`` of a series' creation, in both implementations."""
    monkeypatch.setattr(time, "time", lambda: NOW)


def _reference() -> tuple[CollectorRegistry, Any, Any]:
    """The metrics as the daemon built them with prometheus_client (before it was made lazy)."""
    import platform

    reg = CollectorRegistry(auto_describe=True)
    handled = PCounter("grpc_server_handled_total", "Total number of RPCs completed on the server.",
                       ("grpc_type", "grpc_service", "grpc_method", "grpc_code"), registry=reg)
    latency = PHistogram("grpc_server_handling_seconds",
                         "Response latency (seconds) of gRPC handled by the server.",
                         ("grpc_type", "grpc_service", "grpc_method"), buckets=_BUCKETS, registry=reg)
    PGauge("aiocontainerd_build_info", "Build information of the daemon.", ("version", "revision", "python"),
           registry=reg).labels(version(), REVISION, platform.python_version()).set(1)
    return reg, handled, latency


CALLS = [("/containerd.services.version.v1.Version/Version", "unary", "OK", 0.0004),
         ("/containerd.services.version.v1.Version/Version", "unary", "OK", 0.0005),
         ("/containerd.services.version.v1.Version/Version", "unary", "OK", 0.0031),
         ("/runtime.v1.RuntimeService/ListContainers", "unary", "OK", 12.5),
         ("/runtime.v1.RuntimeService/Attach", "unary", "NotFound", 0.25),
         ("/containerd.services.events.v1.Events/Subscribe", "server_stream", "Canceled", 1e-7),
         ("/x.Y/Z", "bidi_stream", "Unknown", math.inf),
         ("/x.Y/Z", "bidi_stream", "Unknown", math.nan)]


@pytest.mark.parametrize("created", [True, False])
def test_grpc_exposition_as_prometheus_client(monkeypatch: pytest.MonkeyPatch, created: bool) -> None:
    monkeypatch.setattr(pmetrics, "_use_created", created)
    reg, handled, latency = _reference()
    m = Metrics()
    for method, kind, code, seconds in CALLS[:4]:  # before the registry exists
        m.observe_grpc(method, kind, code, seconds)
        service, _, name = method[1:].partition("/")
        handled.labels(kind, service, name, code).inc()
        latency.labels(kind, service, name).observe(seconds)
    assert m._registry is None
    assert m.render() == generate_latest(reg)
    for method, kind, code, seconds in CALLS[4:]:  # and after
        m.observe_grpc(method, kind, code, seconds)
        service, _, name = method[1:].partition("/")
        handled.labels(kind, service, name, code).inc()
        latency.labels(kind, service, name).observe(seconds)
    assert m.render() == generate_latest(reg)


Op = Callable[[Any], None]
OPS: list[tuple[str, tuple[str, ...], dict[str, Any], list[Op]]] = [
    ("counter", (), {}, [lambda c: c.inc(), lambda c: c.inc(2.5)]),
    ("counter", ("status",), {}, [lambda c: c.labels("success").inc(), lambda c: c.labels(1).inc(3),
                                  lambda c: c.labels("1").inc(), lambda c: c.labels("failure").inc(0)]),
    ("gauge", (), {}, [lambda g: g.inc(), lambda g: g.inc(), lambda g: g.dec(), lambda g: g.set(7)]),
    ("gauge", ("a", "b"), {}, [lambda g: g.labels("x", "y").set(1), lambda g: g.labels("x", "z").dec(4)]),
    ("histogram", (), {}, [lambda h, v=v: h.observe(v) for v in (0, 0.005, 0.0051, 0.3, 10, 11, -1)]),
    ("histogram", ("op",), {"buckets": (0.1, 1, 10, 25, 75, 150, 300, 500, 1000, 2000, 4000)},
     [lambda h: h.labels("a").observe(0.1), lambda h: h.labels("b").observe(5000),
      lambda h: h.labels("a").observe(math.inf)]),
    ("histogram", (), {"buckets": (-1.0, 0.0, math.inf)}, [lambda h: h.observe(-3), lambda h: h.observe(0)]),
    ("counter", ("operation_type",), {}, []),  # labelled, never used: HELP and TYPE only
]


def test_families_as_prometheus_client() -> None:
    """Every type, labelled or not, custom buckets, edge values: the same text."""
    reg = CollectorRegistry(auto_describe=True)
    m = Metrics()
    ours, theirs = [], []
    kinds = {"counter": (m.counter, PCounter), "gauge": (m.gauge, PGauge),
             "histogram": (m.histogram, PHistogram)}
    for i, (kind, labels, kwargs, _) in enumerate(OPS):
        name = f"fam{i}_total_total" if kind == "counter" else f"fam{i}"
        make, cls = kinds[kind]
        ours.append(make(name, f"help {i}\\n", labels, **kwargs))
        theirs.append(cls(name, f"help {i}\\n", labels, registry=reg, **kwargs))
    for (_, _, _, ops), a, b in zip(OPS, ours, theirs, strict=True):
        for op in ops:
            op(a)
            op(b)
    text = m.render().decode()
    want = generate_latest(reg).decode()
    assert text[text.index("# HELP fam0"):] == want


def test_errors_as_prometheus_client() -> None:
    m = Metrics()
    c = m.counter("c_total", "c", ("x",))
    with pytest.raises(ValueError):
        c.inc()               # labelled: needs labels
    with pytest.raises(ValueError):
        c.labels("a", "b")    # wrong count
    with pytest.raises(ValueError):
        c.labels("a").inc(-1)
    with pytest.raises(ValueError):
        m.gauge("g", "g").labels("a")
    with pytest.raises(ValueError):
        m.histogram("h", "h", buckets=(2, 1))
    with pytest.raises(ValueError):  # refused at once, not when the registry is built
        m.counter("c", "again")


def test_on_registry_order_and_cancel() -> None:
    m = Metrics()
    seen: list[str] = []
    m.on_registry(lambda reg: seen.append("first"))
    cancel = m.on_registry(lambda reg: seen.append("cancelled"))
    m.on_registry(lambda reg: seen.append("third"))
    cancel()
    assert seen == []
    registry = m.registry
    assert seen == ["first", "third"]
    m.on_registry(lambda reg: seen.append("now" if reg is registry else "?"))
    assert seen[-1] == "now"


def test_recording_loads_no_prometheus_client() -> None:
    """What an idle daemon does to its metrics (gRPC calls, CRI and pull families, the cgroups
    collector) imports no prometheus_client; rendering does."""
    code = (
        "import asyncio\n"
        "from aiocontainerd.metrics import Metrics\n"
        "from aiocontainerd.cri.metrics import CRIMetrics\n"
        "from aiocontainerd.cri.images import _PullMetrics\n"
        "from aiocontainerd.cgroups import prometheus as cgprom\n"
        "m = Metrics()\n"
        "m.observe_grpc('/a.B/C', 'unary', 'OK', 0.01)\n"
        "CRIMetrics(m).observe('sandbox_list', 0.01)\n"
        "_PullMetrics(m).in_progress.inc()\n"
        "async def none(): return []\n"
        "c = cgprom.install(m, none)\n"
        "asyncio.run(m.refresh())\n"
    )
    assert loaded(code, ("prometheus_client",)) == []
    assert loaded(code + "m.render()\n", ("prometheus_client",)) != []
