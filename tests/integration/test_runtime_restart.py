"""Containers outlive the daemon; dead shims are cleaned up; shims leave no zombies.

The real ``ctr`` against aiocontainerd (our shim, and Debian's Go shim through our config)
and, as the reference for every assertion, containerd 1.6 with its Go shim:

- the daemon killed with SIGKILL while ``c3`` runs, started again on the same root and state:
  ``ctr task ls`` shows c3 RUNNING with the same pid; kill, delete (exit status reported) work;
- a shim killed with SIGKILL: its task is reported exited (``/tasks/exit`` then
  ``/tasks/delete``), no longer RUNNING, and no mount, FIFO or bundle is left;
- a shim that died while the daemon was down: cleaned up at the daemon's start the same way;
- 100 ``ctr task exec`` of ``true``: no zombie below the daemon or its shims.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.support.runtime import (
    CONTAINERD,
    OURS,
    OURS_GO_SHIM,
    Event,
    Rig,
    fifos_under,
    mounts_under,
    processes,
    rig_fixture,
    wait_no_zombies,
    wait_until,
)

pytestmark = pytest.mark.integration

SETUPS = [OURS, OURS_GO_SHIM, CONTAINERD]
DEAD_SHIM_STATUSES = (137, 255)   # containerd: the shim's `delete` killed the container (137), else 255


rig = rig_fixture(SETUPS)


def alive(pid: int) -> bool:
    p = processes().get(pid)
    return p is not None and p.state != "Z"


def start_c3(rig: Rig) -> int:
    rig.run("c3", "sleep", "1000", flags=("-d",), check=True)
    pid, status = rig.tasks()["c3"]
    assert status == "RUNNING"
    return pid


def kill_and_delete(rig: Rig, id: str, pid: int) -> None:
    rig.ctr("task", "kill", "--signal", "SIGKILL", id)
    assert rig.wait_status(id, "STOPPED")[id][1] == "STOPPED"
    assert wait_until(lambda: not alive(pid))
    r = rig.ctr("task", "delete", id)
    assert "exit code 137" in r.stderr, r.stderr
    rig.ctr("containers", "rm", id)
    assert id not in rig.containers()


def assert_cleaned(rig: Rig, id: str) -> None:
    assert wait_until(lambda: not rig.bundle(id).exists()), f"bundle {rig.bundle(id)} left"
    assert not mounts_under(rig.d.state), mounts_under(rig.d.state)
    assert not fifos_under(rig.d.state) and not fifos_under(rig.d.root)
    assert wait_until(lambda: not rig.shim_pids(id)), f"shim of {id} still running"


def test_task_survives_daemon_kill(rig: Rig) -> None:
    pid = start_c3(rig)
    shims = rig.shim_pids("c3")
    assert shims
    assert rig.d.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(0.5)
    assert alive(pid) and all(alive(s) for s in shims), "the container or its shim died with the daemon"
    rig.d.start()
    assert rig.tasks()["c3"] == (pid, "RUNNING"), rig.log_tail()
    assert rig.shim_pids("c3") == shims       # the same shim, reconnected
    r = rig.ctr("task", "exec", "--exec-id", "after-restart", "c3", "echo", "still here")
    assert r.stdout == "still here\n"
    w = rig.watch_events()
    kill_and_delete(rig, "c3", pid)
    events = w.wait_for(lambda evs: any(e.topic == "/tasks/delete" for e in evs))
    exits = [e.data for e in events if e.topic == "/tasks/exit" and e.data.get("id") == "c3"]
    assert [x.get("exit_status") for x in exits] == [137], [(e.topic, e.data) for e in events]
    assert_cleaned(rig, "c3")


def _dead_shim_events(events: list[Event], id: str) -> list[tuple[str, object]]:
    return [(e.topic, e.data.get("exit_status", 0)) for e in events
            if e.topic in ("/tasks/exit", "/tasks/delete") and e.data.get("container_id") == id]


def test_killed_shim_task_stopped_and_cleaned(rig: Rig) -> None:
    pid = start_c3(rig)
    (shim,) = rig.shim_pids("c3")
    socket_path = (rig.bundle("c3") / "address").read_text().strip().removeprefix("unix://")
    with open(f"/proc/{shim}/comm") as f:
        ours = f.read().strip() == "aiorunc-shim"
    w = rig.watch_events()
    os.kill(shim, signal.SIGKILL)
    events = w.wait_for(lambda evs: any(t == "/tasks/delete" for t, _ in _dead_shim_events(evs, "c3")))
    seen = _dead_shim_events(events, "c3")
    assert [t for t, _ in seen] == ["/tasks/exit", "/tasks/delete"], [(e.topic, e.data) for e in events]
    assert seen[0][1] in DEAD_SHIM_STATUSES, seen
    assert rig.tasks().get("c3", (0, "STOPPED"))[1] == "STOPPED"
    assert wait_until(lambda: not alive(pid)), "the container outlived its killed shim's cleanup"
    assert_cleaned(rig, "c3")
    if ours:   # our shim's `delete` also removes the dead shim's socket (Go's leaves it)
        assert not os.path.exists(socket_path), socket_path
    assert "c3" in rig.containers()           # the container record stays; it can be removed
    rig.ctr("containers", "rm", "c3")
    assert "c3" not in rig.containers()


def test_dead_shim_cleaned_at_daemon_start(rig: Rig) -> None:
    pid = start_c3(rig)
    (shim,) = rig.shim_pids("c3")
    rig.d.stop(signal.SIGKILL)
    os.kill(shim, signal.SIGKILL)
    assert wait_until(lambda: not alive(shim))
    rig.d.start()
    assert wait_until(lambda: rig.tasks().get("c3", (0, "STOPPED"))[1] == "STOPPED"), rig.tasks()
    assert wait_until(lambda: not alive(pid)), "the container outlived its dead shim's cleanup"
    assert_cleaned(rig, "c3")
    rig.ctr("containers", "rm", "c3")
    assert "c3" not in rig.containers()


def test_no_zombies_after_100_execs(rig: Rig) -> None:
    pid = start_c3(rig)
    for i in range(100):
        r = rig.ctr("task", "exec", "--exec-id", f"e{i}", "c3", "true", check=False)
        assert r.returncode == 0, (i, r.stdout, r.stderr, rig.log_tail())
    r = rig.ctr("task", "exec", "--exec-id", "fail", "c3", "false", check=False)
    assert r.returncode == 1
    assert rig.d.proc is not None
    zombies = wait_no_zombies([rig.d.proc.pid], base=rig.base)
    assert not zombies, zombies
    assert rig.tasks()["c3"] == (pid, "RUNNING")
    kill_and_delete(rig, "c3", pid)
    assert not wait_no_zombies([rig.d.proc.pid], base=rig.base)
    assert_cleaned(rig, "c3")


def test_shim_processes_hold_none_of_the_daemons_files(rig: Rig) -> None:
    """The fork server the daemon starts ahead (and the spare and shims it forks) inherit no
    fd of the daemon: its metadata store, content and state files stay the daemon's own."""
    if rig.daemon_name != "aiocontainerd":
        pytest.skip("the fork server is our shim's")
    start_c3(rig)
    ours = [p.pid for p in processes().values()
            if p.comm in ("aiorunc-forksrv", "aiorunc-spare", "aiorunc-shim")]
    held = {}
    for pid in ours:
        try:
            own = os.readlink(f"/proc/{pid}/cwd") + "/"    # a shim's bundle: its log FIFO
            targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for t in targets:
            if t.startswith((str(rig.d.root), str(rig.d.state))) and not t.startswith(own):
                held.setdefault(pid, []).append(t)
    assert rig.shim_pids("c3") and ours
    assert held == {}, held
