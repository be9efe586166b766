"""``actr run``, ``actr tasks``, ``actr containers`` and ``actr events`` as a real process.

Against Debian's containerd 1.6 and against aiocontainerd (an expected failure
only while its daemon has no Tasks service), with real runc and the
busybox-static test image (see test_client_containers).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from tests.integration.test_client_containers import KINDS, RuntimeDaemon, runtime_daemon
from tests.support.registry import Registry

pytestmark = pytest.mark.integration


@pytest.fixture(params=KINDS)
async def rd(request: pytest.FixtureRequest, registry: Registry) -> AsyncIterator[RuntimeDaemon]:
    async with runtime_daemon(request.param, registry) as d:
        yield d


def actr(d: RuntimeDaemon, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiocontainerd.cli.actr", "--address", d.address, *args],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


async def test_run_output_and_exit_status(rd: RuntimeDaemon) -> None:
    r = await asyncio.to_thread(actr, rd, "run", "--rm", rd.ref, "c1", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    r = await asyncio.to_thread(actr, rd, "run", "--rm", "--env", "X=1", rd.ref, "c2",
                                "sh", "-c", "echo $X; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, "1\n", "err\n")
    r = await asyncio.to_thread(actr, rd, "containers", "ls", "-q")
    assert r.stdout == ""


async def test_detached_run_and_task_verbs(rd: RuntimeDaemon) -> None:
    r = await asyncio.to_thread(actr, rd, "run", "-d", "--label", "team=a", rd.ref, "c3", "sleep", "1000")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(actr, rd, "tasks", "ls")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["TASK", "PID", "STATUS"]
    task, pid, status = lines[1].split()
    assert (task, status) == ("c3", "RUNNING") and int(pid) > 0
    # the real ctr agrees
    assert "RUNNING" in rd.ctr("task", "ls").stdout
    r = await asyncio.to_thread(actr, rd, "tasks", "exec", "--exec-id", "e1", "c3",
                                "sh", "-c", "echo in; exit 3")
    assert (r.returncode, r.stdout) == (3, "in\n"), r.stderr
    r = await asyncio.to_thread(actr, rd, "tasks", "ps", "c3")
    assert r.stdout.splitlines()[0].split() == ["PID", "INFO"] and pid in r.stdout
    for verb in ("pause", "resume"):
        r = await asyncio.to_thread(actr, rd, "tasks", verb, "c3")
        assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(actr, rd, "tasks", "metrics", "c3")
    assert r.returncode == 0 and "METRIC" in r.stdout and "pids.current" in r.stdout, r.stderr
    r = await asyncio.to_thread(actr, rd, "containers", "info", "c3")
    info = json.loads(r.stdout)
    assert info["ID"] == "c3" and info["Labels"]["team"] == "a"
    assert info["Spec"]["process"]["args"] == ["sleep", "1000"]
    assert info["Spec"]["linux"]["cgroupsPath"] == "/default/c3"
    r = await asyncio.to_thread(actr, rd, "containers", "rm", "c3")
    assert r.returncode == 1 and "non stopped" in r.stderr
    r = await asyncio.to_thread(actr, rd, "tasks", "kill", "-s", "KILL", "c3")
    assert r.returncode == 0, r.stderr
    for _ in range(100):
        if "STOPPED" in (await asyncio.to_thread(actr, rd, "tasks", "ls")).stdout:
            break
        await asyncio.sleep(0.1)
    r = await asyncio.to_thread(actr, rd, "tasks", "delete", "c3")
    assert r.returncode == 0, r.stderr
    r = await asyncio.to_thread(actr, rd, "containers", "rm", "c3")
    assert r.returncode == 0, r.stderr
    assert (await asyncio.to_thread(actr, rd, "containers", "ls", "-q")).stdout == ""


async def test_events_show_a_run(rd: RuntimeDaemon) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aiocontainerd.cli.actr", "--address", rd.address, "events",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.sleep(1.5)  # the subscription is in place
        r = await asyncio.to_thread(actr, rd, "run", "--rm", rd.ref, "c4", "true")
        assert r.returncode == 0, r.stderr
        seen = []
        async with asyncio.timeout(20):
            while not any("/tasks/delete" in line for line in seen):
                seen.append((await proc.stdout.readline()).decode())  # type: ignore[union-attr]
    finally:
        proc.terminate()
        await proc.wait()
    topics = [line.split()[5] for line in seen if len(line.split()) > 5]
    assert "/tasks/create" in topics and "/tasks/start" in topics and "/tasks/exit" in topics
    exit_line = next(line for line in seen if "/tasks/exit" in line)
    assert '"containerId":"c4"' in exit_line or '"container_id":"c4"' in exit_line
