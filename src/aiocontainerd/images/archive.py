"""Import and export image archives: OCI image layout and ``docker save`` tars.

Import (containerd's ``archive.ImportIndex``): every regular file of the tar
is written to the content store under a lease — files under
``blobs/<alg>/<hex>`` must hash to their name — then the archive's
``index.json`` (OCI layout) or ``manifest.json`` (``docker save``; a Docker
schema 2 manifest is written for each entry) names the images. Trees are
checked (every manifest present has its config and layers), GC labels are set
on manifests and indexes, and an image is created or updated per name:

- OCI layout: ``io.containerd.image.name``, else ``org.opencontainers.image.ref.name``
  (a full reference, or a tag joined to ``base_name``);
- docker save: ``RepoTags``, normalised (``busybox:1`` → ``docker.io/library/busybox:1``).

Entry names that are absolute or contain ``..``, links, bad digests and
incomplete trees are refused with InvalidArgument before any image changes;
what was written goes with the lease (a synchronous GC follows a failed
import, so the store is as it was).

Export writes an OCI image layout tar (``oci-layout``, ``index.json`` with
both name annotations, ``blobs/sha256/…``) plus a ``manifest.json`` so
``docker load`` reads it too; indexes keep only the platforms asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import posixpath
import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..metadata.content import ContentStore
from ..metadata.images import Image, ImageStore
from ..metadata.plugin import Metadata
from ..remotes import limits as rlimits
from ..remotes import mediatypes as mt
from ..remotes import platforms, reference
from ..remotes.descriptor import Descriptor, validate_digest
from ..types import Descriptor as CoreDescriptor
from .labels import gc_labels

log = logging.getLogger(__name__)

OCI_LAYOUT = '{"imageLayoutVersion":"1.0.0"}'
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
READ_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ImportOptions:
    """``base_name``: joined to tag-only ref names; ``platform``: a MatchComparer to check
    (None: every platform found in the archive is accepted)."""

    base_name: str = ""
    platform: platforms.MatchComparer | None = None


def safe_name(name: str) -> str:
    """The normalised path of a tar entry; InvalidArgument if it is absolute or climbs out."""
    if name.startswith("/") or "\\" in name:
        raise InvalidArgument(f"archive entry {name!r}: absolute paths are not allowed")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or any(p == ".." for p in name.split("/")):
        raise InvalidArgument(f"archive entry {name!r}: path escapes the archive")
    return norm


def _to_core(d: Descriptor) -> CoreDescriptor:
    return CoreDescriptor(d.media_type, d.digest, d.size, dict(d.annotations))


class _Importer:
    def __init__(self, content: ContentStore, namespace: str, lease: str) -> None:
        self.content = content
        self.namespace = namespace
        self.lease = lease
        self.files: dict[str, tuple[str, int]] = {}  # entry path -> (digest, size)
        self.small: dict[str, bytes] = {}            # the archive's JSON files

    async def write_entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        expected = ""
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs":
            expected = validate_digest(f"{parts[1]}:{parts[2]}")
        f = tf.extractfile(member)
        assert f is not None
        if name in ("index.json", "manifest.json", "oci-layout", "repositories"):
            self.small[name] = await asyncio.to_thread(f.read, rlimits.DEFAULT_MAX_MANIFEST_SIZE + 1)
            if len(self.small[name]) > rlimits.DEFAULT_MAX_MANIFEST_SIZE:
                raise InvalidArgument(f"archive entry {name}: larger than "
                                      f"{rlimits.DEFAULT_MAX_MANIFEST_SIZE} bytes")
            return  # the archive's own description, not content
        if len(parts) == 2 and parts[1] in ("json", "VERSION"):
            return  # docker save's per-layer v1 metadata, which no image refers to
        if expected and self.content.has(self.namespace, expected):
            self.files[name] = (expected, member.size)
            return
        ref = f"import-{uuid.uuid4().hex}"
        w = await self.content.writer(self.namespace, ref, member.size, expected, self.lease)
        try:
            try:
                while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
                    await w.write(chunk)
            except (tarfile.TarError, EOFError, OSError) as e:
                raise InvalidArgument(f"archive entry {name}: truncated or corrupt: {e}") from None
            try:
                digest = (await w.commit(member.size, expected)).digest
            except AlreadyExists:
                digest = w.digest()
        except BaseException as e:
            w.close()
            await self.content.abort(self.namespace, ref)
            if isinstance(e, FailedPrecondition):
                raise InvalidArgument(f"archive entry {name}: content does not match its digest "
                                      f"({e.message})") from None
            raise
        self.files[name] = (digest, member.size)


async def import_archive(path: str | Path, *, metadata: Metadata, namespace: str,
                         options: ImportOptions = ImportOptions()) -> list[Image]:
    """Import the tar at ``path`` (see the module doc); returns the images created or updated.

    Raises InvalidArgument for a malformed or unsafe archive; then nothing it wrote
    is left (its lease is dropped and garbage collected at once).
    """
    lease = f"import-{uuid.uuid4().hex}"
    await metadata.leases.create(namespace, lease, {"containerd.io/gc.expire": _in_hours(1)})
    try:
        result = await _import(Path(path), metadata.content, metadata.images, namespace, lease,
                               options)
    except BaseException:
        await metadata.leases.delete(namespace, lease)
        await metadata.collect()
        raise
    await metadata.leases.delete(namespace, lease)
    return result


def _in_hours(hours: int) -> str:
    import datetime

    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=hours)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _import(path: Path, content: ContentStore, images: ImageStore, namespace: str, lease: str,
                  options: ImportOptions) -> list[Image]:
    imp = _Importer(content, namespace, lease)
    try:
        tf = await asyncio.to_thread(tarfile.open, path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise InvalidArgument(f"{path.name}: not a readable tar archive: {e}") from None
    try:
        while True:
            try:
                member = await asyncio.to_thread(tf.next)
            except tarfile.TarError as e:
                raise InvalidArgument(f"{path.name}: corrupt tar archive: {e}") from None
            if member is None:
                break
            name = safe_name(member.name)
            if member.issym() or member.islnk():
                continue  # links carry nothing an image needs; never followed
            if member.isfile():
                await imp.write_entry(tf, member, name)
    finally:
        tf.close()

    named: list[tuple[str, Descriptor]] = []
    if "index.json" in imp.small:
        index = _json(imp.small["index.json"], "index.json")
        entries = index.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument("index.json: no manifests list")
        for entry in entries:
            desc = Descriptor.from_json(entry)
            for name in _names(desc, options.base_name):
                named.append((name, desc))
    elif "manifest.json" in imp.small:
        named = await _docker_manifests(imp, _json(imp.small["manifest.json"], "manifest.json"))
    else:
        raise InvalidArgument(f"{path.name}: neither an OCI image layout (index.json) nor a "
                              "docker save archive (manifest.json)")
    for _, desc in named:
        await _label_tree(content, namespace, desc, options)
    out = []
    for name, desc in named:
        image = Image(name, _to_core(Descriptor(desc.media_type, desc.digest, desc.size)))
        try:
            out.append(await images.create(namespace, image))
        except AlreadyExists:
            out.append(await images.update(namespace, image, ["target"]))
    return out


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what}: invalid JSON: {e}") from None


def _names(desc: Descriptor, base_name: str) -> list[str]:
    name = desc.annotations.get(NAME_ANNOTATION)
    if name:
        return [name]
    ref = desc.annotations.get(REF_ANNOTATION, "")
    if not ref:
        return []
    if base_name and not any(c in ref for c in "/:@"):
        return [str(reference.parse(f"{base_name}:{ref}"))]
    try:
        return [str(reference.parse(ref))]
    except InvalidArgument:
        if base_name:
            return [str(reference.parse(f"{base_name}:{ref}"))]
        log.info("skipping unnamed archive entry", extra={"fields": {"ref": ref}})
        return []


async def _docker_manifests(imp: _Importer, manifest: Any) -> list[tuple[str, Descriptor]]:
    if not isinstance(manifest, list):
        raise InvalidArgument("manifest.json: expected a list of images")
    out = []
    for entry in manifest:
        if not isinstance(entry, dict) or "Config" not in entry:
            raise InvalidArgument("manifest.json: entry without Config")
        config = _file(imp, entry["Config"])
        layers = [_file(imp, p) for p in entry.get("Layers") or []]
        body = json.dumps({
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": {"mediaType": mt.DOCKER_CONFIG, "digest": config[0], "size": config[1]},
            "layers": [{"mediaType": mt.DOCKER_LAYER, "digest": d, "size": s} for d, s in layers],
        }, separators=(",", ":")).encode()
        info = await _put(imp, body)
        desc = Descriptor(mt.DOCKER_MANIFEST, info, len(body))
        for tag in entry.get("RepoTags") or []:
            out.append((str(reference.parse(tag)), desc))
    return out


def _file(imp: _Importer, entry_path: Any) -> tuple[str, int]:
    if not isinstance(entry_path, str):
        raise InvalidArgument("manifest.json: paths must be strings")
    name = safe_name(entry_path)
    if name not in imp.files:
        raise InvalidArgument(f"manifest.json names {entry_path!r}, which the archive lacks")
    return imp.files[name]


async def _put(imp: _Importer, body: bytes) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    if imp.content.has(imp.namespace, digest):
        return digest
    w = await imp.content.writer(imp.namespace, f"import-{uuid.uuid4().hex}", len(body), digest, imp.lease)
    try:
        await w.write(body)
        await w.commit(len(body), digest)
    except AlreadyExists:
        pass
    finally:
        w.close()
    return digest


async def _label_tree(content: ContentStore, namespace: str, root: Descriptor,
                      options: ImportOptions) -> None:
    """Check the tree under ``root`` is complete and set GC labels on its parents."""

    async def get_children(desc: Descriptor) -> list[Descriptor]:
        if not mt.is_manifest_or_index(desc.media_type):
            return []
        if not content.has(namespace, desc.digest):
            if desc is root:
                raise InvalidArgument(f"archive lacks {desc.digest}, which index.json names")
            return []  # another platform's manifest, not in this archive
        kids = rlimits.children(desc, await content.read_all(namespace, desc.digest))
        labels = gc_labels(desc, kids)
        if labels:
            from ..metadata.content import Info

            await content.update(namespace, Info(desc.digest, desc.size, labels=labels),
                                 [f"labels.{k}" for k in labels])
        if mt.is_manifest(desc.media_type):
            for kid in kids:
                if not content.has(namespace, kid.digest) and not mt.is_non_distributable(kid.media_type):
                    raise InvalidArgument(f"archive lacks {kid.digest} ({kid.media_type}) of "
                                          f"manifest {desc.digest}")
            return []
        if options.platform is not None:
            kids = [k for k in kids if k.platform is None or options.platform.match(k.platform)]
        return kids

    await rlimits.walk(root, get_children)


async def export_archive(out: IO[bytes], targets: Sequence[tuple[str, CoreDescriptor]], *,
                         content: ContentStore, namespace: str,
                         platform: platforms.MatchComparer | None = None) -> None:
    """Write an OCI layout tar of ``targets`` (name, target descriptor) to ``out``.

    ``platform`` selects the manifests of indexes (None: all that are present; a
    manifest missing from the store is skipped only when another platform's).
    Raises NotFound when a needed blob is missing.
    """
    blobs: dict[str, Path] = {}
    docker_entries = []
    index_entries = []
    for name, core in targets:
        root = Descriptor(core.media_type, core.digest, core.size)
        chosen: list[Descriptor] = []

        async def get_children(desc: Descriptor, root: Descriptor = root, name: str = name,
                               chosen: list[Descriptor] = chosen) -> list[Descriptor]:
            if not content.has(namespace, desc.digest):
                if desc is root or not mt.is_manifest_or_index(desc.media_type):
                    raise NotFound(f"content {desc.digest} of {name} is not in the store")
                return []
            blobs[desc.digest] = content.local.blob_path(desc.digest)
            if not mt.is_manifest_or_index(desc.media_type):
                return []
            kids = rlimits.children(desc, await content.read_all(namespace, desc.digest))
            if mt.is_manifest(desc.media_type):
                chosen.append(desc)
                return kids
            if platform is not None:
                kids = [k for k in kids if k.platform is None or platform.match(k.platform)]
            return kids

        await rlimits.walk(root, get_children)
        ref = reference.parse(name)
        annotations = {NAME_ANNOTATION: name, REF_ANNOTATION: ref.tag or ref.digest or "latest"}
        index_entries.append(Descriptor(root.media_type, root.digest, root.size,
                                        annotations=annotations).to_json())
        if len(chosen) == 1:
            manifest = json.loads(await content.read_all(namespace, chosen[0].digest))
            docker_entries.append({
                "Config": f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}",
                "RepoTags": [ref.familiar()] if ref.tag else [],
                "Layers": [f"blobs/sha256/{layer['digest'].split(':')[1]}"
                           for layer in manifest.get("layers", [])],
            })
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index_entries}
    await asyncio.to_thread(_write_tar, out, blobs, index, docker_entries)


def _write_tar(out: IO[bytes], blobs: dict[str, Path], index: dict,
               docker_entries: list[dict]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o444
            tf.addfile(info, io.BytesIO(data))

        dirs = {"blobs", "blobs/sha256"}
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tf.addfile(info)
        for digest, path in blobs.items():
            info = tarfile.TarInfo(f"blobs/sha256/{digest.split(':')[1]}")
            info.mode = 0o444
            with open(path, "rb") as f:
                info.size = path.stat().st_size
                tf.addfile(info, f)
        add_bytes("oci-layout", OCI_LAYOUT.encode())
        add_bytes("index.json", json.dumps(index, separators=(",", ":")).encode())
        if docker_entries:
            add_bytes("manifest.json", json.dumps(docker_entries, separators=(",", ":")).encode())
