"""HTTP/2 server connections (RFC 9113) for the gRPC server: frames, streams, flow control.

One :class:`Connection` (an asyncio protocol) per accepted client. It speaks the
server side of HTTP/2 as gRPC clients use it (Go's grpc, grpclib):

- the client preface, SETTINGS (and their ACK), PING (answered), WINDOW_UPDATE,
  RST_STREAM, GOAWAY, PRIORITY (ignored, RFC 9113 §5.3.2), unknown frame types
  (ignored, §4.1); PUSH_PROMISE from a client is a connection error (§8.4);
- client streams (odd ids, increasing): a request's HEADERS (with CONTINUATION,
  padding and priority fields), its DATA and trailers; each new stream is handed to
  ``on_request`` as a :class:`Stream`;
- flow control both ways (§6.9): received DATA is credited back to the connection at
  once and to its stream as the application reads it (so a fast sender waits for a
  slow handler); DATA sent waits for the peer's windows, its SETTINGS_MAX_FRAME_SIZE
  and the transport's write buffer;
- header blocks are decoded with the ``hpack`` library (RFC 7541, its dynamic table
  and Huffman code). Header blocks sent are encoded here, with literals that never
  enter the dynamic table (§6.2.2) and a table size update to 0 in the first block
  (§4.2, §6.3): the peer's decoder state never depends on ours, whatever its
  SETTINGS_HEADER_TABLE_SIZE.

Errors: a protocol violation is answered with GOAWAY and the connection closed
(§5.4.1); a stream error with RST_STREAM (§5.4.2). Nothing here knows gRPC.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import struct
from collections.abc import Callable

import hpack

log = logging.getLogger(__name__)

# frame types (RFC 9113 §6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes (§7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM = range(12)
# settings (§6.5.2)
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
DEFAULT_FRAME = 16384
MAX_WINDOW = 2**31 - 1
#: what this server lets a client send before it reads (bytes): per stream, per connection
STREAM_WINDOW = 1024 * 1024
CONNECTION_WINDOW = 4 * 1024 * 1024
#: the largest request header list (bytes, RFC 9113 §6.5.2; the hpack library's default),
#: advertised; a header block whose compressed fragments pass twice that is refused
MAX_HEADER_LIST = 65536

_HEAD = struct.Struct(">HBBBL")        # length (24 bits as 16 + 8), type, flags, stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame on the wire (§4.1): 9-byte header + payload."""
    n = len(payload)
    return _HEAD.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def _integer(value: int, prefix: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with a ``prefix``-bit prefix under ``first``'s bits."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((first | value,))
    out = bytearray((first | top,))
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _integer(len(raw), 7, 0) + raw


#: RFC 7541 Appendix A names used by responses: their static table index
_STATIC_NAMES = {":status": 8, "content-type": 31}


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    """A header block of ``headers`` (names lower case), each a literal without indexing
    (RFC 7541 §6.2.2), ``:status: 200`` as its static entry (§6.1)."""
    out = []
    for name, value in headers:
        if name == ":status" and value == "200":
            out.append(b"\x88")
            continue
        index = _STATIC_NAMES.get(name)
        if index is not None:
            out.append(_integer(index, 4, 0))
        else:
            out.append(b"\x00" + _string(name))
        out.append(_string(value))
    return b"".join(out)


def _only_indexed(block: bytes) -> bool:
    """True if every representation in the header ``block`` is an indexed field (§6.1)."""
    i, n = 0, len(block)
    while i < n:
        b = block[i]
        if not b & 0x80:
            return False
        i += 1
        if b & 0x7F == 0x7F:          # the index continues (§5.1)
            while i < n and block[i] & 0x80:
                i += 1
            i += 1
    return True


_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection",
                                  "transfer-encoding", "upgrade"})
_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":path", ":authority", ":protocol"})


def _malformed(fields: list[tuple[str, str]]) -> str | None:
    """Why a request's (or trailers') decoded ``fields`` make it malformed (RFC 9113 §8.2.1,
    §8.2.2, §8.3: upper-case names, connection-specific fields, ``te`` other than
    ``trailers``, unknown pseudo-headers or one after a regular field); None if they do not."""
    regular = False
    for name, value in fields:
        if name.startswith(":"):
            if regular:
                return f"pseudo-header {name} after a regular field"
            if name not in _REQUEST_PSEUDO:
                return f"unknown pseudo-header {name}"
        else:
            regular = True
            if name in _CONNECTION_SPECIFIC or (name == "te" and value != "trailers"):
                return f"connection-specific field {name}"
        if name != name.lower():
            return f"upper-case field name {name!r}"
    return None


class _Malformed(Exception):
    """A header block that decoded but makes its request malformed (a stream error)."""


class ConnectionError_(Exception):
    """A connection error (§5.4.1): answered with GOAWAY(code) and the connection closed."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamReset(Exception):
    """The stream was reset (by the peer's RST_STREAM, or its connection was lost)."""


class Stream:
    """One client-initiated stream: the request's headers and body, and the reply.

    ``headers`` maps the request's header names to values (the last of repeated names);
    ``on_reset`` (set by the application) is called once if the stream is reset by the
    peer or its connection is lost before the stream ended.
    """

    __slots__ = (
        "_chunks",
        "_consumed",
        "_discard",
        "_local_closed",
        "_remote_closed",
        "_reset",
        "_waiter",
        "connection",
        "headers",
        "id",
        "on_reset",
        "recv_window",
        "send_window",
    )

    def __init__(self, connection: Connection, stream_id: int, headers: dict[str, str]) -> None:
        self.connection = connection
        self.id = stream_id
        self.headers = headers
        self.send_window = connection.peer_initial_window
        self.recv_window = STREAM_WINDOW
        self.on_reset: Callable[[], None] | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._remote_closed = False
        self._local_closed = False
        self._reset = False
        self._consumed = 0
        self._discard = False

    @property
    def ended(self) -> bool:
        """True once this side ended the stream or it was reset."""
        return self._local_closed or self._reset

    async def read(self) -> bytes:
        """The next chunk of the request body; ``b""`` at its end.

        Raises :class:`StreamReset` if the stream was reset first."""
        while not self._chunks:
            if self._reset:
                raise StreamReset(f"stream {self.id} was reset")
            if self._remote_closed:
                return b""
            self._waiter = self.connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._consumed += len(chunk)
        if self._consumed >= STREAM_WINDOW // 2 and not self._remote_closed and not self.ended:
            self.connection.write(frame(WINDOW_UPDATE, 0, self.id, _U32.pack(self._consumed)))
            self.recv_window += self._consumed
            self._consumed = 0
        return chunk

    def send_headers(self, block: bytes, end_stream: bool = False) -> None:
        """Queue a header block (:func:`encode_headers`): the reply's headers, or with
        ``end_stream`` its trailers (or a trailers-only answer), which end the stream."""
        if self.ended:
            raise StreamReset(f"stream {self.id} has ended")
        self.connection.write(self.connection.header_frames(self.id, block, end_stream))
        if end_stream:
            self._end()

    def try_send(self, headers: bytes, data: bytes, trailers: bytes) -> bool:
        """Write the header blocks ``headers``, ``data`` and ``trailers`` at once, ending
        the stream, if the peer's windows and frame size take ``data`` in one frame; False
        (nothing sent) if they do not."""
        conn = self.connection
        n = len(data)
        if (self.ended or n > conn.send_window or n > self.send_window
                or n > conn.peer_max_frame or conn.paused):
            return False
        conn.send_window -= n
        self.send_window -= n
        conn.write_now(b"".join((
            conn.header_frames(self.id, headers, False),
            _HEAD.pack(n >> 8, n & 0xFF, DATA, 0, self.id), data,
            conn.header_frames(self.id, trailers, True))))
        self._end()
        return True

    async def send_data(self, data: bytes) -> None:
        """Send ``data`` as DATA frames as the peer's windows allow (waits for them).

        Raises :class:`StreamReset` if the stream is reset meanwhile."""
        conn = self.connection
        view = memoryview(data)
        while view:
            if self.ended:
                raise StreamReset(f"stream {self.id} has ended")
            n = min(len(view), conn.send_window, self.send_window, conn.peer_max_frame)
            if n <= 0 or conn.paused:
                await conn.wait_writable()
                continue
            conn.send_window -= n
            self.send_window -= n
            conn.write(_HEAD.pack(n >> 8, n & 0xFF, DATA, 0, self.id) + view[:n])
            view = view[n:]

    def reset(self, code: int = CANCEL) -> None:
        """End the stream with RST_STREAM(code) (nothing if it already ended)."""
        if self.ended:
            return
        self._local_closed = True
        self.connection.write(frame(RST_STREAM, 0, self.id, _U32.pack(code)))
        self.connection.forget(self)

    def stop_reading(self) -> None:
        """Drop the rest of the request body unread (and uncredited: a client sending more
        stalls on its window, nothing is kept here)."""
        self._discard = True
        self._chunks.clear()

    def flush(self) -> None:
        """Write what is queued for this connection now."""
        self.connection.flush()

    # -- called by the connection --

    def _end(self) -> None:
        self._local_closed = True
        if self._remote_closed:
            self.connection.forget(self)
        # else kept until the client ends its side (or resets it, or abandon())

    def abandon(self) -> None:
        """After an answer: RST_STREAM(NO_ERROR) if the client has not ended the request,
        whose rest is not wanted (RFC 9113 §8.1)."""
        if self._remote_closed or self._reset:
            return
        self._reset = True
        self.connection.write(frame(RST_STREAM, 0, self.id, _U32.pack(NO_ERROR)))
        self.connection.forget(self)

    def _receive(self, data: bytes, end: bool) -> None:
        if data and not (self._local_closed or self._discard):
            self._chunks.append(data)
        if end:
            self._remote_closed = True
            if self._local_closed:
                self.connection.forget(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _peer_reset(self) -> None:
        if self._reset or self._local_closed:
            return
        self._reset = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_reset is not None:
            self.on_reset()


class Connection(asyncio.Protocol):
    """The server side of one HTTP/2 connection (see the module doc).

    ``on_request(stream)`` is called for every new request stream once its headers are
    complete; ``on_lost(connection)`` once when the transport is gone.
    """

    def __init__(self, on_request: Callable[[Stream], None],
                 on_lost: Callable[[Connection], None]) -> None:
        self._on_request = on_request
        self._on_lost = on_lost
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = DEFAULT_FRAME
        self.paused = False
        self._decoder = hpack.Decoder()
        self._indexed: dict[bytes, dict[str, str]] = {}
        self._buffer = bytearray()
        self._preface = False
        self._continuation: tuple[int, int, list[bytes]] | None = None
        self._last_stream = 0
        self._received = 0           # connection-level bytes not yet credited back
        self._table_reset = b"\x20"  # the first header block's size update to 0
        self._out: list[bytes] | None = None
        self._writable: list[asyncio.Future[None]] = []
        self._goaway = False
        self._lost = False

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        settings = (_SETTING.pack(INITIAL_WINDOW_SIZE, STREAM_WINDOW)
                    + _SETTING.pack(MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST))
        self.write(frame(SETTINGS, 0, 0, settings)
                   + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONNECTION_WINDOW - DEFAULT_WINDOW)))

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            self._buffer += data
            work: bytes | bytearray = self._buffer
        else:
            work = data
        pos = 0
        if not self._preface:
            if len(work) < len(PREFACE):
                if not PREFACE.startswith(bytes(work)):
                    self._fail(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                    return
                self._buffer = bytearray(work)
                return
            if work[:len(PREFACE)] != PREFACE:
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 client preface")
                return
            self._preface = True
            pos = len(PREFACE)
        end = len(work)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream_id = _HEAD.unpack_from(work, pos)
                length = (high << 8) | low
                if length > DEFAULT_FRAME:
                    raise ConnectionError_(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                stop = pos + 9 + length
                if stop > end:
                    break
                payload = work[pos + 9:stop]
                if type(payload) is bytearray:
                    payload = bytes(payload)
                self._frame(kind, flags, stream_id & 0x7FFFFFFF, payload)
                pos = stop
                if self._lost:
                    return
        except ConnectionError_ as e:
            self._fail(e.code, str(e))
            return
        if pos == end:
            if self._buffer:
                self._buffer = bytearray()
        elif work is self._buffer:
            del self._buffer[:pos]
        else:
            self._buffer = bytearray(work[pos:])

    def pause_writing(self) -> None:
        # a client that does not read what it is sent is not read either: what it sends
        # may need answers (PING, SETTINGS) that would pile up here
        self.paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._out = None
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            stream._peer_reset()
        self._wake(StreamReset("connection lost"))
        self._on_lost(self)

    # -- writing --

    def write(self, data: bytes) -> None:
        """Queue ``data``; what is queued in one turn of the loop leaves in one ``send``
        (a unary answer is one write, and under load the loop does not give the GIL away
        once per frame)."""
        if self._out is None:
            self._out = [data]
            self.loop.call_soon(self.flush)
        else:
            self._out.append(data)

    def write_now(self, data: bytes) -> None:
        """Queue ``data`` and write all that is queued now."""
        if self._out is None:
            self._out = [data]
        else:
            self._out.append(data)
        self.flush()

    def flush(self) -> None:
        out, self._out = self._out, None
        if out and self.transport is not None and not self._lost:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def header_frames(self, stream_id: int, block: bytes, end_stream: bool) -> bytes:
        """HEADERS (+ CONTINUATION) frames carrying the header ``block``."""
        if self._table_reset:
            block = self._table_reset + block
            self._table_reset = b""
        flags = END_STREAM if end_stream else 0
        size = self.peer_max_frame
        if len(block) <= size:
            return frame(HEADERS, flags | END_HEADERS, stream_id, block)
        parts = [block[i:i + size] for i in range(0, len(block), size)]
        out = [frame(HEADERS, flags, stream_id, parts[0])]
        for i, part in enumerate(parts[1:], 2):
            out.append(frame(CONTINUATION, END_HEADERS if i == len(parts) else 0, stream_id, part))
        return b"".join(out)

    async def wait_writable(self) -> None:
        """Wait until a window grows or the transport drains (raises StreamReset when the
        connection is lost)."""
        if self._lost:
            raise StreamReset("connection lost")
        waiter = self.loop.create_future()
        self._writable.append(waiter)
        await waiter

    def _wake(self, error: Exception | None = None) -> None:
        waiters, self._writable = self._writable, []
        for w in waiters:
            if not w.done():
                if error is None:
                    w.set_result(None)
                else:
                    w.set_exception(error)

    def forget(self, stream: Stream) -> None:
        """Drop an ended stream; a connection told to go away closes with its last one."""
        self.streams.pop(stream.id, None)
        if self._goaway and not self.streams:
            self.loop.call_soon(self.close)

    # -- closing --

    def go_away(self) -> None:
        """GOAWAY(NO_ERROR): no new stream; the connection closes after its open ones."""
        if self._goaway or self._lost:
            return
        self._goaway = True
        self.write_now(frame(GOAWAY, 0, 0, _U32.pack(self._last_stream) + _U32.pack(NO_ERROR)))
        if not self.streams:
            self.close()

    def close(self) -> None:
        self.flush()
        if self.transport is not None and not self._lost:
            self.transport.close()

    def _fail(self, code: int, message: str) -> None:
        log.debug("HTTP/2 connection error", extra={"fields": {"code": code, "error": message}})
        if self._lost or self.transport is None:
            return
        self.write_now(frame(GOAWAY, 0, 0, _U32.pack(self._last_stream) + _U32.pack(code)
                             + message.encode()[:256]))
        self.transport.close()

    # -- frames received --

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._continuation is not None:
            cont_id, cont_flags, parts = self._continuation
            if kind != CONTINUATION or stream_id != cont_id:
                raise ConnectionError_(PROTOCOL_ERROR, "expected CONTINUATION")
            parts.append(payload)
            if sum(map(len, parts)) > 2 * MAX_HEADER_LIST:
                raise ConnectionError_(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                self._continuation = None
                self._headers(stream_id, cont_flags, b"".join(parts))
            return
        if kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == HEADERS:
            if stream_id == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "HEADERS on stream 0")
            start, stop = 0, len(payload)
            if flags & PADDED:
                if not payload:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "padded HEADERS without padding")
                start, stop = 1, stop - payload[0]
            if flags & PRIORITY_FLAG:
                if stop - start < 5:
                    raise ConnectionError_(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
                start += 5
            if stop < start:
                raise ConnectionError_(PROTOCOL_ERROR, "padding exceeds the HEADERS payload")
            block = payload[start:stop]
            if flags & END_HEADERS:
                self._headers(stream_id, flags, block)
            else:
                self._continuation = (stream_id, flags, [block])
        elif kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise ConnectionError_(FRAME_SIZE_ERROR if len(payload) != 8 else PROTOCOL_ERROR,
                                       "malformed PING")
            if not flags & ACK:
                self.write_now(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0 or len(payload) != 4:
                raise ConnectionError_(PROTOCOL_ERROR, "malformed RST_STREAM")
            if stream_id > self._last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                stream._peer_reset()
                if self._goaway and not self.streams:
                    self.loop.call_soon(self.close)
        elif kind == GOAWAY:
            self._goaway = True       # the client sends no new stream; finish the open ones
            if not self.streams:
                self.loop.call_soon(self.close)
        elif kind == PUSH_PROMISE:
            raise ConnectionError_(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        elif kind == CONTINUATION:
            raise ConnectionError_(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        # PRIORITY and unknown types: ignored

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionError_(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._received += size
        if self._received >= CONNECTION_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._received)))
            self._received = 0
        data = payload
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise ConnectionError_(PROTOCOL_ERROR, "padding exceeds the DATA payload")
            data = payload[1:size - payload[0]]
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self._last_stream:
                raise ConnectionError_(PROTOCOL_ERROR, "DATA on an idle stream")
            return        # a stream this side ended or reset: ignored (§5.1)
        if stream._remote_closed:
            self.streams.pop(stream_id, None)
            stream._peer_reset()
            self.write(frame(RST_STREAM, 0, stream_id, _U32.pack(STREAM_CLOSED)))
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self.streams.pop(stream_id, None)
            stream._peer_reset()
            self.write(frame(RST_STREAM, 0, stream_id, _U32.pack(FLOW_CONTROL_ERROR)))
            return
        stream._consumed += size - len(data)   # padding counts against the window, not the reader
        stream._receive(data, bool(flags & END_STREAM))

    def _decode(self, block: bytes) -> dict[str, str]:
        """The header block's fields. A block of indexed fields only (RFC 7541 §6.1) leaves
        the dynamic table as it is, so it decodes the same until a block that may change
        the table: such blocks (a client's repeated requests) are decoded once."""
        cached = self._indexed.get(block)
        if cached is not None:
            return dict(cached)
        try:
            fields = self._decoder.decode(block)
        except hpack.HPACKError as e:
            raise ConnectionError_(COMPRESSION_ERROR, f"header block: {e}") from None
        reason = _malformed(fields)
        if reason is not None:
            if self._indexed:
                self._indexed.clear()
            raise _Malformed(reason)
        decoded = dict(fields)
        if _only_indexed(block):
            if len(self._indexed) >= 64:
                self._indexed.clear()
            self._indexed[block] = dict(decoded)
        elif self._indexed:
            self._indexed.clear()
        return decoded

    def _headers(self, stream_id: int, flags: int, block: bytes) -> None:
        try:
            decoded = self._decode(block)
        except _Malformed as e:             # a malformed request: a stream error (§8.1.1)
            log.debug("malformed HTTP/2 request", extra={"fields": {"error": str(e)}})
            decoded = None
        end = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:              # trailers
            if not end or decoded is None or any(name.startswith(":") for name in decoded):
                self.streams.pop(stream_id, None)
                stream._peer_reset()
                self.write(frame(RST_STREAM, 0, stream_id, _U32.pack(PROTOCOL_ERROR)))
                return
            stream._receive(b"", True)
            return
        if stream_id <= self._last_stream and stream_id % 2:
            return        # trailers of a stream this side ended or reset: ignored (§5.1)
        if stream_id % 2 == 0 or stream_id <= self._last_stream:
            raise ConnectionError_(PROTOCOL_ERROR, f"HEADERS opening stream {stream_id}")
        self._last_stream = stream_id
        if self._goaway or decoded is None:
            code = PROTOCOL_ERROR if decoded is None else REFUSED_STREAM
            self.write(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))
            return
        stream = Stream(self, stream_id, decoded)
        stream._remote_closed = end
        self.streams[stream_id] = stream
        self._on_request(stream)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise ConnectionError_(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionError_(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        initial = None
        for i in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, i)
            if key == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "initial window too large")
                initial = value           # the last one counts (§6.5.3); applied once below
            elif key == MAX_FRAME_SIZE:
                if not DEFAULT_FRAME <= value <= 2**24 - 1:
                    raise ConnectionError_(PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == ENABLE_PUSH and value > 1:
                raise ConnectionError_(PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
        if initial is not None and initial != self.peer_initial_window:
            delta = initial - self.peer_initial_window
            self.peer_initial_window = initial
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ConnectionError_(FLOW_CONTROL_ERROR, "a stream window overflows (§6.9.2)")
        self.write(frame(SETTINGS, ACK, 0))
        self._wake()

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionError_(FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionError_(FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                if stream_id > self._last_stream:
                    raise ConnectionError_(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return
            if increment == 0 or stream.send_window + increment > MAX_WINDOW:
                self.streams.pop(stream_id, None)
                stream._peer_reset()
                code = PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR
                self.write(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))
                return
            stream.send_window += increment
        self._wake()


__all__ = ["Connection", "Stream", "StreamReset", "encode_headers", "frame"]
