"""CRI state across a daemon killed with SIGKILL (issue 6, section 8), through the generated CRI
client against our daemon (a real process), images from ``tests.support.cri.CRIImages`` (the
minimal pause + busybox set in CI), a private CNI bridge (``write_cni_conflist``).

- two pods, with containers running, one already exited (code 3) and one that exits (code 7)
  while the daemon is down; SIGKILL; start again on the same root/state/config:
  every pod READY with the same IP, every container in its state with the same pid, the exit
  codes (3, and 7 for the exit nobody watched) and finish times reported; the running
  container's log keeps growing (written on the shim side); ExecSync, stop and a fresh
  container work after the restart;
- a pod whose pause process died while the daemon was down is NOTREADY after the restart;
- then everything stopped and removed: no shim, netns, mount, bundle or IP lease left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.client import Channel

from aiocontainerd.api.runtime import v1 as api
from tests.conftest import DaemonProcess
from tests.support.cri import BUSYBOX_IMAGE, CRISetup, cri_daemon
from tests.support.runtime import cwd, mounts_under, shims_of

pytestmark = pytest.mark.integration

CRI_ROOT = "io.containerd.grpc.v1.cri"
TASKS = "io.containerd.runtime.v2.task"
RUNNING = api.ContainerState.CONTAINER_RUNNING
EXITED = api.ContainerState.CONTAINER_EXITED
READY = api.PodSandboxState.SANDBOX_READY
NOTREADY = api.PodSandboxState.SANDBOX_NOTREADY


@dataclass
class Rig:
    base: Path
    setup: CRISetup
    daemon: DaemonProcess
    channel: Channel
    rt: api.RuntimeServiceStub
    img: api.ImageServiceStub

    def connect(self) -> None:
        self.channel = Channel(path=self.daemon.address)
        self.rt = api.RuntimeServiceStub(self.channel)
        self.img = api.ImageServiceStub(self.channel)

    async def kill_and_start(self, while_down: float = 0.0,
                             wait_for: list[int] | None = None) -> None:
        """SIGKILL the daemon; wait until the pids of ``wait_for`` are gone (or ``while_down``
        seconds); start it again on the same folders and config."""
        self.channel.close()
        assert self.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        deadline = time.monotonic() + 30
        for pid in wait_for or ():
            while alive(pid):
                assert time.monotonic() < deadline, f"pid {pid} still alive"
                await asyncio.sleep(0.05)
        await asyncio.sleep(while_down)
        await asyncio.to_thread(self.daemon.start, 60)
        self.connect()

    async def run_pod(self, name: str) -> tuple[str, api.PodSandboxConfig]:
        cfg = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="restart", uid=f"uid-{name}"),
            hostname=name, log_directory=str(self.base / "logs" / name), labels={"pod": name},
            linux=api.LinuxPodSandboxConfig())
        resp = await self.rt.run_pod_sandbox(api.RunPodSandboxRequest(config=cfg), timeout=120)
        return resp.pod_sandbox_id, cfg

    async def run(self, pod: str, pod_cfg: api.PodSandboxConfig, name: str, script: str) -> str:
        cfg = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=BUSYBOX_IMAGE),
            command=["sh", "-c", script], log_path=f"{name}.log", labels={"c": name},
            linux=api.LinuxContainerConfig())
        cid = (await self.rt.create_container(api.CreateContainerRequest(
            pod_sandbox_id=pod, config=cfg, sandbox_config=pod_cfg), timeout=60)).container_id
        await self.rt.start_container(api.StartContainerRequest(container_id=cid), timeout=60)
        return cid

    async def status(self, cid: str) -> tuple[api.ContainerStatus, dict]:
        r = await self.rt.container_status(api.ContainerStatusRequest(container_id=cid, verbose=True))
        return r.status, json.loads(r.info.get("info", "{}"))

    async def pod(self, pod: str) -> tuple[api.PodSandboxStatus, dict]:
        r = await self.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod, verbose=True))
        return r.status, json.loads(r.info.get("info", "{}"))

    async def wait_state(self, cid: str, state: api.ContainerState, limit: float = 20) -> api.ContainerStatus:
        deadline = time.monotonic() + limit
        while True:
            st, _ = await self.status(cid)
            if st.state == state:
                return st
            assert time.monotonic() < deadline, f"{cid} is {st.state}, not {state}"
            await asyncio.sleep(0.1)

    def bundle(self, id_: str) -> Path:
        return self.daemon.state / TASKS / "k8s.io" / id_


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@pytest.fixture
async def rig(tmp_short: Path) -> AsyncIterator[Rig]:
    async with cri_daemon(tmp_short) as (setup, daemon):
        r = Rig(tmp_short, setup, daemon, None, None, None)  # type: ignore[arg-type]
        r.connect()
        try:
            await r.img.pull_image(api.PullImageRequest(image=api.ImageSpec(image=BUSYBOX_IMAGE)),
                                   timeout=120)
            yield r
        finally:
            try:
                if r.daemon.proc is None:
                    await asyncio.to_thread(r.daemon.start, 60)
                    r.connect()
                for p in (await r.rt.list_pod_sandbox(api.ListPodSandboxRequest())).items:
                    await r.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=60)
                    await r.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=p.id),
                                                  timeout=60)
            finally:
                r.channel.close()


async def _grows(path: Path, limit: float = 10) -> None:
    size = path.stat().st_size
    deadline = time.monotonic() + limit
    while path.stat().st_size <= size:
        assert time.monotonic() < deadline, f"{path} does not grow"
        await asyncio.sleep(0.1)


async def test_restart_recovers_pods_containers_and_exit_codes(rig: Rig) -> None:
    pod_a, cfg_a = await rig.run_pod("alpha")
    pod_b, cfg_b = await rig.run_pod("beta")
    ticker = await rig.run(pod_a, cfg_a, "ticker",
                           "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done")
    done = await rig.run(pod_a, cfg_a, "done", "echo finished; exit 3")
    # sleeps until told to exit (a file in its own rootfs), so the exit surely falls in the downtime
    later = await rig.run(pod_b, cfg_b, "later",
                          "while [ ! -e /tmp/go ]; do sleep 0.1; done; echo bye; exit 7")
    sleeper = await rig.run(pod_b, cfg_b, "sleeper", "exec sleep 3600")
    st_done = await rig.wait_state(done, EXITED)
    assert st_done.exit_code == 3 and st_done.reason == "Error"

    before_pods = {p: await rig.pod(p) for p in (pod_a, pod_b)}
    before = {c: await rig.status(c) for c in (ticker, done, later, sleeper)}
    for st, info in before_pods.values():
        assert st.state == READY and st.network.ip and info["pid"] > 0
    pids = {c: info["pid"] for c, (_, info) in before.items()}
    assert all(pids[c] > 0 for c in (ticker, later, sleeper))
    shims = pod_shims(rig.base)
    assert shims

    # the daemon goes away; "later" is told to exit while it is down
    rig.channel.close()
    assert rig.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert shims <= pod_shims(rig.base), "a shim died with the daemon"
    rootfs = Path(f"/proc/{pids[later]}/root")
    (rootfs / "tmp" / "go").write_text("")
    deadline = time.monotonic() + 20
    while alive(pids[later]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.to_thread(rig.daemon.start, 60)
    rig.connect()

    # pods: same state, IP and pause pid
    for p, (st0, info0) in before_pods.items():
        st, info = await rig.pod(p)
        assert st.state == READY and st.network.ip == st0.network.ip
        assert info["pid"] == info0["pid"] and info["processStatus"] == "running"
        assert st.metadata == st0.metadata and st.created_at == st0.created_at
    listed = {p.id: p.state for p in (await rig.rt.list_pod_sandbox(api.ListPodSandboxRequest())).items}
    assert listed == {pod_a: READY, pod_b: READY}

    # containers: states, pids, exit codes
    for c in (ticker, sleeper):
        st, info = await rig.status(c)
        assert st.state == RUNNING and info["pid"] == pids[c] and st.started_at == before[c][0].started_at
    st, _ = await rig.status(done)
    assert (st.state, st.exit_code, st.finished_at) == (EXITED, 3, st_done.finished_at)
    st = await rig.wait_state(later, EXITED, 10)    # noticed at start, not when someone asks later
    assert st.exit_code == 7 and st.reason == "Error"
    assert st.finished_at >= before[later][0].started_at and st.finished_at <= time.time_ns()
    assert b"bye" in Path(st.log_path).read_bytes()
    listed_c = {c.id: c.state for c in (await rig.rt.list_containers(api.ListContainersRequest())).containers}
    assert listed_c == {ticker: RUNNING, sleeper: RUNNING, done: EXITED, later: EXITED}

    # the running container's log is still written; exec, stop and a new container work
    ticker_st, _ = await rig.status(ticker)
    await _grows(Path(ticker_st.log_path))
    r = await rig.rt.exec_sync(api.ExecSyncRequest(container_id=sleeper, cmd=["echo", "after"], timeout=10))
    assert (r.exit_code, r.stdout) == (0, b"after\n")
    await rig.rt.stop_container(api.StopContainerRequest(container_id=sleeper, timeout=2), timeout=30)
    st, _ = await rig.status(sleeper)
    assert st.state == EXITED and st.exit_code == 143      # sleep dies of SIGTERM
    fresh = await rig.run(pod_a, cfg_a, "fresh", "echo hello-again; exit 5")
    st = await rig.wait_state(fresh, EXITED)
    assert st.exit_code == 5

    # a second restart with nothing changed: the same picture
    await rig.kill_and_start()
    listed_c = {c.id: c.state for c in (await rig.rt.list_containers(api.ListContainersRequest())).containers}
    assert listed_c == {ticker: RUNNING, sleeper: EXITED, done: EXITED, later: EXITED, fresh: EXITED}
    assert (await rig.status(ticker))[1]["pid"] == pids[ticker]

    # everything stopped and removed: nothing left behind
    netns_paths = [info["sandboxMetadata"]["NetNSPath"] for _, info in before_pods.values()]
    assert all(os.path.exists(n) for n in netns_paths)
    for p in (pod_a, pod_b):
        await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=p), timeout=60)
        await rig.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=p), timeout=60)
    assert (await rig.rt.list_containers(api.ListContainersRequest())).containers == []
    assert (await rig.rt.list_pod_sandbox(api.ListPodSandboxRequest())).items == []
    await _assert_nothing_left(rig, [pod_a, pod_b], netns_paths)


async def test_pause_dead_while_down_is_notready(rig: Rig) -> None:
    pod, cfg = await rig.run_pod("gamma")
    cid = await rig.run(pod, cfg, "sleeper", "exec sleep 3600")
    st0, info0 = await rig.pod(pod)
    assert st0.state == READY
    nspath = info0["sandboxMetadata"]["NetNSPath"]
    _, cinfo = await rig.status(cid)

    rig.channel.close()
    assert rig.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    os.kill(info0["pid"], signal.SIGKILL)        # the pause process: the pod is gone
    os.kill(cinfo["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while alive(info0["pid"]) or alive(cinfo["pid"]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.to_thread(rig.daemon.start, 60)
    rig.connect()

    deadline = time.monotonic() + 20
    while (st := (await rig.pod(pod))[0]).state != NOTREADY:
        assert time.monotonic() < deadline, st.state
        await asyncio.sleep(0.1)
    c = await rig.wait_state(cid, EXITED)
    assert c.exit_code == 137
    await rig.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    await rig.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    await _assert_nothing_left(rig, [pod], [nspath])


def pod_shims(base: Path) -> set[int]:
    """Shims running in a bundle under ``base`` (our idle fork server, cwd ``/``, is not one:
    it exits on its own a minute after its last request)."""
    return {p for p in shims_of(base) if cwd(p).startswith(str(base) + "/")}


async def _assert_nothing_left(rig: Rig, pods: list[str], netns_paths: list[str]) -> None:
    deadline = time.monotonic() + 10
    while pod_shims(rig.base):
        assert time.monotonic() < deadline, f"shims left: {pod_shims(rig.base)}"
        await asyncio.sleep(0.1)
    assert not any(os.path.exists(n) for n in netns_paths), netns_paths
    assert not mounts_under(rig.daemon.state) and not mounts_under(rig.daemon.root)
    assert rig.setup.cni.leases() == []
    for p in pods:
        assert not rig.bundle(p).exists()
        assert not (rig.daemon.root / CRI_ROOT / "sandboxes" / p).exists()
        assert not (rig.daemon.state / CRI_ROOT / "sandboxes" / p).exists()
