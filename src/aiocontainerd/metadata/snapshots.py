"""Namespaced snapshots over each backend snapshotter (containerd's metadata snapshotter).

Every namespace sees its own keys; the backend sees ``<namespace>/<id>/<key>``
(*backend keys*, ``id`` from a per-database sequence) so namespaces never
collide. Records live in the ``snapshots`` database::

    snapshots  <namespace> NUL <snapshotter> NUL <key> -> {"bkey", "kind", "parent",
                                                          "labels", "created_at", "updated_at"}
    meta       b"snapshot-seq"                       -> last id handed out

Sharing: a ``prepare``/``view`` carrying the label ``containerd.io/snapshot.ref``
(the target name, e.g. a chain ID while unpacking) whose target is already a
committed snapshot — in this namespace, or in another one with the same
backend parent — gets a record of that committed snapshot in this namespace
(pointing at the same backend snapshot) and raises AlreadyExists
("target snapshot … already exists"), as containerd does, so an image
unpacked in one namespace is not unpacked again in another.

Labels are kept here; only ``containerd.io/snapshot/`` labels are passed to
the backend. Removing a record leaves the backend snapshot to the garbage
collector, which removes backend snapshots no record refers to (children
first). Objects created by a request with a lease are added to it as
``snapshots/<snapshotter>`` resources.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from .. import filters, identifiers
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..mount import Mount
from ..snapshots import INHERITED_PREFIX, Info, Kind, Snapshotter, Usage
from ..types import now_ns
from .db import SEP, MetadataDB, Txn, key
from .leases import Resource, add_resource
from .namespaces import apply_label_paths

SNAPSHOT_REF = "containerd.io/snapshot.ref"
_SEQ = b"snapshot-seq"


class SharedLock:
    """Many holders of the shared side, or one of the exclusive side (the garbage
    collector), with the exclusive side waiting for (and then barring) shared holders.

    Snapshot operations that span a metadata write, a backend call and another
    metadata write hold it shared, so a collection never sees half of one —
    containerd's metadata snapshotter uses a read-write lock the same way.
    """

    def __init__(self) -> None:
        self._shared = 0
        self._exclusive = False
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            await self._changed.wait_for(lambda: self._shared == 0)
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive = False
                self._changed.notify_all()


def _record_info(name: str, r: dict) -> Info:
    return Info(Kind(r["kind"]), name, r["parent"], r["labels"], r["created_at"], r["updated_at"])


def _field(info: Info, path) -> str | None:
    if not path:
        return None
    head = path[0]
    if len(path) == 1 and head == "name":
        return info.name
    if len(path) == 1 and head == "parent":
        return info.parent or None
    if len(path) == 1 and head == "kind":
        return info.kind.filter_name
    if head == "labels":
        return filters.map_field(path, info.labels)
    return None


class NamespacedSnapshotter:
    """One backend snapshotter as namespaces see it (see the module doc)."""

    def __init__(self, name: str, backend: Snapshotter, db: MetadataDB,
                 on_delete: Callable[[], None] | None = None) -> None:
        self.name = name
        self.backend = backend
        self._db = db
        self._on_delete = on_delete or (lambda: None)
        #: held shared by operations, exclusively by garbage collection
        self.lock = SharedLock()
        self._committing: set[tuple[str, str]] = set()

    def _key(self, namespace: str, k: str) -> bytes:
        return key(namespace, self.name, k)

    def _get(self, namespace: str, k: str) -> dict:
        if not k:
            raise InvalidArgument("snapshot key must not be empty")
        with self._db.read() as txn:
            r = txn.get("snapshots", self._key(namespace, k))
        if r is None:
            raise NotFound(f"snapshot {k!r} does not exist")
        return r

    def stat(self, namespace: str, k: str) -> Info:
        return _record_info(k, self._get(namespace, k))

    async def update(self, namespace: str, info: Info, paths: Iterable[str] = ()) -> Info:
        """Update labels (``labels``, ``labels.<k>``; none: replace all). Raises NotFound."""
        paths = list(paths) or ["labels"]
        for p in paths:
            if p != "labels" and not p.startswith("labels."):
                raise InvalidArgument(f"cannot update {p!r} field on snapshot {info.name!r}")

        def update(txn: Txn) -> Info:
            r = txn.get("snapshots", self._key(namespace, info.name))
            if r is None:
                raise NotFound(f"snapshot {info.name!r} does not exist")
            r["labels"] = apply_label_paths(r["labels"], info.labels, paths)
            identifiers.validate_labels(r["labels"])
            r["updated_at"] = now_ns()
            txn.put("snapshots", self._key(namespace, info.name), r)
            return _record_info(info.name, r)

        return await self._db.update(update)

    async def usage(self, namespace: str, k: str) -> Usage:
        return await self.backend.usage(self._get(namespace, k)["bkey"])

    async def mounts(self, namespace: str, k: str) -> list[Mount]:
        return await self.backend.mounts(self._get(namespace, k)["bkey"])

    def _find_target(self, txn: Txn, namespace: str, target: str, bparent: str) -> dict | None:
        own = txn.get("snapshots", self._key(namespace, target))
        if own is not None:
            return own
        for k, r in txn.scan("snapshots"):
            _, sn, name = k.decode().split(SEP, 2)
            if sn == self.name and name == target and r["kind"] == Kind.COMMITTED \
                    and r.get("bparent", "") == bparent:
                return r
        return None

    async def _create(self, namespace: str, k: str, parent: str, labels: Mapping[str, str] | None,
                      readonly: bool, lease: str | None) -> list[Mount]:
        identifiers.validate(namespace)
        if not k:
            raise InvalidArgument("snapshot key must not be empty")
        labels = dict(labels or {})
        identifiers.validate_labels(labels)
        target = labels.get(SNAPSHOT_REF, "")
        resource = Resource(k, f"snapshots/{self.name}")

        def reserve(txn: Txn) -> tuple[str, str] | None:
            txn.put("namespaces", key(namespace), {"labels": {}}, overwrite=False)
            bparent = ""
            if parent:
                p = txn.get("snapshots", self._key(namespace, parent))
                if p is None:
                    raise NotFound(f"parent snapshot {parent!r} does not exist")
                if p["kind"] != Kind.COMMITTED:
                    raise InvalidArgument(f"parent snapshot {parent!r} is not committed")
                bparent = p["bkey"]
            if target:
                found = self._find_target(txn, namespace, target, bparent)
                if found is not None:
                    if txn.get("snapshots", self._key(namespace, target)) is None:
                        now = now_ns()
                        txn.put("snapshots", self._key(namespace, target), {
                            "bkey": found["bkey"], "bparent": bparent, "kind": int(Kind.COMMITTED),
                            "parent": parent, "labels": {
                                **{k2: v for k2, v in found["labels"].items()
                                   if k2.startswith(INHERITED_PREFIX)}, **labels},
                            "created_at": now, "updated_at": now})
                    add_resource(txn, namespace, lease, Resource(target, f"snapshots/{self.name}"))
                    return None
            if txn.get("snapshots", self._key(namespace, k)) is not None:
                raise AlreadyExists(f"snapshot {k!r} already exists")
            seq = int((txn.get("meta", _SEQ) or {"n": 0})["n"]) + 1
            txn.put("meta", _SEQ, {"n": seq})
            bkey = f"{namespace}/{seq}/{k}"
            now = now_ns()
            txn.put("snapshots", self._key(namespace, k), {
                "bkey": bkey, "bparent": bparent,
                "kind": int(Kind.VIEW if readonly else Kind.ACTIVE), "parent": parent,
                "labels": labels, "created_at": now, "updated_at": now})
            add_resource(txn, namespace, lease, resource)
            return bkey, bparent

        async with self.lock.shared():
            return await self._create_locked(namespace, k, parent, labels, readonly, lease,
                                             reserve, target)

    async def _create_locked(self, namespace: str, k: str, parent: str, labels: dict[str, str],
                             readonly: bool, lease: str | None, reserve: Callable[[Txn], Any],
                             target: str) -> list[Mount]:
        reserved = await self._db.update(reserve)
        if reserved is None:
            raise AlreadyExists(f"target snapshot {target!r} already exists")
        bkey, bparent = reserved
        inherited = {k2: v for k2, v in labels.items() if k2.startswith(INHERITED_PREFIX)}
        try:
            if readonly:
                return await self.backend.view(bkey, bparent, inherited)
            return await self.backend.prepare(bkey, bparent, inherited)
        except BaseException:
            await self._db.update(lambda txn: txn.delete("snapshots", self._key(namespace, k)))
            raise

    async def prepare(self, namespace: str, k: str, parent: str = "",
                      labels: Mapping[str, str] | None = None, lease: str | None = None) -> list[Mount]:
        """An active snapshot ``k`` on ``parent``. Raises AlreadyExists (also for a target
        snapshot that exists, see the module doc), NotFound, InvalidArgument."""
        return await self._create(namespace, k, parent, labels, False, lease)

    async def view(self, namespace: str, k: str, parent: str = "",
                   labels: Mapping[str, str] | None = None, lease: str | None = None) -> list[Mount]:
        return await self._create(namespace, k, parent, labels, True, lease)

    async def commit(self, namespace: str, name: str, k: str,
                     labels: Mapping[str, str] | None = None, lease: str | None = None,
                     parent: str = "") -> None:
        """Commit active ``k`` as ``name``. Raises NotFound, FailedPrecondition, AlreadyExists.

        ``parent``: put a parentless active snapshot on this committed one as it is
        committed (backends with ``layers_independent`` only; InvalidArgument otherwise).
        """
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        labels = dict(labels or {})
        identifiers.validate_labels(labels)

        def check(txn: Txn) -> tuple[dict, str]:
            r = txn.get("snapshots", self._key(namespace, k))
            if r is None:
                raise NotFound(f"snapshot {k!r} does not exist")
            if r["kind"] != Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {k!r} is not active")
            if txn.get("snapshots", self._key(namespace, name)) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            if parent:
                if r["parent"]:
                    raise InvalidArgument(f"snapshot {k!r} already has parent {r['parent']!r}")
                p = txn.get("snapshots", self._key(namespace, parent))
                if p is None:
                    raise NotFound(f"parent snapshot {parent!r} does not exist")
                if p["kind"] != Kind.COMMITTED:
                    raise InvalidArgument(f"parent snapshot {parent!r} is not committed")
                r = {**r, "parent": parent, "bparent": p["bkey"]}
            seq = int((txn.get("meta", _SEQ) or {"n": 0})["n"]) + 1
            txn.put("meta", _SEQ, {"n": seq})
            return r, f"{namespace}/{seq}/{name}"

        if parent and not self.backend.layers_independent:
            raise InvalidArgument(f"snapshotter {self.name} cannot commit onto a new parent")
        if (namespace, name) in self._committing:
            raise AlreadyExists(f"snapshot {name!r} already exists")
        self._committing.add((namespace, name))
        try:
            async with self.lock.shared():
                await self._commit_locked(namespace, name, k, labels, lease, parent, check)
        finally:
            self._committing.discard((namespace, name))

    async def _commit_locked(self, namespace: str, name: str, k: str, labels: dict[str, str],
                             lease: str | None, parent: str, check: Callable[[Txn], Any]) -> None:
        record, bname = await self._db.update(check)
        merged = {**record["labels"], **labels}
        inherited = {k2: v for k2, v in merged.items() if k2.startswith(INHERITED_PREFIX)}
        if parent:
            await self.backend.commit(bname, record["bkey"], inherited,  # type: ignore[call-arg]
                                      parent=record["bparent"])
        else:
            await self.backend.commit(bname, record["bkey"], inherited)

        def finish(txn: Txn) -> None:
            txn.delete("snapshots", self._key(namespace, k))
            now = now_ns()
            txn.put("snapshots", self._key(namespace, name), {
                "bkey": bname, "bparent": record.get("bparent", ""), "kind": int(Kind.COMMITTED),
                "parent": record["parent"], "labels": merged, "created_at": now, "updated_at": now})
            add_resource(txn, namespace, lease, Resource(name, f"snapshots/{self.name}"))

        await self._db.update(finish)

    async def remove(self, namespace: str, k: str) -> None:
        """Drop ``k`` from the namespace (the backend snapshot goes at GC).

        Raises NotFound, FailedPrecondition (it has children in this namespace).
        """

        def remove(txn: Txn) -> None:
            if txn.get("snapshots", self._key(namespace, k)) is None:
                raise NotFound(f"snapshot {k!r} does not exist")
            prefix = (namespace + SEP + self.name + SEP).encode()
            for _, r in txn.scan("snapshots", prefix):
                if r["parent"] == k:
                    raise FailedPrecondition(f"cannot remove snapshot {k!r} with child")
            txn.delete("snapshots", self._key(namespace, k))

        await self._db.update(remove)
        self._on_delete()

    def walk(self, namespace: str, filter_strings: Iterable[str] = ()) -> list[Info]:
        match = filters.parse(filter_strings)
        prefix = (namespace + SEP + self.name + SEP).encode()
        with self._db.read() as txn:
            items = [_record_info(k[len(prefix):].decode(), r) for k, r in txn.scan("snapshots", prefix)]
        return [i for i in items if match.match(lambda p, i=i: _field(i, p))]

    def backend_keys(self) -> set[str]:
        """Backend keys every namespace's records refer to (the GC's live set)."""
        with self._db.read() as txn:
            return {r["bkey"] for k, r in txn.scan("snapshots")
                    if k.decode().split(SEP, 2)[1] == self.name}

    async def collect(self) -> int:
        """Remove backend snapshots no record refers to, children first; returns how many.

        The caller holds :attr:`lock` exclusively (the garbage collector does). Their
        storage goes with the backend's ``cleanup``, which the caller runs once it has
        released the lock (containerd's metadata snapshotter calls ``Cleanup`` after
        unlocking too): removing folders must not hold up the next ``prepare``.
        """
        live = self.backend_keys()
        infos = await self.backend.walk()
        dead = {i.name for i in infos if i.name not in live}
        # a dead snapshot's ancestors stay while a live one descends from them
        parents = {i.name: i.parent for i in infos}
        for name in list(live):
            p = parents.get(name, "")
            while p:
                dead.discard(p)
                p = parents.get(p, "")
        children: dict[str, int] = {}
        for i in infos:
            if i.parent:
                children[i.parent] = children.get(i.parent, 0) + 1
        removed = 0
        # wave by wave, leaves first; a wave's removals run at once (a MetaStore backend
        # commits them together: one sync instead of one each)
        wave = [n for n in dead if not children.get(n)]
        while wave:
            outcomes = await asyncio.gather(*(self.backend.remove(n) for n in wave),
                                            return_exceptions=True)
            failed = next((o for o in outcomes if isinstance(o, BaseException)
                           and not isinstance(o, (NotFound, FailedPrecondition))), None)
            if failed is not None:
                raise failed
            after = []
            for name, outcome in zip(wave, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    continue
                removed += 1
                p = parents.get(name, "")
                if p in dead:
                    children[p] -= 1
                    if not children[p]:
                        after.append(p)
            wave = after
        return removed


__all__ = ["SNAPSHOT_REF", "NamespacedSnapshotter"]
