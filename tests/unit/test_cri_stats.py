"""CRI stats (cri/stats.py) and metrics (cri/metrics.py) from fake cgroup v1/v2 trees and
fake interface counters; one root test reads a real cgroup and a real netns (veth pair)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from pathlib import Path

import pytest

from aiocontainerd import cgroups
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri import metrics as crimetrics
from aiocontainerd.cri import stats
from aiocontainerd.cri.stats import InterfaceStats, UsageTracker, WritableLayer

GiB = 1 << 30
MAX = (1 << 64) - 1


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def fake_v2(tmp_path: Path, *, usage_usec: int = 2_500_000, mem_max: str = "max") -> cgroups.v2.Metrics:
    write_tree(tmp_path, {
        "cpu.stat": f"usage_usec {usage_usec}\nuser_usec 2000000\nsystem_usec 500000\n"
                    "nr_periods 10\nnr_throttled 3\nthrottled_usec 4000000\n",
        "cpu.pressure": "some avg10=1.50 avg60=0.00 avg300=0.00 total=12\n"
                        "full avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
        "memory.stat": "anon 1000\nfile 5000\nkernel_stack 64\nfile_mapped 300\ninactive_file 4000\n"
                       "active_file 1000\npgfault 77\npgmajfault 7\n",
        "memory.current": "6000\n", "memory.max": mem_max + "\n", "memory.peak": "9000\n",
        "memory.swap.current": "100\n", "memory.swap.max": "1000\n",
        "memory.events": "low 0\nhigh 0\nmax 0\noom 1\noom_kill 2\n",
        "pids.current": "3\n", "pids.max": "max\n",
        "io.stat": "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n",
        "io.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=3\n",
    })
    return cgroups.read_v2(str(tmp_path))


def fake_v1(tmp_path: Path) -> cgroups.v1.Metrics:
    write_tree(tmp_path, {
        "cpuacct/cpuacct.usage": "3000000000\n",
        "cpuacct/cpuacct.stat": "user 100\nsystem 50\n",
        "cpu/cpu.stat": "nr_periods 4\nnr_throttled 1\nthrottled_time 2000000000\n",
        "memory/memory.stat": "cache 5000\nrss 1000\nmapped_file 300\npgfault 9\npgmajfault 1\n"
                              "inactive_file 3000\ntotal_cache 5000\ntotal_rss 1000\ntotal_mapped_file 300\n"
                              "total_inactive_file 4000\ntotal_active_file 1000\n"
                              "total_pgfault 77\ntotal_pgmajfault 7\n",
        "memory/memory.usage_in_bytes": "6000\n", "memory/memory.limit_in_bytes": f"{GiB}\n",
        "memory/memory.max_usage_in_bytes": "9000\n", "memory/memory.failcnt": "4\n",
        "memory/memory.memsw.usage_in_bytes": "6100\n", "memory/memory.memsw.limit_in_bytes": f"{2 * GiB}\n",
        "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        "pids/pids.current": "3\n", "pids/pids.max": "100\n",
    })
    part = tmp_path / "partitions"
    part.write_text("major minor  #blocks  name\n\n   8        0   1000 sda\n")
    write_tree(tmp_path, {"blkio/blkio.throttle.io_service_bytes_recursive": "8:0 Read 100\n8:0 Write 200\n",
                          "blkio/blkio.throttle.io_serviced_recursive": "8:0 Read 1\n8:0 Write 2\n"})
    dirs = {c: str(tmp_path / c) for c in ("cpu", "cpuacct", "memory", "pids", "blkio")}
    return cgroups.read_v1(dirs, partitions=str(part))


CONFIG = api.ContainerConfig(metadata=api.ContainerMetadata(name="app", attempt=1),
                             labels={"l": "1"}, annotations={"a": "2"})
POD = api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="pod", namespace="ns", uid="u"),
                           labels={"pl": "x"})


def test_container_stats_v2(tmp_path: Path) -> None:
    m = fake_v2(tmp_path)
    layer = WritableLayer(used_bytes=4096, inodes_used=3, timestamp=5, mountpoint="/var/lib/x")
    tracker = UsageTracker()
    cs = stats.container_stats(id="c1", config=CONFIG, metrics=m, layer=layer, timestamp=10**18,
                               tracker=tracker)
    assert cs.attributes.id == "c1" and cs.attributes.metadata.name == "app"
    assert cs.attributes.labels == {"l": "1"} and cs.attributes.annotations == {"a": "2"}
    assert cs.cpu.timestamp == 10**18
    assert cs.cpu.usage_core_nano_seconds.value == 2_500_000_000
    assert cs.cpu.usage_nano_cores is None                 # first sample
    assert cs.cpu.psi.some.total == 12_000 and cs.cpu.psi.some.avg_10 == 1.5
    mem = cs.memory
    assert mem.usage_bytes.value == 6000
    assert mem.working_set_bytes.value == 2000            # usage - inactive_file
    assert mem.available_bytes.value == 0                 # no limit
    assert mem.rss_bytes.value == 1000
    assert (mem.page_faults.value, mem.major_page_faults.value) == (77, 7)
    assert (cs.swap.swap_usage_bytes.value, cs.swap.swap_available_bytes.value) == (100, 900)
    assert cs.io.psi.some.total == 3000
    wl = cs.writable_layer
    assert (wl.used_bytes.value, wl.inodes_used.value, wl.timestamp, wl.fs_id.mountpoint) == \
        (4096, 3, 5, "/var/lib/x")
    # second sample 0.5 s later with 0.25 s more CPU: half a core
    m2 = fake_v2(tmp_path, usage_usec=2_750_000)
    cs2 = stats.container_stats(id="c1", config=CONFIG, metrics=m2, timestamp=10**18 + 500_000_000,
                                tracker=tracker)
    assert cs2.cpu.usage_nano_cores.value == 500_000_000
    assert cs2.writable_layer.used_bytes.value == 0
    # survives the wire
    assert api.ContainerStats.parse(bytes(cs)) == cs


def test_memory_limit_v2(tmp_path: Path) -> None:
    m = fake_v2(tmp_path, mem_max=str(10_000))
    assert stats.memory_usage(m, 1).available_bytes.value == 8000


def test_container_stats_v1(tmp_path: Path) -> None:
    m = fake_v1(tmp_path)
    cs = stats.container_stats(id="c1", config=CONFIG, metrics=m, timestamp=1)
    assert cs.cpu.usage_core_nano_seconds.value == 3_000_000_000
    assert cs.memory.usage_bytes.value == 6000
    assert cs.memory.working_set_bytes.value == 2000
    assert cs.memory.available_bytes.value == GiB - 2000
    assert cs.memory.rss_bytes.value == 1000
    assert (cs.memory.page_faults.value, cs.memory.major_page_faults.value) == (77, 7)
    assert cs.swap.swap_usage_bytes.value == 100
    assert cs.swap.swap_available_bytes.value == 2 * GiB - 6100
    assert cs.io is None
    assert stats.pids_current(m) == 3


def test_not_running_and_unpack(tmp_path: Path) -> None:
    cs = stats.container_stats(id="c1", config=CONFIG, metrics=None)
    assert cs.cpu is None and cs.memory is None and cs.writable_layer is not None
    m = fake_v2(tmp_path)
    assert stats.unpack_metrics(pb.Any.pack(m)) == m
    from aiocontainerd import errors
    with pytest.raises(errors.InvalidArgument):
        stats.unpack_metrics(pb.Any(type_url="x/y", value=b""))


def test_usage_tracker() -> None:
    t = UsageTracker()
    assert t.nano_cores("a", 100, 1000) is None
    assert t.nano_cores("a", 200, 1000) is None           # no time passed: ignored
    assert t.nano_cores("a", 50, 2000) is None            # went backwards: ignored
    assert t.nano_cores("a", 1100, 2000) == 10**9         # 1000 ns of CPU in 1000 ns
    t.forget("a")
    assert t.nano_cores("a", 5000, 9000) is None


def test_pod_stats(tmp_path: Path) -> None:
    m = fake_v2(tmp_path)
    c = stats.container_stats(id="c1", config=CONFIG, metrics=m, timestamp=1)
    ifs = [InterfaceStats("net1", rx_bytes=1, tx_bytes=2), InterfaceStats("eth0", rx_bytes=10, rx_errors=1,
                                                                          tx_bytes=20, tx_errors=2)]
    ps = stats.pod_stats(id="p1", config=POD, metrics=m, containers=[c], process_count=3,
                         interfaces=ifs, timestamp=7, tracker=UsageTracker())
    assert ps.attributes.id == "p1" and ps.attributes.metadata.namespace == "ns"
    assert ps.attributes.labels == {"pl": "x"}
    lx = ps.linux
    assert lx.cpu.usage_core_nano_seconds.value == 2_500_000_000
    assert lx.memory.working_set_bytes.value == 2000
    assert lx.process.process_count.value == 3 and lx.process.timestamp == 7
    assert lx.containers == [c]
    assert [i.name for i in lx.network.interfaces] == ["net1", "eth0"]
    d = lx.network.default_interface
    assert (d.name, d.rx_bytes.value, d.rx_errors.value, d.tx_bytes.value, d.tx_errors.value) == \
        ("eth0", 10, 1, 20, 2)
    # no eth0: the first; host network: no network
    ps = stats.pod_stats(id="p1", config=POD, metrics=m, interfaces=ifs[:1])
    assert ps.linux.network.default_interface.name == "net1"
    assert stats.pod_stats(id="p1", config=POD, metrics=None, interfaces=None).linux.network is None


# -- metrics --------------------------------------------------------------------------------------

def test_descriptors() -> None:
    d = crimetrics.metric_descriptors()
    assert len(d) == 49 and len({x.name for x in d}) == 49
    by = {x.name: x for x in d}
    assert by["container_cpu_usage_seconds_total"].label_keys == [
        "pod", "namespace", "container", "id", "image"]
    assert by["container_network_receive_bytes_total"].label_keys[-1] == "interface"
    assert by["container_memory_failures_total"].label_keys[-2:] == ["failure_type", "scope"]


def _values(cm: api.ContainerMetrics | api.PodSandboxMetrics) -> dict[tuple[str, ...], int]:
    return {(m.name, *m.label_values[5:]): m.value.value for m in cm.metrics}


def test_container_metrics_v2(tmp_path: Path) -> None:
    m = fake_v2(tmp_path)
    spec = {"process": {"rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}]},
            "linux": {"resources": {"cpu": {"shares": 2, "period": 100000},
                                    "memory": {"limit": 1 << 20, "swap": -1}}}}
    cm = crimetrics.container_metrics(
        container_id="c1", container_name="app", image="busybox", pod_name="pod", pod_namespace="ns",
        metrics=m, started_at=5 * 10**9, spec=spec, pids=[os.getpid()], rootfs=str(tmp_path),
        layer=WritableLayer(used_bytes=4096, inodes_used=3), timestamp=10**10)
    assert cm.container_id == "c1"
    labels = {tuple(x.label_values[:5]) for x in cm.metrics}
    assert labels == {("pod", "ns", "app", "c1", "busybox")}
    v = _values(cm)
    names = {x.name for x in crimetrics.metric_descriptors()}
    assert {k[0] for k in v} <= names
    assert v[("container_last_seen",)] == 10
    assert v[("container_start_time_seconds",)] == 5
    assert v[("container_cpu_usage_seconds_total",)] == 2
    assert v[("container_cpu_cfs_throttled_seconds_total",)] == 4
    assert v[("container_memory_working_set_bytes",)] == 2000
    assert v[("container_memory_max_usage_bytes",)] == MAX     # containerd reports the limit here
    assert v[("container_memory_failures_total", "pgmajfault", "container")] == 7
    assert v[("container_oom_events_total",)] == 2
    assert v[("container_fs_reads_bytes_total", "8:0")] == 100
    assert v[("container_fs_writes_total", "8:0")] == 2
    assert v[("container_fs_usage_bytes", "/")] == 4096 and v[("container_fs_inodes_total", "/")] == 3
    assert v[("container_processes",)] == 3 and v[("container_threads",)] == 3
    assert v[("container_ulimits_soft", "RLIMIT_NOFILE")] == 512
    assert v[("container_file_descriptors",)] > 0
    assert v[("container_spec_cpu_shares",)] == 2 and v[("container_spec_memory_limit_bytes",)] == 1 << 20
    assert v[("container_spec_memory_swap_limit_bytes",)] == MAX
    types = {x.name: x.metric_type for x in cm.metrics}
    assert types["container_cpu_usage_seconds_total"] == api.MetricType.COUNTER
    assert types["container_memory_usage_bytes"] == api.MetricType.GAUGE
    assert api.ContainerMetrics.parse(bytes(cm)) == cm


def test_container_metrics_v1(tmp_path: Path) -> None:
    cm = crimetrics.container_metrics(container_id="c1", container_name="app", image="img",
                                      pod_name="pod", pod_namespace="ns", metrics=fake_v1(tmp_path))
    v = _values(cm)
    assert v[("container_cpu_usage_seconds_total",)] == 3
    assert v[("container_cpu_cfs_throttled_periods_total",)] == 1
    assert v[("container_memory_cache",)] == 5000
    assert v[("container_memory_failcnt",)] == 4
    assert v[("container_memory_swap",)] == 6100           # memsw usage, as containerd
    assert v[("container_memory_failures_total", "pgfault", "container")] == 9
    assert v[("container_blkio_device_usage_total", "/dev/sda", "8", "0", "Read")] == 100
    assert v[("container_fs_reads_total", "/dev/sda")] == 1
    assert v[("container_fs_writes_bytes_total", "/dev/sda")] == 200
    assert v[("container_threads_max",)] == 100
    assert ("container_threads",) not in v


def test_pod_sandbox_metrics() -> None:
    ifs = [InterfaceStats("eth0", rx_bytes=10, rx_packets=1, rx_errors=2, rx_dropped=3,
                          tx_bytes=20, tx_packets=4, tx_errors=5, tx_dropped=6)]
    cm = api.ContainerMetrics(container_id="c1")
    pm = crimetrics.pod_sandbox_metrics(sandbox_id="p1", pod_name="pod", pod_namespace="ns",
                                        interfaces=ifs, containers=[cm], timestamp=1)
    assert pm.pod_sandbox_id == "p1" and pm.container_metrics == [cm]
    assert {tuple(m.label_values) for m in pm.metrics} == {("pod", "ns", "", "p1", "", "eth0")}
    v = {m.name: m.value.value for m in pm.metrics}
    assert v == {"container_network_receive_bytes_total": 10, "container_network_receive_packets_total": 1,
                 "container_network_receive_packets_dropped_total": 3,
                 "container_network_receive_errors_total": 2, "container_network_transmit_bytes_total": 20,
                 "container_network_transmit_packets_total": 4,
                 "container_network_transmit_packets_dropped_total": 6,
                 "container_network_transmit_errors_total": 5}
    assert crimetrics.pod_sandbox_metrics(sandbox_id="p1", pod_name="pod", pod_namespace="ns",
                                          interfaces=None).metrics == []


def test_cri_timers_exposition() -> None:
    from prometheus_client.exposition import generate_latest

    from aiocontainerd.metrics import Metrics

    metrics = Metrics()
    m = crimetrics.CRIMetrics(metrics)
    assert crimetrics.CRIMetrics(metrics)._timers is m._timers      # one registration per registry
    with m.timer("container_start", runtime="io.containerd.runc.v2"):
        pass
    with pytest.raises(RuntimeError), m.timer("container_stop", runtime="r"):
        raise RuntimeError("failed stops are not timed")
    m.observe("sandbox_list", 0.01)
    with m.network_op(crimetrics.NETWORK_SETUP):
        pass
    with pytest.raises(OSError), m.network_op(crimetrics.NETWORK_TEARDOWN):
        raise OSError("cni failed")
    m.events_dropped()
    text = generate_latest(metrics.registry).decode()
    for line in (
        'containerd_cri_container_start_seconds_count{runtime="io.containerd.runc.v2"} 1.0',
        "containerd_cri_sandbox_list_seconds_count 1.0",
        'containerd_cri_network_plugin_operations_total_total{operation_type="set_up_pod"} 1.0',
        'containerd_cri_network_plugin_operations_total_total{operation_type="tear_down_pod"} 1.0',
        'containerd_cri_network_plugin_operations_errors_total_total{operation_type="tear_down_pod"} 1.0',
        "containerd_cri_network_plugin_operations_duration_seconds_seconds_count"
        '{operation_type="set_up_pod"} 1.0',
        "containerd_cri_container_events_dropped_total 1.0",
    ):
        assert line in text, line
    assert 'containerd_cri_container_stop_seconds_count{runtime="r"}' not in text
    assert "# TYPE containerd_cri_sandbox_create_network_seconds histogram" in text
    # no metrics: a silent recorder
    off = crimetrics.CRIMetrics(None)
    with off.timer("container_start", runtime="x"), off.network_op("set_up_pod"):
        off.events_dropped()


# -- real cgroup and netns (root) ------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
async def test_real_cgroup_and_netns(tmp_path: Path) -> None:
    from aiocontainerd.cri import netns

    m = await stats.read_metrics(pid=os.getpid())
    cs = stats.container_stats(id="self", config=CONFIG, metrics=m, tracker=UsageTracker())
    assert cs.cpu.usage_core_nano_seconds.value > 0
    assert cs.memory.usage_bytes.value > 0 and cs.memory.working_set_bytes.value > 0
    assert stats.pids_current(m) >= 1 or m.pids is None

    base = tmp_path / "netns"
    path = await netns.create(str(base))
    peer = f"crist{os.getpid() % 100000}"
    try:
        # a veth pair: eth0 inside the pod netns, the peer on the host side
        subprocess.run(["ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0",
                        "netns", path], check=True)
        subprocess.run(["ip", "addr", "add", "10.251.77.1/30", "dev", peer], check=True)
        subprocess.run(["ip", "link", "set", peer, "up"], check=True)
        subprocess.run(["nsenter", f"--net={path}", "ip", "addr", "add", "10.251.77.2/30", "dev", "eth0"],
                       check=True)
        subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "eth0", "up"], check=True)
        before = {i.name: i for i in await stats.netns_interfaces(path)}
        assert set(before) == {"eth0"}
        # host -> pod: ARP request (rx) and reply (tx), UDP datagrams (rx), ICMP unreachable (tx)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(20):
                with contextlib.suppress(OSError):
                    sock.sendto(b"x" * 100, ("10.251.77.2", 9))
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        after = await stats.netns_interfaces(path)
        eth0 = after[0]
        assert eth0.rx_bytes > before["eth0"].rx_bytes and eth0.tx_bytes > before["eth0"].tx_bytes
        assert eth0.rx_packets >= before["eth0"].rx_packets + 10
        ps = stats.pod_stats(id="p", config=POD, metrics=m, interfaces=after)
        assert ps.linux.network.default_interface.rx_bytes.value == eth0.rx_bytes
        pm = crimetrics.pod_sandbox_metrics(sandbox_id="p", pod_name="pod", pod_namespace="ns",
                                            interfaces=after)
        assert {x.name: x.value.value for x in pm.metrics}["container_network_transmit_bytes_total"] == \
            eth0.tx_bytes
    finally:
        subprocess.run(["ip", "link", "del", peer], capture_output=True)
        await netns.remove(path)
