"""The gRPC services through a real socket, against a daemon in the test's own loop."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocontainerd import Client, Daemon, builtins
from aiocontainerd.api.containerd.services.containers import v1 as containers_api
from aiocontainerd.api.containerd.services.sandbox import v1 as sandbox_api
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.api.grpc.health import v1 as health_api
from aiocontainerd.config import MetricsConfig
from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from aiocontainerd.plugin import GRPC, Registration, SkipPlugin
from tests.conftest import make_config

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


async def test_version_and_server(client: Client, daemon: Daemon) -> None:
    v = await client.version()
    assert v.version and v.revision
    s = await client.server()
    assert s.pid == os.getpid() and len(s.uuid) == 36 and s.pidns > 0


async def test_namespaces_through_the_client(client: Client) -> None:
    await client.namespaces.create("a", {"x": "1"})
    with pytest.raises(AlreadyExists):
        await client.namespaces.create("a")
    assert (await client.namespaces.set_label("a", "y", "2")).labels == {"x": "1", "y": "2"}
    assert (await client.namespaces.set_label("a", "x", "")).labels == {"y": "2"}
    assert (await client.namespaces.update("a", {"z": "3"})).labels == {"z": "3"}
    with pytest.raises(InvalidArgument):
        await client.namespaces.update("a", {}, ["name"])
    with pytest.raises(InvalidArgument):
        await client.namespaces.create("Not Valid")
    await client.namespaces.delete("a")
    with pytest.raises(NotFound):
        await client.namespaces.get("a")


def _container(id_: str, **kw) -> containers_api.Container:
    return containers_api.Container(
        id=id_, runtime=containers_api.ContainerRuntime(name="io.containerd.runc.v2"),
        spec=pb.Any(type_url=SPEC_URL, value=b'{"ociVersion":"1.1.0"}'), **kw)


async def test_containers_service_and_namespace_header(client: Client) -> None:
    ns_a = containers_api.ContainersStub(client._channel, metadata={"containerd-namespace": "a"})
    ns_b = containers_api.ContainersStub(client._channel, metadata={"containerd-namespace": "b"})
    created = (await ns_a.create(containers_api.CreateContainerRequest(
        container=_container("c1", labels={"app": "web"})))).container
    assert created.created_at.seconds > 1_700_000_000
    got = (await ns_a.get(containers_api.GetContainerRequest(id="c1"))).container
    assert got.created_at == created.created_at  # nanoseconds survive the round trip
    assert got.spec.type_url == SPEC_URL
    with pytest.raises(GRPCError) as e:
        await ns_b.get(containers_api.GetContainerRequest(id="c1"))
    assert e.value.status == Status.NOT_FOUND
    listed = [m.container.id async for m in ns_a.list_stream(containers_api.ListContainersRequest(
        filters=["labels.app==web"]))]
    assert listed == ["c1"]
    with pytest.raises(GRPCError) as e:
        await ns_a.list(containers_api.ListContainersRequest(filters=["labels.app=="]))
    assert e.value.status == Status.INVALID_ARGUMENT
    with pytest.raises(FailedPrecondition, match="must be empty"):
        await client.namespaces.delete("a")
    await ns_a.delete(containers_api.DeleteContainerRequest(id="c1"))
    await client.namespaces.delete("a")


async def test_invalid_namespace_header_is_invalid_argument(client: Client) -> None:
    stub = containers_api.ContainersStub(client._channel, metadata={"containerd-namespace": "a b"})
    with pytest.raises(GRPCError) as e:
        await stub.list(containers_api.ListContainersRequest())
    assert e.value.status == Status.INVALID_ARGUMENT


async def test_unimplemented_service_answers_unimplemented(client: Client) -> None:
    stub = sandbox_api.StoreStub(client._channel)
    with pytest.raises(GRPCError) as e:
        await stub.list(sandbox_api.StoreListRequest())
    assert e.value.status == Status.UNIMPLEMENTED


async def test_health(client: Client) -> None:
    stub = health_api.HealthStub(client._channel)
    r = await stub.check(health_api.HealthCheckRequest())
    assert r.status == health_api.HealthCheckResponseServingStatus.SERVING


async def test_plugins_report_failures_and_skips(tmp_short: Path) -> None:
    async def broken(ctx):
        raise RuntimeError("disk on fire")

    async def skipped(ctx):
        raise SkipPlugin("only on windows")

    regs = [*builtins.registrations(), Registration(GRPC, "broken", broken),
            Registration("io.containerd.snapshotter.v1", "windows", skipped)]
    async with Daemon(make_config(tmp_short), plugins=regs) as d, Client(d.address) as c:
        plugins = {(p.type, p.id): p for p in await c.plugins()}
        assert plugins[(GRPC, "broken")].status == "error"
        assert "disk on fire" in plugins[(GRPC, "broken")].error
        assert plugins[("io.containerd.snapshotter.v1", "windows")].status == "skip"
        assert plugins[(GRPC, "namespaces")].status == "ok"
        assert plugins[(GRPC, "namespaces")].requires == ("io.containerd.metadata.v1",
                                                          "io.containerd.event.v1")
        only = await c.plugins(["type==io.containerd.metadata.v1"])
        assert [(p.type, p.id) for p in only] == [("io.containerd.metadata.v1", "lmdb")]
        await c.namespaces.create("still-serving")


async def test_required_plugin_failure_stops_start(tmp_short: Path) -> None:
    from aiocontainerd.plugin import PluginError

    async def broken(ctx):
        raise RuntimeError("disk on fire")

    cfg = make_config(tmp_short)
    cfg.required_plugins = [f"{GRPC}.broken"]
    d = Daemon(cfg, plugins=[*builtins.registrations(), Registration(GRPC, "broken", broken)])
    with pytest.raises(PluginError, match="disk on fire"):
        await d.start()
    assert not os.path.exists(cfg.grpc.address)
    # nothing is left locked: a daemon on the same root starts
    async with Daemon(make_config(tmp_short)):
        pass


async def test_metrics_endpoint(tmp_short: Path) -> None:
    cfg = make_config(tmp_short)
    cfg.metrics = MetricsConfig(address="127.0.0.1:0")
    async with Daemon(cfg) as d, Client(d.address) as c:
        await c.version()
        with pytest.raises(NotFound):
            await c.namespaces.get("missing")
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://{d.metrics_address}/v1/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    assert ('grpc_server_handled_total{grpc_code="OK",grpc_method="Version",'
            'grpc_service="containerd.services.version.v1.Version",grpc_type="unary"} 1.0') in text
    assert ('grpc_server_handled_total{grpc_code="NotFound",grpc_method="Get",'
            'grpc_service="containerd.services.namespaces.v1.Namespaces",grpc_type="unary"} 1.0') in text
    assert "grpc_server_handling_seconds_bucket" in text
    assert "aiocontainerd_build_info{" in text


async def test_two_daemons_in_one_loop_keep_their_own_state(tmp_short: Path) -> None:
    (tmp_short / "a").mkdir()
    (tmp_short / "b").mkdir()
    async with Daemon(make_config(tmp_short / "a")) as a, Daemon(make_config(tmp_short / "b")) as b:
        async with Client(a.address) as ca, Client(b.address) as cb:
            await ca.namespaces.create("only-in-a")
            assert [n.name for n in await cb.namespaces.list()] == []
            assert (await ca.server()).uuid != (await cb.server()).uuid


async def test_plugin_info(client: Client) -> None:
    from aiocontainerd.api.containerd.services.introspection import v1 as api

    stub = api.IntrospectionStub(client._channel)
    r = await stub.plugin_info(api.PluginInfoRequest(type="io.containerd.metadata.v1", id="lmdb"))
    assert (r.plugin.type, r.plugin.id, r.plugin.init_err) == ("io.containerd.metadata.v1", "lmdb", None)
    with pytest.raises(GRPCError) as e:
        await stub.plugin_info(api.PluginInfoRequest(type="io.containerd.nothing.v1", id="x"))
    assert e.value.status == Status.NOT_FOUND
    with pytest.raises(GRPCError) as e:
        await stub.plugin_info(api.PluginInfoRequest(type="io.containerd.grpc.v1"))
    assert e.value.status == Status.INVALID_ARGUMENT


async def test_socket_and_state_permissions(daemon: Daemon) -> None:
    import stat

    sock = os.stat(daemon.address)
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(daemon.config.state).st_mode) == 0o711
    assert stat.S_IMODE(os.stat(daemon.config.root).st_mode) == 0o700


async def test_socket_path_appears_only_once_serving(tmp_short: Path) -> None:
    import asyncio

    release = asyncio.Event()

    async def slow(ctx):
        await release.wait()
        return object()

    cfg = make_config(tmp_short)
    d = Daemon(cfg, plugins=[*builtins.registrations(), Registration("io.test.v1", "slow", slow)])
    starting = asyncio.create_task(d.start())
    await asyncio.sleep(0.3)
    assert not os.path.exists(cfg.grpc.address)  # still starting: no path to be refused on
    release.set()
    await starting
    try:
        async with Client(d.address) as c:
            assert (await c.version()).version
        # no temporary name left: the gRPC socket and the ttrpc one beside it
        assert sorted(p.name for p in Path(cfg.state).iterdir() if p.is_socket()) == [
            "c.sock", "c.sock.ttrpc"]
    finally:
        await d.stop()
