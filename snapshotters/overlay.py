"""The overlayfs snapshotter, ``io.containerd.snapshotter.v1.overlayfs`` (the default one).

Each snapshot stores only its own changes, in an overlayfs upper folder; a
snapshot's tree is its parents' folders stacked under it.

Layout (``<root>`` is ``<daemon root>/io.containerd.snapshotter.v1.overlayfs``)::

    metadata.lmdb/           the snapshot records (aiocontainerd.snapshots.storage)
    snapshots/<id>/fs        the snapshot's changes (its upperdir while active;
                             a lowerdir of its children once committed)
    snapshots/<id>/work      overlayfs's workdir (active snapshots only)

Mounts, as containerd builds them:

- no parent: a bind mount of ``fs`` (``rw,rbind``; ``ro,rbind`` for a view);
- a view of a single parent: a read-only bind mount of the parent's ``fs``;
- otherwise ``overlay`` with ``lowerdir=`` the parents' ``fs`` folders, nearest
  first, and for an active snapshot ``upperdir=``/``workdir=``; then the
  snapshotter's overlay options: ``userxattr`` when running in a user namespace
  that needs it (as containerd's NeedsUserXAttr decides), ``index=off`` when the
  kernel has the ``index`` feature (``/sys/module/overlay/parameters/index``)
  and no ``index`` option was configured, and the configured
  ``mount_options`` (``volatile`` among them if wanted: temporary mounts drop
  it, see :func:`aiocontainerd.mount.mounting.temp_mount`).

A new snapshot's ``fs`` takes the owner and mode of its parent's ``fs`` (so the
merged root keeps them). Removal is asynchronous by default, as containerd's:
the record goes at once, the folders at the next :meth:`cleanup` (which
garbage collection calls); ``sync_remove`` removes them with the record.

The plugin is skipped (with the reason shown by Introspection) when the root's
filesystem cannot hold an overlay: at start-up it mounts a test overlay with two
lower folders and the options above, as containerd's overlayutils does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from aiocontainerd.mount import Mount
from aiocontainerd.mount.mounting import (
    filesystem_type,
    mount_all_blocking,
    running_in_userns,
    unmount_blocking,
)
from aiocontainerd.plugin import SNAPSHOTTER, InitContext, Registration, SkipPlugin
from aiocontainerd.snapshots import Info, Kind
from aiocontainerd.snapshots.storage import MetaStore, MetaStoreSnapshotter, Snapshot, to_thread

log = logging.getLogger(__name__)

#: The optional label (``upperdir_label``) naming a snapshot's upper folder.
UPPERDIR_LABEL = "containerd.io/snapshot/overlay.upperdir"
INDEX_PARAMETER = Path("/sys/module/overlay/parameters/index")


class OverlayUnsupported(Exception):
    """overlayfs cannot be mounted on this root (no overlay module, no privilege, ...)."""


def has_option(options: Iterable[str], key: str) -> bool:
    """Whether ``key`` is among ``options``, bare (``userxattr``) or as ``key=value``."""
    return any(o == key or o.partition("=")[0] == key for o in options)


def supports_index() -> bool:
    """Whether the kernel's overlayfs has the ``index`` feature (so ``index=off`` is valid)."""
    return INDEX_PARAMETER.exists()


def _kernel_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def _try_mount(base: Path, options: Sequence[str]) -> None:
    """Mount (and unmount) a test overlay with two lowers in a fresh folder under ``base``.
    Blocking; raises :class:`OSError` when the mount fails."""
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = base / f"check-{secrets.token_hex(6)}"
    try:
        for name in ("lower1", "lower2", "upper", "work", "merged"):
            (folder / name).mkdir(mode=0o755, parents=True)
        merged = str(folder / "merged")
        data = (f"lowerdir={folder / 'lower2'}:{folder / 'lower1'}", f"upperdir={folder / 'upper'}",
                f"workdir={folder / 'work'}", *options)
        mount_all_blocking([Mount("overlay", "overlay", data)], merged)
        unmount_blocking(merged, recursive=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def needs_userxattr(root: Path) -> bool:
    """Whether overlay must be mounted with ``userxattr`` here (containerd's NeedsUserXAttr):
    never in the initial user namespace nor on tmpfs; in a user namespace on Linux
    5.11 or later, yes; on older kernels, if a test mount with it works. Blocking."""
    if not running_in_userns() or filesystem_type(root) == "tmpfs":
        return False
    if _kernel_at_least(5, 11):
        return True
    try:
        _try_mount(root / "userxattr-check", ["userxattr"])
    except OSError:
        return False
    finally:
        shutil.rmtree(root / "userxattr-check", ignore_errors=True)
    return True


def overlay_options(root: Path, configured: Sequence[str]) -> list[str]:
    """The options appended to every overlay mount: ``configured``, plus ``userxattr``
    and ``index=off`` where they apply and were not configured. Blocking."""
    options = list(configured)
    if not has_option(options, "userxattr") and needs_userxattr(root):
        options.append("userxattr")
    if not has_option(options, "index") and supports_index():
        options.append("index=off")
    return options


def check_overlay(root: Path, options: Sequence[str], configured: Sequence[str] = ()) -> None:
    """Check that a two-lower overlay with ``options`` mounts on ``root``'s filesystem.
    Blocking.

    Raises :class:`OverlayUnsupported` when overlay cannot be mounted there at
    all, and :class:`ValueError` when only the ``configured`` options (part of
    ``options``) make the kernel refuse it.
    """
    try:
        _try_mount(root, options)
    except OSError as e:
        own = [o for o in options if o not in configured]
        if configured and own != list(options):
            try:
                _try_mount(root, own)
            except OSError:
                pass
            else:
                raise ValueError(f"key 'mount_options': the kernel refuses overlay mounts with "
                                 f"{list(configured)}: {os.strerror(e.errno or 0)}") from e
        raise OverlayUnsupported(f"overlayfs cannot be mounted on {root}: {e}") from e


def _new_dir(path: Path, mode: int) -> None:
    os.mkdir(path, mode)
    os.chmod(path, mode)  # whatever the umask


class OverlaySnapshotter(MetaStoreSnapshotter):
    """overlayfs-based snapshotter (see the module doc). Create with :meth:`open`."""

    #: an upper folder holds only its own layer's changes (whiteouts included)
    layers_independent = True

    def __init__(self, root: str | os.PathLike[str], ms: MetaStore, *, options: Sequence[str],
                 upperdir_label: bool, sync_remove: bool) -> None:
        super().__init__(root, ms)
        self.options = tuple(options)
        self.upperdir_label = upperdir_label
        self.sync_remove = sync_remove

    @classmethod
    async def open(cls, root: str | os.PathLike[str], *, mount_options: Sequence[str] = (),
                   upperdir_label: bool = False, sync_remove: bool = False,
                   check: bool = True) -> OverlaySnapshotter:
        """Open (creating) the snapshotter folder ``root``.

        ``mount_options`` are added to overlay mounts (not to bind mounts);
        ``upperdir_label`` adds :data:`UPPERDIR_LABEL` to stat/update/walk
        results; ``sync_remove`` removes storage with the record. With
        ``check``, raises :class:`OverlayUnsupported` if overlay cannot be
        mounted there, :class:`ValueError` if the kernel refuses ``mount_options``.
        """
        root = Path(root)
        await to_thread(lambda: root.mkdir(mode=0o700, parents=True, exist_ok=True))
        options = await to_thread(overlay_options, root, list(mount_options))
        if check:
            await to_thread(check_overlay, root, options, list(mount_options))
        ms = await to_thread(cls.open_store, root)
        return cls(root, ms, options=options, upperdir_label=upperdir_label, sync_remove=sync_remove)

    def upper_path(self, sid: str) -> Path:
        return self.snapshot_dir(sid) / "fs"

    def work_path(self, sid: str) -> Path:
        return self.snapshot_dir(sid) / "work"

    def usage_path(self, sid: str) -> Path:
        return self.upper_path(sid)

    def decorate(self, sid: str, info: Info) -> Info:
        if self.upperdir_label:
            info.labels[UPPERDIR_LABEL] = str(self.upper_path(sid))
        return info

    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]:
        """New active snapshot ``key`` on ``parent``: an empty upper folder."""
        return self._mounts(await self._create(Kind.ACTIVE, key, parent, labels))

    async def view(self, key: str, parent: str = "",
                   labels: Mapping[str, str] | None = None) -> list[Mount]:
        """New read-only view ``key`` of ``parent``."""
        return self._mounts(await self._create(Kind.VIEW, key, parent, labels))

    async def mounts(self, key: str) -> list[Mount]:
        """Mounts of active or view ``key`` (NotFound; FailedPrecondition if committed)."""
        return self._mounts(self.ms.get_snapshot(key))

    async def _create(self, kind: Kind, key: str, parent: str,
                      labels: Mapping[str, str] | None) -> Snapshot:
        def hook(s: Snapshot) -> None:
            # runs in the metastore's transaction: folders appear with the record or not at all
            temp = self.snapshots_dir / f"new-{secrets.token_hex(8)}"
            try:
                _new_dir(temp, 0o700)
                _new_dir(temp / "fs", 0o755)
                if kind == Kind.ACTIVE:
                    _new_dir(temp / "work", 0o711)
                if s.parent_ids:
                    st = os.stat(self.upper_path(s.parent_ids[0]))
                    os.lchown(temp / "fs", st.st_uid, st.st_gid)
                    os.chmod(temp / "fs", st.st_mode & 0o7777)
                os.rename(temp, self.snapshot_dir(s.id))
            except BaseException:
                shutil.rmtree(temp, ignore_errors=True)
                raise

        return await self.ms.create(kind, key, parent, labels, hook=hook)

    def _mounts(self, s: Snapshot) -> list[Mount]:
        if not s.parent_ids:
            flag = "ro" if s.kind == Kind.VIEW else "rw"
            return [Mount("bind", str(self.upper_path(s.id)), (flag, "rbind"))]
        options: list[str] = []
        if s.kind == Kind.ACTIVE:
            options += [f"workdir={self.work_path(s.id)}", f"upperdir={self.upper_path(s.id)}"]
        elif len(s.parent_ids) == 1:
            return [Mount("bind", str(self.upper_path(s.parent_ids[0])), ("ro", "rbind"))]
        options.append("lowerdir=" + ":".join(str(self.upper_path(p)) for p in s.parent_ids))
        options += self.options
        return [Mount("overlay", "overlay", tuple(options))]


@dataclasses.dataclass
class OverlayConfig:
    """``[plugins."io.containerd.snapshotter.v1.overlayfs"]``.

    - ``root_path``: where the snapshots live (default: the plugin's folder);
    - ``upperdir_label``: add ``containerd.io/snapshot/overlay.upperdir`` to snapshot infos;
    - ``sync_remove``: remove a snapshot's folders with it (default: at the next cleanup);
    - ``mount_options``: added to every overlay mount (e.g. ``volatile``, ``metacopy=on``).
    """

    root_path: str = ""
    upperdir_label: bool = False
    sync_remove: bool = False
    mount_options: list[str] = dataclasses.field(default_factory=list)


async def _init(ctx: InitContext) -> OverlaySnapshotter:
    config: OverlayConfig = ctx.config if ctx.config is not None else OverlayConfig()
    root = Path(config.root_path) if config.root_path else ctx.root
    try:
        sn = await OverlaySnapshotter.open(root, mount_options=config.mount_options,
                                           upperdir_label=config.upperdir_label,
                                           sync_remove=config.sync_remove)
    except OverlayUnsupported as e:
        raise SkipPlugin(str(e)) from e
    ctx.exports["root"] = str(root)
    return sn


PLUGIN = Registration(SNAPSHOTTER, "overlayfs", _init, config=OverlayConfig)

__all__ = ["PLUGIN", "UPPERDIR_LABEL", "OverlayConfig", "OverlaySnapshotter", "OverlayUnsupported",
           "check_overlay", "overlay_options"]
