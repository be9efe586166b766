"""The snapshotter contract (containerd's ``core/snapshots.Snapshotter``).

A snapshotter stores filesystem snapshots in parent chains and hands out
:class:`~aiocontainerd.mount.Mount` lists that make a snapshot visible as a
directory tree.

Terms:

- *key*: the name of an active or view snapshot while it is being used
  (``Prepare``/``View`` create one; ``Commit`` and ``Remove`` end it);
- *name*: the name of a committed snapshot (given to ``Commit``); committed
  snapshots are read-only and can be parents;
- *parent*: the committed snapshot a new one starts from (empty: an empty tree);
- *kind*: :class:`Kind` — ``ACTIVE`` (writable, from ``Prepare``), ``VIEW``
  (read-only, from ``View``, cannot be committed), ``COMMITTED``.

Lifecycle, as unpacking an image layer does it::

    mounts = await sn.prepare("extract-1 <chainid>", parent="<parent chainid>")
    # mount, apply the layer into it, unmount
    await sn.commit("<chainid>", "extract-1 <chainid>")      # the active key is gone now
    mounts = await sn.view("my-view", parent="<chainid>")    # read-only look at it
    await sn.remove("my-view")

Rules every implementation follows (the shared test suite checks them):

- ``prepare``/``view`` of an existing key: AlreadyExists; of a parent that
  does not exist: NotFound; of a parent that is not committed: InvalidArgument;
- ``commit`` of a key that is not active: FailedPrecondition (NotFound if
  absent); of a name that exists: AlreadyExists;
- ``remove`` of a snapshot that has children: FailedPrecondition;
- ``stat``/``update``/``usage``/``mounts``/``remove`` of a missing key: NotFound;
- ``update`` changes only ``labels`` / ``labels.<k>`` paths (none: all labels);
- labels set at prepare carry to the committed snapshot (labels given to
  commit are merged over them);
- ``walk`` filters: ``name``, ``parent``, ``kind`` (active, view, committed),
  ``labels.<k>`` in containerd's filter syntax;
- ``usage`` of a committed snapshot is its own size (not its parents'); of an
  active one it is computed on request (off the event loop);
- ``cleanup`` removes storage no snapshot refers to (after crashes or GC).

Implementations live in ``aiocontainerd.snapshotters`` (the top-level
``snapshotters/`` folder), each a plugin ``io.containerd.snapshotter.v1.<name>``.
The metadata layer (:mod:`aiocontainerd.metadata.snapshots`) namespaces keys
per containerd namespace on top of these backends and drives GC.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Iterable, Mapping

from ..mount import Mount


class Kind(enum.IntEnum):
    """Snapshot kinds, numbered as the wire's ``containerd.services.snapshots.v1.Kind``."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def filter_name(self) -> str:
        return self.name.lower()


@dataclasses.dataclass
class Info:
    """A snapshot: ``name`` is its key (active/view) or name (committed); times in ns."""

    kind: Kind
    name: str
    parent: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


@dataclasses.dataclass(frozen=True)
class Usage:
    """Disk use of one snapshot alone: ``size`` in bytes, ``inodes`` count."""

    size: int = 0
    inodes: int = 0


#: Labels with this prefix are inherited by a committed snapshot from its active one.
INHERITED_PREFIX = "containerd.io/snapshot/"


class Snapshotter(abc.ABC):
    """The contract (see the module doc). All methods are coroutines; blocking
    filesystem work runs in threads."""

    #: True when a snapshot's storage holds only its own changes (overlay upper
    #: folders): an active snapshot prepared without a parent may then be committed
    #: onto a parent (``commit(..., parent=)``), which lets layers be unpacked in parallel.
    layers_independent: bool = False

    @abc.abstractmethod
    async def stat(self, key: str) -> Info: ...

    @abc.abstractmethod
    async def update(self, info: Info, fieldpaths: Iterable[str] = ()) -> Info: ...

    @abc.abstractmethod
    async def usage(self, key: str) -> Usage: ...

    @abc.abstractmethod
    async def mounts(self, key: str) -> list[Mount]: ...

    @abc.abstractmethod
    async def prepare(self, key: str, parent: str = "",
                      labels: Mapping[str, str] | None = None) -> list[Mount]: ...

    @abc.abstractmethod
    async def view(self, key: str, parent: str = "",
                   labels: Mapping[str, str] | None = None) -> list[Mount]: ...

    @abc.abstractmethod
    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None: ...

    @abc.abstractmethod
    async def remove(self, key: str) -> None: ...

    @abc.abstractmethod
    async def walk(self, filters: Iterable[str] = ()) -> list[Info]: ...

    async def cleanup(self) -> None:  # noqa: B027 - optional, a no-op by default
        """Remove storage no snapshot refers to (default: nothing to do)."""

    async def close(self) -> None:  # noqa: B027 - optional, a no-op by default
        """Release resources (default: nothing to do)."""


__all__ = ["INHERITED_PREFIX", "Info", "Kind", "Mount", "Snapshotter", "Usage"]
