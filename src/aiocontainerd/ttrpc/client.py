"""ttrpc client: many concurrent calls over one unix socket connection.

Unary calls (PROTOCOL.md, "Unary State Diagram") send a Request frame with no
flags on a new odd stream id (1, 3, 5, ...) and wait for the Response frame on
that id; responses are matched by stream id, so any number of calls may be in
flight.  Streaming calls (PROTOCOL.md, "Streaming") open a stream with the
``remote open`` or ``remote closed`` flag and exchange Data frames.

Errors: a non-OK ``google.rpc.Status`` in the Response raises the
``aiocontainerd.errors`` class for its code (``errors.from_status``; codes it
leaves generic get ``DeadlineExceeded``, ``Canceled``, ``Internal``,
``OversizedMessage``); a lost or closed connection raises ``Closed``; a
client-side timeout raises ``errors.DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Generic, TypeVar

import betterproto2

from aiocontainerd import errors

from ._conn import FrameProtocol
from ._wire import (
    DATA,
    DEFAULT_MAX_MESSAGE,
    FLAG_NO_DATA,
    FLAG_REMOTE_CLOSED,
    FLAG_REMOTE_OPEN,
    REQUEST,
    RESPONSE,
    Closed,
    OversizedMessage,
    ProtocolError,
    decode_response,
    encode_request,
    error_from_status,
    socket_address,
    unix_socket,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=betterproto2.Message)

Metadata = Mapping[str, str | Sequence[str]]

_MAX_STREAM_ID = (1 << 32) - 1


class _ClientProtocol(FrameProtocol):
    def __init__(self, client: Client, max_message: int) -> None:
        super().__init__(max_message)
        self.client = client

    def frame_received(self, sid: int, mtype: int, flags: int, payload: bytes) -> None:
        waiter = self.client._streams.get(sid)
        if waiter is None:
            log.debug("ttrpc: message on inactive stream %d dropped", sid)
            return
        if type(waiter) is asyncio.Future:
            if waiter.done():
                return
            if mtype == RESPONSE:
                waiter.set_result(payload)
            else:
                waiter.set_exception(ProtocolError(f"ttrpc: unexpected message type {mtype} on unary call"))
        else:
            waiter.feed(mtype, flags, payload)  # type: ignore[union-attr]

    def oversized(self, sid: int, mtype: int, flags: int, length: int) -> None:
        err = OversizedMessage(
            f"message length {length} exceed maximum message size of {self.max_message}")
        waiter = self.client._streams.get(sid)
        if waiter is None:
            return
        if type(waiter) is asyncio.Future:
            if not waiter.done():
                waiter.set_exception(err)
        else:
            waiter.fail(err)  # type: ignore[union-attr]

    def lost(self, exc: Exception | None) -> None:
        self.client._lost()


class Client:
    """A ttrpc connection to one server (a shim, or the daemon's ``<socket>.ttrpc``).

    Create it with ``await Client.connect(address)``; it is also an async
    context manager (closing on exit).  Every method runs on the loop that
    connected it.
    """

    def __init__(self, protocol: _ClientProtocol, *, max_message: int) -> None:
        # use Client.connect(); the protocol must be connected
        self._proto = protocol
        self._max = max_message
        self._next_id = 1
        self._streams: dict[int, asyncio.Future[bytes] | ClientStream] = {}
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._lost_fut: asyncio.Future[None] = self._loop.create_future()

    @classmethod
    async def connect(cls, address: str, *, timeout: float | None = None,  # noqa: ASYNC109 (contract: seconds, also sent on the wire)
                      max_message: int = DEFAULT_MAX_MESSAGE) -> Client:
        """Connect to ``address``: ``"unix:///abs/path"``, ``"/abs/path"``, ``"unix://@name"``/``"@name"``.

        ``timeout`` (seconds) bounds the connect; raises ``Closed`` (an
        ``errors.Unavailable``) when nothing listens there or the timeout passes,
        ``errors.InvalidArgument`` for an unsupported address.  ``max_message``
        (bytes) caps frames in both directions.
        """
        sockaddr = socket_address(address)
        loop = asyncio.get_running_loop()
        sock = unix_socket()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, sockaddr)
        except TimeoutError:
            sock.close()
            raise Closed(f"ttrpc: connect {address}: timed out") from None
        except OSError as e:
            sock.close()
            raise Closed(f"ttrpc: connect {address}: {e.strerror or e}") from e
        except BaseException:
            sock.close()
            raise
        client: Client | None = None

        def factory() -> _ClientProtocol:
            nonlocal client
            proto = _ClientProtocol(None, max_message)  # type: ignore[arg-type]
            client = cls(proto, max_message=max_message)
            proto.client = client
            return proto

        await loop.create_unix_connection(factory, sock=sock)
        assert client is not None
        return client

    # -- state ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close`` was called or the connection was lost."""
        return self._closed

    async def wait_closed(self) -> None:
        """Return when the connection is gone (peer went away, or ``close``)."""
        await asyncio.shield(self._lost_fut)

    async def close(self) -> None:
        """Close the connection; pending calls and streams fail with ``Closed``. Idempotent."""
        if not self._closed:
            self._closed = True
            self._fail_all()
            self._proto.close()
        await self.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _lost(self) -> None:
        self._closed = True
        self._fail_all()
        if not self._lost_fut.done():
            self._lost_fut.set_result(None)

    def _fail_all(self) -> None:
        streams, self._streams = self._streams, {}
        for waiter in streams.values():
            if type(waiter) is asyncio.Future:
                if not waiter.done():
                    waiter.set_exception(Closed())
            else:
                waiter.fail(Closed())  # type: ignore[union-attr]

    def _new_stream_id(self) -> int:
        if self._closed:
            raise Closed()
        sid = self._next_id
        if sid > _MAX_STREAM_ID:
            raise Closed("ttrpc: stream ids exhausted on this connection")
        self._next_id = sid + 2
        return sid

    def _request(self, service: str, method: str, payload: bytes | None, timeout: float | None,
                 metadata: Metadata | None) -> bytes:
        """The encoded Request; DeadlineExceeded for a spent ``timeout``, OversizedMessage
        past ``max_message``."""
        timeout_nano = 0
        if timeout is not None:
            if timeout <= 0:
                raise errors.DeadlineExceeded(f"ttrpc: {service}/{method}: deadline exceeded")
            timeout_nano = int(timeout * 1e9) or 1
        data = encode_request(service, method, payload, timeout_nano, metadata)
        if len(data) > self._max:
            raise OversizedMessage(
                f"message length {len(data)} exceeds maximum message size of {self._max}")
        return data

    # -- unary ---------------------------------------------------------------

    async def call(self, service: str, method: str, request: betterproto2.Message,
                   response_type: type[M], *, timeout: float | None = None,  # noqa: ASYNC109 (contract: seconds, also sent on the wire)
                   metadata: Metadata | None = None) -> M:
        """Call ``service/method`` with ``request``; return the decoded ``response_type``.

        ``timeout`` (seconds) is sent as the request's ``timeout_nano`` (the
        server cancels the handler past it) and also bounds the wait here.
        ``metadata`` maps keys (lower-cased on the wire) to one value or a list;
        the namespace goes under ``METADATA_NAMESPACE``.
        Raises the ``aiocontainerd.errors`` class of the server's status,
        ``errors.DeadlineExceeded`` on timeout, ``OversizedMessage`` (nothing is
        sent) when the request exceeds ``max_message``, ``Closed`` when the
        connection is or gets closed.
        """
        data = self._request(service, method, bytes(request), timeout, metadata)
        sid = self._new_stream_id()
        fut: asyncio.Future[bytes] = self._loop.create_future()
        self._streams[sid] = fut
        timer = None
        try:
            self._proto.send(sid, REQUEST, 0, data)
            if timeout is not None:
                timer = self._loop.call_later(timeout, _expire, fut, service, method)
            if self._proto._paused:
                await self._proto.drain()
            payload = await fut
        finally:
            self._streams.pop(sid, None)
            if timer is not None:
                timer.cancel()
        code, message, body = decode_response(payload)
        if code:
            raise error_from_status(code, message)
        return response_type.parse(body)

    # -- streaming -------------------------------------------------------------

    async def stream(self, service: str, method: str, request: betterproto2.Message | None,
                     response_type: type[M], *, client_streaming: bool = False,
                     server_streaming: bool = True, timeout: float | None = None,  # noqa: ASYNC109 (contract: seconds, also sent on the wire)
                     metadata: Metadata | None = None) -> ClientStream[M]:
        """Open a streaming call (PROTOCOL.md, "Streaming"); returns a ``ClientStream``.

        ``request`` is the first message (sent inside the Request; ``None`` sends
        none, which only makes sense with ``client_streaming``).  With
        ``client_streaming`` the Request carries ``remote open`` and more messages
        follow with ``ClientStream.send`` until ``close_send``; otherwise it
        carries ``remote closed``.  ``server_streaming`` says whether the server
        answers with Data frames (read them with ``recv`` / ``async for``) or
        with one Response.  Raises like ``call``.
        """
        data = self._request(service, method, bytes(request) if request is not None else None,
                             timeout, metadata)
        sid = self._new_stream_id()
        st: ClientStream[M] = ClientStream(self, sid, response_type, client_streaming, server_streaming)
        self._streams[sid] = st
        try:
            self._proto.send(sid, REQUEST, FLAG_REMOTE_OPEN if client_streaming else FLAG_REMOTE_CLOSED, data)
            await self._proto.drain()
        except BaseException:
            self._streams.pop(sid, None)
            raise
        if timeout is not None:
            st._timer = self._loop.call_later(
                timeout, st.fail, errors.DeadlineExceeded(f"ttrpc: {service}/{method}: deadline exceeded"))
        return st


def _expire(fut: asyncio.Future[bytes], service: str, method: str) -> None:
    if not fut.done():
        fut.set_exception(errors.DeadlineExceeded(f"ttrpc: {service}/{method}: deadline exceeded"))


_END = object()


class ClientStream(Generic[M]):
    """One streaming call, from ``Client.stream``.

    ``send(msg)`` / ``close_send()`` for client-streaming calls; ``recv()`` returns
    the next message, or ``None`` once the server closed the stream; also an
    async iterator.  Errors from the server's final status are raised by
    ``recv``.  ``close()`` forgets the stream locally (the protocol has no reset).
    """

    def __init__(self, client: Client, sid: int, response_type: type[M],
                 client_streaming: bool, server_streaming: bool) -> None:
        self._client = client
        self.stream_id = sid
        self._type = response_type
        self.client_streaming = client_streaming
        self.server_streaming = server_streaming
        self._queue: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._local_closed = not client_streaming
        self._remote_closed = False
        self._timer: asyncio.TimerHandle | None = None

    # fed by the protocol
    def feed(self, mtype: int, flags: int, payload: bytes) -> None:
        self._queue.append((mtype, flags, payload))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._finish()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _finish(self) -> None:
        self._client._streams.pop(self.stream_id, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def send(self, message: betterproto2.Message) -> None:
        """Send one message (a Data frame); only for client-streaming calls.

        Raises ``ProtocolError`` when the call is not client-streaming or
        ``close_send`` was called, ``OversizedMessage``, ``Closed``.
        """
        if not self.client_streaming:
            raise ProtocolError("ttrpc: cannot send data from a non-streaming client")
        if self._local_closed:
            raise ProtocolError("ttrpc: stream closed for sending")
        if self._error is not None:
            raise self._error
        self._client._proto.send(self.stream_id, DATA, 0, bytes(message))
        await self._client._proto.drain()

    async def close_send(self) -> None:
        """Tell the server no more messages follow (Data frame, ``remote closed`` + ``no data``)."""
        if self._local_closed:
            return
        self._local_closed = True
        if self._error is None and not self._remote_closed:
            self._client._proto.send(self.stream_id, DATA, FLAG_REMOTE_CLOSED | FLAG_NO_DATA, b"")
            await self._client._proto.drain()

    async def recv(self) -> M | None:
        """The next message from the server, or ``None`` when the stream has ended.

        Raises the error class of a non-OK final status, ``errors.DeadlineExceeded``
        past the timeout, ``Closed`` if the connection goes, ``ProtocolError``.
        """
        while True:
            if self._queue:
                mtype, flags, payload = self._queue.popleft()
                return self._handle(mtype, flags, payload)
            if self._remote_closed:
                return None
            if self._error is not None:
                raise self._error
            self._waiter = self._client._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _handle(self, mtype: int, flags: int, payload: bytes) -> M | None:
        if mtype == RESPONSE:
            self._remote_closed = True
            self._finish()
            code, message, body = decode_response(payload)
            if code:
                raise error_from_status(code, message)
            return self._type.parse(body)
        if mtype == DATA:
            if not self.server_streaming:
                self._remote_closed = True
                self._finish()
                raise ProtocolError("ttrpc: received data from a non-streaming server")
            if flags & FLAG_REMOTE_CLOSED:
                self._remote_closed = True
                self._finish()
                if flags & FLAG_NO_DATA:
                    return None
            elif flags & FLAG_NO_DATA:
                return self._type()
            return self._type.parse(payload)
        self._remote_closed = True
        self._finish()
        raise ProtocolError(f"ttrpc: unexpected message type {mtype}")

    def __aiter__(self) -> AsyncIterator[M]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[M]:
        while (msg := await self.recv()) is not None:
            yield msg

    def close(self) -> None:
        """Forget the stream: later frames for it are dropped."""
        self._remote_closed = True
        self._local_closed = True
        self._finish()
