"""The HTTP side of the CRI streaming server, on aiohttp: imported when the first client connects.

:class:`~.server.StreamingServer` listens from the start (its URLs must work at once) but
keeps aiohttp — several MiB of modules — out of the daemon until a streaming URL is
actually used; then :meth:`StreamingServer._connection` builds one :class:`Handlers` and
every connection gets an aiohttp ``RequestHandler`` from its low-level :meth:`Handlers.protocol`
server. The routes are what kubelet serves: ``GET``/``POST`` ``/{exec,attach,portforward}/<token>``
(any other path is 404, any other method 405). The protocols are described in
:mod:`.server`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestHandler

from aiocontainerd.api.runtime import v1 as runtime_v1
from aiocontainerd.tasks import either, unless

from . import spdy
from .runtime import ChannelWriter, PipeReader, TerminalSize, decode_resize_events
from .server import (
    ERROR,
    PORTFORWARD_PROTOCOLS,
    REMOTECOMMAND_PROTOCOLS,
    RESIZE,
    STDERR,
    STDIN,
    STDOUT,
    STREAM_CLOSE,
    V1,
    V3,
    V4,
    V5,
    WS_BASE64_V4,
    WS_PORTFORWARD,
    WS_REMOTECOMMAND,
    _Options,
)

if TYPE_CHECKING:
    from .server import StreamingServer

log = logging.getLogger(__name__.rpartition(".")[0] + ".server")
KINDS = ("exec", "attach", "portforward")
METHODS = ("GET", "POST")
SHUTDOWN_TIMEOUT = 60.0  # aiohttp AppRunner's default, what this server had before


def _route(request: web.BaseRequest) -> tuple[str, str] | None:
    """``(kind, token)`` of ``/<kind>/<token>``, or None: the routes kubelet's server has.

    A route with a method other than GET/POST is 405, as aiohttp's router answers.
    """
    parts = request.path.split("/")
    if len(parts) != 3 or parts[0] or parts[1] not in KINDS or not parts[2]:
        return None
    if request.method not in METHODS:
        raise web.HTTPMethodNotAllowed(request.method, METHODS)
    return parts[1], parts[2]


def _status_json(exit_code: int | None = None, error: BaseException | None = None, *,
                 cmd: list[str] | None = None) -> bytes:
    """metav1.Status as kubelet writes it on the v4 error stream (remotecommand/exec.go)."""
    if error is not None:
        status = {"metadata": {}, "status": "Failure", "message": f"Internal error occurred: {error}",
                  "reason": "InternalError", "code": 500}
    elif exit_code:
        status = {"metadata": {}, "status": "Failure",
                  "message": f"command terminated with non-zero exit code: error executing command "
                             f"{cmd or []}, exit code {exit_code}",
                  "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}
    else:
        status = {"metadata": {}, "status": "Success"}
    return json.dumps(status, separators=(",", ":")).encode()


def _status_text(exit_code: int | None = None, error: BaseException | None = None, *,
                 cmd: list[str] | None = None) -> bytes:
    """Pre-v4 error stream: the error's text on failure, nothing on success."""
    if error is not None:
        return f"Internal error occurred: {error}".encode()
    if exit_code:
        return (f"command terminated with non-zero exit code: error executing command {cmd or []}, "
                f"exit code {exit_code}").encode()
    return b""


def _is_upgrade(request: web.BaseRequest) -> bool:
    return any("upgrade" in v.lower() for v in request.headers.getall("Connection", []))


def _is_websocket(request: web.BaseRequest) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket" and _is_upgrade(request)


def _header_list(request: web.BaseRequest, name: str) -> list[str]:
    out = []
    for value in request.headers.getall(name, []):
        out += [p.strip() for p in value.split(",") if p.strip()]
    return out


async def _aclose(gen: AsyncIterator | None) -> None:
    if gen is not None:
        with contextlib.suppress(Exception):
            await gen.aclose()  # type: ignore[attr-defined]


async def _until_gone(work: asyncio.Future[Any], gone: Awaitable[Any]) -> None:
    """Wait until ``work`` ends or ``gone`` does (the client went away), whichever is first.
    ``gone`` is then cancelled, and so is ``work`` if it has not ended (and awaited, so its
    clean-up has run): afterwards ``work.cancelled()`` says it was cut short."""
    try:
        await either(work, gone)
    finally:
        if not work.done():   # cut short: let its clean-up run
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work


# --- raw upgrade plumbing for SPDY -----------------------------------------------------------


class _Feeder:
    """aiohttp payload-parser stand-in: routes the upgraded connection's bytes to a StreamReader."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()


class _TransportWriter:
    """StreamWriter-like view of the hijacked aiohttp transport."""

    def __init__(self, request: web.BaseRequest) -> None:
        self._transport = request.transport
        self._protocol = request.protocol

    def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("connection closed")
        self._transport.write(data)

    async def drain(self) -> None:
        await self._protocol._drain_helper()

    def can_write_eof(self) -> bool:
        return self._transport is not None and self._transport.can_write_eof()

    def write_eof(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write_eof()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _StreamWriter(ChannelWriter):
    """ChannelWriter over a SPDY stream: FIN on close."""

    def __init__(self, stream: spdy.Stream) -> None:
        super().__init__(stream.write, stream.close)
        self.stream = stream


# --- the handlers ----------------------------------------------------------------------------


class Handlers:
    """One server's HTTP handlers; :meth:`protocol` makes the protocol of each new connection."""

    def __init__(self, server: StreamingServer) -> None:
        self.server = server
        self._web = web.Server(self._handle, loop=asyncio.get_running_loop(), access_log=None)

    def protocol(self) -> RequestHandler:
        """aiohttp's protocol for one accepted connection."""
        return self._web()

    async def shutdown(self) -> None:
        """Close idle keep-alive connections, let running handlers end (as AppRunner.cleanup)."""
        await asyncio.sleep(0)
        self._web.pre_shutdown()
        await self._web.shutdown(SHUTDOWN_TIMEOUT)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = _route(request)
        if route is None:
            raise web.HTTPNotFound()
        kind, token = route
        cached = self.server._cache.consume(token)
        expected = {"exec": runtime_v1.ExecRequest, "attach": runtime_v1.AttachRequest,
                    "portforward": runtime_v1.PortForwardRequest}[kind]
        if not isinstance(cached, expected):
            raise web.HTTPNotFound(text="404 page not found\n")
        task = asyncio.current_task()
        assert task is not None
        self.server._conns.add(task)
        try:
            if kind == "portforward":
                if _is_websocket(request):
                    return await self._portforward_ws(request, cached)
                return await self._portforward_spdy(request, cached)
            opts = _Options(cached.stdin, cached.stdout, cached.stderr, cached.tty)
            if kind == "exec":
                cmd = list(cached.cmd)

                async def call(stdin, stdout, stderr, resize) -> int:
                    return await self.server.runtime.exec(cached.container_id, cmd, stdin=stdin,
                                                          stdout=stdout, stderr=stderr, tty=opts.tty,
                                                          resize=resize)
            else:
                cmd = None

                async def call(stdin, stdout, stderr, resize) -> int:
                    await self.server.runtime.attach(cached.container_id, stdin=stdin, stdout=stdout,
                                                     stderr=stderr, tty=opts.tty, resize=resize)
                    return 0
            if _is_websocket(request):
                return await self._remotecommand_ws(request, opts, call, cmd)
            return await self._remotecommand_spdy(request, opts, call, cmd)
        finally:
            self.server._conns.discard(task)

    # SPDY ------------------------------------------------------------------------------------
    async def _upgrade_spdy(self, request: web.Request, protocols: tuple[str, ...],
                            on_stream: Callable[[spdy.Stream], bool],
                            ) -> tuple[str, spdy.Session, web.StreamResponse]:
        """httpstream.Handshake + spdy.NewResponseUpgrader: 101 and a server Session."""
        if not _is_upgrade(request) or "spdy/3.1" not in request.headers.get("Upgrade", "").lower():
            raise web.HTTPBadRequest(text="unable to upgrade: missing upgrade headers in request")
        offered = _header_list(request, "X-Stream-Protocol-Version")
        if not offered:
            raise web.HTTPBadRequest(text="unable to upgrade: header X-Stream-Protocol-Version is missing")
        chosen = next((p for p in offered if p in protocols), None)
        if chosen is None:
            raise web.HTTPForbidden(
                text=f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
                     f"server accepts {list(protocols)}",
                headers=[("X-Accepted-Stream-Protocol-Versions", p) for p in protocols])
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("connection closed")
        reader = asyncio.StreamReader(limit=2 ** 16)
        reader.set_transport(transport)  # pauses the socket when frames are not consumed
        request.protocol.set_parser(_Feeder(reader))  # type: ignore[arg-type]
        resp = web.StreamResponse(status=101, reason="Switching Protocols",
                                  headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                                           "X-Stream-Protocol-Version": chosen})
        await resp.prepare(request)
        session = spdy.Session(reader, _TransportWriter(request), client=False, on_stream=on_stream,
                               idle_timeout=self.server.idle_timeout)
        session.start()
        return chosen, session, resp

    async def _remotecommand_spdy(self, request: web.Request, opts: _Options, call,
                                  cmd) -> web.StreamResponse:
        pending: asyncio.Queue[spdy.Stream] = asyncio.Queue()

        def on_stream(stream: spdy.Stream) -> bool:
            pending.put_nowait(stream)
            return True

        protocol, session, resp = await self._upgrade_spdy(request, REMOTECOMMAND_PROTOCOLS, on_stream)
        try:
            resizable = opts.tty and protocol in (V3, V4, V5)
            expected = 1 + opts.stdin + opts.stdout + opts.stderr + resizable
            streams: dict[str, spdy.Stream] = {}
            try:
                async with asyncio.timeout(self.server.stream_creation_timeout):
                    while len(streams) < expected:
                        got, stream = await unless(pending.get(), session.wait_closed())
                        if not got:
                            return resp  # client went away before creating its streams
                        kind = stream.stream_type
                        if kind not in ("error", "stdin", "stdout", "stderr", "resize") or kind in streams:
                            log.debug("unexpected stream type %r", kind)
                            continue
                        if kind == "resize" and not resizable:
                            continue
                        await stream.reply_sent.wait()
                        streams[kind] = stream
            except TimeoutError:
                log.warning("timed out waiting for client to create streams")
                return resp
            if "error" not in streams:
                return resp
            if protocol == V1 and "stdin" in streams:
                await streams["stdin"].close()  # what 1.0 kubelets did (v1ProtocolHandler)
            write_status = _status_json if protocol in (V4, V5) else _status_text
            stdout = _StreamWriter(streams["stdout"]) if "stdout" in streams else None
            stderr = _StreamWriter(streams["stderr"]) if "stderr" in streams else None
            resize = decode_resize_events(streams["resize"]) if "resize" in streams else None
            await self._run_remotecommand(
                session.wait_closed, call, cmd, streams.get("stdin"), stdout, stderr, resize,
                lambda data: streams["error"].write(data), write_status)
            await streams["error"].close()
            return resp
        finally:
            await session.close(linger=self.server.linger)
            resp.force_close()

    async def _run_remotecommand(self, gone: Callable[[], Awaitable[Any]], call, cmd, stdin, stdout, stderr,
                                 resize: AsyncIterator[TerminalSize] | None,
                                 send_error: Callable[[bytes], Awaitable[None]], write_status) -> None:
        """Run the runtime call until it returns or the client is gone; report its status."""
        work = asyncio.ensure_future(call(stdin, stdout, stderr, resize))
        try:
            await _until_gone(work, gone())
        finally:
            if work.cancelled() or not work.done():   # cut short
                for w in (stdout, stderr):
                    if w is not None:
                        w.abort()
                await _aclose(resize)
        if work.cancelled():
            return
        await _aclose(resize)
        error = work.exception()
        code = None if error is not None else work.result()
        if error is not None:
            log.warning("streaming %s failed: %s", "exec" if cmd is not None else "attach", error)
        for w in (stdout, stderr):
            if w is not None:
                with contextlib.suppress(Exception):
                    await w.aclose()
        payload = write_status(code, error, cmd=cmd)
        if payload:
            with contextlib.suppress(ConnectionError, OSError):
                await send_error(payload)

    async def _portforward_spdy(self, request: web.Request,
                                req: runtime_v1.PortForwardRequest) -> web.StreamResponse:
        pairs: dict[str, dict[str, spdy.Stream]] = {}
        tasks: set[asyncio.Task] = set()

        def on_stream(stream: spdy.Stream) -> bool:
            # portforward/httpstream.go httpStreamReceived: port and streamType are required
            port = stream.headers.get_first("port")
            if not port.isdigit() or not 0 < int(port) <= 0xFFFF:
                return False
            if stream.stream_type not in ("data", "error"):
                return False
            request_id = stream.headers.get_first("requestid")
            if not request_id:  # old clients: derive the pair from consecutive stream ids
                request_id = str(stream.id if stream.stream_type == "error" else stream.id - 2)
            pair = pairs.setdefault(request_id, {})
            if stream.stream_type in pair:
                msg = (f"error processing stream for request {request_id}: "
                       f"{stream.stream_type} stream already assigned")
                if "error" in pair:
                    tasks.add(asyncio.ensure_future(pair["error"].write(msg.encode())))
                return False
            pair[stream.stream_type] = stream
            if len(pair) == 1:
                tasks.add(asyncio.ensure_future(expire(request_id, pair)))
            else:
                del pairs[request_id]
                t = asyncio.ensure_future(forward(request_id, pair["data"], pair["error"]))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            return True

        async def expire(request_id: str, pair: dict[str, spdy.Stream]) -> None:
            await asyncio.sleep(self.server.stream_creation_timeout)
            if pairs.get(request_id) is pair:
                del pairs[request_id]
                if "error" in pair:
                    with contextlib.suppress(ConnectionError, OSError):
                        msg = f"timed out waiting for streams of request {request_id}"
                        await pair["error"].write(msg.encode())
                for s in pair.values():
                    await s.reset()

        async def forward(request_id: str, data: spdy.Stream, err: spdy.Stream) -> None:
            port = int(data.headers.get_first("port"))
            writer = _StreamWriter(data)
            try:
                await data.reply_sent.wait()
                await err.reply_sent.wait()
                await self.server.runtime.port_forward(req.pod_sandbox_id, port, (data, writer))
            except asyncio.CancelledError:
                writer.abort()
                raise
            except Exception as e:
                log.warning("port forward %s:%d: %s", req.pod_sandbox_id, port, e)
                with contextlib.suppress(Exception):
                    await writer.aclose()
                with contextlib.suppress(ConnectionError, OSError):
                    msg = f"error forwarding port {port} to pod {req.pod_sandbox_id}, uid : {e}"
                    await err.write(msg.encode())
            else:
                with contextlib.suppress(Exception):
                    await writer.aclose()
            await err.close()
            await data.close()

        _, session, resp = await self._upgrade_spdy(request, PORTFORWARD_PROTOCOLS, on_stream)
        try:
            await session.wait_closed()
            return resp
        finally:
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await session.close(linger=self.server.linger)
            resp.force_close()

    # WebSocket -------------------------------------------------------------------------------
    async def _open_ws(self, request: web.Request, protocols: dict[str, bool]) -> tuple[_WsConn, str]:
        offered = _header_list(request, "Sec-WebSocket-Protocol")
        chosen = next((p for p in offered if p in protocols), None)
        if offered and chosen is None:
            raise web.HTTPBadRequest(
                text=f"requested protocol(s) are not supported: {offered}; supports {list(protocols)}")
        ws = web.WebSocketResponse(protocols=[chosen] if chosen else (), autoping=True, timeout=5.0,
                                   max_msg_size=0)
        await ws.prepare(request)
        return _WsConn(ws, base64=protocols.get(chosen or "", False), idle_timeout=self.server.idle_timeout,
                       close_signal=chosen == V5), chosen or ""

    async def _remotecommand_ws(self, request: web.Request, opts: _Options, call, cmd) -> web.StreamResponse:
        conn, protocol = await self._open_ws(request, WS_REMOTECOMMAND)
        try:
            stdin = conn.reader(STDIN) if opts.stdin else None
            resize_reader = conn.reader(RESIZE)
            conn.start()
            # tell the client the connection is up: empty message on the lowest writable channel
            first = STDOUT if opts.stdout else STDERR if opts.stderr else ERROR
            await conn.send(first, b"")
            stdout = ChannelWriter(lambda d: conn.send(STDOUT, d)) if opts.stdout else None
            stderr = ChannelWriter(lambda d: conn.send(STDERR, d)) if opts.stderr else None
            resize = decode_resize_events(resize_reader) if opts.tty else None
            write_status = _status_json if protocol in (V4, WS_BASE64_V4, V5) else _status_text
            await self._run_remotecommand(conn.wait_closed, call, cmd, stdin, stdout, stderr, resize,
                                          lambda d: conn.send(ERROR, d), write_status)
            return conn.ws
        finally:
            await conn.close()

    async def _portforward_ws(self, request: web.Request,
                              req: runtime_v1.PortForwardRequest) -> web.StreamResponse:
        ports = [int(p) for p in req.port]
        if not ports:  # NewV4Options: from the "port" query parameter(s)
            try:
                for value in request.query.getall("port", []):
                    ports += [int(p) for p in value.split(",")]
            except ValueError:
                raise web.HTTPBadRequest(text="unable to parse port") from None
            if not ports:
                raise web.HTTPBadRequest(text='query parameter "port" is required')
        if any(not 0 < p <= 0xFFFF for p in ports):
            raise web.HTTPBadRequest(text="port must be > 0")
        conn, _ = await self._open_ws(request, WS_PORTFORWARD)
        try:
            readers = [conn.reader(2 * i) for i in range(len(ports))]
            conn.start()
            for i, port in enumerate(ports):
                prefix = struct.pack("<H", port)
                await conn.send(2 * i, prefix)
                await conn.send(2 * i + 1, prefix)

            async def forward(i: int, port: int) -> None:
                writer = ChannelWriter(lambda d: conn.send(2 * i, d))
                try:
                    await self.server.runtime.port_forward(req.pod_sandbox_id, port, (readers[i], writer))
                    await writer.aclose()
                except asyncio.CancelledError:
                    writer.abort()
                    raise
                except Exception as e:
                    writer.abort()
                    log.warning("port forward %s:%d: %s", req.pod_sandbox_id, port, e)
                    with contextlib.suppress(ConnectionError, OSError):
                        await conn.send(2 * i + 1, f"error forwarding port {port} to pod "
                                                   f"{req.pod_sandbox_id}, uid : {e}".encode())

            work = asyncio.ensure_future(asyncio.gather(*(forward(i, p) for i, p in enumerate(ports))))
            try:
                await _until_gone(work, conn.wait_closed())
            finally:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work   # its error, if any, retrieved
            return conn.ws
        finally:
            await conn.close()


class _WsConn:
    """A channel-multiplexed WebSocket (wsstream ``Conn``): demux loop, channel readers, sends."""

    def __init__(self, ws: web.WebSocketResponse, *, base64: bool, idle_timeout: float | None,
                 close_signal: bool) -> None:
        self.ws = ws
        self.base64 = base64
        self.idle_timeout = idle_timeout
        self.close_signal = close_signal
        self._readers: dict[int, PipeReader] = {}
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()
        self._tasks: list[asyncio.Task] = []

    def reader(self, channel: int) -> PipeReader:
        return self._readers.setdefault(channel, PipeReader())

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._receive()))
        if self.idle_timeout:
            self._tasks.append(asyncio.ensure_future(self._idle_watch()))

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def send(self, channel: int, data: bytes) -> None:
        if self._closed.is_set() or self.ws.closed:
            raise ConnectionResetError("websocket closed")
        async with self._lock:
            self.last_activity = self._loop.time()
            if self.base64:
                await self.ws.send_str(chr(ord("0") + channel) + base64.b64encode(data).decode())
            else:
                await self.ws.send_bytes(bytes([channel]) + data)

    async def _receive(self) -> None:
        try:
            async for msg in self.ws:
                self.last_activity = self._loop.time()
                if msg.type == WSMsgType.BINARY:
                    raw = msg.data
                elif msg.type == WSMsgType.TEXT:
                    raw = msg.data.encode()
                else:
                    continue
                if not raw:
                    continue
                if self.close_signal and raw[0] == STREAM_CLOSE:
                    if len(raw) != 2:
                        break  # protocol error
                    r = self._readers.get(raw[1])
                    if r is not None:
                        r.feed_eof()
                    continue
                channel = raw[0] - ord("0") if self.base64 else raw[0]
                payload = raw[1:]
                if self.base64:
                    try:
                        payload = base64.b64decode(payload)
                    except ValueError:
                        continue
                r = self._readers.get(channel)
                if r is not None:
                    r.feed(payload)
                    await r.wait_drained()
        finally:
            self._set_closed()

    async def _idle_watch(self) -> None:
        assert self.idle_timeout
        while not self._closed.is_set():
            remaining = self.last_activity + self.idle_timeout - self._loop.time()
            if remaining <= 0:
                self._set_closed()
                return
            await asyncio.sleep(remaining)

    def _set_closed(self) -> None:
        self._closed.set()
        for r in self._readers.values():
            r.feed_eof()

    async def close(self) -> None:
        self._set_closed()
        with contextlib.suppress(Exception):
            await self.ws.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
