"""The committed wire code: reproducible from proto/, and faithful to containerd's wire facts."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import aiocontainerd.api
from aiocontainerd.api.containerd.events import ContainerCreate, ContainerCreateRuntime
from aiocontainerd.api.containerd.services.containers import v1 as containers
from aiocontainerd.api.google import protobuf as pb

ROOT = Path(__file__).resolve().parents[2]


def test_committed_code_matches_a_fresh_generation() -> None:
    for tool in ("grpc_tools", "betterproto2_compiler"):
        if importlib.util.find_spec(tool) is None:
            pytest.skip(f"{tool} not installed (the tox 'py' env installs it)")
    if shutil.which("ruff") is None:
        pytest.skip("ruff not on PATH (the compiler formats with it)")
    r = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_generated_module_imports() -> None:
    names = [m.name for m in pkgutil.walk_packages(aiocontainerd.api.__path__, "aiocontainerd.api.")]
    assert "aiocontainerd.api.runtime.v1" in names
    assert "aiocontainerd.api.containerd.task.v2" in names
    for name in names:
        importlib.import_module(name)


def test_timestamps_keep_nanoseconds() -> None:
    ts = pb.Timestamp(seconds=1_700_000_000, nanos=123_456_789)
    c = containers.Container(id="x", created_at=ts)
    back = containers.Container.parse(bytes(c))
    assert back.created_at.seconds == 1_700_000_000
    assert back.created_at.nanos == 123_456_789


def test_containerd_any_type_urls_round_trip() -> None:
    url = "types.containerd.io/containerd/runc/options/Options"
    raw = b"\x0a\x04runc"
    c = containers.Container(id="x", runtime=containers.ContainerRuntime(
        name="io.containerd.runc.v2", options=pb.Any(type_url=url, value=raw)))
    back = containers.Container.parse(bytes(c))
    assert back.runtime.options.type_url == url
    assert back.runtime.options.value == raw


def test_field_numbers_on_the_wire() -> None:
    # containerd.events.ContainerCreate: id = 1, image = 2, runtime = 3 {name = 1}
    wire = bytes(ContainerCreate(id="a", image="b", runtime=ContainerCreateRuntime(name="c")))
    assert wire == b"\x0a\x01a\x12\x01b\x1a\x03\x0a\x01c"


def test_h2_frame_repr_fix_keeps_the_text() -> None:
    import binascii

    from hyperframe import frame

    from aiocontainerd.services import h2speed

    def original(data: bytes | None) -> str:
        if not data:
            return "None"
        r = binascii.hexlify(data).decode("ascii")
        return "<hex:" + (r[:20] + "..." if len(r) > 20 else r) + ">"

    h2speed.apply()
    for data in (None, b"", b"a", b"0123456789", b"0123456789a", bytes(range(256)) * 64):
        assert frame._raw_data_repr(data) == original(data)
