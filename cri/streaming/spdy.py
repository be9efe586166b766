"""SPDY/3.1 framing and multiplexed sessions, as used by Kubernetes streaming.

Kubernetes' exec/attach/port-forward upgrade an HTTP/1.1 request with
``Upgrade: SPDY/3.1`` and then speak SPDY/3.1 framing on the raw connection
(kubelet: ``k8s.io/apimachinery/pkg/util/httpstream/spdy``, built on
``github.com/moby/spdystream``). Only the framing layer of SPDY is used: no
HTTP semantics ride on the streams, each stream is a byte pipe labelled by its
SYN_STREAM headers (``streamtype``, ``port``, ``requestid``).

Wire format (SPDY/3 draft, sections 2.2 and 2.6), big-endian:

* control frame: ``1 | version(15) | type(16)``, ``flags(8) | length(24)``, payload
* data frame: ``0 | stream-id(31)``, ``flags(8) | length(24)``, payload

Control frames handled here: SYN_STREAM (1), SYN_REPLY (2), RST_STREAM (3),
SETTINGS (4), PING (6), GOAWAY (7), HEADERS (8), WINDOW_UPDATE (9). Header
blocks (``uint32 count``, then ``uint32 len, name, uint32 len, value`` per
entry; several values of one name joined by NUL) are compressed with one zlib
stream per direction, primed with the SPDY/3 dictionary (:data:`HEADER_DICTIONARY`)
and sync-flushed after every block.

Flow control (SPDY/3.1): every stream and the session start with a 64 KiB send
window; DATA consumes it, WINDOW_UPDATE (stream id 0 for the session) refills
it; SETTINGS_INITIAL_WINDOW_SIZE changes the initial window of streams.
``moby/spdystream`` (what kubelet, crictl and kubectl use) neither sends
WINDOW_UPDATE nor honours it, relying on TCP back-pressure. A
:class:`Session` therefore always accounts windows and always sends
WINDOW_UPDATE for data it consumed, but only *waits* on an exhausted send
window once the peer has shown it does flow control (``flow_control=None``,
the default: switched on by the peer's first WINDOW_UPDATE or
SETTINGS_INITIAL_WINDOW_SIZE), or always (``True``), or never (``False``).
Received data beyond a stream's buffer limit stops the session's reader, which
in turn stops reading the socket: the TCP back-pressure spdystream relies on.

Errors: :class:`ProtocolError` (malformed input; the session answers with
GOAWAY PROTOCOL_ERROR and closes), :class:`StreamReset` (the peer or the session
reset a stream; writes raise it, reads return EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_WINDOW",
    "HEADER_DICTIONARY",
    "DataFrame",
    "FrameCodec",
    "GoAway",
    "GoAwayStatus",
    "Headers",
    "HeadersFrame",
    "Ping",
    "ProtocolError",
    "RstStatus",
    "RstStream",
    "Session",
    "Settings",
    "Stream",
    "StreamReset",
    "SynReply",
    "SynStream",
    "WindowUpdate",
]

VERSION = 3
DEFAULT_WINDOW = 64 * 1024
MAX_LENGTH = (1 << 24) - 1  # 24-bit length field
MAX_WINDOW = (1 << 31) - 1
#: largest DATA payload this implementation sends in one frame
MAX_DATA_CHUNK = 32 * 1024
#: limit on a decompressed header block (spdystream: 1000 fields of up to 1 MiB)
MAX_HEADER_BLOCK = 1 << 20

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_SETTINGS_CLEAR = 0x01

SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_INITIAL_WINDOW_SIZE = 7


class RstStatus(enum.IntEnum):
    """RST_STREAM status codes (SPDY/3 section 2.6.3)."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    """GOAWAY status codes (SPDY/3 section 2.6.6)."""

    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


def _dictionary() -> bytes:
    # SPDY/3 section 2.6.10.1: length-prefixed header names and common values,
    # followed by a run of status codes, reason phrases, dates and media types.
    names = (
        "options head post put delete trace accept accept-charset accept-encoding accept-language "
        "accept-ranges age allow authorization cache-control connection content-base content-encoding "
        "content-language content-length content-location content-md5 content-range content-type date "
        "etag expect expires from host if-match if-modified-since if-none-match if-range "
        "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
        "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
        "user-agent vary via warning www-authenticate method get status"
    ).split()
    words = [*names, "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    out = bytearray()
    for w in words:
        out += struct.pack(">I", len(w)) + w.encode()
    return bytes(out) + tail.encode()


#: zlib dictionary of SPDY/3 header compression (1423 bytes, adler32 0xe3c6a7c2)
HEADER_DICTIONARY = _dictionary()


class ProtocolError(Exception):
    """The peer sent something SPDY/3.1 does not allow; the session is torn down."""


class StreamReset(ConnectionError):
    """The stream was reset (RST_STREAM) or its session ended before it finished."""

    def __init__(self, stream_id: int, status: int | None = None) -> None:
        what = RstStatus(status).name if status in RstStatus._value2member_map_ else status
        super().__init__(f"spdy stream {stream_id} reset" + (f" ({what})" if status is not None else ""))
        self.stream_id = stream_id
        self.status = status


# --- headers ---------------------------------------------------------------------------------


class Headers(dict[str, list[str]]):
    """SPDY header block: lower-case names to lists of values.

    ``Headers.of({"streamType": "stdin"})`` lower-cases names (SPDY requires it;
    Go's ``http.Header`` canonical names like ``Streamtype`` arrive lower-cased).
    """

    @classmethod
    def of(cls, items: Mapping[str, str | Iterable[str]] | None = None) -> Headers:
        h = cls()
        for k, v in (items or {}).items():
            h[k.lower()] = [v] if isinstance(v, str) else list(v)
        return h

    def get_first(self, name: str, default: str = "") -> str:
        """First value of ``name`` (case-insensitive), or ``default``."""
        values = self.get(name.lower())
        return values[0] if values else default


# --- frames ----------------------------------------------------------------------------------


@dataclass
class DataFrame:
    stream_id: int
    data: bytes = b""
    flags: int = 0


@dataclass
class SynStream:
    stream_id: int
    headers: Headers = field(default_factory=Headers)
    flags: int = 0
    associated_id: int = 0
    priority: int = 0  # 3 bits
    slot: int = 0


@dataclass
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=Headers)
    flags: int = 0


@dataclass
class RstStream:
    stream_id: int
    status: int = RstStatus.CANCEL


@dataclass
class Settings:
    #: id -> (flags, value)
    values: dict[int, tuple[int, int]] = field(default_factory=dict)
    flags: int = 0


@dataclass
class Ping:
    id: int


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass
class HeadersFrame:
    stream_id: int
    headers: Headers = field(default_factory=Headers)
    flags: int = 0


@dataclass
class WindowUpdate:
    stream_id: int  # 0: the session window
    delta: int


Frame = DataFrame | SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate


class FrameCodec:
    """Encodes and decodes frames for one direction pair of one connection.

    Holds the two zlib header streams, so one codec serves one connection and
    frames must be encoded in the order they are written.

    >>> a, b = FrameCodec(), FrameCodec()
    >>> f = b.decode(a.encode(SynStream(1, Headers.of({"streamtype": "error"}))))
    >>> f.headers.get_first("streamType")
    'error'
    """

    def __init__(self) -> None:
        self._compress = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 9, zlib.Z_DEFAULT_STRATEGY,
                                          HEADER_DICTIONARY)
        self._decompress = zlib.decompressobj(zlib.MAX_WBITS, zdict=HEADER_DICTIONARY)

    # encode ---------------------------------------------------------------------------------
    def _header_block(self, headers: Mapping[str, list[str]]) -> bytes:
        raw = bytearray(struct.pack(">I", len(headers)))
        for name, values in headers.items():
            n = name.lower().encode()
            v = "\x00".join(values).encode()
            raw += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
        return self._compress.compress(bytes(raw)) + self._compress.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def _control(ftype: int, flags: int, payload: bytes) -> bytes:
        if len(payload) > MAX_LENGTH:
            raise ProtocolError("control frame too large")
        return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | len(payload)) + payload

    def encode(self, frame: Frame) -> bytes:
        """Serialise ``frame``; header blocks go through this codec's compressor."""
        match frame:
            case DataFrame(stream_id=sid, data=data, flags=flags):
                if len(data) > MAX_LENGTH:
                    raise ValueError("data frame too large")
                return struct.pack(">II", sid & 0x7FFFFFFF, (flags << 24) | len(data)) + bytes(data)
            case SynStream():
                body = struct.pack(">IIBB", frame.stream_id & 0x7FFFFFFF, frame.associated_id & 0x7FFFFFFF,
                                   (frame.priority & 7) << 5, frame.slot)
                return self._control(SYN_STREAM, frame.flags, body + self._header_block(frame.headers))
            case SynReply():
                body = struct.pack(">I", frame.stream_id & 0x7FFFFFFF) + self._header_block(frame.headers)
                return self._control(SYN_REPLY, frame.flags, body)
            case HeadersFrame():
                body = struct.pack(">I", frame.stream_id & 0x7FFFFFFF) + self._header_block(frame.headers)
                return self._control(HEADERS, frame.flags, body)
            case RstStream():
                return self._control(RST_STREAM, 0, struct.pack(">II", frame.stream_id, frame.status))
            case Settings():
                body = bytearray(struct.pack(">I", len(frame.values)))
                for sid, (flags, value) in frame.values.items():
                    body += struct.pack(">II", (flags << 24) | (sid & 0xFFFFFF), value)
                return self._control(SETTINGS, frame.flags, bytes(body))
            case Ping():
                return self._control(PING, 0, struct.pack(">I", frame.id))
            case GoAway():
                return self._control(GOAWAY, 0, struct.pack(">II", frame.last_good_stream_id, frame.status))
            case WindowUpdate():
                return self._control(WINDOW_UPDATE, 0, struct.pack(">II", frame.stream_id, frame.delta))
        raise TypeError(f"not a SPDY frame: {frame!r}")

    # decode ---------------------------------------------------------------------------------
    def _parse_header_block(self, compressed: bytes) -> Headers:
        try:
            raw = self._decompress.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as e:
            raise ProtocolError(f"bad header compression: {e}") from e
        if self._decompress.unconsumed_tail:
            raise ProtocolError("header block too large")
        try:
            (count,) = struct.unpack_from(">I", raw, 0)
            pos = 4
            headers = Headers()
            for _ in range(count):
                (n,) = struct.unpack_from(">I", raw, pos)
                name = raw[pos + 4:pos + 4 + n]
                pos += 4 + n
                (m,) = struct.unpack_from(">I", raw, pos)
                value = raw[pos + 4:pos + 4 + m]
                pos += 4 + m
                if len(name) != n or len(value) != m:
                    raise ProtocolError("truncated header block")
                key = name.decode("latin-1").lower()
                if not key:
                    raise ProtocolError("empty header name")
                headers.setdefault(key, []).extend(value.decode("latin-1").split("\x00"))
        except struct.error as e:
            raise ProtocolError("truncated header block") from e
        if pos != len(raw):
            raise ProtocolError("trailing bytes after header block")
        return headers

    def decode(self, data: bytes) -> Frame | None:
        """Decode one complete frame (header and payload); ``None`` for ignored types."""
        first, second = struct.unpack_from(">II", data, 0)
        flags, length = second >> 24, second & 0xFFFFFF
        payload = data[8:8 + length]
        if len(payload) != length:
            raise ProtocolError("truncated frame")
        if not first & 0x80000000:
            sid = first & 0x7FFFFFFF
            if sid == 0:
                raise ProtocolError("data frame on stream 0")
            return DataFrame(sid, payload, flags)
        return self.decode_control((first >> 16) & 0x7FFF, first & 0xFFFF, flags, payload)

    def decode_control(self, version: int, ftype: int, flags: int, p: bytes) -> Frame | None:
        """Decode a control frame's payload; unknown types give ``None`` (SPDY says ignore them)."""
        if version != VERSION:
            raise ProtocolError(f"unsupported SPDY version {version}")

        def need(n: int) -> None:
            if len(p) < n:
                raise ProtocolError(f"control frame type {ftype} too short")

        if ftype == SYN_STREAM:
            need(10)
            sid, assoc, prio, slot = struct.unpack_from(">IIBB", p)
            if sid & 0x7FFFFFFF == 0:
                raise ProtocolError("SYN_STREAM with stream id 0")
            return SynStream(sid & 0x7FFFFFFF, self._parse_header_block(p[10:]), flags,
                             assoc & 0x7FFFFFFF, prio >> 5, slot)
        if ftype in (SYN_REPLY, HEADERS):
            need(4)
            (sid,) = struct.unpack_from(">I", p)
            cls = SynReply if ftype == SYN_REPLY else HeadersFrame
            return cls(sid & 0x7FFFFFFF, self._parse_header_block(p[4:]), flags)
        if ftype == RST_STREAM:
            need(8)
            sid, status = struct.unpack_from(">II", p)
            return RstStream(sid & 0x7FFFFFFF, status)
        if ftype == SETTINGS:
            need(4)
            (count,) = struct.unpack_from(">I", p)
            if len(p) < 4 + 8 * count:
                raise ProtocolError("truncated SETTINGS")
            values = {}
            for i in range(count):
                fid, value = struct.unpack_from(">II", p, 4 + 8 * i)
                values[fid & 0xFFFFFF] = (fid >> 24, value)
            return Settings(values, flags)
        if ftype == PING:
            need(4)
            return Ping(struct.unpack_from(">I", p)[0])
        if ftype == GOAWAY:
            need(4)
            last = struct.unpack_from(">I", p)[0] & 0x7FFFFFFF
            status = struct.unpack_from(">I", p, 4)[0] if len(p) >= 8 else 0
            return GoAway(last, status)
        if ftype == WINDOW_UPDATE:
            need(8)
            sid, delta = struct.unpack_from(">II", p)
            return WindowUpdate(sid & 0x7FFFFFFF, delta & 0x7FFFFFFF)
        return None

    async def read_frame(self, reader: asyncio.StreamReader) -> Frame | None:
        """Read and decode the next frame; raises ``asyncio.IncompleteReadError`` at EOF."""
        head = await reader.readexactly(8)
        length = struct.unpack_from(">I", head, 4)[0] & 0xFFFFFF
        body = await reader.readexactly(length) if length else b""
        return self.decode(head + body)


# --- streams ---------------------------------------------------------------------------------


class Stream:
    """One SPDY stream: a full-duplex byte pipe with its SYN_STREAM headers.

    ``read(n)`` returns up to ``n`` bytes, ``b""`` once the peer half-closed (FIN)
    or the stream was reset. ``write(data)`` sends DATA (split to the flow
    control windows; waits for window when the session enforces it) and raises
    :class:`StreamReset` once the stream is reset or local side closed.
    ``close()`` half-closes (empty DATA with FIN), ``reset()`` sends RST_STREAM.
    The reader/writer interfaces of :mod:`aiocontainerd.cri.streaming.runtime`
    are satisfied (``drain()`` is a no-op: ``write`` already waited).
    """

    def __init__(self, session: Session, stream_id: int, headers: Headers, *, send_window: int,
                 recv_window: int) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.reply_headers: Headers | None = None
        self._buf = bytearray()
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._window_open = asyncio.Event()
        self._window_open.set()
        self.send_window = send_window
        self.recv_window = recv_window
        self._unacked = 0
        self.remote_closed = False  # peer sent FIN (or reset)
        self.local_closed = False  # we sent FIN (or reset)
        self.reset_status: int | None = None
        self._replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: set once the SYN_REPLY for a peer-initiated stream is on the wire (writes wait for it:
        #: spdystream drops DATA that arrives before the reply)
        self.reply_sent = asyncio.Event()
        self._done = asyncio.Event()

    def __repr__(self) -> str:
        return f"<spdy.Stream {self.id} {dict(self.headers)}>"

    @property
    def stream_type(self) -> str:
        """The ``streamType`` header (Kubernetes' stream label)."""
        return self.headers.get_first("streamtype")

    # receive side ---------------------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self.remote_closed or not data:
            return
        self._buf += data
        self._readable.set()
        if len(self._buf) >= self.session.max_buffer:
            self._drained.clear()

    def _feed_eof(self) -> None:
        self.remote_closed = True
        self._readable.set()
        self._drained.set()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all buffered if ``n < 0``); ``b""`` at EOF or reset."""
        while not self._buf and not self.remote_closed:
            self._readable.clear()
            await self._readable.wait()
        if not self._buf:
            return b""
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        if len(self._buf) < self.session.max_buffer:
            self._drained.set()
        await self._consumed(len(data))
        return data

    async def readall(self) -> bytes:
        """Everything until the peer half-closes."""
        chunks = []
        while chunk := await self.read():
            chunks.append(chunk)
        return b"".join(chunks)

    async def _consumed(self, n: int) -> None:
        # SPDY/3.1: give the window back once half of it was consumed.
        if self.reset_status is not None or self.remote_closed:
            return
        self._unacked += n
        if self._unacked >= self.session.initial_window // 2 and not self.session.closed:
            delta, self._unacked = self._unacked, 0
            self.recv_window += delta
            with contextlib.suppress(ConnectionError, OSError):
                await self.session._send_frames([WindowUpdate(self.id, delta)])
        await self.session._consumed(n)

    # send side ------------------------------------------------------------------------------
    async def write(self, data: bytes) -> None:
        """Send ``data`` as DATA frames; waits on flow control windows when enforced."""
        view = memoryview(bytes(data))
        if not self.reply_sent.is_set():
            await self.reply_sent.wait()
        while view:
            self._check_writable()
            chunk = await self.session._reserve(self, len(view))
            self._check_writable()
            await self.session._send_frames([DataFrame(self.id, bytes(view[:chunk]))])
            view = view[chunk:]

    async def drain(self) -> None:
        """No-op: :meth:`write` returns once the data is handed to the transport."""

    def _check_writable(self) -> None:
        if self.reset_status is not None:
            raise StreamReset(self.id, self.reset_status)
        if self.local_closed:
            raise StreamReset(self.id)
        if self.session.closed:
            raise StreamReset(self.id)

    async def close(self) -> None:
        """Half-close: send an empty DATA frame with FIN (idempotent, never raises)."""
        if self.local_closed or self.reset_status is not None or self.session.closed:
            self.local_closed = True
            return
        if not self.reply_sent.is_set():
            await self.reply_sent.wait()
        self.local_closed = True
        with contextlib.suppress(ConnectionError, OSError):
            await self.session._send_frames([DataFrame(self.id, b"", FLAG_FIN)])
        self.session._maybe_forget(self)

    async def reset(self, status: int = RstStatus.CANCEL) -> None:
        """Abort both directions with RST_STREAM (idempotent, never raises)."""
        if self.reset_status is not None:
            return
        already_done = self.local_closed and self.remote_closed
        self._on_reset(status)
        if not already_done and not self.session.closed:
            with contextlib.suppress(ConnectionError, OSError):
                await self.session._send_frames([RstStream(self.id, status)])

    def _on_reset(self, status: int) -> None:
        self.reset_status = status
        self.local_closed = True
        self._feed_eof()
        self._window_open.set()
        self.reply_sent.set()
        if not self._replied.done():
            self._replied.set_exception(StreamReset(self.id, status))
            self._replied.exception()  # retrieved: nobody may be waiting
        self.session._forget(self)

    async def wait_closed(self) -> None:
        """Until both sides finished or the stream was reset."""
        await self._done.wait()


# --- sessions --------------------------------------------------------------------------------


class Session:
    """A SPDY/3.1 connection over an asyncio reader/writer pair.

    ``reader`` is an ``asyncio.StreamReader`` positioned after the HTTP upgrade;
    ``writer`` needs ``write(bytes)``, ``async drain()``, ``close()`` (an
    ``asyncio.StreamWriter`` does). ``client=True`` opens odd stream ids.
    ``on_stream(stream) -> bool`` is called synchronously for every SYN_STREAM
    from the peer; ``True`` accepts (SYN_REPLY is sent), ``False`` or an
    exception refuses (RST_STREAM REFUSED_STREAM) — kubelet's NewStreamHandler.
    ``idle_timeout`` (seconds, ``None``/0 = none) closes the session after no
    frame was read or written for that long (kubelet: ``SetIdleTimeout``).

    Run :meth:`run` (or :meth:`start`) to process incoming frames; it returns
    once the connection ended; :meth:`close` sends GOAWAY and closes it.
    """

    def __init__(self, reader: asyncio.StreamReader, writer, *, client: bool,
                 on_stream: Callable[[Stream], bool] | None = None, idle_timeout: float | None = None,
                 flow_control: bool | None = None, initial_window: int = DEFAULT_WINDOW,
                 max_buffer: int | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self.client = client
        self._on_stream = on_stream
        self.idle_timeout = idle_timeout or None
        self.flow_control = flow_control
        self._enforce = flow_control is True
        self.initial_window = initial_window  # what we grant the peer per stream
        self.max_buffer = max_buffer or max(initial_window, 256 * 1024)
        self._codec = FrameCodec()
        self._write_lock = asyncio.Lock()
        self.streams: dict[int, Stream] = {}
        self._next_id = 1 if client else 2
        self._last_peer_id = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW  # session window (SPDY/3.1)
        self._session_window_open = asyncio.Event()
        self._session_window_open.set()
        self._session_unacked = 0
        self._ping_id = 1 if client else 2
        self._pings: dict[int, asyncio.Future[None]] = {}
        self.goaway_received: GoAway | None = None
        self._goaway_sent = False
        self.closed = False
        self._closed_event = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self.close_reason: str = ""

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Run :meth:`run` in a task (returned; also cancelled by :meth:`close`)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())
        return self._task

    async def run(self) -> None:
        """Read and dispatch frames until EOF, error, idle timeout or :meth:`close`."""
        idle = asyncio.ensure_future(self._idle_watch()) if self.idle_timeout else None
        try:
            while True:
                try:
                    frame = await self._codec.read_frame(self._reader)
                except (asyncio.IncompleteReadError, ConnectionError, OSError):
                    self.close_reason = self.close_reason or "connection lost"
                    return
                self.last_activity = self._loop.time()
                if frame is not None:
                    await self._dispatch(frame)
        except ProtocolError as e:
            self.close_reason = f"protocol error: {e}"
            await self._goaway(GoAwayStatus.PROTOCOL_ERROR)
        finally:
            if idle is not None:
                idle.cancel()
            self._teardown()

    async def _idle_watch(self) -> None:
        assert self.idle_timeout
        while not self.closed:
            remaining = self.last_activity + self.idle_timeout - self._loop.time()
            if remaining <= 0:
                self.close_reason = "idle timeout"
                await self.close()
                return
            await asyncio.sleep(remaining)

    async def close(self, status: int = GoAwayStatus.OK, *, linger: float = 0) -> None:
        """Send GOAWAY, close the transport and end every stream (idempotent).

        With ``linger`` > 0 the write side is shut down first and the session keeps
        reading (discarding) for up to ``linger`` seconds until the peer closes:
        closing a socket with unread input makes the kernel send RST, which can
        destroy the last frames before the peer reads them.
        """
        if self.closed:
            return
        await self._goaway(status)
        task = self._task
        current = asyncio.current_task()
        if linger > 0 and task is not None and not task.done() and task is not current:
            for stream in list(self.streams.values()):
                stream._on_reset(RstStatus.CANCEL)
            with contextlib.suppress(Exception):
                if self._writer.can_write_eof():
                    self._writer.write_eof()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                async with asyncio.timeout(linger):
                    await asyncio.shield(task)
        self._teardown()
        if task is not None and task is not current:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    async def _goaway(self, status: int) -> None:
        if self._goaway_sent or self.closed:
            return
        self._goaway_sent = True
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            async with asyncio.timeout(5):
                await self._send_frames([GoAway(self._last_peer_id, status)])

    def _teardown(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream._on_reset(RstStatus.CANCEL)
        self._session_window_open.set()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError("spdy session closed"))
                fut.exception()
        with contextlib.suppress(Exception):
            self._writer.close()
        self._closed_event.set()

    # sending --------------------------------------------------------------------------------
    async def _send_frames(self, frames: list[Frame]) -> None:
        if self.closed:
            raise ConnectionResetError("spdy session closed")
        async with self._write_lock:
            data = b"".join(self._codec.encode(f) for f in frames)
            try:
                self._writer.write(data)
            except (RuntimeError, AttributeError) as e:  # transport shut down under us
                raise ConnectionResetError(str(e)) from e
            self.last_activity = self._loop.time()
            await self._writer.drain()

    async def _try_send(self, frames: list[Frame]) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._send_frames(frames)

    async def _reserve(self, stream: Stream, want: int) -> int:
        """Bytes ``stream`` may send now (waits for windows when enforcing)."""
        while True:
            if stream.reset_status is not None or self.closed:
                raise StreamReset(stream.id, stream.reset_status)
            if not self._enforce:
                n = min(want, MAX_DATA_CHUNK)
                break
            avail = min(stream.send_window, self.send_window)
            if avail > 0:
                n = min(want, avail, MAX_DATA_CHUNK)
                break
            if stream.send_window <= 0:
                stream._window_open.clear()
                await stream._window_open.wait()
            else:
                self._session_window_open.clear()
                await self._session_window_open.wait()
        stream.send_window -= n
        self.send_window -= n
        return n

    async def _consumed(self, n: int) -> None:
        self._session_unacked += n
        if self._session_unacked >= DEFAULT_WINDOW // 2 and not self.closed:
            delta, self._session_unacked = self._session_unacked, 0
            with contextlib.suppress(ConnectionError, OSError):
                await self._send_frames([WindowUpdate(0, delta)])

    async def send_settings(self, values: Mapping[int, int]) -> None:
        """Send SETTINGS (id -> value); INITIAL_WINDOW_SIZE also sets what we grant new streams."""
        if SETTINGS_INITIAL_WINDOW_SIZE in values:
            self.initial_window = values[SETTINGS_INITIAL_WINDOW_SIZE]
        await self._send_frames([Settings({k: (0, v) for k, v in values.items()})])

    async def open_stream(self, headers: Mapping[str, str | Iterable[str]], *, fin: bool = False) -> Stream:
        """Client side: SYN_STREAM with ``headers``, then wait for SYN_REPLY.

        Raises :class:`StreamReset` when refused (bound the wait with ``asyncio.timeout``).
        """
        if self.closed or self.goaway_received is not None:
            raise ConnectionResetError("spdy session closed")
        sid = self._next_id
        self._next_id += 2
        h = Headers.of(headers)
        stream = Stream(self, sid, h, send_window=self._peer_initial_window, recv_window=self.initial_window)
        stream.reply_sent.set()
        stream.local_closed = fin
        self.streams[sid] = stream
        await self._send_frames([SynStream(sid, h, FLAG_FIN if fin else 0)])
        await asyncio.shield(stream._replied)
        return stream

    async def ping(self) -> float:
        """Round trip of a PING, in seconds."""
        pid = self._ping_id
        self._ping_id = (self._ping_id + 2) & 0x7FFFFFFF or (1 if self.client else 2)
        fut = self._loop.create_future()
        self._pings[pid] = fut
        start = self._loop.time()
        try:
            await self._send_frames([Ping(pid)])
            await fut
        finally:
            self._pings.pop(pid, None)
        return self._loop.time() - start

    # receiving ------------------------------------------------------------------------------
    async def _dispatch(self, frame: Frame) -> None:
        match frame:
            case DataFrame():
                stream = self.streams.get(frame.stream_id)
                if stream is None:
                    return  # gone away (reset, or finished): dropped, as spdystream does
                stream.recv_window -= len(frame.data)
                stream._feed(frame.data)
                if frame.flags & FLAG_FIN:
                    stream._feed_eof()
                    self._maybe_forget(stream)
                if not stream._drained.is_set():
                    # the consumer is behind: stop reading (TCP back-pressure)
                    await stream._drained.wait()
            case SynStream():
                await self._on_syn_stream(frame)
            case SynReply():
                stream = self.streams.get(frame.stream_id)
                if stream is not None and not stream._replied.done():
                    stream.reply_headers = frame.headers
                    stream._replied.set_result(None)
                    if frame.flags & FLAG_FIN:
                        stream._feed_eof()
                        self._maybe_forget(stream)
            case HeadersFrame():
                stream = self.streams.get(frame.stream_id)
                if stream is not None and frame.flags & FLAG_FIN:
                    stream._feed_eof()
                    self._maybe_forget(stream)
            case RstStream():
                stream = self.streams.get(frame.stream_id)
                if stream is not None:
                    stream._on_reset(frame.status)
            case Settings():
                if SETTINGS_INITIAL_WINDOW_SIZE in frame.values:
                    new = frame.values[SETTINGS_INITIAL_WINDOW_SIZE][1]
                    delta = new - self._peer_initial_window
                    self._peer_initial_window = new
                    for s in self.streams.values():
                        s.send_window += delta
                        if s.send_window > 0:
                            s._window_open.set()
                    if self.flow_control is None:
                        self._enforce = True
            case Ping():
                if (frame.id & 1) == (self._ping_id & 1):
                    fut = self._pings.get(frame.id)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                else:
                    await self._try_send([frame])
            case GoAway():
                self.goaway_received = frame
            case WindowUpdate():
                if self.flow_control is None:
                    self._enforce = True
                if frame.stream_id == 0:
                    self.send_window = min(self.send_window + frame.delta, MAX_WINDOW)
                    if self.send_window > 0:
                        self._session_window_open.set()
                else:
                    stream = self.streams.get(frame.stream_id)
                    if stream is not None:
                        stream.send_window += frame.delta
                        if stream.send_window > MAX_WINDOW:
                            await stream.reset(RstStatus.FLOW_CONTROL_ERROR)
                        elif stream.send_window > 0:
                            stream._window_open.set()

    async def _on_syn_stream(self, frame: SynStream) -> None:
        sid = frame.stream_id
        if (sid & 1) == (self._next_id & 1) or sid <= self._last_peer_id:
            # wrong parity or not increasing (SPDY/3 section 2.3.2): protocol error
            await self._try_send([RstStream(sid, RstStatus.PROTOCOL_ERROR)])
            return
        self._last_peer_id = sid
        if self._goaway_sent or self.closed:
            await self._try_send([RstStream(sid, RstStatus.REFUSED_STREAM)])
            return
        stream = Stream(self, sid, frame.headers, send_window=self._peer_initial_window,
                        recv_window=self.initial_window)
        stream._replied.set_result(None)
        if frame.flags & FLAG_UNIDIRECTIONAL:
            stream.local_closed = True
        if frame.flags & FLAG_FIN:
            stream.remote_closed = True
        self.streams[sid] = stream
        try:
            accepted = self._on_stream(stream) if self._on_stream is not None else False
        except Exception:
            accepted = False
        if not accepted:
            stream._on_reset(RstStatus.REFUSED_STREAM)
            await self._try_send([RstStream(sid, RstStatus.REFUSED_STREAM)])
            return
        await self._try_send([SynReply(sid, Headers())])
        stream.reply_sent.set()

    def _maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        if self.streams.get(stream.id) is stream:
            del self.streams[stream.id]
        stream._done.set()
