"""Distribution versions read without importlib.metadata (src/aiocontainerd/version.py)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from aiocontainerd.version import dist_version, version


@pytest.mark.parametrize("name", ["aiocontainerd", "betterproto2", "grpclib", "h2", "lmdb", "click"])
def test_same_answer_as_importlib_metadata(name: str) -> None:
    assert dist_version(name) == metadata.version(name)


def test_missing_distribution() -> None:
    with pytest.raises(metadata.PackageNotFoundError):
        dist_version("no-such-distribution-here")
    assert version() == metadata.version("aiocontainerd")


def test_light_metadata_keeps_the_real_module_out() -> None:
    code = """
import sys
from aiocontainerd.version import light_metadata
with light_metadata():
    import betterproto2
    import importlib.metadata as m
    assert m.version("grpclib")            # the stand-in answers other distributions too
assert betterproto2.__version__
print(sorted(n for n in ("importlib.metadata", "email", "zipfile", "csv") if n in sys.modules))
with light_metadata():
    import importlib.metadata
    assert importlib.metadata.version("grpclib")
    from importlib.metadata import version as v
    assert v("grpclib")
    assert "email" not in sys.modules       # still the stand-in
    import importlib.metadata as m
    try:
        m.version("no-such-distribution-here")     # the stand-in cannot tell: the real one answers
    except m.PackageNotFoundError:
        pass
print("importlib.metadata" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"], out
