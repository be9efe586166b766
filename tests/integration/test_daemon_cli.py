"""The ``aiocontainerd`` command: bad input gives a clear error and harms nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess

pytestmark = pytest.mark.integration


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiocontainerd.cli.daemon", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_malformed_toml_names_the_file(tmp_short: Path) -> None:
    cfg = tmp_short / "bad.toml"
    cfg.write_text("version = 3\n[grpc\naddress = 'x'\n")
    r = run("--config", str(cfg), "--root", str(tmp_short / "r"), "--state", str(tmp_short / "s"))
    assert r.returncode == 1
    assert str(cfg) in r.stderr and "invalid TOML" in r.stderr
    assert not (tmp_short / "r").exists()


def test_unknown_key_and_wrong_type_are_named(tmp_short: Path) -> None:
    cfg = tmp_short / "c.toml"
    cfg.write_text("version = 3\n[grpc]\nadress = '/x.sock'\n")
    r = run("--config", str(cfg))
    assert r.returncode == 1 and "unknown key 'grpc.adress'" in r.stderr and str(cfg) in r.stderr
    cfg.write_text("version = 3\n[grpc]\nuid = 'root'\n")
    r = run("--config", str(cfg))
    assert r.returncode == 1 and "'grpc.uid'" in r.stderr and "expected int" in r.stderr


def test_socket_in_missing_folder(tmp_short: Path) -> None:
    sock = tmp_short / "no" / "such" / "dir" / "c.sock"
    r = run("--root", str(tmp_short / "r"), "--state", str(tmp_short / "s"), "--address", str(sock))
    assert r.returncode == 1
    assert f"folder {sock.parent} does not exist" in r.stderr
    assert not sock.parent.exists()


def test_second_daemon_on_same_socket_is_refused(daemon_process: DaemonProcess, tmp_short: Path) -> None:
    other = tmp_short / "other"
    r = run("--root", str(other / "r"), "--state", str(other / "s"), "--address", daemon_process.address)
    assert r.returncode == 1 and "another daemon is serving it" in r.stderr
    # the first daemon still serves
    daemon_process.ctr("namespaces", "create", "still-here")


def test_second_daemon_on_same_root_is_refused(daemon_process: DaemonProcess, tmp_short: Path) -> None:
    sock = tmp_short / "second.sock"
    r = run("--root", str(daemon_process.root), "--state", str(tmp_short / "s2"), "--address", str(sock))
    assert r.returncode == 1 and "in use by another daemon" in r.stderr
    assert not sock.exists()
    daemon_process.ctr("namespaces", "create", "still-here")


def test_second_daemon_on_same_state_is_refused(daemon_process: DaemonProcess, tmp_short: Path) -> None:
    # a second daemon on the same state would take the first one's shim bundles for its own
    sock = tmp_short / "second.sock"
    r = run("--root", str(tmp_short / "r2"), "--state", str(daemon_process.state), "--address", str(sock))
    assert r.returncode == 1 and f"state {daemon_process.state} is in use by another daemon" in r.stderr
    assert not sock.exists()
    daemon_process.ctr("namespaces", "create", "still-here")


def test_config_default_is_complete_and_loads(tmp_short: Path) -> None:
    r = run("config", "default")
    assert r.returncode == 0
    for section in ("[grpc]", "[ttrpc]", "[debug]", "[metrics]",
                    '[plugins."io.containerd.metadata.v1.lmdb"]'):
        assert section in r.stdout
    cfg = tmp_short / "default.toml"
    cfg.write_text(r.stdout)
    assert run("config", "validate", str(cfg)).returncode == 0


def test_two_daemons_racing_for_one_socket(tmp_short: Path) -> None:
    sock = tmp_short / "race.sock"
    procs = [subprocess.Popen([sys.executable, "-m", "aiocontainerd.cli.daemon",
                               "--root", str(tmp_short / f"r{i}"), "--state", str(tmp_short / f"s{i}"),
                               "--address", str(sock)], stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        import asyncio

        from tests.conftest import wait_serving

        asyncio.run(wait_serving(str(sock), 30))
        import time

        time.sleep(1.5)
        running = [p for p in procs if p.poll() is None]
        assert len(running) == 1, [p.poll() for p in procs]
        loser = next(p for p in procs if p.poll() is not None)
        assert loser.returncode == 1 and "another daemon is serving it" in loser.stderr.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
    assert not sock.exists()
