"""``containerd.services.streaming.v1.Streaming``: named bidirectional streams of ``Any``.

Follows containerd's ``plugins/services/streaming`` and ``plugins/streaming``
(the stream manager) and ``core/transfer/streaming`` (the byte framing):

- A client opens ``Streaming/Stream``; its first message is a ``StreamInit{id}``.
  The server registers the stream under the request's namespace and that id
  (a second stream with the same id is AlreadyExists), answers with an empty
  ``google.protobuf.Empty`` as the ack, and keeps the call open until the side
  that uses the stream closes it (or the client goes away).
- Another call — ``Transfer`` — finds it with :meth:`StreamManager.get` and
  sends and receives ``Any`` messages on it: progress, credentials requests,
  or bytes.
- Bytes travel as ``containerd.types.transfer.Data`` messages of at most
  32 KiB. The receiver grants credit with ``WindowUpdate{update}`` (64 KiB
  whenever its window drops below 64 KiB), the sender never has more bytes in
  flight than it was granted, and ends by closing its side (EOF).

Type URLs are what Go's ``typeurl`` writes for messages it was not told
about: the bare protobuf full name (``containerd.types.transfer.Data``, not
``type.googleapis.com/…``); both forms are accepted on receipt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import betterproto2
import grpclib.const
import grpclib.server

from ..api.containerd.services.streaming import v1 as api
from ..api.containerd.types import transfer as tt
from ..api.google import protobuf as pb
from ..api.message_pool import default_message_pool
from ..errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from ..plugin import GRPC, InitContext, Registration
from ..tasks import unless
from . import context

log = logging.getLogger(__name__)

STREAMING = "io.containerd.streaming.v1"
STREAM_METHOD = "/containerd.services.streaming.v1.Streaming/Stream"

MAX_READ = 32 * 1024           # bytes in one Data message (core/transfer/streaming maxRead)
WINDOW_SIZE = 2 * MAX_READ     # credit granted at a time (windowSize)

M = TypeVar("M", bound=betterproto2.Message)


# -- Any, as Go's typeurl writes it -----------------------------------------------------------

def type_url(message: betterproto2.Message | type[betterproto2.Message]) -> str:
    """The type URL Go's ``typeurl.MarshalAny`` gives ``message``: its protobuf full name."""
    cls = message if isinstance(message, type) else type(message)
    return default_message_pool.type_to_url[cls].rsplit("/", 1)[-1]


def type_name(url: str) -> str:
    """The full name in a type URL (``type.googleapis.com/x.Y`` and ``x.Y`` both give ``x.Y``)."""
    return url.rsplit("/", 1)[-1]


def pack(message: betterproto2.Message) -> pb.Any:
    """``message`` as an ``Any`` with a Go-style type URL."""
    return pb.Any(type_url=type_url(message), value=bytes(message))


def unpack(value: pb.Any, cls: type[M]) -> M:
    """The ``cls`` message in ``value``; InvalidArgument when it holds another type."""
    if type_name(value.type_url) != type_url(cls):
        raise InvalidArgument(f"expected {type_url(cls)}, got {value.type_url or 'an empty Any'}")
    return cls.parse(value.value)


def is_type(value: pb.Any, cls: type[betterproto2.Message]) -> bool:
    return type_name(value.type_url) == type_url(cls)


def generate_id(prefix: str) -> str:
    """A stream id as containerd's ``GenerateID`` makes them: ``<prefix>-<ns>-<random>``."""
    return f"{prefix}-{time.time_ns() % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


# -- streams ------------------------------------------------------------------------------------

class Stream(Protocol):
    """One end of a named stream (containerd's ``streaming.Stream``)."""

    async def send(self, message: betterproto2.Message | pb.Any) -> None:
        """Send one message. Raises Unavailable once the stream is closed."""

    async def recv(self) -> pb.Any | None:
        """The next message; None at the end of the stream."""

    async def close(self) -> None:
        """End this side: no more sends (the daemon's end also ends the call)."""


class ServerStream:
    """The daemon's end of a stream a client opened with ``Streaming/Stream``.

    The ``Stream`` call owns the gRPC stream and pumps what arrives into a
    small queue (so HTTP/2 flow control pushes back on a client that sends
    too much); :meth:`close` ends the call. A client that goes away makes
    :meth:`recv` raise Unavailable and :meth:`send` fail.
    """

    def __init__(self, grpc_stream: grpclib.server.Stream, namespace: str, id_: str) -> None:
        self.id = id_
        self.namespace = namespace
        self._grpc = grpc_stream
        self._inbox: asyncio.Queue[pb.Any | None] = asyncio.Queue(maxsize=8)
        self._closed = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._eof = False
        self._error: str | None = None

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def send(self, message: betterproto2.Message | pb.Any) -> None:
        if self._closed.is_set():
            raise Unavailable(f"stream {self.id} is closed")
        value = message if isinstance(message, pb.Any) else pack(message)
        async with self._send_lock:
            try:
                await self._grpc.send_message(value)
            except Exception as e:
                raise Unavailable(f"stream {self.id}: send failed: {e or type(e).__name__}") from None

    async def recv(self) -> pb.Any | None:
        if self._eof:
            return None
        if self._inbox.empty() and self._closed.is_set():
            return self._end()
        got, message = await unless(self._inbox.get(), self._closed.wait())
        if got:
            if message is None:
                self._eof = True
            return message
        return self._end()

    def _end(self) -> None:
        self._eof = True
        if self._error is not None:
            raise Unavailable(f"stream {self.id}: {self._error}")

    async def close(self) -> None:
        self._closed.set()

    async def _pump(self) -> None:
        """Move received messages into the inbox until the client ends its side."""
        try:
            while True:
                message = await self._grpc.recv_message()
                await self._inbox.put(message)
                if message is None:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._error = f"receive failed: {e or type(e).__name__}"
            self._closed.set()


class StreamManager:
    """Streams by namespace and id (plugin ``io.containerd.streaming.v1.manager``)."""

    def __init__(self) -> None:
        self._streams: dict[tuple[str, str], ServerStream] = {}

    def register(self, stream: ServerStream) -> None:
        """Raises AlreadyExists when the namespace has a stream with that id."""
        key = (stream.namespace, stream.id)
        if key in self._streams:
            raise AlreadyExists(f"stream {stream.id}: already exists")
        self._streams[key] = stream

    def unregister(self, stream: ServerStream) -> None:
        key = (stream.namespace, stream.id)
        if self._streams.get(key) is stream:
            del self._streams[key]

    def get(self, namespace: str, id_: str) -> ServerStream:
        """Raises NotFound."""
        try:
            return self._streams[(namespace, id_)]
        except KeyError:
            raise NotFound(f"stream {id_}: not found") from None

    def __len__(self) -> int:
        return len(self._streams)

    async def close(self) -> None:
        for stream in list(self._streams.values()):
            await stream.close()


class StreamingService:
    """The ``Streaming`` gRPC service (plugin ``io.containerd.grpc.v1.streaming``)."""

    def __init__(self, manager: StreamManager) -> None:
        self.manager = manager

    async def stream(self, grpc_stream: grpclib.server.Stream) -> None:
        namespace = context.namespace()
        first = await grpc_stream.recv_message()
        if first is None:
            return
        init = unpack(first, api.StreamInit)
        if not init.id:
            raise InvalidArgument("stream id must not be empty")
        stream = ServerStream(grpc_stream, namespace, init.id)
        self.manager.register(stream)
        log.debug("registering stream", extra={"fields": {"stream": init.id}})
        pump: asyncio.Task[None] | None = None
        try:
            await grpc_stream.send_message(pack(pb.Empty()))  # the ack: registered, ready
            pump = asyncio.create_task(stream._pump())
            await stream._closed.wait()
        except asyncio.CancelledError:
            stream._error = stream._error or "the client went away"
            raise
        finally:
            stream._closed.set()
            self.manager.unregister(stream)
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {STREAM_METHOD: grpclib.const.Handler(
            self.stream, grpclib.const.Cardinality.STREAM_STREAM, pb.Any, pb.Any)}


# -- byte streams with flow control (core/transfer/streaming) ----------------------------------

class WindowedWriter:
    """Sends bytes as ``Data`` messages within the credit the receiver grants.

    containerd's ``WriteByteStream``/``SendStream``: a task reads
    ``WindowUpdate`` messages from ``stream``; :meth:`write` waits for credit
    and splits data into messages of at most 32 KiB. :meth:`close` ends the
    stream (the receiver sees EOF). Raises Unavailable if the stream ends while
    data is still waiting for credit.
    """

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._credit = 0
        self._updated = asyncio.Event()
        self._ended = False
        self._reader = asyncio.create_task(self._read_updates())

    async def _read_updates(self) -> None:
        try:
            while True:
                message = await self._stream.recv()
                if message is None:
                    return
                if is_type(message, tt.WindowUpdate):
                    self._credit += unpack(message, tt.WindowUpdate).update
                    self._updated.set()
                else:
                    log.warning("unexpected message on a byte stream",
                                extra={"fields": {"type": message.type_url}})
        except Exception as e:
            log.debug("byte stream ended", extra={"fields": {"error": str(e)}})
        finally:
            self._ended = True
            self._updated.set()

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            while self._credit <= 0:
                if self._ended:
                    raise Unavailable("the receiver closed the stream")
                self._updated.clear()
                await self._updated.wait()
            n = min(len(view), MAX_READ, self._credit)
            await self._stream.send(tt.Data(data=bytes(view[:n])))
            self._credit -= n
            view = view[n:]

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._stream.close()


async def send_stream(stream: Stream, read: Callable[[int], Awaitable[bytes]]) -> int:
    """Send everything ``read(n)`` returns (until b"") on ``stream``, then close it (``SendStream``)."""
    writer = WindowedWriter(stream)
    total = 0
    try:
        while chunk := await read(MAX_READ * 8):
            await writer.write(chunk)
            total += len(chunk)
    finally:
        await writer.close()
    return total


async def receive_stream(stream: Stream, write: Callable[[bytes], Awaitable[Any]]) -> int:
    """Receive ``Data`` until EOF, granting credit as containerd's ``ReceiveStream`` does.

    Returns the number of bytes received. Raises what ``write`` raises, and
    Unavailable when the stream breaks.
    """
    window = 0
    total = 0
    while True:
        if window < WINDOW_SIZE:
            try:
                await stream.send(tt.WindowUpdate(update=WINDOW_SIZE))
                window += WINDOW_SIZE
            except Unavailable:
                pass  # the sender may have finished already; its EOF comes next
        message = await stream.recv()
        if message is None:
            return total
        if not is_type(message, tt.Data):
            log.warning("ignoring unknown stream object", extra={"fields": {"type": message.type_url}})
            continue
        data = unpack(message, tt.Data).data
        await write(data)
        window -= len(data)
        total += len(data)


async def _init_manager(ctx: InitContext) -> StreamManager:
    return StreamManager()


async def _init_service(ctx: InitContext) -> StreamingService:
    return StreamingService(ctx.get(STREAMING, "manager"))


MANAGER_PLUGIN = Registration(STREAMING, "manager", _init_manager)
PLUGIN = Registration(GRPC, "streaming", _init_service, requires=(STREAMING,))
PLUGINS = (MANAGER_PLUGIN, PLUGIN)
