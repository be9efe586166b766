"""Unit tests of the CRI container pieces that need no daemon: exec over FIFOs (a fake task
whose processes are real ``sh`` children writing to the FIFOs, as a shim would), ExecSync's
cap and timeout with a background child holding the pipes, the CRI log copier and follower,
port-forward pumping, resources and signal conversions."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from aiocontainerd.api.runtime import v1 as api
from aiocontainerd.cri import container as ct
from aiocontainerd.cri import exec as ex
from aiocontainerd.errors import DeadlineExceeded, InvalidArgument, NotFound
from aiocontainerd.runtimes.v2.manager import Exit


class FakeTask:
    """A task whose exec processes are local ``sh`` children with the FIFOs as stdio (shim-like:
    the FIFOs are opened during ``exec``, the child runs at ``start``)."""

    def __init__(self) -> None:
        self.procs: dict[str, dict] = {}
        self.deleted: list[str] = []
        self.killed: list[tuple[str, int]] = []
        self.resized: list[tuple[int, int]] = []
        self.closed_io: list[str] = []

    async def exec(self, exec_id, *, spec, stdin="", stdout="", stderr="", terminal=False):
        process = json.loads(spec.value)
        fds = {}
        if stdin:
            fds["stdin"] = os.open(stdin, os.O_RDONLY | os.O_NONBLOCK)
            os.set_blocking(fds["stdin"], True)
        for name, path in (("stdout", stdout), ("stderr", stderr)):
            if path:
                fds[name] = os.open(path, os.O_WRONLY)
        self.procs[exec_id] = {"spec": process, "fds": fds, "proc": None, "started": asyncio.Event()}

    async def start(self, exec_id=""):
        p = self.procs[exec_id]
        fds = p["fds"]
        proc = await asyncio.create_subprocess_exec(
            *p["spec"]["args"], stdin=fds.get("stdin", asyncio.subprocess.DEVNULL),
            stdout=fds.get("stdout", asyncio.subprocess.DEVNULL),
            stderr=fds.get("stderr", asyncio.subprocess.DEVNULL), start_new_session=True)
        for fd in fds.values():
            os.close(fd)
        p["proc"] = proc
        p["started"].set()
        return proc.pid

    async def wait(self, exec_id=""):
        p = self.procs[exec_id]
        await p["started"].wait()
        rc = await p["proc"].wait()
        return Exit(rc if rc >= 0 else 128 - rc, time.time_ns())

    async def kill(self, sig, *, exec_id="", all=False):
        self.killed.append((exec_id, sig))
        proc = self.procs[exec_id]["proc"]
        if proc.returncode is None:
            proc.send_signal(sig)

    async def delete_process(self, exec_id):
        self.deleted.append(exec_id)
        p = self.procs.pop(exec_id, None)
        if p is None:
            raise NotFound(exec_id)
        return Exit(p["proc"].returncode or 0, time.time_ns())

    async def resize_pty(self, width, height, exec_id=""):
        self.resized.append((width, height))

    async def close_io(self, exec_id=""):
        self.closed_io.append(exec_id)


async def test_exec_output_and_exit_code(tmp_path: Path) -> None:
    task = FakeTask()
    out, err = ex.CappedBuffer(1 << 20), ex.CappedBuffer(1 << 20)
    code = await ex.run_exec(task, {"args": ["x"], "env": ["A=1"]},
                             ["sh", "-c", "echo hello; echo oops >&2; exit 3"], fifo_root=str(tmp_path),
                             stdout=out.write, stderr=err.write)
    assert code == 3
    assert out.getvalue() == b"hello\n" and err.getvalue() == b"oops\n"
    assert len(task.deleted) == 1 and not task.procs
    assert os.listdir(tmp_path) == []     # FIFO folder removed


async def test_exec_caps_output(tmp_path: Path) -> None:
    task = FakeTask()
    out = ex.CappedBuffer(1000)
    code = await ex.run_exec(task, {}, ["sh", "-c", "head -c 200000 /dev/zero"], fifo_root=str(tmp_path),
                             stdout=out.write)
    assert code == 0 and out.getvalue() == b"\0" * 1000 and out.full


async def test_exec_timeout_with_background_child_holding_pipes(tmp_path: Path) -> None:
    task = FakeTask()
    out = ex.CappedBuffer(1 << 20)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await ex.run_exec(task, {}, ["sh", "-c", "sleep 30 & echo started; sleep 30"],
                          fifo_root=str(tmp_path), stdout=out.write, timeout=1, drain_timeout=0.3)
    assert time.monotonic() - start < 5
    assert out.getvalue() == b"started\n"
    assert task.killed and task.killed[0][1] == signal.SIGKILL
    assert len(task.deleted) == 1



async def test_exec_exit_with_background_child_drain_timeout(tmp_path: Path) -> None:
    """The process exits but a child keeps stdout open: stop reading after the drain timeout."""
    task = FakeTask()
    out = ex.CappedBuffer(1 << 20)
    start = time.monotonic()
    code = await ex.run_exec(task, {}, ["sh", "-c", "(sleep 5; echo late) & echo now"],
                             fifo_root=str(tmp_path), stdout=out.write, drain_timeout=0.5)
    assert code == 0 and out.getvalue() == b"now\n"
    assert time.monotonic() - start < 3


async def test_exec_stdin_and_close_io(tmp_path: Path) -> None:
    task = FakeTask()
    reader = asyncio.StreamReader()
    reader.feed_data(b"abc\n")
    reader.feed_eof()
    out = ex.CappedBuffer(100)
    code = await ex.run_exec(task, {}, ["cat"], fifo_root=str(tmp_path), stdin=reader, stdout=out.write)
    assert code == 0 and out.getvalue() == b"abc\n"
    assert len(task.closed_io) == 1


def test_exec_process_spec() -> None:
    anyspec = ex.exec_process_spec({"args": ["a"], "commandLine": "x", "env": ["TERM=dumb", "A=1"]},
                                   ["ls", "-l"], tty=True)
    assert anyspec.type_url == ex.PROCESS_SPEC_TYPE_URL
    p = json.loads(anyspec.value)
    assert p["args"] == ["ls", "-l"] and p["terminal"] is True and "commandLine" not in p
    assert p["env"] == ["A=1", "TERM=xterm"]
    assert json.loads(ex.exec_process_spec({}, ["x"], tty=False).value)["terminal"] is False


def test_resources_roundtrip() -> None:
    r = api.LinuxContainerResources(cpu_period=100000, cpu_quota=50000, cpu_shares=512,
                                    memory_limit_in_bytes=64 << 20, cpuset_cpus="0", unified={"a": "b"})
    oci = ct.oci_resources(r, {"devices": [{"allow": False}], "cpu": {"shares": 2}})
    assert oci["cpu"] == {"shares": 512, "period": 100000, "quota": 50000, "cpus": "0"}
    assert oci["memory"] == {"limit": 64 << 20} and oci["devices"] == [{"allow": False}]
    back = ct.cri_resources(oci, 5)
    assert back.cpu_quota == 50000 and back.memory_limit_in_bytes == 64 << 20 and back.oom_score_adj == 5
    assert ct.oci_resources(api.LinuxContainerResources(), {}) == {}


def test_signals() -> None:
    assert ct.cri_signal_name(api.Signal.RUNTIME_DEFAULT) == ""
    assert ct.cri_signal_name(api.Signal.SIGUSR1) == "SIGUSR1"
    assert ct._parse_signal("SIGQUIT") == signal.SIGQUIT
    assert ct._parse_signal("term") == signal.SIGTERM
    assert ct._parse_signal("9") == 9
    with pytest.raises(InvalidArgument):
        ct._parse_signal("SIGNOPE")


def test_rfc3339_nano() -> None:
    text = ct.rfc3339_nano(1_700_000_000_120_000_000)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.12(Z|[+-]\d\d:\d\d)", text), text
    assert "." not in ct.rfc3339_nano(1_700_000_000_000_000_000)


async def test_log_copier_writes_cri_format(tmp_path: Path) -> None:
    fifos = ex.FifoSet.create(str(tmp_path / "io"), stdin=False)
    fifos.open_outputs()
    w_out = os.open(fifos.stdout, os.O_WRONLY)
    w_err = os.open(fifos.stderr, os.O_WRONLY)
    fifos.shim_opened()
    log_path = tmp_path / "logs" / "0.log"
    copier = ct.CRILogCopier(str(log_path), 8)
    copier.open()
    copier.start(fifos, tty=False)
    os.write(w_out, b"hello\nabcdefghijkl\ntail")
    os.close(w_out)
    os.write(w_err, b"err\n")
    os.close(w_err)
    await asyncio.wait_for(copier.wait(), 5)
    await copier.close()
    fifos.close()
    lines = log_path.read_bytes().decode().splitlines()
    parsed = [line.split(" ", 3)[1:] for line in lines]
    assert ["stdout", "F", "hello"] in parsed
    assert ["stdout", "P", "abcdefgh"] in parsed and ["stdout", "F", "ijkl"] in parsed
    assert ["stdout", "P", "tail"] in parsed and ["stderr", "F", "err"] in parsed


def test_log_follower(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_text("2024-01-01T00:00:00Z stdout F old\n")
    f = ex.LogFollower(str(path))
    f.open_at_end()
    with path.open("a") as fh:
        fh.write("2024-01-01T00:00:01Z stdout P par\n2024-01-01T00:00:01Z stdout F tial\n"
                 "2024-01-01T00:00:02Z stderr F e\n2024-01-01T00:00:03Z stdout F inc")
    assert f.read_available() == [("stdout", b"par"), ("stdout", b"tial\n"), ("stderr", b"e\n")]
    with path.open("a") as fh:
        fh.write("omplete\n")
    assert f.read_available() == [("stdout", b"incomplete\n")]
    path.rename(tmp_path / "c.log.1")         # rotation: the new file is followed from its start
    path.write_text("2024-01-01T00:00:04Z stdout F new\n")
    assert f.read_available() == [("stdout", b"new\n")]
    f.close()


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    async def wait_closed(self) -> None:
        pass


async def test_port_forward_pump() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.read()          # until the client half-closes
        w.write(data.upper())
        await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sock = await ex.connect_in_netns("", port)
        reader = asyncio.StreamReader()
        reader.feed_data(b"ping")
        reader.feed_eof()
        writer = _Writer()
        await asyncio.wait_for(ex.pump_socket(sock, (reader, writer)), 5)
        sock.close()
        assert bytes(writer.data) == b"PING" and writer.closed
    finally:
        server.close()
        await server.wait_closed()


async def test_port_forward_refused() -> None:
    s = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = s.sockets[0].getsockname()[1]
    s.close()
    await s.wait_closed()
    from aiocontainerd.errors import Unavailable

    with pytest.raises(Unavailable):
        await ex.connect_in_netns("", port)
