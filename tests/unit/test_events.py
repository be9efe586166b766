"""The event exchange (publish, forward, subscribe with filters) and the Events services."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from aiocontainerd import Client, Daemon
from aiocontainerd.api.containerd import events as ev
from aiocontainerd.api.containerd import types as ctypes
from aiocontainerd.api.containerd.services.events import v1 as events_api
from aiocontainerd.api.containerd.services.events.ttrpc import v1 as ttrpc_events_api
from aiocontainerd.api.containerd.services.images import v1 as images_api
from aiocontainerd.api.containerd.services.snapshots import v1 as snapshots_api
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.errors import FailedPrecondition, InvalidArgument
from aiocontainerd.events import (
    PLUGIN,
    Envelope,
    Exchange,
    SubscriberTooSlow,
    Subscription,
    pack,
    type_url,
    validate_topic,
)
from aiocontainerd.plugin import EVENT, TTRPC
from aiocontainerd.services.events import TTRPC_PLUGIN, TTRPC_SERVICE, TTRPCEventsService
from aiocontainerd.types import TypedValue

NS = "default"


async def take(sub: Subscription, n: int, timeout: float = 2) -> list[Envelope]:
    async with asyncio.timeout(timeout):
        return [await sub.get() for _ in range(n)]


def nothing_queued(sub: Subscription) -> bool:
    return len(sub) == 0


# -- packing --------------------------------------------------------------------------------

def test_type_url_is_the_bare_full_name_as_go_typeurl_writes_it() -> None:
    assert type_url(ev.TaskExit()) == "containerd.events.TaskExit"
    assert type_url(ev.TaskIo) == "containerd.events.TaskIO"
    assert type_url(images_api.ImageCreate()) == "containerd.services.images.v1.ImageCreate"
    packed = pack(ev.TaskExit(container_id="c1", exit_status=7))
    assert packed.type_url == "containerd.events.TaskExit"
    assert ev.TaskExit.parse(packed.value).exit_status == 7


def test_pack_keeps_an_already_packed_event() -> None:
    value = TypedValue("x.Y", b"\x01")
    assert pack(value) is value
    assert pack(pb.Any(type_url="a.B", value=b"\x02")) == TypedValue("a.B", b"\x02")


def test_envelope_unpacks_both_type_url_forms() -> None:
    for url in ("containerd.events.TaskOOM", "type.googleapis.com/containerd.events.TaskOOM"):
        e = Envelope(1, NS, "/tasks/oom", TypedValue(url, bytes(ev.TaskOom(container_id="c"))))
        assert e.unpack() == ev.TaskOom(container_id="c")
        assert e.field(["event", "container_id"]) == "c"
    assert Envelope(1, NS, "/x", TypedValue("no.such.Type", b"")).unpack() is None


# -- topics and namespaces ------------------------------------------------------------------

@pytest.mark.parametrize("topic", ["/tasks/exit", "/a", "/snapshot/prepare", "/a.b_c-d/e1"])
def test_valid_topics(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize("topic", ["", "/", "tasks/exit", "/tasks//exit", "/tasks/exit/",
                                   "/tasks/ex it", "/tasks/-exit", "/" + "a" * 77])
def test_invalid_topics_are_invalid_argument(topic: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_topic(topic)
    with pytest.raises(InvalidArgument):
        Exchange().publish(NS, topic, ev.TaskOom())


def test_publish_needs_a_valid_namespace() -> None:
    x = Exchange()
    with pytest.raises(FailedPrecondition, match="namespace is required"):
        x.publish("", "/tasks/oom", ev.TaskOom())
    with pytest.raises(InvalidArgument):
        x.publish("bad ns", "/tasks/oom", ev.TaskOom())


def test_forward_validates_the_envelope() -> None:
    x = Exchange()
    event = pack(ev.TaskOom())
    with pytest.raises(InvalidArgument, match="namespace"):
        x.forward(Envelope(1, "", "/tasks/oom", event))
    with pytest.raises(InvalidArgument, match="topic"):
        x.forward(Envelope(1, NS, "tasks", event))
    with pytest.raises(InvalidArgument, match="timestamp"):
        x.forward(Envelope(0, NS, "/tasks/oom", event))


# -- delivery -------------------------------------------------------------------------------

async def test_publish_reaches_every_subscriber_in_order() -> None:
    x = Exchange()
    async with x.subscribe() as a, x.subscribe() as b:
        assert x.subscribers == 2
        sent = [x.publish(NS, "/tasks/start", ev.TaskStart(container_id=f"c{i}", pid=i))
                for i in range(3)]
        for sub in (a, b):
            got = await take(sub, 3)
            assert got == sent
            assert [e.unpack().pid for e in got] == [0, 1, 2]
        e = sent[0]
        assert (e.namespace, e.topic, e.event.type_url) == (NS, "/tasks/start", "containerd.events.TaskStart")
        assert e.timestamp > 1_600_000_000 * 10**9
    assert x.subscribers == 0


async def test_forward_delivers_the_envelope_unchanged() -> None:
    x = Exchange()
    env = Envelope(123, "k8s.io", "/tasks/exit", pack(ev.TaskExit(container_id="c", exit_status=3)))
    async with x.subscribe() as sub:
        x.forward(env)
        assert await take(sub, 1) == [env]


async def test_publish_without_subscribers_is_a_no_op() -> None:
    x = Exchange()
    e = x.publish(NS, "/tasks/oom", ev.TaskOom(container_id="c"))
    assert (e.namespace, e.topic, e.unpack().container_id) == (NS, "/tasks/oom", "c")
    assert x.subscribers == 0
    async with x.subscribe() as sub:     # kept for nobody: a later subscriber does not get it
        assert nothing_queued(sub)


async def test_events_before_enter_or_after_exit_are_not_received() -> None:
    x = Exchange()
    sub = x.subscribe()
    x.publish(NS, "/a", ev.TaskOom())
    async with sub:
        x.publish(NS, "/b", ev.TaskOom())
        assert [e.topic for e in await take(sub, 1)] == ["/b"]
    x.publish(NS, "/c", ev.TaskOom())
    assert nothing_queued(sub)


# -- filters --------------------------------------------------------------------------------

async def _matching(filters: list[str], publish: list[tuple[str, str, object]]) -> list[str]:
    """Topics (with namespace) received by a subscriber with ``filters``."""
    x = Exchange()
    async with x.subscribe(*filters) as sub:
        for ns, topic, event in publish:
            x.publish(ns, topic, event)
        sub.close()
        return [f"{e.namespace}{e.topic}" for e in [e async for e in sub]]


EVENTS = [
    ("default", "/tasks/exit", ev.TaskExit(container_id="c1", id="c1", exit_status=1)),
    ("k8s.io", "/tasks/exit", ev.TaskExit(container_id="c2", id="e2")),
    ("default", "/tasks/create", ev.TaskCreate(container_id="c1", io=ev.TaskIo(stdin="/in", terminal=True))),
    ("k8s.io", "/images/create", images_api.ImageCreate(name="docker.io/x:1", labels={"a.b": "v"})),
    ("default", "/containers/create", ev.ContainerCreate(
        id="c3", runtime=ev.ContainerCreateRuntime(name="io.containerd.runc.v2"))),
]


@pytest.mark.parametrize(("filters", "expected"), [
    ([], ["default/tasks/exit", "k8s.io/tasks/exit", "default/tasks/create", "k8s.io/images/create",
          "default/containers/create"]),
    ([""], ["default/tasks/exit", "k8s.io/tasks/exit", "default/tasks/create", "k8s.io/images/create",
            "default/containers/create"]),
    (['topic=="/tasks/exit"'], ["default/tasks/exit", "k8s.io/tasks/exit"]),
    (["namespace==k8s.io"], ["k8s.io/tasks/exit", "k8s.io/images/create"]),
    (['topic~="^/tasks/"', "namespace!=default"], ["default/tasks/exit", "k8s.io/tasks/exit",
                                                   "default/tasks/create", "k8s.io/images/create"]),
    (['topic~="^/tasks/",namespace!=default'], ["k8s.io/tasks/exit"]),
    (["event.container_id==c1"], ["default/tasks/exit", "default/tasks/create"]),
    (["event.id==e2"], ["k8s.io/tasks/exit"]),
    (["event.exit_status==1"], []),                 # numbers are not filterable, as in containerd
    (["event.io.stdin==/in"], ["default/tasks/create"]),
    (["event.io.terminal==true"], ["default/tasks/create"]),
    (['event.labels."a.b"==v'], ["k8s.io/images/create"]),
    (["event.runtime.name~=runc"], ["default/containers/create"]),
    (["event.name"], ["k8s.io/images/create"]),     # presence
    (["nosuchfield"], []),
])
async def test_filters(filters: list[str], expected: list[str]) -> None:
    assert await _matching(filters, EVENTS) == expected


async def test_event_fields_of_an_unknown_type_are_absent() -> None:
    x = Exchange()
    async with x.subscribe("event.id==x", "topic==/t/unknown") as sub:
        x.forward(Envelope(1, NS, "/t/unknown", TypedValue("no.such.Event", b"\n\x01x")))
        x.forward(Envelope(1, NS, "/t/other", TypedValue("no.such.Event", b"\n\x01x")))
        sub.close()
        assert [e.topic async for e in sub] == ["/t/unknown"]


def test_a_bad_filter_is_invalid_argument_at_once() -> None:
    with pytest.raises(InvalidArgument):
        Exchange().subscribe("topic==")
    with pytest.raises(InvalidArgument):
        Exchange().subscribe('topic~="("')


# -- slow subscribers, cancellation, close --------------------------------------------------

async def test_a_slow_subscriber_is_cut_off_without_stalling_anyone() -> None:
    x = Exchange(queue_size=3)
    async with x.subscribe() as slow, x.subscribe(queue_size=100) as fast:
        for i in range(5):  # never blocks: publish is synchronous
            x.publish(NS, "/tasks/start", ev.TaskStart(pid=i))
        assert x.subscribers == 1  # the slow one was removed at its 4th event
        assert [e.unpack().pid for e in await take(fast, 5)] == [0, 1, 2, 3, 4]
        # the slow one gets what was queued before the gap, then the error
        assert [e.unpack().pid for e in await take(slow, 3)] == [0, 1, 2]
        with pytest.raises(SubscriberTooSlow) as info:
            await slow.get()
        assert info.value.code == Status.RESOURCE_EXHAUSTED.value
        x.publish(NS, "/tasks/start", ev.TaskStart(pid=9))
        assert nothing_queued(slow)
        assert [e.unpack().pid for e in await take(fast, 1)] == [9]


async def test_memory_stays_bounded_for_a_stuck_subscriber() -> None:
    x = Exchange(queue_size=10)
    async with x.subscribe() as stuck:
        for _ in range(10_000):
            x.publish(NS, "/tasks/oom", ev.TaskOom())
        assert len(stuck) == 10


async def test_cancelling_the_consumer_ends_the_subscription() -> None:
    x = Exchange()
    started = asyncio.Event()

    async def consume() -> None:
        async with x.subscribe() as sub:
            started.set()
            async for _ in sub:
                pass

    task = asyncio.create_task(consume())
    await started.wait()
    assert x.subscribers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert x.subscribers == 0
    x.publish(NS, "/tasks/oom", ev.TaskOom())  # no one left to deliver to


async def test_close_ends_every_subscription_after_its_queue() -> None:
    x = Exchange()
    async with x.subscribe() as sub:
        x.publish(NS, "/tasks/oom", ev.TaskOom(container_id="last"))
        await x.close()
        assert [e.unpack().container_id async for e in sub] == ["last"]
        with pytest.raises(FailedPrecondition):
            await sub.get()
    async with x.subscribe() as late:  # after close: ends at once
        assert [e async for e in late] == []


async def test_a_waiting_consumer_wakes_on_publish() -> None:
    x = Exchange()
    async with x.subscribe("topic==/tasks/exit") as sub:
        waiter = asyncio.create_task(sub.get())
        await asyncio.sleep(0)
        x.publish(NS, "/tasks/start", ev.TaskStart())
        await asyncio.sleep(0)
        assert not waiter.done()
        x.publish(NS, "/tasks/exit", ev.TaskExit(container_id="c"))
        async with asyncio.timeout(2):
            assert (await waiter).topic == "/tasks/exit"


# -- plugins and the ttrpc service ----------------------------------------------------------

def test_registrations() -> None:
    assert (PLUGIN.type, PLUGIN.id) == (EVENT, "exchange")
    assert (TTRPC_PLUGIN.type, TTRPC_PLUGIN.id, TTRPC_PLUGIN.requires) == (TTRPC, "events", (EVENT,))
    assert TTRPC == "io.containerd.ttrpc.v1"


async def test_ttrpc_forward_handler_puts_the_shim_envelope_on_the_exchange() -> None:
    x = Exchange()
    service = TTRPCEventsService(x)
    request = ttrpc_events_api.ForwardRequest(envelope=ctypes.Envelope(
        timestamp=pb.Timestamp(seconds=5, nanos=6), namespace="k8s.io", topic="/tasks/exit",
        event=pb.Any(type_url="containerd.events.TaskExit", value=bytes(ev.TaskExit(container_id="c")))))
    async with x.subscribe() as sub:
        assert await service.forward(request) == pb.Empty()
        [got] = await take(sub, 1)
    assert got == Envelope(5_000_000_006, "k8s.io", "/tasks/exit",
                           TypedValue("containerd.events.TaskExit", bytes(ev.TaskExit(container_id="c"))))
    with pytest.raises(InvalidArgument):
        await service.forward(ttrpc_events_api.ForwardRequest())

    class Recorder:
        def __init__(self) -> None:
            self.services: dict[str, dict] = {}

        def register(self, name: str, methods: dict) -> None:
            self.services[name] = dict(methods)

    server = Recorder()
    service.register_ttrpc(server)
    assert TTRPC_SERVICE == "containerd.services.events.ttrpc.v1.Events"
    request_type, handler = server.services[TTRPC_SERVICE]["Forward"]
    assert request_type is ttrpc_events_api.ForwardRequest
    assert handler == service.forward


async def test_ttrpc_forward_on_a_real_ttrpc_server(tmp_short) -> None:
    from aiocontainerd import ttrpc
    x = Exchange()
    server = ttrpc.Server()
    TTRPCEventsService(x).register_ttrpc(server)
    address = str(tmp_short / "t.sock")
    await server.start(address)
    try:
        client = await ttrpc.Client.connect(address)
        try:
            envelope = ctypes.Envelope(timestamp=pb.Timestamp(seconds=1), namespace=NS,
                                       topic="/tasks/oom",
                                       event=pb.Any(type_url="containerd.events.TaskOOM",
                                                    value=bytes(ev.TaskOom(container_id="c"))))
            async with x.subscribe() as sub:
                await client.call(TTRPC_SERVICE, "Forward",
                                  ttrpc_events_api.ForwardRequest(envelope=envelope), pb.Empty)
                [got] = await take(sub, 1)
            assert got.unpack() == ev.TaskOom(container_id="c")
            with pytest.raises(InvalidArgument):
                await client.call(TTRPC_SERVICE, "Forward", ttrpc_events_api.ForwardRequest(
                    envelope=ctypes.Envelope(namespace=NS, topic="/tasks/oom")), pb.Empty)
        finally:
            await client.close()
    finally:
        await server.close()


# -- the gRPC service, and events the other services publish --------------------------------

def _stub(client: Client, namespace: str = NS) -> events_api.EventsStub:
    return events_api.EventsStub(client._channel, metadata={"containerd-namespace": namespace})


async def _subscribe(client: Client, *filters: str) -> tuple[asyncio.Task, asyncio.Queue]:
    queue: asyncio.Queue[ctypes.Envelope] = asyncio.Queue()

    async def run() -> None:
        async for e in _stub(client).subscribe(events_api.SubscribeRequest(filters=list(filters))):
            await queue.put(e)

    return asyncio.create_task(run()), queue


async def _eventually(predicate: Callable[[], bool], timeout: float = 5) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("condition not met in time")


async def _until_subscribed(daemon: Daemon, before: int) -> None:
    """Until the exchange has one subscriber more than ``before`` (plugins subscribe too)."""
    exchange = daemon.plugins.instance(EVENT)
    await _eventually(lambda: exchange.subscribers > before)


async def _received(queue: asyncio.Queue, n: int) -> list[ctypes.Envelope]:
    async with asyncio.timeout(5):
        return [await queue.get() for _ in range(n)]


@pytest.fixture
async def subscribed(daemon: Daemon, client: Client) -> AsyncIterator[asyncio.Queue]:
    before = daemon.plugins.instance(EVENT).subscribers
    task, queue = await _subscribe(client)
    await _until_subscribed(daemon, before)
    yield queue
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_grpc_publish_forward_subscribe(daemon: Daemon, client: Client) -> None:
    before = daemon.plugins.instance(EVENT).subscribers
    task, queue = await _subscribe(client, 'topic~="^/test/"')
    try:
        await _until_subscribed(daemon, before)
        await _stub(client, "ns1").publish(events_api.PublishRequest(
            topic="/test/one", event=pb.Any(type_url="containerd.events.TaskOOM",
                                            value=bytes(ev.TaskOom(container_id="c")))))
        await _stub(client).forward(events_api.ForwardRequest(envelope=ctypes.Envelope(
            timestamp=pb.Timestamp(seconds=7, nanos=8), namespace="ns2", topic="/test/two",
            event=pb.Any(type_url="containerd.events.TaskExit", value=b""))))
        await _stub(client).publish(events_api.PublishRequest(topic="/other/x"))
        first, second = await _received(queue, 2)
        assert (first.namespace, first.topic, first.event.type_url) == \
            ("ns1", "/test/one", "containerd.events.TaskOOM")
        assert ev.TaskOom.parse(first.event.value).container_id == "c"
        assert first.timestamp.seconds > 1_600_000_000
        assert (second.namespace, second.topic, second.timestamp) == \
            ("ns2", "/test/two", pb.Timestamp(seconds=7, nanos=8))
        assert queue.empty()
        for bad in (events_api.PublishRequest(topic="nope"),):
            with pytest.raises(GRPCError) as info:
                await _stub(client).publish(bad)
            assert info.value.status == Status.INVALID_ARGUMENT
        with pytest.raises(GRPCError) as info:
            await _stub(client).forward(events_api.ForwardRequest(envelope=ctypes.Envelope(
                namespace="ns2", topic="/test/x")))
        assert info.value.status == Status.INVALID_ARGUMENT
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # the server saw the client go and dropped the subscription
    await _eventually(lambda: daemon.plugins.instance(EVENT).subscribers == before)


async def test_grpc_subscribe_with_a_bad_filter_is_invalid_argument(client: Client) -> None:
    with pytest.raises(GRPCError) as info:
        async for _ in _stub(client).subscribe(events_api.SubscribeRequest(filters=["topic=="])):
            pass
    assert info.value.status == Status.INVALID_ARGUMENT


async def test_services_publish_their_changes(daemon: Daemon, client: Client,
                                              subscribed: asyncio.Queue) -> None:
    from aiocontainerd.api.containerd.services.containers import v1 as containers_api

    await client.namespaces.create("evns", {"a": "1"})
    await client.namespaces.update("evns", {"a": "2"})
    await client.namespaces.delete("evns")
    ns = [await subscribed.get() for _ in range(3)]
    assert [(e.namespace, e.topic) for e in ns] == [
        ("evns", "/namespaces/create"), ("evns", "/namespaces/update"), ("evns", "/namespaces/delete")]
    assert ev.NamespaceCreate.parse(ns[0].event.value) == ev.NamespaceCreate(name="evns", labels={"a": "1"})
    assert ns[0].event.type_url == "containerd.events.NamespaceCreate"

    containers = containers_api.ContainersStub(client._channel, metadata={"containerd-namespace": "x"})
    await containers.create(containers_api.CreateContainerRequest(container=containers_api.Container(
        id="c1", image="img", runtime=containers_api.ContainerRuntime(name="io.containerd.runc.v2"),
        spec=pb.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b"{}"))))
    await containers.update(containers_api.UpdateContainerRequest(
        container=containers_api.Container(id="c1", labels={"l": "v"}),
        update_mask=pb.FieldMask(paths=["labels"])))
    await containers.delete(containers_api.DeleteContainerRequest(id="c1"))
    got = await _received(subscribed, 3)
    assert [(e.namespace, e.topic) for e in got] == [
        ("x", "/containers/create"), ("x", "/containers/update"), ("x", "/containers/delete")]
    create = ev.ContainerCreate.parse(got[0].event.value)
    assert (create.id, create.image, create.runtime.name) == ("c1", "img", "io.containerd.runc.v2")
    update = ev.ContainerUpdate.parse(got[1].event.value)
    assert (update.id, update.labels) == ("c1", {"l": "v"})

    images = images_api.ImagesStub(client._channel, metadata={"containerd-namespace": "x"})
    target = ctypes.Descriptor(media_type="application/vnd.oci.image.manifest.v1+json",
                               digest="sha256:" + "a" * 64, size=1)
    await images.create(images_api.CreateImageRequest(image=images_api.Image(
        name="docker.io/library/a:1", target=target, labels={"k": "v"})))
    await images.update(images_api.UpdateImageRequest(image=images_api.Image(
        name="docker.io/library/a:1", target=target)))
    await images.delete(images_api.DeleteImageRequest(name="docker.io/library/a:1"))
    got = await _received(subscribed, 3)
    assert [(e.namespace, e.topic, e.event.type_url) for e in got] == [
        ("x", "/images/create", "containerd.services.images.v1.ImageCreate"),
        ("x", "/images/update", "containerd.services.images.v1.ImageUpdate"),
        ("x", "/images/delete", "containerd.services.images.v1.ImageDelete")]
    assert images_api.ImageCreate.parse(got[0].event.value).labels == {"k": "v"}

    snapshots = snapshots_api.SnapshotsStub(client._channel, metadata={"containerd-namespace": "x"})
    sn = "native"
    # gc.root: the image deleted above schedules a GC that would collect unleased snapshots
    root = {"containerd.io/gc.root": "test"}
    await snapshots.prepare(snapshots_api.PrepareSnapshotRequest(snapshotter=sn, key="k1", labels=root))
    await snapshots.commit(snapshots_api.CommitSnapshotRequest(snapshotter=sn, name="n1", key="k1"))
    await snapshots.view(snapshots_api.ViewSnapshotRequest(snapshotter=sn, key="v1", parent="n1",
                                                           labels=root))
    await snapshots.remove(snapshots_api.RemoveSnapshotRequest(snapshotter=sn, key="v1"))
    got = await _received(subscribed, 3)
    assert [(e.namespace, e.topic) for e in got] == [
        ("x", "/snapshot/prepare"), ("x", "/snapshot/commit"), ("x", "/snapshot/remove")]
    assert ev.SnapshotCommit.parse(got[1].event.value) == ev.SnapshotCommit(key="k1", name="n1",
                                                                            snapshotter=sn)
    assert ev.SnapshotRemove.parse(got[2].event.value) == ev.SnapshotRemove(key="v1", snapshotter=sn)
    assert subscribed.empty()  # View publishes nothing


async def test_content_write_and_delete_publish(daemon: Daemon, client: Client,
                                                subscribed: asyncio.Queue) -> None:
    import hashlib

    from aiocontainerd.api.containerd.services.content import v1 as content_api

    data = b"hello events"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    content = content_api.ContentStub(client._channel, metadata={"containerd-namespace": "x"})

    async def requests() -> AsyncIterator[content_api.WriteContentRequest]:
        yield content_api.WriteContentRequest(action=content_api.WriteAction.COMMIT, ref="r1",
                                              total=len(data), expected=digest, data=data)

    async for _ in content.write(requests()):
        pass
    await content.delete(content_api.DeleteContentRequest(digest=digest))
    created, deleted = await _received(subscribed, 2)
    assert (created.namespace, created.topic) == ("x", "/content/create")
    assert ev.ContentCreate.parse(created.event.value) == ev.ContentCreate(digest=digest, size=len(data))
    assert (deleted.topic, ev.ContentDelete.parse(deleted.event.value).digest) == \
        ("/content/delete", digest)


async def test_images_stored_by_the_transfer_plugin_are_published(daemon: Daemon, tmp_short) -> None:
    from aiocontainerd.images.service import TRANSFER
    from tests.support.images import busybox_image, oci_layout_tar

    image = busybox_image()
    archive = tmp_short / "in.tar"
    archive.write_bytes(oci_layout_tar(image, "latest", image_name="docker.io/library/busybox:latest"))
    transfer = daemon.plugins.instance(TRANSFER, "local")
    exchange = daemon.plugins.instance(EVENT)
    async with exchange.subscribe('topic~="^/images/"') as sub:
        await transfer.import_archive("x", archive)
        await transfer.import_archive("x", archive)  # the image exists: an update
        created, updated = await take(sub, 2)
    assert (created.namespace, created.topic) == ("x", "/images/create")
    assert created.unpack() == images_api.ImageCreate(name="docker.io/library/busybox:latest")
    assert (updated.topic, updated.unpack().name) == ("/images/update", "docker.io/library/busybox:latest")
