"""``actr`` against sockets that are not a containerd API: one clear error line, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from pathlib import Path


def _actr(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aiocontainerd.cli.actr", "--address", address, *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_missing_socket(tmp_path: Path) -> None:
    r = _actr(str(tmp_path / "absent.sock"), "images", "ls")
    assert r.returncode == 1
    assert r.stderr.startswith(f"Error: cannot connect to {tmp_path / 'absent.sock'}: "), r.stderr


def test_a_socket_that_does_not_speak_grpc(tmp_path: Path) -> None:
    path = str(tmp_path / "not-grpc.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def answer_garbage() -> None:
        # what a ttrpc server does with an HTTP/2 preface: reads, answers frames h2 does not know
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"\x00\x00\x00\x10\x00\x00\x00\x01\x02\x00" + b"\x00" * 16)

    t = threading.Thread(target=answer_garbage, daemon=True)
    t.start()
    try:
        r = _actr(path, "images", "ls")
    finally:
        server.close()
    assert r.returncode == 1
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"Error: {path} does not answer the containerd API (gRPC): "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
