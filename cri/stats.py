"""CRI container and pod statistics from cgroups (v1 and v2), snapshots and the pod netns.

Pure builders the RuntimeService calls for ``ContainerStats``/``ListContainerStats``
and ``PodSandboxStats``/``ListPodSandboxStats``, as containerd computes them
(``internal/cri/server/container_stats_list.go``: ``linuxContainerMetrics``,
``cpuContainerStats``, ``memoryContainerStats``, ``getUsageNanoCores``;
``sandbox_stats_linux.go``: ``podSandboxStats``, ``getAllContainerNetIO``;
``podsandbox/sandbox_stats_linux.go``: the pod's stats come from its cgroup parent).

Inputs are the cgroups ``Metrics`` messages of :mod:`aiocontainerd.cgroups`
(``io.containerd.cgroups.v1.Metrics`` or ``.v2.Metrics``) — either what the shim's
``Task.Stats`` returned (:func:`unpack_metrics` on the ``Any``) or read here from a
cgroup (:func:`read_metrics`: a pid's cgroup, or a cgroups path such as the pod's
``linux.cgroup_parent``).

Figures and units (all ``UInt64Value``; timestamps ns since the epoch):

* CPU: ``usage_core_nano_seconds`` = v1 ``cpuacct.usage`` (ns) / v2
  ``usage_usec * 1000``; ``usage_nano_cores`` = Δusage / Δtime * 1e9 against the
  previous sample of the same id (:class:`UsageTracker`; absent on the first
  sample, when time did not advance or usage went down); v2 PSI (totals in ns).
* memory: ``usage_bytes`` (v1 ``usage_in_bytes``, v2 ``memory.current``),
  ``working_set_bytes`` = usage - inactive_file (v1 ``total_inactive_file``; 0 if
  that is larger), ``available_bytes`` = limit - working set (0 without a limit,
  i.e. limit > 2^62), ``rss_bytes`` (v1 ``total_rss``, v2 ``anon``),
  ``page_faults``/``major_page_faults`` (v1 ``total_pgfault``/``total_pgmajfault``,
  v2 ``pgfault``/``pgmajfault``), v2 PSI.
* swap (containerd 2 leaves it unset; kubelet uses it when present): v2
  ``memory.swap.current`` and ``max`` - current; v1 memsw - mem usage and memsw
  limit - memsw usage; only when the cgroup accounts swap.
* io: v2 PSI only (as containerd).
* writable layer: the snapshot's usage (size, inodes) with the snapshotter's
  mountpoint, as containerd's snapshot syncer reports them (:class:`WritableLayer`).
* pod network: every interface of the pod netns but ``lo``, ``default_interface`` =
  ``eth0`` (else the first); rx/tx bytes and errors (:func:`netns_interfaces`,
  pyroute2 ``IFLA_STATS64`` inside the netns via :func:`aiocontainerd.cri.netns.run_in`).
* pod process count: the sum of the containers' ``pids.current``.

Errors: :func:`read_metrics` raises :class:`aiocontainerd.errors.NotFound` for a
missing cgroup; :func:`netns_interfaces` raises ``OSError`` for a missing netns;
:func:`unpack_metrics` raises :class:`aiocontainerd.errors.InvalidArgument` for an
unknown type. The builders never raise for missing sections: they leave the field
unset, as containerd does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence

from aiocontainerd import cgroups, errors
from aiocontainerd.api.io.containerd.cgroups import v1 as cg1
from aiocontainerd.api.io.containerd.cgroups import v2 as cg2
from aiocontainerd.api.runtime import v1 as api

__all__ = [
    "DEFAULT_INTERFACE",
    "CgroupMetrics",
    "InterfaceStats",
    "UsageTracker",
    "WritableLayer",
    "container_stats",
    "cpu_usage",
    "interfaces_sync",
    "io_usage",
    "memory_usage",
    "netns_interfaces",
    "pids_current",
    "pod_stats",
    "read_metrics",
    "swap_usage",
    "unpack_metrics",
    "working_set",
    "writable_layer",
]

CgroupMetrics = cg1.Metrics | cg2.Metrics
#: the pod's main interface (containerd's defaultIfName)
DEFAULT_INTERFACE = "eth0"
#: a limit above this is "no limit" (containerd's isMemoryUnlimited)
_UNLIMITED = 1 << 62


def _u(v: int) -> api.UInt64Value:
    return api.UInt64Value(value=max(int(v), 0))


def _unlimited(v: int) -> bool:
    return v > _UNLIMITED


# -- reading -----------------------------------------------------------------------------------

async def read_metrics(*, pid: int | None = None, path: str | None = None) -> CgroupMetrics:
    """The cgroup statistics of ``pid``'s cgroup or of the cgroups path ``path`` (in a thread).

    Raises ``errors.NotFound`` when the cgroup does not exist (see
    :func:`aiocontainerd.cgroups.stats`).
    """
    return await asyncio.to_thread(cgroups.stats, pid, path=path)


def unpack_metrics(any_msg) -> CgroupMetrics:
    """A shim's ``Task.Stats`` ``Any`` as v1 or v2 Metrics; ``errors.InvalidArgument`` otherwise."""
    type_url = getattr(any_msg, "type_url", "")
    for cls, name in ((cg1.Metrics, "io.containerd.cgroups.v1.Metrics"),
                      (cg2.Metrics, "io.containerd.cgroups.v2.Metrics")):
        if type_url.endswith("/" + name) or type_url == name:
            return cls.parse(any_msg.value)
    raise errors.InvalidArgument(f"unexpected metrics type {type_url!r}")


@dataclasses.dataclass
class WritableLayer:
    """A container's writable layer: snapshot usage (bytes, inodes) and when it was measured.

    ``mountpoint``: the snapshotter's root (containerd's ``imageFSPaths[snapshotter]``).
    """

    used_bytes: int = 0
    inodes_used: int = 0
    timestamp: int = 0
    mountpoint: str = ""


async def writable_layer(snapshotter, key: str, mountpoint: str) -> WritableLayer:
    """Measure ``key``'s usage on ``snapshotter`` (``await snapshotter.usage(key)``).

    A missing snapshot (or any error) gives zeros, as containerd's
    ``linuxContainerMetrics`` does when ``GetSnapshot`` fails.
    """
    now = time.time_ns()
    try:
        u = await snapshotter.usage(key)
    except Exception:
        return WritableLayer(timestamp=now, mountpoint=mountpoint)
    return WritableLayer(used_bytes=u.size, inodes_used=u.inodes, timestamp=now, mountpoint=mountpoint)


@dataclasses.dataclass
class InterfaceStats:
    """Counters of one network interface (``IFLA_STATS64``): bytes, packets, errors, drops."""

    name: str
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


def interfaces_sync(*, include_lo: bool = False) -> list[InterfaceStats]:
    """Every interface of the calling thread's netns (blocking netlink dump), ``lo`` left out."""
    from pyroute2 import IPRoute

    out: list[InterfaceStats] = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if not name or (name == "lo" and not include_lo):
                continue
            st = link.get_attr("IFLA_STATS64") or link.get_attr("IFLA_STATS") or {}
            get = st.get if hasattr(st, "get") else (lambda k, d=0: d)
            out.append(InterfaceStats(
                name=name,
                **{f.name: int(get(f.name, 0) or 0) for f in dataclasses.fields(InterfaceStats)
                   if f.name != "name"}))
    return out


async def netns_interfaces(netns_path: str) -> list[InterfaceStats]:
    """:func:`interfaces_sync` inside the netns pinned at ``netns_path``; ``OSError`` if absent."""
    from . import netns

    return await netns.run_in(netns_path, interfaces_sync)


# -- usage_nano_cores --------------------------------------------------------------------------

class UsageTracker:
    """The previous CPU sample per container/sandbox id, for ``usage_nano_cores``.

    containerd keeps it on the container/sandbox record (``getUsageNanoCores``);
    call :meth:`forget` when the id is removed.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}

    def nano_cores(self, id: str, usage_core_ns: int, timestamp_ns: int) -> int | None:
        """Cores used since the last sample, in billionths; ``None`` when unknown.

        The first sample is only remembered; a sample that is not later than the
        previous one, or whose usage went backwards, is ignored (not remembered).
        """
        prev = self._last.get(id)
        if prev is None:
            self._last[id] = (usage_core_ns, timestamp_ns)
            return None
        prev_usage, prev_ts = prev
        dt = timestamp_ns - prev_ts
        if dt <= 0 or usage_core_ns < prev_usage:
            return None
        self._last[id] = (usage_core_ns, timestamp_ns)
        return int((usage_core_ns - prev_usage) / dt * 1e9)

    def forget(self, id: str) -> None:
        self._last.pop(id, None)


# -- builders ----------------------------------------------------------------------------------

def _psi(psi: cg2.PsiStats | None) -> api.PsiStats | None:
    if psi is None:
        return None

    def data(d: cg2.PsiData | None) -> api.PsiData | None:
        if d is None:
            return None
        return api.PsiData(total=d.total * 1000, avg_10=d.avg10, avg_60=d.avg60, avg_300=d.avg300)

    return api.PsiStats(full=data(psi.full), some=data(psi.some))


def cpu_usage(m: CgroupMetrics | None, timestamp: int) -> api.CpuUsage | None:
    """``CpuUsage`` without ``usage_nano_cores`` (see :class:`UsageTracker`); None without CPU data."""
    if isinstance(m, cg1.Metrics):
        if m.cpu is not None and m.cpu.usage is not None:
            return api.CpuUsage(timestamp=timestamp, usage_core_nano_seconds=_u(m.cpu.usage.total))
    elif isinstance(m, cg2.Metrics) and m.cpu is not None:
        return api.CpuUsage(timestamp=timestamp, usage_core_nano_seconds=_u(m.cpu.usage_usec * 1000),
                            psi=_psi(m.cpu.psi))
    return None


def working_set(m: CgroupMetrics) -> int:
    """Memory usage minus inactive file pages (bytes); 0 without memory data."""
    if isinstance(m, cg1.Metrics):
        mem = m.memory
        if mem is None or mem.usage is None:
            return 0
        usage, inactive = mem.usage.usage, mem.total_inactive_file
    else:
        if m.memory is None:
            return 0
        usage, inactive = m.memory.usage, m.memory.inactive_file
    return usage - inactive if inactive < usage else 0


def memory_usage(m: CgroupMetrics | None, timestamp: int) -> api.MemoryUsage | None:
    """``MemoryUsage`` (see the module doc for each field); None without memory data."""
    if isinstance(m, cg1.Metrics):
        mem = m.memory
        if mem is None or mem.usage is None:
            return None
        ws = working_set(m)
        limit = mem.usage.limit
        return api.MemoryUsage(
            timestamp=timestamp, working_set_bytes=_u(ws),
            available_bytes=_u(0 if _unlimited(limit) else limit - ws),
            usage_bytes=_u(mem.usage.usage), rss_bytes=_u(mem.total_rss),
            page_faults=_u(mem.total_pg_fault), major_page_faults=_u(mem.total_pg_maj_fault))
    if isinstance(m, cg2.Metrics) and m.memory is not None:
        mem2 = m.memory
        ws = working_set(m)
        return api.MemoryUsage(
            timestamp=timestamp, working_set_bytes=_u(ws),
            available_bytes=_u(0 if _unlimited(mem2.usage_limit) else mem2.usage_limit - ws),
            usage_bytes=_u(mem2.usage), rss_bytes=_u(mem2.anon),
            page_faults=_u(mem2.pgfault), major_page_faults=_u(mem2.pgmajfault), psi=_psi(mem2.psi))
    return None


def swap_usage(m: CgroupMetrics | None, timestamp: int) -> api.SwapUsage | None:
    """``SwapUsage`` in bytes; None when the cgroup does not account swap."""
    if isinstance(m, cg1.Metrics):
        mem = m.memory
        if mem is None or mem.usage is None or mem.swap is None or not (mem.swap.usage or mem.swap.limit):
            return None
        used = max(mem.swap.usage - mem.usage.usage, 0)
        avail = 0 if _unlimited(mem.swap.limit) else max(mem.swap.limit - mem.swap.usage, 0)
        return api.SwapUsage(timestamp=timestamp, swap_usage_bytes=_u(used), swap_available_bytes=_u(avail))
    if isinstance(m, cg2.Metrics) and m.memory is not None:
        mem2 = m.memory
        if not (mem2.swap_usage or mem2.swap_limit):
            return None
        avail = 0 if _unlimited(mem2.swap_limit) else max(mem2.swap_limit - mem2.swap_usage, 0)
        return api.SwapUsage(timestamp=timestamp, swap_usage_bytes=_u(mem2.swap_usage),
                             swap_available_bytes=_u(avail))
    return None


def io_usage(m: CgroupMetrics | None, timestamp: int) -> api.IoUsage | None:
    """``IoUsage`` (v2 I/O pressure only, as containerd); None otherwise."""
    if isinstance(m, cg2.Metrics) and m.io is not None and m.io.psi is not None:
        return api.IoUsage(timestamp=timestamp, psi=_psi(m.io.psi))
    return None


def pids_current(m: CgroupMetrics | None) -> int:
    """``pids.current`` of the cgroup (0 without the pids controller)."""
    if m is not None and m.pids is not None:
        return m.pids.current
    return 0


def container_stats(*, id: str, config: api.ContainerConfig, metrics: CgroupMetrics | None,
                    layer: WritableLayer | None = None, timestamp: int | None = None,
                    tracker: UsageTracker | None = None) -> api.ContainerStats:
    """One container's ``ContainerStats`` (containerd's ``linuxContainerMetrics``).

    ``config``: the CreateContainer config (metadata, labels, annotations go to
    ``attributes``); ``metrics``: its task's cgroup Metrics, ``None`` when the
    task is not running (then only attributes and the writable layer are set);
    ``timestamp``: when ``metrics`` were taken (ns; default now); ``tracker``:
    fills ``cpu.usage_nano_cores`` from the previous sample of ``id``.
    """
    ts = time.time_ns() if timestamp is None else timestamp
    layer = layer or WritableLayer(timestamp=ts)
    cs = api.ContainerStats(
        attributes=api.ContainerAttributes(
            id=id, metadata=config.metadata, labels=dict(config.labels),
            annotations=dict(config.annotations)),
        writable_layer=api.FilesystemUsage(
            timestamp=layer.timestamp, fs_id=api.FilesystemIdentifier(mountpoint=layer.mountpoint),
            used_bytes=_u(layer.used_bytes), inodes_used=_u(layer.inodes_used)))
    if metrics is None:
        return cs
    cs.cpu = cpu_usage(metrics, ts)
    if cs.cpu is not None and tracker is not None and cs.cpu.usage_core_nano_seconds is not None:
        cores = tracker.nano_cores(id, cs.cpu.usage_core_nano_seconds.value, ts)
        if cores is not None:
            cs.cpu.usage_nano_cores = _u(cores)
    cs.memory = memory_usage(metrics, ts)
    cs.swap = swap_usage(metrics, ts)
    cs.io = io_usage(metrics, ts)
    return cs


def pod_stats(*, id: str, config: api.PodSandboxConfig, metrics: CgroupMetrics | None,
              containers: Sequence[api.ContainerStats] = (), process_count: int = 0,
              interfaces: Iterable[InterfaceStats] | None = None, timestamp: int | None = None,
              tracker: UsageTracker | None = None) -> api.PodSandboxStats:
    """One pod's ``PodSandboxStats`` (containerd's ``podSandboxStats``, Linux).

    ``metrics``: the pod cgroup's Metrics (``read_metrics(path=config.linux.cgroup_parent)``);
    ``containers``: the pod's :func:`container_stats`; ``process_count``: sum of the
    containers' :func:`pids_current`; ``interfaces``: :func:`netns_interfaces` of
    the pod netns (``None`` for a host-network pod: no ``network``); ``tracker``
    keyed by the sandbox id for ``usage_nano_cores``.
    """
    ts = time.time_ns() if timestamp is None else timestamp
    linux = api.LinuxPodSandboxStats(
        cpu=cpu_usage(metrics, ts), memory=memory_usage(metrics, ts), io=io_usage(metrics, ts),
        containers=list(containers),
        process=api.ProcessUsage(timestamp=ts, process_count=_u(process_count)))
    if linux.cpu is not None and tracker is not None and linux.cpu.usage_core_nano_seconds is not None:
        cores = tracker.nano_cores(id, linux.cpu.usage_core_nano_seconds.value, ts)
        if cores is not None:
            linux.cpu.usage_nano_cores = _u(cores)
    if interfaces is not None:
        net = api.NetworkUsage(timestamp=ts)
        for i in interfaces:
            usage = api.NetworkInterfaceUsage(name=i.name, rx_bytes=_u(i.rx_bytes), rx_errors=_u(i.rx_errors),
                                              tx_bytes=_u(i.tx_bytes), tx_errors=_u(i.tx_errors))
            net.interfaces.append(usage)
            if i.name == DEFAULT_INTERFACE:
                net.default_interface = usage
        if net.default_interface is None and net.interfaces:
            net.default_interface = net.interfaces[0]
        linux.network = net
    return api.PodSandboxStats(
        attributes=api.PodSandboxAttributes(
            id=id, metadata=config.metadata, labels=dict(config.labels),
            annotations=dict(config.annotations)),
        linux=linux)
