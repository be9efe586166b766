"""CRI metrics: containerd's CRI Prometheus timers, and the cadvisor-style CRI metrics RPCs.

(a) :class:`CRIMetrics` — registered on the daemon's registry (``/v1/metrics``) under
containerd's names (``internal/cri/server/metrics.go``; docker/go-metrics adds
``_seconds`` to timers and ``_total`` to counters, hence the doubled suffixes,
which are the real names). Histograms use Prometheus' default buckets (seconds):

==============================================================  =================
``containerd_cri_sandbox_list_seconds``                         (no labels)
``containerd_cri_stream_sandbox_list_seconds``                  (no labels)
``containerd_cri_sandbox_create_network_seconds``               (no labels)
``containerd_cri_sandbox_delete_network_seconds``               (no labels)
``containerd_cri_sandbox_runtime_create_seconds``               ``runtime``
``containerd_cri_sandbox_runtime_stop_seconds``                 ``runtime``
``containerd_cri_sandbox_remove_seconds``                       ``runtime``
``containerd_cri_container_list_seconds``                       (no labels)
``containerd_cri_stream_container_list_seconds``                (no labels)
``containerd_cri_container_{create,start,stop,remove,checkpoint}_seconds``  ``runtime``
``containerd_cri_container_events_dropped_total`` (counter)     (no labels)
``containerd_cri_network_plugin_operations_total_total`` (counter)          ``operation_type``
``containerd_cri_network_plugin_operations_errors_total_total`` (counter)   ``operation_type``
``containerd_cri_network_plugin_operations_duration_seconds_seconds``       ``operation_type``
==============================================================  =================

``operation_type`` is ``set_up_pod``, ``tear_down_pod`` or ``get_pod_network_status``
(:data:`NETWORK_SETUP`, ...). The timers record successful operations only (as
containerd); the network plugin counters and latency count every operation and
the errors counter the failed ones. Image pull metrics
(``containerd_cri_sandboxed_image_pulls_total``, ...) are registered by
``cri/images.py`` and are not repeated here.

(b) ``ListMetricDescriptors`` / ``ListPodSandboxMetrics`` as containerd 2 answers them
(``internal/cri/server/list_metric_descriptors*.go``,
``list_pod_sandbox_metrics_linux.go``): :func:`metric_descriptors` and
:func:`pod_sandbox_metrics` / :func:`container_metrics`, built from the cgroups
Metrics of :mod:`aiocontainerd.cri.stats`. Label values: pod metrics
``[pod, namespace, "", <sandbox id>, "", "eth0"]`` (network, default interface
only); container metrics ``[pod, namespace, container, <container id>, image]``
plus ``device``, ``interface``, ``failure_type``/``scope``, ``ulimit`` or
``device``/``major``/``minor``/``operation`` where the descriptor says so. Values
are unsigned integers (seconds are whole seconds, truncated, as containerd).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiocontainerd.api.io.containerd.cgroups import v1 as cg1
from aiocontainerd.api.io.containerd.cgroups import v2 as cg2
from aiocontainerd.api.runtime import v1 as api

from .stats import DEFAULT_INTERFACE, CgroupMetrics, InterfaceStats, WritableLayer, working_set

if TYPE_CHECKING:
    from aiocontainerd.metrics import Counter, Histogram, Metrics

__all__ = [
    "DESCRIPTORS",
    "NETWORK_SETUP",
    "NETWORK_STATUS",
    "NETWORK_TEARDOWN",
    "CRIMetrics",
    "container_metrics",
    "metric_descriptors",
    "pod_sandbox_metrics",
    "process_descriptor_counts",
]

NETWORK_STATUS = "get_pod_network_status"
NETWORK_SETUP = "set_up_pod"
NETWORK_TEARDOWN = "tear_down_pod"

_PREFIX = "containerd_cri_"
_PLAIN_TIMERS = {
    "sandbox_list": "time to list sandboxes",
    "stream_sandbox_list": "time to stream sandboxes",
    "sandbox_create_network": "time to create the network for a sandbox",
    "sandbox_delete_network": "time to delete a sandbox's network",
    "container_list": "time to list containers",
    "stream_container_list": "time to stream containers",
}
_RUNTIME_TIMERS = {
    "sandbox_runtime_create": "time to create a sandbox in the runtime",
    "sandbox_runtime_stop": "time to stop a sandbox",
    "sandbox_remove": "time to remove a sandbox",
    "container_remove": "time to remove a container",
    "container_create": "time to create a container",
    "container_stop": "time to stop a container",
    "container_start": "time to start a container",
    "container_checkpoint": "time to checkpoint a container",
}

#: the key of the first CRIMetrics of a daemon in ``Metrics.shared`` (its families, registered once)
_SHARED = "cri.metrics"


class CRIMetrics:
    """containerd's CRI timers and counters on ``metrics.registry`` (see the module doc).

    ``CRIMetrics(None)`` is a no-op recorder (tests, no metrics). One instance per
    registry: constructing a second for the same ``Metrics`` returns state shared
    with the first (Prometheus refuses duplicate names). The families are
    :mod:`aiocontainerd.metrics` plain ones: recording loads no prometheus_client.

    Use::

        m = CRIMetrics(ctx.metrics)
        with m.timer("container_start", runtime="io.containerd.runc.v2"):
            ...                                  # observed only if no exception
        with m.network_op(NETWORK_SETUP):
            await cni.setup(...)                 # counted, timed, errors counted
        m.observe("sandbox_list", 0.002)
        m.events_dropped()
    """

    def __init__(self, metrics: Metrics | None) -> None:
        self._timers: dict[str, Histogram] = {}
        self._net_ops: Counter | None = None
        self._net_errors: Counter | None = None
        self._net_latency: Histogram | None = None
        self._dropped: Counter | None = None
        if metrics is None:
            return
        shared = metrics.shared.get(_SHARED)
        if shared is not None:
            self.__dict__.update(shared.__dict__)
            return
        for name, help in _PLAIN_TIMERS.items():
            self._timers[name] = metrics.histogram(f"{_PREFIX}{name}_seconds", help)
        for name, help in _RUNTIME_TIMERS.items():
            self._timers[name] = metrics.histogram(f"{_PREFIX}{name}_seconds", help, ("runtime",))
        self._dropped = metrics.counter(f"{_PREFIX}container_events_dropped",
                                        "count container discarding event total from server start")
        # the exposition appends _total to counters (after dropping one given): *_total_total
        self._net_ops = metrics.counter(
            f"{_PREFIX}network_plugin_operations_total_total",
            "cumulative number of network plugin operations by operation type", ("operation_type",))
        self._net_errors = metrics.counter(
            f"{_PREFIX}network_plugin_operations_errors_total_total",
            "cumulative number of network plugin operations by operation type", ("operation_type",))
        self._net_latency = metrics.histogram(
            f"{_PREFIX}network_plugin_operations_duration_seconds_seconds",
            "latency in seconds of network plugin operations. Broken down by operation type",
            ("operation_type",))
        metrics.shared[_SHARED] = self

    def observe(self, name: str, seconds: float, *, runtime: str | None = None) -> None:
        """Record ``seconds`` on timer ``name`` (e.g. ``"container_start"``).

        ``runtime`` (the runtime handler's runtime type) is required by the
        labelled timers and ignored by the others.  Raises ``KeyError`` for an
        unknown name (when metrics are on).
        """
        if not self._timers:
            return
        h = self._timers[name]
        (h.labels(runtime or "") if name in _RUNTIME_TIMERS else h).observe(seconds)

    @contextlib.contextmanager
    def timer(self, name: str, *, runtime: str | None = None) -> Iterator[None]:
        """Time the block; observed on :meth:`observe` only when it raises nothing."""
        start = time.perf_counter()
        yield
        self.observe(name, time.perf_counter() - start, runtime=runtime)

    def network_result(self, operation: str, seconds: float, *, failed: bool) -> None:
        """Count one network plugin operation, its latency, and whether it failed."""
        if self._net_ops is None or self._net_latency is None or self._net_errors is None:
            return
        self._net_ops.labels(operation).inc()
        self._net_latency.labels(operation).observe(seconds)
        if failed:
            self._net_errors.labels(operation).inc()

    @contextlib.contextmanager
    def network_op(self, operation: str) -> Iterator[None]:
        """Time one CNI operation (:data:`NETWORK_SETUP`, ...); an exception counts as an error."""
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.network_result(operation, time.perf_counter() - start, failed=True)
            raise
        self.network_result(operation, time.perf_counter() - start, failed=False)

    def events_dropped(self, n: int = 1) -> None:
        """A GetContainerEvents subscriber lost ``n`` events."""
        if self._dropped is not None:
            self._dropped.inc(n)


# -- (b) descriptors -----------------------------------------------------------------------------

_BASE = ("pod", "namespace", "container", "id", "image")
_NET = (*_BASE, "interface")
_DISK = (*_BASE, "device")

#: group -> [(name, help, label keys)], in containerd's order
DESCRIPTORS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    "cpu": [
        ("container_cpu_user_seconds_total", "Cumulative user CPU time consumed in seconds.", _BASE),
        ("container_cpu_system_seconds_total", "Cumulative system CPU time consumed in seconds.", _BASE),
        ("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", _BASE),
        ("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", _BASE),
        ("container_cpu_cfs_throttled_periods_total", "Number of CPU throttled period intervals.", _BASE),
        ("container_cpu_cfs_throttled_seconds_total",
         "Total time duration the container has been throttled.", _BASE),
    ],
    "memory": [
        ("container_memory_cache",
         "Number of bytes of memory used by the container for caching purposes.", _BASE),
        ("container_memory_rss",
         "Size of RSS in bytes, total anonymous memory and [swap cache memory used by the container.", _BASE),
        ("container_memory_kernel_usage",
         "Size of kernel memory allocated to the container in bytes, includes page tables, socket buffers...",
         _BASE),
        ("container_memory_mapped_file", "Size of container's memory mapped files in bytes.", _BASE),
        ("container_memory_swap", "Container swap usage in bytes.", _BASE),
        ("container_memory_failcnt",
         "Number of times container memory usage has hit its cgroup v1 upper memory limit, "
         "for cg2 this value is not currently supported", _BASE),
        ("container_memory_usage_bytes",
         "Current memory usage in bytes, including all memory regardless of when it was accessed", _BASE),
        ("container_memory_max_usage_bytes", "Maximum container memory usage recorded in bytes", _BASE),
        ("container_memory_working_set_bytes",
         "Amount of memory that is actively used by the container, excluding cached memory.", _BASE),
        ("container_memory_total_active_file_bytes",
         "Amount of cache memory bytes, in use by the container, in file on disk.", _BASE),
        ("container_memory_total_inactive_file_bytes",
         "Amount of inactive cache memory bytes, for the container, in file on disk.", _BASE),
        ("container_memory_failures_total", "Cumulative count of container memory allocation failures.",
         (*_BASE, "failure_type", "scope")),
        ("container_oom_events_total", "Count of out of memory events observed for the container", _BASE),
    ],
    "network": [
        ("container_network_receive_bytes_total", "Cumulative count of bytes received", _NET),
        ("container_network_receive_packets_total", "Cumulative count of packets received", _NET),
        ("container_network_receive_packets_dropped_total",
         "Cumulative count of packets dropped while receiving", _NET),
        ("container_network_receive_errors_total",
         "Cumulative count of errors encountered while receiving", _NET),
        ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", _NET),
        ("container_network_transmit_packets_total", "Cumulative count of packets transmitted", _NET),
        ("container_network_transmit_packets_dropped_total",
         "Cumulative count of packets dropped while transmitting", _NET),
        ("container_network_transmit_errors_total",
         "Cumulative count of errors encountered while transmitting", _NET),
    ],
    "disk": [
        ("container_fs_inodes_free", "Number of available Inodes", _DISK),
        ("container_fs_inodes_total", "Number of Inodes", _DISK),
        ("container_fs_limit_bytes",
         "Number of bytes that can be consumed by the container on this filesystem.", _DISK),
        ("container_fs_usage_bytes",
         "Number of bytes that are consumed by the container on this filesystem.", _DISK),
    ],
    "diskIO": [
        ("container_fs_reads_bytes_total", "Cumulative count of bytes read", _DISK),
        ("container_fs_reads_total", "Cumulative count of reads completed", _DISK),
        ("container_fs_writes_bytes_total", "Cumulative count of bytes written", _DISK),
        ("container_fs_writes_total", "Cumulative count of writes completed", _DISK),
        ("container_blkio_device_usage_total", "Blkio device bytes usage",
         (*_DISK, "major", "minor", "operation")),
    ],
    "process": [
        ("container_processes", "Number of processes running inside the container.", _BASE),
        ("container_file_descriptors", "Number of open file descriptors for the container.", _BASE),
        ("container_sockets", "Number of open sockets for the container.", _BASE),
        ("container_threads_max",
         "Maximum number of threads allowed inside the container, infinity if value is zero", _BASE),
        ("container_threads", "Number of threads running inside the container", _BASE),
        ("container_ulimits_soft",
         "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice",
         (*_BASE, "ulimit")),
    ],
    "misc": [
        ("container_last_seen", "Last time a container was seen by the exporter", _BASE),
        ("container_start_time_seconds", "Start time of the container since unix epoch in seconds", _BASE),
    ],
    "container_spec": [
        ("container_spec_cpu_period", "CPU period of the container", _BASE),
        ("container_spec_cpu_shares", "CPU share of the container", _BASE),
        ("container_spec_memory_limit_bytes", "Memory limit for the container", _BASE),
        ("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container",
         _BASE),
        ("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container", _BASE),
    ],
}


def metric_descriptors() -> list[api.MetricDescriptor]:
    """``ListMetricDescriptorsResponse.descriptors``: every metric :func:`container_metrics` may emit."""
    return [api.MetricDescriptor(name=n, help=h, label_keys=list(keys))
            for group in DESCRIPTORS.values() for n, h, keys in group]


# -- (b) values ----------------------------------------------------------------------------------

_NS = 1_000_000_000


class _Out:
    def __init__(self, labels: Sequence[str], timestamp: int) -> None:
        self.labels = list(labels)
        self.ts = timestamp
        self.items: list[api.Metric] = []

    def add(self, name: str, value: int, *, counter: bool = False, extra: Sequence[str] = ()) -> None:
        self.items.append(api.Metric(
            name=name, timestamp=self.ts,
            metric_type=api.MetricType.COUNTER if counter else api.MetricType.GAUGE,
            label_values=[*self.labels, *extra], value=api.UInt64Value(value=max(int(value), 0))))


def _cpu(o: _Out, m: CgroupMetrics) -> None:
    if isinstance(m, cg1.Metrics):
        if m.cpu is None or m.cpu.usage is None:
            return
        u = m.cpu.usage
        o.add("container_cpu_usage_seconds_total", u.total // _NS, counter=True)
        o.add("container_cpu_user_seconds_total", u.user // _NS, counter=True)
        o.add("container_cpu_system_seconds_total", u.kernel // _NS, counter=True)
        t = m.cpu.throttling
        if t is not None:
            o.add("container_cpu_cfs_periods_total", t.periods, counter=True)
            o.add("container_cpu_cfs_throttled_periods_total", t.throttled_periods, counter=True)
            o.add("container_cpu_cfs_throttled_seconds_total", t.throttled_time // _NS, counter=True)
    elif m.cpu is not None:
        c = m.cpu
        o.add("container_cpu_usage_seconds_total", c.usage_usec * 1000 // _NS, counter=True)
        o.add("container_cpu_user_seconds_total", c.user_usec * 1000 // _NS, counter=True)
        o.add("container_cpu_system_seconds_total", c.system_usec * 1000 // _NS, counter=True)
        o.add("container_cpu_cfs_periods_total", c.nr_periods, counter=True)
        o.add("container_cpu_cfs_throttled_periods_total", c.nr_throttled, counter=True)
        o.add("container_cpu_cfs_throttled_seconds_total", c.throttled_usec * 1000 // _NS, counter=True)


def _memory(o: _Out, m: CgroupMetrics) -> None:
    if isinstance(m, cg1.Metrics):
        mem = m.memory
        if mem is not None:
            if mem.usage is not None:
                o.add("container_memory_usage_bytes", mem.usage.usage)
                o.add("container_memory_working_set_bytes", working_set(m))
                o.add("container_memory_max_usage_bytes", mem.usage.max)
            o.add("container_memory_rss", mem.total_rss)
            o.add("container_memory_cache", mem.total_cache)
            o.add("container_memory_mapped_file", mem.total_mapped_file)
            o.add("container_memory_total_active_file_bytes", mem.total_active_file)
            o.add("container_memory_total_inactive_file_bytes", mem.total_inactive_file)
            o.add("container_memory_failures_total", mem.pg_fault, counter=True,
                  extra=("pgfault", "container"))
            o.add("container_memory_failures_total", mem.pg_maj_fault, counter=True,
                  extra=("pgmajfault", "container"))
            if mem.kernel is not None:
                o.add("container_memory_kernel_usage", mem.kernel.usage)
            if mem.swap is not None:
                o.add("container_memory_swap", mem.swap.usage)
            if mem.usage is not None:
                o.add("container_memory_failcnt", mem.usage.failcnt, counter=True)
        if m.memory_oom_control is not None:
            o.add("container_oom_events_total", m.memory_oom_control.oom_kill, counter=True)
        return
    mem2 = m.memory
    if mem2 is not None:
        o.add("container_memory_usage_bytes", mem2.usage)
        o.add("container_memory_max_usage_bytes", mem2.usage_limit)     # sic: containerd reports the limit
        o.add("container_memory_working_set_bytes", working_set(m))
        o.add("container_memory_rss", mem2.anon)
        o.add("container_memory_cache", mem2.file)
        o.add("container_memory_kernel_usage", mem2.kernel_stack)
        o.add("container_memory_mapped_file", mem2.file_mapped)
        o.add("container_memory_swap", mem2.swap_usage)
        o.add("container_memory_failcnt", 0, counter=True)
        o.add("container_memory_total_active_file_bytes", mem2.active_file)
        o.add("container_memory_total_inactive_file_bytes", mem2.inactive_file)
        o.add("container_memory_failures_total", mem2.pgfault, counter=True, extra=("pgfault", "container"))
        o.add("container_memory_failures_total", mem2.pgmajfault, counter=True,
              extra=("pgmajfault", "container"))
    if m.memory_events is not None:
        o.add("container_oom_events_total", m.memory_events.oom_kill, counter=True)


def _disk_io(o: _Out, m: CgroupMetrics) -> None:
    if isinstance(m, cg1.Metrics):
        b = m.blkio
        if b is None:
            return
        for e in b.io_service_bytes_recursive:
            o.add("container_blkio_device_usage_total", e.value, counter=True,
                  extra=(e.device, str(e.major), str(e.minor), e.op))
        for e in b.io_serviced_recursive:
            op = e.op.lower()
            if op in ("read", "write"):
                o.add(f"container_fs_{op}s_total", e.value, counter=True, extra=(e.device,))
        for e in b.io_service_bytes_recursive:
            op = e.op.lower()
            if op in ("read", "write"):
                o.add(f"container_fs_{op}s_bytes_total", e.value, counter=True, extra=(e.device,))
        return
    if m.io is None:
        return
    for e in m.io.usage:
        dev = f"{e.major}:{e.minor}"
        o.add("container_fs_reads_bytes_total", e.rbytes, counter=True, extra=(dev,))
        o.add("container_fs_writes_bytes_total", e.wbytes, counter=True, extra=(dev,))
        o.add("container_fs_reads_total", e.rios, counter=True, extra=(dev,))
        o.add("container_fs_writes_total", e.wios, counter=True, extra=(dev,))


_RLIMIT_UNLIMITED = (1 << 64) - 1


def process_descriptor_counts(pids: Sequence[int], proc: str = "/proc") -> tuple[int, int]:
    """``(open fds, sockets)`` summed over ``pids`` (``/proc/<pid>/fd``); vanished pids count 0."""
    fds = sockets = 0
    for pid in pids:
        d = f"{proc}/{pid}/fd"
        try:
            names = os.listdir(d)
        except OSError:
            continue
        fds += len(names)
        for n in names:
            try:
                if os.readlink(f"{d}/{n}").startswith("socket"):
                    sockets += 1
            except OSError:
                continue
    return fds, sockets


def _process(o: _Out, m: CgroupMetrics, spec: Mapping[str, Any] | None, pids: Sequence[int] | None) -> None:
    if m.pids is not None:
        o.add("container_processes", m.pids.current)
        o.add("container_threads_max", m.pids.limit)
        if isinstance(m, cg2.Metrics):
            o.add("container_threads", m.pids.current)
    for rl in ((spec or {}).get("process") or {}).get("rlimits") or ():
        o.add("container_ulimits_soft", int(rl.get("soft", 0)) & _RLIMIT_UNLIMITED,
              extra=(str(rl.get("type", "")),))
    if pids is not None:
        fds, socks = process_descriptor_counts(pids)
        o.add("container_file_descriptors", fds)
        o.add("container_sockets", socks)


def _spec(o: _Out, spec: Mapping[str, Any] | None) -> None:
    res = (((spec or {}).get("linux") or {}).get("resources")) or {}
    cpu, mem = res.get("cpu") or {}, res.get("memory") or {}
    for key, name in (("period", "container_spec_cpu_period"), ("shares", "container_spec_cpu_shares")):
        if cpu.get(key) is not None:
            o.add(name, cpu[key])
    for key, name in (("limit", "container_spec_memory_limit_bytes"),
                      ("reservation", "container_spec_memory_reservation_limit_bytes"),
                      ("swap", "container_spec_memory_swap_limit_bytes")):
        if mem.get(key) is not None:
            o.add(name, int(mem[key]) & _RLIMIT_UNLIMITED)


def _filesystem(o: _Out, rootfs: str | None, layer: WritableLayer | None) -> None:
    if not rootfs:
        return
    try:
        st = os.statvfs(rootfs)
    except OSError:
        return
    total = st.f_blocks * st.f_bsize
    used = total - st.f_bavail * st.f_bsize
    inodes, free = st.f_files, st.f_ffree
    if layer is not None:
        used, inodes = layer.used_bytes, layer.inodes_used
    o.add("container_fs_usage_bytes", used, extra=("/",))
    o.add("container_fs_limit_bytes", total, extra=("/",))
    o.add("container_fs_inodes_total", inodes, extra=("/",))
    o.add("container_fs_inodes_free", free, extra=("/",))


def container_metrics(*, container_id: str, container_name: str, image: str, pod_name: str,
                      pod_namespace: str, metrics: CgroupMetrics, started_at: int = 0,
                      spec: Mapping[str, Any] | None = None, pids: Sequence[int] | None = None,
                      rootfs: str | None = None, layer: WritableLayer | None = None,
                      timestamp: int | None = None) -> api.ContainerMetrics:
    """One container's ``ContainerMetrics`` (containerd's ``collectContainerMetrics``).

    ``image``: the image as the user named it (``config.image.user_specified_image``,
    else ``config.image.image``); ``metrics``: its task's cgroup Metrics;
    ``started_at``: ns since the epoch; ``spec``: the OCI spec as a dict (rlimits,
    resources; optional); ``pids``: the task's pids for fd/socket counts
    (optional); ``rootfs``: the task's rootfs for ``statvfs`` (optional) with
    ``layer`` (snapshot usage) overriding used bytes and inode total, as containerd.
    Sections whose inputs are missing are left out.
    """
    ts = time.time_ns() if timestamp is None else timestamp
    o = _Out([pod_name, pod_namespace, container_name, container_id, image], ts)
    o.add("container_last_seen", ts // _NS)
    o.add("container_start_time_seconds", started_at // _NS)
    _cpu(o, metrics)
    _memory(o, metrics)
    _disk_io(o, metrics)
    _filesystem(o, rootfs, layer)
    _process(o, metrics, spec, pids)
    _spec(o, spec)
    return api.ContainerMetrics(container_id=container_id, metrics=o.items)


def pod_sandbox_metrics(*, sandbox_id: str, pod_name: str, pod_namespace: str,
                        interfaces: Sequence[InterfaceStats] | None,
                        containers: Sequence[api.ContainerMetrics] = (),
                        timestamp: int | None = None) -> api.PodSandboxMetrics:
    """One pod's ``PodSandboxMetrics`` (containerd's ``collectPodSandboxMetrics``).

    ``interfaces``: :func:`aiocontainerd.cri.stats.netns_interfaces` of the pod
    netns, ``None`` for a host-network pod; only ``eth0`` is reported (no metric
    when the netns has none). ``containers``: :func:`container_metrics` of its containers.
    """
    ts = time.time_ns() if timestamp is None else timestamp
    o = _Out([pod_name, pod_namespace, "", sandbox_id, ""], ts)
    eth0 = next((i for i in interfaces or () if i.name == DEFAULT_INTERFACE), None)
    if eth0 is not None:
        extra = (DEFAULT_INTERFACE,)
        for name, value in (
                ("container_network_receive_bytes_total", eth0.rx_bytes),
                ("container_network_receive_packets_total", eth0.rx_packets),
                ("container_network_receive_packets_dropped_total", eth0.rx_dropped),
                ("container_network_receive_errors_total", eth0.rx_errors),
                ("container_network_transmit_bytes_total", eth0.tx_bytes),
                ("container_network_transmit_packets_total", eth0.tx_packets),
                ("container_network_transmit_packets_dropped_total", eth0.tx_dropped),
                ("container_network_transmit_errors_total", eth0.tx_errors)):
            o.add(name, value, counter=True, extra=extra)
    return api.PodSandboxMetrics(pod_sandbox_id=sandbox_id, metrics=o.items,
                                 container_metrics=list(containers))
