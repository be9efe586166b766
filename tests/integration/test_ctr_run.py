"""The real ``ctr run`` and ``ctr task`` against aiocontainerd — and, as the reference, containerd 1.6.

Each test runs in every setup (``tests.support.runtime``):

- ``aiocontainerd``: our daemon, ``io.containerd.runc.v2`` served by our shim (the default);
- ``aiocontainerd+go-shim``: our daemon with ``io.containerd.runc.v2`` pointed at Debian's Go
  ``containerd-shim-runc-v2`` through its config;
- ``aiocontainerd+crun``: our shim running ``crun`` (``ctr run --runc-binary crun``: runc option
  ``BinaryName``);
- ``containerd``, ``containerd+crun``: Debian's containerd 1.6 with its Go shim (what every
  assertion is checked against);
- ``containerd+our-shim``: containerd 1.6 running containers through our shim
  (``ctr run --runtime io.containerd.aiorunc.v2``, our shim's folder on its PATH).

The image is busybox-static pushed to a real ``docker-registry`` on loopback and pulled with
``ctr images pull --plain-http``. Every test uses a namespace of its own (its cgroups are
``/<namespace>/<id>``) and removes its tasks, shims, mounts, cgroups and shim sockets even when
it fails.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.support.runtime import (
    CGROUP_ROOT,
    CONTAINERD,
    CONTAINERD_CRUN,
    CONTAINERD_OUR_SHIM,
    OURS,
    OURS_CRUN,
    OURS_GO_SHIM,
    Event,
    Rig,
    fifos_under,
    mounts_under,
    rig_fixture,
    wait_until,
)

pytestmark = pytest.mark.integration

SETUPS = [OURS, OURS_GO_SHIM, OURS_CRUN, CONTAINERD, CONTAINERD_OUR_SHIM, CONTAINERD_CRUN]


rig = rig_fixture(SETUPS)


def assert_gone(rig: Rig, id: str) -> None:
    """Nothing of ``id`` is left: no task, no container, no bundle, no mount, no shim, no cgroup."""
    assert id not in rig.tasks()
    assert id not in rig.containers()
    assert wait_until(lambda: not rig.bundle(id).exists()), f"bundle {rig.bundle(id)} left"
    assert not mounts_under(rig.d.state), mounts_under(rig.d.state)
    assert wait_until(lambda: not rig.shim_pids(id)), f"shim of {id} still running: {rig.shim_pids(id)}"
    left = [h / rig.ns / id for h in CGROUP_ROOT.iterdir() if (h / rig.ns / id).is_dir()]
    assert not left, f"cgroups left: {left}"


def test_run_rm_prints_output(rig: Rig) -> None:
    r = rig.run("c1", "echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hi\n", ""), rig.log_tail()
    assert_gone(rig, "c1")


def test_run_rm_exit_status(rig: Rig) -> None:
    r = rig.run("c2", "sh", "-c", "exit 7")
    assert r.returncode == 7, (r.stdout, r.stderr, rig.log_tail())
    assert_gone(rig, "c2")


def test_run_of_a_missing_binary_fails_as_containerd_words_it(rig: Rig) -> None:
    r = rig.run("c5", "/nonexistent")
    assert r.returncode != 0
    # the runtime's own error text is the error, not the container's output
    assert r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("ctr: failed to create shim task: OCI runtime create failed: "), r.stderr
    assert "/nonexistent" in r.stderr
    assert_gone(rig, "c5")


def _metric(output: str, *names: str) -> int:
    for name in names:
        m = re.search(rf"^{re.escape(name)}\s+(\d+)\s*$", output, re.M)
        if m:
            return int(m.group(1))
    raise AssertionError(f"none of {names} in the metrics table:\n{output}")


def test_detached_task_lifecycle(rig: Rig) -> None:
    r = rig.run("c3", "sleep", "1000", flags=("-d",))
    assert r.returncode == 0, (r.stdout, r.stderr, rig.log_tail())
    pid, status = rig.tasks()["c3"]
    assert status == "RUNNING" and pid > 0
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"1000"]
    # the shim the setup names serves it
    binary_path = rig.bundle("c3") / "shim-binary-path"
    if binary_path.exists():
        assert Path(binary_path.read_text().strip()).name == rig.shim
    assert rig.shim_pids("c3"), "no shim process found for c3"

    ps = rig.ctr("task", "exec", "--exec-id", "e1", "c3", "ps")
    lines = ps.stdout.splitlines()
    assert lines[0].split() == ["PID", "USER", "COMMAND"]
    assert any(line.split()[0] == "1" and line.endswith("sleep 1000") for line in lines[1:]), ps.stdout
    assert any(line.split()[-1] == "ps" for line in lines[1:]), ps.stdout
    r = rig.ctr("task", "exec", "--exec-id", "e2", "c3", "sh", "-c", "exit 3", check=False)
    assert r.returncode == 3, (r.stdout, r.stderr)

    rig.ctr("task", "pause", "c3")
    assert rig.tasks()["c3"] == (pid, "PAUSED")
    with open(f"/proc/{pid}/stat") as f:   # frozen: sleeping in the freezer, not running
        assert f.read().rpartition(")")[2].split()[0] in ("D", "S")
    rig.ctr("task", "resume", "c3")
    assert rig.tasks()["c3"] == (pid, "RUNNING")

    metrics = rig.ctr("task", "metrics", "c3").stdout
    assert re.search(r"^ID\s+TIMESTAMP", metrics, re.M) and re.search(r"^c3\s+\d{4}-", metrics, re.M), metrics
    assert re.search(r"^METRIC\s+VALUE", metrics, re.M), metrics
    assert _metric(metrics, "memory.usage_in_bytes", "memory.usage") > 0
    assert _metric(metrics, "cpuacct.usage", "cpu.usage_usec") > 0
    assert _metric(metrics, "pids.current") >= 1

    rig.ctr("task", "kill", "--signal", "SIGKILL", "c3")
    assert rig.wait_status("c3", "STOPPED")["c3"][1] == "STOPPED"
    assert not os.path.exists(f"/proc/{pid}/cmdline") or open(f"/proc/{pid}/cmdline", "rb").read() == b""
    r = rig.ctr("task", "delete", "c3")
    assert "exit code 137" in r.stderr, r.stderr     # ctr 1.6 reports a non-zero exit this way
    assert "c3" not in rig.tasks()
    rig.ctr("containers", "rm", "c3")
    assert_gone(rig, "c3")
    assert not fifos_under(rig.d.state) and not fifos_under(rig.d.root)


def test_run_with_tty(rig: Rig) -> None:
    command = shlex.join(["ctr", "--address", rig.d.address, "--namespace", rig.ns, "run", "--rm", "-t",
                          *rig.run_args, rig.ref, "c6", "sh", "-c", "tty; stty size; echo tty-ok; exit 5"])
    rig.ids.add("c6")
    r = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    out = r.stdout.replace("\r", "")
    assert "tty-ok" in out, (r.stdout, r.stderr, rig.log_tail())
    assert re.search(r"^\W*/dev/pts/\d+$", out, re.M), out       # a terminal inside the container
    assert r.returncode == 5, (r.returncode, out)
    assert_gone(rig, "c6")


def _topics(events: list[Event], id: str) -> list[str]:
    return [e.topic for e in events
            if e.topic.startswith("/tasks/") and e.data.get("container_id") == id]


def test_events_show_the_runs(rig: Rig) -> None:
    w = rig.watch_events()
    assert rig.run("c1", "echo", "hi").stdout == "hi\n"
    assert rig.run("c2", "sh", "-c", "exit 7").returncode == 7
    rig.run("c3", "sleep", "1000", flags=("-d",), check=True)
    rig.ctr("task", "exec", "--exec-id", "e1", "c3", "true")
    rig.ctr("task", "pause", "c3")
    rig.ctr("task", "resume", "c3")
    rig.ctr("task", "kill", "--signal", "SIGKILL", "c3")
    rig.wait_status("c3", "STOPPED")
    rig.ctr("task", "delete", "c3")
    rig.ctr("containers", "rm", "c3")

    def complete(evs: list[Event]) -> bool:
        return all("/tasks/delete" in _topics(evs, c) for c in ("c1", "c2", "c3")) and \
            any(e.topic == "/containers/delete" and e.data.get("id") == "c3" for e in evs)

    events = w.wait_for(complete)
    assert all(e.namespace == rig.ns for e in events if e.topic.startswith(("/tasks/", "/containers/")))
    lifecycle = ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    for id in ("c1", "c2"):
        assert _topics(events, id) == lifecycle, [(e.topic, e.data) for e in events]
    assert _topics(events, "c3") == ["/tasks/create", "/tasks/start", "/tasks/exec-added",
                                     "/tasks/exec-started", "/tasks/exit", "/tasks/paused",
                                     "/tasks/resumed", "/tasks/exit", "/tasks/delete"], \
        [(e.topic, e.data) for e in events]

    def exits(id: str) -> list[dict[str, object]]:
        return [e.data for e in events if e.topic == "/tasks/exit" and e.data.get("container_id") == id]

    assert [x.get("exit_status", 0) for x in exits("c1")] == [0]
    assert [x.get("exit_status", 0) for x in exits("c2")] == [7]
    exec_exit, init_exit = exits("c3")
    assert exec_exit["id"] == "e1" and exec_exit.get("exit_status", 0) == 0
    assert init_exit["id"] == "c3" and init_exit["exit_status"] == 137
    create = next(e.data for e in events if e.topic == "/tasks/create" and e.data.get("container_id") == "c3")
    assert create["bundle"] == str(rig.bundle("c3"))
    assert create["pid"] == next(e.data for e in events if e.topic == "/tasks/start"
                                 and e.data.get("container_id") == "c3")["pid"]
    assert [r["type"] for r in create["rootfs"]] == ["overlay"]      # type: ignore[index]
