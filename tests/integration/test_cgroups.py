"""cgroup statistics of real cgroups (as root): a fresh cgroup per test in each v1
controller's hierarchy (and in the cgroup2 hierarchy when one is writable), a busy
child process moved into it, figures read while it runs, cgroups removed after."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontainerd import cgroups, errors
from aiocontainerd.api.google import protobuf as pb
from aiocontainerd.cgroups import v1, v2

pytestmark = pytest.mark.integration

# allocates (and touches) 32 MiB once it is in its cgroup, says so, then spins
CHILD = """
import sys
sys.stdin.readline()
data = b"x" * (32 << 20)
print("ready", flush=True)
while True:
    pass
"""


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create cgroups")


def remove(dirs: list[Path]) -> None:
    """rmdir each cgroup, retrying while the kernel finishes moving the dead child out."""
    for d in dirs:
        for _ in range(50):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
        assert not d.exists(), f"cgroup {d} left behind"


class Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def join(self, dirs: list[Path]) -> None:
        """Move into ``dirs``, then let it allocate and spin."""
        for d in dirs:
            (d / "cgroup.procs").write_text(str(self.proc.pid))
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def child() -> Iterator[Child]:
    c = Child()
    try:
        yield c
    finally:
        c.stop()


def v1_mounts() -> dict[str, str]:
    out = {}
    for fs, mountpoint, _, options in cgroups.parse_mountinfo(Path("/proc/self/mountinfo").read_text()):
        if fs == "cgroup":
            for c in options:
                out.setdefault(c, mountpoint)
    return out


def test_v1_stats(child: Child) -> None:
    need_root()
    if cgroups.mode() == "v2":
        pytest.skip("unified host: no v1 hierarchies")
    mounts = v1_mounts()
    missing = [c for c in ("memory", "cpu", "cpuacct", "pids") if c not in mounts]
    if missing:
        pytest.skip(f"v1 controllers not mounted: {missing}")
    name = f"/aioc-test-{uuid.uuid4().hex[:12]}"
    dirs = sorted({Path(mounts[c] + name) for c in ("memory", "cpu", "cpuacct", "pids")})
    try:
        for d in dirs:
            d.mkdir()
        child.join(dirs)
        pid = child.proc.pid

        by_pid = cgroups.v1_dirs(pid)
        by_path = cgroups.v1_dirs(path=name)
        for c in ("memory", "cpu", "cpuacct", "pids"):
            assert by_pid[c] == by_path[c] == mounts[c] + name

        first = cgroups.stats(pid)
        assert isinstance(first, v1.Metrics)
        assert cgroups.pids(pid) == cgroups.pids(path=name) == [pid]
        assert first.pids is not None and first.pids.current == 1 and first.pids.limit == 0
        assert first.memory is not None and first.memory.usage is not None
        assert first.memory.usage.usage >= 32 << 20
        assert first.memory.rss + first.memory.cache > 0
        assert first.memory.usage.limit > 0
        assert first.cpu is not None and first.cpu.usage is not None
        assert first.cpu.usage.total > 0 and len(first.cpu.usage.per_cpu) == os.cpu_count()
        time.sleep(0.3)
        second = cgroups.stats(path=name)
        assert isinstance(second, v1.Metrics)
        assert second.cpu is not None and second.cpu.usage is not None
        assert second.cpu.usage.total > first.cpu.usage.total
        assert sum(second.cpu.usage.per_cpu) >= sum(first.cpu.usage.per_cpu)

        # the shim's answer: an Any that 1.6 ctr decodes by type URL
        a = pb.Any.pack(second)
        assert a.type_url == "type.googleapis.com/io.containerd.cgroups.v1.Metrics"
        assert pb.Any.parse(bytes(a)).unpack() == second
    finally:
        child.stop()
        remove(dirs)
    with pytest.raises(errors.NotFound):
        cgroups.stats(path=name)


def test_v2_stats(child: Child) -> None:
    need_root()
    mounts = [m for m in cgroups.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
              if m[0] == "cgroup2"]
    if not mounts:
        pytest.skip("no cgroup2 hierarchy mounted")
    mounts.sort(key=lambda m: m[1] != cgroups.MOUNT)
    root = Path(mounts[0][1])
    if not os.access(root, os.W_OK):
        pytest.skip(f"cgroup2 hierarchy {root} is not writable")
    name = f"/aioc-test-{uuid.uuid4().hex[:12]}"
    d = Path(str(root) + name)
    controllers = set()
    try:
        d.mkdir()
        controllers = set((d / "cgroup.controllers").read_text().split())
        child.join([d])
        pid = child.proc.pid
        assert cgroups.v2_dir(pid) == cgroups.v2_dir(path=name) == str(d)

        first = cgroups.read_v2(str(d))
        assert first.cpu is not None and first.cpu.usage_usec > 0  # cpu.stat is a core file
        if "pids" in controllers:
            assert first.pids is not None and first.pids.current == 1
        if "memory" in controllers:
            assert first.memory is not None and first.memory.usage >= 32 << 20
            assert first.memory.anon > 0 and first.memory.usage_limit == (1 << 64) - 1
        time.sleep(0.3)
        second = cgroups.read_v2(str(d))
        assert second.cpu is not None and second.cpu.usage_usec > first.cpu.usage_usec
        if cgroups.mode() == "v2":
            assert isinstance(cgroups.stats(pid), v2.Metrics)
            assert isinstance(cgroups.stats(path=name), v2.Metrics)
            assert cgroups.pids(pid) == [pid]
        a = pb.Any.pack(second)
        assert a.type_url == "type.googleapis.com/io.containerd.cgroups.v2.Metrics"
        assert pb.Any.parse(bytes(a)).unpack() == second
    finally:
        child.stop()
        remove([d])
    with pytest.raises(errors.NotFound):
        cgroups.v2_dir(path=name)
