"""On-disk cache of ADD results, in libcni's format so either can read the other's.

One file per attachment: ``<cache_dir>/results/<network>-<container id>-<ifname>``
(mode 0600), holding::

    {"kind": "cniCacheV1", "containerId": "..", "ifName": "eth0", "networkName": "..",
     "netns": "/var/run/netns/cni-..", "config": "<base64 of the network list JSON>",
     "cniArgs": [["K8S_POD_NAME", ".."], ...], "capabilityArgs": {...}, "result": {...}}

The SPEC (section 3, "Adding an attachment") asks the runtime to keep the final
result persistently: CHECK and DEL pass it as ``prevResult``, and the cached
``config`` lets DEL after a daemon restart (or a conf dir change) run the very
plugins that ADD ran.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_CACHE_DIR = "/var/lib/cni"
CACHE_KIND = "cniCacheV1"


@dataclass(frozen=True)
class CachedAttachment:
    """One cache entry: the attachment's parameters, the network list bytes it was
    added with (``config``) and the raw final result (``result``, None if absent)."""

    container_id: str
    network: str
    ifname: str
    netns: str
    config: bytes
    args: tuple[tuple[str, str], ...]
    capability_args: Mapping[str, Any]
    result: Mapping[str, Any] | None


class ResultCache:
    """Reads and writes the cache files under ``cache_dir`` (blocking, small files)."""

    def __init__(self, cache_dir: str = DEFAULT_CACHE_DIR) -> None:
        self.cache_dir = cache_dir

    @property
    def results_dir(self) -> str:
        return os.path.join(self.cache_dir, "results")

    def path(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.results_dir, f"{network}-{container_id}-{ifname}")

    def put(self, entry: CachedAttachment) -> None:
        """Write (atomically: temp file + rename) the entry for its attachment."""
        doc = {
            "kind": CACHE_KIND, "containerId": entry.container_id, "config":
            base64.b64encode(entry.config).decode(), "ifName": entry.ifname,
            "networkName": entry.network,
        }
        if entry.netns:
            doc["netns"] = entry.netns
        if entry.args:
            doc["cniArgs"] = [list(a) for a in entry.args]
        if entry.capability_args:
            doc["capabilityArgs"] = dict(entry.capability_args)
        if entry.result is not None:
            doc["result"] = dict(entry.result)
        os.makedirs(self.results_dir, mode=0o700, exist_ok=True)
        final = self.path(entry.network, entry.container_id, entry.ifname)
        tmp = f"{final}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
        """The entry of one attachment, or None (missing or unreadable file)."""
        return self._read(self.path(network, container_id, ifname))

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(network, container_id, ifname))

    def attachments(self, container_id: str = "") -> list[CachedAttachment]:
        """Every valid entry (of ``container_id`` when given), sorted by file name."""
        try:
            names = sorted(os.listdir(self.results_dir))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if container_id and f"-{container_id}-" not in name:
                continue
            entry = self._read(os.path.join(self.results_dir, name))
            if entry is None or (container_id and entry.container_id != container_id):
                continue
            if entry.network and entry.ifname:
                out.append(entry)
        return out

    @staticmethod
    def _read(path: str) -> CachedAttachment | None:
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("kind") != CACHE_KIND:
            return None
        try:
            config = base64.b64decode(doc.get("config") or "")
        except (ValueError, TypeError):
            config = b""
        args = tuple((str(a[0]), str(a[1])) for a in doc.get("cniArgs") or [] if len(a) == 2)
        result = doc.get("result")
        return CachedAttachment(
            container_id=str(doc.get("containerId") or ""), network=str(doc.get("networkName") or ""),
            ifname=str(doc.get("ifName") or ""), netns=str(doc.get("netns") or ""), config=config,
            args=args, capability_args=doc.get("capabilityArgs") or {},
            result=result if isinstance(result, dict) else None)
