"""Containers: metadata records of what to run (containerd's ``containers.Store``).

A container is metadata only: an ID, the image it came from, the runtime
(shim) name and options, the OCI spec, and the snapshot holding its root
filesystem. Tasks (running processes) refer to containers by ID.

Rules, as containerd's metadata store applies them:
- ``id`` is an identifier; ``runtime.name`` and ``spec`` must be set;
  ``snapshot_key`` needs ``snapshotter``.
- ``runtime`` and ``snapshotter`` are immutable after create.
- Update takes field paths ``labels``, ``labels.<k>``, ``spec``, ``extensions``,
  ``extensions.<k>``, ``image``, ``snapshotkey``; none means all of these.
- Timestamps are nanoseconds since the epoch, set by the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from .. import filters, identifiers
from ..errors import AlreadyExists, InvalidArgument, NotFound
from ..types import TypedValue, now_ns
from .db import SEP, MetadataDB, Txn, key
from .namespaces import apply_label_paths


@dataclasses.dataclass
class Runtime:
    """The runtime (shim) handling the container's tasks, e.g. ``io.containerd.runc.v2``."""

    name: str
    options: TypedValue | None = None


@dataclasses.dataclass
class Container:
    """A container record; ``created_at``/``updated_at`` in nanoseconds since the epoch."""

    id: str
    runtime: Runtime
    spec: TypedValue | None = None
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: dict[str, TypedValue] = dataclasses.field(default_factory=dict)
    sandbox: str = ""
    created_at: int = 0
    updated_at: int = 0

    def to_record(self) -> dict:
        return {
            "runtime": {"name": self.runtime.name,
                        "options": self.runtime.options.to_json() if self.runtime.options else None},
            "spec": self.spec.to_json() if self.spec else None,
            "labels": self.labels,
            "image": self.image,
            "snapshotter": self.snapshotter,
            "snapshot_key": self.snapshot_key,
            "extensions": {k: v.to_json() for k, v in self.extensions.items()},
            "sandbox": self.sandbox,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_record(cls, id_: str, r: dict) -> Container:
        return cls(
            id=id_,
            runtime=Runtime(r["runtime"]["name"], TypedValue.from_json(r["runtime"]["options"])),
            spec=TypedValue.from_json(r["spec"]),
            labels=r["labels"],
            image=r["image"],
            snapshotter=r["snapshotter"],
            snapshot_key=r["snapshot_key"],
            extensions={k: TypedValue.from_json(v) for k, v in r["extensions"].items()},
            sandbox=r["sandbox"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )

    def field(self, path: tuple[str, ...] | list[str]) -> str | None:
        """Filter adaptor: ``id``, ``image``, ``runtime.name``, ``snapshotter``, ``labels.<k>``."""
        if not path:
            return None
        head = path[0]
        if head == "labels":
            return filters.map_field(path, self.labels)
        if head == "runtime" and len(path) == 2 and path[1] == "name":
            return self.runtime.name
        if len(path) == 1 and head in ("id", "image", "snapshotter", "sandbox"):
            return getattr(self, head) or None
        return None


def _validate(c: Container) -> None:
    identifiers.validate(c.id)
    identifiers.validate_labels(c.labels)
    if not c.runtime.name:
        raise InvalidArgument("container.Runtime.Name must be set")
    if c.spec is None:
        raise InvalidArgument("container.Spec must be set")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set")
    for name in c.extensions:
        if not name:
            raise InvalidArgument("container.Extension keys must not be empty")


class ContainerStore:
    """Container records per namespace; each call is one transaction."""

    def __init__(self, db: MetadataDB, on_delete: Callable[[], None] | None = None) -> None:
        self._db = db
        self._on_delete = on_delete or (lambda: None)

    def get(self, namespace: str, id_: str) -> Container:
        """The container ``id_``. Raises NotFound."""
        with self._db.read() as txn:
            record = txn.get("containers", key(namespace, id_))
        if record is None:
            raise NotFound(f"container {id_!r} in namespace {namespace!r}: not found")
        return Container.from_record(id_, record)

    def list(self, namespace: str, filter_strings: Iterable[str] = ()) -> list[Container]:
        """Containers of ``namespace`` matching the filters, by ID. Raises InvalidArgument."""
        match = filters.parse(filter_strings)
        prefix = (namespace + SEP).encode()
        with self._db.read() as txn:
            items = [Container.from_record(k[len(prefix):].decode(), v)
                     for k, v in txn.scan("containers", prefix)]
        return [c for c in items if match.match(c.field)]

    async def create(self, namespace: str, container: Container) -> Container:
        """Store a new container, creating its namespace if needed.

        Raises InvalidArgument, AlreadyExists.
        """
        identifiers.validate(namespace)
        _validate(container)
        c = dataclasses.replace(container)
        c.created_at = c.updated_at = now_ns()

        def create(txn: Txn) -> None:
            txn.put("namespaces", key(namespace), {"labels": {}}, overwrite=False)
            if not txn.put("containers", key(namespace, c.id), c.to_record(), overwrite=False):
                raise AlreadyExists(f"container {c.id!r}: already exists")

        await self._db.update(create)
        return c

    async def update(self, namespace: str, container: Container,
                     paths: Iterable[str] = ()) -> Container:
        """Update mutable fields by field path (see the module doc).

        Raises NotFound, InvalidArgument (unknown path, immutable field changed).
        """
        paths = list(paths)

        def update(txn: Txn) -> Container:
            nonlocal paths
            record = txn.get("containers", key(namespace, container.id))
            if record is None:
                raise NotFound(f"container {container.id!r}: not found")
            current = Container.from_record(container.id, record)
            if not paths:
                if container.runtime.name and container.runtime.name != current.runtime.name:
                    raise InvalidArgument("container.Runtime.Name field is immutable")
                if container.snapshotter and container.snapshotter != current.snapshotter:
                    raise InvalidArgument("container.Snapshotter field is immutable")
                paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
            for path in paths:
                if path == "labels" or path.startswith("labels."):
                    current.labels = apply_label_paths(current.labels, container.labels, [path])
                elif path == "extensions":
                    current.extensions = dict(container.extensions)
                elif path.startswith("extensions."):
                    name = path[len("extensions."):]
                    if name in container.extensions:
                        current.extensions[name] = container.extensions[name]
                    else:
                        current.extensions.pop(name, None)
                elif path == "spec":
                    current.spec = container.spec
                elif path == "image":
                    current.image = container.image
                elif path == "snapshotkey":
                    current.snapshot_key = container.snapshot_key
                else:
                    raise InvalidArgument(f"cannot update {path!r} field on {container.id!r}")
            _validate(current)
            current.updated_at = now_ns()
            txn.put("containers", key(namespace, container.id), current.to_record())
            return current

        return await self._db.update(update)

    async def update_extension(self, namespace: str, id_: str, name: str, value: TypedValue) -> None:
        """Set extension ``name`` of container ``id_`` (what :meth:`update` does with the one
        path ``extensions.<name>``). Raises NotFound, InvalidArgument (empty name).

        For records rewritten on every state change (the CRI's): the stored record is changed
        as it is, without turning it into a :class:`Container` and back — the spec and the other
        extensions stay encoded, and the rest of the record was validated when it was written.
        """
        if not name:
            raise InvalidArgument("container.Extension keys must not be empty")
        encoded = value.to_json()

        def update(txn: Txn) -> None:
            k = key(namespace, id_)
            record = txn.get("containers", k)
            if record is None:
                raise NotFound(f"container {id_!r}: not found")
            record["extensions"][name] = encoded
            record["updated_at"] = now_ns()
            txn.put("containers", k, record)

        await self._db.update(update)

    async def delete(self, namespace: str, id_: str) -> None:
        """Delete the container record. Raises NotFound."""

        def delete(txn: Txn) -> None:
            if not txn.delete("containers", key(namespace, id_)):
                raise NotFound(f"container {id_!r}: not found")

        await self._db.update(delete)
        self._on_delete()
