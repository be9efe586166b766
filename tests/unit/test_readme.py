"""The README's embedding example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def example(name: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert m, f"README has no example {name!r}"
    return m.group(1)


def test_embedding_example_runs() -> None:
    r = subprocess.run([sys.executable, "-c", example("embedding")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", lines[0])
    assert lines[1].startswith("as expected: namespace 'builds': already exists")
    assert lines[2] == "[('builds', {})]"


def test_configuration_example_is_valid(tmp_path: Path) -> None:
    text = README.read_text()
    m = re.search(r"## Configuration.*?```toml\n(.*?)```", text, re.S)
    assert m, "README has no configuration example"
    path = tmp_path / "config.toml"
    path.write_text(m.group(1))
    r = subprocess.run([sys.executable, "-m", "aiocontainerd.cli.daemon", "config", "validate", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
