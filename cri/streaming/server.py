"""The CRI streaming server: exec, attach and port-forward over SPDY/3.1 and WebSocket.

Follows kubelet's streaming library (``k8s.io/kubelet/pkg/cri/streaming``:
``server.go``, ``request_cache.go``, ``remotecommand/{httpstream,websocket,exec,attach}.go``,
``portforward/{httpstream,websocket}.go``), which containerd vendors for its CRI plugin:

1. The CRI ``Exec``/``Attach``/``PortForward`` RPCs call :meth:`StreamingServer.get_exec`
   and friends; the request is validated and cached under a random single-use
   token for one minute (at most 1000 in flight), and the RPC returns
   ``http://<address>:<port>/{exec,attach,portforward}/<token>``.
2. The client (kubelet/apiserver, crictl, kubectl) sends GET or POST to that URL with
   ``Connection: Upgrade`` and either ``Upgrade: SPDY/3.1`` plus
   ``X-Stream-Protocol-Version`` (comma-separated, client's preference first), or a
   WebSocket upgrade with ``Sec-WebSocket-Protocol``.
3. remotecommand over SPDY: the client opens one stream per ``streamType`` header —
   ``error``, ``stdin``, ``stdout``, ``stderr`` and, with a TTY on v3+, ``resize`` —
   within ``stream_creation_timeout``; the runtime runs; the result is written on
   the error stream: v4/v5 a JSON ``metav1.Status`` (``{"metadata":{},"status":"Success"}``,
   or ``"Failure"`` with reason ``NonZeroExitCode`` and a cause
   ``{"reason":"ExitCode","message":"<code>"}``, or ``InternalError``); v1-v3 the error
   text only. Resize events are JSON ``{"Width":w,"Height":h}``.
4. remotecommand over WebSocket (``v5.channel.k8s.io``, ``v4.channel.k8s.io``,
   ``v4.base64.channel.k8s.io``, ``channel.k8s.io``, ``base64.channel.k8s.io``): every
   message is ``<channel byte><payload>`` (base64: ASCII digit + base64 text) on
   channels 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; the server first sends an
   empty message on the lowest writable channel; v5 adds the client's close signal
   ``[255, channel]`` (half-close of stdin).
5. port-forward over SPDY (``portforward.k8s.io``): per forwarded connection the client
   opens an ``error`` and a ``data`` stream with the same ``port`` and ``requestID``
   headers; the pair is handed to the runtime; a failure is written as text on the
   error stream. Over WebSocket (``v4.channel.k8s.io``, ``v4.base64.channel.k8s.io``,
   ``portforward.k8s.io``, ``v5.channel.k8s.io`` or none) the ports come from the CRI
   request (else the ``port`` query), channel ``2i`` is data and ``2i+1`` error for the
   i-th port, and the first message on each carries the port as uint16 little-endian.

A connection with no traffic for ``idle_timeout`` seconds is closed. When a client
vanishes (connection lost, idle timeout, :meth:`StreamingServer.close`) the runtime
call is cancelled, stdin readers see EOF and every task of the connection ends.

This module is the part the daemon always has: the listening socket, the request cache
and the URLs. The HTTP side (:mod:`.handlers`, on aiohttp) is imported when the first
client connects: most daemons never serve a streaming URL, and aiohttp would be a fifth of
an idle daemon's memory.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiocontainerd import errors
from aiocontainerd.api.runtime import v1 as runtime_v1

from .runtime import StreamRuntime

if TYPE_CHECKING:
    from .handlers import Handlers

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_STREAM_CREATION_TIMEOUT",
    "PORTFORWARD_PROTOCOLS",
    "REMOTECOMMAND_PROTOCOLS",
    "StreamingServer",
    "TooManyInFlight",
]

DEFAULT_IDLE_TIMEOUT = 4 * 3600.0  # kubelet DefaultConfig.StreamIdleTimeout
DEFAULT_STREAM_CREATION_TIMEOUT = 30.0  # remotecommand.DefaultStreamCreationTimeout
CACHE_TTL = 60.0  # request_cache.go cacheTTL
MAX_IN_FLIGHT = 1000  # request_cache.go maxInFlight
TOKEN_LEN = 8

V1, V2, V3, V4, V5 = ("channel.k8s.io", "v2.channel.k8s.io", "v3.channel.k8s.io",
                      "v4.channel.k8s.io", "v5.channel.k8s.io")
#: SPDY remotecommand subprotocols, server preference (v5 is v4 on SPDY: its CLOSE is WebSocket-only)
REMOTECOMMAND_PROTOCOLS = (V5, V4, V3, V2, V1)
PORTFORWARD_V1 = "portforward.k8s.io"
PORTFORWARD_PROTOCOLS = (PORTFORWARD_V1,)

WS_BASE64_V1 = "base64.channel.k8s.io"
WS_BASE64_V4 = "v4.base64.channel.k8s.io"
#: WebSocket remotecommand subprotocols -> base64 framing?
WS_REMOTECOMMAND = {V5: False, V4: False, WS_BASE64_V4: True, V1: False, WS_BASE64_V1: True}
#: WebSocket port-forward subprotocols -> base64 framing?
WS_PORTFORWARD = {V4: False, WS_BASE64_V4: True, PORTFORWARD_V1: False, V5: False}
STREAM_CLOSE = 255  # v5 close-channel signal

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


class TooManyInFlight(errors.ContainerdError):
    """More than 1000 streaming requests are waiting for their client (RESOURCE_EXHAUSTED)."""

    code = errors.Code.RESOURCE_EXHAUSTED


@dataclass
class _Options:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


@dataclass
class _Entry:
    request: Any
    expires: float


class _RequestCache:
    """Single-use tokens for cached CRI requests (kubelet ``request_cache.go``)."""

    def __init__(self, ttl: float = CACHE_TTL, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def _gc(self) -> None:
        now = time.monotonic()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires >= now:
                return
            del self._entries[token]

    def insert(self, request: Any) -> str:
        self._gc()
        if len(self._entries) >= self.max_in_flight:
            raise TooManyInFlight("maximum number of in-flight requests exceeded")
        for _ in range(10):
            token = secrets.token_urlsafe(6)[:TOKEN_LEN]
            if token not in self._entries:
                self._entries[token] = _Entry(request, time.monotonic() + self.ttl)
                return token
        raise errors.Internal("failed to generate unique token")

    def consume(self, token: str) -> Any | None:
        entry = self._entries.pop(token, None)
        if entry is None or time.monotonic() > entry.expires:
            return None
        return entry.request

    def __len__(self) -> int:
        return len(self._entries)


# --- the server ------------------------------------------------------------------------------


class StreamingServer:
    """kubelet's streaming server on aiohttp (``k8s.io/kubelet/pkg/cri/streaming/server.go``).

    ``runtime``: the :class:`~aiocontainerd.cri.streaming.runtime.StreamRuntime` doing the work.
    ``address``/``port``: where to listen (``port=0``: any free port, known after
    :meth:`start`). ``base_url`` overrides the URL prefix handed out (default
    ``http://<address>:<port>``). ``idle_timeout``: seconds without traffic before a
    streaming connection is closed (kubelet default 4 h; containerd's
    ``stream_idle_timeout``); ``None``/0 disables. ``stream_creation_timeout``: how long a
    SPDY client may take to open its streams (30 s).

    Lifecycle: ``await start()`` ... ``await close()`` (also an async context manager).
    """

    def __init__(self, runtime: StreamRuntime, *, address: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
                 stream_creation_timeout: float = DEFAULT_STREAM_CREATION_TIMEOUT,
                 base_url: str | None = None, linger: float = 2.0) -> None:
        self.runtime = runtime
        self.address = address
        self.port = port
        self.idle_timeout = idle_timeout or None
        self.stream_creation_timeout = stream_creation_timeout
        self.linger = linger
        self._base_url = base_url
        self._cache = _RequestCache()
        self._listener: asyncio.Server | None = None
        self._handlers: Handlers | None = None
        self._conns: set[asyncio.Task] = set()

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen; afterwards :attr:`url` and :attr:`port` are final."""
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._connection, self.address, self.port, backlog=128)
        if self._listener.sockets:
            self.port = self._listener.sockets[0].getsockname()[1]

    def _connection(self) -> asyncio.BaseProtocol:
        """The protocol of an accepted connection; the HTTP side is set up for the first one."""
        if self._handlers is None:
            from .handlers import Handlers

            self._handlers = Handlers(self)
        return self._handlers.protocol()

    async def close(self) -> None:
        """Stop listening and end every streaming connection (runtime calls are cancelled)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._handlers is not None:
            handlers, self._handlers = self._handlers, None
            await handlers.shutdown()

    async def __aenter__(self) -> StreamingServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def url(self) -> str:
        """Base URL of the handed-out streaming URLs, e.g. ``http://127.0.0.1:40123``."""
        if self._base_url:
            return self._base_url.rstrip("/")
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    @property
    def active_connections(self) -> int:
        """Streaming connections being served now."""
        return len(self._conns)

    # CRI side -------------------------------------------------------------------------------
    def get_exec(self, req: runtime_v1.ExecRequest) -> runtime_v1.ExecResponse:
        """Validate an ExecRequest and return its single-use URL.

        Raises ``errors.InvalidArgument`` (no container_id, no cmd, tty with stderr, none of
        stdin/stdout/stderr) or :class:`TooManyInFlight`.
        """
        if not req.container_id:
            raise errors.InvalidArgument("missing required container_id")
        if not req.cmd:
            raise errors.InvalidArgument("missing required cmd")
        self._validate_streams(req)
        return runtime_v1.ExecResponse(url=self._url("exec", self._cache.insert(req)))

    def get_attach(self, req: runtime_v1.AttachRequest) -> runtime_v1.AttachResponse:
        """Validate an AttachRequest and return its single-use URL (errors as :meth:`get_exec`)."""
        if not req.container_id:
            raise errors.InvalidArgument("missing required container_id")
        self._validate_streams(req)
        return runtime_v1.AttachResponse(url=self._url("attach", self._cache.insert(req)))

    def get_port_forward(self, req: runtime_v1.PortForwardRequest) -> runtime_v1.PortForwardResponse:
        """Validate a PortForwardRequest and return its single-use URL.

        Raises ``errors.InvalidArgument`` (no pod_sandbox_id, a port outside 1..65535).
        """
        if not req.pod_sandbox_id:
            raise errors.InvalidArgument("missing required pod_sandbox_id")
        for port in req.port:
            if not 0 < port <= 0xFFFF:
                raise errors.InvalidArgument(f"invalid port {port}")
        return runtime_v1.PortForwardResponse(url=self._url("portforward", self._cache.insert(req)))

    @staticmethod
    def _validate_streams(req: Any) -> None:
        if req.tty and req.stderr:
            raise errors.InvalidArgument("tty and stderr cannot both be true")
        if not (req.stdin or req.stdout or req.stderr):
            raise errors.InvalidArgument("one of stdin, stdout, or stderr must be set")

    def _url(self, kind: str, token: str) -> str:
        return f"{self.url}/{kind}/{token}"
