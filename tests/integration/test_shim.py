"""Our shim ``containerd-shim-aiorunc-v2`` end to end: real CLI, real runc, busybox rootfs.

Each test starts the shim as containerd does (``start`` in the bundle folder with
``-namespace/-address/-id`` and ``TTRPC_ADDRESS``), drives ``containerd.task.v2.Task``
over our ttrpc client, and records the events the shim forwards to a tiny ttrpc
``Events/Forward`` server of the test.  Namespaces are unique per test; every test
cleans up (runc delete --force, kill the shim, unmount) even when it fails, and
checks that the shim process, its socket and the rootfs mount are gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiocontainerd import errors, ttrpc
from aiocontainerd.api.containerd.services.events.ttrpc.v1 import ForwardRequest
from aiocontainerd.api.containerd.task import v2 as task
from aiocontainerd.api.containerd.types import Mount
from aiocontainerd.api.containerd.v1.types import Status
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.mount.mounting import is_mountpoint
from tests.support.runtime import busybox_rootfs, environ, processes

RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
SHIM = str(Path(sys.executable).with_name("containerd-shim-aiorunc-v2"))
TASK = "containerd.task.v2.Task"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.exists(RUNC), reason="runc not installed"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static not installed"),
]


def make_bundle(bundle: Path, args: list[str], *, annotations: dict | None = None) -> None:
    bundle.mkdir(parents=True)
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = args
    spec["process"]["terminal"] = False
    spec["root"] = {"path": "rootfs", "readonly": False}
    if annotations:
        spec["annotations"] = annotations
    (bundle / "config.json").write_text(json.dumps(spec))


class EventSink:
    """A ttrpc ``Events/Forward`` server recording (namespace metadata, topic, type URL)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.events: list[tuple[str, str, str, bytes]] = []
        self.changed = asyncio.Event()
        self.server = ttrpc.Server()
        self.server.register("containerd.services.events.ttrpc.v1.Events",
                             {"Forward": (ForwardRequest, self.forward)})

    async def forward(self, r: ForwardRequest) -> pb.Empty:
        env = r.envelope
        self.events.append((ttrpc.namespace(), env.topic, env.event.type_url, bytes(env.event.value)))
        self.changed.set()
        return pb.Empty()

    def topics(self) -> list[str]:
        return [t for _, t, _, _ in self.events]

    async def wait_for(self, topic: str, count: int = 1, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.topics().count(topic) < count:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {topic} event in {self.topics()}")
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass


class Harness:
    """Folders, event sink, shim processes and cleanup for one test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ns = "t-" + secrets.token_hex(4)
        self.address = str(base / "grpc.sock")     # only hashed into the socket name
        self.rootfs_src = base / "rootfs-src"
        busybox_rootfs(self.rootfs_src)
        self.sink = EventSink(str(base / "ttrpc.sock"))
        self.bundles: list[tuple[str, Path]] = []
        self.shim_pids: set[int] = set()
        self.sockets: set[str] = set()
        self.clients: list[ttrpc.Client] = []
        self.extra_env: dict[str, str] = {}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(TTRPC_ADDRESS=self.sink.path, GRPC_ADDRESS=self.address, NAMESPACE=self.ns,
                   AIORUNC_FORKSERVER_IDLE="20")
        env.update(self.extra_env)
        return env

    def argv(self, id: str, action: str) -> list[str]:
        return [SHIM, "-namespace", self.ns, "-address", self.address,
                "-publish-binary", "containerd", "-id", id, action]

    def bundle(self, id: str, args: list[str], **kw) -> Path:
        b = self.base / id
        make_bundle(b, args, **kw)
        self.bundles.append((id, b))
        return b

    async def start(self, id: str, bundle: Path) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(id, "start"), cwd=bundle, env=self.env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        address = out.decode().strip()
        assert address.startswith("unix:///run/containerd/s/"), address
        self.sockets.add(address[len("unix://"):])
        assert (bundle / "address").read_text() == address
        return address

    async def connect(self, address: str) -> ttrpc.Client:
        c = await ttrpc.Client.connect(address, timeout=10)
        self.clients.append(c)
        return c

    async def call(self, c: ttrpc.Client, method: str, req, resp=pb.Empty):
        return await c.call(TASK, method, req, resp, timeout=30)

    def create_request(self, id: str, bundle: Path, **kw) -> task.CreateTaskRequest:
        return task.CreateTaskRequest(
            id=id, bundle=str(bundle),
            rootfs=[Mount(type="bind", source=str(self.rootfs_src), options=["rbind", "rw"])],
            **kw)

    async def shim_pid(self, c: ttrpc.Client) -> int:
        r = await self.call(c, "Connect", task.ConnectRequest(id=""), task.ConnectResponse)
        self.shim_pids.add(r.shim_pid)
        return r.shim_pid

    async def started(self, id: str,
                      args: list[str]) -> tuple[Path, str, ttrpc.Client, task.CreateTaskResponse]:
        """A bundle running ``args``, its shim started and connected, the task created and
        started: (bundle, shim address, client, Create's answer)."""
        b = self.bundle(id, args)
        address = await self.start(id, b)
        c = await self.connect(address)
        await self.shim_pid(c)
        created = await self.call(c, "Create", self.create_request(id, b), task.CreateTaskResponse)
        await self.call(c, "Start", task.StartRequest(id=id), task.StartResponse)
        return b, address, c, created

    async def cleanup(self) -> None:
        for c in self.clients:
            await c.close()
        for id, b in self.bundles:
            subprocess.run([RUNC, "--root", f"/run/containerd/runc/{self.ns}", "delete", "--force", id],
                           capture_output=True)
            subprocess.run(["umount", "-R", str(b / "rootfs")], capture_output=True)
        for _, b in self.bundles:       # shims the test never connected to, too
            try:
                self.shim_pids.add(int((b / "shim.pid").read_text()))
            except (OSError, ValueError):
                pass
        for pid in self.shim_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for s in self.sockets:
            try:
                os.unlink(s)
            except FileNotFoundError:
                pass
        shutil.rmtree(f"/run/containerd/runc/{self.ns}", ignore_errors=True)


def fifos(base: Path, name: str) -> tuple[str, str]:
    out, err = str(base / f"{name}.out"), str(base / f"{name}.err")
    os.mkfifo(out)
    os.mkfifo(err)
    return out, err


async def read_fifo(path: str) -> bytes:
    """Read a FIFO to EOF in a thread (opened before the shim opens it for writing)."""
    def run() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return await asyncio.to_thread(run)


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):   # gone between open and read: ESRCH
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    base = Path(tempfile.mkdtemp(prefix="shim-", dir="/tmp"))
    harness = Harness(base)
    await harness.sink.server.start(harness.sink.path)
    try:
        yield harness
    finally:
        await harness.cleanup()
        await harness.sink.server.close()
        shutil.rmtree(base, ignore_errors=True)


async def finish(h: Harness, c: ttrpc.Client, address: str, bundle: Path) -> None:
    """Shutdown the shim and check nothing is left."""
    pid = await h.shim_pid(c)
    await h.call(c, "Shutdown", task.ShutdownRequest(id=""))
    assert gone(pid), "shim still running after Shutdown"
    assert not os.path.exists(address[len("unix://"):])
    assert not is_mountpoint(bundle / "rootfs")


async def test_echo_hi_exit_status_and_events(h: Harness) -> None:
    b = h.bundle("c1", ["echo", "hi"])
    address = await h.start("c1", b)
    c = await h.connect(address)
    await h.shim_pid(c)
    out, err = fifos(h.base, "c1")
    reader = asyncio.ensure_future(read_fifo(out))
    created = await h.call(c, "Create", h.create_request("c1", b, stdout=out, stderr=err),
                           task.CreateTaskResponse)
    assert created.pid > 0
    assert is_mountpoint(b / "rootfs")
    st = await h.call(c, "State", task.StateRequest(id="c1"), task.StateResponse)
    assert st.status == Status.CREATED and st.pid == created.pid and st.stdout == out
    waiter = asyncio.ensure_future(h.call(c, "Wait", task.WaitRequest(id="c1"), task.WaitResponse))
    started = await h.call(c, "Start", task.StartRequest(id="c1"), task.StartResponse)
    assert started.pid == created.pid
    w = await asyncio.wait_for(waiter, 20)
    assert w.exit_status == 0 and w.exited_at.seconds > 0
    assert await asyncio.wait_for(reader, 10) == b"hi\n"
    with pytest.raises(errors.FailedPrecondition):
        await h.call(c, "Start", task.StartRequest(id="c1"), task.StartResponse)
    d = await h.call(c, "Delete", task.DeleteRequest(id="c1"), task.DeleteResponse)
    assert d.exit_status == 0 and d.pid == created.pid
    assert not is_mountpoint(b / "rootfs")
    with pytest.raises(errors.NotFound):
        await h.call(c, "State", task.StateRequest(id="c1"), task.StateResponse)
    await h.sink.wait_for("/tasks/delete")
    topics = h.sink.topics()
    assert topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"], topics
    assert {ns for ns, *_ in h.sink.events} == {h.ns}
    assert h.sink.events[2][2] == "containerd.events.TaskExit"
    await finish(h, c, address, b)


async def test_exit_code_7(h: Harness) -> None:
    b, address, c, _ = await h.started("c2", ["sh", "-c", "exit 7"])
    w = await h.call(c, "Wait", task.WaitRequest(id="c2"), task.WaitResponse)
    assert w.exit_status == 7
    st = await h.call(c, "State", task.StateRequest(id="c2"), task.StateResponse)
    assert st.status == Status.STOPPED and st.exit_status == 7
    with pytest.raises(errors.NotFound):
        await h.call(c, "Kill", task.KillRequest(id="c2", signal=9))
    d = await h.call(c, "Delete", task.DeleteRequest(id="c2"), task.DeleteResponse)
    assert d.exit_status == 7
    await finish(h, c, address, b)


async def test_exec_pause_resume_kill_stats(h: Harness) -> None:
    b, address, c, created = await h.started("c3", ["sleep", "1000"])
    st = await h.call(c, "State", task.StateRequest(id="c3"), task.StateResponse)
    assert st.status == Status.RUNNING

    spec = json.loads((b / "config.json").read_text())["process"]
    spec["args"] = ["sh", "-c", "echo from-exec; exit 3"]
    out, err = fifos(h.base, "e1")
    reader = asyncio.ensure_future(read_fifo(out))
    any_spec = pb.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/specs.Process",
                      value=json.dumps(spec).encode())
    await h.call(c, "Exec", task.ExecProcessRequest(id="c3", exec_id="e1", stdout=out, stderr=err,
                                                    spec=any_spec))
    with pytest.raises(errors.AlreadyExists):
        await h.call(c, "Exec", task.ExecProcessRequest(id="c3", exec_id="e1", spec=any_spec))
    with pytest.raises(errors.NotFound):
        await h.call(c, "State", task.StateRequest(id="c3", exec_id="nope"), task.StateResponse)
    s = await h.call(c, "Start", task.StartRequest(id="c3", exec_id="e1"), task.StartResponse)
    assert s.pid > 0
    w = await h.call(c, "Wait", task.WaitRequest(id="c3", exec_id="e1"), task.WaitResponse)
    assert w.exit_status == 3
    assert await asyncio.wait_for(reader, 10) == b"from-exec\n"
    d = await h.call(c, "Delete", task.DeleteRequest(id="c3", exec_id="e1"), task.DeleteResponse)
    assert d.exit_status == 3

    pids = await h.call(c, "Pids", task.PidsRequest(id="c3"), task.PidsResponse)
    assert created.pid in [p.pid for p in pids.processes]

    stats = await h.call(c, "Stats", task.StatsRequest(id="c3"), task.StatsResponse)
    assert stats.stats.type_url in ("io.containerd.cgroups.v1.Metrics", "io.containerd.cgroups.v2.Metrics")
    assert stats.stats.value

    await h.call(c, "Pause", task.PauseRequest(id="c3"))
    st = await h.call(c, "State", task.StateRequest(id="c3"), task.StateResponse)
    assert st.status == Status.PAUSED
    with pytest.raises(errors.FailedPrecondition):
        await h.call(c, "Pause", task.PauseRequest(id="c3"))
    await h.call(c, "Resume", task.ResumeRequest(id="c3"))
    st = await h.call(c, "State", task.StateRequest(id="c3"), task.StateResponse)
    assert st.status == Status.RUNNING

    with pytest.raises(errors.FailedPrecondition):
        await h.call(c, "Delete", task.DeleteRequest(id="c3"), task.DeleteResponse)
    await h.call(c, "Kill", task.KillRequest(id="c3", signal=signal.SIGKILL))
    w = await h.call(c, "Wait", task.WaitRequest(id="c3"), task.WaitResponse)
    assert w.exit_status == 128 + signal.SIGKILL
    await h.call(c, "Delete", task.DeleteRequest(id="c3"), task.DeleteResponse)
    await h.sink.wait_for("/tasks/delete")
    topics = h.sink.topics()
    for t in ("/tasks/exec-added", "/tasks/exec-started", "/tasks/paused", "/tasks/resumed"):
        assert t in topics, topics
    assert topics.index("/tasks/exec-started") < topics.index("/tasks/exit")
    await finish(h, c, address, b)


async def test_group_shares_one_shim_and_delete_action(h: Harness) -> None:
    ann = {"io.kubernetes.cri.sandbox-id": "pod1"}
    b1 = h.bundle("g1", ["sleep", "1000"], annotations=ann)
    b2 = h.bundle("g2", ["sleep", "1000"], annotations=ann)
    a1 = await h.start("g1", b1)
    c = await h.connect(a1)
    pid = await h.shim_pid(c)
    a2 = await h.start("g2", b2)
    assert a1 == a2
    await h.call(c, "Create", h.create_request("g1", b1), task.CreateTaskResponse)
    await h.call(c, "Create", h.create_request("g2", b2), task.CreateTaskResponse)
    await h.call(c, "Start", task.StartRequest(id="g2"), task.StartResponse)
    # Shutdown keeps serving while containers are left
    await h.call(c, "Shutdown", task.ShutdownRequest(id="g1"))
    assert not gone(pid, timeout=0.3)
    # the daemon's cleanup of a dead shim: kill it, then `delete` in the bundle
    os.kill(pid, signal.SIGKILL)
    assert gone(pid)
    proc = await asyncio.create_subprocess_exec(*h.argv("g2", "delete"), cwd=b2, env=h.env(),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    resp = task.DeleteResponse.parse(out)
    assert resp.exit_status == 137 and resp.pid > 0 and resp.exited_at.seconds > 0
    assert not is_mountpoint(b2 / "rootfs")
    r = subprocess.run([RUNC, "--root", f"/run/containerd/runc/{h.ns}", "state", "g2"],
                       capture_output=True)
    assert r.returncode != 0


def test_shim_imports_stay_small() -> None:
    code = ("import sys; import aiocontainerd.runtimes.aiorunc.main as m, "
            "aiocontainerd.runtimes.aiorunc.forkserver as f; f.preimport(); "
            "import aiocontainerd.runtimes.aiorunc.oom, aiocontainerd.runtimes.aiorunc.cleanup; "
            "bad = [n for n in sys.modules if n.split('.')[0] in "
            "('grpclib', 'aiohttp', 'lmdb', 'prometheus_client') or "
            "n.startswith(('aiocontainerd.services', 'aiocontainerd.metadata', "
            "'aiocontainerd.daemon', 'aiocontainerd.client'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _abstract_listening(name: str) -> bool:
    with open("/proc/net/unix") as f:
        return any(line.rstrip().endswith("@" + name[1:]) for line in f)


async def test_forkserver_detaches_shims_then_idles_out_and_plain_fallback(h: Harness) -> None:
    from aiocontainerd.runtimes.aiorunc.main import forkserver_key

    h.extra_env["AIORUNC_FORKSERVER_IDLE"] = "2"
    key = forkserver_key(h.address)
    pids, addrs = [], []
    for id in ("f1", "f2"):
        b = h.bundle(id, ["true"])
        addrs.append(await h.start(id, b))
        c = await h.connect(addrs[-1])
        pids.append(await h.shim_pid(c))
        assert (b / "shim.pid").read_text() == str(pids[-1])
    assert _abstract_listening(key)
    assert pids[0] != pids[1] and addrs[0] != addrs[1]
    for pid in pids:
        assert os.getsid(pid) not in (os.getsid(0), os.getsid(pids[1 - pids.index(pid)]))
        stat = Path(f"/proc/{pid}/stat").read_text()
        assert int(stat.rsplit(")", 1)[1].split()[1]) != os.getpid()
    for c in h.clients:
        await h.call(c, "Shutdown", task.ShutdownRequest(id=""))
    assert all(gone(pid) for pid in pids)
    deadline = time.monotonic() + 15
    while _abstract_listening(key) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    assert not _abstract_listening(key), "idle fork server did not exit"

    h.extra_env["AIORUNC_NO_FORKSERVER"] = "1"
    b, address, c, _ = await h.started("f3", ["sh", "-c", "exit 5"])
    w = await h.call(c, "Wait", task.WaitRequest(id="f3"), task.WaitResponse)
    assert w.exit_status == 5
    await h.call(c, "Delete", task.DeleteRequest(id="f3"), task.DeleteResponse)
    assert not _abstract_listening(key)
    await finish(h, c, address, b)


def _forkservers_of(address: str) -> list[int]:
    """Pids of the fork server processes started for daemon ``address``."""
    # forked shims share the fork server's command line, not its name
    return [p.pid for p in processes().values()
            if p.comm == "aiorunc-forksrv" and f"GRPC_ADDRESS={address}" in environ(p.pid).split("\n")
            and not gone(p.pid, timeout=0.01)]


async def test_concurrent_starts_one_forkserver_which_leaves_with_the_daemon(h: Harness) -> None:
    """Cold and warm starts at once: every start succeeds (shim.pid was renamed away by a
    second writer before), shim.pid names the serving shim, one fork server per key, and
    it exits once the daemon's socket is gone."""
    h.extra_env.update(AIORUNC_FORKSERVER_IDLE="120", AIORUNC_FORKSERVER_CHECK="0.5")
    ids = [f"k{i}" for i in range(16)]
    bundles = {id: h.bundle(id, ["true"]) for id in ids}
    addrs = {}
    for batch in (ids[:8], ids[8:]):          # cold starts at once, then warm ones at once
        got = await asyncio.gather(*(h.start(id, bundles[id]) for id in batch))
        addrs.update(zip(batch, got, strict=True))
        assert len(_forkservers_of(h.address)) == 1
    for id in ids:
        c = await h.connect(addrs[id])
        pid = await h.shim_pid(c)
        assert (bundles[id] / "shim.pid").read_text() == str(pid)
        assert [p.name for p in bundles[id].iterdir() if p.name.endswith(".tmp")] == []
    for c in h.clients:
        await h.call(c, "Shutdown", task.ShutdownRequest(id=""))
    assert all(gone(pid) for pid in h.shim_pids)
    [fs] = _forkservers_of(h.address)
    await h.sink.server.close()
    Path(h.sink.path).unlink(missing_ok=True)
    assert gone(fs, timeout=5), "fork server outlived its daemon"
    deadline = time.monotonic() + 5
    while Path(f"/proc/{fs}").exists() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert not Path(f"/proc/{fs}").exists(), "fork server left a zombie"


def _spares_of(address: str) -> list[int]:
    """Pids of the spare shims the fork server of daemon ``address`` keeps."""
    return [p.pid for p in processes().values()
            if p.comm == "aiorunc-spare" and f"GRPC_ADDRESS={address}" in environ(p.pid).split("\n")
            and not gone(p.pid, timeout=0.01)]


async def _one_spare(address: str, but: int = 0) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        spares = [p for p in _spares_of(address) if p != but]
        if spares:
            assert len(spares) == 1, spares
            return spares[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no spare shim")


async def test_the_spare_shim_serves_the_next_start_and_leaves_with_the_fork_server(h: Harness) -> None:
    """The fork server keeps one shim forked ahead: the next start is served by it (the
    shim is that process, renamed), a new spare follows; a spare that died is replaced
    by a plain fork; the spare leaves with its fork server."""
    h.extra_env.update(AIORUNC_FORKSERVER_IDLE="120", AIORUNC_FORKSERVER_CHECK="0.5")
    await h.start("p0", h.bundle("p0", ["true"]))     # cold: launches the fork server
    spare = await _one_spare(h.address)
    b = h.bundle("p1", ["sh", "-c", "exit 4"])
    c = await h.connect(await h.start("p1", b))
    assert await h.shim_pid(c) == spare
    assert processes()[spare].comm == "aiorunc-shim"
    assert (b / "shim.pid").read_text() == str(spare)
    await h.call(c, "Create", h.create_request("p1", b), task.CreateTaskResponse)
    await h.call(c, "Start", task.StartRequest(id="p1"), task.StartResponse)
    w = await h.call(c, "Wait", task.WaitRequest(id="p1"), task.WaitResponse)
    assert w.exit_status == 4

    dead = await _one_spare(h.address, but=spare)
    os.kill(dead, signal.SIGKILL)
    assert gone(dead)
    b = h.bundle("p2", ["true"])
    c = await h.connect(await h.start("p2", b))
    pid = await h.shim_pid(c)
    assert pid != dead and processes()[pid].comm == "aiorunc-shim"

    last = await _one_spare(h.address, but=dead)
    [fs] = _forkservers_of(h.address)
    await h.sink.server.close()
    Path(h.sink.path).unlink(missing_ok=True)
    assert gone(fs, timeout=5), "fork server outlived its daemon"
    assert gone(last, timeout=5), "the spare outlived its fork server"


_AS_NOBODY = r"""
import json, os, socket, sys
key, shim_address, folder = "\0" + sys.argv[1], sys.argv[2], sys.argv[3]
os.setgroups([]); os.setgid(65534); os.setuid(65534)
out = {}
listener = socket.socket(socket.AF_UNIX)
listener.bind(os.path.join(folder, "evil.sock")); listener.listen()
c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
c.connect(key)
req = {"namespace": "evil", "id": "evil", "address": "", "bundle": folder, "env": {"PATH": folder}}
def answer(sock):
    sock.settimeout(10)
    try:
        return sock.recv(4096).decode(errors="replace")
    except ConnectionResetError:  # closed unread: refused
        return ""
try:
    c.sendmsg([json.dumps(req).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                            listener.fileno().to_bytes(4, sys.byteorder))])
    out["forkserver"] = answer(c)
except BrokenPipeError:           # closed before the request was even sent: refused
    out["forkserver"] = ""
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(shim_address)  # its folder is root's alone: refused already
    s.sendall(bytes(10))     # else a ttrpc frame header: nothing should answer it
    out["shim"] = answer(s)
except (PermissionError, BrokenPipeError, ConnectionResetError):
    out["shim"] = ""
print(json.dumps(out))
"""


async def test_another_user_gets_no_shim_and_no_answer(h: Harness) -> None:
    """The fork server's abstract socket has no file permissions: a request from another
    user must fork nothing; a shim's ttrpc socket also refuses other users (as Go's)."""
    from aiocontainerd.runtimes.aiorunc import main as shimmain

    b = h.bundle("u0", ["true"])
    address = await h.start("u0", b)                 # launches the fork server (and a spare)
    await _one_spare(h.address)
    before = {p.pid for p in processes().values() if p.comm.startswith("aiorunc")}
    folder = Path(tempfile.mkdtemp(prefix="evil-"))
    folder.chmod(0o777)
    try:
        key = shimmain.forkserver_key(h.address).lstrip("\0")   # abstract: NUL first
        out = subprocess.run([sys.executable, "-c", _AS_NOBODY, key,
                              address[len("unix://"):], str(folder)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        answers = json.loads(out.stdout)
        assert answers == {"forkserver": "", "shim": ""}   # connections closed, nothing said
        await asyncio.sleep(0.5)
        after = {p.pid for p in processes().values() if p.comm.startswith("aiorunc")}
        assert after - before == set(), "a process was started for another user"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_state_and_wait_after_an_exit_nobody_watched(h: Harness) -> None:
    """A daemon restart reconnects to a shim whose container exited meanwhile: State says
    STOPPED with the exit status and Wait answers at once."""
    b, address, c, created = await h.started("x1", ["sh", "-c", "exit 3"])
    await c.close()
    h.clients.remove(c)
    assert gone(created.pid)
    await h.sink.wait_for("/tasks/exit")
    c2 = await h.connect(address)
    st = await h.call(c2, "State", task.StateRequest(id="x1"), task.StateResponse)
    assert st.status == Status.STOPPED and st.exit_status == 3 and st.pid == created.pid
    assert st.exited_at.seconds > 0
    w = await asyncio.wait_for(h.call(c2, "Wait", task.WaitRequest(id="x1"), task.WaitResponse), 2)
    assert w.exit_status == 3 and w.exited_at == st.exited_at
    await h.call(c2, "Shutdown", task.ShutdownRequest(id="x1", now=True))
    assert not gone(await h.shim_pid(c2), timeout=0.3), "Shutdown(now) ended a shim with a container"
    d = await h.call(c2, "Delete", task.DeleteRequest(id="x1"), task.DeleteResponse)
    assert d.exit_status == 3
    await finish(h, c2, address, b)
