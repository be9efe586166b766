"""The gRPC server's HTTP/2 connection (services/http2.py) against an independent client
implementation (the h2 library's client side), frame by frame."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from aiocontainerd.services import http2

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/test.v1.Probe/Echo"),
           (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")]


class Wire:
    """A transport that keeps what the server writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def take(self) -> bytes:
        out, self.data = bytes(self.data), bytearray()
        return out


class Peer:
    """An h2 client connected to an http2.Connection through a Wire."""

    def __init__(self, settings: dict[int, int] | None = None,
                 server: http2.Connection | None = None) -> None:
        self.requests: list[http2.Stream] = []
        self.lost: list[http2.Connection] = []
        self.server = server or http2.Connection(self.requests.append, self.lost.append)
        self.wire = Wire()
        self.server.connection_made(self.wire)  # type: ignore[arg-type]
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.client.initiate_connection()
        if settings:
            self.client.update_settings(settings)
        self.events: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> list[h2.events.Event]:
        """Move bytes both ways until nothing moves; the client's new events."""
        new: list[h2.events.Event] = []
        while True:
            out = self.client.data_to_send()
            if out:
                self.server.data_received(out)
            self.server.flush()
            back = self.wire.take()
            if back:
                new += self.client.receive_data(back)
            if not out and not back:
                break
        self.events += new
        return new

    def request(self, headers: list[tuple[str, str]] = REQUEST, body: bytes = b"",
                end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.client.send_data(sid, body, end_stream=end)
        self.pump()
        return sid


def _of(events: list[h2.events.Event], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


async def _read_all(stream: http2.Stream) -> bytes:
    out = b""
    while chunk := await stream.read():
        out += chunk
    return out


OK = http2.encode_headers([(":status", "200"), ("content-type", "application/grpc+proto")])
TRAILERS = http2.encode_headers([("grpc-status", "0")])


async def test_a_request_and_its_answer_in_one_write() -> None:
    peer = Peer()
    assert _of(peer.events, h2.events.RemoteSettingsChanged)
    sid = peer.request(body=b"hello")
    [stream] = peer.requests
    assert stream.id == sid and stream.headers[":path"] == "/test.v1.Probe/Echo"
    assert await _read_all(stream) == b"hello"
    assert stream.try_send(OK, b"reply", TRAILERS)
    assert stream.ended and sid not in peer.server.streams
    events = peer.pump()
    [response] = _of(events, h2.events.ResponseReceived)
    assert dict(response.headers) == {b":status": b"200", b"content-type": b"application/grpc+proto"}
    assert b"".join(e.data for e in _of(events, h2.events.DataReceived)) == b"reply"
    [trailers] = _of(events, h2.events.TrailersReceived)
    assert dict(trailers.headers) == {b"grpc-status": b"0"}
    assert _of(events, h2.events.StreamEnded)


async def test_data_waits_for_the_peers_windows() -> None:
    peer = Peer({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    peer.request()
    [stream] = peer.requests
    stream.send_headers(OK)
    body = bytes(range(256)) * 4
    sending = asyncio.ensure_future(stream.send_data(body))
    received = b""
    for _ in range(5000):
        await asyncio.sleep(0)
        events = peer.pump()
        for e in _of(events, h2.events.DataReceived):
            assert len(e.data) <= 10
            received += e.data
            peer.client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        if sending.done():
            break
    assert sending.done()
    await sending
    assert received == body
    assert not stream.try_send(OK, b"x" * 11, TRAILERS)       # over the window: not sent
    stream.send_headers(TRAILERS, end_stream=True)
    assert _of(peer.pump(), h2.events.StreamEnded)


async def test_a_large_request_body_is_credited_back_as_it_is_read() -> None:
    peer = Peer()
    sid = peer.client.get_next_available_stream_id()
    peer.client.send_headers(sid, REQUEST)
    peer.pump()
    [stream] = peer.requests
    body = random.Random(1).randbytes(6 * 1024 * 1024)   # more than one window (4 MiB)
    sent = 0
    got = bytearray()
    while sent < len(body) or len(got) < len(body):
        window = min(peer.client.local_flow_control_window(sid), 16384)
        if sent < len(body) and window > 0:
            n = min(window, len(body) - sent)
            peer.client.send_data(sid, body[sent:sent + n], end_stream=sent + n == len(body))
            sent += n
            peer.pump()
            continue
        got += await stream.read()
        peer.pump()
    assert bytes(got) == body and await stream.read() == b""


async def test_long_header_blocks_go_out_in_continuation_frames() -> None:
    peer = Peer()
    peer.request()
    [stream] = peer.requests
    message = "x" * 40000
    stream.send_headers(http2.encode_headers(
        [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "13"),
         ("grpc-message", message)]), end_stream=True)
    [response] = _of(peer.pump(), h2.events.ResponseReceived)
    assert dict(response.headers)[b"grpc-message"] == message.encode()


async def test_ping_is_answered_and_a_reset_reaches_the_stream() -> None:
    peer = Peer()
    peer.client.ping(b"12345678")
    [ack] = _of(peer.pump(), h2.events.PingAckReceived)
    assert ack.ping_data == b"12345678"
    sid = peer.request(end=False)
    [stream] = peer.requests
    resets: list[int] = []
    stream.on_reset = lambda: resets.append(sid)
    reading = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)
    peer.client.reset_stream(sid)
    peer.pump()
    assert resets == [sid]
    with pytest.raises(http2.StreamReset):
        await reading
    with pytest.raises(http2.StreamReset):
        stream.send_headers(OK)


async def test_going_away_refuses_new_streams_and_closes_after_the_last() -> None:
    peer = Peer()
    peer.request()
    [stream] = peer.requests
    peer.server.go_away()
    [goaway] = _of(peer.pump(), h2.events.ConnectionTerminated)
    assert goaway.error_code == 0 and goaway.last_stream_id == stream.id
    assert not peer.wire.closed
    stream.send_headers(TRAILERS, end_stream=True)
    await asyncio.sleep(0)
    assert peer.wire.closed


async def test_protocol_errors_close_the_connection_with_goaway() -> None:
    wire = Wire()
    conn = http2.Connection(lambda s: None, lambda c: None)
    conn.connection_made(wire)  # type: ignore[arg-type]
    conn.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wire.closed and b"not an HTTP/2 client preface" in wire.data
    peer = Peer()
    peer.server.data_received(http2.frame(http2.PUSH_PROMISE, http2.END_HEADERS, 1, b"\0\0\0\2"))
    assert peer.wire.closed
    [goaway] = _of(peer.client.receive_data(peer.wire.take()), h2.events.ConnectionTerminated)
    assert goaway.error_code == http2.PROTOCOL_ERROR
    peer = Peer()
    peer.server.data_received(http2.frame(http2.HEADERS, http2.END_HEADERS, 1, b"\xff\xff\xff\xff"))
    assert peer.wire.closed                              # an index past every table
    for kind, payload in ((http2.RST_STREAM, b"\0\0\0\0"), (http2.WINDOW_UPDATE, b"\0\0\0\1")):
        peer = Peer()                                    # on a stream never opened
        peer.server.data_received(http2.frame(kind, 0, 7, payload))
        assert peer.wire.closed


async def test_cached_header_blocks_decode_as_a_fresh_decoder_does() -> None:
    """Indexed-only blocks are decoded once; replaying old blocks after the dynamic table
    changed must decode as the reference decoder does (never from a stale cache)."""
    rng = random.Random(7)
    encoder = hpack.Encoder()
    blocks: list[bytes] = []
    for _ in range(400):
        if blocks and rng.random() < 0.4:
            blocks.append(rng.choice(blocks))           # a replay, meaning may have shifted
            continue
        value = str(rng.randrange(6))
        blocks.append(encoder.encode([(":path", "/p" + value), ("x-n", value * 200),
                                      ("containerd-namespace", "ns")]))
    reference = hpack.Decoder()
    conn = http2.Connection(lambda s: None, lambda c: None)
    hits = 0
    for block in blocks:
        try:
            fields = reference.decode(block)
            expected: dict[str, str] | Exception = dict(fields)
            if http2._malformed(fields):                 # e.g. a replay shifted to x-n before :path
                expected = http2._Malformed()
        except hpack.HPACKError as e:
            expected = e
        cached = block in conn._indexed
        try:
            got: dict[str, str] | Exception = conn._decode(block)
        except (http2.ConnectionError_, http2._Malformed) as e:
            got = e
        if isinstance(expected, http2._Malformed):
            assert isinstance(got, http2._Malformed)
            continue
        if isinstance(expected, Exception):
            assert isinstance(got, Exception)
            reference, conn._decoder, conn._indexed = hpack.Decoder(), hpack.Decoder(), {}
            continue
        hits += cached
        assert got == expected
    assert hits > 10                                     # the cache was used


def test_header_encoding_never_touches_the_dynamic_table() -> None:
    decoder = hpack.Decoder()
    fields = [(":status", "200"), (":status", "415"), ("content-type", "application/grpc+proto"),
              ("grpc-status", "5"), ("grpc-message", "y" * 300)]
    block = b"\x20" + http2.encode_headers(fields)
    assert [(n, v) for n, v in decoder.decode(block)] == fields
    assert len(decoder.header_table.dynamic_entries) == 0


async def test_floods_are_bounded() -> None:
    peer = Peer()
    peer.server.data_received(http2.frame(http2.HEADERS, 0, 1, b"\x82"))      # no END_HEADERS
    for _ in range(20):
        if peer.wire.closed:
            break
        peer.server.data_received(http2.frame(http2.CONTINUATION, 0, 1, b"\x82" * 16384))
    assert peer.wire.closed                          # past 2 x MAX_HEADER_LIST: refused
    [goaway] = _of(peer.client.receive_data(peer.wire.take()), h2.events.ConnectionTerminated)
    assert goaway.error_code == http2.ENHANCE_YOUR_CALM
    peer = Peer()                                    # a client that does not read is not read
    peer.server.pause_writing()
    assert not peer.wire.reading
    peer.server.resume_writing()
    assert peer.wire.reading
    peer = Peer()                                    # many window settings in one frame: the last
    peer.request(end=False)
    [stream] = peer.requests
    entries = b"".join(http2._SETTING.pack(http2.INITIAL_WINDOW_SIZE, n) for n in (5, 70000, 100))
    peer.server.data_received(http2.frame(http2.SETTINGS, 0, 0, entries))
    assert stream.send_window == 100 and peer.server.peer_initial_window == 100
    stream.send_window = http2.MAX_WINDOW - 10       # a window pushed past 2^31-1: refused
    peer.server.data_received(http2.frame(http2.SETTINGS, 0, 0,
                                          http2._SETTING.pack(http2.INITIAL_WINDOW_SIZE, 200)))
    assert peer.wire.closed


async def test_a_stream_that_stops_reading_keeps_nothing() -> None:
    peer = Peer()
    sid = peer.request(body=b"one", end=False)
    [stream] = peer.requests
    assert await stream.read() == b"one"
    stream.stop_reading()
    for _ in range(4):
        peer.client.send_data(sid, b"x" * 16000)
    peer.pump()
    assert not stream._chunks


async def test_malformed_requests_are_stream_errors() -> None:
    peer = Peer()
    bad = [[*REQUEST, ("connection", "close")], [*REQUEST, ("te", "gzip")],
           [("content-type", "application/grpc"), *REQUEST], [*REQUEST, (":foo", "x")],
           [*REQUEST, ("X-Upper", "1")]]
    for sid, headers in zip(range(1, 2 * len(bad), 2), bad, strict=True):
        block = hpack.Encoder().encode(headers)
        peer.server.data_received(http2.frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM,
                                              sid, block))
    assert not peer.requests and not peer.wire.closed   # refused one by one, not dispatched
    peer.server.flush()
    resets = [f for f in _frames(peer.wire.take()) if f[0] == http2.RST_STREAM]
    assert len(resets) == len(bad) and all(f[3] == b"\0\0\0\1" for f in resets)
    peer.server.data_received(http2.frame(http2.HEADERS, http2.END_HEADERS | http2.PRIORITY_FLAG,
                                          99, b"\0\0"))
    assert peer.wire.closed                              # too short for its priority fields


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, i = [], 0
    while i + 9 <= len(data):
        n = int.from_bytes(data[i:i + 3], "big")
        out.append((data[i + 3], data[i + 4], int.from_bytes(data[i + 5:i + 9], "big"),
                    data[i + 9:i + 9 + n]))
        i += 9 + n
    return out
