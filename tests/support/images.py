"""Test images built in pure Python from busybox-static: layers, configs, manifests, indexes.

Bytes are deterministic (fixed mtimes, uid/gid 0, compact JSON, gzip mtime 0), so a digest is
stable from run to run — as long as the installed busybox-static binary is the same.
``busybox_image()`` layers:

- layer 1: ``/bin/busybox`` (from busybox-static), symlinks ``/bin/<applet> -> busybox`` for
  ``APPLETS``, ``/etc/passwd``, ``/etc/group``, ``/etc/issue``, ``/etc/platform`` (``os/arch[/variant]``,
  so each platform's layers differ), empty ``/root``, ``/tmp`` (1777), ``/proc``, ``/sys``, ``/dev``;
- layer N ≥ 2: ``/layerN/file`` (``"layer N\\n"``);
- layer 2 also: ``/etc/.wh.issue`` (whiteout: ``/etc/issue`` is gone) and ``/opaque/old``;
- layer 3 also: ``/opaque/.wh..wh..opq`` and ``/opaque/new`` (opaque dir: only ``new`` remains).

``rootfs(image)`` applies the layers in memory and says what an unpacked snapshot should hold.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, cast

import zstandard

BUSYBOX = "/bin/busybox"
MTIME = 1704067200                      # 2024-01-01T00:00:00Z, every tar entry
CREATED = "2024-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APPLETS = ("sh", "ash", "echo", "true", "false", "cat", "ls", "sleep", "env", "id", "mkdir", "rm",
           "touch", "test", "[", "pwd", "hostname", "wc", "head", "tail", "grep", "sed", "printf",
           "date", "uname", "kill", "ps", "mount", "umount", "stat", "chmod", "ln", "cp", "mv", "tee",
           "yes", "whoami", "seq", "sync", "readlink", "dd", "df", "du", "find", "xargs", "vi",
           "wget", "nc", "ip", "ping", "top", "sort", "uniq", "cut", "tr", "md5sum", "sha256sum")

Compression = Literal["gzip", "zstd", "none"]
Media = Literal["oci", "docker"]
Platform = tuple[str, str, str]          # (os, architecture, variant); variant may be ""

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_IMAGE_NAME = "io.containerd.image.name"

MEDIA_TYPES: dict[Media, dict[str, str]] = {
    "oci": {"index": OCI_INDEX, "manifest": OCI_MANIFEST, "config": OCI_CONFIG,
            "none": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD},
    "docker": {"index": DOCKER_LIST, "manifest": DOCKER_MANIFEST, "config": DOCKER_CONFIG,
               "none": DOCKER_LAYER, "gzip": DOCKER_LAYER_GZIP, "zstd": DOCKER_LAYER_ZSTD},
}
DEFAULT_PLATFORMS: tuple[Platform, ...] = (("linux", "amd64", ""), ("linux", "arm64", ""),
                                           ("linux", "arm", "v7"))


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    """Compact JSON, keys in insertion order (the bytes that get a digest)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Blob:
    """Content with a media type, digest and size; bytes in memory or (big images) in a file.

    ``data`` reads the file each time when the blob is file-backed; prefer ``path``/``chunks()``.
    """

    __slots__ = ("_data", "digest", "media_type", "path", "size")

    def __init__(self, media_type: str, data: bytes | None = None, digest: str | None = None,
                 size: int | None = None, *, path: Path | None = None) -> None:
        if data is None and path is None:
            raise ValueError("a Blob needs data or a path")
        self.media_type = media_type
        self._data = data
        self.path = path
        if size is None:
            size = len(data) if data is not None else os.path.getsize(path)  # type: ignore[arg-type]
        self.size = size
        self.digest = digest if digest is not None else sha256_digest(self.data)

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Blob:
        """A blob of ``data``, digest and size computed."""
        return cls(media_type, data, sha256_digest(data), len(data))

    @property
    def data(self) -> bytes:
        if self._data is not None:
            return self._data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def hex(self) -> str:
        """The digest without ``sha256:``."""
        return self.digest.split(":", 1)[1]

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes in pieces (without loading a file-backed blob whole)."""
        if self._data is not None:
            for i in range(0, len(self._data), size):
                yield self._data[i:i + size]
            return
        assert self.path is not None
        with open(self.path, "rb") as f:
            while chunk := f.read(size):
                yield chunk

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        """``{"mediaType", "digest", "size", **extra}``."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}

    def json(self) -> Any:
        return json.loads(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blob) and (self.digest, self.media_type) == (other.digest, other.media_type)

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"Blob({self.media_type!r}, digest={self.digest!r}, size={self.size})"


@dataclass(frozen=True, eq=False)
class Image:
    """One image (manifest, config, layers) — or, with ``index`` set, a multi-platform image
    whose ``children`` are the per-platform images and whose own manifest/config/layers are the
    first child's."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]
    platform: Platform
    index: Blob | None = None
    children: tuple[Image, ...] = field(default=())

    @property
    def root(self) -> Blob:
        """What a tag points to: the index if there is one, else the manifest."""
        return self.index if self.index is not None else self.manifest

    @property
    def digest(self) -> str:
        return self.root.digest

    @property
    def media(self) -> Media:
        return "docker" if self.manifest.media_type == DOCKER_MANIFEST else "oci"

    @property
    def blobs(self) -> dict[str, Blob]:
        """Every blob by digest: index, manifests, configs, layers (of every child)."""
        out: dict[str, Blob] = {}
        if self.index is not None:
            out[self.index.digest] = self.index
        for image in self.children or (self,):
            for blob in (image.manifest, image.config, *image.layers):
                out[blob.digest] = blob
        return out

    @property
    def chain_ids(self) -> tuple[str, ...]:
        """Chain IDs of the layers (image-spec config.md: sha256 of "<parent chain ID> <diff ID>")."""
        out: list[str] = []
        for diff_id in self.diff_ids:
            out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
        return tuple(out)

    @property
    def platform_string(self) -> str:
        """``os/arch[/variant]``."""
        return "/".join(p for p in self.platform if p)

    def for_platform(self, os_: str, arch: str, variant: str = "") -> Image:
        """The child image for a platform (or this image if it matches and has no index)."""
        for image in self.children or (self,):
            if image.platform == (os_, arch, variant):
                return image
        raise KeyError(f"no image for {os_}/{arch}{'/' + variant if variant else ''}")


# -- tar layers ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """A tar entry to write, or (from ``rootfs``) what a path holds after applying the layers."""

    kind: Literal["file", "dir", "symlink", "hardlink"]
    mode: int
    data: bytes = b""
    target: str = ""


def _tarinfo(name: str, entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name + ("/" if entry.kind == "dir" else ""))
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    elif entry.kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, entry.target
    else:
        info.size = len(entry.data)
    return info


def write_tar(out: IO[bytes], entries: Iterable[tuple[str, Entry]]) -> None:
    """Write ``(path, Entry)`` pairs (paths relative, no leading slash) as a PAX/ustar stream."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tar:
        for name, entry in entries:
            info = _tarinfo(name, entry)
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)


def make_tar(entries: Iterable[tuple[str, Entry]]) -> bytes:
    """A deterministic tar of ``entries``."""
    out = io.BytesIO()
    write_tar(out, entries)
    return out.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    """gzip (mtime 0, level 6), zstd (level 3, content size in the frame) or as is."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def decompress(data: bytes, media_type: str) -> bytes:
    """The tar inside a layer blob, judged by its media type."""
    if media_type.endswith(("gzip", "+gzip")):
        return gzip.decompress(data)
    if media_type.endswith(("zstd", "+zstd")):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def layer_compression(media_type: str) -> Compression:
    if media_type.endswith("gzip"):
        return "gzip"
    if media_type.endswith("zstd"):
        return "zstd"
    return "none"


def _dir(mode: int = 0o755) -> Entry:
    return Entry("dir", mode)


def _file(data: bytes | str, mode: int = 0o644) -> Entry:
    return Entry("file", mode, data.encode() if isinstance(data, str) else data)


@cache
def _busybox_bytes() -> bytes:
    try:
        return Path(BUSYBOX).read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"{BUSYBOX} is missing (apt-get install busybox-static)") from e


def base_layer_entries(platform: Platform) -> list[tuple[str, Entry]]:
    """Layer 1: busybox, its applet symlinks, /etc basics."""
    entries: list[tuple[str, Entry]] = [("bin", _dir()), ("bin/busybox", _file(_busybox_bytes(), 0o755))]
    entries += [(f"bin/{a}", Entry("symlink", 0o777, target="busybox")) for a in APPLETS]
    entries += [
        ("dev", _dir()), ("etc", _dir()),
        ("etc/group", _file("root:x:0:\nnogroup:x:65534:\n")),
        ("etc/issue", _file("aiocontainerd test image\n")),
        ("etc/passwd", _file("root:x:0:0:root:/root:/bin/sh\n"
                             "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")),
        ("etc/platform", _file("/".join(p for p in platform if p) + "\n")),
        ("proc", _dir()), ("root", _dir(0o700)), ("sys", _dir()), ("tmp", _dir(0o1777)),
    ]
    return entries


def extra_layer_entries(n: int) -> list[tuple[str, Entry]]:
    """Layer ``n`` ≥ 2 (see the module docstring)."""
    entries: list[tuple[str, Entry]] = [(f"layer{n}", _dir()), (f"layer{n}/file", _file(f"layer {n}\n"))]
    if n == 2:
        entries += [("etc", _dir()), ("etc/.wh.issue", _file(b"", 0o600)),
                    ("opaque", _dir()), ("opaque/old", _file("old\n"))]
    elif n == 3:
        entries += [("opaque", _dir()), ("opaque/.wh..wh..opq", _file(b"", 0o600)),
                    ("opaque/new", _file("new\n"))]
    return entries


# -- configs, manifests, indexes ---------------------------------------------------------------------
def image_config(platform: Platform, diff_ids: Sequence[str], *,
                 container_config: Mapping[str, Any] | None = None,
                 history: Sequence[str] | None = None) -> dict[str, Any]:
    """An image config (image-spec config.md; Docker's is the same shape)."""
    os_, arch, variant = platform
    config: dict[str, Any] = {"created": CREATED, "author": "aiocontainerd tests", "architecture": arch,
                              "os": os_}
    if variant:
        config["variant"] = variant
    config["config"] = {"Env": [PATH_ENV], "Cmd": ["/bin/sh"], "WorkingDir": "/",
                        **(container_config or {})}
    config["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    steps = list(history or [f"/bin/sh -c #(nop) ADD layer {i + 1}" for i in range(len(diff_ids))])
    config["history"] = [{"created": CREATED, "created_by": s} for s in steps] + [
        {"created": CREATED, "created_by": '/bin/sh -c #(nop)  CMD ["/bin/sh"]', "empty_layer": True}]
    return config


def make_image(layers: Sequence[Blob], diff_ids: Sequence[str], *, media: Media = "oci",
               platform: Platform = ("linux", "amd64", ""), container_config: Mapping[str, Any] | None = None,
               annotations: Mapping[str, str] | None = None) -> Image:
    """Config and manifest around ready layer blobs."""
    types = MEDIA_TYPES[media]
    config = Blob.of(types["config"], canonical_json(
        image_config(platform, diff_ids, container_config=container_config)))
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": types["manifest"],
                                "config": config.descriptor(), "layers": [b.descriptor() for b in layers]}
    if annotations:
        manifest["annotations"] = dict(annotations)
    return Image(Blob.of(types["manifest"], canonical_json(manifest)), config, tuple(layers),
                 tuple(diff_ids), platform)


def busybox_image(layers: int = 1, compression: Compression = "gzip", media: Media = "oci",
                  platform: Platform = ("linux", "amd64", "")) -> Image:
    """A runnable busybox image of ``layers`` layers (cached: same arguments, same object)."""
    return _busybox_image(layers, compression, media, tuple(platform))


@cache
def _busybox_image(layers: int, compression: Compression, media: Media, platform: Platform) -> Image:
    if layers < 1:
        raise ValueError("an image needs at least one layer")
    if compression not in ("gzip", "zstd", "none") or media not in MEDIA_TYPES:
        raise ValueError(f"unknown compression {compression!r} or media {media!r}")
    blobs: list[Blob] = []
    diff_ids: list[str] = []
    for n in range(1, layers + 1):
        tar = make_tar(base_layer_entries(platform) if n == 1 else extra_layer_entries(n))
        diff_ids.append(sha256_digest(tar))
        blobs.append(Blob.of(MEDIA_TYPES[media][compression], compress(tar, compression)))
    return make_image(blobs, diff_ids, media=media, platform=platform)


def index_blob(images: Sequence[Image], media: Media | None = None,
               annotations: Mapping[str, str] | None = None) -> Blob:
    """An OCI index or Docker manifest list over ``images`` with their platforms."""
    media = media or images[0].media
    entries = []
    for image in images:
        os_, arch, variant = image.platform
        platform = {"architecture": arch, "os": os_, **({"variant": variant} if variant else {})}
        entries.append(image.manifest.descriptor(platform=platform))
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": MEDIA_TYPES[media]["index"],
                             "manifests": entries}
    if annotations:
        index["annotations"] = dict(annotations)
    return Blob.of(MEDIA_TYPES[media]["index"], canonical_json(index))


def multi_platform(images: Sequence[Image] | None = None, *, layers: int = 1,
                   compression: Compression = "gzip", media: Media = "oci") -> Image:
    """A multi-platform image: an index (OCI index, or Docker manifest list for Docker media) over
    ``images`` — by default busybox images for linux/amd64, linux/arm64 and linux/arm/v7."""
    if images is None:
        images = [busybox_image(layers, compression, media, p) for p in DEFAULT_PLATFORMS]
    if not images:
        raise ValueError("an index needs at least one image")
    kinds = {i.media for i in images}
    if len(kinds) != 1:
        raise ValueError("mixed OCI and Docker manifests in one index")
    first = images[0]
    return Image(first.manifest, first.config, first.layers, first.diff_ids, first.platform,
                 index=index_blob(images), children=tuple(images))


# -- what a snapshot should hold ---------------------------------------------------------------------
def rootfs(image: Image) -> dict[str, Entry]:
    """``{"/path": Entry}`` after applying the layers in order with OCI whiteouts (``.wh.name``
    removes a lower path, ``.wh..wh..opq`` empties a lower directory). For small images."""
    state: dict[str, Entry] = {"/": Entry("dir", 0o755)}
    for layer in image.layers:
        tar = decompress(layer.data, layer.media_type)
        members: list[tuple[str, Entry]] = []
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            for m in t:
                name = "/" + m.name.strip("/").removeprefix("./")
                if m.isdir():
                    e = Entry("dir", m.mode)
                elif m.issym():
                    e = Entry("symlink", m.mode, target=m.linkname)
                elif m.islnk():
                    e = Entry("hardlink", m.mode, target="/" + m.linkname.strip("/"))
                else:
                    f = t.extractfile(m)
                    e = Entry("file", m.mode, f.read() if f else b"")
                members.append((name, e))

        def remove(path: str, children_only: bool = False) -> None:
            prefix = path.rstrip("/") + "/"
            for p in [p for p in state if p.startswith(prefix) or (p == path and not children_only)]:
                del state[p]

        for name, _ in members:   # whiteouts apply to lower layers only
            parent, _, base = name.rpartition("/")
            if base == ".wh..wh..opq":
                remove(parent or "/", children_only=True)
            elif base.startswith(".wh."):
                remove(f"{parent}/{base[4:]}")
        for name, e in members:
            base = name.rpartition("/")[2]
            if base.startswith(".wh."):
                continue
            old = state.get(name)
            if old is not None and (e.kind != "dir" or old.kind != "dir"):
                remove(name)      # replaced (a directory over a directory merges instead)
            state[name] = e
    return state


# -- archives ----------------------------------------------------------------------------------------
def _stream_blob(tar: tarfile.TarFile, name: str, blob: Blob) -> None:
    info = _tarinfo(name, Entry("file", 0o644))
    info.size = blob.size
    if blob.path is not None:
        with open(blob.path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info, io.BytesIO(blob.data))


def write_oci_layout_tar(image: Image, name: str, out: BinaryIO, *, image_name: str | None = None) -> None:
    """An OCI image layout as a tar (image-spec image-layout.md): ``oci-layout``, ``index.json``
    (one entry for the image's root with ``org.opencontainers.image.ref.name: name``, plus
    ``io.containerd.image.name`` if ``image_name`` is given), ``blobs/sha256/<hex>``."""
    annotations = {REF_NAME: name, **({CONTAINERD_IMAGE_NAME: image_name} if image_name else {})}
    root = image.root
    layout_index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
                    "manifests": [root.descriptor(annotations=annotations)]}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tar:
        for path, entry in [("oci-layout", _file(canonical_json({"imageLayoutVersion": "1.0.0"}))),
                            ("index.json", _file(canonical_json(layout_index))),
                            ("blobs", _dir()), ("blobs/sha256", _dir())]:
            tar.addfile(_tarinfo(path, entry), io.BytesIO(entry.data) if entry.kind == "file" else None)
        for digest, blob in sorted(image.blobs.items()):
            _stream_blob(tar, f"blobs/sha256/{digest.split(':', 1)[1]}", blob)


def oci_layout_tar(image: Image, name: str, *, image_name: str | None = None) -> bytes:
    """``write_oci_layout_tar`` into bytes."""
    out = io.BytesIO()
    write_oci_layout_tar(image, name, out, image_name=image_name)
    return out.getvalue()


def write_docker_save_tar(image: Image, repo_tag: str, out: BinaryIO) -> None:
    """What ``docker save repo:tag`` wrote before Docker 25: ``manifest.json``, ``repositories``,
    ``<config hex>.json`` and ``<layer id>/{VERSION,json,layer.tar}`` with uncompressed layers.
    For a multi-platform image, its first platform."""
    layer_ids: list[str] = []
    parent = ""
    for diff_id in image.diff_ids:
        layer_ids.append(hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest())
        parent = layer_ids[-1]
    config_name = f"{image.config.hex}.json"
    repo, _, tag = repo_tag.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = repo_tag, "latest"
    manifest = [{"Config": config_name, "RepoTags": [f"{repo}:{tag}"],
                 "Layers": [f"{i}/layer.tar" for i in layer_ids]}]
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20) as tar:
        for i, (layer_id, layer) in enumerate(zip(layer_ids, image.layers, strict=True)):
            v1: dict[str, Any] = {"id": layer_id, "created": CREATED}
            if i:
                v1["parent"] = layer_ids[i - 1]
            for path, entry in [(layer_id, _dir()), (f"{layer_id}/VERSION", _file("1.0")),
                                (f"{layer_id}/json", _file(canonical_json(v1)))]:
                tar.addfile(_tarinfo(path, entry), io.BytesIO(entry.data) if entry.kind == "file" else None)
            diff = decompress(layer.data, layer.media_type)
            tar.addfile(_tarinfo(f"{layer_id}/layer.tar", _file(diff)), io.BytesIO(diff))
        for path, entry in [(config_name, _file(image.config.data)),
                            ("manifest.json", _file(canonical_json(manifest))),
                            ("repositories", _file(canonical_json({repo: {tag: layer_ids[-1]}})))]:
            tar.addfile(_tarinfo(path, entry), io.BytesIO(entry.data))


def docker_save_tar(image: Image, repo_tag: str) -> bytes:
    """``write_docker_save_tar`` into bytes."""
    out = io.BytesIO()
    write_docker_save_tar(image, repo_tag, out)
    return out.getvalue()


# -- pushing -----------------------------------------------------------------------------------------
async def push(host: str, repo: str, tag: str, image: Image, *, auth: tuple[str, str] | None = None) -> None:
    """Push every blob (POST + monolithic PUT), the manifests, and the tag (index last) to
    ``http://host`` — answering basic or bearer challenges with ``auth`` if given."""
    from tests.support.client import RegistryClient

    async with RegistryClient(host, auth=auth) as client:
        await client.push_image(repo, tag, image)


# -- large images ------------------------------------------------------------------------------------
class HashingWriter:
    """A write-only sink that hashes and counts what passes through to ``out`` (if any)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def flush(self) -> None:
        return None

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def write_layer(entries: Iterable[tuple[str, Entry]], path: Path,
                compression: Compression) -> tuple[str, int, str]:
    """Stream a layer to ``path``; returns (blob digest, blob size, diff ID)."""
    with open(path, "wb") as f:
        blob = HashingWriter(f)
        compressor: Any
        if compression == "gzip":
            compressor = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6)
        elif compression == "zstd":
            compressor = zstandard.ZstdCompressor(level=3).stream_writer(cast(IO[bytes], blob), closefd=False)
        else:
            compressor = None
        diff = HashingWriter(compressor if compressor is not None else blob)
        write_tar(diff, entries)  # type: ignore[arg-type]
        if compressor is not None:
            compressor.close()
    return blob.digest, blob.size, diff.digest


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = range(26, 0, -1)
    return ["".join(rng.choices(letters, weights=weights, k=rng.randint(2, 10))) for _ in range(4000)]


def _large_layer_entries(seed: int, n: int, target: int) -> Iterator[tuple[str, Entry]]:
    """Files of a data layer: text (compresses ~3x), binaries (half random, half structured)."""
    rng = random.Random(f"{seed}-{n}")
    words = _words(rng)
    corpus = " ".join(rng.choices(words, k=700_000)).encode()
    pattern = b"".join(i.to_bytes(4, "little") + b"\0\0\0\x01" + w[:8].encode().ljust(8, b"\0")
                       for i, w in enumerate(words[:4096]))   # 16-byte records: compressible
    written = 0
    pkg = 0
    dirs: set[str] = set()
    while written < target:
        pkg += 1
        kind = rng.choice(("usr/lib", "usr/share", "opt", "usr/bin"))
        base = f"{kind}/pkg{n}-{pkg}-{rng.choice(words)}"
        parts = base.split("/")
        for i in range(len(parts)):
            d = "/".join(parts[: i + 1])
            if d not in dirs:
                dirs.add(d)
                yield d, _dir()
        for _ in range(rng.randint(3, 25)):
            bucket = rng.random()
            size = (rng.randint(512, 16 << 10) if bucket < 0.6 else
                    rng.randint(16 << 10, 512 << 10) if bucket < 0.92 else rng.randint(512 << 10, 8 << 20))
            size = min(size, max(target - written, 512))
            if rng.random() < 0.4:
                start = rng.randrange(len(corpus))
                data = (corpus[start:] + corpus * (size // len(corpus) + 1))[:size]
                yield f"{base}/{rng.choice(words)}-{rng.randint(0, 999)}.txt", _file(data)
            else:
                pieces: list[bytes] = []
                for off in range(0, size, 65536):
                    chunk = min(65536, size - off)
                    half = chunk // 2
                    pieces.append(rng.randbytes(half) + pattern[: chunk - half])
                name = f"{base}/lib{rng.choice(words)}.so.{rng.randint(1, 9)}"
                yield name, _file(b"".join(pieces), 0o755)
                yield name.rsplit(".", 1)[0], Entry("symlink", 0o777, target=name.rsplit("/", 1)[1])
            written += size
            if written >= target:
                return


def large_image(folder: Path | str, total_mb: int = 500, layers: int = 7, *,
                compression: Compression = "gzip", media: Media = "oci", seed: int = 1) -> Image:
    """A big image for throughput benchmarks: busybox as layer 1, then ``layers - 1`` layers of
    seeded random-but-realistic files (text, half-compressible binaries, symlinks) totalling about
    ``total_mb`` MiB uncompressed. Built once (layers in parallel threads) and cached under
    ``folder``; blobs are file-backed. Blocking: call it with ``asyncio.to_thread`` from a loop."""
    if layers < 2:
        raise ValueError("large_image needs at least 2 layers (busybox + data)")
    folder = Path(folder)
    key = folder / f"large-{total_mb}mb-{layers}l-{compression}-{media}-s{seed}"
    if not (key / "image.json").exists():
        _build_large(key, total_mb, layers, compression, media, seed)
    return _load_large(key)


def _build_large(key: Path, total_mb: int, layers: int, compression: Compression, media: Media,
                 seed: int) -> None:
    tmp = key.with_name(f"{key.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs_dir = tmp / "blobs"
    blobs_dir.mkdir(parents=True)
    rng = random.Random(seed)
    weights = [rng.uniform(0.5, 2.0) for _ in range(layers - 1)]
    total = total_mb << 20
    targets = [int(total * w / sum(weights)) for w in weights]
    platform: Platform = ("linux", "amd64", "")

    def build(n: int) -> tuple[str, int, str]:
        entries = base_layer_entries(platform) if n == 1 else _large_layer_entries(seed, n, targets[n - 2])
        return write_layer(entries, blobs_dir / f"layer{n}", compression)

    with ThreadPoolExecutor(max_workers=min(layers, os.cpu_count() or 1)) as pool:
        results = list(pool.map(build, range(1, layers + 1)))
    layer_type = MEDIA_TYPES[media][compression]
    layer_blobs = []
    for n, (digest, size, _) in enumerate(results, 1):
        path = blobs_dir / digest.split(":", 1)[1]
        os.replace(blobs_dir / f"layer{n}", path)
        layer_blobs.append(Blob(layer_type, None, digest, size, path=path))
    image = make_image(layer_blobs, [r[2] for r in results], media=media, platform=platform)
    for blob in (image.config, image.manifest):
        (blobs_dir / blob.hex).write_bytes(blob.data)
    meta = {"platform": list(platform), "manifest": image.manifest.descriptor(),
            "config": image.config.descriptor(), "layers": [b.descriptor() for b in layer_blobs],
            "diff_ids": list(image.diff_ids)}
    publish_built(tmp, key, meta)


def publish_built(tmp: Path, folder: Path, meta: Mapping[str, Any]) -> None:
    """Writes ``meta`` as ``tmp/image.json`` and renames ``tmp`` (an image built with its blobs
    in ``tmp/blobs``) to ``folder``; if someone else built ``folder`` meanwhile, keeps theirs."""
    (tmp / "image.json").write_text(json.dumps(meta, indent=1))
    try:
        os.rename(tmp, folder)
    except OSError:               # built concurrently by someone else: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def built_blob(folder: Path, d: Mapping[str, Any]) -> Blob:
    """The blob of descriptor ``d`` in ``folder/blobs`` of a ``publish_built`` folder."""
    return Blob(d["mediaType"], None, d["digest"], d["size"],
                path=folder / "blobs" / d["digest"].split(":", 1)[1])


def _load_large(key: Path) -> Image:
    meta = json.loads((key / "image.json").read_text())

    def blob(d: Mapping[str, Any]) -> Blob:
        return built_blob(key, d)

    return Image(blob(meta["manifest"]), blob(meta["config"]), tuple(blob(d) for d in meta["layers"]),
                 tuple(meta["diff_ids"]), tuple(meta["platform"]))


def verify_blob(blob: Blob) -> bool:
    """Whether the blob's bytes still match its digest and size."""
    h = hashlib.sha256()
    size = 0
    for chunk in blob.chunks():
        h.update(chunk)
        size += len(chunk)
    return size == blob.size and "sha256:" + h.hexdigest() == blob.digest



