"""One distribution, one import namespace: the plugin folders ship as aiocontainerd.* subpackages."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_editable_install_maps_plugin_folders() -> None:
    for name, folder in [("aiocontainerd.cri", "cri"), ("aiocontainerd.snapshotters", "snapshotters"),
                         ("aiocontainerd.runtimes", "runtimes")]:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).parent.name == folder


def test_wheel_contains_core_plugins_and_generated_api(tmp_path: Path) -> None:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools not installed in this environment")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("aiocontainerd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ["aiocontainerd/__init__.py", "aiocontainerd/cri/__init__.py",
                 "aiocontainerd/snapshotters/__init__.py", "aiocontainerd/runtimes/__init__.py",
                 "aiocontainerd/api/runtime/v1/__init__.py",
                 "aiocontainerd/api/containerd/task/v2/__init__.py"]:
        assert path in names, path
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "aiocontainerd = aiocontainerd.cli.daemon:main" in text
    assert "actr = aiocontainerd.cli.actr:main" in text
