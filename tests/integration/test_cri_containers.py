"""CRI containers end to end: an in-process daemon with the CRI plugin, driven over its socket by the
generated CRI client (and by crictl when it is built), real runc through our shim, a private CNI
bridge and the loopback test images of ``tests/support/cri.py``.

Covers CreateContainer/Start/Stop/Remove, name reservation, the CRI log format, ExecSync (output,
exit code, timeout with a background child holding the pipes), two containers sharing the pod's
network namespace, Exec/Attach/PortForward through the streaming server's SPDY URLs, stop timeout
then SIGKILL, idempotent Stop/Remove, ContainerStatus exit codes and reasons.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpclib.const
import pytest
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from aiocontainerd import Daemon
from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri.config import CNIConfig, CRIConfig, RegistryConfig
from aiocontainerd.cri.plugin import URI
from aiocontainerd.cri.streaming.spdy_client import PortForwardClient, exec_url
from tests.conftest import make_config
from tests.support.cri import BUSYBOX_IMAGE, SANDBOX_IMAGE, cri_setup, crictl, crictl_argv, need_cri

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d) "
                      rb"(stdout|stderr) (P|F) (.*)$")


class CRI:
    def __init__(self, daemon: Daemon, channel: Channel, logs: Path) -> None:
        self.daemon = daemon
        self.rt = api.RuntimeServiceStub(channel)
        self.img = api.ImageServiceStub(channel)
        self.logs = logs
        self.pods: list[str] = []

    async def run_pod(self, name: str) -> tuple[str, api.PodSandboxConfig]:
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="test", uid=f"uid-{name}", attempt=0),
            hostname=name, log_directory=str(self.logs / name),
            linux=api.LinuxPodSandboxConfig())
        r = await self.rt.run_pod_sandbox(api.RunPodSandboxRequest(config=config))
        self.pods.append(r.pod_sandbox_id)
        return r.pod_sandbox_id, config

    async def create(self, pod: str, pod_config: api.PodSandboxConfig, name: str, cmd: list[str], *,
                     attempt: int = 0, **kw) -> str:
        config = api.ContainerConfig(
            metadata=api.ContainerMetadata(name=name, attempt=attempt),
            image=api.ImageSpec(image=BUSYBOX_IMAGE),
            command=cmd, log_path=f"{name}/{attempt}.log", **kw)
        r = await self.rt.create_container(api.CreateContainerRequest(
            pod_sandbox_id=pod, config=config, sandbox_config=pod_config))
        return r.container_id

    async def status(self, cid: str) -> api.ContainerStatus:
        return (await self.rt.container_status(api.ContainerStatusRequest(container_id=cid))).status

    async def exec_sync(self, cid: str, *cmd: str, timeout: int = 0) -> api.ExecSyncResponse:
        return await self.rt.exec_sync(api.ExecSyncRequest(container_id=cid, cmd=list(cmd), timeout=timeout))

    async def wait_state(self, cid: str, state: api.ContainerState, limit: float = 20) -> api.ContainerStatus:
        deadline = time.monotonic() + limit
        while True:
            st = await self.status(cid)
            if st.state == state or time.monotonic() > deadline:
                return st
            await asyncio.sleep(0.1)


@pytest.fixture
async def cri(tmp_short: Path) -> AsyncIterator[CRI]:
    need_cri()
    async with cri_setup(tmp_short / "setup") as s:
        config = make_config(tmp_short)
        config.plugins[URI] = CRIConfig(
            sandbox_image=SANDBOX_IMAGE, restrict_oom_score_adj=True,
            cni=CNIConfig(bin_dirs=[s.cni.bin_dir], conf_dir=str(s.cni.conf_dir)),
            registry=RegistryConfig(config_path=str(s.hosts_dir)))
        async with Daemon(config) as daemon:
            plugin = daemon.plugins.get(URI)
            assert plugin.ok, plugin.error
            # need_cri() skipped a host without root, CNI plugins or runc: here it must start
            assert plugin.instance.runtime_service is not None, \
                "the CRI RuntimeService did not start (see the daemon log)"
            channel = Channel(path=daemon.address)
            c = CRI(daemon, channel, tmp_short / "logs")
            try:
                await c.img.pull_image(api.PullImageRequest(image=api.ImageSpec(image=BUSYBOX_IMAGE)))
                yield c
            finally:
                for pod in c.pods:
                    try:
                        await c.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod))
                        await c.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod))
                    except Exception as e:  # keep cleaning up
                        print("cleanup", pod, e)
                channel.close()


async def _log_lines(path: Path, want: int, limit: float = 10) -> list[bytes]:
    deadline = time.monotonic() + limit
    while True:
        lines = path.read_bytes().splitlines() if path.exists() else []
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.1)


async def test_lifecycle_logs_exec_stop_remove(cri: CRI) -> None:
    pod, pod_config = await cri.run_pod("life")
    cid = await cri.create(pod, pod_config, "c1", ["sh", "-c", "echo hello; echo oops >&2; "
                                                    "trap '' TERM; while true; do sleep 1; done"])
    st = await cri.status(cid)
    assert st.state == api.ContainerState.CONTAINER_CREATED and st.metadata.name == "c1"
    assert st.log_path == str(cri.logs / "life" / "c1" / "0.log")

    # the same name/attempt in the pod is taken; another attempt is fine
    with pytest.raises(GRPCError) as e:
        await cri.create(pod, pod_config, "c1", ["true"])
    assert e.value.status == grpclib.const.Status.ALREADY_EXISTS

    await cri.rt.start_container(api.StartContainerRequest(container_id=cid))
    st = await cri.status(cid)
    assert st.state == api.ContainerState.CONTAINER_RUNNING and st.started_at > 0
    with pytest.raises(GRPCError) as e:
        await cri.rt.start_container(api.StartContainerRequest(container_id=cid))
    assert e.value.status == grpclib.const.Status.FAILED_PRECONDITION

    lines = await _log_lines(Path(st.log_path), 2)
    parsed = [LOG_LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert {(m.group(3), m.group(4), m.group(5)) for m in parsed} == {
        (b"stdout", b"F", b"hello"), (b"stderr", b"F", b"oops")}

    # ExecSync: output, stderr, exit code
    r = await cri.exec_sync(cid, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code) == (b"out\n", b"err\n", 7)
    # ExecSync with a timeout while a background child keeps the pipes open
    start = time.monotonic()
    with pytest.raises(GRPCError) as e:
        await cri.exec_sync(cid, "sh", "-c", "sleep 60 & sleep 60", timeout=2)
    assert e.value.status == grpclib.const.Status.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 10

    # List filters
    running = api.ContainerStateValue(state=api.ContainerState.CONTAINER_RUNNING)
    listed = (await cri.rt.list_containers(api.ListContainersRequest(filter=api.ContainerFilter(
        pod_sandbox_id=pod, state=running)))).containers
    assert [c.id for c in listed] == [cid]
    listed = (await cri.rt.list_containers(api.ListContainersRequest(
        filter=api.ContainerFilter(id=cid[:12])))).containers
    assert [c.id for c in listed] == [cid]

    # Stop: TERM is ignored, so SIGKILL after the timeout
    start = time.monotonic()
    await cri.rt.stop_container(api.StopContainerRequest(container_id=cid, timeout=2))
    elapsed = time.monotonic() - start
    assert 1.5 < elapsed < 15
    st = await cri.status(cid)
    assert st.state == api.ContainerState.CONTAINER_EXITED
    assert (st.exit_code, st.reason) == (137, "Error") and st.finished_at >= st.started_at
    # idempotent
    await cri.rt.stop_container(api.StopContainerRequest(container_id=cid, timeout=2))
    await cri.rt.stop_container(api.StopContainerRequest(container_id="0" * 64, timeout=2))

    # a container that completes
    done = await cri.create(pod, pod_config, "c2", ["sh", "-c", "exit 0"])
    await cri.rt.start_container(api.StartContainerRequest(container_id=done))
    st = await cri.wait_state(done, api.ContainerState.CONTAINER_EXITED)
    assert (st.state, st.exit_code, st.reason) == (api.ContainerState.CONTAINER_EXITED, 0, "Completed")

    # a command that does not exist: containerd's wording, and the OCI runtime's own error
    # text stays out of the container's log
    bad = await cri.create(pod, pod_config, "c3", ["/nonexistent"])
    with pytest.raises(GRPCError) as e:
        await cri.rt.start_container(api.StartContainerRequest(container_id=bad))
    assert e.value.status == grpclib.const.Status.UNKNOWN
    assert (e.value.message or "").startswith(
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: "
    ), e.value.message
    assert "/nonexistent" in (e.value.message or "")
    st = await cri.status(bad)
    log = Path(st.log_path)
    assert not log.exists() or b"nonexistent" not in log.read_bytes(), log.read_bytes()
    await cri.rt.remove_container(api.RemoveContainerRequest(container_id=bad))

    await cri.rt.remove_container(api.RemoveContainerRequest(container_id=cid))
    await cri.rt.remove_container(api.RemoveContainerRequest(container_id=cid))
    with pytest.raises(GRPCError) as e:
        await cri.status(cid)
    assert e.value.status == grpclib.const.Status.NOT_FOUND
    # the name is free again
    again = await cri.create(pod, pod_config, "c1", ["true"])
    await cri.rt.remove_container(api.RemoveContainerRequest(container_id=again))


async def test_two_containers_share_the_pod_network(cri: CRI) -> None:
    pod, pod_config = await cri.run_pod("net")
    ids = []
    for name in ("a", "b"):
        cid = await cri.create(pod, pod_config, name, ["sleep", "3600"])
        await cri.rt.start_container(api.StartContainerRequest(container_id=cid))
        ids.append(cid)
    pod_status = await cri.rt.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id=pod))
    pod_ip = pod_status.status.network.ip
    assert pod_ip
    seen = []
    for cid in ids:
        ns = await cri.exec_sync(cid, "readlink", "/proc/self/ns/net")
        addr = await cri.exec_sync(cid, "ip", "-4", "addr", "show")
        assert ns.exit_code == 0 and addr.exit_code == 0, (ns, addr)
        assert pod_ip.encode() in addr.stdout
        seen.append(ns.stdout)
    assert seen[0] == seen[1]
    for cid in ids:
        await cri.rt.stop_container(api.StopContainerRequest(container_id=cid, timeout=0))
        st = await cri.status(cid)
        assert st.state == api.ContainerState.CONTAINER_EXITED and st.exit_code == 137


async def test_streaming_exec_attach_port_forward(cri: CRI) -> None:
    pod, pod_config = await cri.run_pod("stream")
    server = await cri.create(pod, pod_config, "srv", ["sh", "-c",
                              "while true; do echo hello-pf | nc -l -p 8080; done"])
    await cri.rt.start_container(api.StartContainerRequest(container_id=server))
    talker = await cri.create(pod, pod_config, "talk", ["sh", "-c", "while read l; do echo got:$l; done"],
                              stdin=True)
    await cri.rt.start_container(api.StartContainerRequest(container_id=talker))

    # Exec with stdin, then one with a non-zero exit
    url = (await cri.rt.exec(api.ExecRequest(container_id=server, cmd=["cat"], stdin=True,
                                             stdout=True, stderr=True))).url
    r = await exec_url(url, stdin=b"via-exec\n")
    assert r.exit_code == 0 and r.stdout == b"via-exec\n"
    url = (await cri.rt.exec(api.ExecRequest(container_id=server, cmd=["sh", "-c", "echo e >&2; exit 4"],
                                             stdout=True, stderr=True))).url
    r = await exec_url(url)
    assert r.exit_code == 4 and r.stderr == b"e\n"
    # tty exec
    url = (await cri.rt.exec(api.ExecRequest(container_id=server, cmd=["sh", "-c", "stty size; tty"],
                                             tty=True, stdout=True))).url
    r = await exec_url(url, tty=True, resize=[(100, 40)])
    assert r.exit_code == 0 and b"/dev/pts/" in r.stdout

    # Attach: stdin goes to the container, its output comes back
    url = (await cri.rt.attach(api.AttachRequest(container_id=talker, stdin=True, stdout=True,
                                                 stderr=True))).url
    task = asyncio.ensure_future(exec_url(url, stdin=b"ping\n", keep_stdin_open=30))
    log_path = Path((await cri.status(talker)).log_path)
    lines = await _log_lines(log_path, 1)
    assert any(b"got:ping" in line for line in lines), lines
    await cri.rt.stop_container(api.StopContainerRequest(container_id=talker, timeout=0))
    r = await asyncio.wait_for(task, 15)
    assert b"got:ping" in r.stdout

    # PortForward to nc listening inside the pod
    url = (await cri.rt.port_forward(api.PortForwardRequest(pod_sandbox_id=pod, port=[8080]))).url
    deadline = time.monotonic() + 10
    async with await PortForwardClient.connect(url) as pf:
        while True:
            data, _err = await pf.open(8080)
            got = await asyncio.wait_for(data.readall(), 10)
            if got or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)     # nc not listening yet
    assert got == b"hello-pf\n"


async def test_crictl(cri: CRI, tmp_short: Path) -> None:
    tool = crictl()
    if tool is None:
        pytest.skip("crictl is not built here (/work/tools/build-cri-tools.sh); CI has none")
    pod, _ = await cri.run_pod("ctl")
    address = cri.daemon.address

    async def run(*args: str, stdin: bytes | None = None) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            *crictl_argv(address, *args), stdin=asyncio.subprocess.PIPE if stdin is not None else None,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
        assert proc.returncode == 0, (args, out, err)
        return out

    cfg = tmp_short / "c.json"
    cfg.write_text(json.dumps({"metadata": {"name": "ctl"}, "image": {"image": BUSYBOX_IMAGE},
                               "command": ["sh", "-c", "echo from-crictl; sleep 3600"],
                               "log_path": "ctl.log"}))
    podcfg = tmp_short / "p.json"
    podcfg.write_text(json.dumps({"metadata": {"name": "ctl", "namespace": "test", "uid": "uid-ctl"},
                                  "log_directory": str(cri.logs / "ctl")}))
    cid = (await run("create", pod, str(cfg), str(podcfg))).strip().decode()
    await run("start", cid)
    assert cid[:13] in (await run("ps")).decode()
    assert b'"state": "CONTAINER_RUNNING"' in await run("inspect", cid)
    assert (await run("exec", "-s", cid, "echo", "hi")).strip() == b"hi"   # crictl adds newlines
    assert b"hi" in await run("exec", "-i", cid, "cat", stdin=b"hi\n")
    await asyncio.sleep(0.5)
    assert b"from-crictl" in await run("logs", cid)
    await run("stop", "-t", "1", cid)
    assert b'"state": "CONTAINER_EXITED"' in await run("inspect", cid)
    await run("rm", cid)
    await run("stop", cid)      # idempotent for a container already gone (crictl rm looks it up first)

