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
from grpclib.events import RecvRequest, listen
from grpclib.exceptions import GRPCError

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
        # the same protocol, writing through a CoalescingTransport (h2speed)
        proto = super()._protocol_factory()
        return _PROTOCOL(proto.handler, proto.config, proto.h2_config)

    async def _on_request(self, event: RecvRequest) -> None:
        func = event.method_func
        method = event.method_name
        metadata = event.metadata
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

        event.method_func = call


def _header(metadata: Any, name: str) -> str | None:
    value = metadata.get(name)
    if isinstance(value, bytes):
        value = value.decode()
    return value

