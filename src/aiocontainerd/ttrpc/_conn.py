"""The frame layer shared by client and server: an ``asyncio.Protocol`` over a unix socket.

Incoming bytes are cut into frames (PROTOCOL.md, "Message Frame") without
intermediate readers: a frame that arrives whole in one ``data_received``
chunk is sliced straight out of it.  A frame whose length exceeds the maximum
is skipped byte for byte as it arrives (the stream stays in step) and reported
through ``oversized``; that is what Go's ttrpc does.  Writes go straight to the
transport: frames sent during one pass of the event loop are gathered and
written with one ``write`` at the end of it (so a burst of concurrent calls
or responses costs one ``send`` syscall, not one per frame); frames of 64 KiB
and more go out at once.  ``drain`` applies the transport's write flow control.
"""

from __future__ import annotations

import asyncio

from ._wire import HEADER, HEADER_LENGTH, Closed, OversizedMessage

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack


class FrameProtocol(asyncio.Protocol):
    """Base protocol: subclasses implement ``frame_received``, ``oversized`` and ``lost``."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._discard = 0
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.is_lost = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        if self._discard:
            if len(data) <= self._discard:
                self._discard -= len(data)
                return
            data = data[self._discard:]
            self._discard = 0
        buf = self._buf
        if buf:
            buf += data
            data = buf  # type: ignore[assignment]
        n = len(data)
        pos = 0
        max_message = self.max_message
        while n - pos >= HEADER_LENGTH:
            length, sid, mtype, flags = _unpack_header(data, pos)
            start = pos + HEADER_LENGTH
            end = start + length
            if length > max_message:
                if end <= n:
                    pos = end
                else:
                    self._discard = end - n
                    pos = n
                self.oversized(sid, mtype, flags, length)
                continue
            if end > n:
                break
            payload = bytes(data[start:end]) if buf else data[start:end]
            pos = end
            self.frame_received(sid, mtype, flags, payload)
            if self.is_lost:
                return
        if buf:
            del buf[:pos]
        elif pos < n:
            buf += data[pos:]

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_lost = True
        self._buf = bytearray()
        self._out.clear()
        self._wake(exc or ConnectionResetError("ttrpc: connection lost"))
        self.lost(exc)

    # -- to implement ------------------------------------------------------

    def frame_received(self, sid: int, mtype: int, flags: int, payload: bytes) -> None:
        raise NotImplementedError

    def oversized(self, sid: int, mtype: int, flags: int, length: int) -> None:
        raise NotImplementedError

    def lost(self, exc: Exception | None) -> None:
        raise NotImplementedError

    # -- writing -----------------------------------------------------------

    def send(self, sid: int, mtype: int, flags: int, payload: bytes) -> None:
        """Write one frame; raises OversizedMessage (nothing sent) or Closed."""
        if len(payload) > self.max_message:
            raise OversizedMessage(
                f"message length {len(payload)} exceeds maximum message size of {self.max_message}")
        transport = self.transport
        if transport is None or self.is_lost or transport.is_closing():
            raise Closed()
        header = _pack_header(len(payload), sid, mtype, flags)
        if len(payload) >= 65536:
            self.flush()
            transport.write(header)
            transport.write(payload)
            return
        self._out.append(header)
        if payload:
            self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)  # type: ignore[union-attr]

    def flush(self) -> None:
        """Write the gathered frames now (called at the end of the loop pass, and before closing)."""
        self._flush_scheduled = False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            transport = self.transport
            if transport is not None and not self.is_lost and not transport.is_closing():
                transport.write(data)

    def close(self) -> None:
        """Flush the gathered frames and close the transport."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if not self._paused:
            return
        if self.is_lost:
            raise Closed()
        fut = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        await fut

    def _wake(self, exc: Exception | None) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(Closed())
