"""The shim's stdio with host processes standing in for runc: FIFOs (open ordering, CloseIO,
large output), file://, binary:// loggers, /dev/null, TTY copying and resize, ConsoleSocket."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import stat
import struct
import termios
from pathlib import Path

import pytest

from aiocontainerd import errors
from aiocontainerd.runtimes.aiorunc.console import ConsoleSocket
from aiocontainerd.runtimes.aiorunc.reaper import Reaper
from aiocontainerd.runtimes.aiorunc.stdio import ProcessIO, logger_argv, open_stdio
from tests.support import shim

reaper = shim.reaper   # the fixture


class Reader:
    """A client's read side of an output FIFO (opened before the shim, as ctr does)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)

    async def read_all(self, timeout: float = 10) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        data = bytearray()
        while loop.time() < deadline:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            if not chunk:
                break
            data += chunk
        os.close(self.fd)
        return bytes(data)


async def run(reaper: Reaper, pio: ProcessIO, argv: list[str]) -> int:
    """Run ``argv`` with the ProcessIO's child fds, as runc would, then close our copies."""
    fds = [subprocess_fd(fd) for fd in pio.child_stdio()]
    child = await reaper.spawn(argv, stdin=fds[0], stdout=fds[1], stderr=fds[2])
    pio.close_after_start()
    pio.start_copying()   # the runtime succeeded
    return await asyncio.wait_for(child.wait(), 20)


def subprocess_fd(fd: int | None) -> int:
    from aiocontainerd.runtimes.aiorunc.reaper import DEVNULL
    return DEVNULL if fd is None else fd


async def test_fifos(reaper: Reaper, tmp_path: Path) -> None:
    out, err = Reader(tmp_path / "out"), Reader(tmp_path / "err")
    pio = await open_stdio(stdin="", stdout=str(tmp_path / "out"), stderr=str(tmp_path / "err"),
                           terminal=False, id="c1", namespace="ns", reaper=reaper)
    assert pio.scheme == "fifo"
    try:
        assert await run(reaper, pio, ["sh", "-c", "echo hi; echo oops >&2"]) == 0
        await pio.wait(timeout=5)
        assert await out.read_all() == b"hi\n"
        assert await err.read_all() == b"oops\n"
    finally:
        await pio.close()


async def test_open_does_not_block_without_client(reaper: Reaper, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "out")
    os.mkfifo(tmp_path / "in")
    pio = await asyncio.wait_for(open_stdio(
        stdin=str(tmp_path / "in"), stdout=str(tmp_path / "out"), stderr="",
        terminal=False, id="c1", namespace="ns", reaper=reaper), 5)
    try:
        assert pio.child_stdio()[2] is None
        # the client attaches after the shim opened the FIFO, before the output
        fd = os.open(tmp_path / "out", os.O_RDONLY | os.O_NONBLOCK)
        child_fds = [subprocess_fd(fd) for fd in pio.child_stdio()]
        child = await reaper.spawn(["sh", "-c", "echo late"], stdin=child_fds[0],
                                   stdout=child_fds[1], stderr=child_fds[2])
        pio.close_after_start()
        pio.start_copying()   # the runtime succeeded
        await child.wait()
        await pio.close_stdin()
        await pio.wait(timeout=5)
        assert os.read(fd, 100) == b"late\n"
        os.close(fd)
    finally:
        await pio.close()


async def test_large_output(reaper: Reaper, tmp_path: Path) -> None:
    out = Reader(tmp_path / "out")
    pio = await open_stdio(stdin="", stdout=str(tmp_path / "out"), stderr="",
                           terminal=False, id="c1", namespace="ns", reaper=reaper)
    try:
        reading = asyncio.ensure_future(out.read_all(30))
        assert await run(reaper, pio, ["head", "-c", "20000000", "/dev/zero"]) == 0
        await pio.wait(timeout=30)
        assert len(await reading) == 20_000_000
    finally:
        await pio.close()


async def test_stdin_and_close_io(reaper: Reaper, tmp_path: Path) -> None:
    out = Reader(tmp_path / "out")
    os.mkfifo(tmp_path / "in")
    pio = await open_stdio(stdin=str(tmp_path / "in"), stdout=str(tmp_path / "out"), stderr="",
                           terminal=False, id="c1", namespace="ns", reaper=reaper)
    try:
        fds = [subprocess_fd(fd) for fd in pio.child_stdio()]
        child = await reaper.spawn(["cat"], stdin=fds[0], stdout=fds[1], stderr=fds[2])
        pio.close_after_start()
        pio.start_copying()   # the runtime succeeded
        w = os.open(tmp_path / "in", os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b"one\n")
        os.close(w)                     # the client goes away: cat must not see EOF yet
        await asyncio.sleep(0.3)
        assert child.returncode is None
        assert pio.stdin_open
        await pio.close_stdin()
        assert not pio.stdin_open
        assert await asyncio.wait_for(child.wait(), 5) == 0
        await pio.wait(timeout=5)
        assert await out.read_all() == b"one\n"
    finally:
        await pio.close()


async def test_file_uri(reaper: Reaper, tmp_path: Path) -> None:
    log = tmp_path / "deep" / "dir" / "c1.log"
    log.parent.mkdir(parents=True)
    log.write_text("before\n")
    uri = f"file://{log}"
    pio = await open_stdio(stdin="", stdout=uri, stderr=uri, terminal=False, id="c1",
                           namespace="ns", reaper=reaper)
    try:
        assert await run(reaper, pio, ["sh", "-c", "echo hi; echo err >&2"]) == 0
        await pio.wait(timeout=5)
    finally:
        await pio.close()
    lines = log.read_text().splitlines()
    assert lines[0] == "before" and sorted(lines[1:]) == ["err", "hi"]
    # the parent directories are created
    log2 = tmp_path / "new" / "x.log"
    pio = await open_stdio(stdin="", stdout=f"file://{log2}", stderr="", terminal=False,
                           id="c1", namespace="ns", reaper=reaper)
    await pio.close()
    assert stat.S_IMODE(log2.stat().st_mode) & 0o644 == 0o644


async def test_null(reaper: Reaper) -> None:
    pio = await open_stdio(stdin="", stdout="", stderr="", terminal=False, id="c1",
                           namespace="ns", reaper=reaper)
    assert pio.child_stdio() == (None, None, None)
    assert await run(reaper, pio, ["sh", "-c", "echo discarded"]) == 0
    await pio.wait(timeout=1)
    await pio.close()


async def test_unknown_scheme(reaper: Reaper) -> None:
    with pytest.raises(errors.InvalidArgument):
        await open_stdio(stdin="", stdout="gopher://x", stderr="", terminal=False, id="c1",
                         namespace="ns", reaper=reaper)


async def test_wait_timeout(reaper: Reaper, tmp_path: Path) -> None:
    out = Reader(tmp_path / "out")
    pio = await open_stdio(stdin="", stdout=str(tmp_path / "out"), stderr="",
                           terminal=False, id="c1", namespace="ns", reaper=reaper)
    fds = [subprocess_fd(fd) for fd in pio.child_stdio()]
    child = await reaper.spawn(["sleep", "30"], stdin=fds[0], stdout=fds[1], stderr=fds[2])
    pio.close_after_start()
    pio.start_copying()   # the runtime succeeded
    try:
        with pytest.raises(TimeoutError):
            await pio.wait(timeout=0.2)
    finally:
        child.kill()
        await child.wait()
        await pio.wait(timeout=5)
        await pio.close()
        await out.read_all(1)


def test_logger_argv() -> None:
    assert logger_argv("binary:///usr/bin/logger?--tag=x&-v&--tag=y") == \
        ["/usr/bin/logger", "--tag", "x", "-v", ""]
    assert logger_argv("binary:///opt/my%20logger") == ["/opt/my logger"]


LOGGER = """#!/bin/sh
echo "$CONTAINER_ID $CONTAINER_NAMESPACE $# $1 $3" > "$1.env"
env | grep -c . > "$1.envcount"
cat <&3 5>&- > "$1.out" &
cat <&4 5>&- > "$1.err" &
exec 5>&-
wait
"""


async def test_binary_logger(reaper: Reaper, tmp_path: Path) -> None:
    logger = tmp_path / "logger.sh"
    logger.write_text(LOGGER)
    logger.chmod(0o755)
    base = tmp_path / "c1"
    uri = f"binary://{logger}?{base}=&--flag=v"
    pio = await asyncio.wait_for(open_stdio(stdin="", stdout=uri, stderr=uri, terminal=False,
                                            id="c1", namespace="ns1", reaper=reaper), 10)
    try:
        assert pio.scheme == "binary"
        # ready: the env file was written before fd 5 was closed
        assert (tmp_path / "c1.env").read_text() == f"c1 ns1 4 {base} --flag\n"
        assert await run(reaper, pio, ["sh", "-c", "echo to-log; echo to-err >&2"]) == 0
        await pio.wait(timeout=5)
        for _ in range(200):
            if (tmp_path / "c1.out").read_bytes() and (tmp_path / "c1.err").read_bytes():
                break
            await asyncio.sleep(0.02)
        assert (tmp_path / "c1.out").read_text() == "to-log\n"
        assert (tmp_path / "c1.err").read_text() == "to-err\n"
        logger_child = pio._logger
        assert logger_child is not None
    finally:
        await pio.close()
    assert logger_child.returncode is not None


async def test_binary_v2_logger_must_signal_ready(reaper: Reaper, tmp_path: Path) -> None:
    logger = tmp_path / "lazy.sh"
    logger.write_text("#!/bin/sh\nexec 5>&-\nsleep 0.1\n")
    logger.chmod(0o755)
    with pytest.raises(errors.FailedPrecondition):
        await open_stdio(stdin="", stdout=f"binary-v2://{logger}", stderr="", terminal=False,
                         id="c1", namespace="ns", reaper=reaper)
    logger.write_text("#!/bin/sh\nprintf x >&5\nexec 5>&-\ncat <&3 >/dev/null\n")
    pio = await open_stdio(stdin="", stdout=f"binary-v2://{logger}", stderr="", terminal=False,
                           id="c1", namespace="ns", reaper=reaper)
    await pio.close()
    with pytest.raises(errors.FailedPrecondition):
        await open_stdio(stdin="", stdout="binary:///nonexistent/logger", stderr="",
                         terminal=False, id="c1", namespace="ns", reaper=reaper)


async def test_tty_copy_and_resize(reaper: Reaper, tmp_path: Path) -> None:
    out = Reader(tmp_path / "out")
    os.mkfifo(tmp_path / "in")
    pio = await open_stdio(stdin=str(tmp_path / "in"), stdout=str(tmp_path / "out"), stderr="",
                           terminal=True, id="c1", namespace="ns", reaper=reaper)
    master, slave = os.openpty()
    try:
        assert pio.child_stdio() == (None, None, None)
        with pytest.raises(errors.FailedPrecondition):
            pio.resize(80, 24)
        await pio.attach_console(master)
        pio.resize(120, 40)
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))
        assert (rows, cols) == (40, 120)
        # stdin FIFO -> master -> the slave's line discipline
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        w = os.open(tmp_path / "in", os.O_WRONLY | os.O_NONBLOCK)
        os.write(w, b"typed\n")
        os.close(w)
        loop = asyncio.get_running_loop()
        got = await loop.run_in_executor(None, os.read, slave, 100)
        assert got == b"typed\n"
        os.write(slave, b"from tty\n")
        os.close(slave)
        slave = -1
        await pio.wait(timeout=5)
        assert await out.read_all() == b"from tty\r\n"
    finally:
        if slave >= 0:
            os.close(slave)
        await pio.close()


async def test_console_socket(tmp_path: Path) -> None:
    sock = await ConsoleSocket.create(str(tmp_path))
    assert stat.S_ISSOCK(os.stat(sock.path).st_mode)
    master, slave = os.openpty()
    try:
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(sock.path)     # the backlog takes it before receive_master runs
        socket.send_fds(peer, [b"/dev/pts/99"], [master])
        peer.close()
        got = await asyncio.wait_for(sock.receive_master(), 5)
        assert sock.name == "/dev/pts/99"
        assert os.fstat(got).st_rdev == os.fstat(master).st_rdev
        assert not os.get_inheritable(got)
        os.close(got)
    finally:
        sock.close()
        os.close(master)
        os.close(slave)
    assert not os.path.exists(sock.path)

    tmp = await ConsoleSocket.create()
    d = os.path.dirname(tmp.path)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(tmp.path)
    peer.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(tmp.receive_master(), 5)
    tmp.close()
    assert not os.path.exists(d)
