"""Shared fixtures: daemons in-process and as real processes, and the real ``ctr``."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiocontainerd import Client, Config, Daemon
from aiocontainerd.config import GRPCConfig
from tests.support.fixtures import registry, registry_front  # noqa: F401


def short_tmp() -> Path:
    """A fresh folder with a short path (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="aioc-", dir="/tmp"))


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    path = short_tmp()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_config(base: Path) -> Config:
    """A config rooted in ``base`` (root/, state/, state/c.sock)."""
    return Config(root=str(base / "root"), state=str(base / "state"),
                  grpc=GRPCConfig(address=str(base / "state" / "c.sock")))


@pytest.fixture
async def daemon(tmp_short: Path) -> AsyncIterator[Daemon]:
    """A daemon running inside the test's event loop."""
    async with Daemon(make_config(tmp_short)) as d:
        yield d


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with Client(daemon.address) as c:
        yield c


class DaemonProcess:
    """``aiocontainerd`` run as a real process on its own folders."""

    def __init__(self, base: Path, *extra: str) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = str(self.state / "c.sock")
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "daemon.log"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "aiocontainerd.cli.daemon", "--root", str(self.root),
                "--state", str(self.state), "--address", self.address, *self.extra]

    def start(self, timeout: float = 20) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log)
        asyncio.run(wait_serving(self.address, timeout, self.proc))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def wait_log(self, text: str, timeout: float = 10) -> None:
        """Wait until the daemon's log contains ``text``."""
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged within {timeout}s:\n{self.log.read_text()}")
            time.sleep(0.02)

    def ctr(self, *args: str, namespace: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real ``ctr`` against this daemon."""
        argv = ["ctr", "--address", self.address]
        if namespace is not None:
            argv += ["--namespace", namespace]
        result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}\n--- daemon log:\n"
                                 f"{self.log.read_text()}")
        return result


async def wait_serving(address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until the socket answers Version; raise if the process exits or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode} before serving")
        if os.path.exists(address):
            try:
                async with Client(address, timeout=2) as c:
                    await c.version()
                return
            except (TimeoutError, ConnectionError, OSError):
                pass
        if loop.time() > deadline:
            raise TimeoutError(f"{address} did not answer within {timeout}s")
        await asyncio.sleep(0.02)


@pytest.fixture
def daemon_process(tmp_short: Path) -> Iterator[DaemonProcess]:
    """A started ``aiocontainerd`` process; stopped (SIGTERM) after the test."""
    d = DaemonProcess(tmp_short)
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


def need_ctr() -> None:
    if shutil.which("ctr") is None:
        pytest.skip("the real ctr is not installed (apt-get install containerd)")


@pytest.fixture
def ctr_installed() -> None:
    """Skips the test unless the real ``ctr`` is installed; for ``pytest.mark.usefixtures``."""
    need_ctr()


def blobs_on_disk(d: DaemonProcess) -> set[str]:
    """Digests of the blobs in the daemon's content store folder."""
    folder = d.root / "io.containerd.content.v1.content" / "blobs" / "sha256"
    return {"sha256:" + p.name for p in folder.iterdir()} if folder.exists() else set()
