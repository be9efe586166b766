"""The real ``ctr`` (Debian's containerd package) against an aiocontainerd process."""

from __future__ import annotations

import asyncio
import json
import re
import signal

import pytest

from tests.conftest import DaemonProcess, need_ctr

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _ctr() -> None:
    need_ctr()


def table(output: str) -> list[list[str]]:
    """Rows of ctr's tabular output, header dropped, split on runs of whitespace."""
    return [line.split() for line in output.strip().splitlines()[1:] if line.strip()]


def test_version(daemon_process: DaemonProcess) -> None:
    out = daemon_process.ctr("version").stdout
    server = out.split("Server:", 1)[1]
    assert re.search(r"Version:\s+\d+\.\d+\.\d+", server)
    assert re.search(r"UUID:\s+[0-9a-f-]{36}", server)


def test_namespaces_lifecycle(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    d.ctr("namespaces", "create", "x", "a=1")
    assert ["x", "a=1"] in table(d.ctr("namespaces", "ls").stdout)
    d.ctr("namespaces", "label", "x", "a=2", "b=")
    assert ["x", "a=2"] in table(d.ctr("namespaces", "ls").stdout)
    d.ctr("namespaces", "label", "x", "c=3")
    assert ["x", "a=2,c=3"] in table(d.ctr("namespaces", "ls").stdout)
    d.ctr("namespaces", "label", "x", "a=")
    assert ["x", "c=3"] in table(d.ctr("namespaces", "ls").stdout)
    assert d.ctr("namespaces", "rm", "x").stdout.strip() == "x"
    assert "x" not in [row[0] for row in table(d.ctr("namespaces", "ls").stdout)]


def test_namespace_create_twice_is_already_exists(daemon_process: DaemonProcess) -> None:
    daemon_process.ctr("namespaces", "create", "dup")
    r = daemon_process.ctr("namespaces", "create", "dup", check=False)
    assert r.returncode != 0
    assert "already exists" in r.stderr


def test_ls_with_other_namespace_flag(daemon_process: DaemonProcess) -> None:
    daemon_process.ctr("namespaces", "create", "y")
    rows = table(daemon_process.ctr("namespaces", "ls", namespace="other").stdout)
    assert [r[0] for r in rows] == ["y"]


def test_plugins_ls(daemon_process: DaemonProcess) -> None:
    rows = table(daemon_process.ctr("plugins", "ls").stdout)
    status = {(r[0], r[1]): r[-1] for r in rows}
    for plugin in [("io.containerd.metadata.v1", "lmdb"), ("io.containerd.grpc.v1", "namespaces"),
                   ("io.containerd.grpc.v1", "version"), ("io.containerd.grpc.v1", "introspection"),
                   ("io.containerd.grpc.v1", "containers"), ("io.containerd.grpc.v1", "healthcheck")]:
        assert status[plugin] == "ok", rows


def test_plugins_ls_filter(daemon_process: DaemonProcess) -> None:
    rows = table(daemon_process.ctr("plugins", "ls", "type==io.containerd.metadata.v1").stdout)
    assert [(r[0], r[1]) for r in rows] == [("io.containerd.metadata.v1", "lmdb")]


def test_containers_ls_answers_in_a_namespace(daemon_process: DaemonProcess) -> None:
    r = daemon_process.ctr("containers", "ls", namespace="x")
    assert table(r.stdout) == []
    assert r.stdout.split() == ["CONTAINER", "IMAGE", "RUNTIME"]


def test_unimplemented_service_is_unimplemented_not_unknown(daemon_process: DaemonProcess) -> None:
    # Go clients (ctr) read the status of an unknown method; it must be a clean
    # Unimplemented, not a transport error. The sandbox store is not served.
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    from aiocontainerd import Client
    from aiocontainerd.api.containerd.services.sandbox import v1 as api

    async def call() -> GRPCError:
        async with Client(daemon_process.address) as c:
            stub = api.StoreStub(c._channel, metadata={"containerd-namespace": "default"})
            with pytest.raises(GRPCError) as e:
                await stub.list(api.StoreListRequest())
            return e.value

    err = asyncio.run(call())
    assert err.status is Status.UNIMPLEMENTED
    assert err.message == "unknown service or method"


def test_non_empty_namespace_cannot_be_removed(daemon_process: DaemonProcess) -> None:
    from aiocontainerd import Client
    from aiocontainerd.api.containerd.services.containers import v1 as api
    from aiocontainerd.api.google.protobuf import Any

    async def create() -> None:
        async with Client(daemon_process.address) as c:
            stub = api.ContainersStub(c._channel, metadata={"containerd-namespace": "busy"})
            await stub.create(api.CreateContainerRequest(container=api.Container(
                id="c1", runtime=api.ContainerRuntime(name="io.containerd.runc.v2"),
                spec=Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
                         value=b"{}"))))

    import asyncio
    asyncio.run(create())
    r = daemon_process.ctr("namespaces", "rm", "busy", check=False)
    assert r.returncode != 0
    assert "must be empty" in r.stderr
    assert table(daemon_process.ctr("containers", "ls", namespace="busy").stdout)[0][0] == "c1"
    info = json.loads(daemon_process.ctr("containers", "info", "c1", namespace="busy").stdout)
    assert info["ID"] == "c1" and info["Runtime"]["Name"] == "io.containerd.runc.v2"
    daemon_process.ctr("containers", "rm", "c1", namespace="busy")
    assert daemon_process.ctr("namespaces", "rm", "busy").stdout.strip() == "busy"


def test_invalid_namespace_name_is_invalid_argument(daemon_process: DaemonProcess) -> None:
    r = daemon_process.ctr("namespaces", "create", "bad!name", check=False)
    assert r.returncode != 0
    assert "invalid argument" in r.stderr
    r = daemon_process.ctr("containers", "ls", namespace="bad!name", check=False)
    assert "invalid argument" in r.stderr
    # the daemon goes on serving
    daemon_process.ctr("namespaces", "create", "fine")


def test_restart_keeps_namespaces_and_uuid(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    d.ctr("namespaces", "create", "kept", "team=a")
    uuid_before = re.search(r"UUID:\s+(\S+)", d.ctr("version").stdout).group(1)
    assert d.stop() == 0
    d.start()
    assert ["kept", "team=a"] in table(d.ctr("namespaces", "ls").stdout)
    uuid_after = re.search(r"UUID:\s+(\S+)", d.ctr("version").stdout).group(1)
    assert uuid_after == uuid_before


def test_sigint_and_sigterm_stop_cleanly(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    assert d.stop(signal.SIGINT) == 0
    assert "aiocontainerd stopped" in d.log.read_text()
    d.start()
    assert d.stop(signal.SIGTERM) == 0
    assert not (d.state / "c.sock").exists()


def test_killed_daemon_restarts_with_data(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    d.ctr("namespaces", "create", "survivor")
    d.stop(signal.SIGKILL)
    d.start()  # the stale socket is replaced, the lock released by the kernel
    assert "survivor" in [r[0] for r in table(d.ctr("namespaces", "ls").stdout)]
