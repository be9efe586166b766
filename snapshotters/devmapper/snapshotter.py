"""The devmapper snapshotter (containerd's ``plugins/snapshots/devmapper/snapshotter.go``).

Every snapshot is a thin device ``<pool>-snap-<id>`` in the configured
thin-pool, ``base_image_size`` bytes big:

- ``prepare``/``view`` without a parent: a new thin device with a fresh
  filesystem (``fs_type``; ext4 made with ``-E nodiscard,lazy_itable_init=0,
  lazy_journal_init=0`` unless ``fs_options`` says otherwise), its
  ``lost+found`` removed (images do not expect it);
- with a parent: a thin snapshot of the parent's device (copy-on-write in the
  pool, so it is instant and shares blocks);
- ``commit``: the active device's I/O is flushed (suspend, resume) and it is
  deactivated — the committed snapshot *is* that device, read-only from then on;
- ``remove``: the device is deactivated and deleted from the pool, or with
  ``async_remove`` only marked Removed and deleted by ``cleanup`` (GC).

Mounts are one block-device mount: ``{type: <fs>, source: /dev/mapper/<pool>-snap-<id>}``
with ``ro`` for views (and ``nouuid`` for xfs, whose snapshots share a UUID).
The filesystem type is kept in the label ``containerd.io/snapshot/devmapper/fstype``
and inherited from the parent, so a pool can hold snapshots of two filesystems.

Usage is the number of sectors the device maps (``dmsetup status``) minus its
parent's, as containerd computes it.

Metadata: the shared :class:`~aiocontainerd.snapshots.storage.MetaStore` at
``<root_path>/metadata.lmdb/``; devices: :class:`~.pool_device.PoolDevice` with
``<root_path>/<pool_name>.db``. The metastore and device-mapper cannot share a
transaction, so each method orders its steps to leave them consistent: records
are created before devices (and dropped if the device cannot be made), devices
are removed before records (a failed removal is FailedPrecondition and the
snapshot stays, as containerd reports it so that GC goes on with others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiocontainerd.errors import AlreadyExists, FailedPrecondition, NotFound
from aiocontainerd.mount import Mount
from aiocontainerd.snapshots import Info, Kind, Snapshotter, Usage
from aiocontainerd.snapshots.storage import MetaStore, Snapshot, complete

from .config import FS_EXT2, FS_EXT4, FS_XFS, DevmapperConfig
from .device_info import DeviceState
from .dmsetup import DEV_MAPPER_DIR, Dmsetup, DmsetupError, full_device_path
from .pool_device import PoolDevice

log = logging.getLogger(__name__)

#: Label holding a snapshot's filesystem type (inherited by children and commits).
FSTYPE_LABEL = "containerd.io/snapshot/devmapper/fstype"
METADATA_FILE = "metadata.lmdb"
DEFAULT_EXT4_OPTIONS = "nodiscard,lazy_itable_init=0,lazy_journal_init=0"

#: ``mounter(mounts)`` -> async context manager yielding a directory where the mounts are mounted.
Mounter = Callable[[list[Mount]], contextlib.AbstractAsyncContextManager[Any]]


def mkfs_command(fs_type: str, fs_options: str, device: str) -> list[str]:
    """The mkfs command line for ``fs_type`` on ``device`` (options: ``-E`` for ext2/ext4)."""
    if fs_type in (FS_EXT4, FS_EXT2):
        options = fs_options or (DEFAULT_EXT4_OPTIONS if fs_type == FS_EXT4 else "")
        return [f"mkfs.{fs_type}", *(["-E", options] if options else []), device]
    if fs_type == FS_XFS:
        return ["mkfs.xfs", device]
    raise FailedPrecondition(f"file system {fs_type!r} not supported")


def _default_mounter(mounts: list[Mount]) -> contextlib.AbstractAsyncContextManager[Any]:
    from aiocontainerd.mount.mounting import temp_mount
    return temp_mount(mounts)


class DevmapperSnapshotter(Snapshotter):
    """Snapshots as thin devices (see the module doc)."""

    def __init__(self, config: DevmapperConfig, store: MetaStore, pool: PoolDevice,
                 mounter: Mounter | None = None) -> None:
        self.config = config
        self.store = store
        self.pool = pool
        self.mounter = mounter or _default_mounter
        self._lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, config: DevmapperConfig, dmsetup: Dmsetup | None = None,
                   mounter: Mounter | None = None, retry_delay: float = 0.1,
                   max_retries: int = 100) -> DevmapperSnapshotter:
        """Validate ``config``, create ``root_path`` (0750), open the metastore and the pool.

        Raises DevmapperConfigError naming bad keys, DmsetupError when the pool
        cannot be queried.
        """
        config.validate()
        root = Path(config.root_path)
        await asyncio.to_thread(root.mkdir, mode=0o750, parents=True, exist_ok=True)
        store = await asyncio.to_thread(MetaStore.open, root / METADATA_FILE)
        try:
            pool = await PoolDevice.open(config, dmsetup or Dmsetup(), retry_delay=retry_delay,
                                         max_retries=max_retries)
        except BaseException:
            store.close()
            raise
        return cls(config, store, pool, mounter)

    def device_name(self, snapshot_id: str) -> str:
        """``<pool>-snap-<id>``: the pool name keeps devices of two pools apart."""
        return f"{self.config.pool_name.removeprefix(DEV_MAPPER_DIR)}-snap-{snapshot_id}"

    def _mounts(self, snap: Snapshot, fs_type: str) -> list[Mount]:
        if not fs_type:
            raise FailedPrecondition(f"snapshot {snap.id} has no filesystem type")
        options: list[str] = []
        if fs_type == FS_XFS:
            options.append("nouuid")
        if snap.kind != Kind.ACTIVE:
            options.append("ro")
        return [Mount(type=fs_type, source=full_device_path(self.device_name(snap.id)),
                      options=tuple(options))]

    # -- queries ---------------------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        _, info, _ = self.store.get_info(key)
        return info

    async def update(self, info: Info, fieldpaths: Iterable[str] = ()) -> Info:
        return await self.store.update_info(info, list(fieldpaths))

    async def usage(self, key: str) -> Usage:
        snapshot_id, info, usage = self.store.get_info(key)
        size = usage.size
        if info.kind == Kind.ACTIVE:
            size = await self.pool.get_usage(self.device_name(snapshot_id))
        if info.parent:
            # a thin device maps its parent's blocks too: count only its own
            _, _, parent_usage = self.store.get_info(info.parent)
            size -= parent_usage.size
        return Usage(size=max(size, 0), inodes=usage.inodes)

    async def mounts(self, key: str) -> list[Mount]:
        snap = self.store.get_snapshot(key)
        _, info, _ = self.store.get_info(key)
        return self._mounts(snap, info.labels.get(FSTYPE_LABEL, ""))

    async def walk(self, filters: Iterable[str] = ()) -> list[Info]:
        return self.store.walk(list(filters))

    # -- changes ---------------------------------------------------------------------------

    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(self, key: str, parent: str = "",
                   labels: Mapping[str, str] | None = None) -> list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels)

    async def _create(self, kind: Kind, key: str, parent: str,
                      labels: Mapping[str, str] | None) -> list[Mount]:
        # device-mapper work runs to its end even if the caller is cancelled (a half-made
        # device would be left Faulty); the caller then sees the cancellation
        return await complete(self._create_now(kind, key, parent, labels))

    async def _create_now(self, kind: Kind, key: str, parent: str,
                          labels: Mapping[str, str] | None) -> list[Mount]:
        async with self._lock:
            if parent:
                _, parent_info, _ = self.store.get_info(parent)
                # parents made before the label existed are ext4 (containerd's assumption)
                fs_type = parent_info.labels.get(FSTYPE_LABEL) or FS_EXT4
            else:
                fs_type = self.config.filesystem
            snap = await self.store.create(kind, key, parent, {**(labels or {}), FSTYPE_LABEL: fs_type})
            name = self.device_name(snap.id)
            try:
                if not snap.parent_ids:
                    await self.pool.create_thin_device(name, self.config.base_image_size_bytes)
                    await self._mkfs(name)
                else:
                    await self.pool.create_snapshot_device(self.device_name(snap.parent_ids[0]), name,
                                                           self.config.base_image_size_bytes)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.store.remove(key)
                raise
        mounts = self._mounts(snap, fs_type)
        if not snap.parent_ids:
            await self._remove_lost_found(mounts)
        return mounts

    async def _mkfs(self, name: str) -> None:
        argv = mkfs_command(self.config.filesystem, self.config.fs_options, full_device_path(name))
        log.debug("mkfs", extra={"fields": {"command": " ".join(argv)}})
        code, output = await self.pool.dmsetup.runner(argv)
        if code != 0:
            detail = ""
            with contextlib.suppress(DmsetupError):
                detail = f" (pool status: {(await self.pool.dmsetup.status(self.pool.pool_name)).raw_output})"
            try:
                await self.pool.remove_device(name)
            except Exception as e:
                detail += f"; removing the device failed too: {e}"
            raise FailedPrecondition(f"{argv[0]} couldn't initialize {argv[-1]!r}: {output.strip()}{detail}")

    async def _remove_lost_found(self, mounts: list[Mount]) -> None:
        try:
            async with self.mounter(mounts) as root:
                await asyncio.to_thread(_rmdir_quiet, os.path.join(root, "lost+found"))
        except Exception as e:  # as containerd: best effort
            log.warning("could not remove lost+found", extra={"fields": {"error": str(e)}})

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Flush and deactivate the active device, then record the commit (see the module doc)."""
        await complete(self._commit_now(name, key, labels))

    async def _commit_now(self, name: str, key: str, labels: Mapping[str, str] | None) -> None:
        async with self._lock:
            snapshot_id, info, _ = self.store.get_info(key)
            if info.kind != Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is not active (it is {info.kind.filter_name})")
            with contextlib.suppress(NotFound):
                self.store.get_info(name)
                raise AlreadyExists(f"snapshot {name!r} already exists")
            device = self.device_name(snapshot_id)
            size = await self.pool.get_usage(device)
            commit_labels = dict(labels or {})
            if info.labels.get(FSTYPE_LABEL):
                commit_labels[FSTYPE_LABEL] = info.labels[FSTYPE_LABEL]
            # the device will not be used directly any more: flush its I/O (suspend,
            # then resume, so no I/O hangs in between) and hide it from userspace
            await self.pool.suspend_device(device)
            await self.pool.resume_device(device)
            await self.pool.deactivate_device(device, deferred=True)
            try:
                await self.store.commit_active(key, name, Usage(size=size), commit_labels)
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.pool.activate_device(self.pool.metadata.get_device(device))
                raise

    async def remove(self, key: str) -> None:
        """Remove the device (or mark it for cleanup), then the record; FailedPrecondition
        when the device cannot be removed (the snapshot stays)."""
        await complete(self._remove_now(key))

    async def _remove_now(self, key: str) -> None:
        async with self._lock:
            snapshot_id, _, _ = self.store.get_info(key)
            if any(child.parent == key for child in self.store.walk([])):
                raise FailedPrecondition(f"cannot remove snapshot {key!r}: it has children")
            device = self.device_name(snapshot_id)
            if self.config.async_remove:
                with contextlib.suppress(NotFound):
                    await self.pool.mark_device_state(device, DeviceState.REMOVED)
            else:
                try:
                    await self.pool.remove_device(device)
                except NotFound:
                    pass
                except Exception as e:
                    log.error("failed to remove device",
                              extra={"fields": {"device": device, "error": str(e)}})
                    # FailedPrecondition lets GC go on collecting other snapshots
                    raise FailedPrecondition(f"failed to remove device {device!r} of snapshot {key!r}: "
                                             f"{e}") from None
            await self.store.remove(key)

    async def cleanup(self) -> None:
        """With ``async_remove``: delete devices marked Removed. Devices no snapshot refers to
        (left by a crash between the two stores) are marked Removed first."""
        if not self.config.async_remove:
            return
        failures = []
        async with self._lock:
            known = {self.device_name(i) for i in self.store.ids()}
            for dev in self.pool.devices():
                if dev.name not in known and dev.state not in (DeviceState.REMOVED, DeviceState.FAULTY):
                    with contextlib.suppress(Exception):
                        await self.pool.mark_device_state(dev.name, DeviceState.REMOVED)
            for dev in self.pool.devices():
                if dev.state != DeviceState.REMOVED:
                    continue
                try:
                    await self.pool.remove_device(dev.name)
                except Exception as e:
                    log.error("failed to cleanup device",
                              extra={"fields": {"device": dev.name, "error": str(e)}})
                    failures.append(f"{dev.name}: {e}")
        if failures:
            raise FailedPrecondition("devmapper cleanup: " + "; ".join(failures))

    async def reset_pool(self) -> None:
        """Deactivate and delete every thin device of the pool (for tests and benchmarks)."""
        failures = []
        for name in self.pool.metadata.device_names():
            try:
                await self.pool.remove_device(name)
            except Exception as e:
                failures.append(f"{name}: {e}")
        if failures:
            raise FailedPrecondition("; ".join(failures))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self.store.close)
        await self.pool.close()


def _rmdir_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)

