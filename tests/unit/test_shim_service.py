"""Unit tests of our shim's pure parts: command line, socket address, options, state machine."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from aiocontainerd import errors
from aiocontainerd.api.containerd.events import TaskExit
from aiocontainerd.api.containerd.runc import v1 as runcopts
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.runtimes.aiorunc import main as shim_main
from aiocontainerd.runtimes.aiorunc.process import ZERO_TIME, Container, Stdio
from aiocontainerd.runtimes.aiorunc.publisher import pack_any
from aiocontainerd.runtimes.aiorunc.service import parse_options


def test_go_flag_syntax() -> None:
    o = shim_main.Options(["-namespace", "k8s.io", "--address=/run/c.sock", "-publish-binary",
                           "/usr/bin/containerd", "-id", "c1", "-debug", "start"])
    assert (o.namespace, o.address, o.publish_binary, o.id, o.debug, o.action) == (
        "k8s.io", "/run/c.sock", "/usr/bin/containerd", "c1", True, "start")
    assert shim_main.Options(["-id", "x"]).action == ""
    with pytest.raises(SystemExit):
        shim_main.Options(["-bogus", "start"])


def test_socket_address_is_gos() -> None:
    want = hashlib.sha256(b"/run/containerd/containerd.sock/default/c1").hexdigest()
    got = shim_main.socket_address("/run/containerd/containerd.sock", "default", "c1")
    assert got == f"unix:///run/containerd/s/{want}"
    debug = shim_main.socket_address("/run/containerd/containerd.sock", "default", "c1", debug=True)
    assert debug.endswith(hashlib.sha256(b"/run/containerd/containerd.sock/default/c1/debug").hexdigest())


def test_group_annotation(tmp_path) -> None:
    assert shim_main.read_group(str(tmp_path), "c1") == "c1"
    (tmp_path / "config.json").write_text(json.dumps(
        {"annotations": {"io.kubernetes.cri.sandbox-id": "pod"}}))
    assert shim_main.read_group(str(tmp_path), "c1") == "pod"


def test_forkserver_key_is_abstract_and_per_address() -> None:
    a, b = shim_main.forkserver_key("/a.sock"), shim_main.forkserver_key("/b.sock")
    assert a.startswith("\0aiorunc-forkserver-") and a != b


def test_runtime_options() -> None:
    assert parse_options(None).binary_name == ""
    o = runcopts.Options(binary_name="crun", root="/r", systemd_cgroup=True)
    for url in ("containerd.runc.v1.Options", "type.googleapis.com/containerd.runc.v1.Options",
                "io.containerd.runc.v1.Options"):
        got = parse_options(pb.Any(type_url=url, value=bytes(o)))
        assert (got.binary_name, got.root, got.systemd_cgroup) == ("crun", "/r", True)
    from aiocontainerd.api.runtimeoptions.v1 import Options as Cri

    cri = Cri(config_body=b'BinaryName = "runsc"\nRoot = "/x"\n')
    got = parse_options(pb.Any(type_url="runtimeoptions.v1.Options", value=bytes(cri)))
    assert (got.binary_name, got.root) == ("runsc", "/x")
    with pytest.raises(errors.InvalidArgument):
        parse_options(pb.Any(type_url="foo.Bar", value=b"\x01"))


def test_event_any_uses_gos_type_url() -> None:
    a = pack_any(TaskExit(container_id="c", exit_status=7))
    assert a.type_url == "containerd.events.TaskExit"
    assert TaskExit.parse(a.value).exit_status == 7


async def test_state_machine(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(
        {"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}))
    c = Container("c1", str(tmp_path), None, Stdio())
    p = c.init
    assert not c.should_kill_all_on_exit()
    assert p.exited_at().seconds == ZERO_TIME
    p.check_start()
    p.check_delete()
    with pytest.raises(errors.FailedPrecondition):
        p.check_pause()
    p.state = "running"
    with pytest.raises(errors.FailedPrecondition, match="cannot start a running process"):
        p.check_start()
    with pytest.raises(errors.FailedPrecondition):
        p.check_delete()
    p.check_pause()
    p.check_kill()
    p.set_exited(137)
    await asyncio.wait_for(p.exited.wait(), 1)
    assert p.state == "stopped" and p.exit_status == 137 and p.exited_at().seconds > 0
    with pytest.raises(errors.NotFound, match="process already finished"):
        p.check_kill()
    with pytest.raises(errors.FailedPrecondition, match="stopped"):
        p.check_start()
    p.check_delete()
    with pytest.raises(errors.NotFound):
        c.process("nope")
    (tmp_path / "config.json").write_text(json.dumps({"linux": {"namespaces": [
        {"type": "pid", "path": "/proc/1/ns/pid"}]}}))
    assert c.should_kill_all_on_exit()


def test_atomic_write_has_no_shared_temporary_name(tmp_path) -> None:
    """``start`` and a forked shim both wrote ``shim.pid`` through ``shim.pid.tmp``: one
    renamed the other's file away (FileNotFoundError).  Concurrent writers must not clash."""
    import threading

    path = str(tmp_path / "shim.pid")
    failures: list[BaseException] = []

    def writer(value: str) -> None:
        try:
            for _ in range(400):
                shim_main._atomic_write(path, value)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=writer, args=(str(n),)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert (tmp_path / "shim.pid").read_text() in {"0", "1", "2", "3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shim.pid"]


def test_forked_shim_leaves_shim_pid_to_a_waiting_start(tmp_path, monkeypatch) -> None:
    """One writer of shim.pid: the shim writes it only when nobody learnt its pid."""
    from aiocontainerd.runtimes.aiorunc import shim

    monkeypatch.chdir(tmp_path)
    cfg = shim.ShimConfig(namespace="n", id="c", address="", ttrpc_address="", write_pid=False)
    shim._write_self(cfg)
    assert not (tmp_path / "shim.pid").exists()
    cfg.write_pid = True
    shim._write_self(cfg)
    assert (tmp_path / "shim.pid").read_text() == str(__import__("os").getpid())


async def test_shutdown_now_keeps_a_shim_with_containers(tmp_path) -> None:
    """Go's Shutdown ignores ``now``: with containers left the shim keeps serving."""
    from aiocontainerd.api.containerd.task import v2 as api
    from aiocontainerd.runtimes.aiorunc.service import TaskService
    from aiocontainerd.runtimes.aiorunc.shim import ShimConfig

    cfg = ShimConfig(namespace="n", id="c1", address="", ttrpc_address="", bundle=str(tmp_path))
    svc = TaskService(cfg, reaper=None, publisher=None)
    svc.containers["c1"] = Container("c1", str(tmp_path), None, Stdio())
    await svc.shutdown(api.ShutdownRequest(id="c1", now=True))
    await asyncio.sleep(0)
    assert not svc.shutdown_requested.is_set()
    del svc.containers["c1"]
    await svc.shutdown(api.ShutdownRequest(id="c1"))
    await asyncio.sleep(0)
    assert svc.shutdown_requested.is_set()


def test_forkserver_serve_stops_when_idle_or_daemon_gone(tmp_path) -> None:
    import socket
    import time

    from aiocontainerd.runtimes.aiorunc import forkserver

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(tmp_path / "fs.sock"))
    listener.listen(4)
    try:
        t0 = time.monotonic()
        assert forkserver.serve(listener, 0.3, check=10) == "idle"
        assert 0.25 < time.monotonic() - t0 < 2
        calls = []
        t0 = time.monotonic()
        assert forkserver.serve(listener, 60, alive=lambda: calls.append(1) or len(calls) < 3,
                                check=0.1) == "daemon gone"
        assert len(calls) == 3 and time.monotonic() - t0 < 2
    finally:
        listener.close()

    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    daemon.bind(str(tmp_path / "d.sock"))
    daemon.listen(4)
    req = {"address": str(tmp_path / "d.sock"), "ttrpc_address": str(tmp_path / "none.ttrpc")}
    assert forkserver.daemon_alive(req)
    daemon.close()                      # the socket file stays, nobody accepts: gone
    assert not forkserver.daemon_alive(req)
    (tmp_path / "d.sock").unlink()
    assert not forkserver.daemon_alive(req)
    assert forkserver.daemon_alive({"address": "", "ttrpc_address": ""})
