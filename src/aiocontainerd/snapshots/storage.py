"""The metastore every snapshotter keeps its records in (containerd's ``core/snapshots/storage``).

A snapshotter backend (overlayfs, native, btrfs, ...) stores file trees in
its own way but records *which* snapshots exist the same way: a
:class:`MetaStore` in ``<root>/metadata.lmdb/`` holds, for each key or name,

- a numeric **id** (a decimal string; allocated from a sequence, never
  reused, so a folder named after a removed id is never mistaken for a new
  snapshot's);
- its kind (active, view, committed), parent name, labels, created/updated
  times (ns since the epoch), and for committed snapshots their usage;
- a parent link ``<parent id> NUL <child id>`` per child, so "has children" is
  one range lookup.

The backend names its storage after the id (``<root>/snapshots/<id>``) and
gets the chain of parent ids (nearest first) from :meth:`MetaStore.create` /
:meth:`MetaStore.get_snapshot` to build mounts.

LMDB layout (named databases, UTF-8 keys, compact JSON values)::

    meta       b"schema" -> version (decimal), b"sequence" -> {"last": <last id>}
    snapshots  <key or name> -> {"id", "kind", "parent", "labels", "created_at",
                                 "updated_at", "size", "inodes"}
    parents    <parent id> NUL <child id> -> {"key": <child key or name>}

Contract:

- Writes run on one writer thread, each in one write transaction (LMDB commits
  fsync); a crash between transactions never leaves half a change. A write
  runs to completion once started: a cancelled caller waits for it and then
  sees :class:`asyncio.CancelledError`.
- A write may carry a *hook*, run on the writer thread inside the same
  transaction; if the hook raises, the transaction is aborted and the error
  re-raised. Backends use it to rename their storage into place atomically
  with the record (containerd runs them inside its bolt transaction).
- Reads (:meth:`MetaStore.get_snapshot`, :meth:`MetaStore.get_info`) are
  point lookups, fast enough for the event loop; :meth:`MetaStore.walk` and
  :meth:`MetaStore.ids` scan every record (run them in a thread when large).
- Keys and names are 1 to 511 bytes (LMDB's limit); a longer or empty one is
  InvalidArgument when creating and simply not found when reading.

:class:`MetaStoreSnapshotter` is a base for backends that keep their trees in
``<root>/snapshots/<id>``: ``stat``, ``update``, ``walk``, ``usage``,
``commit``, ``remove`` and ``cleanup`` follow the contract through the
metastore; a backend adds ``prepare``/``view``/``mounts`` and where its usage is
measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import stat as stat_mod
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from .. import filters
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..metadata.db import MAX_KEY, GroupWriter, SchemaError, Txn, open_env
from ..tasks import complete
from . import INHERITED_PREFIX, Info, Kind, Snapshotter, Usage

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
DEFAULT_MAP_SIZE = 1 << 30
SEP = "\0"
DATABASES = ("meta", "snapshots", "parents")
#: Set by the unpacker on an extraction snapshot; inherited on commit like the
#: ``containerd.io/snapshot/`` labels (containerd's FilterInheritedLabels).
LABEL_SNAPSHOT_REF = "containerd.io/snapshot.ref"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """An active or view snapshot as a backend needs it: its ``id``, ``kind`` and
    the ids of its parents, nearest first (apply/stack from the last to the first)."""

    id: str
    kind: Kind
    parent_ids: tuple[str, ...] = ()


def inherited_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a committed snapshot inherits from its active one: those under
    :data:`~aiocontainerd.snapshots.INHERITED_PREFIX` and ``containerd.io/snapshot.ref``."""
    return {k: v for k, v in labels.items() if k.startswith(INHERITED_PREFIX) or k == LABEL_SNAPSHOT_REF}


def disk_usage(path: str | os.PathLike[str]) -> Usage:
    """Blocks (``st_blocks * 512``) and inodes used by the tree at ``path``, itself
    included; a file with several hard links counts once (containerd's fs.DiskUsage).
    Blocking: run it in a thread. Raises :class:`OSError` if ``path`` is missing."""
    seen: set[tuple[int, int]] = set()
    size = 0
    st = os.lstat(path)
    seen.add((st.st_dev, st.st_ino))
    size += st.st_blocks * 512
    stack = [os.fspath(path)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                ident = (st.st_dev, st.st_ino)
                if ident not in seen:
                    seen.add(ident)
                    size += st.st_blocks * 512
                if stat_mod.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return Usage(size=size, inodes=len(seen))


def _check_name(what: str, name: str) -> bytes:
    raw = name.encode()
    if not raw:
        raise InvalidArgument(f"{what} must not be empty")
    if len(raw) > MAX_KEY:
        raise InvalidArgument(f"{what} of {len(raw)} bytes: at most {MAX_KEY} bytes")
    return raw


def _info(name: str, rec: dict[str, Any]) -> Info:
    return Info(kind=Kind(rec["kind"]), name=name, parent=rec.get("parent", ""),
                labels=dict(rec.get("labels", {})), created_at=rec["created_at"],
                updated_at=rec["updated_at"])


def _adaptor(info: Info) -> filters.Adaptor:
    def adapt(path: Any) -> str | None:
        if not path:
            return None
        field = path[0]
        if field == "kind":
            return info.kind.filter_name if info.kind != Kind.UNKNOWN else None
        if field == "name":
            return info.name
        if field == "parent":
            return info.parent
        if field == "labels":
            return filters.map_field(path, info.labels)
        return None
    return adapt


def _clean_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Labels as stored: an empty value removes the label (as containerd's bolt labels)."""
    return {k: v for k, v in (labels or {}).items() if v != ""}


def _link(parent_id: str, child_id: str) -> bytes:
    return f"{parent_id}{SEP}{child_id}".encode()


class MetaStore:
    """Snapshot records of one snapshotter (see the module doc). Open with :meth:`open`."""

    def __init__(self, env: lmdb.Environment, dbs: dict[str, Any], path: Path) -> None:
        self._env = env
        self._dbs = dbs
        self.path = path
        self._writer = GroupWriter(env, dbs, "snapshot-metastore")
        self._closed = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], map_size: int = DEFAULT_MAP_SIZE) -> MetaStore:
        """Open (creating if needed) the LMDB folder ``path`` (``<root>/metadata.lmdb``).

        Raises :class:`SchemaError` if it was written with another schema version.
        """
        path = Path(path)
        env, dbs = open_env(path, DATABASES, map_size=map_size, schema_version=SCHEMA_VERSION,
                            what="snapshot metastore")
        return cls(env, dbs, path)

    # -- plumbing

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"snapshot metastore {self.path} is closed")

    @contextlib.contextmanager
    def _read(self) -> Iterator[Txn]:
        self._check_open()
        with self._env.begin(write=False) as raw:
            yield Txn(raw, self._dbs)

    async def _update(self, fn: Callable[[Txn], T]) -> T:
        # concurrent updates share a commit (GroupWriter): the collector's removals do
        self._check_open()
        return await self._writer.update(fn)

    async def exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the writer thread, between write transactions: no record
        changes while it runs (a consistent view of ids against the backend's folders)."""
        self._check_open()
        return await self._writer.exclusive(fn)

    @staticmethod
    def _parent_ids(txn: Txn, parent: str) -> tuple[str, ...]:
        ids = []
        seen: set[str] = set()
        while parent:
            rec = txn.get("snapshots", parent.encode())
            if rec is None:
                raise NotFound(f"parent snapshot {parent!r} does not exist (broken chain)")
            if rec["id"] in seen:
                raise FailedPrecondition(f"parent chain loops at {parent!r}")
            seen.add(rec["id"])
            ids.append(rec["id"])
            parent = rec.get("parent", "")
        return tuple(ids)

    # -- reads (on the loop)

    def get_snapshot(self, key: str) -> Snapshot:
        """The active or view snapshot ``key`` with its parent ids, nearest first.

        Raises NotFound if absent, FailedPrecondition if it is committed.
        """
        with self._read() as txn:
            rec = txn.get("snapshots", key.encode())
            if rec is None:
                raise NotFound(f"snapshot {key!r} does not exist")
            kind = Kind(rec["kind"])
            if kind not in (Kind.ACTIVE, Kind.VIEW):
                raise FailedPrecondition(f"snapshot {key!r} is {kind.filter_name}, not active or view")
            return Snapshot(rec["id"], kind, self._parent_ids(txn, rec.get("parent", "")))

    def get_info(self, key: str) -> tuple[str, Info, Usage]:
        """``(id, info, usage)`` of snapshot ``key`` (any kind); usage is the one recorded
        at commit (zero for active and view snapshots). Raises NotFound if absent."""
        with self._read() as txn:
            rec = txn.get("snapshots", key.encode())
            if rec is None:
                raise NotFound(f"snapshot {key!r} does not exist")
            return rec["id"], _info(key, rec), Usage(rec.get("size", 0), rec.get("inodes", 0))

    def walk(self, filter_strings: Iterable[str] = ()) -> list[Info]:
        """Every snapshot matching the filters (``name``, ``parent``, ``kind``,
        ``labels.<key>``), in key order. Raises InvalidArgument for a bad filter."""
        flt = filters.parse(filter_strings)
        out = []
        with self._read() as txn:
            for k, rec in txn.scan("snapshots"):
                info = _info(k.decode(), rec)
                if flt.match(_adaptor(info)):
                    out.append(info)
        return out

    def ids(self) -> set[str]:
        """Every id in use (for :meth:`MetaStoreSnapshotter.cleanup`)."""
        with self._read() as txn:
            return {rec["id"] for _, rec in txn.scan("snapshots")}

    # -- writes (on the writer thread)

    async def create(self, kind: Kind, key: str, parent: str = "",
                     labels: Mapping[str, str] | None = None, *,
                     hook: Callable[[Snapshot], None] | None = None) -> Snapshot:
        """Record a new active or view snapshot ``key`` on ``parent`` ("" for none).

        ``hook(snapshot)`` runs inside the transaction (see the module doc).
        Raises InvalidArgument (kind not active/view, bad key, parent not
        committed), NotFound (parent absent), AlreadyExists (key in use).
        """
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgument(f"snapshot kind {kind!r} cannot be created: only active or view")
        raw = _check_name("snapshot key", key)
        labels = _clean_labels(labels)

        def fn(txn: Txn) -> Snapshot:
            parent_ids: tuple[str, ...] = ()
            if parent:
                prec = txn.get("snapshots", parent.encode())
                if prec is None:
                    raise NotFound(f"parent snapshot {parent!r} does not exist")
                if prec["kind"] != Kind.COMMITTED:
                    raise InvalidArgument(f"parent {parent!r} is not a committed snapshot")
                parent_ids = self._parent_ids(txn, parent)
            if txn.get("snapshots", raw) is not None:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            seq = (txn.get("meta", b"sequence") or {"last": 0})["last"] + 1
            txn.put("meta", b"sequence", {"last": seq})
            sid = str(seq)
            now = time.time_ns()
            txn.put("snapshots", raw, {"id": sid, "kind": int(kind), "parent": parent, "labels": labels,
                                       "created_at": now, "updated_at": now})
            if parent_ids:
                txn.put("parents", _link(parent_ids[0], sid), {"key": key})
            snap = Snapshot(sid, kind, parent_ids)
            if hook is not None:
                hook(snap)
            return snap

        return await self._update(fn)

    async def update_info(self, info: Info, fieldpaths: Iterable[str] = ()) -> Info:
        """Update the labels of snapshot ``info.name``: ``labels`` replaces them all,
        ``labels.<k>`` sets one (removes it when absent or "" in ``info.labels``); no
        fieldpaths replaces them all. Other fields are immutable: InvalidArgument.
        Raises NotFound if absent. Returns the stored info."""
        paths = list(fieldpaths)

        def fn(txn: Txn) -> Info:
            raw = info.name.encode()
            rec = txn.get("snapshots", raw)
            if rec is None:
                raise NotFound(f"snapshot {info.name!r} does not exist")
            labels = dict(rec.get("labels", {}))
            if not paths:
                labels = dict(info.labels)
            for path in paths:
                if path.startswith("labels."):
                    k = path[len("labels."):]
                    labels[k] = info.labels.get(k, "")
                elif path == "labels":
                    labels = dict(info.labels)
                else:
                    raise InvalidArgument(f"cannot update {path!r} field on snapshot {info.name!r}")
            rec["labels"] = _clean_labels(labels)
            rec["updated_at"] = max(time.time_ns(), rec["created_at"])
            txn.put("snapshots", raw, rec)
            return _info(info.name, rec)

        return await self._update(fn)

    async def commit_active(self, key: str, name: str, usage: Usage,
                            labels: Mapping[str, str] | None = None, *, parent: str = "") -> str:
        """Turn active snapshot ``key`` into committed snapshot ``name`` (same id,
        returned), recording ``usage``. Its labels: the active's inherited ones
        (:func:`inherited_labels`) with ``labels`` merged over them. ``parent``
        rebases a snapshot created without one (containerd's WithParent on commit).

        Raises AlreadyExists (``name`` in use), NotFound (``key`` absent, or the
        new parent), FailedPrecondition (``key`` not active, parent not committed),
        InvalidArgument (bad name, or a different parent than the active's).
        """
        raw_name = _check_name("snapshot name", name)

        def fn(txn: Txn) -> str:
            if txn.get("snapshots", raw_name) is not None:
                raise AlreadyExists(f"committed snapshot {name!r} already exists")
            rec = txn.get("snapshots", key.encode())
            if rec is None:
                raise NotFound(f"active snapshot {key!r} does not exist")
            if rec["kind"] != Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is {Kind(rec['kind']).filter_name}, "
                                         "not active: only active snapshots can be committed")
            current = rec.get("parent", "")
            if parent and current and parent != current:
                raise InvalidArgument(f"cannot change parent of active snapshot {key!r} on commit")
            new_parent = current or parent
            now = time.time_ns()
            merged = {**inherited_labels(rec.get("labels", {})), **(labels or {})}
            new = {"id": rec["id"], "kind": int(Kind.COMMITTED), "parent": new_parent,
                   "labels": _clean_labels(merged), "created_at": now, "updated_at": now,
                   "size": usage.size, "inodes": usage.inodes}
            txn.delete("snapshots", key.encode())
            txn.put("snapshots", raw_name, new)
            if new_parent:
                prec = txn.get("snapshots", new_parent.encode())
                if prec is None:
                    raise NotFound(f"parent {new_parent!r} of snapshot {key!r} does not exist")
                if prec["kind"] != Kind.COMMITTED:
                    raise FailedPrecondition(f"parent {new_parent!r} is not committed")
                txn.put("parents", _link(prec["id"], rec["id"]), {"key": name})
            return rec["id"]

        return await self._update(fn)

    async def remove(self, key: str, *, hook: Callable[[str, Kind], None] | None = None) -> tuple[str, Kind]:
        """Remove snapshot ``key``'s record; returns its ``(id, kind)``.

        ``hook(id, kind)`` runs inside the transaction. Raises NotFound if absent,
        FailedPrecondition if another snapshot has it as parent.
        """

        def fn(txn: Txn) -> tuple[str, Kind]:
            raw = key.encode()
            rec = txn.get("snapshots", raw)
            if rec is None:
                raise NotFound(f"snapshot {key!r} does not exist")
            sid = rec["id"]
            if txn.any("parents", f"{sid}{SEP}".encode()):
                raise FailedPrecondition(f"cannot remove snapshot {key!r} with child snapshots")
            parent = rec.get("parent", "")
            if parent:
                prec = txn.get("snapshots", parent.encode())
                if prec is not None:
                    txn.delete("parents", _link(prec["id"], sid))
            txn.delete("snapshots", raw)
            kind = Kind(rec["kind"])
            if hook is not None:
                hook(sid, kind)
            return sid, kind

        return await self._update(fn)

    def close(self) -> None:
        """Finish pending writes and close; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        self._env.close()


async def to_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, waited for to its end even if cancelled."""
    return await complete(asyncio.to_thread(fn, *args, **kwargs))


class MetaStoreSnapshotter(Snapshotter):
    """Base for backends storing snapshot ``<id>`` in ``<root>/snapshots/<id>`` with a
    :class:`MetaStore` in ``<root>/metadata.lmdb``.

    Subclasses implement ``prepare``, ``view`` and ``mounts``, and may override
    :meth:`usage_path` (what usage measures), :meth:`decorate` (labels added on
    reads) and :attr:`sync_remove` (remove storage with the record, or leave it
    to :meth:`cleanup`).
    """

    sync_remove = True

    def __init__(self, root: str | os.PathLike[str], ms: MetaStore) -> None:
        self.root = Path(root)
        self.ms = ms
        self.snapshots_dir = self.root / "snapshots"
        #: folder names in snapshots_dir being filled outside a transaction (cleanup spares them)
        self._in_flight: set[str] = set()

    @staticmethod
    def open_store(root: str | os.PathLike[str]) -> MetaStore:
        """Create ``root`` (0700) and ``root/snapshots`` (0700) and open the metastore."""
        root = Path(root)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / "snapshots").mkdir(mode=0o700, exist_ok=True)
        return MetaStore.open(root / "metadata.lmdb")

    def snapshot_dir(self, sid: str) -> Path:
        return self.snapshots_dir / sid

    def usage_path(self, sid: str) -> Path:
        """The tree whose disk use is the snapshot's own usage."""
        return self.snapshot_dir(sid)

    def decorate(self, sid: str, info: Info) -> Info:
        """Info as returned by stat/update/walk (overlay adds its upperdir label)."""
        return info

    async def stat(self, key: str) -> Info:
        """Info of snapshot ``key`` (any kind). Raises NotFound."""
        sid, info, _ = self.ms.get_info(key)
        return self.decorate(sid, info)

    async def update(self, info: Info, fieldpaths: Iterable[str] = ()) -> Info:
        """Update labels (see :meth:`MetaStore.update_info`)."""
        new = await self.ms.update_info(info, fieldpaths)
        sid, _, _ = self.ms.get_info(new.name)
        return self.decorate(sid, new)

    async def walk(self, filters: Iterable[str] = ()) -> list[Info]:
        """Snapshots matching ``filters``; the scan runs in a thread."""
        infos = await asyncio.to_thread(self.ms.walk, list(filters))
        if type(self).decorate is MetaStoreSnapshotter.decorate:
            return infos
        out = []
        for info in infos:
            try:
                sid, _, _ = self.ms.get_info(info.name)
            except NotFound:  # removed meanwhile
                continue
            out.append(self.decorate(sid, info))
        return out

    async def usage(self, key: str) -> Usage:
        """Recorded usage of a committed snapshot; measured (in a thread) for an active one."""
        sid, info, usage = self.ms.get_info(key)
        if info.kind == Kind.ACTIVE:
            usage = await to_thread(disk_usage, self.usage_path(sid))
        return usage

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None, *,
                     parent: str = "") -> None:
        """Commit active ``key`` as ``name``, measuring its usage first (in a thread).

        ``parent``: for a snapshotter with ``layers_independent``, put a parentless
        active snapshot on ``parent`` as it is committed (InvalidArgument otherwise).
        """
        if parent and not self.layers_independent:
            raise InvalidArgument(f"{type(self).__name__} cannot commit onto a new parent")
        sid, info, _ = self.ms.get_info(key)
        usage = Usage()
        if info.kind == Kind.ACTIVE:
            usage = await to_thread(disk_usage, self.usage_path(sid))
        await self.ms.commit_active(key, name, usage, labels, parent=parent)

    async def remove(self, key: str) -> None:
        """Remove ``key``'s record (NotFound, FailedPrecondition with children); its
        storage goes now (``sync_remove``) or at the next :meth:`cleanup`."""
        if not self.sync_remove:
            await self.ms.remove(key)
            return
        renamed: list[Path] = []

        def hook(sid: str, kind: Kind) -> None:
            src, dst = self.snapshot_dir(sid), self.snapshots_dir / f"rm-{sid}"
            try:
                os.rename(src, dst)
            except FileNotFoundError:
                return
            renamed.append(dst)

        await self.ms.remove(key, hook=hook)
        for path in renamed:
            await to_thread(_rmtree, path)

    async def cleanup(self) -> None:
        """Remove every folder in ``snapshots/`` no record refers to (removed
        snapshots, interrupted creations), except folders being filled right now."""

        def orphans() -> list[Path]:
            ids = self.ms.ids()
            return [self.snapshots_dir / name for name in os.listdir(self.snapshots_dir)
                    if name not in ids and name not in self._in_flight]

        for path in await self.ms.exclusive(orphans):
            await to_thread(_rmtree, path)

    async def close(self) -> None:
        """Close the metastore (idempotent)."""
        await asyncio.to_thread(self.ms.close)


def _rmtree(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove snapshot storage", extra={"fields": {"path": str(path), "error": str(e)}})


__all__ = [
    "LABEL_SNAPSHOT_REF",
    "MetaStore",
    "MetaStoreSnapshotter",
    "SchemaError",
    "Snapshot",
    "complete",
    "disk_usage",
    "inherited_labels",
    "to_thread",
]
