"""Task cgroup statistics on the daemon's ``/v1/metrics``, under containerd's names.

containerd's cgroups task monitor exports each running task's cgroup figures as
``container_<name>_<unit>`` gauges labelled ``container_id`` and ``namespace`` (plus
``cpu``; ``op``, ``device``, ``major``, ``minor``; ``page`` where the figure has
several rows). The names follow ``core/metrics/cgroups/v1/*.go`` (cgroup v1 tasks)
and ``core/metrics/cgroups/v2/*.go`` (cgroup v2 tasks) of containerd, built as
docker/go-metrics does: ``container_`` + name + ``_`` + unit. For example:

- v1: ``container_cpu_total_nanoseconds``, ``container_per_cpu_nanoseconds{cpu}``,
  ``container_memory_usage_usage_bytes``, ``container_memory_rss_bytes``,
  ``container_pids_current``, ``container_pids_limit``,
  ``container_blkio_io_service_bytes_recursive_bytes{op,device,major,minor}``,
  ``container_hugetlb_usage_bytes{page}``, ``container_memory_oom_total``;
- v2: ``container_cpu_usage_usec_microseconds``, ``container_memory_usage_bytes``,
  ``container_memory_usage_limit_bytes``, ``container_io_rbytes_bytes{major,minor}``,
  ``container_pids_current``, ``container_memory_oom_total``.

Units are those of the message fields: v1 CPU times in ns, v2 CPU times in µs,
memory in bytes. Every family is a gauge (containerd's v1 OOM figure is a counter
fed by eventfd notifications; ours reads ``memory.oom_control``'s ``oom_kill``
count from the task's v1 stats, and is a gauge like v2's).

How the figures get here
------------------------
prometheus-client collectors are synchronous, while a task's statistics come from
its shim over ttrpc (``Task.Stats``). So the collector keeps a snapshot of
``(namespace, container_id, Metrics)`` samples, and the snapshot is refreshed
*before each scrape* through the async scrape hook of
:class:`aiocontainerd.metrics.Metrics`. The runtime (shim manager) wires it once::

    from aiocontainerd.cgroups import prometheus as cgroup_metrics

    async def samples():                       # every running task, now
        out = []
        for task in manager.tasks():           # skip (and log) tasks that fail
            try:
                any_ = await task.stats(timeout=2)          # Task.Stats -> Any
                out.append((task.namespace, task.id, any_.unpack()))
            except Exception:
                log.warning(...)
        return out

    collector = cgroup_metrics.install(daemon_metrics, samples)   # at plugin init
    ...
    collector.close()                                             # at plugin close

``Metrics`` is an ``io.containerd.cgroups.v1.Metrics`` or ``...v2.Metrics`` message
(``Any.unpack()`` of the shim's answer); other messages are ignored. Instead of a
source, a caller may push snapshots itself with :meth:`TaskMetricsCollector.update`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily

    from ..metrics import Metrics as DaemonMetrics

__all__ = ["Sample", "SampleSource", "TaskMetricsCollector", "families", "install"]

log = logging.getLogger("aiocontainerd.cgroups")

#: one task's figures: (containerd namespace, container id, v1 or v2 Metrics)
Sample = tuple[str, str, Any]
#: an async function returning the samples of every task at the moment of a scrape
SampleSource = Callable[[], Awaitable[Iterable[Sample]]]

PREFIX = "container"
ID_LABELS = ("container_id", "namespace")

# A family: (name without prefix, unit, help, extra labels, getter). The getter maps a
# Metrics message to (value, extra label values) rows; no rows when its part is unset.
Rows = list[tuple[float, tuple[str, ...]]]
Family = tuple[str, str, str, tuple[str, ...], Callable[[Any], Rows]]


def _one(get: Callable[[Any], Any]) -> Callable[[Any], Rows]:
    """A getter for a single-valued figure; ``get`` returns None when its part is unset."""
    def rows(m: Any) -> Rows:
        try:
            v = get(m)
        except AttributeError:  # an unset sub-message on the way
            return []
        return [] if v is None else [(float(v), ())]
    return rows


def _v1_families() -> list[Family]:
    fams: list[Family] = [
        ("pids", "limit", "Maximum number of processes allowed in the container (0: no limit)", (),
         _one(lambda m: m.pids.limit if m.pids else None)),
        ("pids", "current", "Number of processes in the container", (),
         _one(lambda m: m.pids.current if m.pids else None)),
        ("cpu_total", "nanoseconds", "CPU time consumed by the container", (),
         _one(lambda m: m.cpu.usage.total if m.cpu and m.cpu.usage else None)),
        ("cpu_kernel", "nanoseconds", "CPU time the container spent in the kernel", (),
         _one(lambda m: m.cpu.usage.kernel if m.cpu and m.cpu.usage else None)),
        ("cpu_user", "nanoseconds", "CPU time the container spent in user space", (),
         _one(lambda m: m.cpu.usage.user if m.cpu and m.cpu.usage else None)),
        ("per_cpu", "nanoseconds", "CPU time consumed by the container on each CPU", ("cpu",),
         lambda m: [(float(v), (str(i),)) for i, v in enumerate(m.cpu.usage.per_cpu)]
         if m.cpu and m.cpu.usage else []),
        ("cpu_throttle_periods", "total", "CFS enforcement periods that elapsed", (),
         _one(lambda m: m.cpu.throttling.periods if m.cpu and m.cpu.throttling else None)),
        ("cpu_throttled_periods", "total", "CFS periods in which the container was throttled", (),
         _one(lambda m: m.cpu.throttling.throttled_periods if m.cpu and m.cpu.throttling else None)),
        ("cpu_throttled_time", "nanoseconds", "Time the container was throttled for", (),
         _one(lambda m: m.cpu.throttling.throttled_time if m.cpu and m.cpu.throttling else None)),
    ]
    # memory.stat figures, as containerd names them (pg* are counts, labelled bytes there too)
    stat_fields = [
        ("cache", "cache"), ("rss", "rss"), ("rss_huge", "rss_huge"),
        ("mapped_file", "mapped_file"), ("dirty", "dirty"), ("writeback", "writeback"),
        ("pgpgin", "pg_pg_in"), ("pgpgout", "pg_pg_out"), ("pgfault", "pg_fault"),
        ("pgmajfault", "pg_maj_fault"), ("inactive_anon", "inactive_anon"),
        ("active_anon", "active_anon"), ("inactive_file", "inactive_file"),
        ("active_file", "active_file"), ("unevictable", "unevictable"),
    ]
    names = [(n, f) for n, f in stat_fields]
    names += [("hierarchical_memory_limit", "hierarchical_memory_limit"),
              ("hierarchical_memsw_limit", "hierarchical_swap_limit")]
    names += [(f"total_{n}", f"total_{f}") for n, f in stat_fields]
    for name, field in names:
        fams.append((f"memory_{name}", "bytes", f"The {name} figure of the container's memory.stat", (),
                     _one(lambda m, field=field: getattr(m.memory, field) if m.memory else None)))
    for part, field in (("usage", "usage"), ("swap", "swap"), ("kernel", "kernel"),
                        ("kerneltcp", "kernel_tcp")):
        for what, unit, attr, text in (
                ("failcnt", "total", "failcnt", "times the limit was hit"),
                ("limit", "bytes", "limit", "limit"),
                ("max", "bytes", "max", "maximum usage recorded"),
                ("usage", "bytes", "usage", "current usage")):
            fams.append((
                f"memory_{part}_{what}", unit, f"Memory accounting '{part}' of the container: {text}", (),
                _one(lambda m, field=field, attr=attr:
                     getattr(getattr(m.memory, field), attr)
                     if m.memory and getattr(m.memory, field) is not None else None)))
    for name, unit, attr, text in (("usage", "bytes", "usage", "current usage"),
                                   ("failcnt", "total", "failcnt", "times the limit was hit"),
                                   ("max", "bytes", "max", "maximum usage recorded")):
        fams.append((f"hugetlb_{name}", unit, f"Huge pages of the container: {text}", ("page",),
                     lambda m, attr=attr: [(float(getattr(h, attr)), (h.pagesize,)) for h in m.hugetlb]))
    for name, unit, field in (
            ("io_merged_recursive", "total", "io_merged_recursive"),
            ("io_queued_recursive", "total", "io_queued_recursive"),
            ("io_service_bytes_recursive", "bytes", "io_service_bytes_recursive"),
            ("io_service_time_recursive", "total", "io_service_time_recursive"),
            ("io_serviced_recursive", "total", "io_serviced_recursive"),
            ("io_time_recursive", "total", "io_time_recursive"),
            ("sectors_recursive", "total", "sectors_recursive")):
        fams.append((f"blkio_{name}", unit, f"Block I/O of the container: blkio {name}",
                     ("op", "device", "major", "minor"),
                     lambda m, field=field: [
                         (float(e.value), (e.op, e.device, str(e.major), str(e.minor)))
                         for e in getattr(m.blkio, field)] if m.blkio else []))
    fams.append(("memory_oom", "total", "Number of times the container was OOM-killed", (),
                 _one(lambda m: m.memory_oom_control.oom_kill if m.memory_oom_control else None)))
    return fams


def _v2_families() -> list[Family]:
    fams: list[Family] = [
        ("pids", "limit", "Maximum number of processes allowed in the container (0: no limit)", (),
         _one(lambda m: m.pids.limit if m.pids else None)),
        ("pids", "current", "Number of processes in the container", (),
         _one(lambda m: m.pids.current if m.pids else None)),
    ]
    for name, unit, text in (
            ("usage_usec", "microseconds", "CPU time consumed by the container"),
            ("user_usec", "microseconds", "CPU time the container spent in user space"),
            ("system_usec", "microseconds", "CPU time the container spent in the kernel"),
            ("nr_periods", "total", "CFS enforcement periods that elapsed"),
            ("nr_throttled", "total", "CFS periods in which the container was throttled"),
            ("throttled_usec", "microseconds", "Time the container was throttled for")):
        fams.append((f"cpu_{name}", unit, text, (),
                     _one(lambda m, name=name: getattr(m.cpu, name) if m.cpu else None)))
    for name, text in (("usage", "Memory used by the container (memory.current)"),
                       ("usage_limit", "Memory limit of the container (memory.max)"),
                       ("swap_usage", "Swap used by the container (memory.swap.current)"),
                       ("swap_limit", "Swap limit of the container (memory.swap.max)")):
        fams.append((f"memory_{name}", "bytes", text, (),
                     _one(lambda m, name=name: getattr(m.memory, name) if m.memory else None)))
    for name in ("file_mapped", "file_dirty", "file_writeback", "pgactivate", "pgdeactivate",
                 "pgfault", "pgmajfault", "pglazyfree", "pgrefill", "pglazyfreed", "pgscan",
                 "pgsteal", "inactive_anon", "active_anon", "inactive_file", "active_file",
                 "unevictable", "anon", "file", "kernel_stack", "slab", "sock", "shmem",
                 "anon_thp", "slab_reclaimable", "slab_unreclaimable", "workingset_refault",
                 "workingset_activate", "workingset_nodereclaim", "thp_fault_alloc",
                 "thp_collapse_alloc"):
        fams.append((f"memory_{name}", "bytes", f"The {name} figure of the container's memory.stat", (),
                     _one(lambda m, name=name: getattr(m.memory, name) if m.memory else None)))
    fams.append(("memory_oom", "total", "Number of times the container was OOM-killed", (),
                 _one(lambda m: m.memory_events.oom if m.memory_events else None)))
    for name, unit, text in (("rbytes", "bytes", "bytes read"), ("wbytes", "bytes", "bytes written"),
                             ("rios", "total", "read operations"), ("wios", "total", "write operations")):
        fams.append((f"io_{name}", unit, f"Block I/O of the container: {text}", ("major", "minor"),
                     lambda m, name=name: [(float(getattr(e, name)), (str(e.major), str(e.minor)))
                                           for e in m.io.usage] if m.io else []))
    return fams


@functools.cache
def families() -> dict[type, list[Family]]:
    """containerd's families per message type (``v1.Metrics``/``v2.Metrics``); built, and
    the cgroups messages imported, at the first scrape or sample, not when the runtime
    installs the collector."""
    from ..api.io.containerd.cgroups import v1, v2

    return {v1.Metrics: _v1_families(), v2.Metrics: _v2_families()}


def full_name(name: str, unit: str) -> str:
    """``container_<name>_<unit>``, the way go-metrics builds a name."""
    return f"{PREFIX}_{name}_{unit}" if unit else f"{PREFIX}_{name}"


class TaskMetricsCollector:
    """A prometheus-client collector of task cgroup figures (see the module docs).

    A collector by shape (``describe``/``collect``), not by base class: prometheus_client
    is imported only when the registry collects, never by the runtime that installs it
    (see :mod:`aiocontainerd.metrics`).

    ``source``: async function returning the current samples; :meth:`refresh` awaits it
    (bounded by ``timeout`` seconds) and replaces the snapshot. Without a source,
    feed the snapshot with :meth:`update`.
    """

    def __init__(self, source: SampleSource | None = None, *, timeout: float = 5.0) -> None:
        self._source = source
        self._timeout = timeout
        self._samples: list[Sample] = []
        self._registry: CollectorRegistry | None = None
        self._unhook: Callable[[], None] | None = None
        self._unqueue: Callable[[], None] | None = None

    @property
    def samples(self) -> list[Sample]:
        """The current snapshot."""
        return list(self._samples)

    def update(self, samples: Iterable[Sample]) -> None:
        """Replace the snapshot with ``samples`` (namespace, container_id, Metrics)."""
        self._samples = [s for s in samples if type(s[2]) in families()]

    async def refresh(self) -> None:
        """Await the source and take its samples; on failure or timeout the snapshot is
        emptied (stale figures of gone tasks are worse than none) and the error logged."""
        if self._source is None:
            return
        try:
            samples = await asyncio.wait_for(self._source(), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the scrape must still answer
            log.warning("cgroups: task metrics source failed: %s", e or type(e).__name__)
            self._samples = []
            return
        self.update(samples)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without samples (prometheus-client checks names with these)."""
        from prometheus_client.core import GaugeMetricFamily

        seen: set[str] = set()
        for fams in families().values():
            for name, unit, text, labels, _ in fams:
                full = full_name(name, unit)
                if full not in seen:
                    seen.add(full)
                    yield GaugeMetricFamily(full, text, labels=[*ID_LABELS, *labels])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge family per name that has rows in the snapshot."""
        from prometheus_client.core import GaugeMetricFamily

        out: dict[str, GaugeMetricFamily] = {}
        for namespace, cid, metrics in self._samples:
            for name, unit, text, labels, rows in families().get(type(metrics), ()):
                values = rows(metrics)
                if not values:
                    continue
                full = full_name(name, unit)
                fam = out.get(full)
                if fam is None:
                    fam = out[full] = GaugeMetricFamily(full, text, labels=[*ID_LABELS, *labels])
                for value, extra in values:
                    fam.add_metric([cid, namespace, *extra], value)
        yield from out.values()

    def close(self) -> None:
        """Unregister from the registry and the scrape hook that :func:`install` set."""
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        if self._unqueue is not None:  # not registered yet: it never will be
            self._unqueue()
            self._unqueue = None
        if self._registry is not None:
            try:
                self._registry.unregister(self)
            except KeyError:
                pass
            self._registry = None


def install(metrics: DaemonMetrics, source: SampleSource, *, timeout: float = 5.0) -> TaskMetricsCollector:
    """Export task cgroup figures on the daemon's ``/v1/metrics``.

    Registers a :class:`TaskMetricsCollector` in ``metrics.registry`` (once that is
    built: :meth:`~aiocontainerd.metrics.Metrics.on_registry`, so installing loads no
    prometheus_client) and hooks its :meth:`~TaskMetricsCollector.refresh` to run
    before every scrape, so ``source`` (an async function returning ``(namespace,
    container_id, Metrics)`` samples of all running tasks) is awaited once per scrape.
    Call ``close()`` on the result to undo.
    """
    collector = TaskMetricsCollector(source, timeout=timeout)

    def register(registry: CollectorRegistry) -> None:
        registry.register(collector)
        collector._registry = registry
        collector._unqueue = None

    collector._unqueue = metrics.on_registry(register)
    collector._unhook = metrics.add_scrape_hook(collector.refresh)
    return collector
