"""Namespaces: the top of containerd's object tree (containerd's ``namespaces.Store``).

Every object (container, image, blob reference, snapshot, lease, sandbox)
belongs to one namespace; a namespace can be deleted only once it is empty.
Names are identifiers (see :mod:`aiocontainerd.identifiers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .. import identifiers
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from .db import NAMESPACED, SEP, MetadataDB, Txn, key


@dataclasses.dataclass
class Namespace:
    """A namespace and its labels."""

    name: str
    labels: dict[str, str] = dataclasses.field(default_factory=dict)


def apply_label_paths(current: Mapping[str, str], new: Mapping[str, str],
                      paths: Iterable[str]) -> dict[str, str]:
    """Labels after a field-mask update, containerd's rule for every object with labels.

    ``labels`` replaces the whole map; ``labels.<key>`` sets ``<key>`` to its value
    in ``new``, or removes it when ``new`` has no value (or an empty one) for it.
    Any other path raises :class:`InvalidArgument`.
    """
    out = dict(current)
    for path in paths:
        if path == "labels":
            out = {k: v for k, v in new.items() if v}
        elif path.startswith("labels."):
            label = path[len("labels."):]
            if new.get(label):
                out[label] = new[label]
            else:
                out.pop(label, None)
        else:
            raise InvalidArgument(f"cannot update {path!r} field")
    return out


class NamespaceStore:
    """Create, read, label and delete namespaces; each call is one transaction."""

    def __init__(self, db: MetadataDB) -> None:
        self._db = db

    async def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create ``name``. Raises InvalidArgument (bad name/labels), AlreadyExists."""
        identifiers.validate(name)
        labels = dict(labels or {})
        identifiers.validate_labels(labels)

        def create(txn: Txn) -> None:
            if not txn.put("namespaces", key(name), {"labels": labels}, overwrite=False):
                raise AlreadyExists(f"namespace {name!r}: already exists")

        await self._db.update(create)
        return Namespace(name, labels)

    def get(self, name: str) -> Namespace:
        """The namespace ``name``. Raises NotFound."""
        with self._db.read() as txn:
            record = txn.get("namespaces", key(name))
        if record is None:
            raise NotFound(f"namespace {name!r}: not found")
        return Namespace(name, record["labels"])

    def list(self) -> list[Namespace]:
        """Every namespace, sorted by name."""
        with self._db.read() as txn:
            return [Namespace(k.decode(), v["labels"]) for k, v in txn.scan("namespaces")]

    async def update(self, name: str, labels: Mapping[str, str],
                     paths: Iterable[str] = ()) -> Namespace:
        """Update labels by field mask (see :func:`apply_label_paths`); no paths replaces all.

        Setting single labels (``labels.<k>`` paths only) creates a missing namespace,
        as containerd's ``SetLabel`` does. Raises NotFound, InvalidArgument.
        """
        paths = list(paths) or ["labels"]
        only_keys = all(p.startswith("labels.") for p in paths)
        if only_keys:
            identifiers.validate(name)

        def update(txn: Txn) -> dict[str, str]:
            record = txn.get("namespaces", key(name))
            if record is None:
                if not only_keys:
                    raise NotFound(f"namespace {name!r}: not found")
                record = {"labels": {}}
            record["labels"] = apply_label_paths(record["labels"], labels, paths)
            identifiers.validate_labels(record["labels"])
            txn.put("namespaces", key(name), record)
            return record["labels"]

        return Namespace(name, await self._db.update(update))

    async def delete(self, name: str) -> None:
        """Delete an empty namespace. Raises NotFound, FailedPrecondition (not empty)."""
        prefix = (name + SEP).encode()

        def delete(txn: Txn) -> None:
            if txn.get("namespaces", key(name)) is None:
                raise NotFound(f"namespace {name!r}: not found")
            holding = [db for db in NAMESPACED if txn.any(db, prefix)]
            if holding:
                raise FailedPrecondition(
                    f"namespace {name!r} must be empty, but it still has {', '.join(holding)}")
            txn.delete("namespaces", key(name))

        await self._db.update(delete)
