"""The daemon's version, as reported by the Version service and build-info metric.

The version is read from the distribution's metadata file (``Version:`` of
``*.dist-info/METADATA`` or ``*.egg-info/PKG-INFO``) found the way importlib.metadata
finds it (the first matching folder along ``sys.path``), but without importing
importlib.metadata: that imports email, zipfile, csv, ... to parse those headers,
about 1.5 MiB of an idle daemon's memory for one string. importlib.metadata is
still asked whenever the plain reading cannot answer exactly (a zip on the path,
no ``Version:`` header).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import types
from collections.abc import Iterator

PACKAGE = "aiocontainerd"


class _Unsure(Exception):
    """The plain reading cannot tell: ask importlib.metadata."""


def _normalize(name: str) -> str:
    """A distribution name as importlib.metadata compares them (``Prepared.normalize``)."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _header_version(path: str) -> str:
    """``Version:`` of an RFC 822 metadata file (headers end at the first empty line)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == "version":
                    return value.strip()
    except OSError:
        pass
    raise _Unsure(path)


def _plain_version(name: str) -> str | None:
    """The version of the first ``name`` distribution along ``sys.path``; None if there is none."""
    want = _normalize(name)
    for entry in sys.path:
        root = entry or "."
        try:
            children = os.listdir(root)
        except (FileNotFoundError, PermissionError):
            continue
        except OSError:  # a zip (or other non-directory) on the path: importlib.metadata reads those
            raise _Unsure(root) from None
        # importlib.metadata prefers a dist-info to an egg-info of the same name
        for child in sorted(children, key=lambda c: not c.lower().endswith(".dist-info")):
            low = child.lower()
            if not low.endswith((".dist-info", ".egg-info")):
                continue
            if _normalize(low.rpartition(".")[0].partition("-")[0]) != want:
                continue
            path = os.path.join(root, child)
            if not os.path.isdir(path):
                return _header_version(path)          # an egg-info file is PKG-INFO itself
            for meta in ("METADATA", "PKG-INFO"):
                if os.path.isfile(os.path.join(path, meta)):
                    return _header_version(os.path.join(path, meta))
            raise _Unsure(path)
    return None


def dist_version(name: str) -> str:
    """The installed version of distribution ``name``, as ``importlib.metadata.version``
    answers it (read plainly when possible, see the module doc). Raises
    ``importlib.metadata.PackageNotFoundError`` when it is not installed."""
    try:
        found = _plain_version(name)
    except _Unsure:
        found = None
    if found is not None:
        return found
    return _real_metadata().version(name)


def _real_metadata() -> types.ModuleType:
    """The real ``importlib.metadata``, replacing the stand-in of :func:`light_metadata`."""
    current = sys.modules.get("importlib.metadata")
    if current is not None and vars(current).get("_standin"):
        del sys.modules["importlib.metadata"]
    import importlib.metadata

    return importlib.metadata


def _real_attribute(name: str) -> object:
    if name.startswith("__"):   # the import system probing (``__path__``…): not the real module
        raise AttributeError(name)
    return getattr(_real_metadata(), name)


@functools.cache
def version() -> str:
    """The installed distribution's version (``0+unknown`` when not installed)."""
    try:
        return dist_version(PACKAGE)
    except Exception:   # importlib.metadata.PackageNotFoundError, without importing it here
        return "0+unknown"


@contextlib.contextmanager
def light_metadata() -> Iterator[None]:
    """While the block runs, ``importlib.metadata`` is a stand-in whose ``version()`` reads
    as :func:`dist_version` does (the real module replaces it if it cannot tell): for
    third-party packages that ask their own version when they are imported (betterproto2),
    so that one string does not load email, zipfile, csv… (~1.5 MiB of every process).
    Nothing changes when the real module is loaded already; the stand-in leaves
    ``sys.modules`` afterwards, so later imports get the real one."""
    if "importlib.metadata" in sys.modules:
        yield
        return
    standin = types.ModuleType("importlib.metadata")
    standin._standin = True  # type: ignore[attr-defined]
    standin.version = dist_version  # type: ignore[attr-defined]
    standin.__getattr__ = _real_attribute  # type: ignore[attr-defined] - anything else: the real one
    import importlib

    sys.modules["importlib.metadata"] = standin
    importlib.metadata = standin  # type: ignore[attr-defined] - ``import importlib.metadata`` users
    try:
        yield
    finally:
        if sys.modules.get("importlib.metadata") is standin:
            del sys.modules["importlib.metadata"]
        if vars(importlib).get("metadata") is standin:
            del importlib.metadata  # type: ignore[attr-defined]


#: Revision reported next to the version; the package does not embed a VCS hash.
REVISION = "aiocontainerd"
