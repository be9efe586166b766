"""Issue 6's crictl acceptance list, run with cri-tools v1.32.0's ``crictl`` against our daemon and,
as the reference the same assertions must hold for, Debian's containerd 1.6 with CRI.

One pass through every command of the list on one pod: version, pull, images, imagefsinfo,
runp, pods, inspectp, create, start, ps, inspect, logs (``--tail``, ``--timestamps``, ``-f``),
exec -s, exec -it (under ``script -qec`` for a pty), exec -i, attach (-it, under script),
port-forward (an HTTP answer from a server in the pod), stats, statsp, stop, rm, stopp, rmp,
rmi, info. The same JSON pod/container configs for both daemons.

Skipped where ``crictl`` is not built (``/work/tools/build-cri-tools.sh``): CI has none. The
containerd 1.6 run is skipped without ``/usr/bin/containerd``. Known 1.6 difference, not asserted
for it: ``statsp`` of a pod without ``cgroup_parent`` fails on 1.6 ("cgroupPath is empty").
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess
from tests.support.cri import BUSYBOX_IMAGE, SANDBOX_IMAGE, CRISetup, cri_setup, crictl, crictl_argv, need_cri
from tests.support.runtime import containerd_available

pytestmark = pytest.mark.integration

OURS, CONTAINERD16 = "ours", "containerd16"


@dataclass
class Ctl:
    kind: str
    base: Path
    setup: CRISetup
    daemon: Any

    def argv(self, *args: str) -> list[str]:
        return crictl_argv(self.daemon.address, *args)

    async def run(self, *args: str, check: bool = True, input: bytes | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = await asyncio.to_thread(
            subprocess.run, self.argv(*args), input=input, capture_output=True, timeout=timeout)
        out = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(errors="replace"),
                                          r.stderr.decode(errors="replace"))
        if check and r.returncode != 0:
            raise AssertionError(f"crictl {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{out.stdout}{out.stderr}")
        return out

    async def out(self, *args: str) -> str:
        return (await self.run(*args)).stdout

    async def json(self, *args: str) -> Any:
        return json.loads(await self.out(*args))

    async def pty(self, command: str, stdin: bytes = b"", timeout: float = 30) -> tuple[int, str]:
        """``crictl COMMAND`` under ``script -qec`` (a pty for -t), ``stdin`` typed into it."""
        line = " ".join(shlex.quote(a) for a in self.argv(*shlex.split(command)))
        r = await asyncio.to_thread(subprocess.run, ["script", "-qec", line, "/dev/null"], input=stdin,
                                    capture_output=True, timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def _skip_reason() -> str | None:
    if crictl() is None:
        return "crictl is not built here (/work/tools/build-cri-tools.sh); CI has none"
    if shutil.which("script") is None:
        return "script(1) (util-linux) is needed for crictl exec -it/attach -it"
    return None


@pytest.fixture(params=[OURS, CONTAINERD16])
async def ctl(request: pytest.FixtureRequest, tmp_short: Path) -> AsyncIterator[Ctl]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    need_cri()
    if request.param == CONTAINERD16 and not containerd_available():
        pytest.skip("Debian's containerd 1.6 is not installed (the reference run)")
    async with cri_setup(tmp_short / "cri") as setup:
        if request.param == OURS:
            config = tmp_short / "config.toml"
            config.write_text("version = 3\n" + setup.ours())
            daemon: Any = DaemonProcess(tmp_short, "--config", str(config))
        else:
            from tests.support.cri import containerd_cri_process

            daemon = containerd_cri_process(tmp_short, setup.containerd16())
        await asyncio.to_thread(daemon.start, 60)
        c = Ctl(request.param, tmp_short, setup, daemon)
        try:
            yield c
        finally:
            try:
                for pod in (await c.out("pods", "-q")).split():
                    await c.run("stopp", pod, check=False)
                    await c.run("rmp", "-f", pod, check=False)
            finally:
                daemon.stop()


def write_json(path: Path, value: Any) -> str:
    path.write_text(json.dumps(value))
    return str(path)


async def wait_for(predicate: Any, limit: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + limit
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_crictl_acceptance(ctl: Ctl) -> None:
    base = ctl.base
    # version, info
    version = await ctl.out("version")
    assert "RuntimeApiVersion:  v1" in version
    assert ("RuntimeName:  aiocontainerd" if ctl.kind == OURS else "RuntimeName:  containerd") in version
    info = await ctl.json("info")
    conds = {c["type"]: c["status"] for c in info["status"]["conditions"]}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}
    assert info["lastCNILoadStatus"] == "OK"
    assert info["config"]["sandboxImage"] == SANDBOX_IMAGE
    assert info["config"]["stateDir"].startswith(str(base))       # critest reads it
    assert any(n["Config"]["Name"] == ctl.setup.cni.name for n in info["cniconfig"]["Networks"])

    # images: pull, images, imagefsinfo
    pulled = await ctl.out("pull", BUSYBOX_IMAGE)
    assert re.search(r"Image is up to date for sha256:[0-9a-f]{64}", pulled), pulled
    repo, tag = BUSYBOX_IMAGE.rsplit(":", 1)
    assert any(line.split()[:2] == [repo, tag] for line in (await ctl.out("images")).splitlines())
    verbose = await ctl.out("images", "-v")
    assert f"RepoTags: {BUSYBOX_IMAGE}" in verbose and f"RepoDigests: {repo}@sha256:" in verbose
    fs = (await ctl.json("imagefsinfo"))["status"]["imageFilesystems"]
    assert fs and all(f["fsId"]["mountpoint"].startswith(str(base)) for f in fs)

    # runp, pods, inspectp
    pod_cfg = write_json(base / "pod.json", {
        "metadata": {"name": "ctl-pod", "namespace": "default", "uid": "uid-ctl", "attempt": 0},
        "hostname": "ctlpod", "log_directory": str(base / "logs"), "labels": {"app": "ctl"},
        "port_mappings": [{"container_port": 8080}], "linux": {}})
    pod = (await ctl.out("runp", pod_cfg)).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", pod)
    row = [line.split() for line in (await ctl.out("pods")).splitlines() if line.startswith(pod[:13])]
    assert row and "Ready" in row[0] and "ctl-pod" in row[0] and row[0][-1] == "(default)"
    inspectp = await ctl.json("inspectp", pod)
    assert inspectp["status"]["state"] == "SANDBOX_READY"
    ip = inspectp["status"]["network"]["ip"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(ctl.setup.cni.subnet)
    assert inspectp["info"]["config"]["metadata"]["name"] == "ctl-pod"
    assert inspectp["info"]["config"]["port_mappings"] == [{"container_port": 8080}]   # Go's JSON
    assert inspectp["info"]["pid"] > 0 and inspectp["info"]["runtimeSpec"]["process"]

    # create, start, ps, inspect
    def ctr_cfg(name: str, command: list[str], **extra: Any) -> str:
        return write_json(base / f"{name}.json", {
            "metadata": {"name": name}, "image": {"image": BUSYBOX_IMAGE}, "command": command,
            "log_path": f"{name}.log", "labels": {"c": name}, "linux": {}, **extra})

    box = (await ctl.out("create", pod, ctr_cfg("box", [
        "sh", "-c", "i=0; while true; do echo line $i; echo err $i >&2; i=$((i+1)); sleep 0.2; done"]),
        pod_cfg)).strip()
    await ctl.run("start", box)
    ps = await ctl.out("ps")
    assert any(line.startswith(box[:13]) and "Running" in line and "box" in line for line in ps.splitlines())
    inspect = await ctl.json("inspect", box)
    assert inspect["status"]["state"] == "CONTAINER_RUNNING" and inspect["info"]["pid"] > 0
    assert inspect["status"]["logPath"] == str(base / "logs" / "box.log")
    assert inspect["info"]["config"]["log_path"] == "box.log"
    assert inspect["info"]["sandboxID"] == pod

    # logs, --tail, --timestamps, -f
    await wait_for(lambda: _has(ctl, ("logs", box), "line 3"), what="log lines")
    logs = await ctl.run("logs", box)
    assert "line 0\n" in logs.stdout and "err 0\n" in logs.stderr
    tail = await ctl.run("logs", "--tail", "1", box)
    assert len((tail.stdout + tail.stderr).splitlines()) == 1
    stamped = (await ctl.run("logs", "--timestamps", "--tail", "2", box)).stdout
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z line \d+", stamped), stamped
    follow = await asyncio.create_subprocess_exec(*ctl.argv("logs", "-f", "--tail", "1", box),
                                                  stdout=asyncio.subprocess.PIPE)
    assert follow.stdout is not None
    seen = [await asyncio.wait_for(follow.stdout.readline(), 10) for _ in range(3)]
    follow.send_signal(signal.SIGKILL)
    await follow.wait()
    numbers = [int(line.split()[1]) for line in seen]
    assert numbers == sorted(numbers) and numbers[-1] > numbers[0], seen   # new lines keep coming

    # exec -s, exec -i, exec -it (pty)
    assert (await ctl.out("exec", "-s", box, "echo", "hi")).strip() == "hi"
    failed = await ctl.run("exec", "-s", box, "sh", "-c", "echo oops >&2; exit 3", check=False)
    assert failed.returncode != 0 and "exited with 3" in failed.stderr
    timed = await ctl.run("exec", "-s", "--timeout", "1", box, "sleep", "5", check=False)
    assert timed.returncode != 0 and "timed out" in timed.stderr
    assert (await ctl.run("exec", "-i", box, "cat", input=b"piped\n")).stdout == "piped\n"
    code, out = await ctl.pty(f"exec -it {box} sh -c 'tty; hostname; exit 4'")
    assert code != 0 and "/dev/pts/" in out and "ctlpod" in out and "exit code 4" in out, out

    # attach -it to a shell started with a tty and stdin
    tty = (await ctl.out("create", pod, ctr_cfg("tty", ["sh"], stdin=True, tty=True), pod_cfg)).strip()
    await ctl.run("start", tty)
    await wait_for(lambda: _state(ctl, tty, "CONTAINER_RUNNING"), what="tty container running")
    _, out = await ctl.pty(f"attach -it {tty}", stdin=b"echo attached-$((40+2))\n")
    assert "attached-42" in out, out

    # port-forward to a server in the pod
    http = "printf 'HTTP/1.0 200 OK\\r\\n\\r\\nhello-from-pod'"
    srv = (await ctl.out("create", pod, ctr_cfg("srv", [
        "sh", "-c", f"while true; do {http} | nc -l -p 8080; done"]), pod_cfg)).strip()
    await ctl.run("start", srv)
    # listening (0A) on :8080 (1F90) first: crictl's port-forward ends at a refused connection
    async def listening() -> bool:
        r = await ctl.run("exec", "-s", srv, "cat", "/proc/net/tcp", "/proc/net/tcp6", check=False)
        return any(f[1].endswith(":1F90") and f[3] == "0A" for f in map(str.split, r.stdout.splitlines())
                   if len(f) > 3)
    await wait_for(listening, what="the server in the pod listening")
    forward = await asyncio.create_subprocess_exec(*ctl.argv("port-forward", pod, "0:8080"),
                                                   stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    try:
        assert forward.stdout is not None
        first = (await asyncio.wait_for(forward.stdout.readline(), 20)).decode()
        m = re.search(r"Forwarding from 127\.0\.0\.1:(\d+) -> 8080", first)
        assert m, first
        port = int(m.group(1))
        for _ in range(2):      # two connections through one forward
            await wait_for(listening, what="the server in the pod listening")
            answer = await _http_get(port)
            assert answer.endswith(b"hello-from-pod"), answer
    finally:
        if forward.returncode is None:
            forward.send_signal(signal.SIGKILL)
        await forward.wait()

    # stats, statsp
    stats = await ctl.json("stats", "-o", "json", box)
    s = stats["stats"][0]
    assert s["attributes"]["id"] == box and s["attributes"]["metadata"]["name"] == "box"
    assert int(s["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
    assert int(s["memory"]["workingSetBytes"]["value"]) > 0
    assert s["writableLayer"]["fsId"]["mountpoint"].startswith(str(base))
    table = await ctl.out("stats", "-a")
    assert all(c[:13] in table for c in (box, tty, srv))
    if ctl.kind == OURS:     # 1.6 fails ListPodSandboxStats without a cgroup_parent
        podstats = (await ctl.json("statsp", "-o", "json", pod))["stats"][0]
        linux = podstats["linux"]
        assert podstats["attributes"]["id"] == pod
        assert int(linux["cpu"]["usageCoreNanoSeconds"]["value"]) > 0
        assert int(linux["memory"]["workingSetBytes"]["value"]) > 0
        assert linux["network"]["defaultInterface"]["name"] == "eth0"
        assert int(linux["network"]["defaultInterface"]["rxBytes"]["value"]) > 0
        assert int(linux["process"]["processCount"]["value"]) >= 3
        # the running ones (the shell behind attach ended with script's stdin)
        assert {c["attributes"]["id"] for c in linux["containers"]} == {box, srv}
        assert pod[:13] in await ctl.out("statsp")

    # stop, rm, stopp, rmp, rmi
    await ctl.run("stop", "-t", "1", box)
    inspect = await ctl.json("inspect", box)
    assert inspect["status"]["state"] == "CONTAINER_EXITED" and inspect["status"]["exitCode"] in (137, 143)
    await ctl.run("stop", box)          # again: fine
    await ctl.run("rm", box)
    assert box[:13] not in await ctl.out("ps", "-a")
    await ctl.run("stopp", pod)
    await ctl.run("stopp", pod)
    assert "NotReady" in await ctl.out("pods")
    assert all(s == "CONTAINER_EXITED" for s in [(await ctl.json("inspect", c))["status"]["state"]
                                                 for c in (tty, srv)])
    await ctl.run("rmp", pod)
    assert pod[:13] not in await ctl.out("pods")
    assert await ctl.out("ps", "-a", "-q") == ""
    assert ctl.setup.cni.leases() == []
    await ctl.run("rmi", BUSYBOX_IMAGE)
    assert repo not in await ctl.out("images")
    gone = await ctl.run("rmi", BUSYBOX_IMAGE, check=False)
    assert gone.returncode != 0 and "no such image" in gone.stderr


async def _has(ctl: Ctl, args: tuple[str, ...], text: str) -> bool:
    r = await ctl.run(*args, check=False)
    return text in r.stdout


async def _state(ctl: Ctl, cid: str, state: str) -> bool:
    return (await ctl.json("inspect", cid))["status"]["state"] == state


async def _http_get(port: int) -> bytes:
    def get() -> bytes:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data
        except OSError:
            return b""
    return await asyncio.to_thread(get)

