"""Images: names pointing at a target descriptor (containerd's ``images.Store``).

An image is a name (normally a normalised reference such as
``docker.io/library/busybox:latest``), labels, and a *target*: the
descriptor of its manifest or index in the content store. Images are GC
roots; their target and ``containerd.io/gc.ref.*`` labels keep content alive
(``containerd.io/gc.expire`` on an image makes it collectable after that time).

Update takes field paths ``labels``, ``labels.<k>``, ``target``,
``annotations``; none means labels and target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from .. import filters, identifiers
from ..content import parse_digest
from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..types import Descriptor, now_ns
from .db import SEP, MetadataDB, Txn, key
from .namespaces import apply_label_paths


@dataclasses.dataclass
class Image:
    name: str
    target: Descriptor
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0

    def field(self, path) -> str | None:
        """Filter adaptor: ``name``, ``target.digest``, ``target.mediatype``, ``labels.<k>``,
        ``annotations.<k>`` (the target's)."""
        if not path:
            return None
        head = path[0]
        if head == "name" and len(path) == 1:
            return self.name
        if head == "target" and len(path) == 2:
            return {"digest": self.target.digest, "mediatype": self.target.media_type}.get(path[1])
        if head == "labels":
            return filters.map_field(path, self.labels)
        if head == "annotations":
            return filters.map_field(path, self.target.annotations)
        return None


def _record(i: Image) -> dict:
    return {"target": i.target.to_json(), "labels": i.labels, "created_at": i.created_at,
            "updated_at": i.updated_at}


def _image(name: str, r: dict) -> Image:
    return Image(name, Descriptor.from_json(r["target"]), r["labels"], r["created_at"], r["updated_at"])


def _validate(i: Image) -> None:
    if not i.name:
        raise InvalidArgument("image name must not be empty")
    identifiers.validate_labels(i.labels)
    if not i.target.media_type:
        raise InvalidArgument("image target media type must be set")
    parse_digest(i.target.digest)
    if i.target.size < 0:
        raise InvalidArgument("image target size must not be negative")


class ImageStore:
    """Images per namespace; each call is one transaction."""

    def __init__(self, db: MetadataDB, on_delete: Callable[[], None] | None = None) -> None:
        self._db = db
        self._on_delete = on_delete or (lambda: None)

    def get(self, namespace: str, name: str) -> Image:
        with self._db.read() as txn:
            r = txn.get("images", key(namespace, name))
        if r is None:
            raise NotFound(f"image {name!r}: not found")
        return _image(name, r)

    def list(self, namespace: str, filter_strings: Iterable[str] = ()) -> list[Image]:
        match = filters.parse(filter_strings)
        prefix = (namespace + SEP).encode()
        with self._db.read() as txn:
            items = [_image(k[len(prefix):].decode(), v) for k, v in txn.scan("images", prefix)]
        return [i for i in items if match.match(i.field)]

    async def create(self, namespace: str, image: Image) -> Image:
        """Raises InvalidArgument, AlreadyExists."""
        identifiers.validate(namespace)
        _validate(image)
        now = now_ns()
        image = dataclasses.replace(image, created_at=now, updated_at=now)

        def create(txn: Txn) -> None:
            txn.put("namespaces", key(namespace), {"labels": {}}, overwrite=False)
            if not txn.put("images", key(namespace, image.name), _record(image), overwrite=False):
                raise AlreadyExists(f"image {image.name!r}: already exists")

        await self._db.update(create)
        return image

    async def update(self, namespace: str, image: Image, paths: Iterable[str] = ()) -> Image:
        """Raises NotFound, InvalidArgument."""
        paths = list(paths) or ["labels", "target"]

        def update(txn: Txn) -> Image:
            r = txn.get("images", key(namespace, image.name))
            if r is None:
                raise NotFound(f"image {image.name!r}: not found")
            current = _image(image.name, r)
            for p in paths:
                if p == "labels" or p.startswith("labels."):
                    current.labels = apply_label_paths(current.labels, image.labels, [p])
                elif p == "target":
                    current.target = image.target
                elif p == "annotations" or p.startswith("annotations."):
                    annotations = apply_label_paths(current.target.annotations, image.target.annotations,
                                                    ["labels" + p[len("annotations"):]])
                    current.target = dataclasses.replace(current.target, annotations=annotations)
                else:
                    raise InvalidArgument(f"cannot update {p!r} field on image {image.name!r}")
            _validate(current)
            current.updated_at = now_ns()
            txn.put("images", key(namespace, image.name), _record(current))
            return current

        return await self._db.update(update)

    async def delete(self, namespace: str, name: str, target: str | None = None) -> None:
        """Delete; with ``target`` only if the image still points at that digest.

        Raises NotFound, FailedPrecondition (target moved).
        """

        def delete(txn: Txn) -> None:
            r = txn.get("images", key(namespace, name))
            if r is None:
                raise NotFound(f"image {name!r}: not found")
            if target and r["target"]["digest"] != target:
                raise FailedPrecondition(f"image {name!r} target is {r['target']['digest']}, not {target}")
            txn.delete("images", key(namespace, name))

        await self._db.update(delete)
        self._on_delete()
