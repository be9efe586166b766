"""CRI logs written by our shim (in-process writer for ``aiocontainerd-cri-logger`` URIs) for a
real busybox container under runc: format, both streams, rename + reopen mid-run."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

from aiocontainerd.api.containerd.task import v2 as task
from aiocontainerd.cri import logger as crilog
from tests.integration.test_shim import Harness, finish, h, pytestmark  # noqa: F401 - fixture, marks

RECORD = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z (stdout|stderr) ([PF]) (.*)$")


def records(path: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for line in path.read_bytes().splitlines():
        m = RECORD.match(line)
        assert m, line
        out.append((m.group(2).decode(), m.group(3).decode(), m.group(4)))
    return out


async def wait_for(pred, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_cri_log_through_our_shim(h: Harness) -> None:  # noqa: F811 - the fixture
    log = h.base / "pods" / "ns_pod_uid" / "app" / "0.log"
    uri = crilog.log_uri(str(log), max_line=8)
    script = ("echo first; echo oops >&2; echo 0123456789ab; "
              "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second; printf tail")
    b = h.bundle("c1", ["sh", "-c", script])
    address = await h.start("c1", b)
    c = await h.connect(address)
    shim = await h.shim_pid(c)
    await h.call(c, "Create", h.create_request("c1", b, stdout=uri, stderr=uri), task.CreateTaskResponse)
    # no logger process: the shim writes the file itself
    children = Path(f"/proc/{shim}/task/{shim}/children").read_text().split()
    assert all(crilog.SCRIPT not in Path(f"/proc/{p}/cmdline").read_text() for p in children)
    assert oct(log.stat().st_mode & 0o777) == oct(0o640 & ~_umask())
    waiter = asyncio.ensure_future(h.call(c, "Wait", task.WaitRequest(id="c1"), task.WaitResponse))
    await h.call(c, "Start", task.StartRequest(id="c1"), task.StartResponse)
    await wait_for(lambda: log.exists() and len(records(log)) >= 4)
    # kubelet's rotation: rename, then ReopenContainerLog
    os.rename(log, log.with_name("0.log.20240101-000000"))
    crilog.reopen_log(str(log))
    (h.rootfs_src / "tmp" / "go").write_bytes(b"")
    w = await asyncio.wait_for(waiter, 20)
    assert w.exit_status == 0
    old = records(log.with_name("0.log.20240101-000000"))
    assert sorted(old) == sorted([("stdout", "F", b"first"), ("stderr", "F", b"oops"),
                                  ("stdout", "P", b"01234567"), ("stdout", "F", b"89ab")])
    await wait_for(lambda: len(records(log)) >= 2)
    assert records(log) == [("stdout", "F", b"second"), ("stdout", "P", b"tail")]
    await h.call(c, "Delete", task.DeleteRequest(id="c1"), task.DeleteResponse)
    await finish(h, c, address, b)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
