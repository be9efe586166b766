"""cgroup statistics against fake v1/v2 trees: mount and /proc parsing, every file the
readers take, the edge cases (``max``, negatives, missing controllers, malformed lines),
the messages' wire facts, and the Prometheus collector's names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiocontainerd import cgroups, errors
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.cgroups import prometheus as cgprom
from aiocontainerd.cgroups import v1, v2
from aiocontainerd.metrics import Metrics, MetricsServer
from tests.support import imports

U64 = (1 << 64) - 1


def write(d: Path, files: dict[str, str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text)


# -- mounts, modes, paths ---------------------------------------------------------------

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,pids
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
LEGACY = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"


def test_parse_mountinfo() -> None:
    mounts = cgroups.parse_mountinfo(HYBRID)
    assert [(fs, mp) for fs, mp, _, _ in mounts] == [
        ("cgroup", "/sys/fs/cgroup/cpu,cpuacct"), ("cgroup", "/sys/fs/cgroup/memory"),
        ("cgroup", "/sys/fs/cgroup/systemd"), ("cgroup2", "/sys/fs/cgroup/unified"),
        ("cgroup", "/mnt/with space")]
    assert mounts[0][3] == ["rw", "cpu", "cpuacct"]
    assert cgroups.parse_mountinfo("garbage\n\n1 2 3 - \n") == []


def test_modes() -> None:
    assert cgroups.mode_of(cgroups.parse_mountinfo(HYBRID)) == "hybrid"
    assert cgroups.mode_of(cgroups.parse_mountinfo(UNIFIED)) == "v2"
    assert cgroups.mode_of(cgroups.parse_mountinfo(LEGACY)) == "v1"
    assert cgroups.mode_of([]) == "v1"
    assert cgroups.mode() in ("v1", "hybrid", "v2")


def test_parse_proc_cgroup() -> None:
    text = "12:pids:/a\n4:cpu,cpuacct:/b/c\n1:name=systemd:/s\n0::/u\nbad line\n"
    assert cgroups.parse_proc_cgroup(text) == {
        "pids": "/a", "cpu": "/b/c", "cpuacct": "/b/c", "name=systemd": "/s", "": "/u"}


@pytest.mark.parametrize("path, want", [
    ("/plain/path", "/plain/path"),
    ("system.slice:docker:abc", "/system.slice/docker-abc.scope"),
    ("kubepods-besteffort.slice:cri-containerd:x",
     "/kubepods.slice/kubepods-besteffort.slice/cri-containerd-x.scope"),
    (":cri:y", "/system.slice/cri-y.scope"),
])
def test_systemd_paths(path: str, want: str) -> None:
    assert cgroups._expand_systemd(path) == want


def fake_v1_mounts(root: Path) -> list[tuple[str, str, str, list[str]]]:
    (root / "cpu,cpuacct").mkdir(parents=True)
    (root / "memory").mkdir()
    (root / "pids").mkdir()
    return [("cgroup", str(root / "cpu,cpuacct"), "/", ["rw", "cpu", "cpuacct"]),
            ("cgroup", str(root / "memory"), "/", ["rw", "memory"]),
            ("cgroup", str(root / "pids"), "/nested", ["rw", "pids"]),
            ("cgroup", str(root / "sd"), "/", ["rw", "name=systemd"]),
            ("cgroup2", str(root / "unified"), "/", ["rw"])]


def test_v1_dirs_by_path(tmp_path: Path) -> None:
    mounts = fake_v1_mounts(tmp_path)
    for sub in ("cpu,cpuacct/c1", "memory/c1", "pids/c1"):
        (tmp_path / sub).mkdir()
    dirs = cgroups.v1_dirs(path="/c1", mounts=mounts)
    assert dirs == {"cpu": str(tmp_path / "cpu,cpuacct/c1"), "cpuacct": str(tmp_path / "cpu,cpuacct/c1"),
                    "memory": str(tmp_path / "memory/c1"), "pids": str(tmp_path / "pids/c1")}
    # the pids mount shows the hierarchy from /nested: /nested/c1 is its c1
    assert cgroups.v1_dirs(path="/nested/c1", mounts=mounts)["pids"] == str(tmp_path / "pids/c1")
    # ".." never leaves the mount
    assert cgroups.v1_dirs(path="/../../c1", mounts=mounts)["memory"] == str(tmp_path / "memory/c1")
    with pytest.raises(errors.NotFound):
        cgroups.v1_dirs(path="/nope", mounts=mounts)
    with pytest.raises(errors.InvalidArgument):
        cgroups.v1_dirs(mounts=mounts)
    with pytest.raises(errors.InvalidArgument):
        cgroups.v1_dirs(1, path="/c1", mounts=mounts)


def test_dirs_by_pid(tmp_path: Path) -> None:
    """The paths of /proc/<pid>/cgroup, under our fake mounts."""
    mounts = fake_v1_mounts(tmp_path)
    own = cgroups.parse_proc_cgroup(Path(f"/proc/{os.getpid()}/cgroup").read_text())
    if "memory" not in own or "" not in own:
        pytest.skip("this process has no memory or unified cgroup line")
    mem = tmp_path / "memory" / own["memory"].lstrip("/")
    mem.mkdir(parents=True, exist_ok=True)
    assert cgroups.v1_dirs(os.getpid(), mounts=mounts)["memory"] == str(mem).rstrip("/")
    unified = tmp_path / "unified" / own[""].lstrip("/")
    unified.mkdir(parents=True, exist_ok=True)
    assert cgroups.v2_dir(os.getpid(), mounts=mounts) == str(unified).rstrip("/")
    with pytest.raises(errors.NotFound):
        cgroups.v1_dirs(2**22 + 12345, mounts=mounts)


def test_v2_dir(tmp_path: Path) -> None:
    (tmp_path / "u" / "a" / "b").mkdir(parents=True)
    mounts = [("cgroup2", str(tmp_path / "other"), "/", []), ("cgroup2", str(tmp_path / "u"), "/", [])]
    with pytest.raises(errors.NotFound):  # the first cgroup2 mount is taken, it lacks /a/b
        cgroups.v2_dir(path="/a/b", mounts=mounts)
    assert cgroups.v2_dir(path="/a/b", mounts=mounts[1:]) == str(tmp_path / "u" / "a" / "b")
    with pytest.raises(errors.NotFound):
        cgroups.v2_dir(path="/a/b", mounts=[])


def test_stats_errors() -> None:
    with pytest.raises(errors.InvalidArgument):
        cgroups.stats()
    with pytest.raises(errors.NotFound):
        cgroups.stats(2**22 + 12345)  # above the largest pid_max
    with pytest.raises(errors.NotFound):
        cgroups.stats(path="/aiocontainerd-test-no-such-cgroup")
    with pytest.raises(errors.NotFound):
        cgroups.pids(path="/aiocontainerd-test-no-such-cgroup")


def test_stats_of_self() -> None:
    """This process's own cgroup: the host's message type, CPU time used."""
    m = cgroups.stats(os.getpid())
    if cgroups.mode() == "v2":
        assert isinstance(m, v2.Metrics)
    else:
        assert isinstance(m, v1.Metrics)
        assert m.cpu is not None and m.cpu.usage is not None
    assert os.getpid() in cgroups.pids(os.getpid())


# -- v1 ---------------------------------------------------------------------------------

MEMORY_STAT_V1 = """\
cache 4096
rss 8192
rss_huge 0
mapped_file 12
dirty 1
writeback 2
pgpgin 100
pgpgout 50
pgfault 300
pgmajfault 3
inactive_anon 11
active_anon 22
inactive_file 33
active_file 44
unevictable 55
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 40960
total_rss 81920
total_pgpgin 1000
total_pgmajfault 30
total_unevictable 550
malformed line here
"""

PARTITIONS = """\
major minor  #blocks  name

 253        0   52428800 vda
 253        1   52427759 vda1
   8        0     100000 sda
"""


def v1_tree(root: Path) -> dict[str, str]:
    cpu = root / "cpu"
    write(cpu, {
        "cpuacct.usage": "123456789\n",
        "cpuacct.usage_percpu": "100000000 23456789 \n",
        "cpuacct.stat": "user 250\nsystem 50\n",
        "cpu.stat": "nr_periods 10\nnr_throttled 3\nthrottled_time 4500\n",
    })
    write(root / "memory", {
        "memory.stat": MEMORY_STAT_V1,
        "memory.usage_in_bytes": "1048576\n", "memory.max_usage_in_bytes": "2097152\n",
        "memory.failcnt": "7\n", "memory.limit_in_bytes": "9223372036854771712\n",
        "memory.kmem.usage_in_bytes": "4096\n", "memory.kmem.max_usage_in_bytes": "8192\n",
        "memory.kmem.failcnt": "0\n", "memory.kmem.limit_in_bytes": "-1\n",
        "memory.oom_control": "oom_kill_disable 0\nunder_oom 1\noom_kill 2\n",
    })
    write(root / "pids", {"pids.current": "3\n", "pids.max": "max\n"})
    write(root / "blkio", {
        "blkio.io_serviced_recursive": "253:0 Read 5\n253:0 Write 6\n253:0 Sync 11\nTotal 22\n",
        "blkio.io_service_bytes_recursive": "253:0 Read 4096\n253:0 Write 8192\n8:0 Read 1\nTotal 12289\n",
        "blkio.time_recursive": "253:0 77\n",
        "blkio.sectors_recursive": "",
    })
    write(root / "hugetlb", {
        "hugetlb.1GB.usage_in_bytes": "0\n", "hugetlb.1GB.max_usage_in_bytes": "0\n",
        "hugetlb.1GB.failcnt": "0\n",
        "hugetlb.2MB.usage_in_bytes": "4194304\n", "hugetlb.2MB.max_usage_in_bytes": "6291456\n",
        "hugetlb.2MB.failcnt": "1\n", "hugetlb.2MB.limit_in_bytes": "max\n",
        "hugetlb.2MB.rsvd.usage_in_bytes": "0\n",
    })
    write(root / "rdma", {"rdma.current": "mlx4_0 hca_handle=2 hca_object=2000\n\n",
                          "rdma.max": "mlx4_0 hca_handle=max hca_object=junk\n"})
    (root / "partitions").write_text(PARTITIONS)
    return {"cpu": str(cpu), "cpuacct": str(cpu), "memory": str(root / "memory"),
            "pids": str(root / "pids"), "blkio": str(root / "blkio"),
            "hugetlb": str(root / "hugetlb"), "rdma": str(root / "rdma")}


def test_read_v1(tmp_path: Path) -> None:
    m = cgroups.read_v1(v1_tree(tmp_path), partitions=str(tmp_path / "partitions"))
    hz = os.sysconf("SC_CLK_TCK")
    assert m.cpu == v1.CpuStat(
        usage=v1.CpuUsage(total=123456789, user=250 * 10**9 // hz, kernel=50 * 10**9 // hz,
                          per_cpu=[100000000, 23456789]),
        throttling=v1.Throttle(periods=10, throttled_periods=3, throttled_time=4500))
    mem = m.memory
    assert mem is not None
    assert (mem.cache, mem.rss, mem.mapped_file, mem.dirty, mem.writeback) == (4096, 8192, 12, 1, 2)
    assert (mem.pg_pg_in, mem.pg_pg_out, mem.pg_fault, mem.pg_maj_fault) == (100, 50, 300, 3)
    assert (mem.inactive_anon, mem.active_anon, mem.inactive_file, mem.active_file,
            mem.unevictable) == (11, 22, 33, 44, 55)
    assert mem.hierarchical_memory_limit == mem.hierarchical_swap_limit == 9223372036854771712
    assert (mem.total_cache, mem.total_rss, mem.total_pg_pg_in, mem.total_pg_maj_fault,
            mem.total_unevictable) == (40960, 81920, 1000, 30, 550)
    assert mem.usage == v1.MemoryEntry(usage=1048576, max=2097152, failcnt=7, limit=9223372036854771712)
    assert mem.kernel == v1.MemoryEntry(usage=4096, max=8192, failcnt=0, limit=0)  # -1 -> 0
    # swap accounting off (no memsw files): present but zero, as Go leaves it
    assert mem.swap == v1.MemoryEntry() and mem.kernel_tcp == v1.MemoryEntry()
    assert m.memory_oom_control == v1.MemoryOomControl(oom_kill_disable=0, under_oom=1, oom_kill=2)
    assert m.pids == v1.PidsStat(current=3, limit=0)  # "max" -> 0 in v1
    assert m.blkio is not None
    assert m.blkio.io_serviced_recursive == [
        v1.BlkIoEntry(op="Read", device="/dev/vda", major=253, minor=0, value=5),
        v1.BlkIoEntry(op="Write", device="/dev/vda", major=253, minor=0, value=6),
        v1.BlkIoEntry(op="Sync", device="/dev/vda", major=253, minor=0, value=11)]
    assert [(e.device, e.op, e.value) for e in m.blkio.io_service_bytes_recursive] == [
        ("/dev/vda", "Read", 4096), ("/dev/vda", "Write", 8192), ("/dev/sda", "Read", 1)]
    assert m.blkio.io_time_recursive == [
        v1.BlkIoEntry(op="", device="/dev/vda", major=253, minor=0, value=77)]
    assert m.blkio.sectors_recursive == [] and m.blkio.io_queued_recursive == []
    assert m.hugetlb == [
        v1.HugetlbStat(usage=4194304, max=6291456, failcnt=1, pagesize="2MB"),
        v1.HugetlbStat(pagesize="1GB")]
    assert m.rdma == v1.RdmaStat(
        current=[v1.RdmaEntry(device="mlx4_0", hca_handles=2, hca_objects=2000)],
        limit=[v1.RdmaEntry(device="mlx4_0", hca_handles=2**32 - 1, hca_objects=0)])
    # what containerd fills elsewhere or not at all
    assert m.network == [] and m.cgroup_stats is None


def test_v1_blkio_throttle_fallback(tmp_path: Path) -> None:
    """No CFQ figures: the throttle files (recursive when the kernel has them)."""
    d = tmp_path / "blkio"
    write(d, {
        "blkio.io_serviced_recursive": "Total 0\n",
        "blkio.io_service_bytes_recursive": "Total 0\n",
        "blkio.throttle.io_serviced_recursive": "8:0 Read 2\n8:0 Write 3\nTotal 5\n",
        "blkio.throttle.io_serviced": "8:0 Read 1\n",
        "blkio.throttle.io_service_bytes": "8:0 Read 512\n8:0 Write 1024\n",
    })
    m = cgroups.read_v1({"blkio": str(d)}, partitions=str(tmp_path / "none"))
    assert m.blkio is not None
    assert [(e.op, e.value, e.device) for e in m.blkio.io_serviced_recursive] == [
        ("Read", 2, ""), ("Write", 3, "")]
    assert [(e.op, e.value) for e in m.blkio.io_service_bytes_recursive] == [("Read", 512), ("Write", 1024)]


def test_v1_missing_controllers(tmp_path: Path) -> None:
    """Only what is there: cpu always (zero), nothing for an empty memory dir."""
    (tmp_path / "memory").mkdir()
    (tmp_path / "pids").mkdir()
    m = cgroups.read_v1({"memory": str(tmp_path / "memory"), "pids": str(tmp_path / "pids")})
    assert m == v1.Metrics(cpu=v1.CpuStat(usage=v1.CpuUsage(), throttling=v1.Throttle()))
    # a cgroup removed between locating and reading: same, no error
    m = cgroups.read_v1({"cpuacct": str(tmp_path / "gone"), "blkio": str(tmp_path / "gone")},
                        partitions=str(tmp_path / "gone"))
    assert m.cpu == v1.CpuStat(usage=v1.CpuUsage(), throttling=v1.Throttle())
    assert m.blkio == v1.BlkIoStat()


# -- v2 ---------------------------------------------------------------------------------

MEMORY_STAT_V2 = """\
anon 1000
file 2000
kernel_stack 16384
slab 300
sock 0
shmem 5
file_mapped 6
file_dirty 7
file_writeback 8
anon_thp 9
inactive_anon 10
active_anon 11
inactive_file 12
active_file 13
unevictable 14
slab_reclaimable 15
slab_unreclaimable 16
pgfault 17
pgmajfault 18
workingset_refault_anon 19
workingset_refault_file 20
workingset_activate_anon 21
workingset_activate_file 22
workingset_nodereclaim 23
pgrefill 24
pgscan 25
pgsteal 26
pgactivate 27
pgdeactivate 28
pglazyfree 29
pglazyfreed 30
thp_fault_alloc 31
thp_collapse_alloc 32
zswap 99
"""

PRESSURE = ("some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n")


def test_read_v2(tmp_path: Path) -> None:
    write(tmp_path, {
        "cgroup.procs": "12\n34\n",
        "pids.current": "2\n", "pids.max": "max\n",
        "cpu.stat": "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\nnr_periods 4\n"
                    "nr_throttled 1\nthrottled_usec 99\nnr_bursts 2\nburst_usec 8\n",
        "cpu.pressure": PRESSURE,
        "memory.stat": MEMORY_STAT_V2,
        "memory.current": "3145728\n", "memory.max": "max\n", "memory.peak": "4194304\n",
        "memory.swap.current": "0\n", "memory.swap.max": "1073741824\n",
        "memory.events": "low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\noom_group_kill 5\n",
        "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"
                   "253:1 rbytes=1 wbytes=2 rios=3 wios=x\nbogus\nx:y rbytes=1\n",
        "hugetlb.2MB.current": "2097152\n", "hugetlb.2MB.max": "max\n",
        "hugetlb.2MB.events": "max 3\n", "hugetlb.2MB.rsvd.current": "0\n",
        "rdma.current": "mlx5_1 hca_handle=3 hca_object=max\n",
    })
    m = cgroups.read_v2(str(tmp_path))
    assert m.pids == v2.PidsStat(current=2, limit=U64)
    assert m.cpu is not None and m.cpu.psi is not None
    assert (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec, m.cpu.nr_periods, m.cpu.nr_throttled,
            m.cpu.throttled_usec, m.cpu.nr_bursts, m.cpu.burst_usec) == (5000, 3000, 2000, 4, 1, 99, 2, 8)
    assert m.cpu.psi.some == v2.PsiData(avg10=1.5, avg60=0.25, avg300=0.0, total=12345)
    assert m.cpu.psi.full == v2.PsiData(total=7)
    mem = m.memory
    assert mem is not None
    assert (mem.anon, mem.file, mem.kernel_stack, mem.slab, mem.shmem) == (1000, 2000, 16384, 300, 5)
    assert (mem.workingset_refault_anon, mem.workingset_activate_file, mem.thp_collapse_alloc) == (19, 22, 32)
    assert mem.workingset_refault == 0  # the pre-5.9 key is absent
    assert (mem.usage, mem.usage_limit, mem.max_usage) == (3145728, U64, 4194304)
    assert (mem.swap_usage, mem.swap_limit, mem.swap_max_usage) == (0, 1073741824, 0)
    assert mem.psi is None
    assert m.memory_events == v2.MemoryEvents(low=0, high=1, max=2, oom=3, oom_kill=4, oom_group_kill=5)
    assert m.io == v2.IoStat(usage=[v2.IoEntry(major=8, minor=0, rbytes=4096, wbytes=8192, rios=1, wios=2),
                                    v2.IoEntry(major=253, minor=1, rbytes=1, wbytes=2, rios=3)])
    assert m.hugetlb == [v2.HugeTlbStat(current=2097152, max=U64, pagesize="2MB", failcnt=3)]
    assert m.rdma == v2.RdmaStat(
        current=[v2.RdmaEntry(device="mlx5_1", hca_handles=3, hca_objects=2**32 - 1)])


def test_read_v2_empty(tmp_path: Path) -> None:
    """A cgroup with no controller enabled (only core files): nothing but what exists."""
    assert cgroups.read_v2(str(tmp_path)) == v2.Metrics()
    write(tmp_path, {"cpu.stat": "usage_usec 10\n", "memory.current": "4096\n"})
    m = cgroups.read_v2(str(tmp_path))
    assert m.cpu == v2.CpuStat(usage_usec=10)
    assert m.memory == v2.MemoryStat(usage=4096)
    assert m.pids is None and m.memory_events is None and m.io is None


@pytest.mark.parametrize("text, want", [
    ("42\n", 42), ("max\n", 0), ("-1", 0), ("-99999999999999999999999", 0),
    (str(2**70), U64), ("", 0), ("abc", 0), ("  7 ", 7),
])
def test_uint(text: str, want: int) -> None:
    assert cgroups._uint(text) == want


def test_parse_partitions() -> None:
    assert cgroups.parse_partitions(PARTITIONS + "bad\n 1 2\n 253 0 1 dup\n") == {
        (253, 0): "/dev/vda", (253, 1): "/dev/vda1", (8, 0): "/dev/sda"}


# -- wire -------------------------------------------------------------------------------


def test_any_round_trip() -> None:
    m1 = v1.Metrics(pids=v1.PidsStat(current=3, limit=10),
                    cpu=v1.CpuStat(usage=v1.CpuUsage(total=5, per_cpu=[2, 3])),
                    memory=v1.MemoryStat(usage=v1.MemoryEntry(usage=4096)))
    a = pb.Any.pack(m1)
    assert a.type_url == "type.googleapis.com/io.containerd.cgroups.v1.Metrics"
    back = pb.Any.parse(bytes(a)).unpack()
    assert isinstance(back, v1.Metrics) and back == m1
    m2 = v2.Metrics(cpu=v2.CpuStat(usage_usec=1), memory=v2.MemoryStat(usage=2))
    a2 = pb.Any.pack(m2)
    assert a2.type_url == "type.googleapis.com/io.containerd.cgroups.v2.Metrics"
    assert pb.Any.parse(bytes(a2)).unpack() == m2


@pytest.mark.parametrize("msg, wire", [
    # (field number << 3 | wire type) tags of containerd's messages
    (v1.Metrics(pids=v1.PidsStat(current=1)), b"\x12\x02\x08\x01"),
    (v1.Metrics(cgroup_stats=v1.CgroupStats(nr_io_wait=1)), b"\x42\x02\x28\x01"),
    (v1.Metrics(memory_oom_control=v1.MemoryOomControl(oom_kill=1)), b"\x4a\x02\x18\x01"),
    (v1.MemoryStat(kernel_tcp=v1.MemoryEntry(failcnt=1)), b"\xa2\x02\x02\x20\x01"),
    (v1.BlkIoStat(sectors_recursive=[v1.BlkIoEntry(value=1)]), b"\x42\x02\x28\x01"),
    (v1.RdmaEntry(hca_objects=1), b"\x18\x01"),
    (v2.Metrics(memory=v2.MemoryStat(usage=1)), b"\x22\x03\x80\x02\x01"),
    (v2.Metrics(memory_events=v2.MemoryEvents(oom_group_kill=1)), b"\x42\x02\x30\x01"),
    (v2.CpuStat(burst_usec=1), b"\x48\x01"),
    (v2.PsiData(avg10=1.0), b"\x09\x00\x00\x00\x00\x00\x00\xf0\x3f"),
    (v2.MemoryStat(workingset_activate_file=1), b"\xd0\x02\x01"),
    (v2.HugeTlbStat(failcnt=1), b"\x20\x01"),
])
def test_wire_numbers(msg: object, wire: bytes) -> None:
    assert bytes(msg) == wire  # type: ignore[call-overload]


def test_shim_imports() -> None:
    """The shim imports this module: no grpclib, aiohttp, prometheus_client, services."""
    bad = imports.loaded("import os, aiocontainerd.cgroups as c; c.stats(os.getpid())",
                         ("grpclib", "aiohttp", "prometheus_client", "lmdb", "aiocontainerd.services",
                          "aiocontainerd.metadata", "aiocontainerd.daemon", "aiocontainerd.client"))
    assert bad == [], bad


# -- Prometheus ---------------------------------------------------------------------------


def sample_v1() -> v1.Metrics:
    return v1.Metrics(
        pids=v1.PidsStat(current=2, limit=0),
        cpu=v1.CpuStat(usage=v1.CpuUsage(total=100, kernel=30, user=70, per_cpu=[60, 40]),
                       throttling=v1.Throttle(periods=5)),
        memory=v1.MemoryStat(rss=4096, usage=v1.MemoryEntry(usage=8192, limit=1 << 30)),
        memory_oom_control=v1.MemoryOomControl(oom_kill=1),
        blkio=v1.BlkIoStat(io_service_bytes_recursive=[
            v1.BlkIoEntry(op="Read", device="/dev/vda", major=253, minor=0, value=512)]),
        hugetlb=[v1.HugetlbStat(usage=2, pagesize="2MB")])


def sample_v2() -> v2.Metrics:
    return v2.Metrics(pids=v2.PidsStat(current=1, limit=U64), cpu=v2.CpuStat(usage_usec=9),
                      memory=v2.MemoryStat(usage=100, usage_limit=200),
                      memory_events=v2.MemoryEvents(oom=1),
                      io=v2.IoStat(usage=[v2.IoEntry(major=8, minor=0, rbytes=7)]))


def lines(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.startswith("container_")}


def test_collector_names() -> None:
    m = Metrics()
    c = cgprom.TaskMetricsCollector()
    m.registry.register(c)
    c.update([("default", "c1", sample_v1()), ("k8s.io", "c2", sample_v2()), ("x", "y", pb.Empty())])
    out = m.render().decode()
    got = lines(out)
    for want in [
        'container_pids_current{container_id="c1",namespace="default"} 2.0',
        'container_pids_limit{container_id="c1",namespace="default"} 0.0',
        'container_cpu_total_nanoseconds{container_id="c1",namespace="default"} 100.0',
        'container_cpu_kernel_nanoseconds{container_id="c1",namespace="default"} 30.0',
        'container_cpu_user_nanoseconds{container_id="c1",namespace="default"} 70.0',
        'container_per_cpu_nanoseconds{container_id="c1",cpu="1",namespace="default"} 40.0',
        'container_cpu_throttle_periods_total{container_id="c1",namespace="default"} 5.0',
        'container_memory_rss_bytes{container_id="c1",namespace="default"} 4096.0',
        'container_memory_usage_usage_bytes{container_id="c1",namespace="default"} 8192.0',
        'container_memory_usage_limit_bytes{container_id="c1",namespace="default"} 1.073741824e+09',
        'container_memory_usage_failcnt_total{container_id="c1",namespace="default"} 0.0',
        'container_memory_oom_total{container_id="c1",namespace="default"} 1.0',
        'container_blkio_io_service_bytes_recursive_bytes{container_id="c1",device="/dev/vda",'
        'major="253",minor="0",namespace="default",op="Read"} 512.0',
        'container_hugetlb_usage_bytes{container_id="c1",namespace="default",page="2MB"} 2.0',
        'container_pids_current{container_id="c2",namespace="k8s.io"} 1.0',
        'container_cpu_usage_usec_microseconds{container_id="c2",namespace="k8s.io"} 9.0',
        'container_memory_usage_bytes{container_id="c2",namespace="k8s.io"} 100.0',
        'container_memory_usage_limit_bytes{container_id="c2",namespace="k8s.io"} 200.0',
        'container_memory_oom_total{container_id="c2",namespace="k8s.io"} 1.0',
        'container_io_rbytes_bytes{container_id="c2",major="8",minor="0",namespace="k8s.io"} 7.0',
    ]:
        assert want in got, want
    # unset parts give no rows: c1 has no swap entry, c2 no hugetlb
    assert not any("memory_swap_usage_bytes" in line and "c1" in line for line in got)
    assert "# TYPE container_cpu_total_nanoseconds gauge" in out
    c.update([])
    assert lines(m.render().decode()) == set()


def test_families_consistent() -> None:
    """A name shared by the v1 and v2 tables has one label set."""
    seen: dict[str, tuple[str, ...]] = {}
    for fams in cgprom.families().values():
        names = [cgprom.full_name(n, u) for n, u, _, _, _ in fams]
        assert len(names) == len(set(names))
        for name, unit, _, labels, _ in fams:
            full = cgprom.full_name(name, unit)
            assert seen.setdefault(full, labels) == labels, full
    assert "container_memory_kerneltcp_usage_bytes" in seen
    assert "container_memory_hierarchical_memsw_limit_bytes" in seen
    assert "container_blkio_sectors_recursive_total" in seen


async def test_install_refreshes_per_scrape() -> None:
    m = Metrics()
    calls = []

    async def source() -> list[cgprom.Sample]:
        calls.append(1)
        return [("default", f"c{len(calls)}", sample_v2())]

    c = cgprom.install(m, source)
    server = MetricsServer(m, "127.0.0.1:0")
    await server.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as s:
            for n in (1, 2):
                async with s.get(f"http://127.0.0.1:{server.port}/v1/metrics") as r:
                    body = await r.text()
                assert f'container_pids_current{{container_id="c{n}",namespace="default"}} 1.0' in body
                assert f'container_id="c{n - 1}"' not in body
        c.close()
        await m.refresh()
        assert len(calls) == 2
        assert "container_pids_current" not in m.render().decode()
    finally:
        await server.close()


async def test_failing_source() -> None:
    m = Metrics()

    async def broken() -> list[cgprom.Sample]:
        raise RuntimeError("shim gone")

    async def slow() -> list[cgprom.Sample]:
        import asyncio
        await asyncio.sleep(10)
        return []

    c = cgprom.install(m, broken)
    c.update([("default", "old", sample_v2())])
    await m.refresh()  # logged, not raised; stale samples dropped
    assert c.samples == []
    c.close()
    c2 = cgprom.install(m, slow, timeout=0.05)
    c2.update([("default", "old", sample_v2())])
    await m.refresh()
    assert c2.samples == []
    c2.close()
