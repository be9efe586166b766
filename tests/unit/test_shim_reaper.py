"""The shim's Reaper: spawn without asyncio's child watcher, exit statuses, late watchers,
subscribers, fd renumbering, and (in a subprocess, as a real subreaper) no zombies."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from aiocontainerd.runtimes.aiorunc.reaper import PIPE, STDOUT, Reaper, exit_status, is_subreaper
from tests.support import shim

reaper = shim.reaper   # the fixture


def test_exit_status() -> None:
    assert exit_status(7 << 8) == 7
    assert exit_status(0) == 0
    assert exit_status(signal.SIGKILL) == 137
    assert exit_status(signal.SIGTERM) == 143


async def test_exit_code_and_signal(reaper: Reaper) -> None:
    child = await reaper.spawn(["sh", "-c", "exit 3"])
    assert await asyncio.wait_for(child.wait(), 10) == 3
    assert child.returncode == 3
    sleeper = await reaper.spawn(["sleep", "30"])
    sleeper.kill()
    assert await asyncio.wait_for(sleeper.wait(), 10) == 137
    sleeper.kill()   # reaped already: no error, no stray signal


async def test_pipes(reaper: Reaper) -> None:
    child = await reaper.spawn(["sh", "-c", "echo out; echo err >&2"], stdout=PIPE, stderr=PIPE)
    assert await child.communicate() == (b"out\n", b"err\n")
    child = await reaper.spawn(["sh", "-c", "echo out; echo err >&2"], stdout=PIPE, stderr=STDOUT)
    out, err = await child.communicate()
    assert sorted(out.splitlines()) == [b"err", b"out"] and err == b""
    child = await reaper.spawn(["cat"], stdin=PIPE, stdout=PIPE)
    data = os.urandom(1 << 20)
    assert (await child.communicate(data))[0] == data
    assert child.returncode == 0


async def test_env_cwd_and_fd_map(reaper: Reaper, tmp_path) -> None:
    child = await reaper.spawn(["sh", "-c", 'echo "$FOO $(pwd)"'], stdout=PIPE,
                               env={"FOO": "bar", "PATH": os.environ["PATH"]}, cwd=str(tmp_path))
    assert (await child.communicate())[0] == f"bar {tmp_path}\n".encode()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    child = await reaper.spawn(["sh", "-c", "echo three >&3; echo four >&4; echo $X"],
                               stdout=PIPE, env={"X": "only", "PATH": os.environ["PATH"]},
                               fd_map={3: w2, 4: w1})
    os.close(w1)
    os.close(w2)
    assert (await child.communicate())[0] == b"only\n"
    assert os.read(r2, 100) == b"three\n"
    assert os.read(r1, 100) == b"four\n"
    os.close(r1)
    os.close(r2)


async def test_spawn_failure(reaper: Reaper) -> None:
    with pytest.raises(FileNotFoundError):
        await reaper.spawn(["/nonexistent/program"])
    with pytest.raises(FileNotFoundError):
        await reaper.spawn(["/nonexistent/program"], fd_map={3: 1})


async def test_late_watch_and_subscribe(reaper: Reaper) -> None:
    seen: list[tuple[int, int]] = []
    unsubscribe = reaper.subscribe(lambda pid, status: seen.append((pid, status)))
    child = await reaper.spawn(["sh", "-c", "exit 5"])
    await child.wait()
    late = reaper.watch(child.pid)
    assert late.done() and late.result() == 5
    assert reaper.exited(child.pid) == 5
    assert (child.pid, 5) in seen
    unsubscribe()
    child2 = await reaper.spawn(["true"])
    await child2.wait()
    assert all(pid != child2.pid for pid, _ in seen)
    reaper.forget(child.pid)
    assert reaper.exited(child.pid) is None


async def test_stale_exit_of_reused_pid_is_ignored(reaper: Reaper) -> None:
    child = await reaper.spawn(["sleep", "30"])
    reaper._exits[child.pid] = 99          # as if an earlier process had this pid
    fut = reaper.watch(child.pid)
    assert not fut.done()
    child.kill()
    assert await asyncio.wait_for(fut, 10) == 137


async def test_bad_subscriber_does_not_stop_reaping(reaper: Reaper) -> None:
    def boom(pid: int, status: int) -> None:
        raise RuntimeError("subscriber bug")

    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: None)
    reaper.subscribe(boom)
    child = await reaper.spawn(["true"])
    assert await asyncio.wait_for(child.wait(), 10) == 0


async def test_remembered_exits_are_bounded() -> None:
    r = Reaper(remembered=2)
    r.install(asyncio.get_running_loop(), subreaper=False)
    try:
        children = [await r.spawn(["true"]) for _ in range(4)]
        for c in children:
            await c.wait()
        assert sum(r.exited(c.pid) is not None for c in children) == 2
    finally:
        r.uninstall()


SUBREAPER_SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    from aiocontainerd.runtimes.aiorunc.reaper import Reaper, is_subreaper

    def zombies():
        out = []
        for e in os.listdir("/proc"):
            if not e.isdigit():
                continue
            try:
                fields = open(f"/proc/{e}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == os.getpid():
                out.append(int(e))
        return out

    async def main():
        r = Reaper()
        r.install(asyncio.get_running_loop())
        assert is_subreaper()
        seen = {}
        r.subscribe(lambda pid, status: seen.__setitem__(pid, status))
        # each child double-forks: the grandchildren are re-parented to us
        script = "(sh -c 'sleep 0.2; exit 9' &) ; (sleep 0.1 &) ; exit 4"
        children = [await r.spawn(["sh", "-c", script]) for _ in range(10)]
        assert [await c.wait() for c in children] == [4] * 10
        await asyncio.sleep(1.0)
        assert sorted(seen.values()).count(9) == 10, seen
        # an orphan's pid learned after its exit still gets its status
        orphan_pids = [p for p, s in seen.items() if s == 9]
        assert all(r.watch(p).result() == 9 for p in orphan_pids)
        assert zombies() == [], zombies()
        r.uninstall()
        assert not is_subreaper()
        print("ok", len(seen))

    asyncio.run(main())
""")


def test_subreaper_leaves_no_zombies() -> None:
    proc = subprocess.run([sys.executable, "-c", SUBREAPER_SCRIPT], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")
    assert not is_subreaper()


# -- Runc's command lines and error mapping, with a fake runtime binary -----------------

FAKE_RUNTIME = """#!/bin/sh
printf '%s\\n' "$@" > "$ARGS_FILE"
if [ -n "$STDIN_FILE" ]; then cat > "$STDIN_FILE"; fi
case "$FAIL" in
  json) echo '{"level":"error","msg":"container does not exist","time":"x"}' >&2; exit 1 ;;
  text) echo 'some warning'; echo 'container not running' >&2; exit 1 ;;
  log)  echo '{"level":"info","msg":"fine"}' >> "$LOG"
        echo '{"level":"error","msg":"runc create failed: boom"}' >> "$LOG"; exit 2 ;;
esac
case "$*" in
  *" state "*) echo '{"id":"c1","pid":42,"status":"running"}' ;;
  *" ps "*) echo '[42,43]' ;;
esac
"""


@pytest.fixture
def fake_runtime(tmp_path):
    path = tmp_path / "fake-runc"
    path.write_text(FAKE_RUNTIME)
    path.chmod(0o755)
    return path


def runc_for(reaper: Reaper, fake, tmp_path, fail: str = "", log: str | None = None, **kw):
    from aiocontainerd.runtimes.aiorunc.runc import Runc

    env = {"PATH": os.environ["PATH"], "ARGS_FILE": str(tmp_path / "args"), "FAIL": fail,
           "LOG": log or "", "STDIN_FILE": str(tmp_path / "stdin"), "NOTIFY_SOCKET": "/x"}
    r = Runc(reaper, binary=str(fake), root="/run/test-root", log=log, **kw)
    r.env = {k: v for k, v in env.items() if k != "NOTIFY_SOCKET"}
    return r


def args_of(tmp_path) -> list[str]:
    return (tmp_path / "args").read_text().splitlines()


async def test_runc_command_lines(reaper: Reaper, fake_runtime, tmp_path) -> None:
    log = str(tmp_path / "log.json")
    r = runc_for(reaper, fake_runtime, tmp_path, log=log, systemd_cgroup=True, debug=True)
    glob = ["--root", "/run/test-root", "--debug", "--log", log, "--log-format", "json",
            "--systemd-cgroup"]
    await r.create("c1", "/b", pid_file="/b/init.pid", console_socket="/s.sock",
                   no_pivot=True, no_new_keyring=True)
    assert args_of(tmp_path) == [*glob, "create", "--bundle", "/b", "--pid-file", "/b/init.pid",
                                 "--console-socket", "/s.sock", "--no-pivot",
                                 "--no-new-keyring", "c1"]
    await r.exec("c1", "/b/p.json", pid_file="/b/e.pid")
    assert args_of(tmp_path) == [*glob, "exec", "--process", "/b/p.json", "--detach",
                                 "--pid-file", "/b/e.pid", "c1"]
    await r.kill("c1", 9, all=True)
    assert args_of(tmp_path)[len(glob):] == ["kill", "--all", "c1", "9"]
    await r.delete("c1", force=True)
    assert args_of(tmp_path)[len(glob):] == ["delete", "--force", "c1"]
    assert (await r.state("c1"))["pid"] == 42
    assert await r.ps("c1") == [42, 43]
    assert args_of(tmp_path)[len(glob):] == ["ps", "--format", "json", "c1"]
    await r.update("c1", {"pids": {"limit": 5}})
    assert args_of(tmp_path)[len(glob):] == ["update", "--resources", "-", "c1"]
    assert (tmp_path / "stdin").read_text() == '{"pids": {"limit": 5}}'
    await r.checkpoint("c1", "/img", work_path="/w", leave_running=True, allow_terminal=True)
    assert args_of(tmp_path)[len(glob):] == ["checkpoint", "--image-path", "/img", "--work-path",
                                             "/w", "--shell-job", "--leave-running", "c1"]
    await r.restore("c1", "/b", "/img", pid_file="/b/init.pid")
    assert args_of(tmp_path)[len(glob):] == ["restore", "--image-path", "/img", "--detach",
                                             "--pid-file", "/b/init.pid", "--no-subreaper",
                                             "--bundle", "/b", "c1"]
    for verb in ("start", "pause", "resume"):
        await getattr(r, verb)("c1")
        assert args_of(tmp_path)[len(glob):] == [verb, "c1"]


async def test_runc_errors(reaper: Reaper, fake_runtime, tmp_path) -> None:
    from aiocontainerd import errors
    from aiocontainerd.runtimes.aiorunc.runc import RuncError, RuncNotFound

    with pytest.raises(RuncNotFound) as ei:
        await runc_for(reaper, fake_runtime, tmp_path, fail="json").state("c1")
    assert ei.value.message == "container does not exist"
    assert ei.value.code == errors.Code.NOT_FOUND and ei.value.exit_status == 1
    with pytest.raises(RuncNotFound):   # kill of a stopped container (checkKillError)
        await runc_for(reaper, fake_runtime, tmp_path, fail="text").kill("c1", 15)
    with pytest.raises(RuncError) as ei2:
        await runc_for(reaper, fake_runtime, tmp_path, fail="text").pause("c1")
    assert type(ei2.value) is RuncError and ei2.value.message == "container not running"
    log = str(tmp_path / "log.json")
    # an older error in the log must not be reported for this call
    (tmp_path / "log.json").write_text('{"level":"error","msg":"stale"}\n')
    with pytest.raises(RuncError) as ei3:
        await runc_for(reaper, fake_runtime, tmp_path, fail="log", log=log).create(
            "c1", "/b", pid_file="/b/p")
    assert ei3.value.message == "runc create failed: boom" and ei3.value.exit_status == 2
    with pytest.raises(RuncError):
        from aiocontainerd.runtimes.aiorunc.runc import Runc
        await Runc(reaper, binary=str(tmp_path / "missing"), root="/x", log=None).start("c1")


def test_shim_modules_import_nothing_heavy() -> None:
    code = ("import sys\n"
            "import aiocontainerd.runtimes.aiorunc.reaper, aiocontainerd.runtimes.aiorunc.runc\n"
            "import aiocontainerd.runtimes.aiorunc.stdio, aiocontainerd.runtimes.aiorunc.console\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('grpclib', 'aiohttp', 'lmdb', 'prometheus_client')]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
