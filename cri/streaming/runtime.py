"""What the streaming server asks of the runtime, and the byte pipes it hands over.

The CRI plugin implements :class:`StreamRuntime` (kubelet's ``streaming.Runtime``
in ``k8s.io/kubelet/pkg/cri/streaming/server.go``; containerd's
``internal/cri/server/streaming.go``). The streaming server calls it once per
upgraded connection (exec, attach) or once per forwarded connection
(port-forward), with asyncio-style pipes:

* :class:`AsyncReader` — ``await read(n)`` returns up to ``n`` bytes (``n < 0``:
  whatever is buffered), ``b""`` at end of input. Client stdin and the client
  side of a forwarded connection. EOF means the client closed stdin, or went away.
* :class:`AsyncWriter` — ``write(data)`` buffers (and starts sending), ``await
  drain()`` waits until everything written was handed to the connection,
  ``close()`` sends end-of-stream after the buffered data, ``await
  wait_closed()`` waits for that. Once the client is gone ``write``/``drain``
  raise ``ConnectionResetError``. An ``asyncio.StreamWriter`` has the same shape,
  so a runtime can treat a TCP socket and a client stream alike.
* resize — ``AsyncIterator[TerminalSize]`` of the client's terminal sizes (TTY
  sessions only), ending when the client closes its resize stream.

Cancellation: when the client vanishes mid-stream (connection lost, idle
timeout, server closed) the runtime coroutine is cancelled; it must then stop
the process' I/O (containerd kills an exec process whose context ends) and
re-raise ``CancelledError``. Exceptions other than cancellation are reported
to the client as an internal error on the error stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "AsyncReader",
    "AsyncWriter",
    "ChannelWriter",
    "PipeReader",
    "StreamRuntime",
    "TerminalSize",
    "decode_resize_events",
]


class TerminalSize(NamedTuple):
    """A terminal size in character cells (client-go ``remotecommand.TerminalSize``)."""

    width: int
    height: int


@runtime_checkable
class AsyncReader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


@runtime_checkable
class AsyncWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...

    async def wait_closed(self) -> None: ...


@runtime_checkable
class StreamRuntime(Protocol):
    """The runtime side of exec, attach and port-forward (implemented by the CRI plugin).

    ``stdin``/``stdout``/``stderr`` are ``None`` when the request did not ask for
    them; with ``tty`` there is never a ``stderr`` (the TTY merges it).
    """

    async def exec(self, container_id: str, cmd: list[str], *, stdin: AsyncReader | None,
                   stdout: AsyncWriter | None, stderr: AsyncWriter | None, tty: bool,
                   resize: AsyncIterator[TerminalSize] | None) -> int:
        """Run ``cmd`` in the container, copying the streams; return its exit code.

        0 is reported to the client as Success, anything else as Failure with
        reason ``NonZeroExitCode`` and an ``ExitCode`` cause.
        """
        ...

    async def attach(self, container_id: str, *, stdin: AsyncReader | None, stdout: AsyncWriter | None,
                     stderr: AsyncWriter | None, tty: bool,
                     resize: AsyncIterator[TerminalSize] | None) -> None:
        """Connect the streams to the container's main process until either side ends."""
        ...

    async def port_forward(self, pod_sandbox_id: str, port: int,
                           stream: tuple[AsyncReader, AsyncWriter]) -> None:
        """Copy bytes between ``stream`` and ``port`` inside the pod's network namespace.

        Return when both directions finished (the reader returns ``b""`` when the
        client half-closes; close the writer when the pod side closes).
        """
        ...


class PipeReader:
    """An :class:`AsyncReader` fed by a connection's receive loop.

    ``feed``/``feed_eof`` are called by the producer; ``await wait_drained()``
    lets it pause while more than ``limit`` bytes are unread (back-pressure).
    """

    def __init__(self, limit: int = 256 * 1024) -> None:
        self._buf = bytearray()
        self._eof = False
        self._limit = limit
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buf

    def feed(self, data: bytes) -> None:
        if self._eof or not data:
            return
        self._buf += data
        self._readable.set()
        if len(self._buf) >= self._limit:
            self._drained.clear()

    def feed_eof(self) -> None:
        self._eof = True
        self._readable.set()
        self._drained.set()

    async def wait_drained(self) -> None:
        await self._drained.wait()

    async def read(self, n: int = -1) -> bytes:
        while not self._buf and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
        else:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        if len(self._buf) < self._limit:
            self._drained.set()
        return data


class ChannelWriter:
    """An :class:`AsyncWriter` over an async ``send(bytes)`` (and optional ``send_eof()``).

    One background task sends what ``write`` buffered, in order; ``close()``
    lets it finish, then calls ``send_eof``. A send failure makes later
    ``write``/``drain`` raise ``ConnectionResetError``. :meth:`abort` stops the
    task without sending the rest (used when the connection is torn down).
    """

    def __init__(self, send: Callable[[bytes], Awaitable[None]],
                 send_eof: Callable[[], Awaitable[None]] | None = None) -> None:
        self._send = send
        self._send_eof = send_eof
        self._buf = bytearray()
        self._closing = False
        self._error: BaseException | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task | None = None

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise ConnectionResetError(f"stream closed: {self._error}")
        if self._closing:
            raise ConnectionResetError("write after close")
        if data:
            self._buf += data
            self._idle.clear()
            self._kick()

    async def drain(self) -> None:
        if self._error is None:
            await self._idle.wait()
        if self._error is not None:
            raise ConnectionResetError(f"stream closed: {self._error}")

    def is_closing(self) -> bool:
        return self._closing or self._error is not None

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._kick()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def aclose(self) -> None:
        """``close()`` and ``wait_closed()``."""
        self.close()
        await self.wait_closed()

    def abort(self) -> None:
        self._closing = True
        if self._error is None:
            self._error = ConnectionResetError("aborted")
        self._buf.clear()
        self._idle.set()
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        try:
            while True:
                if self._buf:
                    data = bytes(self._buf)
                    self._buf.clear()
                    await self._send(data)
                    continue
                self._idle.set()
                if self._closing:
                    if self._send_eof is not None:
                        await self._send_eof()
                    return
                self._wake.clear()
                await self._wake.wait()
        except Exception as e:  # the connection went away
            self._error = e
            self._buf.clear()
            self._idle.set()


async def decode_resize_events(reader: AsyncReader) -> AsyncIterator[TerminalSize]:
    """Decode the resize stream: concatenated JSON objects ``{"Width": w, "Height": h}``.

    As kubelet's ``handleResizeEvents`` (remotecommand/httpstream.go): a stream of
    JSON values; the iteration ends at EOF or at the first undecodable value.
    """
    decoder = json.JSONDecoder()
    text = ""
    while True:
        chunk = await reader.read(4096)
        if not chunk:
            return
        text += chunk.decode("utf-8", "replace")
        while True:
            text = text.lstrip()
            if not text:
                break
            try:
                obj, end = decoder.raw_decode(text)
            except json.JSONDecodeError:
                if len(text) > 65536:
                    return
                break  # incomplete: wait for more
            text = text[end:]
            if not isinstance(obj, dict):
                return
            try:
                width = int(obj.get("Width", obj.get("width", 0)))
                height = int(obj.get("Height", obj.get("height", 0)))
            except (TypeError, ValueError):
                return
            yield TerminalSize(width & 0xFFFF, height & 0xFFFF)
