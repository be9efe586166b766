"""The shim's process layer against the real ``runc``: Runc + Reaper + stdio + ConsoleSocket.

Each test builds an OCI bundle in a temp dir (rootfs = Debian's busybox-static,
config from ``runc spec``), uses a runc ``--root`` of its own and container ids
unique to the run, and always force-deletes its containers.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiocontainerd import errors
from aiocontainerd.runtimes.aiorunc.console import ConsoleSocket
from aiocontainerd.runtimes.aiorunc.reaper import Reaper, is_subreaper
from aiocontainerd.runtimes.aiorunc.runc import (
    Runc,
    RuncAlreadyExists,
    RuncError,
    RuncNotFound,
    default_root,
    read_pid_file,
)
from aiocontainerd.runtimes.aiorunc.stdio import ProcessIO, open_stdio
from tests.support.runtime import busybox_rootfs, zombies_under

pytestmark = pytest.mark.integration

RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"

if os.geteuid() != 0 or not os.path.exists(RUNC) or not os.path.exists(BUSYBOX):
    pytest.skip("needs root, runc and busybox-static", allow_module_level=True)


def make_bundle(path: Path, args: list[str], *, terminal: bool = False) -> Path:
    """An OCI bundle: rootfs with busybox and its applets, config.json from ``runc spec``."""
    busybox_rootfs(path / "rootfs")
    subprocess.run([RUNC, "spec", "--bundle", str(path)], check=True)
    config = json.loads((path / "config.json").read_text())
    config["process"]["args"] = args
    config["process"]["terminal"] = terminal
    (path / "config.json").write_text(json.dumps(config))
    return path


class Env:
    def __init__(self, base: Path, reaper: Reaper) -> None:
        self.base = base
        self.reaper = reaper
        self.root = str(base / "runc")
        self.ids: list[str] = []
        self.ios: list[ProcessIO] = []

    def new_id(self) -> str:
        cid = f"aiorunc-test-{uuid.uuid4().hex[:10]}"
        self.ids.append(cid)
        return cid

    def bundle(self, cid: str, args: list[str], *, terminal: bool = False) -> Path:
        return make_bundle(self.base / cid, args, terminal=terminal)

    def runc(self, bundle: Path) -> Runc:
        return Runc(self.reaper, root=self.root, log=str(bundle / "log.json"))

    def fifo(self, name: str) -> str:
        path = str(self.base / name)
        os.mkfifo(path)
        return path


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="aiorunc-", dir="/tmp"))
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    e = Env(base, reaper)
    try:
        yield e
    finally:
        for pio in e.ios:
            await pio.close()
        runc = Runc(reaper, root=e.root, log=None)
        for cid in e.ids:
            try:
                await runc.delete(cid, force=True)
            except RuncError:
                pass
        reaper.uninstall()
        # belt and braces if the async cleanup failed half-way
        for cid in e.ids:
            subprocess.run([RUNC, "--root", e.root, "delete", "--force", cid],
                           capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


class FifoReader:
    """The client's side of an output FIFO, as ``ctr`` holds it: opened before the shim."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()

    async def read_all(self, timeout: float = 10) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            if not chunk:   # the shim (the only writer) closed its side
                break
            self.data += chunk
        os.close(self.fd)
        return bytes(self.data)


async def fifo_io(env: Env, cid: str, *, stdin: bool = False,
                  terminal: bool = False) -> tuple[ProcessIO, FifoReader, FifoReader, str]:
    out, err = env.fifo(f"{cid}-stdout"), env.fifo(f"{cid}-stderr")
    inp = env.fifo(f"{cid}-stdin") if stdin else ""
    rout, rerr = FifoReader(out), FifoReader(err)
    pio = await open_stdio(stdin=inp, stdout=out, stderr="" if terminal else err,
                           terminal=terminal, id=cid, namespace="default", reaper=env.reaper)
    env.ios.append(pio)
    return pio, rout, rerr, inp


async def run_to_exit(env: Env, cid: str, bundle: Path, pio: ProcessIO | None) -> int:
    runc = env.runc(bundle)
    pid_file = str(bundle / "init.pid")
    await runc.create(cid, str(bundle), pid_file=pid_file, stdio=pio)
    if pio is not None:
        pio.start_copying()
    exited = env.reaper.watch(read_pid_file(pid_file))
    await runc.start(cid)
    status = await asyncio.wait_for(exited, 20)
    if pio is not None:
        await pio.wait(timeout=10)
    await runc.delete(cid)
    return status


async def created(env: Env, args: list[str]) -> tuple[str, Path, Runc, int]:
    """A new container running ``args``, created (not started): (id, bundle, runc, init pid)."""
    cid = env.new_id()
    bundle = env.bundle(cid, args)
    runc = env.runc(bundle)
    pid_file = str(bundle / "init.pid")
    await runc.create(cid, str(bundle), pid_file=pid_file)
    return cid, bundle, runc, read_pid_file(pid_file)


def test_default_root() -> None:
    assert default_root("default") == "/run/containerd/runc/default"


async def test_subreaper_installed(env: Env) -> None:
    assert is_subreaper()


async def test_lifecycle(env: Env) -> None:
    cid, _, runc, pid = await created(env, ["sleep", "1000"])
    exited = env.reaper.watch(pid)
    state = await runc.state(cid)
    assert state["status"] == "created"
    assert state["pid"] == pid
    await runc.start(cid)
    assert (await runc.state(cid))["status"] == "running"
    assert await runc.ps(cid) == [pid]
    assert [c["id"] for c in await runc.list()] == [cid]
    await runc.pause(cid)
    assert (await runc.state(cid))["status"] == "paused"
    await runc.resume(cid)
    assert (await runc.state(cid))["status"] == "running"
    await runc.update(cid, {"pids": {"limit": 100}})
    await runc.kill(cid, signal.SIGTERM)
    # busybox sleep as pid 1 ignores SIGTERM (no handler in an init): still running
    await asyncio.sleep(0.2)
    assert not exited.done()
    await runc.kill(cid, signal.SIGKILL, all=True)
    assert await asyncio.wait_for(exited, 10) == 128 + signal.SIGKILL
    assert (await runc.state(cid))["status"] == "stopped"
    with pytest.raises(RuncNotFound) as ei:
        await runc.kill(cid, signal.SIGKILL)
    assert isinstance(ei.value, errors.NotFound)
    await runc.delete(cid)
    with pytest.raises(RuncNotFound) as ei:
        await runc.state(cid)
    assert "does not exist" in ei.value.message
    assert ei.value.code == errors.Code.NOT_FOUND


async def test_errors_carry_runtime_message(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["no-such-binary"])
    runc = env.runc(bundle)
    with pytest.raises(RuncError) as ei:
        await runc.create(cid, str(bundle), pid_file=str(bundle / "init.pid"))
        await runc.start(cid)
    assert "no-such-binary" in ei.value.message
    cid2 = env.new_id()
    bundle2 = env.bundle(cid2, ["sleep", "1000"])
    runc2 = env.runc(bundle2)
    await runc2.create(cid2, str(bundle2), pid_file=str(bundle2 / "init.pid"))
    with pytest.raises(RuncAlreadyExists):
        await runc2.create(cid2, str(bundle2), pid_file=str(bundle2 / "init2.pid"))
    await runc2.delete(cid2, force=True)
    with pytest.raises(RuncNotFound):
        await runc2.delete(cid2)


async def test_echo_through_fifos(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["sh", "-c", "echo hi; echo oops >&2"])
    pio, rout, rerr, _ = await fifo_io(env, cid)
    status = await run_to_exit(env, cid, bundle, pio)
    assert status == 0
    assert await rout.read_all() == b"hi\n"
    assert await rerr.read_all() == b"oops\n"


async def test_exit_code(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["sh", "-c", "exit 7"])
    assert await run_to_exit(env, cid, bundle, None) == 7


async def test_echo_to_file_uri(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["sh", "-c", "echo hi; echo err >&2"])
    log = env.base / "logs" / f"{cid}.log"
    pio = await open_stdio(stdin="", stdout=f"file://{log}", stderr=f"file://{log}",
                           terminal=False, id=cid, namespace="default", reaper=env.reaper)
    env.ios.append(pio)
    assert await run_to_exit(env, cid, bundle, pio) == 0
    assert sorted(log.read_text().splitlines()) == ["err", "hi"]


async def test_stdin_close_io(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["cat"])
    pio, rout, _rerr, inp = await fifo_io(env, cid, stdin=True)
    runc = env.runc(bundle)
    pid_file = str(bundle / "init.pid")
    await runc.create(cid, str(bundle), pid_file=pid_file, stdio=pio)
    pio.start_copying()
    exited = env.reaper.watch(read_pid_file(pid_file))
    await runc.start(cid)
    w = os.open(inp, os.O_WRONLY | os.O_NONBLOCK)
    os.write(w, b"hello stdin\n")
    os.close(w)
    await asyncio.sleep(0.3)
    assert not exited.done()           # the shim still holds stdin open
    await pio.close_stdin()            # CloseIO
    assert await asyncio.wait_for(exited, 10) == 0
    await pio.wait(timeout=10)
    assert await rout.read_all() == b"hello stdin\n"
    await runc.delete(cid)


async def test_exec(env: Env) -> None:
    cid, bundle, runc, pid = await created(env, ["sleep", "1000"])
    init_exit = env.reaper.watch(pid)
    await runc.start(cid)

    config = json.loads((bundle / "config.json").read_text())
    process = dict(config["process"], args=["sh", "-c", "echo x"])
    spec_path = bundle / "exec1.json"
    spec_path.write_text(json.dumps(process))
    pio, rout, _rerr, _ = await fifo_io(env, f"{cid}-e1")
    exec_pid_file = str(bundle / "exec1.pid")
    await runc.exec(cid, str(spec_path), pid_file=exec_pid_file, stdio=pio, detach=True)
    pio.start_copying()
    status = await asyncio.wait_for(env.reaper.watch(read_pid_file(exec_pid_file)), 10)
    assert status == 0
    await pio.wait(timeout=10)
    assert await rout.read_all() == b"x\n"

    # a process object instead of a file, and a non-zero exit
    await runc.exec(cid, dict(config["process"], args=["sh", "-c", "exit 3"]),
                    pid_file=str(bundle / "exec2.pid"))
    pid2 = read_pid_file(str(bundle / "exec2.pid"))
    assert await asyncio.wait_for(env.reaper.watch(pid2), 10) == 3

    await runc.kill(cid, signal.SIGKILL)
    assert await asyncio.wait_for(init_exit, 10) == 137
    await runc.delete(cid)


async def test_tty_through_console_socket(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["sh", "-c", "echo tty-hi; ls /dev/pts >/dev/null"], terminal=True)
    runc = env.runc(bundle)
    pio, rout, _rerr, _ = await fifo_io(env, cid, terminal=True)
    pid_file = str(bundle / "init.pid")
    sock = await ConsoleSocket.create(str(env.base))
    try:
        await runc.create(cid, str(bundle), pid_file=pid_file, console_socket=sock, stdio=pio)
        pio.start_copying()
        master = await asyncio.wait_for(sock.receive_master(), 10)
    finally:
        sock.close()
    assert not os.path.exists(sock.path)
    await pio.attach_console(master)
    pio.resize(100, 30)
    exited = env.reaper.watch(read_pid_file(pid_file))
    await runc.start(cid)
    assert await asyncio.wait_for(exited, 10) == 0
    await pio.wait(timeout=10)
    assert b"tty-hi\r\n" in await rout.read_all()
    await runc.delete(cid)


async def test_no_zombies_after_runc_runs(env: Env) -> None:
    cid = env.new_id()
    bundle = env.bundle(cid, ["sh", "-c", "(sleep 0.1 &) ; sleep 0.2 & exit 0"])
    assert await run_to_exit(env, cid, bundle, None) == 0
    await asyncio.sleep(0.5)
    env.reaper.reap()
    assert zombies_under([os.getpid()]) == []


@pytest.mark.skipif(shutil.which("crun") is None, reason="crun not installed")
async def test_crun_errors_map_like_runc(env: Env) -> None:
    crun = Runc(env.reaper, binary="crun", root=str(env.base / "crun"),
                log=str(env.base / "crun.json"))
    with pytest.raises(RuncNotFound):
        await crun.state("aiorunc-test-missing")
    with pytest.raises(RuncNotFound):
        await crun.delete("aiorunc-test-missing")
