"""CRI state: records round-trip through their container extensions, names are reserved once,
lookups by ID prefix, sandbox filters, events fan out, and the sandbox RPCs' idempotence."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri import sandbox as sb
from aiocontainerd.cri import state as st
from aiocontainerd.errors import AlreadyExists, InvalidArgument, NotFound
from aiocontainerd.metadata.containers import Container, Runtime
from aiocontainerd.types import TypedValue


def pod(name: str = "web", ns: str = "default", uid: str = "u1", attempt: int = 0,
        **kw: object) -> api.PodSandboxConfig:
    return api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name=name, namespace=ns, uid=uid,
                                                                attempt=attempt), **kw)


def test_names() -> None:
    assert st.make_sandbox_name(pod().metadata) == "web_default_u1_0"
    c = api.ContainerMetadata(name="app", attempt=2)
    assert st.make_container_name(c, pod().metadata) == "app_web_default_u1_2"


def test_name_index() -> None:
    names = st.NameIndex()
    names.reserve("a", "id1")
    names.reserve("a", "id1")   # same holder: fine
    with pytest.raises(AlreadyExists):
        names.reserve("a", "id2")
    names.release("a")
    names.reserve("a", "id2")
    names.release_id("id2")
    assert "a" not in names and len(names) == 0
    names.release("missing")
    with pytest.raises(InvalidArgument):
        names.reserve("", "x")


def test_records_round_trip() -> None:
    config = pod(hostname="h", labels={"app": "x"},
                 linux=api.LinuxPodSandboxConfig(security_context=api.LinuxSandboxSecurityContext(
                     namespace_options=api.NamespaceOption(network=api.NamespaceMode.NODE))))
    rec = st.SandboxRecord(id="abc", name="n", config=config, state=st.SANDBOX_READY, ip="10.1.2.3",
                           additional_ips=["fd00::3"], cni_result={"Interfaces": {}}, pid=42)
    ext = rec.extension()
    assert ext.type_url == st.SANDBOX_TYPE_URL
    assert b'"Version":"v1"' in ext.value
    back = st.SandboxRecord.from_extension(ext)
    assert back == rec and back.host_network and back.cri_state == api.PodSandboxState.SANDBOX_READY
    c = st.ContainerRecord(id="c1", name="x", sandbox_id="abc", config=api.ContainerConfig(
        metadata=api.ContainerMetadata(name="app")), state=st.CONTAINER_EXITED, exit_code=3)
    back_c = st.ContainerRecord.from_extension(c.extension())
    assert back_c == c and back_c.cri_state == api.ContainerState.CONTAINER_EXITED
    with pytest.raises(InvalidArgument):
        st.SandboxRecord.from_extension(TypedValue(st.SANDBOX_TYPE_URL, b'{"Version":"v9","Metadata":{}}'))


def test_build_labels_drop_reserved() -> None:
    labels = st.build_labels({"a": "1"}, {"a": "0", "b": "2", "containerd.io/gc.ref": "x",
                                          "io.cri-containerd.kind": "container"}, st.KIND_SANDBOX)
    assert labels == {"a": "1", "b": "2", st.KIND_LABEL: "sandbox"}


class FakeStore:
    """The parts of the metadata ContainerStore CRIState uses."""

    def __init__(self) -> None:
        self.items: dict[str, Container] = {}

    def list(self, namespace: str, filters=()) -> list[Container]:
        return list(self.items.values())

    async def update(self, namespace: str, container: Container, paths=()) -> Container:
        current = self.items.get(container.id)
        if current is None:
            raise NotFound(container.id)
        current.extensions.update(container.extensions)
        return current

    async def update_extension(self, namespace: str, id_: str, name: str, value: TypedValue) -> None:
        current = self.items.get(id_)
        if current is None:
            raise NotFound(id_)
        current.extensions[name] = value


def test_state_load_save_prefix() -> None:
    async def main() -> None:
        store = FakeStore()
        s = st.CRIState(store)  # type: ignore[arg-type]
        rec = st.SandboxRecord(id="aaaa1111", name="web_default_u1_0", config=pod())
        store.items[rec.id] = Container(id=rec.id, runtime=Runtime("r"), labels={st.KIND_LABEL: "sandbox"},
                                        extensions={st.SANDBOX_EXTENSION: rec.extension()})
        crec = st.ContainerRecord(id="aaaa2222", name="app_web_default_u1_0", sandbox_id=rec.id,
                                  config=api.ContainerConfig())
        store.items[crec.id] = Container(id=crec.id, runtime=Runtime("r"),
                                         labels={st.KIND_LABEL: "container"},
                                         extensions={st.CONTAINER_EXTENSION: crec.extension()})
        store.items["junk"] = Container(id="junk", runtime=Runtime("r"), labels={st.KIND_LABEL: "sandbox"},
                                        extensions={st.SANDBOX_EXTENSION: TypedValue("x", b"not json")})
        s.names.reserve("stale_reservation", "never-created")
        sbs, cts = s.load()
        assert [c.id for c in sbs] == [rec.id] and [c.id for c in cts] == [crec.id]
        # names are rebuilt from records only: a crash between reserve and create leaves nothing
        assert "stale_reservation" not in s.names
        assert s.names.get(rec.name) == rec.id and s.names.get(crec.name) == crec.id
        assert s.get_sandbox("aaaa1").id == rec.id
        assert s.get_container("aaaa").id == crec.id
        s.sandboxes["aaaa3333"] = st.SandboxRecord(id="aaaa3333", name="other", config=pod())
        with pytest.raises(InvalidArgument):
            s.get_sandbox("aaaa")   # two sandboxes share the prefix
        del s.sandboxes["aaaa3333"]
        assert s.sandbox_containers(rec.id)[0].id == crec.id
        with pytest.raises(NotFound):
            s.get_sandbox("zzz")
        rec2 = s.get_sandbox(rec.id)
        rec2.state = st.SANDBOX_NOTREADY
        await s.save_sandbox(rec2)
        assert st.SandboxRecord.from_extension(store.items[rec.id].extensions[st.SANDBOX_EXTENSION]).state \
            == st.SANDBOX_NOTREADY
        s.remove_sandbox(rec.id)
        assert rec.name not in s.names and rec.id not in s.sandboxes

    asyncio.run(main())


def test_events_fan_out() -> None:
    async def main() -> None:
        s = st.CRIState(None)
        got: list[list[str]] = [[], []]

        async def sub(i: int, ready: asyncio.Event) -> None:
            async with s.subscribe_events() as events:
                ready.set()
                async for e in events:
                    got[i].append(e.container_id)

        readies = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(sub(i, readies[i])) for i in range(2)]
        await asyncio.gather(*(r.wait() for r in readies))
        s.container_event("c1", api.ContainerEventType.CONTAINER_CREATED_EVENT)
        s.container_event("c2", api.ContainerEventType.CONTAINER_STARTED_EVENT)
        s.close_events()
        await asyncio.gather(*tasks)
        assert got == [["c1", "c2"], ["c1", "c2"]]
        assert s.subscriber_count() == 0

    asyncio.run(main())


def test_sandbox_filter_and_files() -> None:
    rec = st.SandboxRecord(id="abc", name="n", config=pod(labels={"a": "1", "b": "2"}),
                           state=st.SANDBOX_READY)
    assert sb.match_sandbox_filter(rec, None)
    assert sb.match_sandbox_filter(rec, api.PodSandboxFilter(label_selector={"a": "1"}))
    assert not sb.match_sandbox_filter(rec, api.PodSandboxFilter(label_selector={"a": "2"}))
    assert not sb.match_sandbox_filter(rec, api.PodSandboxFilter(
        state=api.PodSandboxStateValue(state=api.PodSandboxState.SANDBOX_NOTREADY)))
    assert not sb.match_sandbox_filter(rec, api.PodSandboxFilter(id="abd"))
    text = sb.resolv_conf(api.DnsConfig(servers=["1.1.1.1", "8.8.8.8"], searches=["a.svc", "svc"],
                                        options=["ndots:5"]))
    assert text == "search a.svc svc\nnameserver 1.1.1.1\nnameserver 8.8.8.8\noptions ndots:5\n"
    hosts = sb.hosts_file("web", "10.0.0.5")
    assert hosts.startswith("127.0.0.1\tlocalhost\n") and hosts.endswith("10.0.0.5\tweb\n")


def _service() -> object:
    from aiocontainerd.cri.service import RuntimeService

    plugin = SimpleNamespace(runtime=None, config=None, cni=None, streaming=None)
    return RuntimeService(plugin, st.CRIState(None))  # type: ignore[arg-type]


def test_stop_remove_unknown_succeed() -> None:
    async def main() -> None:
        svc = _service()
        assert await svc.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id="nope")) \
            == api.StopPodSandboxResponse()
        assert await svc.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id="nope")) \
            == api.RemovePodSandboxResponse()
        with pytest.raises(NotFound):
            await svc.pod_sandbox_status(api.PodSandboxStatusRequest(pod_sandbox_id="nope"))
        listed = await svc.list_pod_sandbox(api.ListPodSandboxRequest(filter=api.PodSandboxFilter(id="x")))
        assert listed.items == []

    asyncio.run(main())


def test_version_and_template() -> None:
    from aiocontainerd.cri.service import render_cni_template

    async def main() -> None:
        v = await _service().version(api.VersionRequest())
        assert v.runtime_name == "aiocontainerd" and v.runtime_api_version == "v1"

    asyncio.run(main())
    out = render_cni_template('{"subnet": "{{.PodCIDR}}", "ranges": [{{.PodCIDRRanges}}]}', ["10.9.0.0/24"])
    assert out == '{"subnet": "10.9.0.0/24", "ranges": [[{"subnet": "10.9.0.0/24"}]]}'
