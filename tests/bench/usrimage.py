"""A multi-layer image of real files (this host's ``/usr``), gzip and zstd, built once and cached.

The pull+unpack scenarios need a big image whose files look like a real
distribution's: binaries, shared libraries, headers, Python sources, locales,
man pages, hard links and symlinks, modes and owners as the host has them.
:func:`usr_image` tars subtrees of the host (see :data:`LAYER_SPEC`; about
1.4 GiB, 7 layers, ~60 000 entries on the bench machines) and compresses each
tar stream twice as it is written, so the two variants have the same diff IDs
(one image config, two manifests):

* gzip: the ``gzip`` module (zlib) at level 6, mtime 0 — Go's default level;
* zstd: ``zstandard`` at level 3 (containerd's default).

Entries are written as Go's ``archive/tar`` would for a ``docker build``:
sorted, folders before their content, parent folders of each subtree first,
whole-second mtimes, the host's uid/gid/names and modes, symlinks as
symlinks, hard links (within a layer) as ``LNKTYPE`` entries; sockets,
devices and FIFOs are left out. A hard link whose other name is in another
layer becomes a regular file there.

Cached under ``tests/bench/results/cache/usr-<layers>l-<key>/`` (git-ignored;
about 1 GB for both variants); the key hashes the layer plan, so delete the
folder to rebuild after the host's ``/usr`` changed. Blocking: call it with
``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from tests.support.images import (
    MEDIA_TYPES,
    Blob,
    HashingWriter,
    Image,
    built_blob,
    make_image,
    publish_built,
)

#: (title, subtrees relative to ``/``) per layer, in order; missing subtrees are left out
LAYER_SPEC: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("binaries", ("usr/bin", "usr/sbin", "usr/libexec")),
    ("llvm", ("usr/lib/llvm-14",)),
    ("gcc, python, git", ("usr/lib/gcc", "usr/lib/python3", "usr/lib/python3.11", "usr/lib/git-core")),
    ("headers", ("usr/include",)),
    ("locales, man pages", ("usr/share/locale", "usr/share/man")),
    ("docs", ("usr/share/doc",)),
    ("dpkg database", ("var/lib/dpkg",)),
)
#: "at least 1 GB uncompressed": below this (file bytes), more of /usr/lib is added as layers
MIN_FILE_BYTES = 1_200_000_000
#: and each added layer holds up to this much
EXTRA_LAYER_BYTES = 400_000_000
COMPRESSIONS = ("gzip", "zstd")
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
FORMAT_VERSION = 1  # bump when the way layers are written changes


class UsrImageError(RuntimeError):
    """The host does not have enough files for the image."""


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """What one layer holds (the same for both compressions)."""

    title: str
    subtrees: tuple[str, ...]
    tar_bytes: int      # the uncompressed tar stream (diff) size
    file_bytes: int     # sum of regular files' sizes
    entries: int        # tar entries (parent folders included)
    hardlinks: int      # LNKTYPE entries among them
    compressed: dict[str, int]  # blob size per compression

    @property
    def inodes(self) -> int:
        """Inodes an unpacked snapshot folder of only this layer holds (its root folder included)."""
        return self.entries - self.hardlinks + 1


@dataclasses.dataclass(frozen=True)
class UsrImage:
    """Both variants (file-backed blobs in the cache) and what their layers hold."""

    images: dict[str, Image]   # compression -> image
    layers: tuple[LayerStats, ...]
    folder: Path

    @property
    def tar_bytes(self) -> int:
        """Uncompressed bytes of all layers (tar streams): the MB/s numerator."""
        return sum(s.tar_bytes for s in self.layers)

    @property
    def file_bytes(self) -> int:
        return sum(s.file_bytes for s in self.layers)

    def compressed_bytes(self, compression: str) -> int:
        return sum(s.compressed[compression] for s in self.layers)

    def describe(self) -> dict[str, Any]:
        """For the results document."""
        return {
            "layers": len(self.layers), "tar_bytes": self.tar_bytes, "file_bytes": self.file_bytes,
            "entries": sum(s.entries for s in self.layers),
            "hardlinks": sum(s.hardlinks for s in self.layers),
            "compressed_bytes": {c: self.compressed_bytes(c) for c in self.images},
            "digests": {c: i.digest for c, i in self.images.items()},
            "plan": [{"title": s.title, "subtrees": list(s.subtrees), "tar_bytes": s.tar_bytes,
                      "entries": s.entries, "compressed": s.compressed} for s in self.layers],
            "cache": str(self.folder)}


# -- the plan --------------------------------------------------------------------------------------
def _file_bytes(top: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def plan(root: Path = Path("/")) -> list[tuple[str, tuple[str, ...]]]:
    """The layers to build on this host: :data:`LAYER_SPEC` minus what is missing, plus more
    of ``/usr/lib`` (largest subtrees first) until the files reach :data:`MIN_FILE_BYTES`."""
    layers = []
    total = 0
    used: set[str] = set()
    for title, subtrees in LAYER_SPEC:
        present = tuple(s for s in subtrees if (root / s).is_dir() and not (root / s).is_symlink())
        if present:
            layers.append((title, present))
            used.update(present)
            total += sum(_file_bytes(root / s) for s in present)
    if total < MIN_FILE_BYTES:
        lib = root / "usr/lib"
        candidates = sorted(((_file_bytes(p), f"usr/lib/{p.name}") for p in lib.iterdir()
                             if p.is_dir() and not p.is_symlink() and f"usr/lib/{p.name}" not in used),
                            reverse=True)
        extra: list[str] = []
        extra_bytes = 0
        for size, sub in candidates:
            if total >= MIN_FILE_BYTES:
                break
            extra.append(sub)
            extra_bytes += size
            total += size
            if extra_bytes >= EXTRA_LAYER_BYTES:
                layers.append((f"more of /usr/lib ({len(layers) + 1})", tuple(sorted(extra))))
                extra, extra_bytes = [], 0
        if extra:
            layers.append((f"more of /usr/lib ({len(layers) + 1})", tuple(sorted(extra))))
    if total < 1_000_000_000:
        raise UsrImageError(f"only {total / 1e9:.2f} GB of files under {root}usr and {root}var/lib/dpkg; "
                            "the pull+unpack image needs at least 1 GB")
    return layers


# -- writing the layers ----------------------------------------------------------------------------
class _Tee:
    """The uncompressed tar stream: hashed (diff ID), then fed to every compressor."""

    def __init__(self, outs: Sequence[Any]) -> None:
        self.diff = HashingWriter()
        self.outs = outs

    def write(self, data: bytes) -> int:
        self.diff.write(data)
        for out in self.outs:
            out.write(data)
        return len(data)

    def flush(self) -> None:
        return None


def _walk(root: Path, subtrees: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """(host path, archive name) in tar order: parents of the subtrees, then each subtree sorted."""
    seen: set[str] = set()
    for sub in sorted(subtrees):
        parts = sub.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                yield root / parent, parent
        yield root / sub, sub
        for dirpath, dirnames, filenames in os.walk(root / sub):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            names = sorted(dirnames + filenames)
            for name in names:
                yield Path(dirpath) / name, f"{rel}/{name}"


def write_layer(root: Path, subtrees: Sequence[str], paths: Mapping[str, Path]) -> dict[str, Any]:
    """Tar ``subtrees`` of ``root`` once into one blob per compression in ``paths``.

    Returns diff ID, tar/file bytes, entry counts and ``{compression: (digest, size)}``.
    """
    files = {c: open(p, "wb") for c, p in paths.items()}  # closed below
    try:
        sinks = {c: HashingWriter(f) for c, f in files.items()}
        compressors: dict[str, Any] = {}
        for c, sink in sinks.items():
            if c == "gzip":
                compressors[c] = gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0,
                                               compresslevel=GZIP_LEVEL)
            elif c == "zstd":
                compressors[c] = zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(
                    cast(IO[bytes], sink), closefd=False)
            else:
                raise ValueError(f"unknown compression {c!r}")
        tee = _Tee(list(compressors.values()))
        entries = hardlinks = file_bytes = 0
        with tarfile.open(fileobj=tee, mode="w|", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                          bufsize=1 << 20) as tar:
            for path, name in _walk(root, subtrees):
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    continue  # sockets, devices, FIFOs
                info = tar.gettarinfo(str(path), arcname=name)
                info.mtime = int(info.mtime)  # whole seconds, as Go's tar writer does (no PAX record)
                entries += 1
                if info.isreg():
                    try:
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
                    except OSError as e:
                        raise UsrImageError(f"reading {path}: {e}") from e
                    file_bytes += info.size
                else:
                    hardlinks += info.islnk()
                    tar.addfile(info)
        for c in COMPRESSIONS:
            if c in compressors:
                compressors[c].close()
    finally:
        for f in files.values():
            f.close()
    return {"diff_id": tee.diff.digest, "tar_bytes": tee.diff.size, "file_bytes": file_bytes,
            "entries": entries, "hardlinks": hardlinks,
            "blobs": {c: (s.digest, s.size) for c, s in sinks.items()}}


# -- build, cache, load ----------------------------------------------------------------------------
def _key(layers: Sequence[tuple[str, tuple[str, ...]]]) -> str:
    spec = json.dumps({"v": FORMAT_VERSION, "layers": layers, "gzip": GZIP_LEVEL, "zstd": ZSTD_LEVEL})
    return f"usr-{len(layers)}l-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


def usr_image(cache: Path, root: Path = Path("/"), *, workers: int | None = None,
              say: Any = None) -> UsrImage:
    """The cached image (built first if missing)."""
    layers = plan(root)
    folder = Path(cache) / _key(layers)
    if not (folder / "image.json").exists():
        if say is not None:
            say(f"building the real-files image in {folder} ({len(layers)} layers from {root}; "
                "takes a few minutes once)")
        _build(folder, root, layers, workers or min(len(layers), os.cpu_count() or 1))
    return _load(folder)


def _build(folder: Path, root: Path, layers: Sequence[tuple[str, tuple[str, ...]]], workers: int) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs"
    blobs.mkdir(parents=True)

    def build(n: int) -> dict[str, Any]:
        return write_layer(root, layers[n][1], {c: blobs / f"layer{n}.{c}" for c in COMPRESSIONS})

    # largest first would balance better, but in order keeps it simple; zlib releases the GIL
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(build, range(len(layers))))
    platform = ("linux", "amd64", "")
    meta: dict[str, Any] = {"layers": [], "images": {}}
    for n, ((title, subtrees), r) in enumerate(zip(layers, results, strict=True)):
        for c in COMPRESSIONS:
            digest, _ = r["blobs"][c]
            os.replace(blobs / f"layer{n}.{c}", blobs / digest.split(":", 1)[1])
        meta["layers"].append({"title": title, "subtrees": list(subtrees), "diff_id": r["diff_id"],
                               "tar_bytes": r["tar_bytes"], "file_bytes": r["file_bytes"],
                               "entries": r["entries"], "hardlinks": r["hardlinks"],
                               "blobs": {c: list(v) for c, v in r["blobs"].items()}})
    diff_ids = [r["diff_id"] for r in results]
    for c in COMPRESSIONS:
        media_type = MEDIA_TYPES["oci"][c]
        layer_blobs = [Blob(media_type, None, r["blobs"][c][0], r["blobs"][c][1],
                            path=blobs / r["blobs"][c][0].split(":", 1)[1]) for r in results]
        image = make_image(layer_blobs, diff_ids, media="oci", platform=platform)
        for blob in (image.config, image.manifest):
            (blobs / blob.hex).write_bytes(blob.data)
        meta["images"][c] = {"manifest": image.manifest.descriptor(), "config": image.config.descriptor(),
                             "layers": [b.descriptor() for b in layer_blobs]}
    meta["platform"] = list(platform)
    meta["diff_ids"] = diff_ids
    publish_built(tmp, folder, meta)


def _load(folder: Path) -> UsrImage:
    meta = json.loads((folder / "image.json").read_text())

    def blob(d: Mapping[str, Any]) -> Blob:
        return built_blob(folder, d)

    images = {c: Image(blob(m["manifest"]), blob(m["config"]), tuple(blob(d) for d in m["layers"]),
                       tuple(meta["diff_ids"]), tuple(meta["platform"]))  # type: ignore[arg-type]
              for c, m in meta["images"].items()}
    stats = tuple(LayerStats(d["title"], tuple(d["subtrees"]), d["tar_bytes"], d["file_bytes"],
                             d["entries"], d["hardlinks"], {c: v[1] for c, v in d["blobs"].items()})
                  for d in meta["layers"])
    return UsrImage(images, stats, folder)


if __name__ == "__main__":  # python -m tests.bench.usrimage: build (or load) and describe
    import sys

    from .fixtures import CACHE

    built = usr_image(CACHE, say=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(built.describe(), indent=1))
