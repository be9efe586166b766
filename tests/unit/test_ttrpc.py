"""ttrpc client and server (containerd/ttrpc PROTOCOL.md): framing, calls, errors, streams, close."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiocontainerd import errors, ttrpc
from aiocontainerd.api.containerd.task import v2 as task
from aiocontainerd.api.google.protobuf import Empty
from aiocontainerd.api.google.rpc import Status
from aiocontainerd.api.ttrpc import KeyValue, Request, Response
from aiocontainerd.ttrpc import _wire
from tests.support.runtime import wait_child_exit

SVC = "test.v1.Svc"
HDR = struct.Struct(">IIBB")


@pytest.fixture
def sock_path() -> AsyncIterator[str]:
    d = tempfile.mkdtemp(prefix="ttrpc-", dir="/tmp")
    yield os.path.join(d, "s.sock")
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)


class Handlers:
    """A test service; events let tests observe handler progress without sleeping."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen_metadata: list[dict[str, list[str]]] = []

    async def echo(self, req: task.StateRequest) -> task.StateResponse:
        self.seen_metadata.append(dict(ttrpc.metadata()))
        return task.StateResponse(id=req.id, bundle=ttrpc.namespace(), exec_id=req.exec_id)

    async def fail(self, req: task.StateRequest) -> task.StateResponse:
        kinds = {"notfound": errors.NotFound, "exists": errors.AlreadyExists,
                 "invalid": errors.InvalidArgument, "precond": errors.FailedPrecondition,
                 "unavailable": errors.Unavailable, "internal": errors.Internal,
                 "deadline": errors.DeadlineExceeded}
        if req.id in kinds:
            raise kinds[req.id](f"boom {req.id}")
        raise RuntimeError(f"plain {req.id}")

    async def block(self, req: Empty) -> Empty:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Empty()

    async def big(self, req: task.StateRequest) -> task.StateResponse:
        return task.StateResponse(id="x" * int(req.exec_id))

    async def none(self, req: Empty) -> None:
        return None

    # streams
    async def count(self, st: ttrpc.ServerStream) -> None:
        """Server streaming: n messages for a request with signal=n."""
        req = await st.recv()
        assert await st.recv() is None
        for i in range(req.signal):
            await st.send(task.StateResponse(pid=i))
        return None

    async def count_with_tail(self, st: ttrpc.ServerStream) -> task.StateResponse:
        req = await st.recv()
        for i in range(req.signal):
            await st.send(task.StateResponse(pid=i))
        return task.StateResponse(id="tail")

    async def total(self, st: ttrpc.ServerStream) -> task.StateResponse:
        """Client streaming: the sum of the signals received."""
        return task.StateResponse(pid=sum([m.signal async for m in st]), id=ttrpc.namespace())

    async def echo_stream(self, st: ttrpc.ServerStream) -> None:
        """Bidirectional: echoes each message back doubled."""
        async for m in st:
            await st.send(task.StateResponse(pid=m.signal * 2))
        return None

    async def stream_fail(self, st: ttrpc.ServerStream) -> None:
        await st.send(task.StateResponse(pid=1))
        raise errors.NotFound("gone mid-stream")


@pytest.fixture
async def handlers() -> Handlers:
    return Handlers()


def make_server(h: Handlers, **kw: int) -> ttrpc.Server:
    srv = ttrpc.Server(**kw)
    srv.register(SVC, {
        "Echo": (task.StateRequest, h.echo),
        "Fail": (task.StateRequest, h.fail),
        "Block": (Empty, h.block),
        "Big": (task.StateRequest, h.big),
        "None": (Empty, h.none),
        "Count": ttrpc.StreamMethod(task.KillRequest, h.count, server_streaming=True),
        "CountTail": ttrpc.StreamMethod(task.KillRequest, h.count_with_tail, server_streaming=True),
        "Total": ttrpc.StreamMethod(task.KillRequest, h.total, client_streaming=True),
        "EchoStream": ttrpc.StreamMethod(task.KillRequest, h.echo_stream,
                                         client_streaming=True, server_streaming=True),
        "StreamFail": ttrpc.StreamMethod(task.KillRequest, h.stream_fail, server_streaming=True),
    })
    return srv


async def blocked_call(handlers: Handlers,
                       address: str) -> tuple[ttrpc.Server, ttrpc.Client, asyncio.Task[Empty]]:
    """A server started on ``address``, a client, and its ``Block`` call, in the handler
    (started) and not answered."""
    srv = make_server(handlers)
    await srv.start(address)
    c = await ttrpc.Client.connect(address.removeprefix("unix://"))
    pending = asyncio.create_task(c.call(SVC, "Block", Empty(), Empty))
    await handlers.started.wait()
    return srv, c, pending


@pytest.fixture
async def server(handlers: Handlers, sock_path: str) -> AsyncIterator[ttrpc.Server]:
    srv = make_server(handlers)
    await srv.start("unix://" + sock_path)
    yield srv
    await srv.close()


@pytest.fixture
async def client(server: ttrpc.Server, sock_path: str) -> AsyncIterator[ttrpc.Client]:
    c = await ttrpc.Client.connect("unix://" + sock_path)
    yield c
    await c.close()


# ---------------------------------------------------------------------------
# wire format


def test_request_encoding_matches_generated_message() -> None:
    md = {"Containerd-Namespace-TTRPC": "ns", "multi": ["a", "b"]}
    raw = _wire.encode_request("svc.S", "M", b"\x01\x02", 1_500_000_000, md)
    msg = Request.parse(raw)
    assert (msg.service, msg.method, msg.payload) == ("svc.S", "M", b"\x01\x02")
    assert msg.timeout_nano == 1_500_000_000
    assert [(kv.key, kv.value) for kv in msg.metadata] == [
        ("containerd-namespace-ttrpc", "ns"), ("multi", "a"), ("multi", "b")]
    gen = bytes(Request(service="s", method="m", payload=b"p", timeout_nano=-5,
                        metadata=[KeyValue(key="k", value="v"), KeyValue(key="k", value="w")]))
    dec = _wire.decode_request(gen)
    assert (dec.service, dec.method, dec.payload, dec.timeout_nano) == ("s", "m", b"p", -5)
    assert dec.metadata == {"k": ["v", "w"]}
    # an absent payload is told apart from an empty one (initial message of a stream)
    assert _wire.decode_request(_wire.encode_request("s", "m", None)).payload is None
    assert _wire.decode_request(_wire.encode_request("s", "m", b"")).payload == b""


def test_response_encoding_matches_generated_message() -> None:
    raw = _wire.encode_response(5, "not here", b"xyz")
    msg = Response.parse(raw)
    assert (msg.status.code, msg.status.message, msg.payload) == (5, "not here", b"xyz")
    assert Response.parse(_wire.encode_response(0, "", b"ok")).status is None
    gen = bytes(Response(status=Status(code=9, message="m"), payload=b"p"))
    assert _wire.decode_response(gen) == (9, "m", b"p")
    assert _wire.decode_response(bytes(Response(status=Status(code=0), payload=b"q"))) == (0, "", b"q")
    with pytest.raises((ValueError, IndexError)):
        _wire.decode_response(b"\x12\x05ab")


@pytest.mark.parametrize(("address", "expected"), [
    ("unix:///run/x.sock", "/run/x.sock"),
    ("/run/x.sock", "/run/x.sock"),
    ("@abs", "\0abs"),
    ("unix://@abs", "\0abs"),
])
def test_socket_address(address: str, expected: str) -> None:
    assert ttrpc.socket_address(address) == expected


def test_socket_address_rejects_other_schemes() -> None:
    with pytest.raises(errors.InvalidArgument):
        ttrpc.socket_address("vsock://3:1024")


async def test_frames_on_the_wire(server: ttrpc.Server, sock_path: str) -> None:
    """A hand-written client: header layout, odd ids, one Response per unary Request."""
    reader, writer = await asyncio.open_unix_connection(sock_path)
    payload = bytes(Request(service=SVC, method="Echo", payload=bytes(task.StateRequest(id="a")),
                            metadata=[KeyValue(key=ttrpc.METADATA_NAMESPACE, value="ns1")]))
    # two requests in one write, and a third split across writes
    writer.write(HDR.pack(len(payload), 1, 1, 0) + payload + HDR.pack(len(payload), 3, 1, 0) + payload)
    third = HDR.pack(len(payload), 5, 1, 0) + payload
    writer.write(third[:4])
    await writer.drain()
    writer.write(third[4:])
    got = {}
    for _ in range(3):
        length, sid, mtype, flags = HDR.unpack(await reader.readexactly(10))
        assert (mtype, flags) == (2, 0)
        resp = Response.parse(await reader.readexactly(length))
        got[sid] = task.StateResponse.parse(resp.payload)
        assert resp.status is None or resp.status.code == 0
    assert sorted(got) == [1, 3, 5]
    assert all(r.id == "a" and r.bundle == "ns1" for r in got.values())

    # even stream id -> INVALID_ARGUMENT on that id; reused id too
    for sid in (4, 3):
        writer.write(HDR.pack(len(payload), sid, 1, 0) + payload)
        length, rsid, mtype, _ = HDR.unpack(await reader.readexactly(10))
        resp = Response.parse(await reader.readexactly(length))
        assert (rsid, mtype, resp.status.code) == (sid, 2, errors.Code.INVALID_ARGUMENT)
    writer.close()
    await writer.wait_closed()


async def test_oversized_incoming_is_skipped_and_stream_stays_in_step(
        handlers: Handlers, sock_path: str) -> None:
    srv = make_server(handlers, max_message=1024)
    await srv.start(sock_path)
    try:
        reader, writer = await asyncio.open_unix_connection(sock_path)
        big = bytes(Request(service=SVC, method="Echo", payload=bytes(task.StateRequest(id="x" * 4000))))
        small = bytes(Request(service=SVC, method="Echo", payload=bytes(task.StateRequest(id="ok"))))
        # the oversized frame arrives in pieces, then a good one right behind it
        data = HDR.pack(len(big), 1, 1, 0) + big + HDR.pack(len(small), 3, 1, 0) + small
        for i in range(0, len(data), 700):
            writer.write(data[i:i + 700])
            await writer.drain()
        replies = {}
        for _ in range(2):
            length, sid, _, _ = HDR.unpack(await reader.readexactly(10))
            replies[sid] = Response.parse(await reader.readexactly(length))
        assert replies[1].status.code == errors.Code.RESOURCE_EXHAUSTED
        assert task.StateResponse.parse(replies[3].payload).id == "ok"
        writer.close()
        await writer.wait_closed()
    finally:
        await srv.close()


# ---------------------------------------------------------------------------
# unary calls


async def test_unary_call_and_metadata(client: ttrpc.Client, handlers: Handlers) -> None:
    r = await client.call(SVC, "Echo", task.StateRequest(id="c1", exec_id="e"), task.StateResponse,
                          metadata={ttrpc.METADATA_NAMESPACE: "k8s.io", "X-Multi": ["1", "2"]})
    assert (r.id, r.exec_id, r.bundle) == ("c1", "e", "k8s.io")
    assert handlers.seen_metadata[-1] == {ttrpc.METADATA_NAMESPACE: ["k8s.io"], "x-multi": ["1", "2"]}
    r = await client.call(SVC, "Echo", task.StateRequest(id="c2"), task.StateResponse)
    assert r.bundle == ""  # no namespace, and no leak of the previous call's context
    assert handlers.seen_metadata[-1] == {}
    assert await client.call(SVC, "None", Empty(), Empty) == Empty()


async def test_many_concurrent_calls_on_one_connection(client: ttrpc.Client) -> None:
    ids = [f"id{i}" for i in range(500)]
    results = await asyncio.gather(*(
        client.call(SVC, "Echo", task.StateRequest(id=i), task.StateResponse) for i in ids))
    assert [r.id for r in results] == ids


async def test_responses_matched_by_stream_id_out_of_order(client: ttrpc.Client, handlers: Handlers) -> None:
    blocked = asyncio.create_task(client.call(SVC, "Block", Empty(), Empty))
    await handlers.started.wait()
    # a later call completes while the first is still in flight
    r = await client.call(SVC, "Echo", task.StateRequest(id="later"), task.StateResponse)
    assert r.id == "later" and not blocked.done()
    handlers.release.set()
    assert await blocked == Empty()


@pytest.mark.parametrize(("kind", "cls", "code"), [
    ("notfound", errors.NotFound, errors.Code.NOT_FOUND),
    ("exists", errors.AlreadyExists, errors.Code.ALREADY_EXISTS),
    ("invalid", errors.InvalidArgument, errors.Code.INVALID_ARGUMENT),
    ("precond", errors.FailedPrecondition, errors.Code.FAILED_PRECONDITION),
    ("unavailable", errors.Unavailable, errors.Code.UNAVAILABLE),
    ("internal", errors.Internal, errors.Code.INTERNAL),
    ("deadline", errors.DeadlineExceeded, errors.Code.DEADLINE_EXCEEDED),
])
async def test_errors_map_to_classes(client: ttrpc.Client, kind: str, cls: type, code: int) -> None:
    with pytest.raises(cls) as ei:
        await client.call(SVC, "Fail", task.StateRequest(id=kind), task.StateResponse)
    assert ei.value.code == code
    assert str(ei.value) == f"boom {kind}"


async def test_other_exceptions_are_unknown(client: ttrpc.Client) -> None:
    with pytest.raises(errors.ContainerdError) as ei:
        await client.call(SVC, "Fail", task.StateRequest(id="x"), task.StateResponse)
    assert ei.value.code == errors.Code.UNKNOWN and str(ei.value) == "plain x"


async def test_unknown_service_and_method_are_unimplemented(client: ttrpc.Client) -> None:
    with pytest.raises(errors.Unimplemented, match=r"service nope\.Svc"):
        await client.call("nope.Svc", "Echo", Empty(), Empty)
    with pytest.raises(errors.Unimplemented, match="method Nope"):
        await client.call(SVC, "Nope", Empty(), Empty)
    # the connection is still usable
    assert (await client.call(SVC, "Echo", task.StateRequest(id="a"), task.StateResponse)).id == "a"


async def test_request_timeout_is_honoured_by_the_server(
        handlers: Handlers, server: ttrpc.Server, sock_path: str) -> None:
    """The server cancels the handler at timeout_nano; sent by hand so no client timer races it."""
    reader, writer = await asyncio.open_unix_connection(sock_path)
    req = bytes(Request(service=SVC, method="Block", payload=b"", timeout_nano=50_000_000))
    writer.write(HDR.pack(len(req), 1, 1, 0) + req)
    length, sid, _, _ = HDR.unpack(await reader.readexactly(10))
    resp = Response.parse(await reader.readexactly(length))
    assert sid == 1 and resp.status.code == errors.Code.DEADLINE_EXCEEDED
    assert handlers.cancelled.is_set()
    writer.close()
    await writer.wait_closed()


async def test_client_timeout(client: ttrpc.Client, handlers: Handlers) -> None:
    with pytest.raises(errors.DeadlineExceeded):
        await client.call(SVC, "Block", Empty(), Empty, timeout=0.05)
    # whichever side fired first, the server handler was cancelled
    await handlers.cancelled.wait()
    with pytest.raises(errors.DeadlineExceeded):
        await client.call(SVC, "Block", Empty(), Empty, timeout=0)
    r = await client.call(SVC, "Echo", task.StateRequest(id="a"), task.StateResponse, timeout=5)
    assert r.id == "a"


async def test_oversized_outgoing_request_raises_before_sending(handlers: Handlers, sock_path: str) -> None:
    srv = make_server(handlers)
    await srv.start(sock_path)
    c = await ttrpc.Client.connect(sock_path, max_message=1000)
    try:
        with pytest.raises(ttrpc.OversizedMessage) as ei:
            await c.call(SVC, "Echo", task.StateRequest(id="x" * 2000), task.StateResponse)
        assert ei.value.code == errors.Code.RESOURCE_EXHAUSTED
        # nothing went out: the next call gets stream id 1 and works
        assert (await c.call(SVC, "Echo", task.StateRequest(id="y"), task.StateResponse)).id == "y"
        assert c._next_id == 3
        # a response over the client's limit fails that call only
        with pytest.raises(ttrpc.OversizedMessage):
            await c.call(SVC, "Big", task.StateRequest(exec_id="5000"), task.StateResponse)
        assert (await c.call(SVC, "Echo", task.StateRequest(id="z"), task.StateResponse)).id == "z"
    finally:
        await c.close()
        await srv.close()


async def test_oversized_response_on_server_is_an_error(handlers: Handlers, sock_path: str) -> None:
    srv = make_server(handlers, max_message=1000)
    await srv.start(sock_path)
    try:
        async with await ttrpc.Client.connect(sock_path) as c:
            with pytest.raises(ttrpc.OversizedMessage):
                await c.call(SVC, "Big", task.StateRequest(exec_id="3000"), task.StateResponse)
            with pytest.raises(ttrpc.OversizedMessage):  # request over the server's limit
                await c.call(SVC, "Echo", task.StateRequest(id="x" * 3000), task.StateResponse)
            assert (await c.call(SVC, "Echo", task.StateRequest(id="a"), task.StateResponse)).id == "a"
    finally:
        await srv.close()


async def test_large_message_within_limit(client: ttrpc.Client) -> None:
    r = await client.call(SVC, "Big", task.StateRequest(exec_id=str(3 << 20)), task.StateResponse)
    assert len(r.id) == 3 << 20


async def test_large_and_small_calls_interleaved(client: ttrpc.Client) -> None:
    """Big frames (written straight through) and small ones (gathered) keep the byte stream in step."""
    calls = []
    for i in range(20):
        size = (1 << 20) if i % 5 == 0 else 10
        calls.append(client.call(SVC, "Big", task.StateRequest(exec_id=str(size)), task.StateResponse))
        calls.append(client.call(SVC, "Echo", task.StateRequest(id="y" * (200_000 if i % 7 == 0 else 3)),
                                 task.StateResponse))
    results = await asyncio.gather(*calls)
    for i in range(20):
        assert len(results[2 * i].id) == ((1 << 20) if i % 5 == 0 else 10)
        assert len(results[2 * i + 1].id) == (200_000 if i % 7 == 0 else 3)


# ---------------------------------------------------------------------------
# streaming


async def test_server_streaming(client: ttrpc.Client) -> None:
    st = await client.stream(SVC, "Count", task.KillRequest(signal=5), task.StateResponse)
    assert [m.pid async for m in st] == [0, 1, 2, 3, 4]
    assert await st.recv() is None
    assert client._streams == {}


async def test_server_streaming_with_final_message(client: ttrpc.Client) -> None:
    st = await client.stream(SVC, "CountTail", task.KillRequest(signal=2), task.StateResponse)
    got = [(m.pid, m.id) async for m in st]
    assert got == [(0, ""), (1, ""), (0, "tail")]


async def test_client_streaming(client: ttrpc.Client) -> None:
    st = await client.stream(SVC, "Total", None, task.StateResponse, client_streaming=True,
                             server_streaming=False, metadata={ttrpc.METADATA_NAMESPACE: "nsx"})
    for i in range(1, 11):
        await st.send(task.KillRequest(signal=i))
    await st.close_send()
    r = await st.recv()
    assert (r.pid, r.id) == (55, "nsx")
    assert await st.recv() is None
    with pytest.raises(ttrpc.ProtocolError):
        await st.send(task.KillRequest(signal=1))


async def test_client_streaming_with_initial_message(client: ttrpc.Client) -> None:
    st = await client.stream(SVC, "Total", task.KillRequest(signal=100), task.StateResponse,
                             client_streaming=True, server_streaming=False)
    await st.send(task.KillRequest(signal=1))
    await st.close_send()
    assert (await st.recv()).pid == 101


async def test_bidirectional_streaming(client: ttrpc.Client) -> None:
    st = await client.stream(SVC, "EchoStream", None, task.StateResponse,
                             client_streaming=True, server_streaming=True)
    for i in range(3):
        await st.send(task.KillRequest(signal=i + 1))
        assert (await st.recv()).pid == 2 * (i + 1)  # interleaved: reply before closing
    await st.close_send()
    assert await st.recv() is None


async def test_stream_error_ends_stream(client: ttrpc.Client) -> None:
    st = await client.stream(SVC, "StreamFail", task.KillRequest(), task.StateResponse)
    assert (await st.recv()).pid == 1
    with pytest.raises(errors.NotFound, match="gone mid-stream"):
        await st.recv()
    assert await st.recv() is None


async def test_stream_flags_on_the_wire(server: ttrpc.Server, sock_path: str) -> None:
    """Client-streaming Request carries remote-open, data follows, remote-closed|no-data ends it;
    a server stream ends with a Data frame flagged remote-closed|no-data."""
    reader, writer = await asyncio.open_unix_connection(sock_path)

    async def frame() -> tuple[int, int, int, bytes]:
        length, sid, mtype, flags = HDR.unpack(await reader.readexactly(10))
        return sid, mtype, flags, await reader.readexactly(length)

    req = bytes(Request(service=SVC, method="EchoStream"))
    writer.write(HDR.pack(len(req), 1, 1, 0x02) + req)
    d = bytes(task.KillRequest(signal=21))
    writer.write(HDR.pack(len(d), 1, 3, 0) + d)
    sid, mtype, flags, body = await frame()
    assert (sid, mtype, flags, task.StateResponse.parse(body).pid) == (1, 3, 0, 42)
    writer.write(HDR.pack(0, 1, 3, 0x01 | 0x04))
    assert await frame() == (1, 3, 0x01 | 0x04, b"")
    # data on a finished stream is refused
    writer.write(HDR.pack(len(d), 1, 3, 0) + d)
    sid, mtype, _, body = await frame()
    assert (sid, mtype, Response.parse(body).status.code) == (1, 2, errors.Code.INVALID_ARGUMENT)
    writer.close()
    await writer.wait_closed()


async def test_stream_client_timeout(client: ttrpc.Client) -> None:
    st = await client.stream(SVC, "EchoStream", None, task.StateResponse,
                             client_streaming=True, timeout=0.05)
    with pytest.raises(errors.DeadlineExceeded):
        await st.recv()
    assert client._streams == {}


# ---------------------------------------------------------------------------
# close and shutdown


async def test_client_close_fails_pending_calls(client: ttrpc.Client, handlers: Handlers) -> None:
    pending = asyncio.create_task(client.call(SVC, "Block", Empty(), Empty))
    st = await client.stream(SVC, "EchoStream", None, task.StateResponse, client_streaming=True)
    await handlers.started.wait()
    await client.close()
    assert client.closed
    with pytest.raises(ttrpc.Closed):
        await pending
    with pytest.raises(ttrpc.Closed):
        await st.recv()
    with pytest.raises(ttrpc.Closed):
        await client.call(SVC, "Echo", task.StateRequest(), task.StateResponse)
    assert isinstance(ttrpc.Closed(), errors.Unavailable)
    await handlers.cancelled.wait()  # the server noticed the connection going and cancelled the handler
    await client.close()  # idempotent


async def test_server_close_cancels_calls_and_client_sees_closed(
        handlers: Handlers, sock_path: str) -> None:
    srv, c, pending = await blocked_call(handlers, "unix://" + sock_path)
    await srv.close()
    assert handlers.cancelled.is_set()
    with pytest.raises(ttrpc.Closed):
        await pending
    await c.wait_closed()
    assert c.closed
    assert not os.path.exists(sock_path)  # the socket file we created is removed
    with pytest.raises(ttrpc.Closed):
        await ttrpc.Client.connect(sock_path)


async def test_server_shutdown_lets_calls_finish(handlers: Handlers, sock_path: str) -> None:
    srv, c, pending = await blocked_call(handlers, sock_path)
    shutdown = asyncio.create_task(srv.shutdown(timeout=30))
    handlers.release.set()
    assert await pending == Empty()  # answered, not cancelled
    await shutdown
    await c.wait_closed()
    with pytest.raises(ttrpc.Closed):  # no longer accepting
        await ttrpc.Client.connect(sock_path)


async def test_server_shutdown_timeout_cancels(handlers: Handlers, sock_path: str) -> None:
    srv, _, pending = await blocked_call(handlers, sock_path)
    await srv.shutdown(timeout=0.05)
    assert handlers.cancelled.is_set()
    with pytest.raises(ttrpc.Closed):
        await pending


async def test_client_sees_server_going_away(sock_path: str) -> None:
    """A peer that drops the connection: wait_closed resolves, pending calls fail with Closed."""
    got_request = asyncio.Event()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(10)
        got_request.set()
        writer.close()

    srv = await asyncio.start_unix_server(peer, sock_path)
    try:
        c = await ttrpc.Client.connect(sock_path)
        with pytest.raises(ttrpc.Closed):
            await c.call(SVC, "Echo", task.StateRequest(), task.StateResponse)
        assert got_request.is_set()
        await c.wait_closed()
        assert c.closed
    finally:
        srv.close()


async def test_abstract_socket_and_passed_socket(handlers: Handlers, sock_path: str) -> None:
    name = f"aioc-ttrpc-test-{os.getpid()}-{id(handlers)}"
    srv = make_server(handlers)
    await srv.start("@" + name)
    try:
        async with await ttrpc.Client.connect("unix://@" + name) as c:
            assert (await c.call(SVC, "Echo", task.StateRequest(id="abs"), task.StateResponse)).id == "abs"
    finally:
        await srv.close()

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(sock_path)
    sock.listen()
    srv = make_server(handlers)
    await srv.start(sock=sock)
    try:
        async with await ttrpc.Client.connect(sock_path) as c:
            assert (await c.call(SVC, "Echo", task.StateRequest(id="fd"), task.StateResponse)).id == "fd"
    finally:
        await srv.close()


async def test_start_replaces_stale_socket_but_not_a_live_one(handlers: Handlers, sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens
    srv = make_server(handlers)
    await srv.start(sock_path)
    try:
        other = make_server(handlers)
        with pytest.raises(errors.AlreadyExists):
            await other.start(sock_path)
        async with await ttrpc.Client.connect(sock_path) as c:
            assert (await c.call(SVC, "Echo", task.StateRequest(id="a"), task.StateResponse)).id == "a"
    finally:
        await srv.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
async def test_require_same_user(handlers: Handlers, sock_path: str) -> None:
    srv = ttrpc.Server(require_same_user=True)
    srv.register(SVC, {"Echo": (task.StateRequest, handlers.echo)})
    await srv.start(sock_path)
    os.chmod(os.path.dirname(sock_path), 0o755)
    os.chmod(sock_path, 0o777)
    try:
        async with await ttrpc.Client.connect(sock_path) as c:  # same user: served
            assert (await c.call(SVC, "Echo", task.StateRequest(id="me"), task.StateResponse)).id == "me"
        # a forked child (no exec: the venv is not readable by nobody) connects as nobody
        frame = bytes(Request(service=SVC, method="Echo", payload=bytes(task.StateRequest(id="x"))))
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(20)
                    s.connect(sock_path)
                    try:
                        s.sendall(HDR.pack(len(frame), 1, 1, 0) + frame)
                        code = 0 if s.recv(10) == b"" else 2  # closed without an answer
                    except ConnectionError:
                        code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(await wait_child_exit(pid)) == 0
        assert handlers.seen_metadata == [{}]  # only our own call reached the handler
    finally:
        await srv.close()


def test_imports_no_grpclib_or_aiohttp() -> None:
    code = ("import sys, aiocontainerd.ttrpc\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('grpclib', 'aiohttp', 'lmdb')\n"
            "       or m.startswith(('aiocontainerd.services', 'aiocontainerd.metadata',\n"
            "                        'aiocontainerd.daemon', 'aiocontainerd.client'))]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"
