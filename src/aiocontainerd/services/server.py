"""The gRPC server: grpclib on a unix socket, with containerd's request semantics.

Every call passes through :class:`Server`'s middleware, which

- sets the request context (namespace and lease headers, see ``context.py``);
- turns core errors (:class:`~aiocontainerd.errors.ContainerdError`) into
  gRPC statuses with their code and message, and any other exception into
  ``UNKNOWN`` with the message (logged with its traceback, never sent);
- counts calls of served methods and their latency in the daemon's metrics.

A method no handler serves answers ``UNIMPLEMENTED`` as a normal gRPC
response (with ``content-type``), which Go clients such as ``ctr`` read as
Unimplemented and fall back from; grpclib's own reply lacks the header, which
Go reads as Unknown.

Unary calls (``ctr`` and kubelet make them by the dozen per container) take a
shorter path than grpclib's request handler (:meth:`_Handler.accept`): the same
HTTP/2 stream and the same wire answer - headers, the length-prefixed message,
``grpc-status`` trailers; on an error a trailers-only answer and a stream reset,
as grpclib sends them; past the ``grpc-timeout`` deadline the handler is
cancelled and the answer is ``DEADLINE_EXCEEDED`` - without its per-call
``Stream`` object and event dispatch. Every other call (streams, a malformed
request) goes to grpclib's own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from typing import Any

import grpclib.const
import grpclib.protocol
import grpclib.server
import grpclib.stream
import h2.exceptions
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.metadata import decode_timeout, encode_grpc_message

from ..errors import ContainerdError
from ..metrics import Metrics
from . import context, h2speed

h2speed.apply()
_PROTOCOL = h2speed.coalescing(grpclib.protocol.H2Protocol)

log = logging.getLogger(__name__)


async def _unimplemented(stream: grpclib.server.Stream) -> None:
    raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, "unknown service or method")


_UNIMPLEMENTED = grpclib.const.Handler(
    _unimplemented, grpclib.const.Cardinality.STREAM_STREAM, None, None)


Cardinality = grpclib.const.Cardinality
_KIND = {Cardinality.UNARY_UNARY: "unary", Cardinality.UNARY_STREAM: "server_stream",
         Cardinality.STREAM_UNARY: "client_stream", Cardinality.STREAM_STREAM: "bidi_stream"}
#: gRPC status names as Go spells them (codes.Code.String), which go-grpc-prometheus exports.
_CODE_NAMES = {s: "".join(w.capitalize() for w in s.name.split("_")) for s in grpclib.const.Status}
_CODE_NAMES[grpclib.const.Status.OK] = "OK"
_CODE_NAMES[grpclib.const.Status.CANCELLED] = "Canceled"


class _Mapping(dict):
    """Method table that answers every unknown path with the UNIMPLEMENTED handler."""

    def get(self, key: str, default: Any = None) -> grpclib.const.Handler:  # type: ignore[override]
        return super().get(key, _UNIMPLEMENTED)


class Server(grpclib.server.Server):
    """grpclib server with containerd's middleware (see the module doc)."""

    def __init__(self, handlers: Collection[Any], metrics: Metrics | None = None) -> None:
        super().__init__(handlers)
        self._mapping = _Mapping(self._mapping)
        self._metrics = metrics
        listen(self, RecvRequest, self._on_request)

    def _protocol_factory(self) -> Any:
        # grpclib's own factory, with our handler (the unary path) and a protocol that
        # writes through a CoalescingTransport (h2speed)
        self.__gc_step__()
        handler = _Handler(self, self._mapping, self._codec, self._status_details_codec,
                           self.__dispatch__)
        self._handlers.add(handler)
        return _PROTOCOL(handler, self._config, self._h2_config)

    async def _on_request(self, event: RecvRequest) -> None:
        event.method_func = self.middleware(event.method_name, event.method_func, event.metadata)

    def middleware(self, method: str, func: Any, metadata: Any) -> Any:
        """``func`` (a grpclib method handler taking the call's stream) wrapped in the
        middleware of the module doc; ``metadata`` maps the request's header names to values."""
        known = dict.get(self._mapping, method)
        kind = _KIND[known.cardinality] if known is not None else None
        ctx = context.RequestContext(
            namespace=_header(metadata, context.NAMESPACE_HEADER),
            lease=_header(metadata, context.LEASE_HEADER),
        )
        metrics = self._metrics

        async def call(stream: grpclib.server.Stream) -> None:
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
            except asyncio.CancelledError:
                code = grpclib.const.Status.CANCELLED
                raise
            except Exception as e:
                code = grpclib.const.Status.UNKNOWN
                log.exception("error handling request", extra={"fields": {"method": method}})
                raise GRPCError(code, str(e) or type(e).__name__) from None
            finally:
                if metrics is not None and kind is not None:
                    metrics.observe_grpc(method, kind, _CODE_NAMES[code], time.perf_counter() - started)

        return call


_CONTENT_TYPE = "application/grpc+proto"
_CONTENT_TYPES = ("application/grpc", _CONTENT_TYPE)
_UNARY = grpclib.const.Cardinality.UNARY_UNARY


class _Handler(grpclib.server.Handler):
    """grpclib's connection handler; unary calls take :meth:`_unary`."""

    def __init__(self, server: Server, *args: Any) -> None:
        super().__init__(*args)
        self._server = server

    def accept(self, stream: grpclib.protocol.Stream, headers: Any,
               release_stream: Any) -> None:
        fields = dict(headers)
        method = self.mapping.get(fields.get(":path"))
        timeout = fields.get("grpc-timeout")
        try:
            seconds = None if timeout is None else decode_timeout(timeout)
        except ValueError:
            seconds = -1.0  # grpclib answers a malformed one
        if (method.cardinality is not _UNARY or fields.get(":method") != "POST"
                or fields.get("content-type") not in _CONTENT_TYPES
                or fields.get("te") != "trailers" or (seconds is not None and seconds < 0)):
            super().accept(stream, headers, release_stream)
            return
        self.__gc_step__()
        call = self._server.middleware(fields[":path"], method.func, fields)
        self._tasks[stream] = self.loop.create_task(
            self._unary(stream, call, method, release_stream, seconds))

    async def _unary(self, stream: grpclib.protocol.Stream, call: Any,
                     method: grpclib.const.Handler, release_stream: Any,
                     deadline: float | None) -> None:
        """Read the request, run ``call`` within ``deadline`` seconds (None: none), answer
        (see the module doc)."""
        try:
            try:
                try:
                    async with asyncio.timeout(deadline):
                        request = await grpclib.stream.recv_message(
                            stream, self.codec, method.request_type)
                        if request is None:
                            raise GRPCError(grpclib.const.Status.INTERNAL, "no request message")
                        unary = _UnaryStream(request)
                        await call(unary)
                except TimeoutError:  # the deadline (the middleware turns a handler's own into UNKNOWN)
                    raise GRPCError(grpclib.const.Status.DEADLINE_EXCEEDED) from None
                if unary.reply is None:
                    raise GRPCError(grpclib.const.Status.UNKNOWN, "Internal Server Error")
            except GRPCError as e:
                trailers = [(":status", "200"), ("content-type", _CONTENT_TYPE),
                            ("grpc-status", str(e.status.value))]
                if e.message is not None:
                    trailers.append(("grpc-message", encode_grpc_message(e.message)))
                await stream.send_headers(trailers, end_stream=True)
                if stream.closable:
                    stream.reset_nowait()
                _flush(stream)
                return
            await stream.send_headers([(":status", "200"), ("content-type", _CONTENT_TYPE)])
            await grpclib.stream.send_message(stream, self.codec, unary.reply, method.reply_type)
            await stream.send_headers([("grpc-status", "0")], end_stream=True)
            _flush(stream)
        except (StreamTerminatedError, h2.exceptions.StreamClosedError, ConnectionError):
            pass  # the client went away: nobody to answer
        except Exception:
            log.exception("error answering a unary call")
        finally:
            release_stream()


def _flush(stream: grpclib.protocol.Stream) -> None:
    """Write the answer now (the CoalescingTransport's queue): it is complete, no need to
    wait for the loop's next turn."""
    stream._transport.flush()


class _UnaryStream:
    """What a generated unary method handler uses of grpclib's server ``Stream``."""

    __slots__ = ("_request", "reply")

    def __init__(self, request: Any) -> None:
        self._request = request
        self.reply: Any = None

    async def recv_message(self) -> Any:
        return self._request

    async def send_message(self, message: Any) -> None:
        self.reply = message


def _header(metadata: Any, name: str) -> str | None:
    value = metadata.get(name)
    if isinstance(value, bytes):
        value = value.decode()
    return value

