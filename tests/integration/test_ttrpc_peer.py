"""Our ttrpc client against the real Go shim (Debian's containerd 1.6 ``containerd-shim-runc-v2``).

The shim is started the way containerd starts it: ``<shim> -namespace NS -address GRPC
-publish-binary containerd -id ID start`` in the bundle folder (which holds ``config.json``
and the ``log`` FIFO the shim writes its log to), with ``TTRPC_ADDRESS`` set; it prints the
address of its ttrpc socket (``unix:///run/containerd/s/<sha256>``) and leaves a daemon
process serving ``containerd.task.v2.Task`` there.  The test process is made child
subreaper while ``start`` runs, so that daemon becomes its child and can be reaped (and
killed if the test fails): the shim must be gone, and its socket removed, at the end.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from aiocontainerd import errors, ttrpc
from aiocontainerd.api.containerd.task import v2 as task
from aiocontainerd.api.google.protobuf import Empty
from tests.support.runtime import processes, wait_child_exit

GO_SHIM = shutil.which("containerd-shim-runc-v2")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not GO_SHIM,
                       reason="containerd-shim-runc-v2 is not installed (apt-get install containerd)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the Go shim needs root (/run/containerd/s)"),
]

TASK = "containerd.task.v2.Task"
PR_SET_CHILD_SUBREAPER = 36


def _subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _children() -> list[int]:
    """Our child processes (from /proc/*/stat), e.g. the shim daemon after ``start``."""
    me = os.getpid()
    return [p.pid for p in processes().values() if p.ppid == me and "containerd-shim" in p.comm]


@dataclass
class GoShim:
    bundle: Path
    namespace: str
    id: str
    address: str = ""
    pid: int = 0
    log: bytearray = field(default_factory=bytearray)

    @property
    def socket_path(self) -> str:
        return ttrpc.socket_address(self.address)

    def metadata(self) -> dict[str, str]:
        return {ttrpc.METADATA_NAMESPACE: self.namespace}


@pytest.fixture
async def go_shim() -> AsyncIterator[GoShim]:
    bundle = Path(tempfile.mkdtemp(prefix="ttrpc-shim-", dir="/tmp"))
    shim = GoShim(bundle=bundle, namespace=f"ttrpc-test-{secrets.token_hex(4)}", id="t1")
    (bundle / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": {}}))
    # the shim writes its log into the "log" FIFO (containerd reads it); O_RDWR never sees EOF
    os.mkfifo(bundle / "log")
    log_fd = os.open(bundle / "log", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    loop = asyncio.get_running_loop()

    def read_log() -> None:
        try:
            shim.log += os.read(log_fd, 65536)
        except BlockingIOError:
            pass

    loop.add_reader(log_fd, read_log)
    grpc_address = str(bundle / "c.sock")
    try:
        _subreaper(True)
        try:
            proc = await asyncio.create_subprocess_exec(
                GO_SHIM, "-namespace", shim.namespace, "-address", grpc_address,
                "-publish-binary", "/usr/bin/containerd", "-id", shim.id, "start",
                cwd=bundle, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "TTRPC_ADDRESS": grpc_address + ".ttrpc", "GRPC_ADDRESS": grpc_address,
                     "NAMESPACE": shim.namespace})
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            _subreaper(False)
        assert proc.returncode == 0, err.decode()
        text = out.decode().strip()
        # 1.6 prints the address; 2.x shims may print a JSON bootstrap {"version":..,"address":..}
        shim.address = json.loads(text)["address"] if text.startswith("{") else text
        assert shim.address.startswith("unix:///run/containerd/s/"), shim.address
        assert (bundle / "address").read_text().strip() == shim.address
        kids = _children()
        assert len(kids) == 1, kids
        shim.pid = kids[0]
        yield shim
    finally:
        for pid in _children():  # the test failed half way: kill and reap the shim
            os.kill(pid, signal.SIGKILL)
            await wait_child_exit(pid)
        if shim.address and os.path.exists(shim.socket_path):
            os.unlink(shim.socket_path)
        loop.remove_reader(log_fd)
        os.close(log_fd)
        shutil.rmtree(bundle, ignore_errors=True)


async def test_connect_state_shutdown(go_shim: GoShim) -> None:
    md = go_shim.metadata()
    client = await ttrpc.Client.connect(go_shim.address, timeout=10)
    try:
        r = await client.call(TASK, "Connect", task.ConnectRequest(id=go_shim.id), task.ConnectResponse,
                              metadata=md, timeout=10)
        assert r.shim_pid == go_shim.pid
        assert r.task_pid == 0  # no container was created

        # State of an unknown id: the Go shim answers NOT_FOUND ("container not created: not found")
        with pytest.raises(errors.NotFound, match="not found") as ei:
            await client.call(TASK, "State", task.StateRequest(id="unknown"), task.StateResponse,
                              metadata=md, timeout=10)
        assert ei.value.code == errors.Code.NOT_FOUND

        # many calls in flight on one connection, answered by stream id
        results = await asyncio.gather(*(
            client.call(TASK, "State", task.StateRequest(id=f"x{i}"), task.StateResponse,
                        metadata=md, timeout=10) for i in range(50)), return_exceptions=True)
        assert all(isinstance(e, errors.NotFound) for e in results), results

        # the Go ttrpc server's own statuses for unknown methods/services
        with pytest.raises(errors.Unimplemented):
            await client.call(TASK, "NoSuchMethod", Empty(), Empty, metadata=md, timeout=10)
        with pytest.raises(errors.Unimplemented):
            await client.call("no.such.Service", "State", Empty(), Empty, metadata=md, timeout=10)

        assert os.path.exists(go_shim.socket_path)
        empty = await client.call(TASK, "Shutdown", task.ShutdownRequest(id=go_shim.id, now=True), Empty,
                                  metadata=md, timeout=10)
        assert empty == Empty()
        # the shim exits: the connection drops, the process is gone, its socket removed
        await asyncio.wait_for(client.wait_closed(), 30)
        assert client.closed
        status = await asyncio.wait_for(wait_child_exit(go_shim.pid), 30)
        assert os.WIFEXITED(status) or os.WIFSIGNALED(status)
        assert os.waitstatus_to_exitcode(status) == 0, status   # Shutdown: a clean exit
        assert not os.path.exists(go_shim.socket_path)
        assert not os.path.exists(f"/proc/{go_shim.pid}")
        with pytest.raises(ttrpc.Closed):
            await client.call(TASK, "State", task.StateRequest(id="x"), task.StateResponse, metadata=md)
        with pytest.raises(ttrpc.Closed):
            await ttrpc.Client.connect(go_shim.address, timeout=5)
    finally:
        await client.close()
    assert b"starting signal loop" in go_shim.log, go_shim.log.decode(errors="replace")
