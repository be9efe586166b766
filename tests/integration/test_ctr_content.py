"""The real ``ctr content`` and ``ctr leases`` against an aiocontainerd process."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile
import time

import pytest

from tests.conftest import DaemonProcess, blobs_on_disk, need_ctr

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _ctr() -> None:
    need_ctr()


def ingest(d: DaemonProcess, ref: str, data: bytes, namespace: str = "default",
           expected: str | None = None) -> subprocess.CompletedProcess[bytes]:
    argv = ["ctr", "--address", d.address, "-n", namespace, "content", "ingest"]
    if expected:
        argv += ["--expected-digest", expected, "--expected-size", str(len(data))]
    # a regular file as stdin: ctr seeks it to resume an ingest at its offset
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.seek(0)
        return subprocess.run([*argv, ref], stdin=f, capture_output=True, timeout=60)


def wait_for(predicate, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_ingest_ls_get_label_rm_and_gc(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    # `ctr content ingest` commits without a lease: unreferenced content, which the
    # start-up collection (100 ms after start, as containerd's) would take; wait it out
    d.wait_log("garbage collected")
    data = os.urandom(2_500_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert ingest(d, "r1", data, expected=digest).returncode == 0
    rows = d.ctr("content", "ls").stdout.splitlines()[1:]
    assert rows[0].split()[0] == digest and "2.5MB" in rows[0]
    got = subprocess.run(["ctr", "--address", d.address, "content", "get", digest],
                         capture_output=True, timeout=60).stdout
    assert got == data
    d.ctr("content", "label", digest, "containerd.io/gc.root=now", "team=a")
    assert "team=a" in d.ctr("content", "ls").stdout
    # not visible in another namespace until it commits it too
    assert digest not in d.ctr("content", "ls", namespace="other").stdout
    assert ingest(d, "r1", data, namespace="other", expected=digest).returncode == 0
    assert digest in d.ctr("content", "ls", namespace="other").stdout
    d.ctr("content", "label", digest, "containerd.io/gc.root=yes", namespace="other")
    d.ctr("content", "rm", digest)
    time.sleep(0.3)
    assert digest in blobs_on_disk(d)  # namespace "other" still holds it as a GC root
    d.ctr("content", "rm", digest, namespace="other")
    assert wait_for(lambda: digest not in blobs_on_disk(d))


def test_wrong_digest_is_refused_and_leaves_nothing(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    data = b"hello world\n" * 1000
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    r = ingest(d, "bad", data, expected=wrong)
    assert r.returncode != 0
    assert b"unexpected commit digest" in r.stderr or b"failed precondition" in r.stderr, r.stderr
    assert d.ctr("content", "ls").stdout.split()[:4] == ["DIGEST", "SIZE", "AGE", "LABELS"]
    assert len(d.ctr("content", "ls").stdout.splitlines()) == 1
    assert blobs_on_disk(d) == set()


def test_active_ingest_is_listed_and_resumable(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    d.wait_log("garbage collected")  # an unleased ingest is garbage to a collection
    data = os.urandom(1_000_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    # a writer that dies half way: write half the bytes to an ingest, then go away
    import asyncio

    from aiocontainerd import Client
    from aiocontainerd.api.containerd.services.content import v1 as api

    async def half() -> None:
        async with Client(d.address) as c:
            stub = api.ContentStub(c._channel, metadata={"containerd-namespace": "default"})
            reqs = [api.WriteContentRequest(action=api.WriteAction.WRITE, ref="resume-me",
                                            total=len(data), expected=digest, data=data[:400_000])]
            async for _ in stub.write(reqs):
                pass

    asyncio.run(half())
    active = d.ctr("content", "active").stdout
    assert "resume-me" in active
    # ctr resumes the ingest from its offset and commits
    assert ingest(d, "resume-me", data, expected=digest).returncode == 0
    assert "resume-me" not in d.ctr("content", "active").stdout
    assert digest in d.ctr("content", "ls").stdout


def test_leases(daemon_process: DaemonProcess) -> None:
    d = daemon_process
    d.ctr("leases", "create", "--id", "l1", "team=a")
    rows = d.ctr("leases", "ls").stdout.splitlines()[1:]
    assert rows[0].split()[0] == "l1" and "team=a" in rows[0] and "containerd.io/gc.expire" in rows[0]
    d.ctr("leases", "rm", "l1")
    assert d.ctr("leases", "ls").stdout.splitlines()[1:] == []
    r = d.ctr("leases", "rm", "l1", check=False)
    assert r.returncode != 0 and "not found" in r.stderr
    # without --id the daemon names it, as containerd does (<nanoseconds>-<4 base64 chars>)
    made = d.ctr("leases", "create").stdout.split()[0]
    assert re.fullmatch(r"\d{1,9}-[A-Za-z0-9_-]{4}", made), made
    assert d.ctr("leases", "ls").stdout.splitlines()[1].split()[0] == made
    d.ctr("leases", "rm", made)
