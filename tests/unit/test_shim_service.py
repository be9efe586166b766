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
