"""CRI streaming server: SPDY/3.1 framing, remotecommand and portforward over SPDY and WebSocket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import zlib

import aiohttp
import pytest

from aiocontainerd import errors
from aiocontainerd.api.runtime import v1 as runtime_v1
from aiocontainerd.cri.streaming import StreamingServer, TerminalSize, spdy
from aiocontainerd.cri.streaming.spdy_client import PortForwardClient, UpgradeError, connect, exec_url

# --- a fake runtime --------------------------------------------------------------------------


class FakeRuntime:
    """exec commands: ``cat``, ``echo ARGS``, ``fail-with N``, ``boom``, ``sleep``, ``resize``."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()
        self.calls: list[tuple] = []

    async def exec(self, container_id, cmd, *, stdin, stdout, stderr, tty, resize) -> int:
        self.calls.append(("exec", container_id, cmd, tty))
        if cmd[0] == "cat":
            while data := await stdin.read(65536):
                stdout.write(data)
                await stdout.drain()
            return 0
        if cmd[0] == "echo":
            stdout.write(" ".join(cmd[1:]).encode())
            if stderr is not None:
                stderr.write(b"to stderr")
            return 0
        if cmd[0] == "fail-with":
            stderr.write(b"failing")
            return int(cmd[1])
        if cmd[0] == "boom":
            raise RuntimeError("no such process")
        if cmd[0] == "resize":  # report sizes until stdin ends
            sizes = []

            async def collect():
                async for size in resize:
                    sizes.append(f"{size.width}x{size.height};")

            collector = asyncio.ensure_future(collect())
            while await stdin.read():
                pass
            await asyncio.sleep(0.05)
            collector.cancel()
            stdout.write("".join(sizes).encode())
            return 0
        if cmd[0] == "sleep":
            self.started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        raise AssertionError(cmd)

    async def attach(self, container_id, *, stdin, stdout, stderr, tty, resize) -> None:
        self.calls.append(("attach", container_id, tty))
        while data := await stdin.read():
            stdout.write(data.upper())
            await stdout.drain()
        stdout.close()
        await stdout.wait_closed()

    async def port_forward(self, pod_sandbox_id, port, stream) -> None:
        self.calls.append(("port_forward", pod_sandbox_id, port))
        reader, writer = stream
        r, w = await asyncio.open_connection("127.0.0.1", port)

        async def up() -> None:
            while data := await reader.read(65536):
                w.write(data)
                await w.drain()
            w.write_eof()

        async def down() -> None:
            while data := await r.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        try:
            await asyncio.gather(up(), down())
        finally:
            w.close()


@pytest.fixture
async def runtime():
    return FakeRuntime()


@pytest.fixture
async def server(runtime):
    srv = StreamingServer(runtime, stream_creation_timeout=5, linger=0.5)
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def echo_port():
    async def handle(r, w):
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


def exec_req(*cmd, stdin=False, stdout=True, stderr=True, tty=False):
    return runtime_v1.ExecRequest(container_id="c1", cmd=list(cmd), stdin=stdin, stdout=stdout,
                                  stderr=stderr, tty=tty)


# --- SPDY framing ----------------------------------------------------------------------------


def test_dictionary_is_spdy3():
    assert len(spdy.HEADER_DICTIONARY) == 1423
    assert zlib.adler32(spdy.HEADER_DICTIONARY) == 0xE3C6A7C2


def test_frame_round_trip_with_header_compression():
    a, b = spdy.FrameCodec(), spdy.FrameCodec()
    frames = [
        spdy.SynStream(1, spdy.Headers.of({"streamType": "stdout", "port": ["80", "81"]}), spdy.FLAG_FIN,
                       priority=3),
        spdy.SynStream(3, spdy.Headers.of({"streamType": "stdout", "port": ["80", "81"]})),
        spdy.SynReply(1, spdy.Headers()),
        spdy.HeadersFrame(3, spdy.Headers.of({"x": "y"}), spdy.FLAG_FIN),
        spdy.DataFrame(1, b"hello" * 1000, spdy.FLAG_FIN),
        spdy.RstStream(3, spdy.RstStatus.REFUSED_STREAM),
        spdy.Settings({spdy.SETTINGS_INITIAL_WINDOW_SIZE: (0, 1 << 20)}),
        spdy.Ping(7),
        spdy.GoAway(5, spdy.GoAwayStatus.PROTOCOL_ERROR),
        spdy.WindowUpdate(0, 12345),
    ]
    encoded = [a.encode(f) for f in frames]
    assert [b.decode(e) for e in encoded] == frames
    # one zlib stream per direction: the repeated header block compresses to less the second time
    assert len(encoded[1]) < len(encoded[0])
    # control bit, version 3, type; data frames carry the stream id
    assert encoded[0][:4] == b"\x80\x03\x00\x01"
    assert struct.unpack(">I", encoded[4][:4])[0] == 1
    # a fresh decoder cannot read the second block (it depends on the first): shared state is real
    with pytest.raises(spdy.ProtocolError):
        spdy.FrameCodec().decode(encoded[1])
    # unknown control frame types are ignored, wrong versions are errors
    assert b.decode(struct.pack(">HHI", 0x8003, 0x0A, 0)) is None
    with pytest.raises(spdy.ProtocolError):
        b.decode(struct.pack(">HHI", 0x8002, 0x06, 4) + b"\0\0\0\1")


async def _session_pair(**server_kw):
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    accepted: asyncio.Queue[spdy.Stream] = asyncio.Queue()
    server = spdy.Session(rb, wb, client=False, on_stream=lambda s: accepted.put_nowait(s) or True,
                          **server_kw)
    client = spdy.Session(ra, wa, client=True, flow_control=True)
    server.start()
    client.start()
    return client, server, accepted


async def test_session_flow_control_waits_for_window_updates():
    client, server, accepted = await _session_pair()
    try:
        await client.send_settings({spdy.SETTINGS_INITIAL_WINDOW_SIZE: spdy.DEFAULT_WINDOW})
        cs = await client.open_stream({"streamType": "stdout"})
        ss = await accepted.get()
        assert ss.stream_type == "stdout"
        payload = bytes(range(256)) * 1024  # 256 KiB, four times the window
        writer = asyncio.ensure_future(ss.write(payload))
        await asyncio.sleep(0.2)
        # the peer announced flow control, nobody read: the writer is stuck at the window
        assert not writer.done()
        assert server._enforce
        assert ss.send_window <= 0 and ss.send_window > -spdy.MAX_DATA_CHUNK
        got = bytearray()
        while len(got) < len(payload):
            got += await cs.read(10000)
        await asyncio.wait_for(writer, 5)
        assert bytes(got) == payload
        await ss.close()
        assert await cs.read() == b""
        # PING round trip
        assert await asyncio.wait_for(client.ping(), 5) >= 0
    finally:
        await client.close()
        await server.close()


async def test_session_without_peer_flow_control_does_not_block():
    # spdystream never sends WINDOW_UPDATE: the server must not wait for one
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    accepted: asyncio.Queue[spdy.Stream] = asyncio.Queue()
    server = spdy.Session(rb, wb, client=False, on_stream=lambda s: accepted.put_nowait(s) or True)
    server.start()
    codec = spdy.FrameCodec()
    wa.write(codec.encode(spdy.SynStream(1, spdy.Headers.of({"streamtype": "stdout"}))))
    ss = await accepted.get()
    await asyncio.wait_for(ss.write(b"x" * 300_000), 5)
    await ss.close()
    received = bytearray()
    fin = False
    while not fin:
        frame = await codec.read_frame(ra)
        if isinstance(frame, spdy.DataFrame):
            received += frame.data
            fin = bool(frame.flags & spdy.FLAG_FIN)
    assert len(received) == 300_000
    # the server still grants us window as it consumes our data (WINDOW_UPDATEs are harmless)
    await server.close()
    wa.close()


async def test_session_refuses_bad_stream_ids():
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_connection(sock=a)
    rb, wb = await asyncio.open_connection(sock=b)
    server = spdy.Session(rb, wb, client=False, on_stream=lambda s: s.stream_type == "ok")
    server.start()
    codec = spdy.FrameCodec()
    wa.write(codec.encode(spdy.SynStream(2, spdy.Headers.of({"streamtype": "ok"}))))  # even: server's
    wa.write(codec.encode(spdy.SynStream(3, spdy.Headers.of({"streamtype": "nope"}))))  # refused
    wa.write(codec.encode(spdy.SynStream(5, spdy.Headers.of({"streamtype": "ok"}))))  # accepted
    frames = [await codec.read_frame(ra) for _ in range(3)]
    assert frames[0] == spdy.RstStream(2, spdy.RstStatus.PROTOCOL_ERROR)
    assert frames[1] == spdy.RstStream(3, spdy.RstStatus.REFUSED_STREAM)
    assert isinstance(frames[2], spdy.SynReply) and frames[2].stream_id == 5
    await server.close()
    assert isinstance(await codec.read_frame(ra), spdy.GoAway)
    wa.close()


# --- CRI side --------------------------------------------------------------------------------


async def test_get_urls_validate_and_are_single_use(server):
    url = server.get_exec(exec_req("echo", "hi")).url
    assert url.startswith(f"http://127.0.0.1:{server.port}/exec/")
    assert len(url.rsplit("/", 1)[1]) == 8
    assert server.get_attach(runtime_v1.AttachRequest(container_id="c", stdout=True)).url.startswith(
        f"{server.url}/attach/")
    assert "/portforward/" in server.get_port_forward(
        runtime_v1.PortForwardRequest(pod_sandbox_id="p", port=[80])).url
    for bad in (exec_req("sh", tty=True, stderr=True), exec_req("sh", stdout=False, stderr=False),
                runtime_v1.ExecRequest(container_id="c", stdout=True),
                runtime_v1.ExecRequest(cmd=["sh"], stdout=True)):
        with pytest.raises(errors.InvalidArgument):
            server.get_exec(bad)
    with pytest.raises(errors.InvalidArgument):
        server.get_port_forward(runtime_v1.PortForwardRequest())
    with pytest.raises(errors.InvalidArgument):
        server.get_port_forward(runtime_v1.PortForwardRequest(pod_sandbox_id="p", port=[70000]))

    result = await exec_url(url, stdout=True)
    assert result.stdout == b"hi"
    with pytest.raises(UpgradeError) as e:  # consumed
        await exec_url(url)
    assert e.value.status == 404
    with pytest.raises(UpgradeError) as e:  # wrong kind for the token
        await exec_url(server.get_port_forward(
            runtime_v1.PortForwardRequest(pod_sandbox_id="p")).url.replace("/portforward/", "/exec/"))
    assert e.value.status == 404


async def test_protocol_negotiation(server):
    with pytest.raises(UpgradeError) as e:
        await connect(server.get_exec(exec_req("echo")).url, ["v9.channel.k8s.io"])
    assert e.value.status == 403
    assert "v4.channel.k8s.io" in e.value.headers["x-accepted-stream-protocol-versions"]
    conn = await connect(server.get_exec(exec_req("echo")).url, ["v9.channel.k8s.io", "v3.channel.k8s.io",
                                                                 "v4.channel.k8s.io"])
    assert conn.protocol == "v3.channel.k8s.io"  # the client's order wins
    await conn.close()
    async with aiohttp.ClientSession() as http:
        async with http.post(server.get_exec(exec_req("echo")).url) as resp:  # no upgrade
            assert resp.status == 400


# --- remotecommand over SPDY -----------------------------------------------------------------


async def test_spdy_exec_stdout_stderr_exit_code(server, runtime):
    result = await exec_url(server.get_exec(exec_req("echo", "hello", "world")).url)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"hello world", b"to stderr")
    assert result.protocol == "v4.channel.k8s.io"
    assert result.status == {"metadata": {}, "status": "Success"}

    result = await exec_url(server.get_exec(exec_req("fail-with", "3")).url)
    assert result.exit_code == 3 and result.stderr == b"failing"
    assert result.status["reason"] == "NonZeroExitCode"
    assert result.status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]

    result = await exec_url(server.get_exec(exec_req("boom")).url)
    assert result.exit_code is None
    assert result.status["reason"] == "InternalError" and "no such process" in result.status["message"]

    # pre-v4: the error stream carries text, nothing on success
    result = await exec_url(server.get_exec(exec_req("fail-with", "2")).url, protocols=["v3.channel.k8s.io"])
    assert result.exit_code is None and b"exit code 2" in result.error
    result = await exec_url(server.get_exec(exec_req("echo", "x")).url, protocols=["v2.channel.k8s.io"])
    assert result.exit_code == 0 and result.error == b"" and result.stdout == b"x"
    assert runtime.calls[0] == ("exec", "c1", ["echo", "hello", "world"], False)


async def test_spdy_exec_stdin_large_and_resize(server):
    payload = bytes(range(256)) * 2048  # 512 KiB through stdin and back, across flow control windows
    chunks = [payload[i:i + 50_000] for i in range(0, len(payload), 50_000)]
    result = await exec_url(server.get_exec(exec_req("cat", stdin=True, stderr=False)).url, stdin=chunks,
                            stderr=False)
    assert result.exit_code == 0 and result.stdout == payload

    url = server.get_exec(exec_req("resize", stdin=True, stderr=False, tty=True)).url
    result = await exec_url(url, stdin=b"", tty=True, resize=[(80, 24), (132, 43)], keep_stdin_open=0.1)
    assert result.stdout == b"80x24;132x43;" and result.exit_code == 0


async def test_spdy_attach(server, runtime):
    url = server.get_attach(runtime_v1.AttachRequest(container_id="c2", stdin=True, stdout=True)).url
    result = await exec_url(url, stdin=[b"abc", b"def"], stderr=False)
    assert result.stdout == b"ABCDEF" and result.exit_code == 0
    assert ("attach", "c2", False) in runtime.calls


# --- portforward over SPDY -------------------------------------------------------------------


async def test_spdy_port_forward(server, runtime, echo_port):
    url = server.get_port_forward(runtime_v1.PortForwardRequest(pod_sandbox_id="pod1", port=[echo_port])).url
    async with await PortForwardClient.connect(url) as pf:
        (d1, e1), (d2, e2) = await asyncio.gather(pf.open(echo_port), pf.open(echo_port))
        await d1.write(b"one")
        await d2.write(b"two" * 100_000)
        await d1.close()
        await d2.close()
        assert await d1.readall() == b"one"
        assert await d2.readall() == b"two" * 100_000
        assert await e1.readall() == b"" and await e2.readall() == b""

        # a port nobody listens on: the error stream says so, the connection stays usable
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        _d3, e3 = await pf.open(dead)
        message = await e3.readall()
        assert f"error forwarding port {dead} to pod pod1".encode() in message
        d4, _ = await pf.open(echo_port)
        await d4.write(b"again")
        await d4.close()
        assert await d4.readall() == b"again"
    assert ("port_forward", "pod1", echo_port) in runtime.calls


# --- WebSocket -------------------------------------------------------------------------------


async def _ws_collect(ws, *, base64_mode=False):
    channels: dict[int, bytes] = {}
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            ch, data = msg.data[0], msg.data[1:]
        elif msg.type == aiohttp.WSMsgType.TEXT:
            ch, data = ord(msg.data[0]) - ord("0"), base64.b64decode(msg.data[1:])
        else:
            break
        channels[ch] = channels.get(ch, b"") + data
    return channels


async def test_websocket_v4_exec(server):
    async with aiohttp.ClientSession() as http:
        url = server.get_exec(exec_req("fail-with", "7")).url
        async with http.ws_connect(url, protocols=["v4.channel.k8s.io"]) as ws:
            assert ws.protocol == "v4.channel.k8s.io"
            first = await ws.receive_bytes()
            assert first == b"\x01"  # empty message on stdout: connection is up
            channels = await _ws_collect(ws)
        assert channels[2] == b"failing"
        status = json.loads(channels[3])
        assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"][0]["message"] == "7"

        url = server.get_exec(exec_req("echo", "b64")).url
        async with http.ws_connect(url, protocols=["v4.base64.channel.k8s.io"]) as ws:
            channels = await _ws_collect(ws, base64_mode=True)
        assert channels[1] == b"b64" and json.loads(channels[3])["status"] == "Success"


async def test_websocket_v5_stdin_close_signal_and_resize(server):
    async with aiohttp.ClientSession() as http:
        url = server.get_exec(exec_req("cat", stdin=True, stderr=False)).url
        async with http.ws_connect(url, protocols=["v5.channel.k8s.io", "v4.channel.k8s.io"]) as ws:
            assert ws.protocol == "v5.channel.k8s.io"
            await ws.send_bytes(b"\x00hello ")
            await ws.send_bytes(b"\x00world")
            await ws.send_bytes(bytes([255, 0]))  # v5: close stdin
            channels = await _ws_collect(ws)
        assert channels[1] == b"hello world"
        assert json.loads(channels[3]) == {"metadata": {}, "status": "Success"}

        url = server.get_exec(exec_req("resize", stdin=True, stderr=False, tty=True)).url
        async with http.ws_connect(url, protocols=["v5.channel.k8s.io"]) as ws:
            await ws.send_bytes(b"\x04" + json.dumps({"Width": 100, "Height": 30}).encode())
            await ws.send_bytes(b"\x04" + json.dumps({"Width": 101, "Height": 31}).encode())
            await ws.send_bytes(bytes([255, 0]))
            channels = await _ws_collect(ws)
        assert channels[1] == b"100x30;101x31;"


async def test_websocket_port_forward(server, echo_port):
    async with aiohttp.ClientSession() as http:
        for proto in ("v4.channel.k8s.io", "portforward.k8s.io"):
            url = server.get_port_forward(
                runtime_v1.PortForwardRequest(pod_sandbox_id="pod1", port=[echo_port])).url
            async with http.ws_connect(url, protocols=[proto]) as ws:
                port_le = struct.pack("<H", echo_port)
                got = {await ws.receive_bytes(), await ws.receive_bytes()}
                assert got == {b"\x00" + port_le, b"\x01" + port_le}
                await ws.send_bytes(b"\x00ping over ws")
                assert await ws.receive_bytes() == b"\x00ping over ws"
        # no ports in the request: taken from the query
        url = server.get_port_forward(runtime_v1.PortForwardRequest(pod_sandbox_id="pod1")).url
        async with http.ws_connect(f"{url}?port={echo_port}", protocols=["v4.channel.k8s.io"]) as ws:
            assert len({await ws.receive_bytes(), await ws.receive_bytes()}) == 2
            await ws.send_bytes(b"\x00q")
            assert await ws.receive_bytes() == b"\x00q"


# --- vanished clients, idle timeout ----------------------------------------------------------


async def _settle(server):
    for _ in range(100):
        if server.active_connections == 0:
            return
        await asyncio.sleep(0.05)


async def test_vanished_spdy_client_cancels_runtime_and_leaks_nothing(server, runtime):
    before = set(asyncio.all_tasks())
    conn = await connect(server.get_exec(exec_req("sleep", stdin=True)).url, ["v4.channel.k8s.io"])
    for t in ("error", "stdin", "stdout", "stderr"):
        await conn.session.open_stream({"streamType": t})
    await asyncio.wait_for(runtime.started.wait(), 5)
    assert server.active_connections == 1
    conn.session._writer.transport.abort()  # the client vanishes: no GOAWAY, no FIN
    await asyncio.wait_for(runtime.cancelled.wait(), 5)
    await _settle(server)
    assert server.active_connections == 0
    with contextlib.suppress(Exception):
        await conn.close()
    await asyncio.sleep(0.1)
    leaked = [t for t in asyncio.all_tasks() - before if not t.done() and "aiohttp" not in repr(t.get_coro())]
    assert leaked == []


async def test_vanished_websocket_client_cancels_runtime(server, runtime):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(server.get_exec(exec_req("sleep", stdin=True)).url,
                                   protocols=["v4.channel.k8s.io"])
        await asyncio.wait_for(runtime.started.wait(), 5)
        ws._response.connection.transport.abort()
    await asyncio.wait_for(runtime.cancelled.wait(), 5)
    await _settle(server)
    assert server.active_connections == 0


async def test_idle_timeout_closes_connection(runtime):
    async with StreamingServer(runtime, idle_timeout=0.3, linger=0.2) as srv:
        conn = await connect(srv.get_exec(exec_req("sleep", stdin=True)).url, ["v4.channel.k8s.io"])
        for t in ("error", "stdin", "stdout", "stderr"):
            await conn.session.open_stream({"streamType": t})
        await asyncio.wait_for(runtime.started.wait(), 5)
        await asyncio.wait_for(runtime.cancelled.wait(), 5)  # nobody said anything for 0.3 s
        await asyncio.wait_for(conn.session.wait_closed(), 5)
        assert isinstance(conn.session.goaway_received, spdy.GoAway) or conn.session.closed
        await _settle(srv)
        assert srv.active_connections == 0


async def test_stream_creation_timeout(runtime):
    async with StreamingServer(runtime, stream_creation_timeout=0.3, linger=0.1) as srv:
        conn = await connect(srv.get_exec(exec_req("echo")).url, ["v4.channel.k8s.io"])
        await conn.session.open_stream({"streamType": "error"})  # stdout and stderr never come
        await asyncio.wait_for(conn.session.wait_closed(), 5)
        assert runtime.calls == []
        assert TerminalSize(1, 2).width == 1


# --- the real client: crictl (cri-tools v1.32, client-go's SPDY and WebSocket executors) -----

CRICTL = "/work/tools/bin/crictl"


@pytest.fixture
async def cri_socket(server, tmp_path):
    if not os.access(CRICTL, os.X_OK):
        pytest.skip("crictl not built")
    from grpclib.server import Server as GrpcServer

    class Service(runtime_v1.RuntimeServiceBase):
        async def version(self, m):
            return runtime_v1.VersionResponse(version="0.1.0", runtime_name="fake", runtime_version="1",
                                              runtime_api_version="v1")

        async def list_containers(self, m):
            return runtime_v1.ListContainersResponse(containers=[runtime_v1.Container(
                id="c1", pod_sandbox_id="p1", state=runtime_v1.ContainerState.CONTAINER_RUNNING,
                metadata=runtime_v1.ContainerMetadata(name="c1"))])

        async def list_pod_sandbox(self, m):
            return runtime_v1.ListPodSandboxResponse(items=[runtime_v1.PodSandbox(
                id="p1", state=runtime_v1.PodSandboxState.SANDBOX_READY,
                metadata=runtime_v1.PodSandboxMetadata(name="p1", uid="u", namespace="n"))])

        async def exec(self, m):
            return server.get_exec(m)

        async def attach(self, m):
            return server.get_attach(m)

        async def port_forward(self, m):
            return server.get_port_forward(m)

    sock = str(tmp_path / "cri.sock")
    grpc = GrpcServer([Service()])
    await grpc.start(path=sock)
    yield f"unix://{sock}"
    grpc.close()
    await grpc.wait_closed()


async def _crictl(endpoint, *args, stdin=None):
    proc = await asyncio.create_subprocess_exec(
        CRICTL, "-r", endpoint, "-t", "10s", *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out, err


async def test_crictl_exec_over_spdy_and_websocket(cri_socket):
    rc, out, err = await _crictl(cri_socket, "exec", "c1", "echo", "hi", "there")
    assert (rc, out) == (0, b"hi there") and err.endswith(b"to stderr")
    rc, out, err = await _crictl(cri_socket, "exec", "c1", "fail-with", "3")
    assert rc != 0 and b"command terminated with exit code 3" in err
    data = bytes(range(256)) * 1000
    rc, out, err = await _crictl(cri_socket, "exec", "-i", "c1", "cat", stdin=data)
    assert (rc, out) == (0, data)
    rc, out, err = await _crictl(cri_socket, "exec", "--transport", "websocket", "-i", "c1", "cat",
                                 stdin=b"over websocket")
    assert (rc, out) == (0, b"over websocket")
    rc, out, err = await _crictl(cri_socket, "attach", "-i", "c1", stdin=b"attached")
    assert out == b"ATTACHED"


async def test_crictl_port_forward(cri_socket, echo_port):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        CRICTL, "-r", cri_socket, "port-forward", "p1", f"{local}:{echo_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                r, w = await asyncio.open_connection("127.0.0.1", local)
                break
            await asyncio.sleep(0.1)
        w.write(b"through crictl")
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(14), 10) == b"through crictl"
        w.close()
    finally:
        proc.terminate()
        await proc.wait()
