"""The gRPC server (services/server.py) against grpclib's client: unary and streamed
answers, errors as trailers-only answers, deadlines and cancellation, and the middleware
(namespace context, error codes, metrics)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpclib.const
import h2.events
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from aiocontainerd.api.containerd.services.version.v1 import VersionResponse as Text
from aiocontainerd.errors import NotFound
from aiocontainerd.metrics import Metrics
from aiocontainerd.services import context
from aiocontainerd.services.server import Server
from tests.unit.test_http2 import Peer, _of

SERVICE = "/test.v1.Probe/"


class Probe:
    """A servicer of unary and streaming methods recording how it was called (its messages:
    any message with a string field will do, here ``VersionResponse.version``)."""

    def __init__(self) -> None:
        self.streams: list[str] = []
        self.namespaces: list[str | None] = []
        self.hang_cancelled = asyncio.Event()

    async def echo(self, stream: Any) -> None:
        request = await stream.recv_message()
        self.streams.append(type(stream).__name__)
        self.namespaces.append(context.current.get().namespace)
        await stream.send_message(Text(version=request.version.upper()))

    async def wired(self, stream: Any) -> None:
        await stream.recv_message()
        reply = Text(version="fields")
        reply.SerializeToString = lambda: bytes(Text(version="pre-encoded"))
        await stream.send_message(reply)

    async def missing(self, stream: Any) -> None:
        await stream.recv_message()
        raise NotFound("probe \"x\": not found")

    async def hang(self, stream: Any) -> None:
        await stream.recv_message()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.hang_cancelled.set()
            raise

    async def silent(self, stream: Any) -> None:
        await stream.recv_message()  # answers nothing: a handler bug

    async def join(self, stream: Any) -> None:
        await stream.send_message(Text(version="".join([m.version async for m in stream])))

    async def big(self, stream: Any) -> None:
        request = await stream.recv_message()
        for c in request.version:
            await stream.send_message(Text(version=c * (2 * 1024 * 1024)))

    async def many(self, stream: Any) -> None:
        request = await stream.recv_message()
        for c in request.version:
            await stream.send_message(Text(version=c))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        def unary(func: Any) -> grpclib.const.Handler:
            return grpclib.const.Handler(func, Cardinality.UNARY_UNARY, Text, Text)

        return {SERVICE + "Echo": unary(self.echo), SERVICE + "Missing": unary(self.missing),
                SERVICE + "Wired": unary(self.wired),
                SERVICE + "Hang": unary(self.hang), SERVICE + "Silent": unary(self.silent),
                SERVICE + "Many": grpclib.const.Handler(self.many, Cardinality.UNARY_STREAM,
                                                        Text, Text),
                SERVICE + "Big": grpclib.const.Handler(self.big, Cardinality.UNARY_STREAM, Text, Text),
                SERVICE + "Join": grpclib.const.Handler(self.join, Cardinality.STREAM_UNARY,
                                                        Text, Text)}


@pytest.fixture
async def served(tmp_path: Path):
    probe, metrics = Probe(), Metrics()
    server = Server([probe], metrics)
    path = str(tmp_path / "grpc.sock")
    await server.start(path=path)
    channel = Channel(path=path)
    yield probe, metrics, channel
    channel.close()
    server.close()
    await server.wait_closed()


async def _unary(channel: Channel, method: str, value: str = "", **kw: Any) -> Any:
    async with channel.request(SERVICE + method, Cardinality.UNARY_UNARY, Text,
                               Text, **kw) as stream:
        await stream.send_message(Text(version=value), end=True)
        reply = await stream.recv_message()
        await stream.recv_trailing_metadata()
        return reply, stream


async def test_unary_calls_run_through_the_middleware(served) -> None:
    probe, metrics, channel = served
    reply, stream = await _unary(channel, "Echo", "hi", metadata={"containerd-namespace": "ns1"})
    assert reply.version == "HI"
    assert stream.initial_metadata is not None and stream.trailing_metadata is not None
    assert probe.streams == ["_Call"] and probe.namespaces == ["ns1"]
    # with a deadline (grpc-timeout): the same
    reply, _ = await _unary(channel, "Echo", "deadline", timeout=5,
                            metadata={"containerd-namespace": "ns2"})
    assert reply.version == "DEADLINE"
    assert probe.streams == ["_Call"] * 2 and probe.namespaces == ["ns1", "ns2"]
    text = metrics.render().decode()
    assert ('grpc_server_handled_total{grpc_code="OK",grpc_method="Echo",'
            'grpc_service="test.v1.Probe",grpc_type="unary"} 2') in text


async def test_errors_are_trailers_only_answers_with_the_code_and_message(served) -> None:
    _, metrics, channel = served
    for kw in ({}, {"timeout": 5}):                      # without and with a deadline
        with pytest.raises(GRPCError) as e:
            await _unary(channel, "Missing", **kw)
        assert e.value.status is Status.NOT_FOUND
        assert e.value.message == 'probe "x": not found'
    with pytest.raises(GRPCError) as e:                  # a unary handler that sent nothing
        await _unary(channel, "Silent")
    assert e.value.status is Status.UNKNOWN
    assert 'grpc_code="NotFound",grpc_method="Missing"' in metrics.render().decode()
    reply, _ = await _unary(channel, "Echo", "after")    # the connection still serves
    assert reply.version == "AFTER"


async def test_past_its_deadline_a_call_is_cancelled(served) -> None:
    probe, metrics, channel = served
    with pytest.raises((GRPCError, TimeoutError)):
        await _unary(channel, "Hang", timeout=0.3)
    await asyncio.wait_for(probe.hang_cancelled.wait(), 5)
    assert 'grpc_code="Canceled",grpc_method="Hang"' in metrics.render().decode()
    reply, _ = await _unary(channel, "Echo", "next", timeout=5)
    assert reply.version == "NEXT"


async def test_a_cancelled_call_cancels_its_handler(served) -> None:
    probe, _, channel = served
    call = asyncio.ensure_future(_unary(channel, "Hang"))
    await asyncio.sleep(0.2)
    call.cancel()                                        # the client resets the stream
    await asyncio.wait_for(probe.hang_cancelled.wait(), 5)
    reply, _ = await _unary(channel, "Echo", "next")
    assert reply.version == "NEXT"


async def test_streamed_replies_and_unknown_methods(served) -> None:
    _, _, channel = served
    async with channel.request(SERVICE + "Many", Cardinality.UNARY_STREAM, Text,
                               Text) as stream:
        await stream.send_message(Text(version="abc"), end=True)
        assert [m.version async for m in stream] == ["a", "b", "c"]
    with pytest.raises(GRPCError) as e:
        await _unary(channel, "Nope")
    assert e.value.status is Status.UNIMPLEMENTED


async def test_client_streams_large_messages_and_flow_control(served) -> None:
    _, metrics, channel = served
    async with channel.request(SERVICE + "Join", Cardinality.STREAM_UNARY, Text, Text) as stream:
        for part in ("a" * 3_000_000, "b" * 3_000_000, "c"):     # past the 4 MiB windows
            await stream.send_message(Text(version=part))
        await stream.end()
        reply = await stream.recv_message()
    assert reply.version == "a" * 3_000_000 + "b" * 3_000_000 + "c"
    async with channel.request(SERVICE + "Big", Cardinality.UNARY_STREAM, Text, Text) as stream:
        await stream.send_message(Text(version="xyz"), end=True)
        sizes = [(m.version[0], len(m.version)) async for m in stream]
    assert sizes == [(c, 2 * 1024 * 1024) for c in "xyz"]
    with pytest.raises(GRPCError) as e:                    # over containerd's 16 MiB
        await _unary(channel, "Echo", "x" * (17 * 1024 * 1024))
    assert e.value.status is Status.RESOURCE_EXHAUSTED
    reply, _ = await _unary(channel, "Echo", "still")
    assert reply.version == "STILL"
    reply, _ = await _unary(channel, "Wired")           # the reply's own SerializeToString
    assert reply.version == "pre-encoded"
    assert 'grpc_code="OK",grpc_method="Join",grpc_service="test.v1.Probe",grpc_type="client_stream"' \
        in metrics.render().decode()


async def test_closing_the_server_cancels_running_calls(tmp_path: Path) -> None:
    probe = Probe()
    server = Server([probe])
    path = str(tmp_path / "grpc.sock")
    await server.start(path=path)
    channel = Channel(path=path)
    try:
        call = asyncio.ensure_future(_unary(channel, "Hang"))
        await asyncio.sleep(0.2)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        assert probe.hang_cancelled.is_set()
        with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
            await asyncio.wait_for(call, 5)
    finally:
        channel.close()


def _framed(text: str) -> bytes:
    data = bytes(Text(version=text))
    return b"\0" + len(data).to_bytes(4, "big") + data


def _raw(server: Server) -> Peer:
    """An h2 client on an in-memory connection to ``server`` (not started)."""
    return Peer(server=server._connect())


REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", SERVICE + "Echo"),
           (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")]


async def _answer(peer: Peer, sid: int) -> dict[bytes, bytes]:
    """The trailers (or trailers-only headers) of stream ``sid``, once they arrive."""
    for _ in range(100):
        await asyncio.sleep(0)
        peer.pump()
        for e in peer.events:
            if isinstance(e, (h2.events.TrailersReceived, h2.events.ResponseReceived)) \
                    and e.stream_id == sid and b"grpc-status" in dict(e.headers):
                return dict(e.headers)
    raise AssertionError(f"no answer on stream {sid}")


async def test_unary_requests_the_client_leaves_open_or_empty() -> None:
    probe = Probe()
    server = Server([probe])
    peer = _raw(server)
    connection = peer.server
    sid = peer.request(REQUEST, body=_framed("open"), end=False)   # never half-closed
    assert (await _answer(peer, sid))[b"grpc-status"] == b"0"
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == sid and e.error_code == 0
               for e in peer.events)                  # RST_STREAM(NO_ERROR) after the answer
    assert not connection.streams
    sid = peer.request(REQUEST)                       # headers only: no message
    answer = await _answer(peer, sid)
    assert answer[b"grpc-status"] == str(Status.INTERNAL.value).encode()
    assert answer[b"grpc-message"] == b"the request has no message"
    for bad in ("9" * 400 + "m", "1x", "123456789S"):  # over 8 digits, no unit
        sid = peer.request([*REQUEST, ("grpc-timeout", bad)], body=_framed("t"))
        assert (await _answer(peer, sid))[b"grpc-status"] == str(Status.INTERNAL.value).encode()
    sid = peer.request([*REQUEST, ("grpc-timeout", "99999999H")], body=_framed("ok"))
    assert (await _answer(peer, sid))[b"grpc-status"] == b"0"
    assert not peer.wire.closed and not connection.streams


async def test_a_closing_server_answers_running_calls_unavailable() -> None:
    probe = Probe()
    server = Server([probe])
    server._server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0)
    peer = _raw(server)
    sid = peer.request([*REQUEST[:2], (":path", SERVICE + "Hang"), *REQUEST[3:]], body=_framed("x"))
    await asyncio.sleep(0.05)
    server.close()
    await asyncio.wait_for(server.wait_closed(), 5)
    answer = await _answer(peer, sid)
    assert answer[b"grpc-status"] == str(Status.UNAVAILABLE.value).encode()
    assert probe.hang_cancelled.is_set()
    assert _of(peer.events, h2.events.ConnectionTerminated)    # GOAWAY
