"""``aiocontainerd.Client`` containers, tasks and events against a real daemon, real runc.

Each test runs against Debian's containerd 1.6 (started on its own temporary
root, state and socket) and against aiocontainerd; the aiocontainerd variant is
an expected failure only while its daemon has no Tasks service. The image is
the busybox-static test image, served by a real registry and pulled (and
unpacked into overlayfs) with the real ``ctr``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiocontainerd import Client
from aiocontainerd.client import cio
from aiocontainerd.errors import FailedPrecondition, NotFound
from tests.bench import daemons
from tests.conftest import DaemonProcess, need_ctr
from tests.support.images import busybox_image, push
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class RuntimeDaemon:
    """A daemon that runs containers, with the test image pulled and unpacked."""

    kind: str
    address: str
    ref: str
    log: Path

    def ctr(self, *args: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["ctr", "--address", self.address, *args], capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def client(self) -> Client:
        return Client(self.address)


def need_runtime() -> None:
    need_ctr()
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")


async def _has_tasks_service(address: str) -> bool:
    async with Client(address) as c:
        found = await c.plugins(["type==io.containerd.grpc.v1"])
    return any(p.id == "tasks" and p.error is None for p in found)


@contextlib.asynccontextmanager
async def runtime_daemon(kind: str, registry: Registry) -> AsyncIterator[RuntimeDaemon]:
    """Start ``kind`` ("containerd" or "aiocontainerd") and pull the test image into it."""
    need_runtime()
    image = busybox_image()
    await push(registry.host, "test/run", "1", image)
    ref = f"{registry.host}/test/run:1"
    folder = Path(tempfile.mkdtemp(prefix="aioc-", dir="/tmp"))
    proc: DaemonProcess | None = None
    running: daemons.Running | None = None
    try:
        if kind == "containerd":
            real = daemons.kinds()[1]
            if real.skipped:
                pytest.skip(real.skipped)
            running = await daemons.start(real, folder / "containerd", 0)
            d = RuntimeDaemon(kind, running.address, ref, running.log)
        else:
            proc = DaemonProcess(folder)
            await asyncio.to_thread(proc.start)
            d = RuntimeDaemon(kind, proc.address, ref, proc.log)
            if not await _has_tasks_service(proc.address):
                pytest.xfail("aiocontainerd serves no Tasks service yet")
        await asyncio.to_thread(d.ctr, "images", "pull", "--plain-http", ref)
        yield d
    finally:
        if running is not None:
            await daemons.stop(running)
        if proc is not None and proc.proc is not None:
            await asyncio.to_thread(proc.stop)
        await asyncio.to_thread(daemons.cleanup, folder)


KINDS = ["containerd", "aiocontainerd"]


@pytest.fixture(params=KINDS)
async def rd(request: pytest.FixtureRequest, registry: Registry) -> AsyncIterator[RuntimeDaemon]:
    async with runtime_daemon(request.param, registry) as d:
        yield d


async def _run(client: Client, ref: str, id: str, *args: str, **kwargs: object) -> tuple[int, bytes, bytes]:
    out, err = bytearray(), bytearray()
    c = await client.containers.new_container(id, ref, args=list(args), **kwargs)  # type: ignore[arg-type]
    try:
        task = await c.new_task(cio.with_streams(stdout=out.extend, stderr=err.extend))
        waiter = asyncio.ensure_future(task.wait())
        await task.start()
        status = await asyncio.wait_for(waiter, 30)
        deleted = await task.delete()
        assert deleted.code == status.code
        assert status.exited_at is not None
    finally:
        await c.delete()
    return status.code, bytes(out), bytes(err)


async def test_run_echo_and_exit_code(rd: RuntimeDaemon) -> None:
    async with rd.client() as client:
        code, out, err = await _run(client, rd.ref, "c1", "echo", "hi")
        assert (code, out) == (0, b"hi\n"), err
        code, out, err = await _run(client, rd.ref, "c2", "sh", "-c", "echo oops >&2; exit 7")
        assert (code, err) == (7, b"oops\n")
        assert await client.containers.list() == []
        # nothing left: the snapshots were removed with the containers
        snaps = rd.ctr("snapshots", "ls").stdout
        assert "c1" not in snaps and "c2" not in snaps


async def test_image_config_env_user_and_stdin(rd: RuntimeDaemon) -> None:
    async with rd.client() as client:
        code, out, _ = await _run(client, rd.ref, "c3", "sh", "-c", "echo $PATH $FOO; id -u; id -g; pwd",
                                  env=["FOO=bar"], spec_opts=[])
        assert code == 0
        lines = out.decode().split("\n")
        assert lines[0] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bar"
        assert lines[1:4] == ["0", "0", "/"]
        from aiocontainerd import oci

        code, out, _ = await _run(client, rd.ref, "c4", "id", "-u", spec_opts=[oci.with_user("nobody")])
        assert (code, out) == (0, b"65534\n")
        # stdin is copied in and closed when the source ends
        c = await client.containers.new_container("c5", rd.ref, args=["cat"])
        out = bytearray()
        task = await c.new_task(cio.with_streams(stdin=b"piped\n", stdout=out.extend))
        await task.start()
        assert (await asyncio.wait_for(task.wait(), 30)).code == 0
        await task.delete()
        await c.delete()
        assert bytes(out) == b"piped\n"


async def test_detached_task_lifecycle(rd: RuntimeDaemon) -> None:
    async with rd.client() as client:
        c = await client.containers.new_container("c6", rd.ref, args=["sleep", "1000"],
                                                  labels={"team": "a"})
        info = await c.info()
        assert info.spec is not None and info.spec["process"]["args"] == ["sleep", "1000"]
        assert info.labels["team"] == "a"
        assert info.labels["io.containerd.image.config.stop-signal"] == "SIGTERM"
        # the real ctr decodes our spec
        assert '"sleep"' in rd.ctr("containers", "info", "c6").stdout
        task = await c.new_task()
        assert (await task.status()).status == "CREATED"
        with pytest.raises(FailedPrecondition):
            await task.delete()
        await task.start()
        [listed] = await client.tasks.list()
        assert (listed.id, listed.status, listed.pid) == ("c6", "RUNNING", task.pid)
        assert [p.pid for p in await task.pids()] == [task.pid]
        await task.pause()
        assert (await task.status()).status == "PAUSED"
        await task.resume()
        metric = await task.metrics()
        assert metric.id == "c6" and metric.data is not None
        spec = await c.spec()
        out = bytearray()
        p = await task.exec("e1", {**spec["process"], "args": ["echo", "from-exec"]},
                            cio.with_streams(stdout=out.extend))
        await p.start()
        assert (await asyncio.wait_for(p.wait(), 30)).code == 0
        await p.delete()
        assert bytes(out) == b"from-exec\n"
        loaded = await client.containers.get("c6")
        again = await loaded.task()
        assert again.pid == task.pid
        await again.kill("SIGKILL")
        status = await asyncio.wait_for(again.wait(), 30)
        assert status.code == 137
        await again.delete()
        with pytest.raises(NotFound):
            await c.task()
        await c.delete()
        with pytest.raises(NotFound):
            await client.containers.get("c6")


async def test_events_of_a_run(rd: RuntimeDaemon) -> None:
    from aiocontainerd.api.containerd import events as ev

    async with rd.client() as client:
        seen: list[tuple[str, object]] = []
        async with client.events.subscribe('topic~="/tasks/"') as stream:
            async def collect() -> None:
                async for e in stream:
                    seen.append((e.topic, e.event))
                    if e.topic == "/tasks/delete":
                        return

            collector = asyncio.ensure_future(collect())
            await asyncio.sleep(0.2)
            await _run(client, rd.ref, "c7", "true")
            await asyncio.wait_for(collector, 30)
        topics = [t for t, _ in seen]
        assert topics[:2] == ["/tasks/create", "/tasks/start"]
        assert "/tasks/exit" in topics and topics[-1] == "/tasks/delete"
        exit_event = next(e for t, e in seen if t == "/tasks/exit")
        assert isinstance(exit_event, ev.TaskExit) and exit_event.container_id == "c7"


async def test_not_unpacked_image_is_unpacked_on_the_fly(rd: RuntimeDaemon) -> None:
    """As ``ctr run --snapshotter native`` after a pull that unpacked into overlayfs only."""
    from aiocontainerd.client.images import resolve_image

    native = ["--namespace", "default", "snapshots", "--snapshotter", "native"]
    async with rd.client() as client:
        image = await resolve_image(client.images, rd.ref)
        top = image.chain_ids[-1]
        assert top not in rd.ctr(*native, "ls").stdout
        code, out, err = await _run(client, rd.ref, "c8", "cat", "/etc/hostname-or-not", "/bin/busybox",
                                    snapshotter="native")
        assert code == 1 and len(out) > 100_000, err      # busybox itself, from the native snapshot
        rows = {line.split()[0]: line.split()[-1] for line in rd.ctr(*native, "ls").stdout.splitlines()[1:]}
        assert rows.get(top) == "Committed", rows            # the chain stays for the next run...
        info = rd.ctr("--namespace", "default", "content", "ls").stdout
        assert f"containerd.io/gc.ref.snapshot.native={top}" in info   # ...held by the image
        assert not [k for k in rows if k.startswith("extract-")], rows
        code, out, _ = await _run(client, rd.ref, "c8b", "echo", "again", snapshotter="native")
        assert (code, out) == (0, b"again\n")
        with pytest.raises(NotFound):
            await client.containers.new_container("c9", "example.com/missing:1")
