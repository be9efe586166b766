"""Garbage collection of the metadata store: mark from the roots, sweep the rest.

Roots, per namespace (containerd's rules):
- leases whose ``containerd.io/gc.expire`` (RFC 3339) has not passed: every
  resource they hold (``containerd.io/gc.flat``: held, but not followed);
- images, unless their ``containerd.io/gc.expire`` has passed;
- containers;
- content labelled ``containerd.io/gc.root``.

References followed from a marked object:
- an image's target digest;
- a container's snapshot (``snapshotter``/``snapshot_key``);
- labels ``containerd.io/gc.ref.content[.<x>]`` (a digest),
  ``containerd.io/gc.ref.snapshot.<snapshotter>`` (a snapshot key) and
  ``containerd.io/gc.ref.image`` (an image name) on images, containers and content.

Snapshots referenced are kept with their parents; a snapshot labelled
``containerd.io/gc.root`` is a root.

Sweep: unmarked content references, snapshot records, unmarked ingests
(unless a live writer holds them), and expired leases are deleted in one write
transaction; then blobs no namespace references any more are deleted from
disk, and each snapshotter's backend snapshots no record refers to are removed
(children first). The collection holds the content store's commit lock, so a
blob committed meanwhile is never collected, and a blob held by a lease or being
written never is either; and each snapshotter's exclusive lock, so no snapshot is
half created or committed. Those locks released, each snapshotter that removed
snapshots frees their storage (its ``cleanup``): a prepare need not wait for
folders being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Iterable, Mapping

from ..types import Descriptor
from .content import ContentStore
from .db import SEP, MetadataDB, Txn
from .snapshots import NamespacedSnapshotter

log = logging.getLogger(__name__)

GC_ROOT = "containerd.io/gc.root"
GC_EXPIRE = "containerd.io/gc.expire"
GC_FLAT = "containerd.io/gc.flat"
REF_CONTENT = "containerd.io/gc.ref.content"
REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
REF_IMAGE = "containerd.io/gc.ref.image"

Node = tuple[str, str, str]  # (kind, namespace, id): kind in content, ingest, image, snapshot


@dataclasses.dataclass
class GCStats:
    """What one collection removed, and how long it took (seconds)."""

    content: int = 0
    ingests: int = 0
    leases: int = 0
    images: int = 0
    blobs: int = 0
    bytes: int = 0
    snapshots: int = 0
    backend_snapshots: int = 0
    seconds: float = 0.0


def expired(labels: dict[str, str], now: datetime.datetime) -> bool:
    """Whether ``containerd.io/gc.expire`` is set and has passed (invalid values are ignored)."""
    value = labels.get(GC_EXPIRE)
    if not value:
        return False
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        log.info("ignoring invalid gc.expire value", extra={"fields": {"value": value}})
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when < now


def label_refs(ns: str, labels: dict[str, str]) -> Iterable[Node]:
    """The objects ``containerd.io/gc.ref.*`` labels point at."""
    for k, v in labels.items():
        if k == REF_CONTENT or k.startswith(REF_CONTENT + ".") or k.startswith(REF_CONTENT + "/"):
            yield ("content", ns, v)
        elif k.startswith(REF_SNAPSHOT):
            yield ("snapshot", ns, f"{k[len(REF_SNAPSHOT):]}/{v}")
        elif k == REF_IMAGE:
            yield ("image", ns, v)


def _split(k: bytes) -> tuple[str, str]:
    ns, _, rest = k.decode().partition(SEP)
    return ns, rest


def mark(txn: Txn, now: datetime.datetime) -> tuple[set[Node], list[tuple[str, str]]]:
    """The set of live nodes, and the expired leases (namespace, id)."""
    live: set[Node] = set()
    pending: list[Node] = []
    flat: set[Node] = set()
    expired_leases = []

    def root(node: Node, follow: bool = True) -> None:
        if node not in live:
            live.add(node)
            if follow:
                pending.append(node)
            else:
                flat.add(node)

    for k, lease in txn.scan("leases"):
        ns, lid = _split(k)
        if expired(lease["labels"], now):
            expired_leases.append((ns, lid))
            continue
        follow = GC_FLAT not in lease["labels"]
        prefix = k + SEP.encode()
        for rk, _ in txn.scan("lease_resources", prefix):
            rtype, _, rid = rk[len(prefix):].decode().partition(SEP)
            kind = {"content": "content", "ingests": "ingest", "images": "image"}.get(rtype)
            if kind is not None:
                root((kind, ns, rid), follow)
            elif rtype.startswith("snapshots/"):
                root(("snapshot", ns, f"{rtype[len('snapshots/'):]}/{rid}"), follow)
    for k, image in txn.scan("images"):
        if not expired(image["labels"], now):
            ns, name = _split(k)
            root(("image", ns, name))
    for k, c in txn.scan("containers"):
        ns, _ = _split(k)
        if c.get("snapshot_key") and c.get("snapshotter"):
            root(("snapshot", ns, f"{c['snapshotter']}/{c['snapshot_key']}"))
        for node in label_refs(ns, c.get("labels", {})):
            root(node)
    for k, blob in txn.scan("content"):
        if GC_ROOT in blob["labels"]:
            ns, digest = _split(k)
            root(("content", ns, digest))
    for k, snap in txn.scan("snapshots"):
        if GC_ROOT in snap["labels"]:
            ns, rest = _split(k)
            root(("snapshot", ns, rest.replace(SEP, "/", 1)))

    while pending:
        kind, ns, id_ = pending.pop()
        labels: dict[str, str] = {}
        if kind == "image":
            image = txn.get("images", (ns + SEP + id_).encode())
            if image is None:
                continue
            root(("content", ns, Descriptor.from_json(image["target"]).digest))
            labels = image["labels"]
        elif kind == "content":
            blob = txn.get("content", (ns + SEP + id_).encode())
            labels = blob["labels"] if blob else {}
        elif kind == "snapshot":
            snapshotter, _, name = id_.partition("/")
            snap = txn.get("snapshots", (ns + SEP + snapshotter + SEP + name).encode())
            if snap is None:
                continue
            if snap["parent"]:
                root(("snapshot", ns, f"{snapshotter}/{snap['parent']}"))
            labels = snap["labels"]
        for node in label_refs(ns, labels):
            root(node)
    return live, expired_leases


class GarbageCollector:
    """Collects one metadata store and its content store (see the module doc)."""

    def __init__(self, db: MetadataDB, content: ContentStore,
                 snapshotters: Mapping[str, NamespacedSnapshotter] | None = None) -> None:
        self._db = db
        self._content = content
        self._snapshotters = snapshotters or {}
        self._lock = asyncio.Lock()

    def _sweep(self, txn: Txn) -> tuple[GCStats, set[str]]:
        """Mark and sweep the metadata in one write transaction (on the writer thread)."""
        stats = GCStats()
        now = datetime.datetime.now(datetime.UTC)
        live, expired_leases = mark(txn, now)
        for ns, lid in expired_leases:
            txn.delete("leases", (ns + SEP + lid).encode())
            for rk, _ in list(txn.scan("lease_resources", (ns + SEP + lid + SEP).encode())):
                txn.delete("lease_resources", rk)
            stats.leases += 1
        for k, image in list(txn.scan("images")):
            ns, name = _split(k)
            if ("image", ns, name) not in live and expired(image["labels"], now):
                txn.delete("images", k)
                stats.images += 1
        referenced: set[str] = set()
        for k, _ in list(txn.scan("content")):
            ns, digest = _split(k)
            if ("content", ns, digest) in live:
                referenced.add(digest)
            else:
                txn.delete("content", k)
                stats.content += 1
        for k, _ in list(txn.scan("snapshots")):
            ns, rest = _split(k)
            if ("snapshot", ns, rest.replace(SEP, "/", 1)) not in live:
                txn.delete("snapshots", k)
                stats.snapshots += 1
        for k, _ in list(txn.scan("ingests")):
            ns, ref = _split(k)
            if ("ingest", ns, ref) not in live \
                    and not self._content.local.locked(self._content.backend_ref(ns, ref)):
                txn.delete("ingests", k)
        return stats, referenced

    async def collect(self) -> GCStats:
        """Run one full collection; concurrent calls wait for the running one, then run again.

        ``seconds`` of the result is the time the collection held the store's locks; the
        storage of removed snapshots is freed after they are released (each backend's
        ``cleanup``, as containerd's ``GarbageCollect`` cleans snapshotters outside its lock).
        """
        dirty: list[NamespacedSnapshotter] = []
        async with self._lock:
            stats = await self._collect_locked(dirty)
            for sn in dirty:
                try:
                    await sn.backend.cleanup()
                except Exception:
                    log.exception("snapshot cleanup failed", extra={"fields": {"snapshotter": sn.name}})
        log.info("garbage collected", extra={"fields": dataclasses.asdict(stats)})
        return stats

    async def _collect_locked(self, dirty: list[NamespacedSnapshotter]) -> GCStats:
        """Mark, sweep and remove under the content commit lock and every snapshotter's
        exclusive lock; the snapshotters that removed something are added to ``dirty``."""
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._content.commit_lock)
            for sn in self._snapshotters.values():  # no snapshot half created or committed
                await stack.enter_async_context(sn.lock.exclusive())
            started = time.perf_counter()
            stats, referenced = await self._db.update(lambda txn: self._sweep(txn))
            local = self._content.local
            for st in await local.list_statuses():
                # ingests whose record was swept, or that never had one (a killed daemon's)
                if not self._content.ingest_recorded(st.ref) and not local.locked(st.ref):
                    try:
                        await local.abort(st.ref)
                        stats.ingests += 1
                    except Exception:  # already gone, or taken by a writer just now
                        log.debug("ingest not removed", extra={"fields": {"ref": st.ref}})
            for blob in await local.walk():
                if blob.digest not in referenced:
                    try:
                        await local.delete(blob.digest)
                    except Exception:
                        continue
                    stats.blobs += 1
                    stats.bytes += blob.size
            for sn in self._snapshotters.values():
                try:
                    removed = await sn.collect()
                except Exception:
                    log.exception("snapshot collection failed", extra={"fields": {"snapshotter": sn.name}})
                    continue
                stats.backend_snapshots += removed
                if removed:
                    dirty.append(sn)
            stats.seconds = time.perf_counter() - started
        return stats
