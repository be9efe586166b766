"""``<shim> start`` of our own shim done in the daemon (runtimes/v2/fastpath.py): when it
applies, that it falls back to the subprocess when no fork server runs, and that with one
running it produces what the subprocess produces (address, shim.pid, a serving shim)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from aiocontainerd import ttrpc
from aiocontainerd.api.containerd.task import v2 as taskapi
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.runtimes.aiorunc import main as shimmain
from aiocontainerd.runtimes.v2 import binary, fastpath

OUR_SHIM = os.path.join(os.path.dirname(sys.executable), binary.AIORUNC_SHIM)
needs_shim = pytest.mark.skipif(not os.access(OUR_SHIM, os.X_OK), reason="shim script not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="shim sockets live in /run/containerd/s")


def _command(tmp_path: Path, id_: str, **env: str) -> binary.ShimCommand:
    bundle = tmp_path / id_
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2"}))
    daemon = str(tmp_path / "daemon.sock")
    return binary.ShimCommand(binary=OUR_SHIM, id=id_, namespace="fastpath", bundle=str(bundle),
                              grpc_address=daemon, ttrpc_address=daemon + ".ttrpc",
                              env=tuple(f"{k}={v}" for k, v in env.items()))


@needs_shim
def test_only_our_own_shim(tmp_path: Path) -> None:
    assert fastpath.is_our_shim(OUR_SHIM)
    other_python = tmp_path / "other" / binary.AIORUNC_SHIM
    other_python.parent.mkdir()
    other_python.write_text(Path(OUR_SHIM).read_text().replace(sys.executable, "/usr/bin/python3", 1))
    other_python.chmod(0o755)
    assert not fastpath.is_our_shim(str(other_python))
    assert not fastpath.is_our_shim("/usr/bin/containerd-shim-runc-v2")
    assert fastpath.enabled(OUR_SHIM, {})
    assert not fastpath.enabled(OUR_SHIM, {fastpath.ENV_SWITCH: "exec"})
    assert not fastpath.enabled(OUR_SHIM, {"AIORUNC_NO_FORKSERVER": "1"})


@needs_shim
@needs_root
async def test_no_forkserver_falls_back(tmp_path: Path) -> None:
    cmd = _command(tmp_path, "c1")
    assert await fastpath.start(cmd) is None
    address = shimmain.socket_address(cmd.grpc_address, cmd.namespace, "c1")
    assert not os.path.exists(address[len("unix://"):])     # nothing left bound
    assert not (Path(cmd.bundle) / "address").exists()


def _proc(pid: int) -> tuple[int, bytes]:
    """Session id and environment of ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        session = int(f.read().rsplit(")", 1)[1].split()[3])
    with open(f"/proc/{pid}/environ", "rb") as f:
        return session, f.read()


async def _shim_pid(address: str, id_: str) -> int:
    """The pid the shim serving ``address`` reports (Connect): it answers, so it serves."""
    client = await ttrpc.Client.connect(address, timeout=5)
    try:
        info = await client.call("containerd.task.v2.Task", "Connect", taskapi.ConnectRequest(id=id_),
                                 taskapi.ConnectResponse, timeout=5,
                                 metadata={ttrpc.METADATA_NAMESPACE: "fastpath"})
    finally:
        await client.close()
    return info.shim_pid


async def _shutdown(address: str, id_: str) -> None:
    client = await ttrpc.Client.connect(address, timeout=5)
    try:
        await client.call("containerd.task.v2.Task", "Shutdown", taskapi.ShutdownRequest(id=id_), pb.Empty,
                          timeout=5, metadata={ttrpc.METADATA_NAMESPACE: "fastpath"})
    except ttrpc.Closed:
        pass
    finally:
        await client.close()


@needs_shim
@needs_root
async def test_same_result_as_the_subprocess(tmp_path: Path) -> None:
    env = {"AIORUNC_FORKSERVER_CHECK": "0.5"}    # the fork server exits soon: no daemon here
    first = _command(tmp_path, "c1", **env)
    second = _command(tmp_path, "c2", **env)
    started = []
    try:
        r1 = await first.start()                 # the subprocess launches the fork server
        started.append(("c1", r1.address))
        r2 = await fastpath.start(second)
        assert r2 is not None
        started.append(("c2", r2.address))
        assert r2.address == shimmain.socket_address(second.grpc_address, "fastpath", "c2")
        assert r2.version == 2 and r2.service == "containerd.task.v2.Task"
        assert (Path(second.bundle) / "address").read_text() == r2.address
        pid = int((Path(second.bundle) / "shim.pid").read_text())
        assert await _shim_pid(r2.address, "c2") == pid
        session, environ = _proc(pid)
        assert session == pid                    # its own session (setsid): outlives the daemon
        assert b"AIORUNC_FORKSERVER_CHECK=0.5" in environ   # the shim environment
    finally:
        for id_, address in started:
            await _shutdown(address, id_)
    await asyncio.sleep(0)


def _forkserver_listening(key: str) -> bool:
    conn = shimmain._connect_forkserver(key)
    if conn is None:
        return False
    conn.close()
    return True


@needs_shim
@needs_root
async def test_warm_forkserver_serves_the_first_start_and_leaves_with_the_daemon(tmp_path: Path) -> None:
    import socket

    cmd = _command(tmp_path, "c1", AIORUNC_FORKSERVER_CHECK="0.5")
    key = shimmain.forkserver_key(cmd.grpc_address)
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)   # what the fork server watches
    daemon.bind(cmd.grpc_address)
    daemon.listen(8)
    started = None
    try:
        assert not _forkserver_listening(key)
        assert await fastpath.warm(cmd)
        assert _forkserver_listening(key)          # listening before any container
        assert not await fastpath.warm(cmd)        # one per daemon: a second warm is a no-op
        result = await fastpath.start(cmd)         # served by it: no subprocess fallback
        assert result is not None
        started = result.address
        pid = int((Path(cmd.bundle) / "shim.pid").read_text())
        assert await _shim_pid(result.address, "c1") == pid   # serving: it is past its setsid
        session, _ = _proc(pid)
        assert session == pid
    finally:
        if started is not None:
            await _shutdown(started, "c1")
        daemon.close()
        os.unlink(cmd.grpc_address)
    for _ in range(100):                           # the daemon is gone: so is the fork server
        if not _forkserver_listening(key):
            break
        await asyncio.sleep(0.1)
    assert not _forkserver_listening(key)


@needs_shim
async def test_warm_is_nothing_for_other_shims(tmp_path: Path) -> None:
    cmd = _command(tmp_path, "c1")
    other = binary.ShimCommand(binary="/usr/bin/containerd-shim-runc-v2", id="", namespace="",
                               bundle=cmd.bundle, grpc_address=cmd.grpc_address,
                               ttrpc_address=cmd.ttrpc_address)
    assert not await fastpath.warm(other)
    assert not await fastpath.warm(_command(tmp_path, "c2", AIORUNC_NO_FORKSERVER="1"))
    assert not _forkserver_listening(shimmain.forkserver_key(cmd.grpc_address))
