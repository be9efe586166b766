"""A small SPDY/3.1 streaming client, the counterpart of client-go's SPDY executor.

Follows ``k8s.io/client-go/tools/remotecommand`` (``spdy.go``, ``v2.go``-``v4.go``) and
``k8s.io/client-go/tools/portforward``: upgrade a POST to the streaming URL, open the
streams by ``streamType`` (``error`` first), copy, and read the status from the error
stream. Used by the tests and usable as a Python ``crictl exec``/``port-forward``.

Example::

    result = await exec_url(url, stdin=b"hello", stdout=True)
    assert result.exit_code == 0 and result.stdout == b"hello"

Errors: :class:`UpgradeError` (the server answered the upgrade with a non-101 status),
``spdy.StreamReset`` (a stream was refused), ``ConnectionError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import spdy

__all__ = ["ClientConnection", "ExecResult", "PortForwardClient", "UpgradeError", "connect", "exec_url"]

DEFAULT_PROTOCOLS = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")


class UpgradeError(ConnectionError):
    """The server refused the upgrade: ``status`` and response ``body``."""

    def __init__(self, status: int, body: bytes, headers: dict[str, list[str]]) -> None:
        super().__init__(f"upgrade failed: HTTP {status}: {body.decode(errors='replace').strip()}")
        self.status = status
        self.body = body
        self.headers = headers


@dataclass
class ClientConnection:
    """An upgraded connection: the negotiated ``protocol`` and the client :class:`spdy.Session`."""

    session: spdy.Session
    protocol: str
    headers: dict[str, list[str]] = field(default_factory=dict)

    async def close(self) -> None:
        await self.session.close()


async def connect(url: str, protocols: Iterable[str], *, method: str = "POST",
                  flow_control: bool = True) -> ClientConnection:
    """Upgrade ``url`` to SPDY/3.1 offering ``protocols`` (``X-Stream-Protocol-Version``).

    With ``flow_control`` the client announces its window (SETTINGS) and waits on the
    server's windows; kubelet's spdystream peers ignore both.
    """
    u = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
    try:
        lines = [f"{method} {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1",
                 f"Host: {u.netloc}", "Connection: Upgrade", "Upgrade: SPDY/3.1", "Content-Length: 0"]
        lines += [f"X-Stream-Protocol-Version: {p}" for p in protocols]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        headers: dict[str, list[str]] = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                headers.setdefault(k.strip().lower(), []).append(v.strip())
        if status != 101:
            length = int(headers.get("content-length", ["0"])[0])
            body = await reader.readexactly(length) if length else b""
            raise UpgradeError(status, body, headers)
    except BaseException:
        writer.close()
        raise
    session = spdy.Session(reader, writer, client=True, flow_control=flow_control)
    session.start()
    if flow_control:
        await session.send_settings({spdy.SETTINGS_INITIAL_WINDOW_SIZE: session.initial_window})
    return ClientConnection(session, headers.get("x-stream-protocol-version", [""])[0], headers)


@dataclass
class ExecResult:
    """Outcome of :func:`exec_url`: exit code (``None`` when the server reported an error),
    collected output, and the raw error-stream message (JSON status on v4)."""

    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    error: bytes = b""
    protocol: str = ""

    @property
    def status(self) -> dict | None:
        try:
            return json.loads(self.error) if self.error else None
        except ValueError:
            return None


def _exit_code(protocol: str, message: bytes) -> int | None:
    if protocol not in ("v4.channel.k8s.io", "v5.channel.k8s.io"):
        return 0 if not message else None
    status = json.loads(message) if message else {"status": "Success"}
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
    return None


async def exec_url(url: str, *, stdin: bytes | Iterable[bytes] | None = None, stdout: bool = True,
                   stderr: bool = True, tty: bool = False, resize: Iterable[tuple[int, int]] = (),
                   protocols: Iterable[str] = DEFAULT_PROTOCOLS, keep_stdin_open: float = 0.0) -> ExecResult:
    """Run an exec/attach URL to completion, as ``crictl exec`` does.

    ``stdin`` chunks are sent, then stdin is half-closed (after ``keep_stdin_open``
    seconds); ``resize`` sizes are sent on the resize stream (TTY, v3+).
    """
    conn = await connect(url, protocols)
    session = conn.session
    try:
        err = await session.open_stream({"streamType": "error"})
        s_in = await session.open_stream({"streamType": "stdin"}) if stdin is not None else None
        s_out = await session.open_stream({"streamType": "stdout"}) if stdout else None
        s_err = await session.open_stream({"streamType": "stderr"}) if stderr and not tty else None
        s_rs = None
        if tty and conn.protocol in ("v3.channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"):
            s_rs = await session.open_stream({"streamType": "resize"})

        async def feed() -> None:
            if s_rs is not None:
                for w, h in resize:
                    await s_rs.write(json.dumps({"Width": w, "Height": h}).encode() + b"\n")
            if s_in is not None:
                chunks = [stdin] if isinstance(stdin, bytes) else stdin
                for chunk in chunks or ():
                    await s_in.write(chunk)
                if keep_stdin_open:
                    await asyncio.sleep(keep_stdin_open)
                await s_in.close()

        async def collect(s: spdy.Stream | None) -> bytes:
            return await s.readall() if s is not None else b""

        feeder = asyncio.ensure_future(feed())
        out, errout, message = await asyncio.gather(collect(s_out), collect(s_err), collect(err))
        if not feeder.done():
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await feeder
        return ExecResult(_exit_code(conn.protocol, message), out, errout, message, conn.protocol)
    finally:
        await conn.close()


class PortForwardClient:
    """client-go ``portforward`` over SPDY: one error+data stream pair per connection.

    ``async with await PortForwardClient.connect(url) as pf: data, err = await pf.open(80)``
    """

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._request_id = 0

    @classmethod
    async def connect(cls, url: str, **kw) -> PortForwardClient:
        return cls(await connect(url, ("portforward.k8s.io",), **kw))

    async def open(self, port: int) -> tuple[spdy.Stream, spdy.Stream]:
        """A new forwarded connection to ``port``: (data stream, error stream)."""
        rid = str(self._request_id)
        self._request_id += 1
        headers = {"port": str(port), "requestID": rid}
        err = await self.conn.session.open_stream({"streamType": "error", **headers})
        await err.close()  # the client never writes on it
        data = await self.conn.session.open_stream({"streamType": "data", **headers})
        return data, err

    async def close(self) -> None:
        await self.conn.close()

    async def __aenter__(self) -> PortForwardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
