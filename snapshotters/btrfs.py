"""The btrfs snapshotter, ``io.containerd.snapshotter.v1.btrfs`` (containerd's ``plugins/snapshots/btrfs``).

Every snapshot is a btrfs subvolume, so a child shares its parent's extents
copy-on-write and costs nothing to make. The root must be on btrfs: anywhere
else the plugin is skipped with containerd's reason, "path <root> (<fs>) must be
a btrfs filesystem to be used with the btrfs snapshotter".

Layout (``<root>`` is ``<daemon root>/io.containerd.snapshotter.v1.btrfs`` or
``root_path``; created 0700)::

    metadata.lmdb/       the snapshot records (aiocontainerd.snapshots.storage)
    active/<id>          active snapshots: writable subvolumes
    view/<id>            views: read-only snapshots of the parent
    snapshots/<id>       committed snapshots: read-only subvolumes
    <kind>/rm-<id>       a subvolume being deleted

As containerd does it:

- ``prepare`` without a parent (and ``view`` without one) creates a new, empty
  subvolume (its root 0755 whatever the umask); with a parent, a writable
  (active) or read-only (view) snapshot of the parent's subvolume. The
  subvolume is made inside the metastore's write transaction (its hook), so a
  record never exists without its subvolume.
- ``commit`` takes a read-only snapshot of the active subvolume into
  ``snapshots/<id>``, records the commit, then deletes the active subvolume.
- ``remove`` renames the subvolume to ``rm-<id>`` inside the transaction and
  deletes it after; ``cleanup`` (not in containerd, required by our contract)
  deletes every subvolume of the three folders no record of that kind refers to.
- Mounts are ``btrfs`` mounts of the filesystem's device with
  ``subvolid=<id>`` (``ro`` added for views), as containerd returns them.

Usage of an active snapshot is measured when asked: with btrfs quotas enabled
(``btrfs quota enable <root>``) and consistent, ``size`` is the subvolume's
*exclusive* bytes from its qgroup (``/sys/fs/btrfs/<fsid>/qgroups/0_<subvolid>``,
after syncing the filesystem) — the extents only it holds; otherwise, as
containerd, the blocks of the files that differ from the parent (a walk;
everything for a snapshot without parent). ``inodes`` always counts those
files (a walk). A committed snapshot's usage is the one measured at commit.

Subvolumes are made and deleted with the kernel's btrfs ioctls (through
:func:`fcntl.ioctl`, no btrfs-progs needed at run time): ``SUBVOL_CREATE``,
``SNAP_CREATE_V2`` (with ``BTRFS_SUBVOL_RDONLY`` for read-only snapshots),
``SNAP_DESTROY`` (nested subvolumes a container made are deleted first), and
``INO_LOOKUP`` for the subvolume id. All of them block, so they run in worker
threads (or the metastore's writer thread), never on the event loop.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import logging
import os
import shutil
import stat as stat_mod
import struct
from collections.abc import Mapping
from pathlib import Path

from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from aiocontainerd.mount import Mount, unescape_mountinfo
from aiocontainerd.plugin import SNAPSHOTTER, InitContext, Registration, SkipPlugin
from aiocontainerd.snapshots import Kind, Usage
from aiocontainerd.snapshots.storage import MetaStore, MetaStoreSnapshotter, Snapshot, disk_usage, to_thread

log = logging.getLogger(__name__)

# -- btrfs ioctls (linux/btrfs.h) ------------------------------------------------------------

_MAGIC = 0x94
_WRITE, _READ = 1, 2
_ARGS_SIZE = 4096          # btrfs_ioctl_vol_args, _vol_args_v2 and _ino_lookup_args are 4 KiB
_FS_INFO_SIZE = 1024       # btrfs_ioctl_fs_info_args
_PATH_NAME_MAX = 4087      # btrfs_ioctl_vol_args.name
_SUBVOL_NAME_MAX = 4039    # btrfs_ioctl_vol_args_v2.name
_V2_NAME_OFFSET = 56       # fd, transid, flags, 4 x u64 union
FIRST_FREE_OBJECTID = 256  # the inode number of every subvolume's root folder
SUBVOL_RDONLY = 1 << 1


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (_MAGIC << 8) | nr


IOC_SYNC = _ioc(0, 8, 0)
IOC_SUBVOL_CREATE = _ioc(_WRITE, 14, _ARGS_SIZE)
IOC_SNAP_DESTROY = _ioc(_WRITE, 15, _ARGS_SIZE)
IOC_INO_LOOKUP = _ioc(_WRITE | _READ, 18, _ARGS_SIZE)
IOC_SNAP_CREATE_V2 = _ioc(_WRITE, 23, _ARGS_SIZE)
IOC_FS_INFO = _ioc(_READ, 31, _FS_INFO_SIZE)


def _open_dir(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _name(path: str | os.PathLike[str], limit: int) -> bytes:
    name = os.fsencode(os.path.basename(os.fspath(path)))
    if not name or len(name) > limit or name in (b".", b".."):
        raise OSError(errno.EINVAL, f"invalid subvolume name {name!r}", os.fspath(path))
    return name


def _ioctl_at_parent(path: str | os.PathLike[str], request: int, args: bytearray, what: str) -> None:
    fd = _open_dir(os.path.dirname(os.path.abspath(path)))
    try:
        fcntl.ioctl(fd, request, args)
    except OSError as e:
        raise OSError(e.errno, f"btrfs {what} {os.fspath(path)}: {os.strerror(e.errno or 0)}",
                      os.fspath(path)) from None
    finally:
        os.close(fd)


def subvolume_create(path: str | os.PathLike[str]) -> None:
    """``btrfs subvolume create <path>`` (blocking). OSError (EEXIST, ENOTTY off btrfs, ...)."""
    args = bytearray(_ARGS_SIZE)
    name = _name(path, _PATH_NAME_MAX)
    args[8:8 + len(name)] = name
    _ioctl_at_parent(path, IOC_SUBVOL_CREATE, args, "subvolume create")


def subvolume_snapshot(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                       readonly: bool) -> None:
    """``btrfs subvolume snapshot [-r] <source> <target>`` (blocking)."""
    src = _open_dir(source)
    try:
        args = bytearray(_ARGS_SIZE)
        struct.pack_into("=qQQ", args, 0, src, 0, SUBVOL_RDONLY if readonly else 0)
        name = _name(target, _SUBVOL_NAME_MAX)
        args[_V2_NAME_OFFSET:_V2_NAME_OFFSET + len(name)] = name
        _ioctl_at_parent(target, IOC_SNAP_CREATE_V2, args, f"subvolume snapshot {os.fspath(source)} ->")
    finally:
        os.close(src)


def is_subvolume(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the root folder of a btrfs subvolume (inode 256, not a symlink)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat_mod.S_ISDIR(st.st_mode) and st.st_ino == FIRST_FREE_OBJECTID


def _nested_subvolumes(path: str) -> list[str]:
    """Subvolumes below ``path`` (not ``path`` itself), deepest first."""
    found = []
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if is_subvolume(full):
                found.append(full)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def subvolume_delete(path: str | os.PathLike[str]) -> None:
    """``btrfs subvolume delete <path>``, deleting nested subvolumes first (blocking).

    A path that does not exist is not an error. OSError otherwise.
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    args = bytearray(_ARGS_SIZE)
    name = _name(path, _PATH_NAME_MAX)
    args[8:8 + len(name)] = name
    try:
        _ioctl_at_parent(path, IOC_SNAP_DESTROY, args, "subvolume delete")
    except OSError as e:
        if e.errno == errno.ENOENT:
            return
        if e.errno != errno.ENOTEMPTY:
            raise
        for nested in _nested_subvolumes(path):
            subvolume_delete(nested)
        _ioctl_at_parent(path, IOC_SNAP_DESTROY, args, "subvolume delete")


def subvolume_id(path: str | os.PathLike[str]) -> int:
    """The id of the subvolume holding ``path`` (``INO_LOOKUP`` of its root; blocking)."""
    fd = _open_dir(path)
    try:
        args = bytearray(_ARGS_SIZE)
        struct.pack_into("=QQ", args, 0, 0, FIRST_FREE_OBJECTID)
        fcntl.ioctl(fd, IOC_INO_LOOKUP, args)
        return struct.unpack_from("=Q", args, 0)[0]
    finally:
        os.close(fd)


def filesystem_uuid(path: str | os.PathLike[str]) -> str:
    """The filesystem's UUID (``FS_INFO``), as ``/sys/fs/btrfs/<uuid>`` names it (blocking)."""
    fd = _open_dir(path)
    try:
        args = bytearray(_FS_INFO_SIZE)
        fcntl.ioctl(fd, IOC_FS_INFO, args)
    finally:
        os.close(fd)
    h = bytes(args[16:32]).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Commit the filesystem's transaction (``BTRFS_IOC_SYNC``) so qgroups are current."""
    fd = _open_dir(path)
    try:
        fcntl.ioctl(fd, IOC_SYNC)
    finally:
        os.close(fd)


def qgroup_exclusive(path: str | os.PathLike[str], sysfs: str = "/sys/fs/btrfs") -> int | None:
    """Exclusive bytes of the subvolume at ``path`` from its level-0 qgroup, or None when
    quotas are off or inconsistent (blocking: syncs the filesystem first)."""
    qgroups = Path(sysfs) / filesystem_uuid(path) / "qgroups"
    try:
        if (qgroups / "inconsistent").read_text().strip() not in ("", "0"):
            return None
    except FileNotFoundError:
        if not qgroups.is_dir():
            return None
    entry = qgroups / f"0_{subvolume_id(path)}" / "exclusive"
    if not entry.exists():
        return None
    sync_filesystem(path)
    try:
        return int(entry.read_text())
    except (FileNotFoundError, ValueError):
        return None


# -- usage -----------------------------------------------------------------------------------


def _differs(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_mode, a.st_uid, a.st_gid, a.st_size, a.st_mtime_ns, a.st_rdev, a.st_ino) != \
           (b.st_mode, b.st_uid, b.st_gid, b.st_size, b.st_mtime_ns, b.st_rdev, b.st_ino)


def diff_usage(lower: str | os.PathLike[str], upper: str | os.PathLike[str]) -> Usage:
    """Blocks and inodes of what ``upper`` adds or changes over ``lower`` (containerd's
    ``fs.DiffUsage``): entries absent from ``lower`` or differing in type, mode, owner,
    size, mtime, device or inode number (a btrfs snapshot keeps its parent's inode
    numbers, so a replaced file shows). Hard links count once; deletions count nothing.
    Blocking: run it in a thread."""
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [""]
    upper, lower = os.fspath(upper), os.fspath(lower)
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(upper, rel)) as it:
            for entry in it:
                child = os.path.join(rel, entry.name)
                st = entry.stat(follow_symlinks=False)
                if stat_mod.S_ISDIR(st.st_mode):
                    stack.append(child)
                try:
                    changed = _differs(st, os.lstat(os.path.join(lower, child)))
                except FileNotFoundError:
                    changed = True
                if changed:
                    ident = (st.st_dev, st.st_ino)
                    if ident not in seen:
                        seen.add(ident)
                        size += st.st_blocks * 512
    return Usage(size=size, inodes=len(seen))


# -- mounts ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MountEntry:
    """The mount holding a path, from ``/proc/self/mountinfo``."""

    mount_point: str
    fs_type: str
    source: str


def lookup_mount(path: str | os.PathLike[str], mountinfo: str = "/proc/self/mountinfo") -> MountEntry:
    """The mount ``path`` lies in (containerd's ``mount.Lookup``): the longest mount point
    containing it, the last one when several are stacked. Symlinks are resolved."""
    real = os.path.realpath(path)
    best: MountEntry | None = None
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            head, sep, tail = line.rstrip("\n").partition(" - ")
            fields = head.split(" ")
            rest = tail.split(" ")
            if not sep or len(fields) < 5 or len(rest) < 2:
                continue
            point = unescape_mountinfo(fields[4])
            if real == point or real.startswith(point.rstrip("/") + "/"):
                if best is None or len(point) >= len(best.mount_point):
                    best = MountEntry(point, rest[0], unescape_mountinfo(rest[1]))
    if best is None:
        raise FileNotFoundError(errno.ENOENT, "no mount holds this path", os.fspath(path))
    return best


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


# -- the snapshotter -------------------------------------------------------------------------

KIND_DIRS = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "snapshots"}


class BtrfsSnapshotter(MetaStoreSnapshotter):
    """Snapshots as btrfs subvolumes (see the module doc)."""

    def __init__(self, root: str | os.PathLike[str], ms: MetaStore, device: str) -> None:
        super().__init__(root, ms)
        #: the filesystem's device, the source of every mount
        self.device = device

    @classmethod
    async def open(cls, root: str | os.PathLike[str]) -> BtrfsSnapshotter:
        """Open (creating) the snapshotter in ``root``, which must be on btrfs.

        Raises :class:`SkipPlugin` (containerd's message) when it is not.
        """
        root = Path(root)

        def setup() -> tuple[str, MetaStore]:
            entry = lookup_mount(_existing_ancestor(root))
            if entry.fs_type != "btrfs":
                raise SkipPlugin(f"path {root} ({entry.fs_type}) must be a btrfs filesystem "
                                 "to be used with the btrfs snapshotter")
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            if stat_mod.S_IMODE(root.stat().st_mode) != 0o700:
                os.chmod(root, 0o700)
            entry = lookup_mount(root)
            for d in KIND_DIRS.values():
                (root / d).mkdir(mode=0o755, exist_ok=True)
            return entry.source, MetaStore.open(root / "metadata.lmdb")

        device, ms = await to_thread(setup)
        return cls(root, ms, device)

    def path(self, kind: Kind, sid: str) -> Path:
        """The subvolume of snapshot ``sid`` of ``kind``."""
        return self.root / KIND_DIRS[kind] / sid

    def snapshot_dir(self, sid: str) -> Path:
        return self.path(Kind.COMMITTED, sid)

    # -- creation

    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]:
        """New active snapshot ``key``: a writable snapshot of ``parent`` (or a new subvolume)."""
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(self, key: str, parent: str = "",
                   labels: Mapping[str, str] | None = None) -> list[Mount]:
        """New view ``key``: a read-only snapshot of ``parent`` (or a new subvolume, mounted ro)."""
        return await self._create(Kind.VIEW, key, parent, labels)

    async def _create(self, kind: Kind, key: str, parent: str,
                      labels: Mapping[str, str] | None) -> list[Mount]:
        def hook(s: Snapshot) -> None:
            target = self.path(kind, s.id)
            if not s.parent_ids:
                subvolume_create(target)
                os.chmod(target, 0o755)  # the kernel applies the umask; an image root is 0755
            else:
                subvolume_snapshot(self.snapshot_dir(s.parent_ids[0]), target, readonly=kind == Kind.VIEW)

        snap = await self.ms.create(kind, key, parent, labels, hook=hook)
        return await to_thread(self._mounts, snap)

    async def mounts(self, key: str) -> list[Mount]:
        """Mounts of active or view ``key`` (NotFound; FailedPrecondition if committed)."""
        return await to_thread(self._mounts, self.ms.get_snapshot(key))

    def _mounts(self, s: Snapshot) -> list[Mount]:
        options = [f"subvolid={subvolume_id(self.path(s.kind, s.id))}"]
        if s.kind != Kind.ACTIVE:
            options.append("ro")
        return [Mount(type="btrfs", source=self.device, options=tuple(options))]

    # -- usage and commit

    def _measure(self, sid: str, parent: str) -> Usage:
        active = self.path(Kind.ACTIVE, sid)
        if parent:
            parent_id, _, _ = self.ms.get_info(parent)
            usage = diff_usage(self.snapshot_dir(parent_id), active)
        else:
            usage = disk_usage(active)
        exclusive = qgroup_exclusive(active)
        if exclusive is not None:
            usage = Usage(size=exclusive, inodes=usage.inodes)
        return usage

    async def usage(self, key: str) -> Usage:
        """Measured for an active snapshot (see the module doc), recorded otherwise."""
        sid, info, usage = self.ms.get_info(key)
        if info.kind == Kind.ACTIVE:
            usage = await to_thread(self._measure, sid, info.parent)
        return usage

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Commit active ``key`` as ``name``: read-only snapshot, record, delete the active.

        NotFound, FailedPrecondition (not active), AlreadyExists (``name`` taken).
        """
        sid, info, _ = self.ms.get_info(key)
        if info.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is {info.kind.filter_name}, not active: "
                                     "only active snapshots can be committed")
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        try:
            self.ms.get_info(name)
        except NotFound:
            pass
        else:
            raise AlreadyExists(f"committed snapshot {name!r} already exists")
        if sid in self._in_flight:
            raise FailedPrecondition(f"snapshot {key!r} is being committed already")
        self._in_flight.add(sid)
        source, target = self.path(Kind.ACTIVE, sid), self.snapshot_dir(sid)
        try:
            usage = await to_thread(self._measure, sid, info.parent)
            await to_thread(functools.partial(subvolume_snapshot, source, target, readonly=True))
            try:
                await self.ms.commit_active(key, name, usage, labels)
            except BaseException:
                # a cancellation arrives after the write ran: keep the subvolume if it committed
                if not self._recorded(name, sid, Kind.COMMITTED):
                    await to_thread(subvolume_delete, target)
                raise
        finally:
            self._in_flight.discard(sid)
        try:
            await to_thread(subvolume_delete, source)
        except OSError as e:  # cleanup removes it later; the name cannot collide
            log.warning("failed to delete subvolume", extra={"fields": {"subvolume": str(source),
                                                                        "error": str(e)}})

    def _recorded(self, key: str, sid: str, kind: Kind | None) -> bool:
        """Whether ``key`` is recorded with id ``sid`` (and ``kind``, if given)."""
        try:
            rid, info, _ = self.ms.get_info(key)
        except NotFound:
            return False
        return rid == sid and (kind is None or info.kind == kind)

    # -- removal

    async def remove(self, key: str) -> None:
        """Remove ``key`` (NotFound; FailedPrecondition with children) and its subvolume."""
        moved: list[tuple[Path, Path]] = []

        def hook(sid: str, kind: Kind) -> None:
            source = self.path(kind, sid)
            renamed = source.with_name(f"rm-{sid}")
            try:
                os.rename(source, renamed)
            except FileNotFoundError:
                return
            moved.append((source, renamed))

        try:
            await self.ms.remove(key, hook=hook)
        except BaseException:
            if moved and not self._recorded(key, moved[0][1].name[len("rm-"):], None):
                raise  # removed after all (cancelled after the write): cleanup deletes it
            for source, renamed in moved:  # the record stays: put its subvolume back
                try:
                    os.rename(renamed, source)
                except OSError as e:
                    log.error("failed to restore subvolume from renamed", extra={"fields": {
                        "subvolume": str(source), "renamed": str(renamed), "error": str(e)}})
            raise
        for _, renamed in moved:
            try:
                await to_thread(subvolume_delete, renamed)
            except OSError as e:
                log.warning("failed to delete subvolume", extra={"fields": {"subvolume": str(renamed),
                                                                            "error": str(e)}})

    async def cleanup(self) -> None:
        """Delete every subvolume (or folder) in ``active/``, ``view/`` and ``snapshots/``
        that no record of that kind refers to (removed, interrupted or half-committed
        snapshots), except commits in progress."""

        def orphans() -> list[Path]:
            kinds: dict[str, Kind] = {}
            for info in self.ms.walk():
                try:
                    sid, _, _ = self.ms.get_info(info.name)
                except NotFound:
                    continue
                kinds[sid] = info.kind
            found = []
            for kind, d in KIND_DIRS.items():
                for name in os.listdir(self.root / d):
                    if kinds.get(name) == kind or (kind == Kind.COMMITTED and name in self._in_flight):
                        continue
                    found.append(self.root / d / name)
            return found

        for path in await self.ms.exclusive(orphans):
            try:
                if is_subvolume(path):
                    await to_thread(subvolume_delete, path)
                else:
                    await to_thread(_remove_tree, path)
            except OSError as e:
                log.warning("cleanup: cannot remove", extra={"fields": {"path": str(path), "error": str(e)}})


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@dataclasses.dataclass
class BtrfsConfig:
    """``[plugins."io.containerd.snapshotter.v1.btrfs"]``; ``root_path``: where the snapshots
    live (default: the plugin's folder). It must be on a btrfs filesystem."""

    root_path: str = ""


async def _init(ctx: InitContext) -> BtrfsSnapshotter:
    config: BtrfsConfig = ctx.config if ctx.config is not None else BtrfsConfig()
    root = Path(config.root_path) if config.root_path else ctx.root
    ctx.exports["root"] = str(root)
    return await BtrfsSnapshotter.open(root)


PLUGIN = Registration(SNAPSHOTTER, "btrfs", _init, config=BtrfsConfig)

__all__ = ["PLUGIN", "BtrfsConfig", "BtrfsSnapshotter", "diff_usage", "lookup_mount", "qgroup_exclusive",
           "subvolume_create", "subvolume_delete", "subvolume_id", "subvolume_snapshot"]
