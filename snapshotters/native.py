"""The native snapshotter, ``io.containerd.snapshotter.v1.native``: snapshots are plain copies.

Works on any filesystem (no overlay, no btrfs): preparing a snapshot on a
parent copies the parent's whole tree (``cp -a --reflink=auto``: ownership,
modes including setuid/setgid/sticky, timestamps, extended attributes,
hard links, device nodes, fifos, sockets and symlinks preserved; a reflink
clone where the filesystem can). Slow and space-hungry for deep images, but
exact.

Layout (``<root>`` is ``<daemon root>/io.containerd.snapshotter.v1.native``)::

    metadata.lmdb/      the snapshot records (aiocontainerd.snapshots.storage)
    snapshots/<id>/     the tree of each active snapshot, committed snapshot,
                        and view without a parent
    snapshots/new-*     a copy being made (cleanup spares it while in flight)
    snapshots/rm-<id>   a tree being removed

Mounts (containerd's): an active snapshot is a read-write bind mount of its
own tree (``rbind,rw``); a view is a read-only bind mount (``rbind,ro``) of its
parent's tree (no copy), or of its own empty tree when it has no parent.
Removing a snapshot removes its tree at once.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from aiocontainerd.errors import Aborted, AlreadyExists, InvalidArgument, NotFound
from aiocontainerd.mount import Mount
from aiocontainerd.plugin import SNAPSHOTTER, InitContext, Registration
from aiocontainerd.snapshots import Kind
from aiocontainerd.snapshots.storage import MetaStoreSnapshotter, Snapshot, to_thread

#: containerd's native mounts: bind mounts with these options plus ``ro``/``rw``.
MOUNT_TYPE = "bind"
MOUNT_OPTIONS = ("rbind",)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` to the new path ``dst`` exactly (``cp -a`` semantics).

    Blocking. Raises :class:`OSError` with cp's message when the copy fails.
    """
    proc = subprocess.run(["cp", "-a", "--reflink=auto", "-T", "--", str(src), str(dst)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OSError(f"copying {src} to {dst} failed: {proc.stderr.strip()}")


def _make_root(path: Path) -> None:
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)  # whatever the umask


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class NativeSnapshotter(MetaStoreSnapshotter):
    """Copy-based snapshotter on any filesystem (see the module doc)."""

    @classmethod
    async def open(cls, root: str | os.PathLike[str]) -> NativeSnapshotter:
        """Open (creating) the snapshotter folder ``root``."""
        return cls(root, await to_thread(cls.open_store, root))

    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]:
        """New active snapshot ``key``: a copy of ``parent`` (or an empty 0755 tree)."""
        return self._mounts(await self._create(Kind.ACTIVE, key, parent, labels))

    async def view(self, key: str, parent: str = "",
                   labels: Mapping[str, str] | None = None) -> list[Mount]:
        """New view ``key`` of ``parent``: mounts the parent's tree read-only."""
        return self._mounts(await self._create(Kind.VIEW, key, parent, labels))

    async def mounts(self, key: str) -> list[Mount]:
        """Mounts of active or view ``key`` (NotFound; FailedPrecondition if committed)."""
        return self._mounts(self.ms.get_snapshot(key))

    async def _create(self, kind: Kind, key: str, parent: str,
                      labels: Mapping[str, str] | None) -> Snapshot:
        if kind == Kind.VIEW and parent:
            return await self.ms.create(kind, key, parent, labels)
        # fail fast, before copying, on what the transaction would refuse anyway
        parent_id = ""
        if parent:
            parent_id, pinfo, _ = self.ms.get_info(parent)
            if pinfo.kind != Kind.COMMITTED:
                raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
        try:
            self.ms.get_info(key)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"snapshot {key!r} already exists")

        temp = self.snapshots_dir / f"new-{secrets.token_hex(8)}"
        self._in_flight.add(temp.name)
        try:
            if parent_id:
                await to_thread(copy_tree, self.snapshot_dir(parent_id), temp)
            else:
                await to_thread(_make_root, temp)

            def hook(s: Snapshot) -> None:
                if s.parent_ids[:1] != ((parent_id,) if parent_id else ()):
                    raise Aborted(f"parent {parent!r} was replaced while it was copied")
                os.rename(temp, self.snapshot_dir(s.id))

            return await self.ms.create(kind, key, parent, labels, hook=hook)
        except BaseException:
            await to_thread(_remove, temp)
            raise
        finally:
            self._in_flight.discard(temp.name)

    def _mounts(self, s: Snapshot) -> list[Mount]:
        source = self.snapshot_dir(s.id)
        if s.kind == Kind.VIEW and s.parent_ids:
            source = self.snapshot_dir(s.parent_ids[0])
        flag = "ro" if s.kind == Kind.VIEW else "rw"
        return [Mount(MOUNT_TYPE, str(source), (*MOUNT_OPTIONS, flag))]


@dataclasses.dataclass
class NativeConfig:
    """``[plugins."io.containerd.snapshotter.v1.native"]``; ``root_path``: where the
    snapshots live (default: the plugin's folder, ``<root>/io.containerd.snapshotter.v1.native``)."""

    root_path: str = ""


async def _init(ctx: InitContext) -> NativeSnapshotter:
    config: NativeConfig = ctx.config if ctx.config is not None else NativeConfig()
    root = Path(config.root_path) if config.root_path else ctx.root
    ctx.exports["root"] = str(root)
    return await NativeSnapshotter.open(root)


PLUGIN = Registration(SNAPSHOTTER, "native", _init, config=NativeConfig)

__all__ = ["PLUGIN", "NativeConfig", "NativeSnapshotter", "copy_tree"]
