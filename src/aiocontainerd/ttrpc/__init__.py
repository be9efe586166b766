"""ttrpc (containerd/ttrpc PROTOCOL.md) on asyncio: client and server; imports no grpclib."""

from ._wire import (
    DEFAULT_MAX_MESSAGE,
    METADATA_NAMESPACE,
    Closed,
    OversizedMessage,
    ProtocolError,
    error_from_status,
    socket_address,
)
from .client import Client, ClientStream
from .server import Handler, Server, ServerStream, StreamHandler, StreamMethod, metadata, namespace

__all__ = [
    "DEFAULT_MAX_MESSAGE",
    "METADATA_NAMESPACE",
    "Client",
    "ClientStream",
    "Closed",
    "Handler",
    "OversizedMessage",
    "ProtocolError",
    "Server",
    "ServerStream",
    "StreamHandler",
    "StreamMethod",
    "error_from_status",
    "metadata",
    "namespace",
    "socket_address",
]
