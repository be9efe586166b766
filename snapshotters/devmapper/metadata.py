"""The pool metadata store: device records and thin device ID allocation.

Follows containerd's ``plugins/snapshots/devmapper/metadata.go`` (a bolt file
``<root_path>/<pool_name>.db``); ours is one LMDB file at the same path with
two named databases::

    devices     <device name>   -> DeviceInfo as JSON (containerd's field names)
    device_ids  <id, 4 bytes big-endian> -> b"\\x00" free | b"\\x01" taken | b"\\x02" faulty
    meta        b"sequence"      -> the highest ID ever handed out (decimal)

ID allocation (as containerd's ``getNextDeviceID``): the lowest ID marked free
is reused first, so low IDs come back soon; otherwise the sequence moves on
(the first ID is 1). IDs are 24-bit: past :data:`MAX_DEVICE_ID` allocation
fails. Removing a device frees its ID; marking it faulty keeps the ID out of
use for good (the pool may still hold a half-made device under it) until an
operator deals with it.

Every method is one LMDB transaction. Writes run on one worker thread (a
commit fsyncs, which must not block the event loop); reads run inline.
Errors: :class:`~aiocontainerd.errors.NotFound` for a missing device,
:class:`~aiocontainerd.errors.AlreadyExists` for a duplicate name (unless the
existing record is ``Faulty``: then it is replaced, with a fresh ID),
:class:`~aiocontainerd.errors.FailedPrecondition` for a disallowed state
transition or a change of a device's name or ID in :meth:`update_device`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import lmdb

from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from .device_info import MAX_DEVICE_ID, DeviceInfo, DeviceState, check_transition

T = TypeVar("T")

ID_FREE = b"\x00"
ID_TAKEN = b"\x01"
ID_FAULTY = b"\x02"


def _id_key(device_id: int) -> bytes:
    return device_id.to_bytes(4, "big")


class PoolMetadata:
    """Device records of one thin-pool (see the module doc)."""

    def __init__(self, env: lmdb.Environment) -> None:
        self._env = env
        self._devices = env.open_db(b"devices")
        self._ids = env.open_db(b"device_ids")
        self._meta = env.open_db(b"meta")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="devmapper-meta")

    @classmethod
    def open(cls, path: str | Path, *, map_size: int = 64 << 20) -> PoolMetadata:
        """Open (creating) the store at file ``path``."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(str(path), subdir=False, max_dbs=4, map_size=map_size, mode=0o600,
                        lock=True)
        return cls(env)

    async def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        def run() -> T:
            with self._env.begin(write=True) as txn:
                return fn(txn)
        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    # -- helpers inside a transaction ------------------------------------------------------

    def _get(self, txn: lmdb.Transaction, name: str) -> DeviceInfo:
        raw = txn.get(name.encode(), db=self._devices) if name else None
        if raw is None:
            raise NotFound(f"device {name!r} not found in pool metadata")
        return DeviceInfo.from_json(json.loads(raw))

    def _put(self, txn: lmdb.Transaction, info: DeviceInfo) -> None:
        txn.put(info.name.encode(), json.dumps(info.to_json(), sort_keys=True).encode(), db=self._devices)

    def _mark_id(self, txn: lmdb.Transaction, device_id: int, state: bytes) -> None:
        txn.put(_id_key(device_id), state, db=self._ids)

    def _next_id(self, txn: lmdb.Transaction) -> int:
        with txn.cursor(db=self._ids) as cur:
            for k, v in cur:
                if v == ID_FREE:
                    device_id = int.from_bytes(k, "big")
                    self._mark_id(txn, device_id, ID_TAKEN)
                    return device_id
        seq = int(txn.get(b"sequence", b"0", db=self._meta)) + 1
        if seq > MAX_DEVICE_ID:
            raise FailedPrecondition("dm-meta: couldn't find free device key "
                                     f"(all {MAX_DEVICE_ID} thin device IDs are in use)")
        txn.put(b"sequence", str(seq).encode(), db=self._meta)
        self._mark_id(txn, seq, ID_TAKEN)
        return seq

    # -- operations ------------------------------------------------------------------------

    async def add_device(self, info: DeviceInfo) -> DeviceInfo:
        """Record a new device and give it a free device ID (set on ``info`` and returned).

        Raises AlreadyExists if a device of that name exists and is not Faulty;
        InvalidArgument for an empty name.
        """
        if not info.name or len(info.name.encode()) > 511:
            raise InvalidArgument(f"device name {info.name!r} must be 1 to 511 bytes")

        def fn(txn: lmdb.Transaction) -> int:
            raw = txn.get(info.name.encode(), db=self._devices)
            if raw is not None:
                existing = DeviceInfo.from_json(json.loads(raw))
                if existing.state != DeviceState.FAULTY:
                    raise AlreadyExists(f"device {info.name!r} is already there (state {existing.state}, "
                                        f"id {existing.device_id})")
            device_id = self._next_id(txn)
            self._put(txn, dataclasses.replace(info, device_id=device_id))
            return device_id

        try:
            info.device_id = await self._write(fn)
        except (AlreadyExists, FailedPrecondition) as e:
            raise type(e)(f"failed to save metadata for device {info.name!r} "
                          f"(parent: {info.parent_name!r}): {e.message}") from None
        return info

    async def update_device(self, name: str, fn: Callable[[DeviceInfo], None]) -> DeviceInfo:
        """Change device ``name`` by ``fn(info)`` in one transaction; returns the stored record.

        ``fn`` may change anything but the name and device ID (FailedPrecondition);
        a state change must be an allowed transition. An exception from ``fn``
        leaves the record unchanged.
        """
        def run(txn: lmdb.Transaction) -> DeviceInfo:
            info = self._get(txn, name)
            old_state, old_id = info.state, info.device_id
            fn(info)
            if info.name != name:
                raise FailedPrecondition(f"failed to update device info, name didn't match: "
                                         f"{name!r} {info.name!r}")
            if info.device_id != old_id:
                raise FailedPrecondition(f"failed to update device info, device id didn't match: "
                                         f"{old_id} {info.device_id}")
            if info.state != old_state:
                check_transition(name, old_state, info.state)
            self._put(txn, info)
            return info

        return await self._write(run)

    async def change_state(self, name: str, state: DeviceState) -> DeviceInfo:
        """Move device ``name`` to ``state`` (an allowed transition, else FailedPrecondition)."""
        def set_state(info: DeviceInfo) -> None:
            info.state = state
        return await self.update_device(name, set_state)

    async def mark_faulty(self, name: str) -> None:
        """Mark device ``name`` Faulty and keep its device ID out of use."""
        def run(txn: lmdb.Transaction) -> None:
            info = self._get(txn, name)
            info.state = DeviceState.FAULTY
            self._put(txn, info)
            self._mark_id(txn, info.device_id, ID_FAULTY)
        await self._write(run)

    def get_device(self, name: str) -> DeviceInfo:
        """Device ``name``'s record; NotFound if absent."""
        with self._env.begin() as txn:
            return self._get(txn, name)

    async def remove_device(self, name: str) -> None:
        """Delete device ``name``'s record and free its device ID; NotFound if absent."""
        def run(txn: lmdb.Transaction) -> None:
            info = self._get(txn, name)
            txn.delete(name.encode(), db=self._devices)
            self._mark_id(txn, info.device_id, ID_FREE)
        await self._write(run)

    def devices(self) -> list[DeviceInfo]:
        """Every device record, by name."""
        with self._env.begin() as txn, txn.cursor(db=self._devices) as cur:
            return [DeviceInfo.from_json(json.loads(v)) for _, v in cur]

    def device_names(self) -> list[str]:
        """Names of every recorded device, sorted."""
        with self._env.begin() as txn, txn.cursor(db=self._devices) as cur:
            return [k.decode() for k in cur.iternext(keys=True, values=False)]

    def id_states(self) -> dict[int, str]:
        """Device ID -> ``"free"``, ``"taken"`` or ``"faulty"`` (for inspection and tests)."""
        names = {ID_FREE: "free", ID_TAKEN: "taken", ID_FAULTY: "faulty"}
        with self._env.begin() as txn, txn.cursor(db=self._ids) as cur:
            return {int.from_bytes(k, "big"): names[v] for k, v in cur}

    async def close(self) -> None:
        """Finish pending writes and close the store (idempotent)."""
        def shut() -> None:
            self._writer.shutdown(wait=True)
            self._env.close()
        await asyncio.to_thread(shut)

