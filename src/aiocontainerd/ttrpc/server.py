"""ttrpc server: services of handlers served on unix sockets.

Each Request frame (PROTOCOL.md, "Request") starts a task running the handler
of ``service/method``; its result goes back in a Response frame on the same
stream id, so calls on one connection run concurrently.  The server enforces
odd, increasing client stream ids and the maximum message size, and honours
the request's ``timeout_nano`` (the handler is cancelled, DEADLINE_EXCEEDED).

Status mapping (``google.rpc.Status`` in the Response):
``errors.ContainerdError`` -> its ``code`` and message; any other exception ->
UNKNOWN with ``str(e)``; unknown service or method -> UNIMPLEMENTED; an
undecodable request payload -> INTERNAL; timeout -> DEADLINE_EXCEEDED; an
oversized incoming frame -> RESOURCE_EXHAUSTED (the frame is skipped).

Handlers read the call's metadata with ``metadata()`` / ``namespace()``
(a context variable set for each call).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import socket
import stat
import struct
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import betterproto2

from aiocontainerd import errors

from ._conn import FrameProtocol
from ._wire import (
    DATA,
    DEFAULT_MAX_MESSAGE,
    FLAG_NO_DATA,
    FLAG_REMOTE_CLOSED,
    METADATA_NAMESPACE,
    REQUEST,
    RESPONSE,
    Closed,
    OversizedMessage,
    decode_request,
    encode_response,
    is_abstract,
    socket_address,
    status_of,
    unix_socket,
)

log = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def same_user(sock: socket.socket) -> bool:
    """Whether the peer of the connected unix socket ``sock`` runs as our effective uid and
    gid (``SO_PEERCRED``, ttrpc's ``UnixSocketRequireSameUser``); a refusal is logged."""
    _pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    if uid == os.geteuid() and gid == os.getegid():
        return True
    log.warning("refused a connection from uid %d gid %d", uid, gid)
    return False

Handler = Callable[[betterproto2.Message], Awaitable[betterproto2.Message]]

_EMPTY_MD: Mapping[str, list[str]] = types.MappingProxyType({})
_metadata: contextvars.ContextVar[Mapping[str, list[str]]] = contextvars.ContextVar(
    "ttrpc_metadata", default=_EMPTY_MD)


def metadata() -> Mapping[str, list[str]]:
    """The metadata of the call being handled (keys lower-cased; empty outside a call)."""
    return _metadata.get()


def namespace() -> str:
    """The namespace of the call being handled (``METADATA_NAMESPACE``), or ``""``."""
    values = _metadata.get().get(METADATA_NAMESPACE)
    return values[0] if values else ""


class ServerStream:
    """The server side of a streaming call, given to a ``StreamMethod`` handler.

    ``recv()`` returns the next request message or ``None`` once the client
    closed its side (for a non-client-streaming method: the one request, then
    ``None``); ``send(msg)`` sends a Data frame (server-streaming methods only).
    Also an async iterator over the received messages.
    """

    def __init__(self, conn: _ServerConn, sid: int, method: StreamMethod) -> None:
        self._conn = conn
        self.stream_id = sid
        self._method = method
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.remote_closed = False

    def _feed(self, payload: bytes) -> None:
        if not self.remote_closed:
            self._queue.put_nowait(payload)

    def _close_remote(self) -> None:
        if not self.remote_closed:
            self.remote_closed = True
            self._queue.put_nowait(None)

    async def recv(self) -> betterproto2.Message | None:
        """The next message from the client (decoded as the method's request type), or None."""
        payload = await self._queue.get()
        if payload is None:
            self._queue.put_nowait(None)  # stays at end of stream
            return None
        try:
            return self._method.request_type.parse(payload)
        except Exception as e:
            raise errors.InvalidArgument(f"ttrpc: error unmarshalling payload: {e}") from e

    async def send(self, message: betterproto2.Message) -> None:
        """Send one message to the client; raises ``Closed``, ``OversizedMessage``."""
        if not self._method.server_streaming:
            raise errors.FailedPrecondition("ttrpc: send on a non-server-streaming method")
        self._conn.send(self.stream_id, DATA, 0, bytes(message))
        await self._conn.drain()

    def __aiter__(self) -> ServerStream:
        return self

    async def __anext__(self) -> betterproto2.Message:
        msg = await self.recv()
        if msg is None:
            raise StopAsyncIteration
        return msg


StreamHandler = Callable[[ServerStream], Awaitable[betterproto2.Message | None]]


@dataclass(frozen=True)
class StreamMethod:
    """A streaming method for ``Server.register`` (in place of a ``(type, handler)`` tuple).

    ``handler(stream)`` gets a ``ServerStream`` and returns the final message
    or ``None``: for a server-streaming method the stream ends with a Data
    frame carrying ``remote closed`` (and ``no data`` when ``None``); otherwise
    it is sent as the Response.
    """

    request_type: type[betterproto2.Message]
    handler: StreamHandler
    client_streaming: bool = False
    server_streaming: bool = False


class _ServerConn(FrameProtocol):
    def __init__(self, server: Server) -> None:
        super().__init__(server.max_message)
        self.server = server
        self.last_sid = 0
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.streams: dict[int, ServerStream] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.server.require_same_user and not same_user(transport.get_extra_info("socket")):
            transport.abort()
            return
        self.server._conns.add(self)

    def lost(self, exc: Exception | None) -> None:
        self.server._conns.discard(self)
        for task in list(self.tasks.values()):
            task.cancel()

    def _status(self, sid: int, code: int, message: str) -> None:
        try:
            self.send(sid, RESPONSE, 0, encode_response(code, message))
        except Closed:
            pass

    def oversized(self, sid: int, mtype: int, flags: int, length: int) -> None:
        self._status(sid, errors.Code.RESOURCE_EXHAUSTED,
                     f"message length {length} exceed maximum message size of {self.max_message}")
        st = self.streams.get(sid)
        if st is not None:
            task = self.tasks.get(sid)
            if task is not None:
                task.cancel()

    def frame_received(self, sid: int, mtype: int, flags: int, payload: bytes) -> None:
        if not sid & 1:
            self._status(sid, errors.Code.INVALID_ARGUMENT,
                         "StreamID must be odd for client initiated streams")
            return
        if mtype == REQUEST:
            self._request(sid, flags, payload)
        elif mtype == DATA:
            st = self.streams.get(sid)
            if st is None or st.remote_closed:
                self._status(sid, errors.Code.INVALID_ARGUMENT, "StreamID is no longer active")
                return
            if not flags & FLAG_NO_DATA:
                st._feed(payload)
            if flags & FLAG_REMOTE_CLOSED:
                st._close_remote()
        # other types: ignored for forward compatibility (PROTOCOL.md leaves room)

    def _request(self, sid: int, flags: int, payload: bytes) -> None:
        if sid <= self.last_sid:
            self._status(sid, errors.Code.INVALID_ARGUMENT, "StreamID cannot be re-used and must increment")
            return
        self.last_sid = sid
        try:
            req = decode_request(payload)
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            self._status(sid, errors.Code.INVALID_ARGUMENT, f"unmarshal request error: {e}")
            return
        service = self.server._services.get(req.service)
        if service is None:
            self._status(sid, errors.Code.UNIMPLEMENTED, f"service {req.service}")
            return
        method = service.get(req.method)
        if method is None:
            self._status(sid, errors.Code.UNIMPLEMENTED, f"method {req.method}")
            return
        loop = self.server._loop
        if type(method) is tuple:
            coro = self._unary(sid, method[0], method[1], req.payload or b"", req.timeout_nano, req.metadata)
        else:
            st = ServerStream(self, sid, method)
            if req.payload is not None or not method.client_streaming:
                st._feed(req.payload or b"")
            if flags & FLAG_REMOTE_CLOSED or not method.client_streaming:
                st._close_remote()
            self.streams[sid] = st
            coro = self._stream(st, method, req.timeout_nano, req.metadata)
        task = loop.create_task(coro)
        self.tasks[sid] = task
        task.add_done_callback(lambda _t, sid=sid: self._done(sid))

    def _done(self, sid: int) -> None:
        self.tasks.pop(sid, None)
        self.streams.pop(sid, None)
        server = self.server
        if server._idle_waiter is not None and not server._idle_waiter.done():
            server._idle_waiter.set_result(None)

    async def _run(self, call: Awaitable[Any], timeout_nano: int) -> Any:
        if timeout_nano <= 0:
            return await call
        try:
            async with asyncio.timeout(timeout_nano / 1e9) as cm:
                return await call
        except TimeoutError:
            if cm.expired():
                raise errors.DeadlineExceeded("context deadline exceeded") from None
            raise

    async def _unary(self, sid: int, request_type: type[betterproto2.Message], handler: Handler,
                     payload: bytes, timeout_nano: int, md: dict[str, list[str]]) -> None:
        if md:
            _metadata.set(md)
        try:
            try:
                request = request_type.parse(payload)
            except Exception as e:
                raise errors.Internal(f"ttrpc: error unmarshalling payload: {e}") from e
            result = await self._run(handler(request), timeout_nano)
            data = encode_response(0, "", bytes(result) if result is not None else b"")
            if len(data) > self.max_message:
                raise OversizedMessage(
                    f"message length {len(data)} exceeds maximum message size of {self.max_message}")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            data = self._error_response(e)
        try:
            self.send(sid, RESPONSE, 0, data)
            if self._paused:
                await self.drain()
        except Closed:
            pass

    def _error_response(self, e: Exception) -> bytes:
        if not isinstance(e, errors.ContainerdError):
            log.exception("ttrpc: handler failed", exc_info=e)
        code, message = status_of(e)
        return encode_response(code, message)

    async def _stream(self, st: ServerStream, method: StreamMethod, timeout_nano: int,
                      md: dict[str, list[str]]) -> None:
        if md:
            _metadata.set(md)
        sid = st.stream_id
        try:
            result = await self._run(method.handler(st), timeout_nano)
            body = bytes(result) if result is not None else None
            if method.server_streaming:
                flags = FLAG_REMOTE_CLOSED | (FLAG_NO_DATA if body is None else 0)
                frame = (DATA, flags, body or b"")
            else:
                frame = (RESPONSE, 0, encode_response(0, "", body or b""))
            if len(frame[2]) > self.max_message:
                raise OversizedMessage(
                    f"message length {len(frame[2])} exceeds maximum message size of {self.max_message}")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            frame = (RESPONSE, 0, self._error_response(e))
        try:
            self.send(sid, *frame)
            if self._paused:
                await self.drain()
        except Closed:
            pass


class Server:
    """A ttrpc server: register services, then ``start`` on a unix socket.

    ``max_message`` (bytes) caps frames in both directions (default 4 MiB).
    ``require_same_user`` refuses (closes) connections whose peer credentials
    (``SO_PEERCRED``) are not our effective uid and gid, as Go shims do with
    ttrpc's ``UnixSocketRequireSameUser``.  One server may listen on one
    socket; each accepted connection is served until the peer goes away or
    the server is closed.
    """

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE, require_same_user: bool = False) -> None:
        self.max_message = max_message
        self.require_same_user = require_same_user
        self._services: dict[str, dict[str, tuple[type[betterproto2.Message], Handler] | StreamMethod]] = {}
        self._conns: set[_ServerConn] = set()
        self._server: asyncio.base_events.Server | None = None
        self._path: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # type: ignore[assignment]
        self._idle_waiter: asyncio.Future[None] | None = None
        self.address: str | None = None

    def register(self, service: str,
                 methods: Mapping[str, tuple[type[betterproto2.Message], Handler] | StreamMethod]) -> None:
        """Serve ``service`` (e.g. ``"containerd.task.v2.Task"``).

        ``methods`` maps method names to ``(request_type, handler)`` for unary
        methods (``await handler(request) -> response``) or to a ``StreamMethod``.
        Registering the same service again adds/replaces its methods.
        """
        table = self._services.setdefault(service, {})
        for name, m in methods.items():
            if not isinstance(m, StreamMethod):
                request_type, handler = m
                m = (request_type, handler)
            table[name] = m

    async def start(self, address: str | None = None, *, sock: Any = None) -> None:
        """Listen on ``address`` (``"unix:///path"``, ``"/path"``, ``"@abstract"``) or on ``sock``.

        A socket file left at the path by a dead server is replaced; one a live
        server answers on raises ``errors.AlreadyExists``.  The socket file we
        create is removed again by ``close``/``shutdown``; a passed ``sock``
        (bound and listening) is served as is and its path left alone.
        """
        if self._server is not None:
            raise errors.FailedPrecondition("ttrpc: server already started")
        self._loop = asyncio.get_running_loop()
        if sock is None:
            if address is None:
                raise errors.InvalidArgument("ttrpc: start needs an address or a socket")
            sockaddr = socket_address(address)
            sock = await _listen(sockaddr)
            if not is_abstract(sockaddr):
                self._path = sockaddr
            self.address = address
        else:
            sock.setblocking(False)
            name = sock.getsockname()
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            self.address = ("@" + name[1:]) if name.startswith("\0") else name
        self._server = await self._loop.create_unix_server(lambda: _ServerConn(self), sock=sock)

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            self._path = None

    def _inflight(self) -> list[asyncio.Task[None]]:
        me = asyncio.current_task()
        return [t for c in self._conns for t in c.tasks.values() if t is not me]

    async def close(self) -> None:
        """Stop accepting, cancel in-flight calls (no response sent), close all connections."""
        self._stop_listening()
        tasks = self._inflight()
        for t in tasks:
            t.cancel()
        for c in list(self._conns):
            c.close()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._conns.clear()

    async def shutdown(self, timeout: float) -> None:  # noqa: ASYNC109 (contract)
        """Stop accepting; let in-flight calls finish for up to ``timeout`` seconds, then ``close``.

        Connections stay open meanwhile (responses still go out; new requests on
        them are still served).  A handler calling ``shutdown`` is not waited for.
        """
        self._stop_listening()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (pending := self._inflight()) and (left := deadline - loop.time()) > 0:
            await asyncio.wait(pending, timeout=left)
        await self.close()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _listen(sockaddr: str) -> Any:
    sock = unix_socket()
    try:
        if not is_abstract(sockaddr):
            try:
                st = os.lstat(sockaddr)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISSOCK(st.st_mode):
                    raise errors.AlreadyExists(f"ttrpc: {sockaddr} exists and is not a socket")
                probe = unix_socket()
                try:
                    await asyncio.get_running_loop().sock_connect(probe, sockaddr)
                except OSError:
                    os.unlink(sockaddr)  # stale socket of a dead server
                else:
                    raise errors.AlreadyExists(f"ttrpc: {sockaddr}: a server is listening there")
                finally:
                    probe.close()
        sock.bind(sockaddr)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise errors.Unavailable(f"ttrpc: listen on {sockaddr!r}: {e.strerror or e}") from e
    except BaseException:
        sock.close()
        raise
    return sock
