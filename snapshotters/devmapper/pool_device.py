"""The thin-pool: thin devices made, snapshotted, (de)activated and deleted, with their
state kept in :class:`~.metadata.PoolMetadata` (containerd's ``pool_device.go``).

Every device-mapper operation goes through :meth:`PoolDevice.transition`: the
record moves to the operation's trying state, the ``dmsetup`` command runs, and
the record moves to the done state — or keeps the trying state with ``error``
set. Creating a device is three steps (allocate an ID in the metadata, send
``create_thin``/``create_snap``, activate); a failure in step two marks the
record Faulty (its ID stays reserved: the pool may hold a half-made device), a
failure in step three is rolled back by deleting the device (Faulty only if
that fails too).

At start-up (:meth:`PoolDevice.open`) records left in a trying state by a crash
are marked Faulty, and devices recorded Activated that device-mapper does not
have live (after a reboot) are activated again.

Busy devices (EBUSY) are retried, as containerd retries them: removal and
deletion up to 100 times 100 ms apart, suspend/resume three times with a
growing pause.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiocontainerd.errors import FailedPrecondition

from .config import DevmapperConfig
from .device_info import DeviceInfo, DeviceState
from .dmsetup import REMOVE_DEFERRED, REMOVE_FORCE, REMOVE_RETRY, DeviceInUse, Dmsetup, DmsetupError
from .metadata import PoolMetadata

log = logging.getLogger(__name__)
S = DeviceState


class PoolDevice:
    """One thin-pool and its device records (see the module doc)."""

    def __init__(self, pool_name: str, metadata: PoolMetadata, dmsetup: Dmsetup, *,
                 discard_blocks: bool = False, retry_delay: float = 0.1, max_retries: int = 100) -> None:
        self.pool_name = pool_name
        self.metadata = metadata
        self.dmsetup = dmsetup
        self.discard_blocks = discard_blocks
        self.retry_delay = retry_delay
        self.max_retries = max_retries

    @classmethod
    async def open(cls, config: DevmapperConfig, dmsetup: Dmsetup, *, retry_delay: float = 0.1,
                   max_retries: int = 100) -> PoolDevice:
        """Open the pool named by ``config``: check dmsetup (and blkdiscard if
        ``discard_blocks``), open ``<root_path>/<pool_name>.db``, check the pool
        exists in device-mapper, and reconcile the records (see the module doc).

        Raises :class:`DmsetupError` when dmsetup fails or the pool does not exist,
        FailedPrecondition when blkdiscard is needed and missing.
        """
        version = await dmsetup.version()
        log.info("initializing pool device", extra={"fields": {"pool": config.pool_name,
                                                                "dmsetup": version.replace("\n", "; ")}})
        if config.discard_blocks and not dmsetup.have_blkdiscard():
            raise FailedPrecondition("key 'discard_blocks' is set but blkdiscard is not installed "
                                     "(apt-get install util-linux)")
        await dmsetup.info(config.pool_name)  # the pool must exist
        db = Path(config.root_path) / f"{config.pool_name.removeprefix('/dev/mapper/')}.db"
        metadata = await asyncio.to_thread(PoolMetadata.open, db)
        pool = cls(config.pool_name, metadata, dmsetup, discard_blocks=config.discard_blocks,
                   retry_delay=retry_delay, max_retries=max_retries)
        try:
            await pool.ensure_device_states()
        except BaseException:
            await metadata.close()
            raise
        return pool

    async def ensure_device_states(self) -> None:
        """Mark records left mid-operation Faulty; re-activate Activated devices that are not live.

        Tries every device, then raises FailedPrecondition naming each failure.
        """
        failures: list[Exception] = []
        for dev in self.metadata.devices():
            if dev.state in (S.SUSPENDED, S.RESUMED, S.DEACTIVATED, S.REMOVED, S.FAULTY):
                continue
            if dev.state == S.ACTIVATED:
                if await self.is_activated(dev.name):
                    continue
                log.warning("devmapper device marked activated but not active, activating it",
                            extra={"fields": {"device": dev.name}})
                try:
                    await self.activate_device(dev)
                except Exception as e:
                    failures.append(e)
                continue
            log.warning("devmapper device has invalid state, marking as faulty",
                        extra={"fields": {"device": dev.name, "state": str(dev.state),
                                          "dev_id": dev.device_id, "error": dev.error}})
            try:
                await self.metadata.mark_faulty(dev.name)
            except Exception as e:
                failures.append(e)
        if failures:
            raise FailedPrecondition("devmapper: failed to check devices state: "
                                     + "; ".join(str(f) for f in failures))

    async def transition(self, name: str, trying: DeviceState, done: DeviceState,
                         operation: Callable[[], Awaitable[None]]) -> None:
        """Record ``trying``, run ``operation``, then record ``done`` or the error (re-raised)."""
        await self.metadata.change_state(name, trying)
        try:
            await operation()
        except Exception as e:
            message = str(e)

            def record_error(info: DeviceInfo) -> None:
                info.error = message
            await self.metadata.update_device(name, record_error)
            raise

        def record_done(info: DeviceInfo) -> None:
            info.state = done
            info.error = ""
        await self.metadata.update_device(name, record_done)

    async def _retry_busy(self, operation: Callable[[], Awaitable[None]]) -> None:
        for attempt in range(1, self.max_retries + 1):
            try:
                await operation()
                return
            except DmsetupError as e:
                if e.errno != errno.EBUSY or attempt == self.max_retries:
                    raise
                if attempt % 10 == 0:
                    log.warning("device busy, retrying", extra={"fields": {
                        "attempt": attempt, "max": self.max_retries, "error": str(e)}})
            await asyncio.sleep(self.retry_delay)

    # -- creation --------------------------------------------------------------------------

    async def create_thin_device(self, name: str, size_bytes: int) -> DeviceInfo:
        """Make a new, empty thin device ``name`` of ``size_bytes`` and activate it
        (``/dev/mapper/<name>``). Raises AlreadyExists if recorded, DmsetupError on failure."""
        info = await self.metadata.add_device(DeviceInfo(name=name, size=size_bytes))
        await self._create_and_activate(info, lambda: self.dmsetup.create_device(
            self.pool_name, info.device_id))
        return info

    async def create_snapshot_device(self, base_name: str, name: str, size_bytes: int) -> DeviceInfo:
        """Make thin device ``name`` as a snapshot of ``base_name`` and activate it. A base
        that device-mapper has loaded is suspended around the snapshot (to keep it
        consistent, as the kernel's thin-provisioning docs require) and resumed after."""
        base = self.metadata.get_device(base_name)
        suspended = False
        if await self.is_loaded(base_name):
            await self.suspend_device(base_name)
            suspended = True
        try:
            info = await self.metadata.add_device(DeviceInfo(name=name, size=size_bytes,
                                                             parent_name=base_name))
            await self._create_and_activate(info, lambda: self.dmsetup.create_snapshot(
                self.pool_name, info.device_id, base.device_id))
        finally:
            if suspended:
                try:
                    await self.resume_device(base_name)
                except Exception as e:
                    log.error("failed to resume base device after taking its snapshot",
                              extra={"fields": {"device": base_name, "error": str(e)}})
        return info

    async def _create_and_activate(self, info: DeviceInfo, create: Callable[[], Awaitable[None]]) -> None:
        try:
            await self.transition(info.name, S.CREATING, S.CREATED, create)
        except Exception:
            # most likely something is wrong with the device ID: keep it reserved
            await self.metadata.mark_faulty(info.name)
            raise
        try:
            await self.activate_device(info)
        except Exception as activate_error:
            await self._rollback_activate(info, activate_error)
            raise

    async def activate_device(self, info: DeviceInfo) -> None:
        """Make thin device ``info`` visible as ``/dev/mapper/<name>`` (``dmsetup create``)."""
        await self.transition(info.name, S.ACTIVATING, S.ACTIVATED, lambda: self.dmsetup.activate_device(
            self.pool_name, info.name, info.device_id, info.size))

    async def _rollback_activate(self, info: DeviceInfo, cause: Exception) -> None:
        try:
            await self._delete(info)
        except Exception as e:
            log.error("failed to roll back device activation, marking it faulty",
                      extra={"fields": {"device": info.name, "error": str(e), "cause": str(cause)}})
            await self.metadata.mark_faulty(info.name)
            return
        await self.metadata.remove_device(info.name)

    # -- suspend, resume, deactivate, remove -----------------------------------------------

    async def _with_attempts(self, name: str, trying: DeviceState, done: DeviceState,
                             operation: Callable[[], Awaitable[None]]) -> None:
        last: Exception | None = None
        for attempt in range(3):
            if attempt:
                await asyncio.sleep(self.retry_delay * attempt)
            try:
                await self.transition(name, trying, done, operation)
                return
            except DmsetupError as e:
                last = e
                if e.errno not in (errno.EINVAL, errno.EBUSY):
                    raise
                log.warning("device operation failed, retrying", extra={"fields": {
                    "device": name, "state": str(trying), "attempt": attempt + 1, "error": str(e)}})
        assert last is not None
        raise last

    async def suspend_device(self, name: str) -> None:
        """Flush outstanding I/O of ``name`` and block further I/O (``dmsetup suspend``)."""
        await self._with_attempts(name, S.SUSPENDING, S.SUSPENDED,
                                  lambda: self.dmsetup.suspend_device(name))

    async def resume_device(self, name: str) -> None:
        """Let I/O to ``name`` go on (``dmsetup resume``)."""
        await self._with_attempts(name, S.RESUMING, S.RESUMED, lambda: self.dmsetup.resume_device(name))

    async def deactivate_device(self, name: str, *, deferred: bool = False, force: bool = False) -> None:
        """Remove ``/dev/mapper/<name>`` (the thin device stays in the pool); a device
        device-mapper does not have loaded is left as it is. With ``discard_blocks``
        and not ``deferred``, its blocks are discarded first (skipped if it is open)."""
        if not await self.is_loaded(name):
            return
        options = [REMOVE_RETRY]
        if deferred:
            options.append(REMOVE_DEFERRED)
        if force:
            options.append(REMOVE_FORCE)

        async def remove() -> None:
            if not deferred and self.discard_blocks:
                try:
                    await self.dmsetup.discard_blocks(name)
                except DeviceInUse:
                    log.warning("device is in use, skipping blkdiscard", extra={"fields": {"device": name}})
            await self.dmsetup.remove_device(name, *options)

        await self.transition(name, S.DEACTIVATING, S.DEACTIVATED, lambda: self._retry_busy(remove))

    async def remove_device(self, name: str) -> None:
        """Wipe thin device ``name`` out: deactivate, delete in the pool, drop the record
        and free its ID. NotFound if not recorded."""
        info = self.metadata.get_device(name)
        await self.deactivate_device(name, deferred=False, force=True)
        await self._delete(info)
        await self.metadata.remove_device(name)

    async def _delete(self, info: DeviceInfo) -> None:
        async def delete() -> None:
            try:
                await self.dmsetup.delete_device(self.pool_name, info.device_id)
            except DmsetupError as e:
                if e.errno != errno.ENODATA:  # deleted already
                    raise
        await self.transition(info.name, S.REMOVING, S.REMOVED, lambda: self._retry_busy(delete))

    async def mark_device_state(self, name: str, state: DeviceState) -> None:
        """Record ``state`` for ``name`` (an allowed transition), e.g. Removed for async removal."""
        await self.metadata.change_state(name, state)

    async def remove_pool(self) -> None:
        """Deactivate every device (deferred, forced) and remove the pool device itself."""
        failures = []
        for name in self.metadata.device_names():
            try:
                await self.deactivate_device(name, deferred=True, force=True)
            except Exception as e:
                failures.append(f"failed to remove {name!r}: {e}")
        try:
            await self.dmsetup.remove_device(self.pool_name, REMOVE_FORCE, REMOVE_RETRY, REMOVE_DEFERRED)
        except DmsetupError as e:
            failures.append(f"failed to remove pool {self.pool_name!r}: {e}")
        if failures:
            raise FailedPrecondition("; ".join(failures))

    # -- queries ---------------------------------------------------------------------------

    async def is_activated(self, name: str) -> bool:
        """Whether ``name`` has a live table in device-mapper."""
        try:
            infos = await self.dmsetup.info(name)
        except DmsetupError:
            return False
        return len(infos) == 1 and infos[0].table_live

    async def is_loaded(self, name: str) -> bool:
        """Whether device-mapper knows ``name`` at all."""
        try:
            await self.dmsetup.info(name)
        except DmsetupError:
            return False
        return True

    async def get_usage(self, name: str) -> int:
        """Bytes mapped by thin device ``name`` (its first ``dmsetup status`` parameter is the
        number of mapped sectors)."""
        status = await self.dmsetup.status(name)
        if not status.params:
            raise DmsetupError(["dmsetup", "status", name],
                               "failed to get the number of used blocks, unexpected output")
        try:
            return int(status.params[0]) * 512
        except ValueError:
            raise DmsetupError(["dmsetup", "status", name],
                               f"failed to parse status params: {status.params[0]!r}") from None

    def devices(self) -> list[DeviceInfo]:
        return self.metadata.devices()

    async def close(self) -> None:
        """Close the metadata (the thin-pool itself is left as it is)."""
        await self.metadata.close()
