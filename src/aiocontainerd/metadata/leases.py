"""Leases: hold resources (content, ingests, snapshots, images) against garbage collection.

containerd's ``leases.Manager`` semantics:
- A lease has an identifier ID, labels and a creation time. The label
  ``containerd.io/gc.expire`` (RFC 3339 time) ends its protection at that
  time; ``containerd.io/gc.flat`` makes it hold only the named resources, not
  what they reference.
- Resources are ``(type, id)``: ``content`` (a digest), ``ingests`` (a write
  ref), ``snapshots/<snapshotter>`` (a snapshot key), ``images`` (a name).
- Objects created by a request carrying the ``containerd-lease`` header are
  added to that lease by the stores themselves (see :func:`add_resource`).
- Deleting a lease releases its resources; they go at the next GC.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .. import filters, identifiers
from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..types import now_ns
from .db import SEP, MetadataDB, Txn, key

RESOURCE_TYPES = ("content", "ingests", "images")
SNAPSHOT_PREFIX = "snapshots/"


@dataclasses.dataclass
class Lease:
    id: str
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    created_at: int = 0

    def field(self, path) -> str | None:
        if not path:
            return None
        if path[0] == "id" and len(path) == 1:
            return self.id
        if path[0] == "labels":
            return filters.map_field(path, self.labels)
        return None


@dataclasses.dataclass(frozen=True)
class Resource:
    """A leased object: ``type`` is content, ingests, images or snapshots/<name>."""

    id: str
    type: str


def validate_resource(r: Resource) -> None:
    if r.type not in RESOURCE_TYPES and not (r.type.startswith(SNAPSHOT_PREFIX)
                                             and len(r.type) > len(SNAPSHOT_PREFIX)):
        raise InvalidArgument(f"unsupported lease resource type {r.type!r}")
    if not r.id:
        raise InvalidArgument("lease resource id must be set")
    if r.type == "content":
        from ..content import parse_digest

        parse_digest(r.id)


def add_resource(txn: Txn, namespace: str, lease: str | None, resource: Resource) -> None:
    """Inside a store's write transaction: add ``resource`` to ``lease`` if one is given.

    Raises NotFound when the lease does not exist (the whole transaction aborts).
    """
    if not lease:
        return
    if txn.get("leases", key(namespace, lease)) is None:
        raise NotFound(f"lease {lease!r}: not found")
    txn.put("lease_resources", key(namespace, lease, resource.type, resource.id), {})


class LeaseStore:
    """Leases per namespace; each call is one transaction."""

    def __init__(self, db: MetadataDB) -> None:
        self._db = db

    async def create(self, namespace: str, id_: str, labels: Mapping[str, str] | None = None) -> Lease:
        """Raises InvalidArgument, AlreadyExists."""
        identifiers.validate(namespace)
        if not id_:
            raise InvalidArgument("lease id must be provided")  # any text, as containerd's
        labels = dict(labels or {})
        identifiers.validate_labels(labels)
        lease = Lease(id_, labels, now_ns())

        def create(txn: Txn) -> None:
            txn.put("namespaces", key(namespace), {"labels": {}}, overwrite=False)
            if not txn.put("leases", key(namespace, id_),
                           {"labels": labels, "created_at": lease.created_at}, overwrite=False):
                raise AlreadyExists(f"lease {id_!r}: already exists")

        await self._db.update(create)
        return lease

    def get(self, namespace: str, id_: str) -> Lease:
        with self._db.read() as txn:
            r = txn.get("leases", key(namespace, id_))
        if r is None:
            raise NotFound(f"lease {id_!r}: not found")
        return Lease(id_, r["labels"], r["created_at"])

    def list(self, namespace: str, filter_strings: Iterable[str] = ()) -> list[Lease]:
        match = filters.parse(filter_strings)
        prefix = (namespace + SEP).encode()
        with self._db.read() as txn:
            items = [Lease(k[len(prefix):].decode(), v["labels"], v["created_at"])
                     for k, v in txn.scan("leases", prefix)]
        return [lease for lease in items if match.match(lease.field)]

    async def delete(self, namespace: str, id_: str) -> None:
        """Delete the lease and release its resources. Raises NotFound."""

        def delete(txn: Txn) -> None:
            if not txn.delete("leases", key(namespace, id_)):
                raise NotFound(f"lease {id_!r}: not found")
            prefix = (namespace + SEP + id_ + SEP).encode()
            for k, _ in list(txn.scan("lease_resources", prefix)):
                txn.delete("lease_resources", k)

        await self._db.update(delete)

    async def add_resource(self, namespace: str, id_: str, resource: Resource) -> None:
        """Raises NotFound (lease), InvalidArgument (resource)."""
        validate_resource(resource)
        await self._db.update(lambda txn: add_resource(txn, namespace, id_, resource))

    async def delete_resource(self, namespace: str, id_: str, resource: Resource) -> None:
        """Raises NotFound (lease)."""

        def delete(txn: Txn) -> None:
            if txn.get("leases", key(namespace, id_)) is None:
                raise NotFound(f"lease {id_!r}: not found")
            txn.delete("lease_resources", key(namespace, id_, resource.type, resource.id))

        await self._db.update(delete)

    def resources(self, namespace: str, id_: str) -> list[Resource]:
        """Raises NotFound (lease)."""
        prefix = (namespace + SEP + id_ + SEP).encode()
        with self._db.read() as txn:
            if txn.get("leases", key(namespace, id_)) is None:
                raise NotFound(f"lease {id_!r}: not found")
            out = []
            for k, _ in txn.scan("lease_resources", prefix):
                type_, _, rid = k[len(prefix):].decode().partition(SEP)
                out.append(Resource(rid, type_))
        return out
