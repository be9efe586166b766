"""Generate ``src/aiocontainerd/api`` from ``proto/`` (``tox -e proto``).

Usage::

    python proto/generate.py            # regenerate in place
    python proto/generate.py --check    # exit 1 when the committed code differs

Needs ``grpcio-tools`` (protoc) and ``betterproto2-compiler`` at build time only.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
API = ROOT / "src" / "aiocontainerd" / "api"
OPTIONS = "client_generation=async,server_generation=async"
# Services spoken only over ttrpc (shim <-> daemon): their modules get messages
# only, so a shim that imports them does not import grpclib.
TTRPC_ONLY = ("containerd/runtime/task/v2/shim.proto", "containerd/services/ttrpc/events/v1/events.proto")
MESSAGES_ONLY = "client_generation=none,server_generation=none"
HEADER = '"""Generated from proto/ by proto/generate.py (betterproto2); never edit by hand."""\n'


def generate(out: Path) -> None:
    """Run protoc over every .proto below proto/, writing the package tree to ``out``."""
    sources = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    run_protoc(out, sources, OPTIONS)
    # A package's module holds all its files' messages, so the messages-only run
    # goes to a side tree and only the ttrpc services' own modules are taken.
    with tempfile.TemporaryDirectory() as side:
        run_protoc(Path(side), list(TTRPC_ONLY), MESSAGES_ONLY)
        for proto in TTRPC_ONLY:
            shutil.copyfile(Path(side) / ttrpc_package_dir(proto) / "__init__.py",
                            out / ttrpc_package_dir(proto) / "__init__.py")
    (out / "__init__.py").write_text(HEADER)
    for module in out.rglob("*.py"):
        fix_shadowed_imports(module)
        lazy_dateutil(module)


def ttrpc_package_dir(proto: str) -> Path:
    """The generated package folder of a .proto file, from its ``package`` line."""
    m = re.search(r"^package ([\w.]+);", (PROTO / proto).read_text(), re.M)
    assert m, proto
    return Path(*m.group(1).split("."))


def run_protoc(out: Path, sources: list[str], options: str) -> None:
    """One protoc run of ``sources`` with betterproto2 ``options`` into ``out``."""
    with tempfile.TemporaryDirectory() as tmp:
        plugin = Path(tmp) / "protoc-gen-aiocontainerd"
        plugin.write_text(
            f"#!/bin/sh\nexec {sys.executable} {PROTO / 'protoc_plugin.py'}\n"
        )
        plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO}",
            f"--plugin=protoc-gen-aiocontainerd={plugin}",
            f"--aiocontainerd_out={out}",
            f"--aiocontainerd_opt={options}",
            *sources,
        ]
        # The compiler formats with `ruff format -`, which takes its settings from
        # the working folder's pyproject: run it in an empty one for ruff's defaults.
        result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"protoc failed:\n{result.stderr}")


def fix_shadowed_imports(module: Path) -> None:
    """Drop template imports that a generated message of the same name shadows.

    The compiler's header imports ``google.protobuf.descriptor.Descriptor``
    (which would need the ``protobuf`` package at run time); containerd's own
    ``containerd.types.Descriptor`` message redefines the name, so the import
    is dead and would only make the runtime depend on ``protobuf``.
    """
    text = module.read_text()
    lines = text.splitlines(keepends=True)
    kept = []
    for line in lines:
        m = re.match(r"from google\.protobuf\.descriptor import (\w+)\n", line)
        if m and f"\nclass {m.group(1)}(" in text:
            continue
        kept.append(line)
    if len(kept) != len(lines):
        module.write_text("".join(kept))


def lazy_dateutil(module: Path) -> None:
    """Import ``dateutil`` where the generated code uses it (``Timestamp.from_dict`` of a
    JSON string), not when the module loads: it and what it imports cost every process
    that loads ``google.protobuf`` about 1 MiB of resident memory for a path the daemon
    and the shims never take."""
    text = module.read_text()
    if "\nimport dateutil.parser\n" not in text:
        return
    use = "dateutil.parser.isoparse("
    assert text.count(use) == 1, module
    indent = text[:text.index(use)].rsplit("\n", 1)[1].split("dt =")[0]
    text = text.replace("\nimport dateutil.parser\n", "\n", 1)
    text = text.replace(f"{indent}dt = {use}",
                        f"{indent}import dateutil.parser\n\n{indent}dt = {use}", 1)
    module.write_text(text)


def differences(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two trees (ignoring __pycache__)."""
    out: list[str] = []
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])

    def walk(c: filecmp.dircmp, prefix: str) -> None:
        out.extend(prefix + n for n in c.left_only + c.right_only + c.diff_files)
        for name, sub in c.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(cmp, "")
    # dircmp compares shallowly by stat; confirm content for same-size files
    for path in a.rglob("*.py"):
        rel = path.relative_to(a)
        other = b / rel
        if other.exists() and path.read_bytes() != other.read_bytes():
            out.append(str(rel))
    return sorted(set(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "api"
        fresh.mkdir()
        generate(fresh)
        if args.check:
            diff = differences(fresh, API)
            if diff:
                print("generated code differs from proto/:", *diff, sep="\n  ")
                sys.exit(1)
            print("src/aiocontainerd/api matches proto/")
            return
        if API.exists():
            shutil.rmtree(API)
        shutil.copytree(fresh, API)
    print(f"wrote {API.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    os.umask(0o022)
    main()
