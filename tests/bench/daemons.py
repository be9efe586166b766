"""Start and stop the two daemons in fresh folders, and wait for their Version answer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiocontainerd import Client
from tests.support.runtime import mounts_under, processes

if TYPE_CHECKING:
    from .fixtures import Fixtures

CONTAINERD = "/usr/bin/containerd"
POLL_INTERVAL = 0.002  # seconds between connect+Version attempts
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; containerd appends ".ttrpc"


class DaemonError(RuntimeError):
    """A daemon did not start, did not answer, or could not be stopped."""


def _toml_str(s: str) -> str:
    # a JSON string is a valid TOML basic string
    return json.dumps(s)


def aiocontainerd_argv() -> list[str]:
    """The ``aiocontainerd`` command of the running interpreter's environment.

    The console script next to ``sys.executable`` (not a pyenv shim, which would
    add a bash and a pyenv start to every measurement); ``python -m`` otherwise.
    ``AIOCONTAINERD_BENCH_CMD`` (split on spaces) overrides it.
    """
    override = os.environ.get("AIOCONTAINERD_BENCH_CMD")
    if override:
        return override.split()
    script = Path(sys.executable).with_name("aiocontainerd")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "aiocontainerd.cli.daemon"]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One daemon implementation: how to configure and launch it in a run folder."""

    name: str
    #: writes the config into the run folder and returns (argv, grpc socket path)
    prepare: Callable[[Path], tuple[list[str], str]]
    #: why this daemon is left out of the run, or None
    skipped: str | None = None


#: CRI plugin sections for the runs of CRI groups: {kind name: section(run folder) -> TOML},
#: set by tests.bench.cri while its fixture is up; used for the run folders of groups whose
#: name starts with CRI_GROUP_PREFIX (folder "<group>-<run>-<kind>"), never for the others
CRI_SECTIONS: dict[str, Callable[[Path], str]] = {}
CRI_GROUP_PREFIX = "cri"


def _cri_section(kind: str, d: Path) -> str | None:
    section = CRI_SECTIONS.get(kind)
    if section is None or not d.name.startswith(CRI_GROUP_PREFIX):
        return None
    return "\n" + section(d)


def _prepare_aiocontainerd(d: Path) -> tuple[list[str], str]:
    address = str(d / "state" / "aiocontainerd.sock")
    cfg = d / "config.toml"
    cfg.write_text(
        "version = 3\n"
        f"root = {_toml_str(str(d / 'root'))}\n"
        f"state = {_toml_str(str(d / 'state'))}\n"
        "\n[grpc]\n"
        f"address = {_toml_str(address)}\n"
        + (_cri_section("aiocontainerd", d) or "")
    )
    return [*aiocontainerd_argv(), "--config", str(cfg)], address


def _containerd_prepare(binary: str) -> Callable[[Path], tuple[list[str], str]]:
    def prepare(d: Path) -> tuple[list[str], str]:
        address = str(d / "state" / "containerd.sock")
        cfg = d / "config.toml"
        # containerd's default plugin set, with two changes:
        # - the CRI plugin is disabled: it is not part of the containerd API that
        #   aiocontainerd serves today (its CRI is a stub, not loaded by default);
        #   it would also set up CNI and a streaming server on a TCP port. A CRI
        #   scenario group must enable CRI on both sides.
        # - the "opt" plugin's folder is moved from /opt/containerd into the run
        #   folder so that nothing outside it is touched (same work, other place).
        # Everything else (snapshotters incl. the ones that skip, runtimes, gc,
        # all services) stays: that is what `containerd` costs out of the box.
        # [ttrpc] address keeps its default (<grpc address>.ttrpc, in the run folder);
        # the debug and metrics endpoints are off by default.
        cri = _cri_section("containerd", d)   # CRI groups: the plugin on, configured
        cfg.write_text(
            "version = 2\n"
            f"root = {_toml_str(str(d / 'root'))}\n"
            f"state = {_toml_str(str(d / 'state'))}\n"
            + ('disabled_plugins = ["io.containerd.grpc.v1.cri"]\n' if cri is None else "")
            + "\n[grpc]\n"
            f"  address = {_toml_str(address)}\n"
            '\n[plugins."io.containerd.internal.v1.opt"]\n'
            f"  path = {_toml_str(str(d / 'opt'))}\n"
            + (cri or "")
        )
        return [binary, "--config", str(cfg)], address

    return prepare


def kinds(containerd: str = CONTAINERD) -> list[Kind]:
    """aiocontainerd then containerd (skipped, with the reason, when the binary is missing)."""
    skipped = None
    if not (os.path.isfile(containerd) and os.access(containerd, os.X_OK)):
        skipped = f"{containerd} not found (apt-get install containerd); containerd column skipped"
    return [
        Kind("aiocontainerd", _prepare_aiocontainerd),
        Kind("containerd", _containerd_prepare(containerd), skipped),
    ]


@dataclasses.dataclass
class Running:
    """A daemon started by :func:`start`, answering Version on ``address``."""

    kind: str
    index: int  # run number, -1 for the warm-up
    folder: Path
    address: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    spawned_at: float  # time.perf_counter() just before the spawn
    answered_at: float = 0.0  # time.perf_counter() when Version first answered
    version: str = ""
    revision: str = ""
    #: the series' session fixtures (registry, large image...), set by the runner
    fixtures: Fixtures | None = None
    #: values a scenario measured for the scenarios ``derived`` from it (same group, later)
    recorded: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        return self.proc.pid

    @property
    def start_seconds(self) -> float:
        """Spawn to first Version answer."""
        return self.answered_at - self.spawned_at

    @property
    def log(self) -> Path:
        """The daemon's stdout+stderr."""
        return self.folder / "daemon.log"

    def client(self, namespace: str = "default") -> Client:
        """A new :class:`aiocontainerd.Client` on this daemon (close it, or use ``async with``)."""
        return Client(self.address, namespace=namespace)

    async def ctr(self, *args: str) -> str:
        """Run ``ctr --address <socket> ARGS`` and return its stdout; DaemonError on failure.

        Bound it with ``async with asyncio.timeout(...)``: ctr is killed when cancelled.
        """
        proc = await asyncio.create_subprocess_exec(
            "ctr", "--address", self.address, *args,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = await proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise DaemonError(f"ctr {' '.join(args)}: exit {proc.returncode}: "
                              f"{err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _socket_exists(address: str) -> bool:
    # one stat: cheaper than a refused connect, for the 2 ms polling
    return os.path.exists(address)


def _spawn(argv: list[str], folder: Path) -> tuple[subprocess.Popen[bytes], float]:
    # synchronous on purpose: nothing else runs meanwhile, and the clock starts
    # right before the fork. TMPDIR is the run folder's own: the temporary mounts
    # a daemon makes to apply or compare layers (containerd's /tmp/containerd-mount*,
    # ours aiocontainerd-mount-*) land in its folder, where a left-over one is found
    # (mounts_under) without touching other users' /tmp.
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp)}
    with open(folder / "daemon.log", "wb") as log:
        spawned_at = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=folder, env=env, start_new_session=True)
    return proc, spawned_at


def _prepare(kind: Kind, folder: Path) -> tuple[list[str], str]:
    folder.mkdir(parents=True)
    argv, address = kind.prepare(folder)
    if len(address) > SOCKET_PATH_MAX:
        raise DaemonError(f"socket path too long for a unix socket: {address} (set TMPDIR=/tmp)")
    return argv, address


async def _try_version(address: str) -> tuple[str, str] | None:
    if not _socket_exists(address):
        return None
    try:
        async with Client(address, timeout=2.0) as c:
            v = await c.version()
    except Exception:  # refused, reset, UNAVAILABLE...: not ready yet
        return None
    return v.version, v.revision


async def start(kind: Kind, folder: Path, index: int) -> Running:
    """Spawn ``kind`` in the (new) ``folder`` and return once Version answers.

    Polls the socket every 2 ms with connect+Version. Raises DaemonError if the
    process exits first, or does not answer within a minute (it is then stopped).
    """
    argv, address = _prepare(kind, folder)
    proc, spawned_at = _spawn(argv, folder)
    run = Running(kind.name, index, folder, address, argv, proc, spawned_at)
    deadline = spawned_at + START_TIMEOUT
    try:
        while True:
            v = await _try_version(address)
            if v is not None:
                run.answered_at = time.perf_counter()
                run.version, run.revision = v
                return run
            if proc.poll() is not None:
                raise DaemonError(f"{kind.name} exited with status {proc.returncode} before answering "
                                  f"Version; log {run.log} (--keep keeps it):\n{run.log_tail()}")
            if time.perf_counter() > deadline:
                raise DaemonError(f"{kind.name} did not answer Version on {address} within "
                                  f"{START_TIMEOUT:.0f} s; log {run.log} (--keep keeps it):\n"
                                  f"{run.log_tail()}")
            await asyncio.sleep(POLL_INTERVAL)
    except BaseException:  # failed, or cancelled while waiting: leave nothing running
        await asyncio.shield(stop(run))
        raise


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid``."""
    return [p.pid for p in processes().values() if p.ppid == pid]


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` from /proc/<pid>/status, in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise DaemonError(f"no VmRSS for pid {pid}")


async def stop(run: Running) -> list[str]:
    """SIGTERM the daemon and wait for it (SIGKILL after 15 s); returns warnings.

    Its direct children still alive afterwards are killed and reported.
    """
    warnings: list[str] = []
    proc = run.proc
    if proc.poll() is not None:
        return [f"{run.kind} run {run.index}: had already exited with status {proc.returncode}"]
    kids = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)
        warnings.append(f"{run.kind} run {run.index}: still running {STOP_TIMEOUT:.0f} s after "
                        "SIGTERM, killed")
    if proc.returncode not in (0, -signal.SIGKILL):
        warnings.append(f"{run.kind} run {run.index}: exit status {proc.returncode} after SIGTERM; "
                        f"log {run.log}:\n{run.log_tail(5)}")
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            warnings.append(f"{run.kind} run {run.index}: child {pid} outlived the daemon, killed")
    return warnings


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:100]
    except OSError:
        return "?"


def _processes_of(folder: Path) -> list[int]:
    """Processes (a shim, a fork server) whose command line or environment names ``folder``."""
    mark = str(folder).rstrip("/").encode() + b"/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{entry.name}/{what}", "rb") as f:
                    if mark in f.read():
                        found.append(int(entry.name))
                        break
            except OSError:
                continue
    return found


def cleanup(folder: Path, keep: bool = False) -> list[str]:
    """Unmount what is left below ``folder`` (reported), then delete it unless ``keep``."""
    warnings = []
    for pid in _processes_of(folder):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            warnings.append(f"process {pid} ({_cmd(pid)}) of a run outlived its daemon, killed")
    for point in mounts_under(folder):
        r = subprocess.run(["umount", "-l", point], capture_output=True, text=True, check=False)
        warnings.append(f"left-over mount {point} unmounted"
                        + ("" if r.returncode == 0 else f" (failed: {r.stderr.strip()})"))
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            warnings.append(f"could not delete {folder} entirely")
    return warnings


class PeakRSS:
    """Samples the VmRSS of ``pid`` every ``interval`` seconds while the block runs::

        async with PeakRSS(run.pid) as peak:
            ...
        peak.mb  # the largest sample, MB (10^6 bytes)

    A sample is also taken on entry and on exit. A process that has exited
    stops the sampling (the peak so far stays).
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.mb = 0.0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def _sample(self) -> bool:
        try:
            value = rss_mb(self.pid)
        except (OSError, DaemonError):
            return False
        self.mb = max(self.mb, value)
        self.samples += 1
        return True

    async def _loop(self) -> None:
        while True:  # polling /proc is the point: nothing to wait on
            if not self._sample():
                return
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> PeakRSS:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sample()
