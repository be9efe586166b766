"""Thin devices as the pool metadata records them, and their state machine.

Follows containerd's ``plugins/snapshots/devmapper/device_info.go``: a device
record holds the device-mapper name, its parent's name (for snapshots), its
virtual size, the 24-bit thin device ID inside the pool, its state, and the
error of the last failed operation.

Each device-mapper operation is bracketed by two states: the *trying* state
(``Creating``, ``Activating``, ...) is recorded before the ``dmsetup`` call and
the *done* state (``Created``, ``Activated``, ...) after it succeeds. A failed
call leaves the trying state with ``error`` set; a daemon that finds a record
in a trying state at start-up (it crashed in between) marks it ``Faulty``.

:data:`TRANSITIONS` lists the moves each state allows; containerd makes them
implicitly, we check them (:func:`check_transition`) so a programming error
cannot silently corrupt the record. Three moves are always allowed, because
teardown and crash recovery must be possible from anywhere: to ``Faulty``, to
``Deactivating`` and to ``Removing``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from aiocontainerd.errors import FailedPrecondition

#: Thin device IDs are 24-bit numbers (the thin-pool's limit).
MAX_DEVICE_ID = 0xFFFFFF


class DeviceState(enum.IntEnum):
    """Device states, numbered as containerd stores them (``Unknown`` = 0 ... ``Faulty`` = 13)."""

    UNKNOWN = 0       #: allocated in the metadata, nothing done in device-mapper yet
    CREATING = 1      #: create_thin / create_snap message being sent
    CREATED = 2
    ACTIVATING = 3    #: ``dmsetup create`` with a thin table being run
    ACTIVATED = 4
    SUSPENDING = 5
    SUSPENDED = 6
    RESUMING = 7
    RESUMED = 8
    DEACTIVATING = 9  #: ``dmsetup remove`` being run
    DEACTIVATED = 10
    REMOVING = 11     #: delete message being sent to the pool
    REMOVED = 12      #: deleted in the pool (or marked for async removal), record not yet gone
    FAULTY = 13       #: an operation failed and could not be rolled back

    def __str__(self) -> str:
        return self.name.capitalize()


S = DeviceState

#: The state an operation leaves when it succeeds, by its trying state.
DONE: dict[DeviceState, DeviceState] = {
    S.CREATING: S.CREATED,
    S.ACTIVATING: S.ACTIVATED,
    S.SUSPENDING: S.SUSPENDED,
    S.RESUMING: S.RESUMED,
    S.DEACTIVATING: S.DEACTIVATED,
    S.REMOVING: S.REMOVED,
}
TRYING = frozenset(DONE)

#: Moves allowed besides the ones always allowed (to Faulty, Deactivating, Removing).
#: A trying state may be entered again (a retry after its operation failed).
TRANSITIONS: dict[DeviceState, frozenset[DeviceState]] = {
    S.UNKNOWN: frozenset({S.CREATING}),
    S.CREATING: frozenset({S.CREATING, S.CREATED}),
    S.CREATED: frozenset({S.ACTIVATING}),
    # a failed activation is rolled back by deleting the device (-> Removing)
    S.ACTIVATING: frozenset({S.ACTIVATING, S.ACTIVATED}),
    # re-activation after a reboot; suspend before a snapshot or commit; async remove
    S.ACTIVATED: frozenset({S.ACTIVATING, S.SUSPENDING, S.REMOVED}),
    S.SUSPENDING: frozenset({S.SUSPENDING, S.SUSPENDED, S.RESUMING}),
    S.SUSPENDED: frozenset({S.RESUMING, S.REMOVED}),
    S.RESUMING: frozenset({S.RESUMING, S.RESUMED}),
    S.RESUMED: frozenset({S.ACTIVATING, S.SUSPENDING, S.REMOVED}),
    S.DEACTIVATING: frozenset({S.DEACTIVATED}),
    # a committed snapshot's device is deactivated; it is suspended again while a
    # child is snapshotted from it if device-mapper still has it loaded
    S.DEACTIVATED: frozenset({S.ACTIVATING, S.SUSPENDING, S.REMOVED}),
    S.REMOVING: frozenset({S.REMOVED}),
    S.REMOVED: frozenset(),
    # AddDevice may reuse the name of a faulty device with a fresh device ID
    S.FAULTY: frozenset({S.UNKNOWN}),
}
ALWAYS = frozenset({S.FAULTY, S.DEACTIVATING, S.REMOVING})


def allowed(old: DeviceState, new: DeviceState) -> bool:
    """Whether a device may move from ``old`` to ``new``."""
    return new in ALWAYS or new in TRANSITIONS[old]


def check_transition(name: str, old: DeviceState, new: DeviceState) -> None:
    """Raise :class:`FailedPrecondition` unless ``old -> new`` is allowed for device ``name``."""
    if not allowed(old, new):
        raise FailedPrecondition(f"device {name!r}: invalid state transition {old} -> {new}")


@dataclasses.dataclass
class DeviceInfo:
    """One thin device's record (containerd's ``DeviceInfo``, same JSON field names)."""

    name: str
    size: int = 0
    parent_name: str = ""
    device_id: int = 0
    state: DeviceState = DeviceState.UNKNOWN
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "size": self.size, "name": self.name,
                "parent_name": self.parent_name, "state": int(self.state), "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceInfo:
        return cls(name=data["name"], size=data.get("size", 0), parent_name=data.get("parent_name", ""),
                   device_id=data.get("device_id", 0), state=DeviceState(data.get("state", 0)),
                   error=data.get("error", ""))
