"""Tasks through the runtime v2 shim manager and the Tasks gRPC service, with real shims and runc.

The daemon runs in the test's event loop (or as a process for the restart test);
containers get a busybox rootfs (a bind mount of a temporary folder with
``/bin/busybox`` and its applets) and a minimal OCI spec. Runs first with
Debian's Go ``containerd-shim-runc-v2`` (configured as the shim of
``io.containerd.runc.v2``), then with our ``containerd-shim-aiorunc-v2``.
Needs root, runc and /bin/busybox (busybox-static).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Status as GStatus
from grpclib.exceptions import GRPCError

from aiocontainerd import Daemon
from aiocontainerd.api.containerd import types as ctypes
from aiocontainerd.api.containerd.services.containers import v1 as capi
from aiocontainerd.api.containerd.services.tasks import v1 as tapi
from aiocontainerd.api.containerd.v1 import types as ptypes
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.mount.mounting import mount_points
from aiocontainerd.runtimes.v2 import binary as shim_binary
from aiocontainerd.runtimes.v2.manager import RuntimeConfig, TaskConfig
from tests.conftest import DaemonProcess, make_config, short_tmp, wait_serving
from tests.support.runtime import busybox_rootfs, wait_until

GO_SHIM = "/usr/bin/containerd-shim-runc-v2"
BUSYBOX = "/bin/busybox"
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PLUGIN = "io.containerd.runtime.v2.task"
NS = f"tasks{os.getpid()}"  # unique: runc state (/run/containerd/runc/<ns>/<id>) is host-wide


def _shims() -> list[str]:
    shims = ["go"]
    try:
        shim_binary.resolve("io.containerd.aiorunc.v2")
        shims.append("aiorunc")
    except Exception:
        pass
    return shims


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed")


def task_config(shim: str) -> TaskConfig:
    if shim == "go":
        if not os.path.exists(GO_SHIM):
            pytest.skip(f"{GO_SHIM} is missing (apt-get install containerd)")
        return TaskConfig(runtimes={"io.containerd.runc.v2": RuntimeConfig(path=GO_SHIM)})
    return TaskConfig()


def spec(args: list[str], *, terminal: bool = False, cid: str = "c") -> bytes:
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
            "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
    return json.dumps({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs"},
        "hostname": cid,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": f"/aioc-test/{cid}",
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }).encode()


def exec_spec(args: list[str]) -> pb.Any:
    proc = json.loads(spec(args))["process"]
    return pb.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                  value=json.dumps(proc).encode())


class Env:
    """A daemon (in-process) plus stubs and a busybox rootfs."""

    def __init__(self, base: Path, daemon: Daemon, channel: Channel) -> None:
        self.base = base
        self.daemon = daemon
        md = {"containerd-namespace": NS}
        self.containers = capi.ContainersStub(channel, metadata=md)
        self.tasks = tapi.TasksStub(channel, metadata=md)
        self.rootfs = busybox_rootfs(base / "rootfs")
        self.fifos = base / "fifos"
        self.fifos.mkdir()

    @property
    def bundles(self) -> Path:
        return Path(self.daemon.config.state) / PLUGIN / NS

    async def container(self, cid: str, args: list[str], *, terminal: bool = False) -> None:
        await self.containers.create(capi.CreateContainerRequest(container=capi.Container(
            id=cid, runtime=capi.ContainerRuntime(name="io.containerd.runc.v2"),
            spec=pb.Any(type_url=SPEC_URL, value=spec(args, terminal=terminal, cid=cid)))))

    def rootfs_mounts(self) -> list[ctypes.Mount]:
        return [ctypes.Mount(type="bind", source=str(self.rootfs), options=["rbind", "rw"])]

    def fifo(self, name: str) -> str:
        path = self.fifos / name
        os.mkfifo(path)
        return str(path)

    def release_fifos(self) -> None:
        """Unblock readers still waiting in open() (a failed test), so no thread hangs."""
        for path in self.fifos.iterdir():
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    async def create(self, cid: str, args: list[str], **io: str) -> tuple[int, asyncio.Future[bytes]]:
        """Container + task with stdout to a FIFO; returns (pid, future of the whole output)."""
        await self.container(cid, args)
        out, reader = self.output(f"{cid}-stdout")
        err, _ = self.output(f"{cid}-stderr")
        r = await self.tasks.create(tapi.CreateTaskRequest(
            container_id=cid, rootfs=self.rootfs_mounts(), stdout=out, stderr=err, **io))
        return r.pid, reader

    def output(self, name: str) -> tuple[str, asyncio.Future[bytes]]:
        """A FIFO and the future of everything written to it (until the last writer closes)."""
        path = self.fifo(name)
        return path, asyncio.get_running_loop().run_in_executor(None, _read_fifo, path)


async def _scrape(env: Env) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(
            f"http://{env.daemon.metrics_address}/v1/metrics") as r:
        return await r.text()


def _read_fifo(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@contextlib.asynccontextmanager
async def running_env(shim: str) -> AsyncIterator[Env]:
    _need_root()
    base = short_tmp()
    cfg = make_config(base)
    cfg.plugins[PLUGIN] = task_config(shim)
    cfg.metrics.address = "127.0.0.1:0"
    try:
        async with Daemon(cfg) as d:
            plugin = d.plugins.get(f"{PLUGIN}")
            assert plugin.ok, plugin.error
            channel = Channel(path=d.address)
            env = Env(base, d, channel)
            try:
                yield env
            finally:
                channel.close()
                # leave no task running behind a failed test
                for t in plugin.instance.list():
                    with contextlib.suppress(Exception):
                        await t.kill(9, all=True)
                        await asyncio.wait_for(t.wait(), 5)
                    with contextlib.suppress(Exception):
                        await plugin.instance.delete(t.namespace, t.id)
                env.release_fifos()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _runc_state_dirs():
    """Remove the runc state folders the shims leave for our namespace."""
    yield
    for root in ("/run/containerd/runc", "/run/aiocontainerd/runc"):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(root, NS))


@pytest.fixture(params=_shims())
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    async with running_env(request.param) as e:
        yield e


async def test_echo_hi_wait_delete(env: Env) -> None:
    pid, out = await env.create("c1", ["echo", "hi"])
    assert pid > 0
    got = await env.tasks.get(tapi.GetRequest(container_id="c1"))
    assert got.process.status == ptypes.Status.CREATED
    assert (env.bundles / "c1" / "config.json").exists()
    assert os.path.islink(env.bundles / "c1" / "work")
    assert (env.bundles / "c1" / "address").exists()
    wait = asyncio.ensure_future(env.tasks.wait(tapi.WaitRequest(container_id="c1")))
    await env.tasks.start(tapi.StartRequest(container_id="c1"))
    w = await asyncio.wait_for(wait, 20)
    assert w.exit_status == 0
    assert await asyncio.wait_for(out, 10) == b"hi\n"
    d = await env.tasks.delete(tapi.DeleteTaskRequest(container_id="c1"))
    assert d.exit_status == 0 and d.pid == pid
    assert not (env.bundles / "c1").exists()
    assert not [p for p in mount_points() if "/c1/" in p or p.endswith("/c1/rootfs")]
    with pytest.raises(GRPCError) as e:
        await env.tasks.get(tapi.GetRequest(container_id="c1"))
    assert e.value.status == GStatus.NOT_FOUND


async def test_exit_code_and_errors(env: Env) -> None:
    await env.create("c2", ["sh", "-c", "exit 7"])
    with pytest.raises(GRPCError) as e:
        await env.tasks.create(tapi.CreateTaskRequest(container_id="c2", rootfs=env.rootfs_mounts()))
    assert e.value.status == GStatus.ALREADY_EXISTS
    await env.tasks.start(tapi.StartRequest(container_id="c2"))
    w = await asyncio.wait_for(env.tasks.wait(tapi.WaitRequest(container_id="c2")), 20)
    assert w.exit_status == 7
    d = await env.tasks.delete(tapi.DeleteTaskRequest(container_id="c2"))
    assert d.exit_status == 7
    with pytest.raises(GRPCError) as e:
        await env.tasks.start(tapi.StartRequest(container_id="nosuch"))
    assert e.value.status == GStatus.NOT_FOUND


async def test_exec_kill_list_pids(env: Env) -> None:
    await env.create("c3", ["sleep", "1000"])
    await env.tasks.start(tapi.StartRequest(container_id="c3"))
    ls = await env.tasks.list(tapi.ListTasksRequest())
    assert [(t.id, t.status) for t in ls.tasks] == [("c3", ptypes.Status.RUNNING)]
    pids = await env.tasks.list_pids(tapi.ListPidsRequest(container_id="c3"))
    assert len(pids.processes) >= 1
    out, reader = env.output("e1-stdout")
    err, _ = env.output("e1-stderr")
    await env.tasks.exec(tapi.ExecProcessRequest(container_id="c3", exec_id="e1", stdout=out, stderr=err,
                                                 spec=exec_spec(["sh", "-c", "echo from-exec; exit 3"])))
    await env.tasks.start(tapi.StartRequest(container_id="c3", exec_id="e1"))
    w = await asyncio.wait_for(env.tasks.wait(tapi.WaitRequest(container_id="c3", exec_id="e1")), 20)
    assert w.exit_status == 3
    assert await asyncio.wait_for(reader, 10) == b"from-exec\n"
    d = await env.tasks.delete_process(tapi.DeleteProcessRequest(container_id="c3", exec_id="e1"))
    assert d.id == "e1" and d.exit_status == 3
    m = await env.tasks.metrics(tapi.MetricsRequest(filters=["id==c3"]))
    assert [x.id for x in m.metrics] == ["c3"] and m.metrics[0].data.type_url
    text = await _scrape(env)
    assert f'container_id="c3",namespace="{NS}"' in text, text[-2000:]
    assert "container_pids_current" in text
    await env.tasks.pause(tapi.PauseTaskRequest(container_id="c3"))
    got = await env.tasks.get(tapi.GetRequest(container_id="c3"))
    assert got.process.status == ptypes.Status.PAUSED
    await env.tasks.resume(tapi.ResumeTaskRequest(container_id="c3"))
    with pytest.raises(GRPCError) as e:
        await env.tasks.delete(tapi.DeleteTaskRequest(container_id="c3"))
    assert e.value.status in (GStatus.FAILED_PRECONDITION, GStatus.UNKNOWN)  # 1.6 shim: Unknown
    await env.tasks.kill(tapi.KillRequest(container_id="c3", signal=signal.SIGKILL))
    w = await asyncio.wait_for(env.tasks.wait(tapi.WaitRequest(container_id="c3")), 20)
    assert w.exit_status == 137
    await env.tasks.delete(tapi.DeleteTaskRequest(container_id="c3"))
    assert not (env.bundles / "c3").exists()


async def test_rootfs_from_the_container_snapshot(env: Env) -> None:
    """No rootfs in the request: the container's snapshot mounts are used."""
    md = env.daemon.plugins.get("io.containerd.metadata.v1.lmdb").instance
    await env.container("c5", ["sh", "-c", "cat /marker"])  # makes the namespace
    await env.containers.delete(capi.DeleteContainerRequest(id="c5"))
    # under a lease until the container holds it, as a client does: an unreferenced
    # snapshot is garbage for the next collection
    await md.leases.create(NS, "c5-lease")
    mounts = await md.snapshotters["native"].prepare(NS, "c5-snap", "", lease="c5-lease")
    assert mounts[0].type == "bind"
    src = Path(mounts[0].source)
    shutil.copytree(env.rootfs, src, symlinks=True, dirs_exist_ok=True)
    (src / "marker").write_text("from-snapshot\n")
    await env.containers.create(capi.CreateContainerRequest(container=capi.Container(
        id="c5", runtime=capi.ContainerRuntime(name="io.containerd.runc.v2"), snapshotter="native",
        snapshot_key="c5-snap",
        spec=pb.Any(type_url=SPEC_URL, value=spec(["sh", "-c", "cat /marker"], cid="c5")))))
    out, reader = env.output("c5-stdout")
    err, _ = env.output("c5-stderr")
    await env.tasks.create(tapi.CreateTaskRequest(container_id="c5", stdout=out, stderr=err))
    await env.tasks.start(tapi.StartRequest(container_id="c5"))
    w = await asyncio.wait_for(env.tasks.wait(tapi.WaitRequest(container_id="c5")), 20)
    assert w.exit_status == 0
    assert await asyncio.wait_for(reader, 10) == b"from-snapshot\n"
    await env.tasks.delete(tapi.DeleteTaskRequest(container_id="c5"))
    assert not (env.bundles / "c5").exists()


async def test_failed_create_leaves_nothing(env: Env) -> None:
    await env.container("bad", ["/no/such/binary"])
    with pytest.raises(GRPCError):
        await env.tasks.create(tapi.CreateTaskRequest(container_id="bad", rootfs=env.rootfs_mounts()))
    assert not (env.bundles / "bad").exists()
    assert not [p for p in mount_points() if "/bad/" in p or p.endswith("/bad/rootfs")]
    with pytest.raises(GRPCError) as e:
        await env.tasks.get(tapi.GetRequest(container_id="bad"))
    assert e.value.status == GStatus.NOT_FOUND


async def _shim_pid(env: Env, cid: str) -> int:
    """The pid of the shim serving ``cid`` (its Connect answer)."""
    manager = env.daemon.plugins.get(PLUGIN).instance
    return (await manager.get(NS, cid).shim.connect_info()).shim_pid


async def test_killed_shim_is_cleaned_up(env: Env) -> None:
    await env.create("c4", ["sleep", "1000"])
    await env.tasks.start(tapi.StartRequest(container_id="c4"))
    wait = asyncio.ensure_future(env.tasks.wait(tapi.WaitRequest(container_id="c4")))
    bundle = env.bundles / "c4"
    os.kill(await _shim_pid(env, "c4"), signal.SIGKILL)
    w = await asyncio.wait_for(wait, 20)
    assert w.exit_status == 255
    for _ in range(100):
        if not bundle.exists():
            break
        await asyncio.sleep(0.1)
    assert not bundle.exists()
    assert not [p for p in mount_points() if "/c4/" in p or p.endswith("/c4/rootfs")]
    with pytest.raises(GRPCError) as e:
        await env.tasks.get(tapi.GetRequest(container_id="c4"))
    assert e.value.status == GStatus.NOT_FOUND
    assert (await env.tasks.list(tapi.ListTasksRequest())).tasks == []


# -- restart (daemon as a process) -------------------------------------------------------------


def _ctr(d: DaemonProcess, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return d.ctr(*args, namespace=NS, check=check)


def _daemon_process(shim: str) -> DaemonProcess:
    """A daemon process (not started) whose ``io.containerd.runc.v2`` is ``shim``."""
    _need_root()
    if shutil.which("ctr") is None:
        pytest.skip("the real ctr is not installed")
    base = short_tmp()
    cfg = base / "config.toml"
    if shim == "go":
        task_config(shim)
        cfg.write_text(f'version = 3\n[plugins."{PLUGIN}".runtimes."io.containerd.runc.v2"]\n'
                       f'path = "{GO_SHIM}"\n')
    else:
        cfg.write_text("version = 3\n")
    return DaemonProcess(base, "--config", str(cfg))


@contextlib.contextmanager
def _running_daemon(shim: str) -> Iterator[DaemonProcess]:
    """``_daemon_process(shim)`` started; stopped and its folder removed afterwards."""
    d = _daemon_process(shim)
    try:
        d.start()
        yield d
    finally:
        if d.proc is not None:
            d.stop()
        shutil.rmtree(d.base, ignore_errors=True)


def _kill_and_delete(d: DaemonProcess, id: str) -> None:
    """SIGKILL task ``id``, wait until ``ctr task ls`` shows it STOPPED, delete it."""
    _ctr(d, "task", "kill", "-s", "SIGKILL", id)
    assert wait_until(lambda: "STOPPED" in _ctr(d, "task", "ls").stdout, 20)
    _ctr(d, "task", "delete", id)


@pytest.mark.parametrize("shim", _shims())
def test_real_ctr_run(shim: str) -> None:
    """``ctr run --rm`` (containerd 1.6's ctr) against our daemon: output and exit status."""
    from tests.support.images import busybox_image, oci_layout_tar

    with _running_daemon(shim) as d:
        archive = d.base / "busybox.tar"
        image = busybox_image()
        archive.write_bytes(oci_layout_tar(image, "latest", image_name="docker.io/library/busybox:latest"))
        _ctr(d, "images", "import", str(archive))
        img = "docker.io/library/busybox:latest"
        r = _ctr(d, "run", "--rm", img, "k1", "echo", "hi")
        assert r.stdout == "hi\n"
        r = _ctr(d, "run", "--rm", img, "k2", "sh", "-c", "exit 7", check=False)
        assert r.returncode == 7, r.stderr
        _ctr(d, "run", "-d", img, "k3", "sleep", "1000")
        assert "RUNNING" in _ctr(d, "task", "ls").stdout
        r = _ctr(d, "task", "exec", "--exec-id", "e1", "k3", "echo", "in-exec")
        assert r.stdout == "in-exec\n"
        _ctr(d, "task", "pause", "k3")
        assert "PAUSED" in _ctr(d, "task", "ls").stdout
        _ctr(d, "task", "resume", "k3")
        assert "k3" in _ctr(d, "task", "metrics", "k3").stdout
        _kill_and_delete(d, "k3")
        _ctr(d, "containers", "rm", "k3")
        assert not list((d.state / PLUGIN / NS).iterdir())


@pytest.mark.parametrize("shim", _shims())
def test_restart_readopts_running_task(shim: str) -> None:
    with _running_daemon(shim) as d:
        rootfs = busybox_rootfs(d.base / "rootfs")
        asyncio.run(_create_running(d.address, rootfs, "r1"))
        d.stop(signal.SIGKILL)
        d.start()
        ls = _ctr(d, "task", "ls").stdout
        assert "r1" in ls and "RUNNING" in ls, ls
        _kill_and_delete(d, "r1")
        assert not (d.state / PLUGIN / NS / "r1").exists()


async def _create_running(address: str, rootfs: Path, cid: str) -> None:
    await wait_serving(address, 10)
    channel = Channel(path=address)
    try:
        md = {"containerd-namespace": NS}
        containers = capi.ContainersStub(channel, metadata=md)
        tasks = tapi.TasksStub(channel, metadata=md)
        await containers.create(capi.CreateContainerRequest(container=capi.Container(
            id=cid, runtime=capi.ContainerRuntime(name="io.containerd.runc.v2"),
            spec=pb.Any(type_url=SPEC_URL, value=spec(["sleep", "1000"], cid=cid)))))
        await tasks.create(tapi.CreateTaskRequest(container_id=cid, rootfs=[
            ctypes.Mount(type="bind", source=str(rootfs), options=["rbind", "rw"])]))
        await tasks.start(tapi.StartRequest(container_id=cid))
    finally:
        channel.close()

