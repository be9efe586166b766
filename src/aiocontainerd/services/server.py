"""The gRPC server: the containerd API and the CRI on one unix socket, with containerd's
request semantics.

gRPC over HTTP/2 (grpc/grpc ``doc/PROTOCOL-HTTP2.md``) on this package's HTTP/2
connection (``http2.py``); the methods are the generated services' ``__mapping__``
tables (grpclib ``Handler``s, whose functions take a stream with grpclib's server
``recv_message``/``send_message``/async iteration). ``ctr``, kubelet and crictl make
dozens of short calls per container; in Python a general HTTP/2 stack (h2) under
grpclib's server cost more than the handlers, so the server side is this one's own:

- a request's headers pick the method by ``:path``; ``grpc-timeout`` sets a deadline
  past which the handler is cancelled and the answer is ``DEADLINE_EXCEEDED``;
  a client's RST_STREAM, or its going away, cancels the handler;
- a unary answer - headers, the length-prefixed message, ``grpc-status`` trailers - is
  written at once; an error is a trailers-only answer (``grpc-status``, percent-encoded
  ``grpc-message``); streamed replies go out as they are sent, under flow control;
- an unknown method answers ``UNIMPLEMENTED`` as a normal gRPC response (with
  ``content-type``), which Go clients such as ``ctr`` read as Unimplemented and fall
  back from; a compressed message ``UNIMPLEMENTED`` (no ``grpc-encoding`` is offered);
  a message over 16 MiB (containerd's ``max_recv_message_size``) ``RESOURCE_EXHAUSTED``.

Every call passes through :meth:`Server.middleware`, which

- sets the request context (namespace and lease headers, see ``context.py``);
- turns core errors (:class:`~aiocontainerd.errors.ContainerdError`) into
  gRPC statuses with their code and message, and any other exception into
  ``UNKNOWN`` with the message (logged with its traceback, never sent);
- counts calls of served methods and their latency in the daemon's metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Collection, Mapping
from typing import Any

import grpclib.const
from grpclib.exceptions import GRPCError
from grpclib.metadata import decode_timeout, encode_grpc_message

from ..errors import ContainerdError
from ..metrics import Metrics
from . import context, http2

log = logging.getLogger(__name__)

Status = grpclib.const.Status
Cardinality = grpclib.const.Cardinality
_KIND = {Cardinality.UNARY_UNARY: "unary", Cardinality.UNARY_STREAM: "server_stream",
         Cardinality.STREAM_UNARY: "client_stream", Cardinality.STREAM_STREAM: "bidi_stream"}
#: gRPC status names as Go spells them (codes.Code.String), which go-grpc-prometheus exports.
_CODE_NAMES = {s: "".join(w.capitalize() for w in s.name.split("_")) for s in Status}
_CODE_NAMES[Status.OK] = "OK"
_CODE_NAMES[Status.CANCELLED] = "Canceled"

MAX_RECEIVE = 16 * 1024 * 1024   # bytes of one request message (containerd's default)
_CONTENT_TYPE = "application/grpc+proto"
_HEADERS = http2.encode_headers([(":status", "200"), ("content-type", _CONTENT_TYPE)])
_TRAILERS_OK = http2.encode_headers([("grpc-status", "0")])
_TRAILERS_ONLY_OK = http2.encode_headers(
    [(":status", "200"), ("content-type", _CONTENT_TYPE), ("grpc-status", "0")])
_UNARY_REPLY = (Cardinality.UNARY_UNARY, Cardinality.STREAM_UNARY)
_UNARY_REQUEST = (Cardinality.UNARY_UNARY, Cardinality.UNARY_STREAM)
_TIMEOUT = re.compile(r"[0-9]{1,8}[HMSmun]")   # PROTOCOL-HTTP2.md: at most 8 digits and a unit


class Server:
    """The gRPC server of the module doc, serving ``handlers`` (objects with a
    ``__mapping__()`` of method paths to grpclib ``Handler``s); ``metrics`` counts calls."""

    def __init__(self, handlers: Collection[Any], metrics: Metrics | None = None) -> None:
        self._mapping: dict[str, grpclib.const.Handler] = {}
        for handler in handlers:
            self._mapping.update(handler.__mapping__())
        self._metrics = metrics
        self._server: asyncio.Server | None = None
        self._connections: set[http2.Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, path: str | None = None, *, sock: Any = None) -> None:
        """Serve on the unix socket at ``path``, or on the listening socket ``sock``."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connect, path=path, sock=sock)

    def close(self) -> None:
        """Stop accepting connections, cancel every running call (each answers UNAVAILABLE)
        and then tell the connections to go away (GOAWAY; each closes after its last
        stream). Raises RuntimeError if the server was never started."""
        if self._server is None:
            raise RuntimeError("the server was not started")
        self._closing = True
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        # after the cancelled calls' answers (scheduled first): a client's h2 stops
        # reading streams at GOAWAY
        asyncio.get_running_loop().call_soon(self._go_away)

    def _go_away(self) -> None:
        for connection in list(self._connections):
            connection.go_away()

    async def wait_closed(self) -> None:
        """Wait until :meth:`close` is done: every call has ended, every connection closed."""
        if self._server is None:
            raise RuntimeError("the server was not started")
        await self._server.wait_closed()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        self._go_away()
        for connection in list(self._connections):
            connection.close()

    def _connect(self) -> http2.Connection:
        connection = http2.Connection(self._request, self._connections.discard)
        self._connections.add(connection)
        return connection

    def _request(self, stream: http2.Stream) -> None:
        headers = stream.headers
        path = headers.get(":path", "")
        if headers.get(":method") != "POST":
            _refuse(stream, "405", "method not allowed: gRPC is POST")
            return
        if not headers.get("content-type", "").startswith("application/grpc"):
            _refuse(stream, "415", "unsupported content-type: not application/grpc")
            return
        method = self._mapping.get(path)
        if method is None:
            _fail(stream, False, Status.UNIMPLEMENTED, "unknown service or method")
            return
        deadline = None
        timeout = headers.get("grpc-timeout")
        if timeout is not None:
            if not _TIMEOUT.fullmatch(timeout):
                _fail(stream, False, Status.INTERNAL, f"malformed grpc-timeout {timeout[:20]!r}")
                return
            deadline = decode_timeout(timeout)
        encoding = headers.get("grpc-encoding")
        if encoding not in (None, "identity"):
            _fail(stream, False, Status.UNIMPLEMENTED, f"grpc-encoding {encoding!r} is not supported")
            return
        call = self.middleware(path, method, headers)
        task = asyncio.get_running_loop().create_task(self._serve(stream, method, call, deadline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        stream.on_reset = task.cancel

    async def _serve(self, stream: http2.Stream, method: grpclib.const.Handler, call: Any,
                     deadline: float | None) -> None:
        """Run ``call`` on ``stream`` within ``deadline`` seconds (None: none) and answer."""
        grpc = _Call(stream, method)
        try:
            try:
                try:
                    async with asyncio.timeout(deadline):
                        await call(grpc)
                except TimeoutError:  # the deadline (the middleware turns a handler's own into UNKNOWN)
                    raise GRPCError(Status.DEADLINE_EXCEEDED) from None
                await grpc.finish()
            except GRPCError as e:
                _fail(stream, grpc.sent, e.status, e.message)
        except http2.StreamReset:
            pass          # the client went away: nobody to answer
        except asyncio.CancelledError:
            if self._closing:            # as containerd's clients see a stopping daemon
                _fail(stream, grpc.sent, Status.UNAVAILABLE, "the server is shutting down")
            else:                        # the client reset the stream: already gone
                stream.reset(http2.CANCEL)
        except Exception:
            log.exception("error answering a call", extra={"fields": {"method": stream.headers.get(":path")}})
            stream.reset(http2.INTERNAL_ERROR)

    def middleware(self, method: str, handler: grpclib.const.Handler,
                   metadata: Mapping[str, str]) -> Any:
        """The ``handler`` of ``method`` (its function takes the call's stream) wrapped in
        the middleware of the module doc; ``metadata`` maps the request's header names to
        values."""
        func = handler.func
        kind = _KIND[handler.cardinality]
        ctx = context.RequestContext(
            namespace=metadata.get(context.NAMESPACE_HEADER),
            lease=metadata.get(context.LEASE_HEADER),
        )
        metrics = self._metrics

        async def call(stream: _Call) -> None:
            context.current.set(ctx)
            started = time.perf_counter()
            code = grpclib.const.Status.OK
            try:
                await func(stream)
            except ContainerdError as e:
                code = grpclib.const.Status(e.code)
                raise GRPCError(code, e.message) from None
            except GRPCError as e:
                code = e.status
                raise
            except (asyncio.CancelledError, http2.StreamReset):  # the client is gone
                code = grpclib.const.Status.CANCELLED
                raise
            except Exception as e:
                code = grpclib.const.Status.UNKNOWN
                log.exception("error handling request", extra={"fields": {"method": method}})
                raise GRPCError(code, str(e) or type(e).__name__) from None
            finally:
                if metrics is not None:
                    metrics.observe_grpc(method, kind, _CODE_NAMES[code], time.perf_counter() - started)

        return call


class _Call:
    """What generated method handlers use of grpclib's server ``Stream``: ``recv_message``
    (None after the last), async iteration over the requests, ``send_message``."""

    __slots__ = ("_buffer", "_request_type", "_stream", "_unary_reply", "_unary_request", "reply",
                 "sent")

    def __init__(self, stream: http2.Stream, method: grpclib.const.Handler) -> None:
        self._stream = stream
        self._request_type = method.request_type
        self._buffer = bytearray()
        self._unary_reply = method.cardinality in _UNARY_REPLY
        self._unary_request = method.cardinality in _UNARY_REQUEST   # None: its one message was read
        self.reply: bytes | None = None     # a unary reply, sent by finish()
        self.sent = False                   # headers sent

    async def recv_message(self) -> Any:
        """The next request message, or None after the last (a gRPC length-prefixed message:
        1 byte compressed flag, 4 bytes big-endian length). A unary request without its
        message is INTERNAL; the rest of a unary request after its message is dropped."""
        if self._unary_request is None:
            return None
        message = await self._next()
        if self._unary_request:
            if message is None:
                raise GRPCError(Status.INTERNAL, "the request has no message")
            self._unary_request = None
            self._stream.stop_reading()
        return message

    async def _next(self) -> Any:
        buf = self._buffer
        while True:
            have = len(buf)
            if have >= 5:
                if buf[0]:
                    raise GRPCError(Status.UNIMPLEMENTED, "compressed messages are not supported")
                size = int.from_bytes(buf[1:5], "big")
                if size > MAX_RECEIVE:
                    raise GRPCError(Status.RESOURCE_EXHAUSTED,
                                    f"received message larger than max ({size} vs. {MAX_RECEIVE})")
                if have >= 5 + size:
                    data = bytes(buf[5:5 + size])
                    del buf[:5 + size]
                    return self._request_type.FromString(data)
            chunk = await self._stream.read()
            if not chunk:
                if buf:
                    raise GRPCError(Status.INTERNAL, "the request ended inside a message")
                return None
            buf += chunk

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (message := await self.recv_message()) is not None:
            yield message

    async def send_message(self, message: Any) -> None:
        """Send one reply message (a unary method's: kept for :meth:`finish`). Its encoding
        is ``message.SerializeToString()``, as grpclib's codec takes it (CRI list replies
        carry a pre-encoded one, ``cri.sandbox.with_wire``)."""
        data = message.SerializeToString()
        framed = b"\0" + len(data).to_bytes(4, "big") + data
        if self._unary_reply:
            if self.reply is not None:
                raise GRPCError(Status.INTERNAL, "a unary method sent a second reply")
            self.reply = framed
            return
        if not self.sent:
            self._stream.send_headers(_HEADERS)
            self.sent = True
        await self._stream.send_data(framed)

    async def finish(self) -> None:
        """End a call whose handler returned: the unary reply, then ``grpc-status: 0``; a
        unary request the client has not ended is then reset (RST_STREAM NO_ERROR, as
        grpc-go does), so a client that never ends it holds nothing here."""
        stream = self._stream
        if self._unary_reply:
            reply = self.reply
            if reply is None:
                raise GRPCError(Status.UNKNOWN, "Internal Server Error")
            if not stream.try_send(_HEADERS, reply, _TRAILERS_OK):
                stream.send_headers(_HEADERS)
                self.sent = True
                await stream.send_data(reply)
                stream.send_headers(_TRAILERS_OK, end_stream=True)
        elif not self.sent:
            self.sent = True
            stream.send_headers(_TRAILERS_ONLY_OK, end_stream=True)
        else:
            stream.send_headers(_TRAILERS_OK, end_stream=True)
        if self._unary_request is not False:
            stream.abandon()
        stream.flush()


def _fail(stream: http2.Stream, sent: bool, status: Status, message: str | None) -> None:
    """End ``stream`` with ``status``: trailers, or a trailers-only answer if no headers
    were ``sent``."""
    if stream.ended:
        return
    fields = [("grpc-status", str(status.value))]
    if message is not None:
        fields.append(("grpc-message", encode_grpc_message(message)))
    if not sent:
        fields[:0] = [(":status", "200"), ("content-type", _CONTENT_TYPE)]
    stream.send_headers(http2.encode_headers(fields), end_stream=True)
    stream.abandon()
    stream.flush()


def _refuse(stream: http2.Stream, status: str, message: str) -> None:
    """An HTTP-level refusal (gRPC PROTOCOL-HTTP2.md: 405 for a method, 415 for a
    content-type) with an UNKNOWN gRPC status for clients that read it."""
    stream.send_headers(http2.encode_headers(
        [(":status", status), ("grpc-status", str(Status.UNKNOWN.value)),
         ("grpc-message", encode_grpc_message(message))]), end_stream=True)
    stream.abandon()
    stream.flush()
