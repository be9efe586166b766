"""The Windows container layer format: what a Windows image layer tar holds and means.

containerd's windows diff applies and exports layers through hcsshim's
``ociwclayer`` (``ImportLayerFromTar`` / ``ExportLayerToTar``) and go-winio's
``backuptar``; this module is our own reading of that format, usable on Linux.

Layout of a layer tar (names use ``/``; Windows paths use ``\\`` on disk):

- ``Files/...`` — the container's filesystem: ``Files/Windows/System32/x.dll``
  is ``C:\\Windows\\System32\\x.dll`` inside the container;
- ``Hives/...`` — registry hive *deltas* of a non-base layer
  (``Hives/System_Delta``, ``Software_Delta``, ``Sam_Delta``,
  ``Security_Delta``, ``DefaultUser_Delta``); a base layer carries whole hives
  as files under ``Files/Windows/System32/config/`` instead;
- ``UtilityVM/`` and ``UtilityVM/Files/...`` — the utility VM image used for
  Hyper-V isolation (a base layer's UtilityVM must hold
  ``UtilityVM/Files/EFI/Microsoft/Boot/BCD``).

Entries and their Windows metadata (PAX records):

- regular files, directories and symlinks; ``MSWINDOWS.fileattr`` is the
  Win32 attribute word (decimal; without it a directory gets
  ``FILE_ATTRIBUTE_DIRECTORY`` and anything else 0); ``MSWINDOWS.rawsd`` the
  security descriptor (base64; ``MSWINDOWS.sd``, SDDL text, in old layers);
  ``MSWINDOWS.xattr.<name>`` extended attributes (base64);
  ``MSWINDOWS.mountpoint`` marks a symlink that is a junction (mount point);
  times: ``mtime`` is the last write time, ``atime``/``ctime`` access and
  change times, ``LIBARCHIVE.creationtime`` the creation time (default: mtime);
- a regular entry named ``<file>:<stream>`` right after ``<file>`` is that
  file's alternate data stream ``<stream>``;
- a hard link (``TypeLink``) whose name and target are both under ``Files/``
  or both under ``UtilityVM/Files/``;
- a whiteout ``<dir>/.wh.<name>`` (OCI/AUFS style): ``<name>`` is deleted from
  the parent layers. Only under ``Files/`` (recorded as a tombstone) or
  ``UtilityVM/Files/``, and never in a base layer ("base layer cannot have
  tombstones"). Windows layers have no opaque-directory whiteouts
  (``.wh..wh..opq`` is refused).

Anything else is :class:`InvalidLayer`: a name outside those three trees, an
absolute name or one with ``..`` (breakout), a device, FIFO or socket entry, a
stream with no file before it, a ``:`` in a name that is not a stream.

:func:`read_layer` reads and checks a tar entry by entry; :func:`write_layer`
writes entries the way ``ExportLayerToTar`` does. :class:`LayerDirectory`
applies a layer to a folder on Linux and exports it back (the round trip the
unit tests check); see there for the on-disk form.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, BinaryIO

FILES = "Files"
HIVES = "Hives"
UTILITY_VM = "UtilityVM"
UTILITY_VM_FILES = "UtilityVM/Files"
#: Where a base layer keeps its registry hives (inside ``Files/``).
REGISTRY_FILES = "Files/Windows/System32/config"
BASE_HIVES = ("DEFAULT", "SAM", "SECURITY", "SOFTWARE", "SYSTEM")
#: Hive delta files of a non-base layer, under ``Hives/``.
DELTA_HIVES = ("System_Delta", "Software_Delta", "Sam_Delta", "Security_Delta", "DefaultUser_Delta")
UVM_BCD = "UtilityVM/Files/EFI/Microsoft/Boot/BCD"
#: Files the import process mutates, saved beside the layer under these names first.
MUTATED_FILES = {
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD": "bcd.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG": "bcd.log.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG1": "bcd.log1.bak",
    "UtilityVM/Files/EFI/Microsoft/Boot/BCD.LOG2": "bcd.log2.bak",
}
WHITEOUT_PREFIX = ".wh."

# PAX records (vendor extensions of go-winio's backuptar and libarchive)
PAX_FILE_ATTRIBUTES = "MSWINDOWS.fileattr"
PAX_SECURITY_DESCRIPTOR = "MSWINDOWS.sd"
PAX_RAW_SECURITY_DESCRIPTOR = "MSWINDOWS.rawsd"
PAX_MOUNT_POINT = "MSWINDOWS.mountpoint"
PAX_EA_PREFIX = "MSWINDOWS.xattr."
PAX_CREATION_TIME = "LIBARCHIVE.creationtime"

# Win32 file attributes
FILE_ATTRIBUTE_READONLY = 0x1
FILE_ATTRIBUTE_HIDDEN = 0x2
FILE_ATTRIBUTE_SYSTEM = 0x4
FILE_ATTRIBUTE_DIRECTORY = 0x10
FILE_ATTRIBUTE_ARCHIVE = 0x20
FILE_ATTRIBUTE_NORMAL = 0x80
FILE_ATTRIBUTE_REPARSE_POINT = 0x400

#: 100 ns intervals between 1601-01-01 (Windows FILETIME epoch) and 1970-01-01.
FILETIME_UNIX_EPOCH = 116444736000000000


class InvalidLayer(ValueError):
    """The tar is not a valid Windows layer; the message names the entry and the rule."""


def filetime_from_ns(ns: int) -> int:
    """A Windows FILETIME (100 ns since 1601) from nanoseconds since the Unix epoch."""
    return ns // 100 + FILETIME_UNIX_EPOCH


def ns_from_filetime(filetime: int) -> int:
    """Nanoseconds since the Unix epoch from a Windows FILETIME."""
    return (filetime - FILETIME_UNIX_EPOCH) * 100


def format_pax_time(ns: int) -> str:
    """A PAX time (``sec[.frac]``, trailing zeros trimmed, as Go's archive/tar writes it)."""
    sec, frac = divmod(ns, 1_000_000_000)
    if not frac:
        return str(sec)
    return f"{sec}.{frac:09d}".rstrip("0")


def parse_pax_time(text: str) -> int:
    """Nanoseconds from a PAX time (``"1700000000.5"``); raises InvalidLayer."""
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise InvalidLayer(f"invalid PAX time {text!r}")
    return sign * (int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]))


@dataclasses.dataclass(frozen=True)
class WinFileInfo:
    """Win32 basic file information (go-winio's ``FileBasicInfo``); times in ns since 1970."""

    attributes: int = 0
    creation_time: int = 0
    last_access_time: int = 0
    last_write_time: int = 0
    change_time: int = 0

    @property
    def is_directory(self) -> bool:
        return bool(self.attributes & FILE_ATTRIBUTE_DIRECTORY)


class EntryType(enum.Enum):
    """What one layer entry does."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"      #: a reparse point: symlink, or junction if ``mount_point``
    LINK = "link"            #: a hard link to ``link_target``
    WHITEOUT = "whiteout"    #: ``path`` is deleted from the parent layers


@dataclasses.dataclass
class LayerEntry:
    """One item of a Windows layer (see the module doc).

    ``path`` is the item's own name (for a whiteout: the deleted name, without
    ``.wh.``), with ``/`` separators, e.g. ``Files/Windows/win.ini``.
    ``data`` is a regular file's content; ``streams`` its alternate data
    streams by name. ``security_descriptor`` is binary (from ``rawsd``);
    ``sddl`` the text form when the layer had only that.
    """

    type: EntryType
    path: str
    info: WinFileInfo = dataclasses.field(default_factory=WinFileInfo)
    data: bytes = b""
    link_target: str = ""
    mount_point: bool = False
    security_descriptor: bytes = b""
    sddl: str = ""
    extended_attributes: dict[str, bytes] = dataclasses.field(default_factory=dict)
    streams: dict[str, bytes] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.data) if self.type == EntryType.FILE else 0


def _area(path: str) -> str:
    """``Files``, ``Hives``, ``UtilityVM/Files``, ``UtilityVM`` — the tree ``path`` is in."""
    if path == UTILITY_VM_FILES or path.startswith(UTILITY_VM_FILES + "/"):
        return UTILITY_VM_FILES
    return path.split("/", 1)[0]


def _under(path: str, prefix: str) -> bool:
    return path.startswith(prefix + "/")


def clean_name(name: str) -> str:
    """A tar entry name checked and normalised (``./`` and trailing ``/`` dropped).

    Raises InvalidLayer for absolute names, ``..`` components, backslashes,
    NUL bytes and names outside ``Files``, ``Hives`` and ``UtilityVM``.
    """
    if "\0" in name or "\\" in name:
        raise InvalidLayer(f"{name!r}: NUL or backslash in entry name")
    if name.startswith("/"):
        raise InvalidLayer(f"{name!r}: absolute entry name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidLayer(f"{name!r}: '..' in entry name")
    if not parts:
        raise InvalidLayer(f"{name!r}: empty entry name")
    path = "/".join(parts)
    if parts[0] not in (FILES, HIVES, UTILITY_VM):
        raise InvalidLayer(f"{name!r}: not part of a Windows layer (only Files/, Hives/ and UtilityVM/)")
    return path


def file_info_from_member(member: tarfile.TarInfo) -> WinFileInfo:
    """Win32 file information from a tar header (backuptar's ``FileInfoFromHeader``)."""
    pax = member.pax_headers
    mtime = parse_pax_time(pax["mtime"]) if "mtime" in pax else int(member.mtime) * 1_000_000_000
    atime = parse_pax_time(pax["atime"]) if "atime" in pax else mtime
    ctime = parse_pax_time(pax["ctime"]) if "ctime" in pax else mtime
    created = parse_pax_time(pax[PAX_CREATION_TIME]) if PAX_CREATION_TIME in pax else mtime
    if PAX_FILE_ATTRIBUTES in pax:
        try:
            attributes = int(pax[PAX_FILE_ATTRIBUTES])
        except ValueError:
            raise InvalidLayer(f"{member.name!r}: invalid {PAX_FILE_ATTRIBUTES} "
                               f"{pax[PAX_FILE_ATTRIBUTES]!r}") from None
        if not 0 <= attributes <= 0xFFFFFFFF:
            raise InvalidLayer(f"{member.name!r}: {PAX_FILE_ATTRIBUTES} out of range")
    else:
        attributes = FILE_ATTRIBUTE_DIRECTORY if member.isdir() else 0
    return WinFileInfo(attributes, created, atime, mtime, ctime)


def _b64(member: tarfile.TarInfo, key: str) -> bytes:
    try:
        return base64.b64decode(member.pax_headers[key], validate=True)
    except ValueError:
        raise InvalidLayer(f"{member.name!r}: {key} is not base64") from None


def read_layer(stream: IO[bytes], *, base: bool = False) -> Iterator[LayerEntry]:
    """The entries of a Windows layer tar, checked (see the module doc).

    ``base``: the layer has no parents (whiteouts are then invalid). Raises
    :class:`InvalidLayer` at the first bad entry; ``tarfile.TarError`` for a
    tar that cannot be read.
    """
    with tarfile.open(fileobj=stream, mode="r|*") as tf:
        pending: LayerEntry | None = None
        has_uvm = False
        for member in tf:
            raw = member.name
            base_name = posixpath.basename(raw.rstrip("/"))
            # alternate data stream of the file just read
            if member.isreg() and ":" in base_name:
                path = clean_name(raw)
                if pending is None or pending.type != EntryType.FILE or \
                        not path.startswith(pending.path + ":"):
                    raise InvalidLayer(f"{raw!r}: alternate data stream without its file before it")
                stream_name = path[len(pending.path) + 1:]
                if not stream_name:
                    raise InvalidLayer(f"{raw!r}: invalid alternate data stream name")
                pending.streams[stream_name] = _read_data(tf, member)
                continue
            if pending is not None:
                yield pending
                pending = None
            if base_name == WHITEOUT_PREFIX + WHITEOUT_PREFIX + ".opq":
                raise InvalidLayer(f"{raw!r}: opaque-directory whiteouts do not exist in Windows layers")
            if base_name.startswith(WHITEOUT_PREFIX):
                target = clean_name(posixpath.join(posixpath.dirname(raw), base_name[len(WHITEOUT_PREFIX):]))
                if base:
                    raise InvalidLayer(f"{raw!r}: base layer cannot have tombstones")
                if not (_under(target, FILES) or _under(target, UTILITY_VM_FILES)):
                    raise InvalidLayer(f"{raw!r}: invalid tombstone {target!r} (only under Files/ "
                                       "or UtilityVM/Files/)")
                yield LayerEntry(EntryType.WHITEOUT, target)
                continue
            path = clean_name(raw)
            if ":" in path:
                raise InvalidLayer(f"{raw!r}: ':' in a name that is not an alternate data stream")
            if _area(path) in (UTILITY_VM, UTILITY_VM_FILES):
                if path == UTILITY_VM:
                    has_uvm = True
                elif not base:
                    if not has_uvm:
                        raise InvalidLayer(f"{raw!r}: missing UtilityVM directory")
                    if _area(path) != UTILITY_VM_FILES:
                        raise InvalidLayer(f"{raw!r}: invalid UtilityVM layer (only UtilityVM/Files/)")
            if member.islnk():
                target = clean_name(member.linkname)
                area = _area(path)
                if area not in (FILES, UTILITY_VM_FILES) or path == area or _area(target) != area \
                        or target == area:
                    raise InvalidLayer(f"{raw!r}: invalid hard link in layer (to {member.linkname!r}; "
                                       "both must be under Files/ or both under UtilityVM/Files/)")
                yield LayerEntry(EntryType.LINK, path, link_target=target)
                continue
            if not (member.isreg() or member.isdir() or member.issym()):
                raise InvalidLayer(f"{raw!r}: unsupported entry type {member.type!r} in a Windows layer")
            entry = LayerEntry(EntryType.DIRECTORY if member.isdir() else
                               EntryType.SYMLINK if member.issym() else EntryType.FILE,
                               path, file_info_from_member(member))
            pax = member.pax_headers
            if PAX_RAW_SECURITY_DESCRIPTOR in pax:
                entry.security_descriptor = _b64(member, PAX_RAW_SECURITY_DESCRIPTOR)
            elif PAX_SECURITY_DESCRIPTOR in pax:
                entry.sddl = pax[PAX_SECURITY_DESCRIPTOR]
            for key in sorted(pax):
                if key.startswith(PAX_EA_PREFIX):
                    entry.extended_attributes[key[len(PAX_EA_PREFIX):]] = _b64(member, key)
            if member.issym():
                entry.link_target = member.linkname
                entry.mount_point = PAX_MOUNT_POINT in pax
            elif member.isreg():
                entry.data = _read_data(tf, member)
            pending = entry
        if pending is not None:
            yield pending


def _read_data(tf: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = tf.extractfile(member)
    return f.read() if f is not None else b""


def _member(name: str, type_: bytes, info: WinFileInfo, size: int = 0) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = type_
    m.size = size
    m.mode = 0
    m.mtime = max(info.last_write_time // 1_000_000_000, 0)
    m.pax_headers = {
        "mtime": format_pax_time(info.last_write_time),
        "atime": format_pax_time(info.last_access_time),
        "ctime": format_pax_time(info.change_time),
        PAX_CREATION_TIME: format_pax_time(info.creation_time),
        PAX_FILE_ATTRIBUTES: str(info.attributes),
    }
    return m


def write_layer(stream: BinaryIO, entries: Iterable[LayerEntry]) -> None:
    """Write ``entries`` as a Windows layer tar (PAX), as ``ExportLayerToTar`` does:
    Windows metadata in PAX records, alternate data streams as ``<file>:<stream>``
    entries right after their file, whiteouts as empty ``.wh.<name>`` entries."""
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if e.type == EntryType.WHITEOUT:
                m = tarfile.TarInfo(posixpath.join(posixpath.dirname(e.path),
                                                   WHITEOUT_PREFIX + posixpath.basename(e.path)))
                m.mode = 0
                tf.addfile(m)
                continue
            if e.type == EntryType.LINK:
                m = tarfile.TarInfo(e.path)
                m.type = tarfile.LNKTYPE
                m.linkname = e.link_target
                tf.addfile(m)
                continue
            type_ = {EntryType.FILE: tarfile.REGTYPE, EntryType.DIRECTORY: tarfile.DIRTYPE,
                     EntryType.SYMLINK: tarfile.SYMTYPE}[e.type]
            m = _member(e.path, type_, e.info, e.size)
            if e.security_descriptor:
                m.pax_headers[PAX_RAW_SECURITY_DESCRIPTOR] = base64.b64encode(e.security_descriptor).decode()
            elif e.sddl:
                m.pax_headers[PAX_SECURITY_DESCRIPTOR] = e.sddl
            for name, value in sorted(e.extended_attributes.items()):
                m.pax_headers[PAX_EA_PREFIX + name] = base64.b64encode(value).decode()
            if e.type == EntryType.SYMLINK:
                m.linkname = e.link_target
                if e.mount_point:
                    m.pax_headers[PAX_MOUNT_POINT] = "1"
            tf.addfile(m, io.BytesIO(e.data) if e.type == EntryType.FILE else None)
            for stream_name, content in e.streams.items():
                s = tarfile.TarInfo(f"{e.path}:{stream_name}")
                s.size = len(content)
                s.mode = 0
                s.mtime = m.mtime
                tf.addfile(s, io.BytesIO(content))


# -- a layer on a Linux folder ------------------------------------------------------------

TOMBSTONES_FILE = "tombstones.txt"
TOMBSTONES_HEADER = "\ufeffVersion 1.0"
METADATA_FILE = "windows-metadata.json"


class LayerDirectory:
    """A Windows layer unpacked into a Linux folder, and exported back.

    On-disk form (our own, modelled on hcsshim's legacy layer folder):

    - ``Files/``, ``Hives/``, ``UtilityVM/`` hold the entries as ordinary files,
      folders and symlinks (symlink targets kept verbatim, never followed);
    - ``tombstones.txt``: the whiteouts of ``Files/``, in hcsshim's format
      (UTF-8 BOM + ``Version 1.0``, then one ``\\path`` per line, relative to ``Files``);
    - ``windows-metadata.json``: per path, what Linux cannot hold (attributes,
      the four times, security descriptor, EAs, junction flag, streams);
    - ``bcd.bak`` and friends: copies of the utility VM files import mutates.

    :meth:`apply` follows the import rules of hcsshim's layer writers: a base
    layer (no parents) gets its registry hive files ensured
    (``Files/Windows/System32/config/{DEFAULT,SAM,SECURITY,SOFTWARE,SYSTEM}``)
    and, if it has a utility VM, must hold its BCD; a non-base layer with a
    utility VM starts from a hard-link clone of its first parent's
    ``UtilityVM/Files`` (only one UVM layer is supported), whiteouts under
    ``UtilityVM/Files`` delete there at once, and hard links may point into
    parent layers. Writes never follow a symlink out of the layer.
    """

    def __init__(self, root: str | os.PathLike[str], parents: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.root = Path(root)
        self.parents = [Path(p) for p in parents]
        self.metadata: dict[str, dict[str, object]] = {}
        self.tombstones: list[str] = []

    @property
    def base(self) -> bool:
        return not self.parents

    # -- paths --

    def _path(self, rel: str) -> Path:
        """``root/rel`` after checking no component below root is a symlink."""
        current = self.root
        parts = rel.split("/")
        for part in parts[:-1]:
            current = current / part
            if current.is_symlink():
                raise InvalidLayer(f"{rel!r}: path goes through a symlink ({current.name})")
        return current / parts[-1]

    def _remove(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()

    # -- import --

    def apply(self, stream: IO[bytes]) -> int:
        """Apply a layer tar to this (empty) folder; returns the bytes of file data written.

        Blocking: run it in a thread. Raises InvalidLayer (see :func:`read_layer`
        and the class doc) and OSError.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        total = 0
        added: set[str] = set()
        has_uvm = False
        for e in read_layer(stream, base=self.base):
            if e.type == EntryType.WHITEOUT:
                if _under(e.path, FILES):
                    self.tombstones.append(e.path)
                else:
                    if not has_uvm:
                        self._clone_uvm()
                        has_uvm = True
                    target = self._path(e.path)
                    if not (target.exists() or target.is_symlink()):
                        raise InvalidLayer(f"{e.path!r}: tombstone of a file the utility VM does not have")
                    self._remove(target)
                    self.metadata.pop(e.path, None)
                continue
            if e.path == UTILITY_VM and not self.base and not has_uvm:
                self._clone_uvm()
                has_uvm = True
            if e.type == EntryType.LINK:
                self._link(e, added)
                added.add(e.path)
                continue
            target = self._path(e.path)
            if e.type == EntryType.DIRECTORY:
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    self._remove(target)
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists() or target.is_symlink():
                    self._remove(target)
                if e.type == EntryType.SYMLINK:
                    os.symlink(e.link_target, target)
                else:
                    with open(target, "xb") as f:
                        f.write(e.data)
                    total += len(e.data)
                    if e.path in MUTATED_FILES:
                        (self.root / MUTATED_FILES[e.path]).write_bytes(e.data)
            self.metadata[e.path] = _metadata(e)
            added.add(e.path)
        for path in self.tombstones:
            if path in added:
                self._remove(self._path(path))
                self.metadata.pop(path, None)
        if self.base:
            self._ensure_base_layer()
        self._save()
        return total

    def _clone_uvm(self) -> None:
        """Hard-link clone of the first parent's utility VM files (copies for the mutated ones)."""
        src_root = self.parents[0]
        src = src_root / UTILITY_VM_FILES
        if not src.is_dir() or src.is_symlink():
            raise InvalidLayer("layer has a UtilityVM but its parent has none")
        for dirpath, dirnames, filenames in os.walk(src):
            rel_dir = Path(dirpath).relative_to(src_root)
            (self.root / rel_dir).mkdir(parents=True, exist_ok=True)
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                rel = (rel_dir / name).as_posix()
                s, d = Path(dirpath) / name, self.root / rel
                if s.is_symlink():
                    os.symlink(os.readlink(s), d)
                elif rel in MUTATED_FILES:
                    shutil.copy2(s, d)
                else:
                    _link_or_copy(s, d)
        parent_meta = _load_metadata(src_root)
        self.metadata.update({k: v for k, v in parent_meta.items()
                              if k == UTILITY_VM_FILES or _under(k, UTILITY_VM_FILES)})

    def _link(self, e: LayerEntry, added: set[str]) -> None:
        target = self._path(e.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        if e.link_target in added or _under(e.link_target, UTILITY_VM_FILES):
            source = self._path(e.link_target)
        else:
            for parent in self.parents:
                candidate = parent / e.link_target
                if candidate.exists() or candidate.is_symlink():
                    source = candidate
                    break
            else:
                raise InvalidLayer(f"{e.path!r}: failed to find link target {e.link_target!r}")
        if not (source.exists() or source.is_symlink()):
            raise InvalidLayer(f"{e.path!r}: failed to find link target {e.link_target!r}")
        if target.exists() or target.is_symlink():
            self._remove(target)
        _link_or_copy(source, target)
        meta = self.metadata.get(e.link_target) or _load_metadata_for(self.parents, e.link_target)
        if meta is not None:
            self.metadata[e.path] = dict(meta)

    def _ensure_base_layer(self) -> None:
        config = self.root / REGISTRY_FILES
        config.mkdir(parents=True, exist_ok=True)
        for hive in BASE_HIVES:
            p = config / hive
            if p.is_symlink() or (p.exists() and not p.is_file()):
                raise InvalidLayer(f"{REGISTRY_FILES}/{hive} has an unexpected file type")
            if not p.exists():
                p.touch()
        uvm = self.root / UTILITY_VM_FILES
        if uvm.exists() or uvm.is_symlink():
            if uvm.is_symlink() or not uvm.is_dir():
                raise InvalidLayer(f"{UTILITY_VM_FILES} has an unexpected file type")
            bcd = self.root / UVM_BCD
            if bcd.is_symlink() or not bcd.is_file():
                raise InvalidLayer("UtilityVM must contain 'EFI/Microsoft/Boot/BCD'")

    def _save(self) -> None:
        (self.root / METADATA_FILE).write_text(json.dumps(self.metadata, sort_keys=True))
        if not self.base:
            lines = [TOMBSTONES_HEADER] + ["\\" + t[len(FILES) + 1:].replace("/", "\\")
                                           for t in self.tombstones]
            (self.root / TOMBSTONES_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")

    # -- export --

    def read_tombstones(self) -> list[str]:
        """The recorded whiteouts (``Files/...`` paths); InvalidLayer for a bad file."""
        path = self.root / TOMBSTONES_FILE
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        if not lines or lines[0] != TOMBSTONES_HEADER:
            raise InvalidLayer("invalid tombstones file")
        return [FILES + "/" + line[1:].replace("\\", "/") for line in lines[1:] if line]

    def entries(self) -> Iterator[LayerEntry]:
        """The layer's entries in export order: a base layer's ``Files`` then its utility VM
        files; otherwise every tree, each folder followed by the tombstones under it."""
        metadata = _load_metadata(self.root)
        tombstones: dict[str, list[str]] = {}
        for t in self.read_tombstones():
            tombstones.setdefault(posixpath.dirname(t), []).append(t)
        trees = [FILES, UTILITY_VM] if self.base else [FILES, HIVES, UTILITY_VM]
        for top in trees:
            if not (self.root / top).is_dir():
                continue
            for rel in self._walk(top):
                if self.base and _area(rel) == UTILITY_VM and rel != UTILITY_VM:
                    continue
                yield self._entry(rel, metadata)
                for t in sorted(tombstones.get(rel, ())):
                    yield LayerEntry(EntryType.WHITEOUT, t)

    def _walk(self, top: str) -> Iterator[str]:
        yield top
        path = self.root / top
        for name in sorted(os.listdir(path)):
            rel = f"{top}/{name}"
            child = path / name
            if child.is_dir() and not child.is_symlink():
                yield from self._walk(rel)
            else:
                yield rel

    def _entry(self, rel: str, metadata: dict[str, dict[str, object]]) -> LayerEntry:
        path = self.root / rel
        st = path.lstat()
        meta = metadata.get(rel, {})

        def number(key: str, default: int) -> int:
            value = meta.get(key, default)
            return value if isinstance(value, int) else default

        ns = st.st_mtime_ns
        info = WinFileInfo(
            attributes=number("attributes", FILE_ATTRIBUTE_DIRECTORY if stat.S_ISDIR(st.st_mode)
                              else FILE_ATTRIBUTE_ARCHIVE),
            creation_time=number("creation_time", ns), last_access_time=number("last_access_time", ns),
            last_write_time=number("last_write_time", ns), change_time=number("change_time", ns))
        if stat.S_ISLNK(st.st_mode):
            e = LayerEntry(EntryType.SYMLINK, rel, info, link_target=os.readlink(path),
                           mount_point=bool(meta.get("mount_point")))
        elif stat.S_ISDIR(st.st_mode):
            e = LayerEntry(EntryType.DIRECTORY, rel, info)
        else:
            e = LayerEntry(EntryType.FILE, rel, info, data=path.read_bytes())
        if meta.get("security_descriptor"):
            e.security_descriptor = base64.b64decode(str(meta["security_descriptor"]))
        e.sddl = str(meta.get("sddl", ""))
        e.extended_attributes = _decode_map(meta.get("extended_attributes"))
        e.streams = _decode_map(meta.get("streams"))
        return e

    def export(self, stream: BinaryIO) -> None:
        """Write this layer as a layer tar (blocking: run it in a thread)."""
        write_layer(stream, self.entries())


def _metadata(e: LayerEntry) -> dict[str, object]:
    meta: dict[str, object] = {
        "attributes": e.info.attributes, "creation_time": e.info.creation_time,
        "last_access_time": e.info.last_access_time, "last_write_time": e.info.last_write_time,
        "change_time": e.info.change_time,
    }
    if e.security_descriptor:
        meta["security_descriptor"] = base64.b64encode(e.security_descriptor).decode()
    if e.sddl:
        meta["sddl"] = e.sddl
    if e.extended_attributes:
        meta["extended_attributes"] = {k: base64.b64encode(v).decode()
                                       for k, v in e.extended_attributes.items()}
    if e.streams:
        meta["streams"] = {k: base64.b64encode(v).decode() for k, v in e.streams.items()}
    if e.mount_point:
        meta["mount_point"] = True
    return meta


def _decode_map(value: object) -> dict[str, bytes]:
    if not isinstance(value, dict):
        return {}
    return {str(k): base64.b64decode(str(v)) for k, v in value.items()}


def _load_metadata(root: Path) -> dict[str, dict[str, object]]:
    try:
        return dict(json.loads((root / METADATA_FILE).read_text()))
    except FileNotFoundError:
        return {}


def _load_metadata_for(parents: Sequence[Path], rel: str) -> dict[str, object] | None:
    for parent in parents:
        meta = _load_metadata(parent).get(rel)
        if meta is not None:
            return meta
    return None


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def now_info(directory: bool = False) -> WinFileInfo:
    """File information stamped now (helper for building layers)."""
    ns = time.time_ns()
    return WinFileInfo(FILE_ATTRIBUTE_DIRECTORY if directory else FILE_ATTRIBUTE_ARCHIVE, ns, ns, ns, ns)
