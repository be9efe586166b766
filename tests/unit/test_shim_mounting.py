"""Mounting inside the shim: a long overlay ``lowerdir`` chain mounted in a subreaper.

The shim's :class:`Reaper` collects every child with ``waitpid(-1)``.  A mount
helper that waited on a child process of its own would lose that race now and
then, see ``ECHILD`` and take a failed mount for a successful one.  The script
below runs in its own process, makes it a child subreaper with the real Reaper,
adds a second, greedy ``waitpid(-1)`` loop (so any such race is lost every
time), and mounts an overlay whose absolute ``lowerdir`` option is longer than a
page: once successfully, and five times with a missing lower folder, each of
which must fail with the kernel's error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount)")]

SCRIPT = r"""
import asyncio, json, os, sys, threading, time
from aiocontainerd.mount import Mount, mounting
from aiocontainerd.runtimes.aiorunc.reaper import Reaper, is_subreaper

base, parent = sys.argv[1], sys.argv[2]
lowers = sorted(os.path.join(parent, n) for n in os.listdir(parent))

def greedy():
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.0002)

threading.Thread(target=greedy, daemon=True).start()

async def main():
    reaper = Reaper()
    reaper.install(asyncio.get_running_loop())
    target = os.path.join(base, "merged")
    opt = "lowerdir=" + ":".join(lowers)
    await mounting.mount_all([Mount("overlay", "overlay", (opt,))], target)
    seen = sorted(os.listdir(target))
    await mounting.unmount(target)
    errors = []
    for i in range(5):
        bad = "lowerdir=" + ":".join([*lowers[:-1], os.path.join(parent, "missing-%d" % i)])
        try:
            await mounting.mount_all([Mount("overlay", "overlay", (bad,))], target)
        except OSError as e:
            errors.append(e.errno)
        else:
            errors.append(0)
            await mounting.unmount(target)
    print(json.dumps({"subreaper": is_subreaper(), "len": len(opt), "seen": seen,
                      "errors": errors, "cwd": os.getcwd(),
                      "mounted": mounting.is_mountpoint(target)}))

asyncio.run(main())
"""


def test_long_lowerdir_chain_in_a_subreaper() -> None:
    from aiocontainerd.mount.mounting import PAGE_SIZE

    base = Path(tempfile.mkdtemp(prefix="shim-mnt-", dir="/tmp"))
    try:
        parent = base / ("p" * 120)
        for i in range(40):
            d = parent / f"layer-{i:03d}-{'x' * 30}"
            d.mkdir(parents=True)
            (d / f"file-{i:03d}").write_text(str(i))
        (base / "merged").mkdir()
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(base), str(parent)],
                             capture_output=True, text=True, timeout=120, cwd=str(base))
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["subreaper"]
        assert got["len"] > PAGE_SIZE
        assert got["seen"] == [f"file-{i:03d}" for i in range(40)]
        assert got["errors"] == [2] * 5, got["errors"]      # ENOENT, never a silent success
        assert got["cwd"] == str(base)
        assert not got["mounted"]
    finally:
        subprocess.run(["umount", "-R", str(base / "merged")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
