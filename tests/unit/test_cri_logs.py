"""CRI log writer (cri/logger.py): format, line splitting, rotation, the binary logger
process (fd 3/4/5 protocol), and the in-shim fast path of runtimes/aiorunc/stdio.py."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import random
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontainerd.cri import logger as crilog
from aiocontainerd.runtimes.aiorunc.reaper import DEVNULL, Reaper
from aiocontainerd.runtimes.aiorunc.stdio import ProcessIO, open_stdio
from tests.support import imports, shim

RECORD = re.compile(rb"^(\S+) (stdout|stderr) ([PF]) (.*)$", re.S)
SCRIPT = str(Path(sys.executable).with_name(crilog.SCRIPT))


def records(path: Path) -> list[tuple[str, str, bytes]]:
    """(stream, tag, content) of every record; checks each timestamp parses as RFC3339Nano UTC."""
    out = []
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    for line in data.split(b"\n")[:-1]:
        m = RECORD.match(line)
        assert m, line
        parse_ts(m.group(1).decode())
        out.append((m.group(2).decode(), m.group(3).decode(), m.group(4)))
    return out


def parse_ts(ts: str) -> datetime.datetime:
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z", ts)
    assert m, ts
    assert not (m.group(2) or "1").endswith("0"), ts    # Go trims trailing zeros
    frac = (m.group(2) or "").ljust(6, "0")[:6]
    return datetime.datetime.fromisoformat(f"{m.group(1)}.{frac}+00:00")


def write(tmp_path: Path, chunks: list[bytes], max_line: int, stream: str = "stdout",
          eof: bool = True) -> list[tuple[str, str, bytes]]:
    path = tmp_path / "c.log"
    if path.exists():
        path.unlink()
    f = crilog.LogFile(str(path))
    w = crilog.StreamWriter(f, stream, max_line)
    for c in chunks:
        w.feed(c)
    if eof:
        w.close()
    else:
        f.close()
    return records(path)


def test_format_timestamp() -> None:
    assert crilog.format_timestamp(1_700_000_000_000_000_000) == b"2023-11-14T22:13:20Z"
    assert crilog.format_timestamp(1_700_000_000_120_000_000) == b"2023-11-14T22:13:20.12Z"
    assert crilog.format_timestamp(1_700_000_000_000_000_001) == b"2023-11-14T22:13:20.000000001Z"
    now = time.time_ns()
    got = parse_ts(crilog.format_timestamp(now).decode())
    assert abs(got.timestamp() - now / 1e9) < 1e-5


def test_full_lines_crlf_and_empty(tmp_path: Path) -> None:
    assert write(tmp_path, [b"hello\nworld\r\n\n"], 16384) == [
        ("stdout", "F", b"hello"), ("stdout", "F", b"world"), ("stdout", "F", b"")]
    # a lone \r is content; only the one right before \n goes
    assert write(tmp_path, [b"a\rb\r\r\n"], 16384, "stderr") == [("stderr", "F", b"a\rb\r")]


def test_trailing_partial_at_eof(tmp_path: Path) -> None:
    assert write(tmp_path, [b"one\ntw", b"o"], 16384) == [("stdout", "F", b"one"), ("stdout", "P", b"two")]
    # nothing pending: nothing written at EOF; a pending "\r" at EOF is content
    assert write(tmp_path, [b"x\n"], 16384) == [("stdout", "F", b"x")]
    assert write(tmp_path, [b"x\r"], 16384) == [("stdout", "P", b"x\r")]
    # not at EOF yet: an unfinished line waits
    assert write(tmp_path, [b"x\nunfinished"], 16384, eof=False) == [("stdout", "F", b"x")]


def test_split_at_max_line(tmp_path: Path) -> None:
    assert write(tmp_path, [b"abcdefghij\n"], 4) == [
        ("stdout", "P", b"abcd"), ("stdout", "P", b"efgh"), ("stdout", "F", b"ij")]
    # exactly k * max_line: the last full-size piece is F
    assert write(tmp_path, [b"abcdefgh\n"], 4) == [("stdout", "P", b"abcd"), ("stdout", "F", b"efgh")]
    assert write(tmp_path, [b"abcd\n"], 4) == [("stdout", "F", b"abcd")]
    # \r\n straddling the limit is still a line end (as containerd's readLine)
    assert write(tmp_path, [b"abcd\r", b"\n"], 4) == [("stdout", "F", b"abcd")]
    assert write(tmp_path, [b"abcde\r", b"\n"], 4) == [("stdout", "P", b"abcd"), ("stdout", "F", b"e")]
    # long partial line at EOF: all P
    assert write(tmp_path, [b"abcdefgh"], 4) == [("stdout", "P", b"abcd"), ("stdout", "P", b"efgh")]
    # pieces are written as soon as max_line is exceeded, before the newline
    assert write(tmp_path, [b"abcdefghi"], 4, eof=False) == [
        ("stdout", "P", b"abcd"), ("stdout", "P", b"efgh")]


def test_default_limit_16k(tmp_path: Path) -> None:
    line = os.urandom(20000).hex().encode()[:40000]
    got = write(tmp_path, [line + b"\n"], crilog.DEFAULT_MAX_LINE)
    assert [(s, t, len(c)) for s, t, c in got] == [
        ("stdout", "P", 16384), ("stdout", "P", 16384), ("stdout", "F", 40000 - 32768)]
    assert b"".join(c for _, _, c in got) == line


@pytest.mark.parametrize("max_line", [-1, 0])
def test_no_limit(tmp_path: Path, max_line: int) -> None:
    line = b"x" * 100_000
    assert write(tmp_path, [line[:30000], line[30000:] + b"\nend"], max_line) == [
        ("stdout", "F", line), ("stdout", "P", b"end")]


def test_chunking_does_not_matter(tmp_path: Path) -> None:
    rnd = random.Random(7)
    data = b"".join(rnd.choice([b"a", b"b", b"\r", b"\n", b"\r\n", b"xyz" * 5]) for _ in range(3000))
    whole = write(tmp_path, [data], 7)
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, len(data)), 200))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert write(tmp_path, chunks, 7) == whole
    # and the content round-trips: P pieces joined, F ends a line
    lines, cur = [], b""
    for _, tag, content in whole:
        cur += content
        if tag == "F":
            lines.append(cur)
            cur = b""
    *full, trailing = data.split(b"\n")
    assert lines == [ln[:-1] if ln.endswith(b"\r") else ln for ln in full]
    assert cur == trailing


def test_both_streams_one_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "c.log"
    f = crilog.LogFile(str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 & ~_umask()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755 & ~_umask()
    out, err = crilog.StreamWriter(f, "stdout", 16), crilog.StreamWriter(f, "stderr", 16)
    out.feed(b"o1\no2")
    err.feed(b"e1\n")
    out.feed(b"\n")
    err.feed(b"e2")
    out.close()
    assert f.fd >= 0        # stderr still open
    err.close()
    assert f.fd == -1
    assert records(path) == [("stdout", "F", b"o1"), ("stderr", "F", b"e1"), ("stdout", "F", b"o2"),
                             ("stderr", "P", b"e2")]
    with pytest.raises(ValueError):
        crilog.StreamWriter(f, "stdin")


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_reopen_after_rename(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    f = crilog.LogFile(str(path))
    w = crilog.StreamWriter(f, "stdout", 100)
    w.feed(b"before\n")
    os.rename(path, tmp_path / "c.log.1")
    crilog.reopen_log(str(path))            # what ReopenContainerLog does
    assert path.exists() and path.stat().st_size == 0
    w.feed(b"after\n")
    # renamed away, not recreated: the writer creates it
    os.rename(path, tmp_path / "c.log.2")
    w.feed(b"third\n")
    # replaced by another file (made by someone else)
    os.rename(path, tmp_path / "c.log.3")
    path.write_bytes(b"")
    w.feed(b"fourth\n")
    # forced reopen (SIGUSR1's job) keeps writing to the same path
    crilog.reopen_all()
    w.close()
    assert [c for *_, c in records(tmp_path / "c.log.1")] == [b"before"]
    assert [c for *_, c in records(tmp_path / "c.log.2")] == [b"after"]
    assert [c for *_, c in records(tmp_path / "c.log.3")] == [b"third"]
    assert [c for *_, c in records(path)] == [b"fourth"]


def test_folder_gone_keeps_old_file(tmp_path: Path) -> None:
    d = tmp_path / "pod"
    f = crilog.LogFile(str(d / "c.log"))
    w = crilog.StreamWriter(f, "stdout", 100)
    os.rename(d, tmp_path / "moved")
    w.feed(b"still\n")
    w.close()
    assert not d.exists()
    assert [c for *_, c in records(tmp_path / "moved" / "c.log")] == [b"still"]


def test_parse_args_and_uri(tmp_path: Path) -> None:
    assert crilog.parse_args(["max_line", "12", "path", "/x/y.log"]) == ("/x/y.log", 12)
    assert crilog.parse_args(["--path=/a", "--max_line", "-1"]) == ("/a", -1)
    assert crilog.parse_args(["path", "/a"]) == ("/a", crilog.DEFAULT_MAX_LINE)
    with pytest.raises(ValueError):
        crilog.parse_args(["max_line", "1"])
    with pytest.raises(ValueError):
        crilog.parse_args(["path", "/a", "max_line", "x"])
    uri = crilog.log_uri("/var/log/pods/a b/c&d/0.log", max_line=-1)
    assert uri.startswith("binary:///") and crilog.is_cri_logger(uri.split("?")[0])
    from aiocontainerd.runtimes.aiorunc.stdio import logger_argv
    argv = logger_argv(uri)
    assert os.access(argv[0], os.X_OK)
    assert crilog.parse_args(argv[1:]) == ("/var/log/pods/a b/c&d/0.log", -1)
    with pytest.raises(ValueError):
        crilog.log_uri("relative.log")


def test_imports_stay_small() -> None:
    """The writer and the shim's stdio import nothing heavy (the shim must stay small)."""
    bad = imports.loaded("import aiocontainerd.cri.logger, aiocontainerd.runtimes.aiorunc.stdio",
                         ("grpclib", "aiohttp", "lmdb", "prometheus_client", "pyroute2",
                          "aiocontainerd.services", "aiocontainerd.metadata", "aiocontainerd.cri.plugin",
                          "aiocontainerd.api.runtime"))
    assert bad == []


# -- the standalone logger (fd 3/4/5 protocol) ---------------------------------------------

def spawn_logger(args: list[str], env: dict[str, str]) -> tuple[int, int, int, int]:
    """Start the script as a shim does; returns (pid, stdout write fd, stderr write fd, ready fd)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    ready_r, ready_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, out_r, 3), (os.POSIX_SPAWN_DUP2, err_r, 4),
               (os.POSIX_SPAWN_DUP2, ready_w, 5)]
    pid = os.posix_spawn(SCRIPT, [SCRIPT, *args], env, file_actions=actions)
    for fd in (out_r, err_r, ready_w):
        os.close(fd)
    return pid, out_w, err_w, ready_r


def wait_ready(ready_r: int) -> bytes:
    data = os.read(ready_r, 1)       # a byte (binary-v2 readiness) or EOF
    os.close(ready_r)
    return data


def wait_pid(pid: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("logger did not exit")


def wait_for(pred, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Logger:
    """A logger process started by ``spawn_logger`` and the test's ends of its pipes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.pid, self.out_w, self.err_w, self.ready = spawn_logger(args, env)

    def wait(self) -> int:
        """The logger's exit code (its pipes left as they are)."""
        pid, self.pid = self.pid, -1
        return wait_pid(pid)

    def close_and_wait(self) -> int:
        """Close both output pipes (EOF for the logger) and return its exit code."""
        self._close_pipes()
        return self.wait()

    def _close_pipes(self) -> None:
        for fd in (self.out_w, self.err_w):
            if fd >= 0:
                os.close(fd)
        self.out_w = self.err_w = -1

    def kill(self) -> None:
        self._close_pipes()
        if self.pid > 0:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = -1


@contextlib.contextmanager
def running_logger(args: list[str], env: dict[str, str]) -> Iterator[Logger]:
    """A logger process, killed (and its pipes closed) if the block did not wait for it."""
    logger = Logger(args, env)
    try:
        yield logger
    finally:
        logger.kill()


def test_logger_process(tmp_path: Path) -> None:
    path = tmp_path / "pods" / "c.log"
    with running_logger(["max_line", "5", "path", str(path)],
                        {"CONTAINER_ID": "c1", "CONTAINER_NAMESPACE": "k8s.io"}) as logger:
        assert wait_ready(logger.ready) == b"\0"
        assert path.exists()
        os.write(logger.out_w, b"hello world\n")
        wait_for(lambda: len(records(path)) == 3)
        os.write(logger.err_w, b"oops\n")
        wait_for(lambda: len(records(path)) == 4)
        # rotation: rename + SIGUSR1 -> new file at once
        os.rename(path, tmp_path / "old.log")
        os.kill(logger.pid, signal.SIGUSR1)
        wait_for(path.exists)
        os.write(logger.out_w, b"new\nlast")
        assert logger.close_and_wait() == 0
    assert records(tmp_path / "old.log") == [
        ("stdout", "P", b"hello"), ("stdout", "P", b" worl"), ("stdout", "F", b"d"), ("stderr", "F", b"oops")]
    assert records(path) == [("stdout", "F", b"new"), ("stdout", "P", b"last")]


def test_logger_writes_a_waiting_partial_line(tmp_path: Path) -> None:
    # attach follows the log: a prompt or `echo -n` output must appear without its newline
    path = tmp_path / "c.log"
    with running_logger(["path", str(path)], {"CONTAINER_ID": "c1"}) as logger:
        assert wait_ready(logger.ready) == b"\0"
        os.write(logger.out_w, b"hello")
        wait_for(lambda: records(path) == [("stdout", "P", b"hello")], timeout=5)
        os.write(logger.out_w, b" world\n")
        wait_for(lambda: len(records(path)) == 2, timeout=5)
        assert logger.close_and_wait() == 0
    assert records(path) == [("stdout", "P", b"hello"), ("stdout", "F", b" world")]


def test_logger_sigterm_drains(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    with running_logger(["path", str(path)], {}) as logger:
        assert wait_ready(logger.ready) == b"\0"
        os.write(logger.out_w, b"a\nb\npartial")
        os.kill(logger.pid, signal.SIGTERM)     # pipes still open (a grandchild holds them): exit anyway
        assert logger.wait() == 0
    assert records(path) == [("stdout", "F", b"a"), ("stdout", "F", b"b"), ("stdout", "P", b"partial")]


def test_logger_bad_args_and_unwritable(tmp_path: Path) -> None:
    r = subprocess.run([SCRIPT, "max_line", "3"], capture_output=True, text=True)
    assert r.returncode == 2 and "no log path" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with running_logger(["path", str(blocker / "c.log")], {}) as logger:
        assert wait_ready(logger.ready) == b""       # not ready: binary-v2 start fails
        assert logger.wait() == 1


# -- the shim's in-process fast path -------------------------------------------------------

reaper = shim.reaper   # the fixture


async def run(reaper: Reaper, pio: ProcessIO, argv: list[str]) -> int:
    fds = [DEVNULL if fd is None else fd for fd in pio.child_stdio()]
    child = await reaper.spawn(argv, stdin=fds[0], stdout=fds[1], stderr=fds[2])
    pio.close_after_start()
    pio.start_copying()   # the runtime succeeded
    return await asyncio.wait_for(child.wait(), 20)


async def test_shim_fast_path(reaper: Reaper, tmp_path: Path) -> None:
    path = tmp_path / "pods" / "c.log"
    uri = crilog.log_uri(str(path), max_line=8)
    spawned: list[object] = []
    orig = reaper.spawn

    async def spy(argv, **kw):
        spawned.append(argv)
        return await orig(argv, **kw)

    reaper.spawn = spy  # type: ignore[method-assign]
    pio = await open_stdio(stdin="", stdout=uri, stderr=uri, terminal=False, id="c1",
                           namespace="k8s.io", reaper=reaper)
    try:
        assert spawned == []                  # no logger process
        reaper.spawn = orig  # type: ignore[method-assign]
        assert path.exists()
        assert await run(reaper, pio, ["sh", "-c", "echo hello world; echo err >&2; printf tail"]) == 0
        await pio.wait(timeout=5)
    finally:
        await pio.close()
    got = records(path)
    assert [r for r in got if r[0] == "stdout"] == [
        ("stdout", "P", b"hello wo"), ("stdout", "F", b"rld"), ("stdout", "P", b"tail")]
    assert [r for r in got if r[0] == "stderr"] == [("stderr", "F", b"err")]


async def test_shim_fast_path_writes_a_waiting_partial_line(reaper: Reaper, tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    uri = crilog.log_uri(str(path))
    pio = await open_stdio(stdin="", stdout=uri, stderr=uri, terminal=False, id="c1",
                           namespace="k8s.io", reaper=reaper)
    try:
        child = asyncio.ensure_future(run(reaper, pio, ["sh", "-c", "printf prompt; sleep 1; echo"]))
        await asyncio.sleep(0.5)   # 5x the flush delay, half a second before the newline
        assert records(path) == [("stdout", "P", b"prompt")]
        assert await child == 0
        await pio.wait(timeout=5)
    finally:
        await pio.close()
    assert records(path) == [("stdout", "P", b"prompt"), ("stdout", "F", b"")]


async def through_console(reaper: Reaper, uri: str, data: bytes) -> None:
    """Opens a terminal stdio with stdout ``uri``, writes ``data`` on the console's slave side,
    closes it and waits for the copy to finish."""
    pio = await open_stdio(stdin="", stdout=uri, stderr="", terminal=True, id="c1",
                           namespace="k8s.io", reaper=reaper)
    master, slave = os.openpty()
    try:
        await pio.attach_console(master)
        os.write(slave, data)
        os.close(slave)
        slave = -1
        await pio.wait(timeout=5)
    finally:
        if slave >= 0:
            os.close(slave)
        await pio.close()


async def test_shim_fast_path_terminal(reaper: Reaper, tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    uri = crilog.log_uri(str(path))
    await through_console(reaper, uri, b"from tty\n")
    assert records(path) == [("stdout", "F", b"from tty")]


async def test_shim_binary_logger_with_terminal(reaper: Reaper, tmp_path: Path) -> None:
    """A real logger process behind a console (Go's shim supports it too)."""
    path = tmp_path / "c.log"
    link = tmp_path / "other-logger"     # another name: no fast path
    os.symlink(SCRIPT, link)
    uri = f"binary://{link}?path={path}"
    await through_console(reaper, uri, b"via logger\n")
    assert records(path) == [("stdout", "F", b"via logger")]


async def test_shim_fast_path_bad_path(reaper: Reaper, tmp_path: Path) -> None:
    from aiocontainerd import errors
    (tmp_path / "file").write_bytes(b"")
    uri = crilog.log_uri(str(tmp_path / "file" / "c.log"))
    with pytest.raises(errors.FailedPrecondition):
        await open_stdio(stdin="", stdout=uri, stderr=uri, terminal=False, id="c1",
                         namespace="k8s.io", reaper=reaper)
