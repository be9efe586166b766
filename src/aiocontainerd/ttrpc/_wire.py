"""ttrpc wire format: the 10-byte frame header, the Request/Response envelopes, addresses.

PROTOCOL.md, "Message Frame": every frame is a header of 10 bytes --
data length (uint32, big-endian), stream id (uint32, big-endian), message
type (uint8), flags (uint8) -- followed by ``length`` bytes of data.

The envelopes are the protobuf messages ``ttrpc.Request`` and
``ttrpc.Response`` (``aiocontainerd.api.ttrpc``).  They are encoded and
decoded here by hand because they sit on the path of every call: the
generic betterproto2 codec costs tens of microseconds per envelope, these
functions a few.  They produce and accept exactly the protobuf encoding of
those messages (checked against the generated classes in the unit tests).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping, Sequence

from aiocontainerd import errors

HEADER = struct.Struct(">IIBB")
HEADER_LENGTH = 10

#: message types (PROTOCOL.md, "Message Types")
REQUEST = 0x01
RESPONSE = 0x02
DATA = 0x03

#: flags (PROTOCOL.md, "Request Flags" / "Data Flags")
FLAG_REMOTE_CLOSED = 0x01
FLAG_REMOTE_OPEN = 0x02
FLAG_NO_DATA = 0x04

#: the namespace travels as this metadata key (containerd's namespaces package)
METADATA_NAMESPACE = "containerd-namespace-ttrpc"
#: maximum data length of a frame, in bytes (PROTOCOL.md: "The maximum data length is 4MB")
DEFAULT_MAX_MESSAGE = 4 << 20


class Closed(errors.Unavailable):
    """The connection is closed or was lost ("ttrpc: closed"); pending calls fail with it."""

    def __init__(self, message: str = "ttrpc: closed") -> None:
        super().__init__(message)


class OversizedMessage(errors.ContainerdError):
    """A message exceeds the maximum message size (RESOURCE_EXHAUSTED).

    Raised before sending an oversized request, and for a call whose peer
    reported RESOURCE_EXHAUSTED (e.g. our request or its response was too big).
    """

    code = errors.Code.RESOURCE_EXHAUSTED


class ProtocolError(errors.Internal):
    """The peer broke the protocol, e.g. data on a unary stream (INTERNAL)."""


def error_from_status(code: int, message: str) -> errors.ContainerdError:
    """The ``aiocontainerd.errors`` instance for a google.rpc.Status received from a peer:
    ``errors.from_status``, except RESOURCE_EXHAUSTED, which ttrpc raises for a message
    over the size limit (:class:`OversizedMessage`)."""
    if code == errors.Code.RESOURCE_EXHAUSTED:
        return OversizedMessage(message)
    return errors.from_status(code, message)


def status_of(exc: BaseException) -> tuple[int, str]:
    """(code, message) of the google.rpc.Status a server sends for a handler's exception."""
    if isinstance(exc, errors.ContainerdError):
        return int(exc.code), str(exc)
    return int(errors.Code.UNKNOWN), str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------
# protobuf primitives


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _skip(buf: bytes, pos: int, wire_type: int) -> int:
    if wire_type == 0:
        return _read_varint(buf, pos)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = _read_varint(buf, pos)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise ValueError(f"unsupported protobuf wire type {wire_type}")


def _ld(tag: bytes, data: bytes) -> bytes:
    return tag + _varint(len(data)) + data


def _encode_metadata(metadata: Mapping[str, str | Sequence[str]] | None) -> list[bytes]:
    parts: list[bytes] = []
    if not metadata:
        return parts
    for key, values in metadata.items():
        k = key.lower().encode()
        for v in (values,) if isinstance(values, str) else values:
            kv = _ld(b"\x0a", k) + (_ld(b"\x12", v.encode()) if v else b"")
            parts.append(_ld(b"\x2a", kv))
    return parts


# ---------------------------------------------------------------------------
# ttrpc.Request {1 service, 2 method, 3 payload, 4 timeout_nano int64, 5 metadata KeyValue}


def encode_request(service: str, method: str, payload: bytes | None, timeout_nano: int = 0,
                   metadata: Mapping[str, str | Sequence[str]] | None = None) -> bytes:
    """The encoded ``ttrpc.Request``; ``payload=None`` leaves the field out (no initial message)."""
    parts = [_ld(b"\x0a", service.encode()), _ld(b"\x12", method.encode())]
    if payload is not None:
        parts.append(_ld(b"\x1a", payload))
    if timeout_nano:
        parts.append(b"\x20" + _varint(timeout_nano & 0xFFFFFFFFFFFFFFFF))
    if metadata:
        parts.extend(_encode_metadata(metadata))
    return b"".join(parts)


def _decode_kv(buf: bytes) -> tuple[str, str]:
    key = value = ""
    pos, n = 0, len(buf)
    while pos < n:
        tag, pos = _read_varint(buf, pos)
        if tag == 0x0A or tag == 0x12:
            ln, pos = _read_varint(buf, pos)
            s = buf[pos:pos + ln].decode()
            pos += ln
            if tag == 0x0A:
                key = s
            else:
                value = s
        else:
            pos = _skip(buf, pos, tag & 7)
    return key, value


class DecodedRequest:
    """A decoded ``ttrpc.Request``; ``payload`` is None when the field was absent."""

    __slots__ = ("metadata", "method", "payload", "service", "timeout_nano")

    def __init__(self) -> None:
        self.service = ""
        self.method = ""
        self.payload: bytes | None = None
        self.timeout_nano = 0
        self.metadata: dict[str, list[str]] = {}


def decode_request(buf: bytes) -> DecodedRequest:
    """Decode a ``ttrpc.Request``; raises ValueError/IndexError/UnicodeDecodeError if malformed."""
    req = DecodedRequest()
    pos, n = 0, len(buf)
    while pos < n:
        tag, pos = _read_varint(buf, pos)
        if tag == 0x20:
            v, pos = _read_varint(buf, pos)
            req.timeout_nano = v - (1 << 64) if v >= 1 << 63 else v
            continue
        if tag & 7 != 2:
            pos = _skip(buf, pos, tag & 7)
            continue
        ln, pos = _read_varint(buf, pos)
        end = pos + ln
        if end > n:
            raise ValueError("truncated field")
        field = tag >> 3
        if field == 1:
            req.service = buf[pos:end].decode()
        elif field == 2:
            req.method = buf[pos:end].decode()
        elif field == 3:
            req.payload = buf[pos:end]
        elif field == 5:
            k, v = _decode_kv(buf[pos:end])
            req.metadata.setdefault(k.lower(), []).append(v)
        pos = end
    if pos != n:
        raise ValueError("truncated message")
    return req


# ---------------------------------------------------------------------------
# ttrpc.Response {1 status google.rpc.Status{1 code int32, 2 message, 3 details}, 2 payload}

_OK_RESPONSE_EMPTY = b""


def encode_response(code: int = 0, message: str = "", payload: bytes = b"") -> bytes:
    """The encoded ``ttrpc.Response``; an OK status is left out (absent status means OK)."""
    if code == 0:
        return _ld(b"\x12", payload) if payload else _OK_RESPONSE_EMPTY
    status = b"\x08" + _varint(code & 0xFFFFFFFFFFFFFFFF)
    if message:
        status += _ld(b"\x12", message.encode())
    out = _ld(b"\x0a", status)
    if payload:
        out += _ld(b"\x12", payload)
    return out


def decode_response(buf: bytes) -> tuple[int, str, bytes]:
    """(status code, status message, payload) of an encoded ``ttrpc.Response``."""
    code, message, payload = 0, "", b""
    pos, n = 0, len(buf)
    while pos < n:
        tag, pos = _read_varint(buf, pos)
        if tag & 7 != 2:
            pos = _skip(buf, pos, tag & 7)
            continue
        ln, pos = _read_varint(buf, pos)
        end = pos + ln
        if end > n:
            raise ValueError("truncated field")
        if tag == 0x12:
            payload = buf[pos:end]
        elif tag == 0x0A:
            sp = pos
            while sp < end:
                stag, sp = _read_varint(buf, sp)
                if stag == 0x08:
                    v, sp = _read_varint(buf, sp)
                    code = v - (1 << 64) if v >= 1 << 63 else v
                elif stag == 0x12:
                    sl, sp = _read_varint(buf, sp)
                    message = buf[sp:sp + sl].decode(errors="replace")
                    sp += sl
                else:
                    sp = _skip(buf, sp, stag & 7)
        pos = end
    if pos != n:
        raise ValueError("truncated message")
    return code, message, payload


# ---------------------------------------------------------------------------
# addresses


def socket_address(address: str) -> str:
    """The ``AF_UNIX`` address for a ttrpc address string.

    ``"unix:///abs/path"`` and a plain ``"/abs/path"`` name a socket file;
    ``"unix://@name"`` and ``"@name"`` name the abstract socket ``"\\0name"``.
    (Go's shim helpers read an address without ``unix://`` as abstract; containerd
    1.6 shims print ``unix:///run/containerd/s/<hex>``, a path, which means the same
    here and there.)  Raises ``errors.InvalidArgument`` for other schemes.
    """
    if address.startswith("unix://"):
        address = address[len("unix://"):]
    elif "://" in address:
        raise errors.InvalidArgument(f"ttrpc: unsupported address {address!r} (unix sockets only)")
    if not address:
        raise errors.InvalidArgument("ttrpc: empty address")
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


def is_abstract(sockaddr: str) -> bool:
    return sockaddr.startswith("\0")


def unix_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    return sock
