"""A speed fix for the HTTP/2 stack under grpclib, applied when the gRPC server is imported.

h2 formats every received frame for a trace log line whether or not anyone
logs it (``repr(frame)`` is evaluated eagerly), and hyperframe's data repr
hex-encodes the whole payload (16 KiB per DATA frame) only to keep its first
20 characters. On a content ingest that is ~16% of the event loop's time. The
replacement below returns exactly the same string from the first 11 bytes.

:class:`CoalescingTransport` joins the writes grpclib makes in one turn of the loop
into one ``send`` (see its doc).
"""

from __future__ import annotations

import asyncio
import binascii
from typing import Any

from hyperframe import frame as _frame


def _raw_data_repr(data: bytes | None) -> str:
    if not data:
        return "None"
    r = binascii.hexlify(data[:11]).decode("ascii")
    if len(r) > 20:
        r = r[:20] + "..."
    return "<hex:" + r + ">"


def apply() -> None:
    """Install the replacement (idempotent)."""
    _frame._raw_data_repr = _raw_data_repr


class CoalescingTransport:
    """A connection's transport whose writes of one loop iteration leave in one ``send``.

    grpclib writes each HTTP/2 step on its own: a unary answer is three writes (headers,
    data, trailers), each a system call that also hands the GIL to any busy worker
    thread, so under load the loop waits for it back three times per answer. Here
    ``write`` only queues; the queue is joined and written once, at the next turn of the
    loop (``call_soon``). Order is kept; ``close`` writes what is queued first, ``abort``
    drops it. Everything else is the wrapped transport's.
    """

    __slots__ = ("_loop", "_queue", "_transport")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._queue: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._queue is None:
            self._queue = [data]
            self._loop.call_soon(self.flush)
        else:
            self._queue.append(data)

    def flush(self) -> None:
        queue, self._queue = self._queue, None
        if queue:
            self._transport.write(queue[0] if len(queue) == 1 else b"".join(queue))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._queue = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def coalescing(protocol_class: type) -> type:
    """A subclass of grpclib's ``H2Protocol`` whose transport is a :class:`CoalescingTransport`."""

    class Coalescing(protocol_class):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))

    Coalescing.__name__ = Coalescing.__qualname__ = "Coalescing" + protocol_class.__name__
    return Coalescing
