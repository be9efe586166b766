"""The diff service (plugin ``io.containerd.service.v1.diff-service``): apply and compare.

The core object behind ``containerd.services.diff.v1.Diff`` and the image
unpacker, containerd's ``plugins/services/diff`` local service over its
``walking`` differ (``plugins/diff/walking``, ``core/diff/apply``):

- :meth:`DiffService.apply` reads a layer blob from the namespace's content
  (NotFound if the namespace does not hold it), decompresses it as its media
  type says (a media type that is not a layer: Unimplemented), applies it
  onto the mounts (:func:`aiocontainerd.diff.apply.apply`) and returns the
  *applied* descriptor: ``application/vnd.oci.image.layer.v1.tar``, the diff
  ID as digest, the uncompressed size. With ``expected_diff_id`` a different
  result raises FailedPrecondition (the mounts then hold the wrong content).
- :meth:`DiffService.diff` writes the changes between two mount lists as a
  layer blob into the namespace's content (:func:`aiocontainerd.diff.compare.compare`)
  and returns its descriptor.

Configuration (``[plugins."io.containerd.service.v1.diff-service"]``), as
containerd's: ``default`` — the differs to try in order (only ``walking``
exists here); ``sync_fs`` — syncfs(2) the target filesystem after every apply.

Example::

    svc = daemon.plugins.instance("io.containerd.service.v1", "diff-service")
    applied = await svc.apply("default", layer_descriptor, mounts)
    desc = await svc.diff("default", lower_mounts, upper_mounts, ref="commit-1")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import FailedPrecondition
from ..mount import Mount
from ..plugin import METADATA, SERVICE, InitContext, Registration
from ..remotes import mediatypes
from ..types import Descriptor, TypedValue
from . import compression
from .apply import CHUNK, apply
from .compare import compare

log = logging.getLogger(__name__)

DIFFERS = ("walking",)


@dataclasses.dataclass
class DiffServiceConfig:
    """``[plugins."io.containerd.service.v1.diff-service"]``."""

    default: list[str] = dataclasses.field(default_factory=lambda: ["walking"])
    sync_fs: bool = False

    def __post_init__(self) -> None:
        for name in self.default:
            if name not in DIFFERS:
                raise ValueError(f"key 'default': needed differ not loaded: {name!r} "
                                 f"(available: {', '.join(DIFFERS)})")


class DiffService:
    """Applies layers onto mounts and computes layers from mounts (see the module doc)."""

    def __init__(self, content: Any, *, sync_fs: bool = False,
                 tmp_root: str | os.PathLike[str] | None = None) -> None:
        self.content = content
        self.sync_fs = sync_fs
        #: where temporary mounts go (the daemon's, cleaned at start); None: system temp
        self.tmp_root = tmp_root

    async def apply(self, namespace: str, desc: Descriptor, mounts: Sequence[Mount], *,
                    payloads: Mapping[str, TypedValue] | None = None, sync_fs: bool = False,
                    expected_diff_id: str = "", same_owner: bool = True,
                    overlay_upper: bool = False) -> Descriptor:
        """Apply the layer ``desc`` onto ``mounts``; returns the applied (uncompressed) descriptor.

        ``payloads`` are for stream processors (decryption), which this daemon
        does not have: they are ignored, as containerd's plain decompression
        ignores them. Raises NotFound (blob), Unimplemented (media type),
        InvalidArgument (malformed layer, no mounts), FailedPrecondition (diff
        ID differs from ``expected_diff_id``), ContainerdError, OSError (mounting).
        """
        self.content.info(namespace, desc.digest)
        kind = compression.for_media_type(desc.media_type)
        if payloads:
            log.debug("apply: stream processor payloads ignored",
                      extra={"fields": {"keys": sorted(payloads)}})
        path = self.content.local.blob_path(desc.digest)

        def open_layer() -> IO[bytes]:
            raw = open(path, "rb", buffering=CHUNK)  # closed by the returned reader
            try:
                return compression.decompress(raw, kind)
            except BaseException:
                raw.close()
                raise

        diff_id, size = await apply(mounts, open_layer, sync_fs=sync_fs or self.sync_fs,
                                    same_owner=same_owner, overlay_upper=overlay_upper,
                                    tmp_root=self.tmp_root)
        if expected_diff_id and diff_id != expected_diff_id:
            raise FailedPrecondition(f"wrong diff id {diff_id} calculated on extraction of "
                                     f"{desc.digest}, expected {expected_diff_id}")
        log.debug("diff applied", extra={"fields": {"digest": desc.digest, "media": desc.media_type,
                                                    "diff_id": diff_id, "size": size}})
        return Descriptor(mediatypes.OCI_LAYER, diff_id, size)

    async def diff(self, namespace: str, lower: Sequence[Mount], upper: Sequence[Mount], *,
                   media_type: str = "", ref: str = "", labels: Mapping[str, str] | None = None,
                   lease: str | None = None, source_date_epoch_ns: int | None = None) -> Descriptor:
        """Write the layer ``lower`` → ``upper`` into content; returns its descriptor.

        The blob carries ``labels`` and, compressed, ``containerd.io/uncompressed``
        (the diff ID). Raises Unimplemented (media type), InvalidArgument,
        NotFound (lease), ContainerdError, OSError (mounting).
        """
        desc, _ = await compare(self.content, namespace, lower, upper, media_type=media_type,
                                ref=ref, labels=labels, lease=lease,
                                source_date_epoch_ns=source_date_epoch_ns, tmp_root=self.tmp_root)
        return desc


async def _init(ctx: InitContext) -> DiffService:
    config: DiffServiceConfig = ctx.config
    tmp_root = ctx.root / "tmpmounts"
    await clean_tmp_mounts(tmp_root)
    return DiffService(ctx.get(METADATA).content, sync_fs=config.sync_fs, tmp_root=tmp_root)


async def clean_tmp_mounts(folder: Path) -> None:
    """Unmount and remove what a killed daemon left in its temporary mount folder."""
    from ..mount.mounting import mount_points, unmount

    def prepare() -> list[str]:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return sorted(mount_points(folder), key=len, reverse=True)

    for point in await asyncio.to_thread(prepare):
        try:
            await unmount(point, lazy=True)
        except OSError as e:
            log.warning("cannot unmount a leftover temporary mount",
                        extra={"fields": {"path": point, "error": str(e)}})

    def remove_empty() -> None:
        for entry in folder.iterdir():
            with contextlib.suppress(OSError):
                entry.rmdir()  # only empty folders: never delete through a mount

    await asyncio.to_thread(remove_empty)


PLUGIN = Registration(SERVICE, "diff-service", _init, requires=(METADATA,), config=DiffServiceConfig)

__all__ = ["PLUGIN", "DiffService", "DiffServiceConfig"]
