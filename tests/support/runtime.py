"""Helpers for the runtime tests: the real containerd 1.6 as a peer, and leftovers to sweep.

``ContainerdProcess`` runs Debian's ``/usr/bin/containerd`` on its own root, state and socket
(CRI off, its ``opt`` folder inside the base) with the same interface as
``tests.conftest.DaemonProcess`` (``start``, ``stop``, ``ctr``, ``root``, ``state``,
``address``), so one test can drive either daemon with the real ``ctr``::

    d = ContainerdProcess(base, path=[our_shim_dir()])   # our shim on containerd's PATH
    d.start()
    d.ctr("run", "--rm", "--runtime", "io.containerd.aiorunc.v2", ref, "c1", "echo", "hi")

What a container run leaves behind when a test fails half way — shims, container processes,
rootfs mounts, cgroups, shim sockets in ``/run/containerd/s``, runc state — is found from what
the test knows (its daemon's folders and address, its namespace) and removed by ``sweep()``;
nothing another test or user runs is touched (each test uses its own namespace, so its
cgroups are ``/<namespace>/<id>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, wait_serving

CONTAINERD_BINARY = "/usr/bin/containerd"
GO_SHIM = "/usr/bin/containerd-shim-runc-v2"
OUR_SHIM = "containerd-shim-aiorunc-v2"
SHIM_SOCKET_DIR = Path("/run/containerd/s")      # where shims (Go's, and ours as containerd's) listen
RUNC_ROOT = Path("/run/containerd/runc")          # the Go shim's runc --root (<root>/<namespace>/<id>)
CGROUP_ROOT = Path("/sys/fs/cgroup")
TASK_STATE = "io.containerd.runtime.v2.task"      # <state>/<this>/<namespace>/<id> = the bundle


def our_shim_dir() -> Path:
    """The folder holding our ``containerd-shim-aiorunc-v2`` console script (this interpreter's)."""
    return Path(sys.executable).parent


def our_shim() -> Path:
    return our_shim_dir() / OUR_SHIM


class ContainerdProcess(DaemonProcess):
    """Debian's containerd 1.6 as a real process on ``base`` (root/, state/, state/c.sock).

    ``path``: folders put before ``$PATH`` in containerd's environment (where it finds
    ``containerd-shim-<name>-<version>``); ``config``: extra TOML appended to its config.
    """

    def __init__(self, base: Path, *, path: Sequence[Path | str] = (), config: str = "",
                 binary: str = CONTAINERD_BINARY) -> None:
        super().__init__(base)
        self.binary = binary
        self.path = [str(p) for p in path]
        self.config_path = base / "containerd.toml"
        self.config_path.write_text(
            "version = 2\n"
            f"root = {json.dumps(str(self.root))}\n"
            f"state = {json.dumps(str(self.state))}\n"
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f"[grpc]\n  address = {json.dumps(self.address)}\n"
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = {json.dumps(str(base / "opt"))}\n'
            + config)

    def argv(self) -> list[str]:
        return [self.binary, "--config", str(self.config_path)]

    def start(self, timeout: float = 20) -> None:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([*self.path, env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, env=env)
        asyncio.run(wait_serving(self.address, timeout, self.proc))


def containerd_available() -> bool:
    return os.access(CONTAINERD_BINARY, os.X_OK) and os.access(GO_SHIM, os.X_OK)


# -- /proc ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str


def processes() -> dict[int, Proc]:
    """Every process now: {pid: Proc} (from /proc/<pid>/stat)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        head, _, rest = stat.rpartition(")")
        fields = rest.split()
        pid = int(entry.name)
        out[pid] = Proc(pid, int(fields[1]), fields[0], head.partition("(")[2])
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def descendants(roots: Iterable[int], table: dict[int, Proc] | None = None) -> set[int]:
    """``roots`` and every process below them."""
    table = processes() if table is None else table
    kids: dict[int, list[int]] = {}
    for p in table.values():
        kids.setdefault(p.ppid, []).append(p.pid)
    out: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(kids.get(pid, ()))
    return out


#: what a shim's command line holds in its first words: Go's binary name, or our shim's modules
#: (``python -P -m aiocontainerd.runtimes.aiorunc.forkserver {...}``: the fork server and the
#: shims it forks keep its command line)
SHIM_MARKS = ("containerd-shim", "aiocontainerd.runtimes.aiorunc")


def shims_of(base: Path | str, table: dict[int, Proc] | None = None) -> set[int]:
    """Shim processes (our fork server included) serving a daemon rooted in ``base``: their
    command line or environment (``GRPC_ADDRESS``) names a path under ``base``, or they run
    in one of its bundles."""
    prefix = str(base).rstrip("/") + "/"
    table = processes() if table is None else table
    out = set()
    for pid in table:
        argv = cmdline(pid)
        if not any(SHIM_MARK in a for a in argv[:4] for SHIM_MARK in SHIM_MARKS):
            continue
        if any(prefix in a for a in argv) or cwd(pid).startswith(prefix) or prefix in environ(pid):
            out.add(pid)
    return out


def environ(pid: int) -> str:
    """The environment of ``pid`` as one string (a shim's GRPC_ADDRESS names its daemon)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().replace(b"\0", b"\n").decode(errors="replace")
    except OSError:
        return ""


async def wait_child_exit(pid: int) -> int:
    """Wait (pidfd, no polling) for our child ``pid`` to exit; reap it; return its wait status."""
    loop = asyncio.get_running_loop()
    fd = os.pidfd_open(pid)
    try:
        exited = loop.create_future()
        loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
        try:
            await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (exited: pidfd was readable)
    return status


def zombies_under(parents: Iterable[int], table: dict[int, Proc] | None = None) -> list[Proc]:
    """Zombie processes whose parent is one of ``parents``."""
    table = processes() if table is None else table
    parents = set(parents)
    return [p for p in table.values() if p.state == "Z" and p.ppid in parents]


def wait_no_zombies(parents_of: Iterable[int] | None = None, *, base: Path | str,
                    timeout: float = 5.0) -> list[Proc]:
    """Zombies left below a daemon's processes (``parents_of``: its pid) and its shims after
    ``timeout`` seconds (an exit is reaped a moment after it happens); [] when none."""
    deadline = time.monotonic() + timeout
    while True:
        table = processes()
        roots = set(parents_of or ()) | shims_of(base, table)
        found = zombies_under(descendants(roots, table), table)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# -- bundles, mounts, sockets, cgroups --------------------------------------------------------------
ROOTFS_APPLETS = ("sh", "echo", "sleep", "cat", "ps", "true", "ls", "id", "env")


def busybox_rootfs(path: Path | str) -> Path:
    """A minimal root file system in ``path`` (created): busybox-static (``/bin/busybox`` of the
    host) with ``ROOTFS_APPLETS`` in ``/bin``, empty ``/proc /dev /sys /tmp`` and an
    ``/etc/passwd`` with root; returns ``path``."""
    from tests.support.images import BUSYBOX

    path = Path(path)
    (path / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in ROOTFS_APPLETS:
        os.symlink("busybox", path / "bin" / applet)
    for d in ("proc", "dev", "sys", "tmp", "etc"):
        (path / d).mkdir(exist_ok=True)
    (path / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    return path


def bundle(state: Path, namespace: str, id: str) -> Path:
    return state / TASK_STATE / namespace / id


def mounts_under(folder: Path | str) -> list[str]:
    """Mount points at or below ``folder``, deepest first."""
    prefix = str(folder).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix) or point == prefix[:-1]:
                points.append(point)
    return sorted(points, key=len, reverse=True)


def go_shim_socket(address: str, namespace: str, id: str) -> Path:
    """The socket containerd 1.6's shims listen on: /run/containerd/s/sha256(address/ns/id)."""
    digest = hashlib.sha256(os.path.join(address, namespace, id).encode()).hexdigest()
    return SHIM_SOCKET_DIR / digest


def fifos_under(folder: Path | str) -> list[Path]:
    import stat

    out = []
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = Path(dirpath) / name
            with contextlib.suppress(OSError):
                if stat.S_ISFIFO(p.lstat().st_mode):
                    out.append(p)
    return out


def cgroup_dirs(namespace: str) -> list[Path]:
    """The cgroup folders of a namespace's containers (``/<namespace>`` on every hierarchy)."""
    out = []
    if not CGROUP_ROOT.is_dir():
        return out
    for hierarchy in CGROUP_ROOT.iterdir():
        d = hierarchy / namespace
        if d.is_dir():
            out.append(d)
    if (CGROUP_ROOT / namespace / "cgroup.procs").exists():   # a pure v2 host
        out.append(CGROUP_ROOT / namespace)
    return out


def cgroup_pids(namespace: str) -> set[int]:
    pids = set()
    for d in cgroup_dirs(namespace):
        for procs in d.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return pids


def _thaw(namespace: str) -> None:
    freezer = CGROUP_ROOT / "freezer" / namespace
    if freezer.is_dir():
        for state in freezer.rglob("freezer.state"):
            with contextlib.suppress(OSError):
                state.write_text("THAWED")
    for d in cgroup_dirs(namespace):          # cgroup v2 freeze
        for f in d.rglob("cgroup.freeze"):
            with contextlib.suppress(OSError):
                f.write_text("0")


def _rmdir_tree(d: Path) -> None:
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(str(p)), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        d.rmdir()


def sweep(base: Path, namespace: str, address: str, ids: Iterable[str] = ()) -> list[str]:
    """Remove what container runs of one test left: returns what was found (for a message).

    Kills the shims of the daemon rooted in ``base`` and the processes in the namespace's
    cgroups, unmounts what is mounted under ``base``, removes the namespace's cgroups, runc
    state and the shim sockets of ``ids`` (Go's naming) and those named in bundles' ``address``.
    Call it after the daemon stopped (or was killed).
    """
    found: list[str] = []
    state = base / "state"
    sockets: set[Path] = {go_shim_socket(address, namespace, i) for i in ids}
    for addr in (state / TASK_STATE).glob("*/*/address"):
        with contextlib.suppress(OSError):
            text = addr.read_text().strip()
            if text.startswith("unix://") and not text.startswith("unix://@"):
                sockets.add(Path(text[len("unix://"):]))
    _thaw(namespace)
    table = processes()
    shims = shims_of(base, table)
    victims = (descendants(shims, table) | cgroup_pids(namespace)) - {os.getpid()}
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            found.append(f"process {pid} ({table[pid].comm if pid in table else '?'})")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and
                                              processes().get(p, Proc(p, 0, "Z", "")).state != "Z"
                                              for p in victims):
        time.sleep(0.05)
    for point in mounts_under(base):
        r = subprocess.run(["umount", "-l", point], capture_output=True, text=True, check=False)
        found.append(f"mount {point}" + ("" if r.returncode == 0 else f" (umount: {r.stderr.strip()})"))
    for d in cgroup_dirs(namespace):
        _rmdir_tree(d)
    for runc_root in (RUNC_ROOT / namespace, Path("/run/crun") / namespace):
        if runc_root.exists():
            shutil.rmtree(runc_root, ignore_errors=True)
    for s in sockets:
        if s.exists() or s.is_symlink():
            found.append(f"socket {s}")
            with contextlib.suppress(OSError):
                s.unlink()
    return found


@contextlib.contextmanager
def swept(base: Path, namespace: str, address: str, ids: Iterable[str] = ()) -> Iterator[None]:
    """Run the block; sweep afterwards whatever happened."""
    try:
        yield
    finally:
        sweep(base, namespace, address, ids)




# -- one daemon, one namespace, one image: what a runtime test drives with the real ctr ----------
GO_SHIM_CONFIG_RUNTIME = "io.containerd.runc.v2"


def aiocontainerd_runtime_config(runtime: str, path: str, options: dict[str, object] | None = None) -> str:
    """TOML that points ``runtime`` at the shim binary ``path`` in our daemon's
    ``io.containerd.runtime.v2.task`` plugin (runtime name -> {path, options})."""
    lines = [f'[plugins."io.containerd.runtime.v2.task".runtimes.{json.dumps(runtime)}]',
             f"path = {json.dumps(path)}"]
    if options:
        lines.append(f'[plugins."io.containerd.runtime.v2.task".runtimes.{json.dumps(runtime)}.options]')
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def crun_unusable() -> str | None:
    """Why crun cannot run containers on this host, or None.

    crun 1.8 refuses a hybrid cgroup host whose unified hierarchy holds a controller
    ("cgroups in hybrid mode not supported, drop all controllers from cgroupv2"), whatever
    the cgroup manager; runc does not mind.
    """
    if shutil.which("crun") is None:
        return "crun is not installed (apt-get install crun)"
    unified = CGROUP_ROOT / "unified" / "cgroup.controllers"
    with contextlib.suppress(OSError):
        controllers = unified.read_text().split()
        if controllers and (CGROUP_ROOT / "memory").is_dir():
            return (f"crun 1.8 refuses this hybrid cgroup host: its cgroup v2 hierarchy holds "
                    f"{' '.join(controllers)} (\"cgroups in hybrid mode not supported\")")
    return None


@dataclass
class Event:
    """One line of ``ctr events``: namespace, topic and the event as JSON."""

    namespace: str
    topic: str
    data: dict[str, object]


class EventWatcher:
    """``ctr events`` in the background, its output in a file."""

    def __init__(self, daemon: DaemonProcess, out: Path) -> None:
        self.out = out
        self._file = open(out, "wb")   # closed in stop()
        self.proc = subprocess.Popen(["ctr", "--address", daemon.address, "events"],
                                     stdout=self._file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def events(self) -> list[Event]:
        out = []
        for line in self.out.read_text(errors="replace").splitlines():
            # "<date> <time> <zone> UTC <namespace> <topic> <json>"
            parts = line.split(" ", 6)
            if len(parts) == 7 and parts[5].startswith("/"):
                try:
                    data = json.loads(parts[6])
                except ValueError:
                    data = {"raw": parts[6]}
                out.append(Event(parts[4], parts[5], data))
        return out

    def wait_for(self, predicate: object, timeout: float = 10.0) -> list[Event]:
        """Events so far once ``predicate(events)`` holds; the events so far after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.events()
            if predicate(evs) or time.monotonic() > deadline:  # type: ignore[operator]
                return evs
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._file.close()


class Rig:
    """A daemon (ours or containerd), a namespace of this test's own, an image pulled into it.

    ``ctr()`` runs the real ctr in that namespace; ``run_args`` go after ``ctr run`` (runtime,
    runc binary) for the setup under test; ``close()`` removes every container, stops the
    daemon and sweeps what is left.
    """

    def __init__(self, daemon: DaemonProcess, namespace: str, run_args: Sequence[str] = (),
                 shim: str = "") -> None:
        self.d = daemon
        self.ns = namespace
        self.run_args = list(run_args)
        self.shim = shim                 # the shim binary's name that should serve the tasks
        self.ref = ""
        self.base = daemon.base
        self.fifo_dir = daemon.base / "fifo"
        self.ids: set[str] = set()
        self.watcher: EventWatcher | None = None

    @property
    def daemon_name(self) -> str:
        return "containerd" if isinstance(self.d, ContainerdProcess) else "aiocontainerd"

    def ctr(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", self.d.address, "--namespace", self.ns, *args]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                               stdin=None if input is not None else subprocess.DEVNULL, input=input)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"ctr {' '.join(args)} did not finish in {timeout}s\n"
                                 f"--- daemon log:\n{self.log_tail()}") from e
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}\n"
                                 f"--- daemon log:\n{self.log_tail()}")
        return r

    def run(self, id: str, *command: str, flags: Sequence[str] = ("--rm",), check: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ctr run FLAGS RUN_ARGS IMAGE ID COMMAND…`` (detached runs get a FIFO dir of the test's)."""
        self.ids.add(id)
        extra = ["--fifo-dir", str(self.fifo_dir)] if "-d" in flags else []
        return self.ctr("run", *flags, *extra, *self.run_args, self.ref, id, *command,
                        check=check, timeout=timeout)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.d.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def tasks(self) -> dict[str, tuple[int, str]]:
        """{id: (pid, status)} from ``ctr task ls``."""
        out = {}
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            f = line.split()
            if len(f) >= 3:
                out[f[0]] = (int(f[1]), f[2])
        return out

    def containers(self) -> list[str]:
        return self.ctr("containers", "ls", "-q").stdout.split()

    def wait_status(self, id: str, status: str | None, timeout: float = 10) -> dict[str, tuple[int, str]]:
        """Poll ``ctr task ls`` until ``id`` has ``status`` (None: until it is listed no more)."""
        deadline = time.monotonic() + timeout
        while True:
            tasks = self.tasks()
            now = tasks.get(id, (0, None))[1]
            if now == status or time.monotonic() > deadline:
                return tasks
            time.sleep(0.05)

    def bundle(self, id: str) -> Path:
        return bundle(self.d.state, self.ns, id)

    def shim_pids(self, id: str | None = None) -> set[int]:
        """Shims of this daemon; with ``id``, the one serving that task (argv ``-id ID`` or
        running in its bundle)."""
        table = processes()
        pids = shims_of(self.base, table)
        if id is None:
            return pids
        b = str(self.bundle(id))
        out = set()
        for pid in pids:
            argv = cmdline(pid)
            if cwd(pid) == b or any(a == "-id" and i + 1 < len(argv) and argv[i + 1] == id
                                    for i, a in enumerate(argv)):
                out.add(pid)
        return out

    def watch_events(self) -> EventWatcher:
        """Start ``ctr events`` and return once it is subscribed (a namespace label update
        shows up, or after 1 s if the daemon publishes no namespace events)."""
        w = self.watcher = EventWatcher(self.d, self.base / "events.txt")
        deadline = time.monotonic() + 1.0
        i = 0
        while time.monotonic() < deadline:
            i += 1
            self.ctr("namespaces", "label", self.ns, f"probe={i}")
            if any(e.topic == "/namespaces/update" for e in w.events()):
                break
            time.sleep(0.05)
        self.ctr("namespaces", "label", self.ns, "probe=")
        return w

    def close(self) -> list[str]:
        """Kill and delete every task and container of the namespace (best effort), stop the
        daemon, sweep; returns what the sweep found."""
        if self.watcher is not None:
            self.watcher.stop()
        if self.d.proc is not None and self.d.proc.poll() is None:
            with contextlib.suppress(Exception):
                for id in self.containers():
                    self.ctr("task", "kill", "-s", "SIGKILL", id, check=False, timeout=10)
                    self.ctr("task", "delete", "-f", id, check=False, timeout=10)
                    self.ctr("containers", "rm", id, check=False, timeout=10)
                    self.ids.add(id)
            with contextlib.suppress(Exception):
                self.d.stop(timeout=20)
        if self.d.proc is not None:
            with contextlib.suppress(Exception):
                self.d.stop(signal.SIGKILL)
        return sweep(self.base, self.ns, self.d.address, self.ids)


@dataclass(frozen=True)
class Setup:
    """Which daemon runs the containers, through which shim and OCI runtime.

    ``run_args`` go after ``ctr run``; ``config`` is extra daemon configuration; ``shim`` is the
    shim binary's name expected to serve the tasks; ``unusable`` says why this setup cannot
    run on this host (the test is skipped then).
    """

    name: str
    daemon: str                              # "aiocontainerd" or "containerd"
    shim: str
    run_args: tuple[str, ...] = ()
    config: str = ""
    path: tuple[str, ...] = ()               # containerd: folders before $PATH (shims)
    unusable: Callable[[], str | None] | None = None


OURS = Setup("aiocontainerd", "aiocontainerd", OUR_SHIM)
OURS_GO_SHIM = Setup("aiocontainerd+go-shim", "aiocontainerd", "containerd-shim-runc-v2",
                     ("--runtime", GO_SHIM_CONFIG_RUNTIME),
                     config=aiocontainerd_runtime_config(GO_SHIM_CONFIG_RUNTIME, GO_SHIM))
OURS_CRUN = Setup("aiocontainerd+crun", "aiocontainerd", OUR_SHIM, ("--runc-binary", "crun"),
                  unusable=crun_unusable)
CONTAINERD = Setup("containerd", "containerd", "containerd-shim-runc-v2")
CONTAINERD_OUR_SHIM = Setup("containerd+our-shim", "containerd", OUR_SHIM,
                            ("--runtime", "io.containerd.aiorunc.v2"), path=(str(our_shim_dir()),))
CONTAINERD_CRUN = Setup("containerd+crun", "containerd", "containerd-shim-runc-v2",
                        ("--runc-binary", "crun"), unusable=crun_unusable)


def setup_unusable(setup: Setup) -> str | None:
    """Why ``setup`` cannot run here (a binary missing, crun on this cgroup layout), or None."""
    if shutil.which("ctr") is None:
        return "the real ctr is not installed (apt-get install containerd)"
    if setup.daemon == "containerd" and not containerd_available():
        return f"{CONTAINERD_BINARY} or {GO_SHIM} is missing (apt-get install containerd)"
    if setup.shim == "containerd-shim-runc-v2" and not os.access(GO_SHIM, os.X_OK):
        return f"{GO_SHIM} is missing (apt-get install containerd)"
    if setup.shim == OUR_SHIM and not os.access(our_shim(), os.X_OK):
        return f"{our_shim()} is missing (pip install -e .)"
    return setup.unusable() if setup.unusable is not None else None


@contextlib.asynccontextmanager
async def open_rig(setup: Setup, registry_host: str) -> AsyncIterator[Rig]:
    """Push busybox to the registry, start the daemon of ``setup`` on fresh folders, pull the
    image into a namespace of this test's own; on exit remove everything (see ``Rig.close``)."""
    from tests.conftest import short_tmp
    from tests.support.images import busybox_image, push

    await push(registry_host, "test/busybox", "1", busybox_image())
    base = short_tmp()
    if setup.daemon == "containerd":
        d: DaemonProcess = ContainerdProcess(base, path=setup.path, config=setup.config)
    elif setup.config:
        cfg = base / "config.toml"
        cfg.write_text("version = 3\n" + setup.config)
        d = DaemonProcess(base, "--config", str(cfg))
    else:
        d = DaemonProcess(base)
    rig = Rig(d, f"rt{secrets.token_hex(4)}", setup.run_args, setup.shim)
    rig.ref = f"{registry_host}/test/busybox:1"
    try:
        await asyncio.to_thread(d.start)
        await asyncio.to_thread(rig.ctr, "images", "pull", "--plain-http", rig.ref)
        yield rig
    finally:
        await asyncio.to_thread(rig.close)
        if not mounts_under(base):
            shutil.rmtree(base, ignore_errors=True)


def rig_fixture(setups: Sequence[Setup]) -> Any:
    """A pytest fixture ``rig`` parametrised over ``setups`` (ids: their names): the ``Rig`` of
    ``open_rig`` on the session's ``registry``; skipped where ``setup_unusable`` says why.
    Use as ``rig = rig_fixture(SETUPS)`` at a test module's top level."""

    @pytest.fixture(params=list(setups), ids=[s.name for s in setups])
    async def rig(request: pytest.FixtureRequest, registry: Any) -> AsyncIterator[Rig]:
        setup: Setup = request.param
        why = setup_unusable(setup)
        if why:
            pytest.skip(why)
        async with open_rig(setup, registry.host) as r:
            yield r

    return rig


def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` every 50 ms (blocking) until it is true: True, or False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
