"""Namespaced content: which namespace holds which blob (containerd's metadata content store).

The blobs live once in the :class:`~aiocontainerd.content.LocalStore`; this
layer records, per namespace, a reference with labels and times. A blob is
visible in a namespace only once that namespace has committed (or been given)
it — containerd's *shared* policy: committing a digest another namespace
already stored needs no bytes, just the commit (its size and digest must
match). Writes in progress are *ingests*, named by ref per namespace (the
local store sees ``<namespace>/<ref>``) and recorded so leases can hold them.

Labels follow containerd: ``containerd.io/gc.ref.content[.<x>]`` and
``containerd.io/gc.ref.snapshot.<snapshotter>`` reference other objects for
GC, ``containerd.io/gc.root`` makes a blob a root, and
``containerd.io/distribution.source.<host>`` records where it came from.
Deleting a reference leaves the blob to the garbage collector.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterable, Mapping

from .. import filters, identifiers
from ..content import LocalStore, Status, Writer, parse_digest
from ..content.local import INLINE_READ_MAX
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..types import now_ns
from .db import SEP, MetadataDB, Txn, key
from .leases import Resource, add_resource
from .namespaces import apply_label_paths


@dataclasses.dataclass
class Info:
    """A blob as a namespace sees it; times in ns since the epoch."""

    digest: str
    size: int
    created_at: int = 0
    updated_at: int = 0
    labels: dict[str, str] = dataclasses.field(default_factory=dict)

    def field(self, path) -> str | None:
        """Filter adaptor: ``digest``, ``size``, ``labels.<k>``."""
        if not path:
            return None
        if path[0] == "digest" and len(path) == 1:
            return self.digest
        if path[0] == "size" and len(path) == 1:
            return str(self.size)
        if path[0] == "labels":
            return filters.map_field(path, self.labels)
        return None


def _record(info: Info) -> dict:
    return {"size": info.size, "labels": info.labels, "created_at": info.created_at,
            "updated_at": info.updated_at}


def _info(digest: str, r: dict) -> Info:
    return Info(digest, r["size"], r["created_at"], r["updated_at"], r["labels"])


class ContentWriter:
    """A namespaced write: the local writer plus the commit into the namespace."""

    def __init__(self, store: ContentStore, namespace: str, ref: str, lease: str | None,
                 local: Writer) -> None:
        self._store = store
        self.namespace = namespace
        self.ref = ref
        self.lease = lease
        self._local = local

    @property
    def offset(self) -> int:
        return self._local.offset

    @property
    def total(self) -> int:
        return self._local.total

    @property
    def expected(self) -> str:
        return self._local.expected

    def digest(self) -> str:
        return self._local.digest()

    def status(self) -> Status:
        return dataclasses.replace(self._local.status(), ref=self.ref)

    async def write(self, data: bytes | memoryview) -> None:
        await self._local.write(data)

    async def truncate(self, size: int) -> None:
        await self._local.truncate(size)

    async def commit(self, size: int = 0, expected: str = "",
                     labels: Mapping[str, str] | None = None) -> Info:
        """Commit into the namespace; returns the blob's Info.

        Raises FailedPrecondition (size/digest mismatch), AlreadyExists (the
        namespace already holds it), InvalidArgument (labels), NotFound (lease).
        """
        labels = dict(labels or {})
        identifiers.validate_labels(labels)
        async with self._store.commit_lock:
            return await self._commit(size, expected, labels)

    async def _commit(self, size: int, expected: str, labels: dict[str, str]) -> Info:
        expected = expected or self._local.expected
        size = size or self._local.total
        local = self._store.local
        if self._local.offset == 0 and expected and local.exists(expected):
            # shared: the blob is stored already; no bytes needed
            blob = await local.info(expected)
            if size and size != blob.size:
                raise FailedPrecondition(f"unexpected commit size {size}, {expected} has {blob.size}")
            self._local.close()
            await local.abort(self._store.backend_ref(self.namespace, self.ref))
            digest, size = expected, blob.size
        else:
            try:
                digest = await self._local.commit(size, expected)
            except AlreadyExists:
                digest = self._local.digest()  # verified: the same bytes are stored already
            size = (await local.info(digest)).size
        return await self._store._record_commit(self.namespace, self.ref, self.lease, digest, size, labels)

    def close(self) -> None:
        """Release the ref; the ingest stays for a later writer to resume."""
        self._local.close()


class ContentStore:
    """Namespaced content over a :class:`LocalStore` (see the module doc)."""

    def __init__(self, db: MetadataDB, local: LocalStore,
                 on_delete: Callable[[], None] | None = None) -> None:
        self._db = db
        self.local = local
        self._on_delete = on_delete or (lambda: None)
        #: Held from a blob's commit on disk to its record, and by the garbage
        #: collector for a whole collection, so GC never sees a blob half-committed.
        self.commit_lock = asyncio.Lock()

    @staticmethod
    def backend_ref(namespace: str, ref: str) -> str:
        return f"{namespace}/{ref}"

    def ingest_recorded(self, backend_ref: str) -> bool:
        """Whether the local ingest ``<namespace>/<ref>`` has a namespace's ingest record."""
        namespace, _, ref = backend_ref.partition("/")
        with self._db.read() as txn:
            return txn.get("ingests", key(namespace, ref)) is not None

    def info(self, namespace: str, digest: str) -> Info:
        """Raises NotFound, InvalidArgument."""
        parse_digest(digest)
        with self._db.read() as txn:
            r = txn.get("content", key(namespace, digest))
        if r is None:
            raise NotFound(f"content {digest}: not found")
        return _info(digest, r)

    def has(self, namespace: str, digest: str) -> bool:
        with self._db.read() as txn:
            return txn.get("content", key(namespace, digest)) is not None

    async def update(self, namespace: str, info: Info, paths: Iterable[str] = ()) -> Info:
        """Update labels (``labels``, ``labels.<k>``; none: replace all). Raises NotFound."""
        paths = list(paths) or ["labels"]
        parse_digest(info.digest)
        for p in paths:
            if p != "labels" and not p.startswith("labels."):
                raise InvalidArgument(f"cannot update {p!r} field on content {info.digest}")

        def update(txn: Txn) -> Info:
            r = txn.get("content", key(namespace, info.digest))
            if r is None:
                raise NotFound(f"content {info.digest}: not found")
            current = _info(info.digest, r)
            current.labels = apply_label_paths(current.labels, info.labels, paths)
            identifiers.validate_labels(current.labels)
            current.updated_at = now_ns()
            txn.put("content", key(namespace, info.digest), _record(current))
            return current

        return await self._db.update(update)

    def list(self, namespace: str, filter_strings: Iterable[str] = ()) -> list[Info]:
        """Blobs of the namespace matching the filters (``digest``, ``size``, ``labels.<k>``)."""
        match = filters.parse(filter_strings)
        prefix = (namespace + SEP).encode()
        with self._db.read() as txn:
            items = [_info(k[len(prefix):].decode(), v) for k, v in txn.scan("content", prefix)]
        return [i for i in items if match.match(i.field)]

    async def delete(self, namespace: str, digest: str) -> None:
        """Drop the namespace's reference (the blob goes at GC). Raises NotFound."""
        parse_digest(digest)

        def delete(txn: Txn) -> None:
            if not txn.delete("content", key(namespace, digest)):
                raise NotFound(f"content {digest}: not found")

        await self._db.update(delete)
        self._on_delete()

    async def read(self, namespace: str, digest: str, offset: int = 0,
                   size: int = 0) -> AsyncIterator[bytes]:
        """Yield the blob's bytes (see LocalStore.read). Raises NotFound in this namespace."""
        info = self.info(namespace, digest)
        if info.size <= INLINE_READ_MAX:   # small (by the record): on the loop, see read_small
            data = self.local.read_small(digest, offset, size)
            if data is not None:
                if data:
                    yield data
                return
        async for chunk in self.local.read(digest, offset, size):
            yield chunk

    async def read_all(self, namespace: str, digest: str) -> bytes:
        """The whole blob (for manifests, indexes and configs; large blobs: :meth:`read`)."""
        return b"".join([chunk async for chunk in self.read(namespace, digest)])

    async def writer(self, namespace: str, ref: str, total: int = 0, expected: str = "",
                     lease: str | None = None) -> ContentWriter:
        """Open (or resume) the write ``ref`` in ``namespace``.

        Raises InvalidArgument, AlreadyExists (``expected`` already in the
        namespace), Unavailable (ref locked), NotFound (lease).
        """
        identifiers.validate(namespace)
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            parse_digest(expected)
            if self.has(namespace, expected):
                raise AlreadyExists(f"content {expected}: already exists")

        def record(txn: Txn) -> None:
            txn.put("namespaces", key(namespace), {"labels": {}}, overwrite=False)
            add_resource(txn, namespace, lease, Resource(ref, "ingests"))
            txn.put("ingests", key(namespace, ref), {"expected": expected})

        await self._db.update(record)
        local = await self.local.writer(self.backend_ref(namespace, ref), total, expected)
        return ContentWriter(self, namespace, ref, lease, local)

    async def _record_commit(self, namespace: str, ref: str, lease: str | None, digest: str,
                             size: int, labels: dict[str, str]) -> Info:
        now = now_ns()
        info = Info(digest, size, now, now, labels)

        def record(txn: Txn) -> None:
            txn.delete("ingests", key(namespace, ref))
            if not txn.put("content", key(namespace, digest), _record(info), overwrite=False):
                raise AlreadyExists(f"content {digest}: already exists")
            add_resource(txn, namespace, lease, Resource(digest, "content"))

        await self._db.update(record)
        return info

    def _own(self, namespace: str, status: Status) -> Status | None:
        prefix = namespace + "/"
        if not status.ref.startswith(prefix):
            return None
        return dataclasses.replace(status, ref=status.ref[len(prefix):])

    async def status(self, namespace: str, ref: str) -> Status:
        """Raises NotFound."""
        st = await self.local.status(self.backend_ref(namespace, ref))
        return dataclasses.replace(st, ref=ref)

    async def list_statuses(self, namespace: str, filter_strings: Iterable[str] = ()) -> list[Status]:
        """Writes in progress in the namespace; filters on ``ref``."""
        match = filters.parse(filter_strings)
        out = []
        for st in await self.local.list_statuses():
            own = self._own(namespace, st)
            if own is not None and match.match(lambda p, s=own: s.ref if list(p) == ["ref"] else None):
                out.append(own)
        return out

    async def abort(self, namespace: str, ref: str) -> None:
        """Remove the write ``ref``. Raises NotFound, Unavailable (in use)."""
        await self.local.abort(self.backend_ref(namespace, ref))
        await self._db.update(lambda txn: txn.delete("ingests", key(namespace, ref)))
