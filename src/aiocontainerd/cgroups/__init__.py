"""cgroups v1 and v2: reading a container's statistics into containerd's cgroups Metrics messages.

The shim answers ``Task.Stats`` with an ``Any`` holding one of two messages, and
containerd 1.6's ``ctr task metrics`` decodes it by type URL:

- ``io.containerd.cgroups.v1.Metrics`` (:mod:`aiocontainerd.api.io.containerd.cgroups.v1`)
  on a cgroup v1 host, and on a *hybrid* host (v1 controllers with a cgroup2 mount
  beside them, usually ``/sys/fs/cgroup/unified``): as in containerd, the v2 reader
  is used only when the unified hierarchy is the only one;
- ``io.containerd.cgroups.v2.Metrics`` (:mod:`aiocontainerd.api.io.containerd.cgroups.v2`)
  on a unified (v2-only) host.

The files read, their units, and the fields they land in follow
github.com/containerd/cgroups (``cgroup1``/``cgroup2`` ``Stat``), so our shim and
Go's ``containerd-shim-runc-v2`` report the same figures:

v1 (each controller has its own hierarchy; a dir per controller)
    - cpuacct: ``cpuacct.usage`` (ns) -> ``cpu.usage.total``; ``cpuacct.usage_percpu``
      (ns) -> ``per_cpu``; ``cpuacct.stat`` user/system (USER_HZ ticks, converted
      to ns) -> ``user``/``kernel``;
    - cpu: ``cpu.stat`` nr_periods, nr_throttled, throttled_time (ns) -> ``cpu.throttling``;
    - memory: ``memory.stat`` (bytes; pg* are event counts) -> ``memory.*``;
      ``memory[.memsw|.kmem|.kmem.tcp].{usage_in_bytes,max_usage_in_bytes,failcnt,limit_in_bytes}``
      -> ``memory.{usage,swap,kernel,kernel_tcp}``; ``memory.oom_control`` -> ``memory_oom_control``;
    - pids: ``pids.current``, ``pids.max`` (``max`` -> 0) -> ``pids``;
    - blkio: the CFQ ``blkio.*_recursive`` files, or when they hold nothing the
      ``blkio.throttle.io_service{d,_bytes}[_recursive]`` ones -> ``blkio``
      (device names from ``/proc/partitions``);
    - hugetlb: ``hugetlb.<size>.{usage_in_bytes,max_usage_in_bytes,failcnt}``;
    - rdma: ``rdma.current``, ``rdma.max``.

v2 (one dir)
    - ``cpu.stat`` (µs) -> ``cpu``; ``memory.stat``, ``memory.current/max/peak``,
      ``memory.swap.current/max/peak`` (bytes; ``max`` -> 2**64-1) -> ``memory``;
      ``memory.events`` -> ``memory_events``; ``pids.current/max`` -> ``pids``;
      ``io.stat`` -> ``io.usage``; ``hugetlb.<size>.{current,max,events}``;
      ``rdma.current/max``; ``*.pressure`` -> ``psi``.

A controller (or file) that is missing is skipped; a cgroup that does not exist
at all raises :class:`aiocontainerd.errors.NotFound`. Reads are blocking file
I/O: callers on an event loop run :func:`stats` in a thread
(``await asyncio.to_thread(cgroups.stats, pid)``).

This module runs inside the shim: it imports the stdlib, betterproto2, the
generated messages and :mod:`aiocontainerd.errors` only.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Literal

from .. import errors
from ..api.io.containerd.cgroups import v1, v2
from ..mount import unescape_mountinfo

__all__ = [
    "MOUNT",
    "mode",
    "pids",
    "read_v1",
    "read_v2",
    "stats",
    "v1",
    "v1_dirs",
    "v2",
    "v2_dir",
]

MOUNT = "/sys/fs/cgroup"
#: the v1 controllers whose statistics are read
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "hugetlb", "rdma")
_UINT64_MAX = (1 << 64) - 1
_UINT32_MAX = (1 << 32) - 1
_NS_PER_S = 1_000_000_000


# -- mounts and modes ---------------------------------------------------------------------


def parse_mountinfo(text: str) -> list[tuple[str, str, str, list[str]]]:
    """The cgroup mounts of a ``/proc/<pid>/mountinfo`` text.

    Returns ``(fstype, mount point, root in the hierarchy, super options)`` for each
    ``cgroup``/``cgroup2`` mount, in file order.
    """
    out = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, after = head.split(), tail.split()
        if len(fields) < 5 or len(after) < 1 or after[0] not in ("cgroup", "cgroup2"):
            continue
        options = after[2].split(",") if len(after) > 2 else []
        out.append((after[0], unescape_mountinfo(fields[4]), unescape_mountinfo(fields[3]), options))
    return out


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


@functools.lru_cache(maxsize=1)
def _mounts() -> list[tuple[str, str, str, list[str]]]:
    try:
        return parse_mountinfo(_read_text("/proc/self/mountinfo"))
    except OSError:
        return []


def mode_of(mounts: list[tuple[str, str, str, list[str]]]) -> Literal["v1", "hybrid", "v2"]:
    """The cgroup mode that a list of :func:`parse_mountinfo` mounts describes.

    ``v2`` when ``/sys/fs/cgroup`` itself is a cgroup2 mount (unified), ``hybrid``
    when v1 hierarchies are mounted with a cgroup2 one beside them, else ``v1``.
    """
    if any(fs == "cgroup2" and mp == MOUNT for fs, mp, _, _ in mounts):
        return "v2"
    has_v1 = any(fs == "cgroup" for fs, _, _, _ in mounts)
    if any(fs == "cgroup2" for fs, _, _, _ in mounts):
        return "hybrid" if has_v1 else "v2"
    return "v1"


def mode() -> Literal["v1", "hybrid", "v2"]:
    """This host's cgroup mode: ``"v1"``, ``"hybrid"`` or ``"v2"`` (unified only).

    Read from ``/proc/self/mountinfo`` once and cached. :func:`stats` returns
    v1 Metrics in ``v1`` and ``hybrid`` mode, v2 Metrics in ``v2`` mode, as containerd does.
    """
    return mode_of(_mounts())


def _reset_cache() -> None:
    """Forget the cached mount table (tests; after mounting a hierarchy)."""
    _mounts.cache_clear()


# -- locating a cgroup's directories --------------------------------------------------


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/<pid>/cgroup`` as a map of controller to cgroup path.

    The unified hierarchy's line (``0::/path``) is under the key ``""``; named
    hierarchies as ``name=systemd``.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for c in controllers.split(","):
            if c:
                out[c] = path
    return out


def _expand_systemd(path: str) -> str:
    """An OCI ``slice:prefix:name`` cgroups path (systemd driver) as a plain path.

    ``system.slice:docker:abc`` -> ``/system.slice/docker-abc.scope``; a slice
    ``a-b.slice`` nests as ``/a.slice/a-b.slice``. Other paths are returned as given.
    """
    if path.startswith("/") or path.count(":") != 2:
        return path
    slice_, prefix, name = path.split(":")
    parts = []
    if slice_ and slice_ != "-.slice":
        base = slice_.removesuffix(".slice")
        acc = ""
        for piece in base.split("-"):
            acc = f"{acc}-{piece}" if acc else piece
            parts.append(acc + ".slice")
    else:
        parts.append("system.slice")
    unit = name if name.endswith(".slice") else (f"{prefix}-{name}.scope" if prefix else f"{name}.scope")
    parts.append(unit)
    return "/" + "/".join(parts)


def _join(mountpoint: str, root: str, cgpath: str) -> str:
    """The directory of cgroup ``cgpath`` in a hierarchy mounted at ``mountpoint``
    (showing the hierarchy from ``root``); never outside the mount."""
    cgpath = os.path.normpath("/" + cgpath)
    root = os.path.normpath("/" + root)
    if root != "/" and (cgpath == root or cgpath.startswith(root + "/")):
        cgpath = cgpath[len(root):] or "/"
    return os.path.join(mountpoint, cgpath.lstrip("/")) if cgpath != "/" else mountpoint


def _proc_cgroup(pid: int) -> dict[str, str]:
    try:
        return parse_proc_cgroup(_read_text(f"/proc/{int(pid)}/cgroup"))
    except FileNotFoundError:
        raise errors.NotFound(f"cgroups: process {pid} not found") from None
    except ProcessLookupError:
        raise errors.NotFound(f"cgroups: process {pid} not found") from None


def _check_args(pid: int | None, path: str | None) -> None:
    if (pid is None) == (path is None):
        raise errors.InvalidArgument("cgroups: give exactly one of pid or path")


def v1_dirs(pid: int | None = None, *, path: str | None = None,
            mounts: list[tuple[str, str, str, list[str]]] | None = None) -> dict[str, str]:
    """The existing v1 directory of each controller in :data:`V1_CONTROLLERS` for the
    cgroup of ``pid`` or the cgroups ``path``; raises NotFound when there is none."""
    _check_args(pid, path)
    mounts = _mounts() if mounts is None else mounts
    cgpaths: dict[str, str] = _proc_cgroup(pid) if pid is not None else {}
    out: dict[str, str] = {}
    for fs, mountpoint, root, options in mounts:
        if fs != "cgroup":
            continue
        for controller in options:
            if controller not in V1_CONTROLLERS or controller in out:
                continue
            if pid is not None:
                if controller not in cgpaths:
                    continue
                cgpath = cgpaths[controller]
            else:
                cgpath = _expand_systemd(path or "")
            d = _join(mountpoint, root, cgpath)
            if os.path.isdir(d):
                out[controller] = d
    if not out:
        what = f"process {pid}" if pid is not None else repr(path)
        raise errors.NotFound(f"cgroups: no v1 cgroup for {what}")
    return out


def v2_dir(pid: int | None = None, *, path: str | None = None,
           mounts: list[tuple[str, str, str, list[str]]] | None = None) -> str:
    """The unified-hierarchy directory of the cgroup of ``pid`` or the cgroups ``path``;
    raises NotFound when the cgroup (or a cgroup2 mount) does not exist."""
    _check_args(pid, path)
    mounts = _mounts() if mounts is None else mounts
    v2mounts = [m for m in mounts if m[0] == "cgroup2"]
    if not v2mounts:
        raise errors.NotFound("cgroups: no cgroup2 hierarchy is mounted")
    # the unified root at /sys/fs/cgroup first, else the first one (hybrid layouts)
    v2mounts.sort(key=lambda m: m[1] != MOUNT)
    _, mountpoint, root, _ = v2mounts[0]
    if pid is not None:
        cgpath = _proc_cgroup(pid).get("")
        if cgpath is None:
            raise errors.NotFound(f"cgroups: process {pid} is in no cgroup2 cgroup")
    else:
        cgpath = _expand_systemd(path or "")
    d = _join(mountpoint, root, cgpath)
    if not os.path.isdir(d):
        what = f"process {pid}" if pid is not None else repr(path)
        raise errors.NotFound(f"cgroups: no cgroup2 cgroup {d} for {what}")
    return d


# -- file parsing -----------------------------------------------------------------------


def _try_read(path: str) -> str | None:
    """The file's text, or None when it is missing (or the kernel refuses it)."""
    try:
        return _read_text(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError:  # ENODEV, EOPNOTSUPP (PSI off) and the like
        return None


def _uint(text: str, *, max_value: int = 0) -> int:
    """A cgroup number: ``max`` -> ``max_value``, negatives -> 0, clamped to uint64."""
    s = text.strip()
    if s == "max":
        return max_value
    try:
        v = int(s)
    except ValueError:
        return 0
    return min(max(v, 0), _UINT64_MAX)


def _read_uint(path: str, *, max_value: int = 0) -> int | None:
    text = _try_read(path)
    return None if text is None else _uint(text, max_value=max_value)


def _kv(text: str | None) -> dict[str, int]:
    """A flat keyed file (``key value`` lines, e.g. memory.stat, cpu.stat)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = _uint(parts[1])
    return out


def _pagesize_key(size: str) -> int:
    """``2MB`` -> bytes, to order huge page sizes."""
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
    for suffix, mult in units.items():
        if size.endswith(suffix) and size[:-2].isdigit():
            return int(size[:-2]) * mult
    return 0


def _hugetlb_sizes(d: str, suffix: str) -> list[str]:
    try:
        names = os.listdir(d)
    except OSError:
        return []
    sizes = {n[len("hugetlb."):-len(suffix)] for n in names
             if n.startswith("hugetlb.") and n.endswith(suffix) and n.count(".") >= 2}
    return sorted((s for s in sizes if s and "." not in s), key=_pagesize_key)


def _rdma(text: str | None, entry: type[v1.RdmaEntry] | type[v2.RdmaEntry]) -> list:
    """``rdma.current``/``rdma.max`` lines: ``<device> hca_handle=N hca_object=N``."""
    out = []
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts:
            continue
        e = entry(device=parts[0])
        for kv in parts[1:]:
            k, sep, v = kv.partition("=")
            if not sep:
                continue
            n = _UINT32_MAX if v == "max" else min(_uint(v), _UINT32_MAX)
            if k == "hca_handle":
                e.hca_handles = n
            elif k == "hca_object":
                e.hca_objects = n
        out.append(e)
    return out


# -- cgroup v1 ---------------------------------------------------------------------------


def parse_partitions(text: str) -> dict[tuple[int, int], str]:
    """``/proc/partitions`` as ``{(major, minor): "/dev/<name>"}`` (first one wins)."""
    out: dict[tuple[int, int], str] = {}
    for line in text.splitlines()[2:]:
        f = line.split()
        if len(f) < 4 or not f[0].isdigit() or not f[1].isdigit():
            continue
        out.setdefault((int(f[0]), int(f[1])), "/dev/" + f[3])
    return out


def _blkio_entries(text: str | None, devices: Mapping[tuple[int, int], str]) -> list[v1.BlkIoEntry]:
    """A blkio stat file: ``major:minor [op] value`` lines (the ``Total`` line is skipped)."""
    out = []
    for line in (text or "").splitlines():
        f = line.replace(":", " ").split()
        if len(f) not in (3, 4) or not (f[0].isdigit() and f[1].isdigit()):
            continue
        major, minor = int(f[0]), int(f[1])
        op = f[2] if len(f) == 4 else ""
        out.append(v1.BlkIoEntry(op=op, device=devices.get((major, minor), ""),
                                 major=major, minor=minor, value=_uint(f[-1])))
    return out


_BLKIO_CFQ = (
    ("sectors_recursive", "sectors_recursive"),
    ("io_service_bytes_recursive", "io_service_bytes_recursive"),
    ("io_serviced_recursive", "io_serviced_recursive"),
    ("io_queued_recursive", "io_queued_recursive"),
    ("io_service_time_recursive", "io_service_time_recursive"),
    ("io_wait_time_recursive", "io_wait_time_recursive"),
    ("io_merged_recursive", "io_merged_recursive"),
    ("time_recursive", "io_time_recursive"),
)


def _read_blkio(d: str, devices: Mapping[tuple[int, int], str]) -> v1.BlkIoStat:
    stat = v1.BlkIoStat()
    found = 0
    if os.path.exists(os.path.join(d, "blkio.io_serviced_recursive")):
        for name, field in _BLKIO_CFQ:
            entries = _blkio_entries(_try_read(os.path.join(d, "blkio." + name)), devices)
            setattr(stat, field, entries)
            found += len(entries)
    if found:
        return stat
    # no CFQ figures (other I/O schedulers): the throttle files count every I/O
    for name, field in (("throttle.io_serviced", "io_serviced_recursive"),
                        ("throttle.io_service_bytes", "io_service_bytes_recursive")):
        text = _try_read(os.path.join(d, f"blkio.{name}_recursive"))
        if text is None:
            text = _try_read(os.path.join(d, f"blkio.{name}"))
        setattr(stat, field, _blkio_entries(text, devices))
    return stat


_V1_MEMORY_STAT = {
    "cache": "cache", "rss": "rss", "rss_huge": "rss_huge", "mapped_file": "mapped_file",
    "dirty": "dirty", "writeback": "writeback", "pgpgin": "pg_pg_in", "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault", "pgmajfault": "pg_maj_fault", "inactive_anon": "inactive_anon",
    "active_anon": "active_anon", "inactive_file": "inactive_file", "active_file": "active_file",
    "unevictable": "unevictable", "hierarchical_memory_limit": "hierarchical_memory_limit",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
}
_V1_MEMORY_STAT.update({f"total_{k}": f"total_{v}" for k, v in list(_V1_MEMORY_STAT.items())
                        if not k.startswith("hierarchical")})


def _memory_entry(d: str, prefix: str) -> v1.MemoryEntry:
    """``<prefix>.{usage_in_bytes,max_usage_in_bytes,failcnt,limit_in_bytes}`` (bytes)."""
    e = v1.MemoryEntry()
    for name, field in (("usage_in_bytes", "usage"), ("max_usage_in_bytes", "max"),
                        ("failcnt", "failcnt"), ("limit_in_bytes", "limit")):
        v = _read_uint(os.path.join(d, f"{prefix}.{name}"))
        if v is not None:
            setattr(e, field, v)
    return e


def _read_memory_v1(d: str) -> tuple[v1.MemoryStat, v1.MemoryOomControl | None] | None:
    text = _try_read(os.path.join(d, "memory.stat"))
    if text is None:
        return None
    raw = _kv(text)
    mem = v1.MemoryStat(**{field: raw.get(key, 0) for key, field in _V1_MEMORY_STAT.items()})
    # every entry present (possibly all zero), as Go's reader leaves them: clients
    # such as 1.6 `ctr task metrics` dereference memory.usage without a check
    mem.usage = _memory_entry(d, "memory")
    mem.swap = _memory_entry(d, "memory.memsw")
    mem.kernel = _memory_entry(d, "memory.kmem")
    mem.kernel_tcp = _memory_entry(d, "memory.kmem.tcp")
    oom_text = _try_read(os.path.join(d, "memory.oom_control"))
    oom = None
    if oom_text is not None:
        o = _kv(oom_text)
        oom = v1.MemoryOomControl(oom_kill_disable=o.get("oom_kill_disable", 0),
                                  under_oom=o.get("under_oom", 0), oom_kill=o.get("oom_kill", 0))
    return mem, oom


@functools.lru_cache(maxsize=1)
def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK") or 100
    except (ValueError, OSError):
        return 100


def read_v1(dirs: Mapping[str, str], *, partitions: str = "/proc/partitions") -> v1.Metrics:
    """v1 Metrics from the per-controller directories ``dirs`` (controller -> dir, as
    :func:`v1_dirs` returns). Missing controllers and files are skipped.

    ``cpu`` is always set (with ``usage`` and ``throttling``), as Go's reader does;
    ``memory`` carries all four MemoryEntry (zero when a file is absent).
    """
    m = v1.Metrics(cpu=v1.CpuStat(usage=v1.CpuUsage(), throttling=v1.Throttle()))
    assert m.cpu is not None and m.cpu.usage is not None and m.cpu.throttling is not None
    if d := dirs.get("cpuacct"):
        usage = m.cpu.usage
        total = _read_uint(os.path.join(d, "cpuacct.usage"))
        usage.total = total or 0
        percpu = _try_read(os.path.join(d, "cpuacct.usage_percpu"))
        usage.per_cpu = [_uint(v) for v in (percpu or "").split()]
        ticks = _kv(_try_read(os.path.join(d, "cpuacct.stat")))
        hz = _clock_ticks()
        usage.user = ticks.get("user", 0) * _NS_PER_S // hz
        usage.kernel = ticks.get("system", 0) * _NS_PER_S // hz
    if d := dirs.get("cpu"):
        cs = _kv(_try_read(os.path.join(d, "cpu.stat")))
        m.cpu.throttling = v1.Throttle(periods=cs.get("nr_periods", 0),
                                       throttled_periods=cs.get("nr_throttled", 0),
                                       throttled_time=cs.get("throttled_time", 0))
    if d := dirs.get("memory"):
        got = _read_memory_v1(d)
        if got is not None:
            m.memory, m.memory_oom_control = got
    if d := dirs.get("pids"):
        current = _read_uint(os.path.join(d, "pids.current"))
        if current is not None:
            m.pids = v1.PidsStat(current=current,
                                 limit=_read_uint(os.path.join(d, "pids.max")) or 0)
    if d := dirs.get("blkio"):
        parts = _try_read(partitions)
        m.blkio = _read_blkio(d, parse_partitions(parts or ""))
    if d := dirs.get("hugetlb"):
        for size in _hugetlb_sizes(d, ".usage_in_bytes"):
            def value(name: str, size: str = size, d: str = d) -> int:
                return _read_uint(os.path.join(d, f"hugetlb.{size}.{name}")) or 0
            m.hugetlb.append(v1.HugetlbStat(usage=value("usage_in_bytes"),
                                            max=value("max_usage_in_bytes"),
                                            failcnt=value("failcnt"), pagesize=size))
    if d := dirs.get("rdma"):
        current = _try_read(os.path.join(d, "rdma.current"))
        if current is not None:
            m.rdma = v1.RdmaStat(current=_rdma(current, v1.RdmaEntry),
                                 limit=_rdma(_try_read(os.path.join(d, "rdma.max")), v1.RdmaEntry))
    return m


# -- cgroup v2 ---------------------------------------------------------------------------


def _psi(path: str) -> v2.PsiStats | None:
    """A ``*.pressure`` file: ``some|full avg10=.. avg60=.. avg300=.. total=..`` lines."""
    text = _try_read(path)
    if text is None:
        return None
    out = v2.PsiStats()
    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        data = v2.PsiData()
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            try:
                if k in ("avg10", "avg60", "avg300"):
                    setattr(data, k, float(v))
                elif k == "total":
                    data.total = _uint(v)
            except ValueError:
                continue
        setattr(out, parts[0], data)
    return out


_V2_MEMORY_STAT = (
    "anon", "file", "kernel_stack", "slab", "sock", "shmem", "file_mapped", "file_dirty",
    "file_writeback", "anon_thp", "inactive_anon", "active_anon", "inactive_file",
    "active_file", "unevictable", "slab_reclaimable", "slab_unreclaimable", "pgfault",
    "pgmajfault", "workingset_refault", "workingset_activate", "workingset_nodereclaim",
    "pgrefill", "pgscan", "pgsteal", "pgactivate", "pgdeactivate", "pglazyfree",
    "pglazyfreed", "thp_fault_alloc", "thp_collapse_alloc", "workingset_refault_anon",
    "workingset_refault_file", "workingset_activate_anon", "workingset_activate_file",
)


def parse_io_stat(text: str) -> list[v2.IoEntry]:
    """``io.stat``: ``MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...`` lines."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        majmin = parts[0].split(":")
        if len(majmin) != 2 or not (majmin[0].isdigit() and majmin[1].isdigit()):
            continue
        e = v2.IoEntry(major=int(majmin[0]), minor=int(majmin[1]))
        for kv in parts[1:]:
            k, sep, v = kv.partition("=")
            if sep and k in ("rbytes", "wbytes", "rios", "wios") and v.isdigit():
                setattr(e, k, _uint(v))
        out.append(e)
    return out


def read_v2(d: str) -> v2.Metrics:
    """v2 Metrics from the unified cgroup directory ``d``. Missing controllers and
    files are skipped; ``max`` limits read as 2**64-1 (as Go's reader does)."""
    def path(name: str) -> str:
        return os.path.join(d, name)

    def uint(name: str) -> int:
        return _read_uint(path(name), max_value=_UINT64_MAX) or 0

    m = v2.Metrics()
    current = _read_uint(path("pids.current"))
    if current is not None:
        m.pids = v2.PidsStat(current=current, limit=uint("pids.max"))
    cpu_text = _try_read(path("cpu.stat"))
    if cpu_text is not None:
        c = _kv(cpu_text)
        m.cpu = v2.CpuStat(
            usage_usec=c.get("usage_usec", 0), user_usec=c.get("user_usec", 0),
            system_usec=c.get("system_usec", 0), nr_periods=c.get("nr_periods", 0),
            nr_throttled=c.get("nr_throttled", 0), throttled_usec=c.get("throttled_usec", 0),
            nr_bursts=c.get("nr_bursts", 0), burst_usec=c.get("burst_usec", 0),
            psi=_psi(path("cpu.pressure")))
    mem_text = _try_read(path("memory.stat"))
    if mem_text is not None or os.path.exists(path("memory.current")):
        raw = _kv(mem_text)
        m.memory = v2.MemoryStat(
            **{k: raw.get(k, 0) for k in _V2_MEMORY_STAT},
            usage=uint("memory.current"), usage_limit=uint("memory.max"),
            max_usage=uint("memory.peak"), swap_usage=uint("memory.swap.current"),
            swap_limit=uint("memory.swap.max"), swap_max_usage=uint("memory.swap.peak"),
            psi=_psi(path("memory.pressure")))
    events = _kv(_try_read(path("memory.events")))
    if events:
        m.memory_events = v2.MemoryEvents(
            low=events.get("low", 0), high=events.get("high", 0), max=events.get("max", 0),
            oom=events.get("oom", 0), oom_kill=events.get("oom_kill", 0),
            oom_group_kill=events.get("oom_group_kill", 0))
    io_text = _try_read(path("io.stat"))
    io_psi = _psi(path("io.pressure"))
    if io_text is not None or io_psi is not None:
        m.io = v2.IoStat(usage=parse_io_stat(io_text or ""), psi=io_psi)
    for size in _hugetlb_sizes(d, ".current"):
        m.hugetlb.append(v2.HugeTlbStat(
            current=uint(f"hugetlb.{size}.current"), max=uint(f"hugetlb.{size}.max"),
            pagesize=size,
            failcnt=_kv(_try_read(path(f"hugetlb.{size}.events"))).get("max", 0)))
    rdma_current = _try_read(path("rdma.current"))
    if rdma_current is not None:
        m.rdma = v2.RdmaStat(current=_rdma(rdma_current, v2.RdmaEntry),
                             limit=_rdma(_try_read(path("rdma.max")), v2.RdmaEntry))
    return m


# -- entry points ---------------------------------------------------------------------------


def stats(pid: int | None = None, *, path: str | None = None) -> v1.Metrics | v2.Metrics:
    """The statistics of the cgroup of process ``pid`` (from ``/proc/<pid>/cgroup``) or
    of the cgroups ``path`` (the OCI spec's ``linux.cgroupsPath``, plain or systemd
    ``slice:prefix:name``).

    Returns ``io.containerd.cgroups.v1.Metrics`` on a v1 or hybrid host and
    ``io.containerd.cgroups.v2.Metrics`` on a unified one; pack it with
    ``google.protobuf.Any.pack(metrics)`` for ``Task.Stats``. Raises
    :class:`errors.NotFound` when the process or cgroup does not exist,
    :class:`errors.InvalidArgument` unless exactly one of ``pid``/``path`` is given.
    Blocking: run it in a thread from an event loop.
    """
    if mode() == "v2":
        return read_v2(v2_dir(pid, path=path))
    return read_v1(v1_dirs(pid, path=path))


def pids(pid: int | None = None, *, path: str | None = None) -> list[int]:
    """The processes (``cgroup.procs``) in the cgroup of ``pid`` or ``path``, sorted.

    On v1 the pids controller's directory is read (else memory's, else any).
    Raises NotFound as :func:`stats` does.
    """
    if mode() == "v2":
        d = v2_dir(pid, path=path)
    else:
        dirs = v1_dirs(pid, path=path)
        d = dirs.get("pids") or dirs.get("memory") or next(iter(dirs.values()))
    text = _try_read(os.path.join(d, "cgroup.procs"))
    if text is None:
        raise errors.NotFound(f"cgroups: {d} has gone")
    return sorted(int(p) for p in text.split() if p.isdigit())
