"""CRI streaming: the server behind the Exec, Attach and PortForward URLs.

kubelet's ``k8s.io/kubelet/pkg/cri/streaming`` re-made on aiohttp: SPDY/3.1
(``spdy``) and WebSocket channel protocols, remotecommand (exec/attach) and
portforward. The CRI plugin creates a :class:`StreamingServer` with its
:class:`StreamRuntime`, starts it, and answers the RPCs with
``server.get_exec(req)`` / ``get_attach(req)`` / ``get_port_forward(req)``. aiohttp (the
HTTP side, ``handlers``) is imported when the first client connects, not with this package.
"""

from .runtime import (
    AsyncReader,
    AsyncWriter,
    ChannelWriter,
    PipeReader,
    StreamRuntime,
    TerminalSize,
    decode_resize_events,
)
from .server import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_STREAM_CREATION_TIMEOUT,
    PORTFORWARD_PROTOCOLS,
    REMOTECOMMAND_PROTOCOLS,
    StreamingServer,
    TooManyInFlight,
)

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_STREAM_CREATION_TIMEOUT",
    "PORTFORWARD_PROTOCOLS",
    "REMOTECOMMAND_PROTOCOLS",
    "AsyncReader",
    "AsyncWriter",
    "ChannelWriter",
    "PipeReader",
    "StreamRuntime",
    "StreamingServer",
    "TerminalSize",
    "TooManyInFlight",
    "decode_resize_events",
]
