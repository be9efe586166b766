"""Runtime v2 shim manager, without real shims: name resolution, shim commands, start
responses, bundle layout, config, and the restart walk over fake bundles (a fake shim
served by our ttrpc server, a dead one, an orphan)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from aiocontainerd import config as config_
from aiocontainerd import ttrpc
from aiocontainerd.api.containerd.task import v2 as taskapi
from aiocontainerd.api.containerd.v1 import types as ptypes
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from aiocontainerd.metadata.containers import Container, Runtime
from aiocontainerd.runtimes.v2 import binary
from aiocontainerd.runtimes.v2.bundle import Bundle
from aiocontainerd.runtimes.v2.manager import (
    PLUGIN,
    RuntimeConfig,
    TaskConfig,
    TaskManager,
    runc_options,
    unpack_any,
)
from aiocontainerd.types import TypedValue


def _exe(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


# -- resolution ------------------------------------------------------------------------------


def test_binary_name() -> None:
    assert binary.binary_name("io.containerd.runc.v2") == "containerd-shim-runc-v2"
    assert binary.binary_name("io.containerd.kata.v2") == "containerd-shim-kata-v2"
    assert binary.binary_name("runsc.v1") == "containerd-shim-runsc-v1"
    assert binary.binary_name("nodots") == ""
    assert binary.binary_name(".x.y") == ""


def test_resolve_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = tmp_path / "path"
    venv = tmp_path / "venv"
    monkeypatch.setenv("PATH", str(on_path))
    kata = _exe(on_path / "containerd-shim-kata-v2")
    ours = _exe(venv / "containerd-shim-aiorunc-v2")
    go = _exe(tmp_path / "go" / "containerd-shim-runc-v2")
    dirs = (str(venv),)
    # by name on PATH
    assert binary.resolve("io.containerd.kata.v2", extra_dirs=dirs) == str(kata)
    # runc.v2 and aiorunc.v2 are our shim, found next to the interpreter
    assert binary.resolve("io.containerd.runc.v2", extra_dirs=dirs) == str(ours)
    assert binary.resolve("io.containerd.aiorunc.v2", extra_dirs=dirs) == str(ours)
    # an explicit path wins
    assert binary.resolve("io.containerd.runc.v2", {"io.containerd.runc.v2": str(go)},
                          extra_dirs=dirs) == str(go)
    # an absolute runtime is the binary
    assert binary.resolve(str(go), extra_dirs=dirs) == str(go)
    with pytest.raises(NotFound):
        binary.resolve("io.containerd.nosuch.v9", extra_dirs=dirs)
    with pytest.raises(NotFound):
        binary.resolve("io.containerd.runc.v2", {"io.containerd.runc.v2": str(tmp_path / "absent")})
    with pytest.raises(InvalidArgument):
        binary.resolve("relative/path", extra_dirs=dirs)
    with pytest.raises(InvalidArgument):
        binary.resolve("", extra_dirs=dirs)
    with pytest.raises(InvalidArgument):
        binary.resolve("nodots", extra_dirs=dirs)


def test_resolve_our_shim_from_the_venv() -> None:
    """The console script is installed next to the interpreter of the dev env."""
    if not os.path.exists(os.path.join(os.path.dirname(sys.executable), binary.AIORUNC_SHIM)):
        pytest.skip("package not installed with its console scripts")
    path = binary.resolve("io.containerd.aiorunc.v2")
    assert os.path.basename(path) == binary.AIORUNC_SHIM


# -- start responses and commands ----------------------------------------------------------


def test_parse_start_response_plain_and_json() -> None:
    r = binary.parse_start_response(b"unix:///run/containerd/s/abc\n")
    assert (r.address, r.version, r.protocol) == ("unix:///run/containerd/s/abc", 2, "ttrpc")
    assert r.service == "containerd.task.v2.Task"
    r = binary.parse_start_response(json.dumps(
        {"version": 2, "address": "unix:///run/x.sock", "protocol": "ttrpc"}))
    assert (r.address, r.version) == ("unix:///run/x.sock", 2)
    r = binary.parse_start_response(b'{"version":3,"address":"unix:///s","protocol":"ttrpc"}')
    assert r.service == "containerd.task.v3.Task"
    # a JSON document with an old version is read as a plain address, as containerd does
    r = binary.parse_start_response(b'{"version":1}')
    assert r.address == '{"version":1}' and r.version == 2
    assert binary.parse_start_response(r.to_json()) == r
    with pytest.raises(Unimplemented):
        binary.parse_start_response(b'{"version":9,"address":"unix:///s","protocol":"ttrpc"}')
    with pytest.raises(Unimplemented):
        binary.parse_start_response(b'{"version":2,"address":"vsock://3:1","protocol":"grpc"}')
    with pytest.raises(InvalidArgument):
        binary.parse_start_response(b"  \n")


def test_shim_command_argv_and_env(tmp_path: Path) -> None:
    cmd = binary.ShimCommand(binary="/bin/shim", id="c1", namespace="ns", bundle=str(tmp_path),
                             grpc_address="/run/a.sock", ttrpc_address="/run/a.sock.ttrpc",
                             env=("EXTRA=1",))
    argv = cmd.argv("start")
    assert argv[0] == "/bin/shim" and argv[-1] == "start"
    assert argv[1:5] == ["-namespace", "ns", "-address", "/run/a.sock"]
    assert argv[5] == "-publish-binary" and argv[7:9] == ["-id", "c1"]
    assert cmd.argv("delete", with_bundle=True)[-3:] == ["-bundle", str(tmp_path), "delete"]
    env = cmd.environ()
    assert env["TTRPC_ADDRESS"] == "/run/a.sock.ttrpc"
    assert env["GRPC_ADDRESS"] == "/run/a.sock"
    assert env["NAMESPACE"] == "ns"
    assert env["MAX_SHIM_VERSION"] == "2"
    assert env["EXTRA"] == "1"


async def test_shim_command_start_and_delete(tmp_path: Path) -> None:
    """Arguments, cwd and stdin as the shim sees them; its printed address; delete's response."""
    seen = tmp_path / "seen"
    resp = bytes(taskapi.DeleteResponse(pid=42, exit_status=137))
    (tmp_path / "resp").write_bytes(resp)
    shim = _exe(tmp_path / "shim", f"""#!/bin/sh
pwd > {seen}.cwd
echo "$@" > {seen}.args
echo "$NAMESPACE $TTRPC_ADDRESS" > {seen}.env
cat > {seen}.stdin
case "$*" in
  *start) echo unix:///run/fake.sock ;;
  *delete) cat {tmp_path}/resp ;;
esac
""")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    cmd = binary.ShimCommand(binary=str(shim), id="c1", namespace="ns", bundle=str(bundle),
                             grpc_address="/run/a.sock", ttrpc_address="/run/a.sock.ttrpc")
    r = await cmd.start(b"opts")
    assert r.address == "unix:///run/fake.sock"
    assert Path(f"{seen}.cwd").read_text().strip() == str(bundle)
    assert Path(f"{seen}.args").read_text().split()[-3:] == ["-id", "c1", "start"]
    assert Path(f"{seen}.env").read_text().split() == ["ns", "/run/a.sock.ttrpc"]
    assert Path(f"{seen}.stdin").read_bytes() == b"opts"
    d = await cmd.delete()
    assert (d.pid, d.exit_status) == (42, 137)
    failing = binary.ShimCommand(binary=str(_exe(tmp_path / "bad", "#!/bin/sh\necho boom >&2\nexit 3\n")),
                                 id="c1", namespace="ns", bundle=str(bundle),
                                 grpc_address="", ttrpc_address="")
    with pytest.raises(binary.ShimError, match="boom: exit status 3"):
        await failing.start()


# -- bundles -------------------------------------------------------------------------------


def test_bundle_layout_and_delete(tmp_path: Path) -> None:
    state, root = tmp_path / "state", tmp_path / "root"
    b = Bundle.create(state, root, "ns", "c1", b'{"ociVersion":"1.0.2"}')
    assert b.path == state / "ns" / "c1"
    assert stat.S_IMODE(b.path.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "ns").stat().st_mode) == 0o711
    assert (b.path / "config.json").read_bytes() == b'{"ociVersion":"1.0.2"}'
    assert b.rootfs.is_dir()
    assert os.readlink(b.path / "work") == str(root / "ns" / "c1")
    assert (root / "ns" / "c1").is_dir()
    with pytest.raises(AlreadyExists):
        Bundle.create(state, root, "ns", "c1", None)
    b.write_address("unix:///a")
    b.write_address("unix:///b")            # the shim's own address is kept
    assert b.read_address() == "unix:///a"
    b.write_shim_binary("/usr/bin/shim")
    assert b.read_shim_binary() == "/usr/bin/shim"
    (b.path / "bootstrap.json").write_text('{"version":2,"address":"unix:///boot","protocol":"ttrpc"}')
    assert b.read_address() == "unix:///boot"
    b.delete()
    assert not b.path.exists() and not (root / "ns" / "c1").exists()
    assert not list((state / "ns").iterdir())
    b.delete()  # twice is fine
    with pytest.raises(InvalidArgument):
        Bundle.create(state, root, "ns", "bad/id", None)


# -- config ------------------------------------------------------------------------------------


def test_config_and_runc_options(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text('version = 3\n[plugins."io.containerd.runtime.v2.task".runtimes."io.containerd.runc.v2"]\n'
                 'path = "/usr/bin/containerd-shim-runc-v2"\n'
                 'options = { BinaryName = "crun", SystemdCgroup = true, Root = "/run/crun" }\n')
    cfg = config_.load(f, {PLUGIN.uri: TaskConfig})
    tc = cfg.plugins[PLUGIN.uri]
    rc = tc.runtimes["io.containerd.runc.v2"]
    assert rc.path == "/usr/bin/containerd-shim-runc-v2"
    opts = runc_options(rc.options)
    assert (opts.binary_name, opts.systemd_cgroup, opts.root) == ("crun", True, "/run/crun")
    m = TaskManager(state=tmp_path / "s", root=tmp_path / "r", config=tc)
    any_ = m.default_options("io.containerd.runc.v2")
    assert any_.type_url == "containerd.runc.v1.Options"
    assert m.default_options("io.containerd.other.v1") is None
    with pytest.raises(ValueError, match="unknown runc option"):
        RuntimeConfig(options={"NoSuchOption": 1})
    f.write_text('version = 3\n[plugins."io.containerd.runtime.v2.task".runtimes."x.y"]\n'
                 'options = { Bogus = 1 }\n')
    with pytest.raises(config_.ConfigError):
        config_.load(f, {PLUGIN.uri: TaskConfig})


def test_unpack_any_with_go_type_urls() -> None:
    from aiocontainerd.api.io.containerd.cgroups import v1 as cg1

    m = cg1.Metrics(pids=cg1.PidsStat(current=3, limit=10))
    for url in ("io.containerd.cgroups.v1.Metrics", "type.googleapis.com/io.containerd.cgroups.v1.Metrics"):
        got = unpack_any(pb.Any(type_url=url, value=bytes(m)))
        assert isinstance(got, cg1.Metrics) and got.pids.current == 3
    assert unpack_any(pb.Any(type_url="x.Unknown", value=b"")) is None


# -- restart walk --------------------------------------------------------------------------------


class FakeContainers:
    def __init__(self, records: dict[tuple[str, str], Container]) -> None:
        self.records = records

    def get(self, ns: str, id_: str) -> Container:
        try:
            return self.records[(ns, id_)]
        except KeyError:
            raise NotFound(f"container {id_!r} in namespace {ns!r}: not found") from None


class FakeExchange:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def publish(self, ns: str, topic: str, event: object) -> None:
        self.events.append((ns, topic, event))


def _container(id_: str) -> Container:
    return Container(id=id_, runtime=Runtime("io.containerd.runc.v2"),
                     spec=TypedValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}"))


def _fake_bundle(state: Path, root: Path, ns: str, id_: str, address: str, shim: Path) -> Bundle:
    b = Bundle.create(state, root, ns, id_, b"{}")
    b.write_address(address)
    b.write_shim_binary(str(shim))
    return b


async def _fake_shim_server(address: str, calls: list[str]) -> ttrpc.Server:
    """A shim serving Connect/State/Shutdown/Kill for task ``live``."""
    async def connect(req: taskapi.ConnectRequest) -> taskapi.ConnectResponse:
        calls.append("Connect")
        return taskapi.ConnectResponse(shim_pid=1, task_pid=4242, version="fake")

    async def state(req: taskapi.StateRequest) -> taskapi.StateResponse:
        calls.append("State " + ttrpc.namespace())
        return taskapi.StateResponse(id=req.id, pid=4242, status=ptypes.Status.RUNNING)

    async def shutdown(req: taskapi.ShutdownRequest) -> pb.Empty:
        calls.append("Shutdown")
        return pb.Empty()

    server = ttrpc.Server()
    server.register("containerd.task.v2.Task", {
        "Connect": (taskapi.ConnectRequest, connect),
        "State": (taskapi.StateRequest, state),
        "Shutdown": (taskapi.ShutdownRequest, shutdown),
    })
    await server.start(address)
    return server


async def test_restart_walk(tmp_path: Path) -> None:
    state, root = tmp_path / "state", tmp_path / "root"
    log = tmp_path / "shim.log"
    shim = _exe(tmp_path / "shim", f'#!/bin/sh\necho "$@" >> {log}\n')
    sock = tmp_path / "live.sock"
    calls: list[str] = []
    server = await _fake_shim_server(str(sock), calls)
    try:
        _fake_bundle(state, root, "ns", "live", f"unix://{sock}", shim)
        _fake_bundle(state, root, "ns", "dead", f"unix://{tmp_path}/gone.sock", shim)
        _fake_bundle(state, root, "ns", "orphan", f"unix://{tmp_path}/gone2.sock", shim)
        (state / "ns" / "empty").mkdir()
        (root / "ns" / "stale-work").mkdir(parents=True)
        metadata = SimpleNamespace(containers=FakeContainers(
            {("ns", "live"): _container("live"), ("ns", "dead"): _container("dead")}), snapshotters={})
        exchange = FakeExchange()
        m = TaskManager(state=state, root=root, metadata=metadata, exchange=exchange,
                        grpc_address=str(tmp_path / "c.sock"))
        await m.load()
        # the live shim is adopted, its pid from State, the namespace in the metadata
        t = m.get("ns", "live")
        assert t.pid == 4242
        assert "Connect" in calls and "State ns" in calls
        assert (state / "ns" / "live").exists()
        # the dead one: <shim> delete ran in its bundle, bundle gone, exit 255 published
        assert not (state / "ns" / "dead").exists()
        with pytest.raises(NotFound):
            m.get("ns", "dead")
        topics = [(ns, topic) for ns, topic, _ in exchange.events]
        assert topics == [("ns", "/tasks/exit"), ("ns", "/tasks/delete")]
        exit_ev = exchange.events[0][2]
        assert (exit_ev.container_id, exit_ev.id, exit_ev.exit_status) == ("dead", "dead", 255)
        assert exit_ev.exited_at is not None and exit_ev.exited_at.seconds > 0
        assert exchange.events[1][2].exit_status == 255
        lines = log.read_text().splitlines()
        assert any("-id dead" in line and line.endswith("delete") for line in lines)
        # no container record: removed; empty bundle removed; stale work folder removed
        assert not (state / "ns" / "orphan").exists()
        assert not (state / "ns" / "empty").exists()
        assert not (root / "ns" / "stale-work").exists()
        assert (root / "ns" / "live").exists()
        assert [x.id for x in m.list("ns")] == ["live"]
        # closing the daemon's side leaves the shim alone (no Shutdown)
        await m.close()
        assert "Shutdown" not in calls
    finally:
        await server.close()


async def test_shim_dropping_connection_is_cleaned_up(tmp_path: Path) -> None:
    """A live shim that goes away: the task is cleaned up, Wait answers 255, calls NotFound."""
    state, root = tmp_path / "state", tmp_path / "root"
    shim = _exe(tmp_path / "shim")
    sock = tmp_path / "live.sock"
    server = await _fake_shim_server(str(sock), [])
    _fake_bundle(state, root, "ns", "live", f"unix://{sock}", shim)
    metadata = SimpleNamespace(containers=FakeContainers({("ns", "live"): _container("live")}),
                               snapshotters={})
    exchange = FakeExchange()
    m = TaskManager(state=state, root=root, metadata=metadata, exchange=exchange)
    await m.load()
    t = m.get("ns", "live")
    await server.close()
    exit_ = await t.wait()
    assert exit_.status == 255
    await t.cleaned.wait()
    assert not (state / "ns" / "live").exists()
    with pytest.raises(NotFound):
        m.get("ns", "live")
    with pytest.raises(NotFound):
        await t.state()
    assert [topic for _, topic, _ in exchange.events] == ["/tasks/exit", "/tasks/delete"]
