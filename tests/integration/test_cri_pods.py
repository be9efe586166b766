"""CRI pod sandboxes against our daemon (a real process): the generated CRI client, a loopback
registry holding the pause image (mirrored for ``registry.k8s.io``), a private CNI bridge.

- RunPodSandbox → READY with an IP of the private subnet; the netns exists and has eth0;
  verbose status; ListPodSandbox filters; the same metadata again → AlreadyExists;
- StopPodSandbox → NOTREADY, the host-local lease released, the netns gone;
  RemovePodSandbox → no record, folder, shm mount, bundle or lease left;
  stop/remove of an unknown ID succeed;
- a hostNetwork pod (no netns, no IP);
- the daemon killed with SIGKILL and started again: the pod is READY with its IP, and its
  exit is still noticed after the restart;
- crictl runp/pods/inspectp/stopp/rmp (skipped when /work/tools has no crictl).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpclib.const
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri import netns
from tests.conftest import DaemonProcess
from tests.support.cri import CRISetup, cri_daemon, crictl, crictl_argv
from tests.support.runtime import mounts_under

pytestmark = pytest.mark.integration

CRI_ROOT = "io.containerd.grpc.v1.cri"
TASKS = "io.containerd.runtime.v2.task"


@dataclass
class Rig:
    setup: CRISetup
    daemon: DaemonProcess
    channel: Channel
    rt: api.RuntimeServiceStub

    async def restart(self, sig: int = signal.SIGKILL) -> None:
        self.channel.close()
        self.daemon.stop(sig)
        await asyncio.to_thread(self.daemon.start)
        self.channel = Channel(path=self.daemon.address)
        self.rt = api.RuntimeServiceStub(self.channel)

    def sandbox_dirs(self, id_: str) -> list[Path]:
        return [base / CRI_ROOT / "sandboxes" / id_ for base in (self.daemon.root, self.daemon.state)]

    def bundle(self, id_: str) -> Path:
        return self.daemon.state / TASKS / "k8s.io" / id_


@pytest.fixture
async def rig(tmp_short: Path) -> AsyncIterator[Rig]:
    async with cri_daemon(tmp_short) as (setup, daemon):
        channel = Channel(path=daemon.address)
        r = Rig(setup, daemon, channel, api.RuntimeServiceStub(channel))
        try:
            yield r
        finally:
            try:
                for p in (await r.rt.list_pod_sandbox(api.ListPodSandboxRequest())).items:
                    await r.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=p.id))
                    await r.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=p.id))
            finally:
                r.channel.close()


def pod_config(tmp: Path, name: str = "web", *, host_network: bool = False, uid: str = "uid-1",
               dns: bool = True) -> api.PodSandboxConfig:
    linux = api.LinuxPodSandboxConfig()
    if host_network:
        linux = api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
            namespace_options=api.NamespaceOption(network=api.NamespaceMode.NODE)))
    return api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=name, namespace="default", uid=uid, attempt=0),
        hostname="" if host_network else name, log_directory=str(tmp / "logs" / name),
        labels={"app": name, "tier": "test"},
        annotations={"note": "x"}, linux=linux,
        dns_config=api.DnsConfig(servers=["10.96.0.10"], searches=["default.svc.cluster.local"],
                                 options=["ndots:5"]) if dns else None)


async def run_pod(rig: Rig, config: api.PodSandboxConfig) -> str:
    resp = await rig.rt.run_pod_sandbox(api.RunPodSandboxRequest(config=config), timeout=120)
    return resp.pod_sandbox_id


def eth0_in(path: str) -> list[str]:
    def names() -> list[str]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]

    return netns.run_in_sync(path, names)


async def test_pod_lifecycle(rig: Rig, tmp_short: Path) -> None:
    cfg = pod_config(tmp_short)
    pod_id = await run_pod(rig, cfg)
    status = await rig.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    s = status.status
    assert s.state == api.PodSandboxState.SANDBOX_READY
    assert ipaddress.ip_address(s.network.ip) in ipaddress.ip_network(rig.setup.cni.subnet)
    assert s.metadata.name == "web" and s.labels == {"app": "web", "tier": "test"}
    info = json.loads(status.info["info"])
    assert info["pid"] > 0 and info["processStatus"] == "running" and not info["netNamespaceClosed"]
    assert info["runtimeType"] == "io.containerd.runc.v2" and info["config"]["metadata"]["name"] == "web"
    assert info["runtimeSpec"]["annotations"]["io.kubernetes.cri.sandbox-id"] == pod_id
    assert info["cniResult"]["Interfaces"]["eth0"]["IPConfigs"][0]["IP"] == s.network.ip
    nspath = info["sandboxMetadata"]["NetNSPath"]
    assert netns.exists(nspath) and "eth0" in eth0_in(nspath)
    assert rig.setup.cni.leases() == [s.network.ip]
    root = rig.sandbox_dirs(pod_id)[0]
    assert (root / "resolv.conf").read_text() == ("search default.svc.cluster.local\nnameserver 10.96.0.10\n"
                                                  "options ndots:5\n")
    assert (root / "hostname").read_text() == "web\n"
    assert f"{s.network.ip}\tweb" in (root / "hosts").read_text()
    assert mounts_under(rig.sandbox_dirs(pod_id)[1])      # the /dev/shm tmpfs

    # list with filters
    async def listed(f: api.PodSandboxFilter | None = None) -> list[str]:
        return [p.id for p in (await rig.rt.list_pod_sandbox(api.ListPodSandboxRequest(filter=f))).items]

    assert await listed() == [pod_id]
    assert await listed(api.PodSandboxFilter(id=pod_id[:12])) == [pod_id]
    assert await listed(api.PodSandboxFilter(label_selector={"app": "web"})) == [pod_id]
    assert await listed(api.PodSandboxFilter(label_selector={"app": "db"})) == []
    ready = api.PodSandboxStateValue(state=api.PodSandboxState.SANDBOX_READY)
    assert await listed(api.PodSandboxFilter(state=ready)) == [pod_id]

    # the same metadata again
    with pytest.raises(GRPCError) as e:
        await run_pod(rig, cfg)
    assert e.value.status == grpclib.const.Status.ALREADY_EXISTS
    assert await listed() == [pod_id]

    # stop: NOTREADY, lease and netns released
    await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))   # idempotent
    s = (await rig.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status
    assert s.state == api.PodSandboxState.SANDBOX_NOTREADY and s.network.ip == ""
    assert rig.setup.cni.leases() == []
    assert not os.path.exists(nspath)
    assert not mounts_under(rig.sandbox_dirs(pod_id)[1])
    assert not rig.bundle(pod_id).exists()

    # remove: nothing left
    await rig.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert await listed() == []
    assert not any(d.exists() for d in rig.sandbox_dirs(pod_id))
    with pytest.raises(GRPCError) as e:
        await rig.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
    assert e.value.status == grpclib.const.Status.NOT_FOUND
    # unknown IDs: success
    await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await rig.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id="0" * 64))
    # the name is free again
    again = await run_pod(rig, cfg)
    assert again != pod_id


async def test_runtime_rpcs(rig: Rig) -> None:
    v = await rig.rt.version(api.VersionRequest())
    assert v.runtime_api_version == "v1" and v.runtime_name == "aiocontainerd"
    st = await rig.rt.status(api.StatusRequest(verbose=True))
    conds = {c.type: c.status for c in st.status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}
    assert [h.name for h in st.runtime_handlers] == ["", "runc"]
    assert st.info["lastCNILoadStatus"] == "OK"
    rc = await rig.rt.runtime_config(api.RuntimeConfigRequest())
    assert rc.linux.cgroup_driver == api.CgroupDriver.CGROUPFS


async def test_host_network_pod(rig: Rig, tmp_short: Path) -> None:
    pod_id = await run_pod(rig, pod_config(tmp_short, "hostnet", host_network=True, uid="uid-h", dns=False))
    status = await rig.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    assert status.status.state == api.PodSandboxState.SANDBOX_READY
    assert status.status.network.ip == ""
    info = json.loads(status.info["info"])
    assert info["sandboxMetadata"]["NetNSPath"] == "" and info["cniResult"] is None
    assert rig.setup.cni.leases() == []
    root = rig.sandbox_dirs(pod_id)[0]
    assert (root / "resolv.conf").read_bytes() == Path("/etc/resolv.conf").read_bytes()
    assert (root / "hostname").read_text() == socket.gethostname() + "\n"   # kubelet sends none
    await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await rig.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


async def test_restart_keeps_pod(rig: Rig, tmp_short: Path) -> None:
    pod_id = await run_pod(rig, pod_config(tmp_short, "survivor", uid="uid-r"))
    before = (await rig.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id,
                                                                          verbose=True)))
    pid = json.loads(before.info["info"])["pid"]
    await rig.restart(signal.SIGKILL)
    after = await rig.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    assert after.status.state == api.PodSandboxState.SANDBOX_READY
    assert after.status.network.ip == before.status.network.ip
    assert json.loads(after.info["info"])["pid"] == pid
    # the name is still reserved after the restart
    with pytest.raises(GRPCError) as e:
        await run_pod(rig, pod_config(tmp_short, "survivor", uid="uid-r"))
    assert e.value.status == grpclib.const.Status.ALREADY_EXISTS
    # the pause process dies: noticed by the restarted daemon
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        s = (await rig.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod_id))).status
        if s.state == api.PodSandboxState.SANDBOX_NOTREADY:
            break
        await asyncio.sleep(0.1)
    assert s.state == api.PodSandboxState.SANDBOX_NOTREADY
    await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await rig.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    assert rig.setup.cni.leases() == []
    assert not any(d.exists() for d in rig.sandbox_dirs(pod_id))


async def test_crictl_pods(rig: Rig, tmp_short: Path) -> None:
    if crictl() is None:
        pytest.skip("crictl is not built here (/work/tools/build-cri-tools.sh)")
    spec = tmp_short / "pod.json"
    spec.write_text(json.dumps({"metadata": {"name": "cpod", "namespace": "default", "uid": "uid-c",
                                             "attempt": 0},
                                "log_directory": str(tmp_short / "logs" / "cpod"), "linux": {}}))

    def run(*args: str) -> str:
        r = subprocess.run(crictl_argv(rig.daemon.address, *args, timeout="120s"), capture_output=True,
                           text=True, timeout=180)
        assert r.returncode == 0, f"crictl {args}: {r.stdout}{r.stderr}"
        return r.stdout

    pod_id = (await asyncio.to_thread(run, "runp", str(spec))).strip()
    assert pod_id in await asyncio.to_thread(run, "pods", "-q")
    inspected = json.loads(await asyncio.to_thread(run, "inspectp", pod_id))
    assert inspected["status"]["state"] == "SANDBOX_READY" and inspected["status"]["network"]["ip"]
    assert inspected["info"]["runtimeType"] == "io.containerd.runc.v2"
    await asyncio.to_thread(run, "stopp", pod_id)
    await asyncio.to_thread(run, "rmp", pod_id)
    assert pod_id not in await asyncio.to_thread(run, "pods", "-q")


async def test_pod_stats_and_events(rig: Rig, tmp_short: Path) -> None:
    events: list[api.ContainerEventResponse] = []

    async def collect() -> None:
        async for e in rig.rt.get_container_events(api.GetEventsRequest()):
            events.append(e)

    watcher = asyncio.create_task(collect())
    await asyncio.sleep(0.3)
    pod_id = await run_pod(rig, pod_config(tmp_short, "stats", uid="uid-s"))
    stats = (await rig.rt.pod_sandbox_stats(api.PodSandboxStatsRequest(pod_sandbox_id=pod_id))).stats
    assert stats.attributes.id == pod_id
    assert stats.linux.network.default_interface.name == "eth0"
    listed = await rig.rt.list_pod_sandbox_stats(api.ListPodSandboxStatsRequest())
    assert [s.attributes.id for s in listed.stats] == [pod_id]
    await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await rig.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
    await asyncio.sleep(0.3)
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, GRPCError):
        await watcher
    kinds = [e.container_event_type for e in events if e.container_id == pod_id]
    T = api.ContainerEventType
    assert kinds == [T.CONTAINER_CREATED_EVENT, T.CONTAINER_STARTED_EVENT, T.CONTAINER_STOPPED_EVENT,
                     T.CONTAINER_DELETED_EVENT]
    assert events[0].pod_sandbox_status.id == pod_id
