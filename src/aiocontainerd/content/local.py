"""Blobs on disk, content-addressed; crash-safe, resumable writes (containerd's local store).

Layout under the plugin root (``<root>/io.containerd.content.v1.content``)::

    blobs/sha256/<hex>                 committed blobs, read-only (0444)
    ingest/<sha256(ref)>/data          bytes written so far
    ingest/<sha256(ref)>/ref           the ref, for listing
    ingest/<sha256(ref)>/startedat     when the write began (ns since epoch)
    ingest/<sha256(ref)>/total         the expected size, if known

Write lifecycle: :meth:`LocalStore.writer` locks the ref (a second writer
for the same ref gets :class:`~aiocontainerd.errors.Unavailable` "ref …
locked") and opens or resumes its ingest — resuming re-hashes the bytes
already there, so a write broken by a disconnect or a daemon restart
continues at :attr:`Writer.offset`. :meth:`Writer.commit` fsyncs, checks size
and digest, renames the data into ``blobs/`` and fsyncs the folder; a crash
at any point leaves either the ingest (resumable) or the whole blob, never a
partial blob. Committing a digest that is already stored raises
AlreadyExists and keeps one copy. Hashing and file I/O run in threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
import shutil
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable

_DIGEST = re.compile(r"^sha256:([a-f0-9]{64})$")
READ_CHUNK = 1 << 20


def parse_digest(digest: str) -> str:
    """The hex of a ``sha256:<hex>`` digest. Raises InvalidArgument for anything else."""
    m = _DIGEST.match(digest)
    if not m:
        if digest.partition(":")[0] in ("sha384", "sha512"):
            raise InvalidArgument(f"digest {digest!r}: unsupported algorithm (sha256 only)")
        raise InvalidArgument(f"invalid digest {digest!r}")
    return m.group(1)


@dataclasses.dataclass(frozen=True)
class BlobInfo:
    """A committed blob: digest, size in bytes, commit time (ns since epoch)."""

    digest: str
    size: int
    created_at: int


@dataclasses.dataclass(frozen=True)
class Status:
    """A write in progress: ``offset`` bytes written of ``total`` (0: unknown); times in ns."""

    ref: str
    offset: int
    total: int
    expected: str
    started_at: int
    updated_at: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Writer:
    """One locked write; obtain from :meth:`LocalStore.writer`. Not safe for concurrent use.

    Call :meth:`write` (appends), optionally :meth:`truncate` (0 restarts),
    then :meth:`commit`, or :meth:`close` to keep the ingest for later.
    """

    def __init__(self, store: LocalStore, ref: str, path: Path, total: int, expected: str,
                 started_at: int, offset: int, hasher: hashlib._Hash) -> None:
        self._store = store
        self.ref = ref
        self.path = path
        self.total = total
        self.expected = expected
        self.started_at = started_at
        self.updated_at = started_at
        self.offset = offset
        self._hasher = hasher
        self._file = open(path / "data", "ab")
        self._closed = False

    def digest(self) -> str:
        """The digest of the bytes written so far."""
        return "sha256:" + self._hasher.hexdigest()

    def status(self) -> Status:
        return Status(self.ref, self.offset, self.total, self.expected, self.started_at, self.updated_at)

    def _write(self, data: bytes | memoryview) -> None:
        self._file.write(data)
        self._hasher.update(data)

    async def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (hashing and writing in a thread)."""
        self._check_open()
        if not data:
            return
        if len(data) < 64 * 1024:
            self._write(data)
        else:
            await asyncio.to_thread(self._write, data)
        self.offset += len(data)
        self.updated_at = time.time_ns()

    async def truncate(self, size: int) -> None:
        """Discard everything written (only ``size == 0`` is supported, as containerd's)."""
        self._check_open()
        if size != 0:
            raise InvalidArgument("truncate is only supported to 0")
        await asyncio.to_thread(self._file.truncate, 0)
        self._hasher = hashlib.sha256()
        self.offset = 0
        self.updated_at = time.time_ns()

    def _commit(self, size: int, expected: str) -> str:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        actual_size = os.stat(self.path / "data").st_size
        if size and size != actual_size:
            raise FailedPrecondition(f"unexpected commit size {actual_size}, expected {size}")
        digest = self.digest()
        if expected and expected != digest:
            raise FailedPrecondition(f"unexpected commit digest {digest}, expected {expected}")
        target = self._store.blob_path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(self.path, ignore_errors=True)
            raise AlreadyExists(f"content {digest}: already exists")
        os.chmod(self.path / "data", 0o444)
        os.rename(self.path / "data", target)
        _fsync_dir(target.parent)
        shutil.rmtree(self.path, ignore_errors=True)
        return digest

    async def commit(self, size: int = 0, expected: str = "") -> str:
        """Verify and store the blob; returns its digest. The writer is closed after.

        ``size``/``expected`` (or those given at open) must match when set.
        Raises FailedPrecondition (mismatch: the ingest stays, so the caller may
        truncate and retry, or abort), AlreadyExists (blob already stored; the
        ingest is removed).
        """
        self._check_open()
        self._closed = True
        try:
            return await asyncio.to_thread(self._commit, size or self.total,
                                           expected or self.expected)
        finally:
            self._store._unlock(self.ref)

    def close(self) -> None:
        """Release the ref, keeping the ingest so a later writer resumes it."""
        if not self._closed:
            self._closed = True
            self._file.close()
            self._store._unlock(self.ref)

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f"writer for ref {self.ref!r} is closed")



#: the largest blob :meth:`LocalStore.read_small` reads on the calling thread, bytes
INLINE_READ_MAX = 64 << 10
#: :meth:`LocalStore.read` reads a chunk up to this size from the page cache on the calling
#: thread (``RWF_NOWAIT``: never waits for the disk) before it would hop to a worker thread
CACHED_READ_MAX = 128 << 10


def _cached_read(fd: int, size: int, offset: int) -> bytes | None:
    """Up to ``size`` bytes at ``offset`` if the page cache holds them (``preadv2`` with
    ``RWF_NOWAIT``, Linux 4.14+), else None: nothing here waits for a disk. ``ctr content
    get`` reads a blob in 32 KiB Read calls; a worker-thread hop per call doubled their
    latency."""
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except (OSError, NotImplementedError, AttributeError):
        return None          # not cached (EAGAIN), or no RWF_NOWAIT here: the thread reads it
    if got == 0:
        return None          # nothing cached (or past the end): the thread finds out which
    del buf[got:]
    return bytes(buf)


def _span(digest: str, length: int, offset: int, size: int) -> int:
    """How many bytes a read of ``size`` (0: to the end) from ``offset`` returns of a blob
    of ``length`` bytes. Raises InvalidArgument when ``offset`` is past the end."""
    if offset > length:
        raise InvalidArgument(f"offset {offset} past the end of {digest} ({length} bytes)")
    return (length - offset) if size == 0 else min(size, length - offset)

class LocalStore:
    """The blobs and ingests under ``root`` (see the module doc)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._locked: dict[str, Writer | None] = {}
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "ingest").mkdir(parents=True, exist_ok=True)

    def blob_path(self, digest: str) -> Path:
        """Path of the blob ``digest`` (which may not exist). Raises InvalidArgument."""
        return self.root / "blobs" / "sha256" / parse_digest(digest)

    def _ingest_path(self, ref: str) -> Path:
        return self.root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()

    async def info(self, digest: str) -> BlobInfo:
        """Size and commit time of a blob. Raises NotFound, InvalidArgument."""
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        return BlobInfo(digest, st.st_size, st.st_mtime_ns)

    def exists(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    async def read(self, digest: str, offset: int = 0, size: int = 0,
                   chunk: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """Yield the blob's bytes from ``offset``, ``size`` of them (0: to the end).

        Raises NotFound, InvalidArgument (negative offset or size, offset past the end).
        """
        if offset < 0 or size < 0:
            raise InvalidArgument("offset and size must not be negative")
        try:
            fd = os.open(self.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        try:
            remaining = _span(digest, os.fstat(fd).st_size, offset, size)
            while remaining > 0:
                n = min(chunk, remaining)
                data = _cached_read(fd, n, offset) if n <= CACHED_READ_MAX else None
                if data is None:
                    data = await asyncio.to_thread(os.pread, fd, n, offset)
                if not data:
                    break
                offset += len(data)
                remaining -= len(data)
                yield data
        finally:
            os.close(fd)

    def read_small(self, digest: str, offset: int = 0, size: int = 0) -> bytes | None:
        """:meth:`read` in one piece, on the calling thread, for a blob of at most
        :data:`INLINE_READ_MAX` bytes (manifests, indexes, configs): one open and one read
        of a cached page cost less than :meth:`read`'s worker-thread hops, which queue
        behind mounts and removals when many containers start at once. Same bytes, same
        errors; None when the file is not a regular file that small (the size a caller
        expects is not trusted to bound work on its thread): then use :meth:`read`."""
        if offset < 0 or size < 0:
            raise InvalidArgument("offset and size must not be negative")
        try:
            fd = os.open(self.blob_path(digest), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > INLINE_READ_MAX:
                return None
            remaining = _span(digest, st.st_size, offset, size)
            parts: list[bytes] = []
            while remaining > 0:
                data = os.pread(fd, remaining, offset)
                if not data:
                    break
                parts.append(data)
                offset += len(data)
                remaining -= len(data)
            return b"".join(parts)
        finally:
            os.close(fd)

    async def delete(self, digest: str) -> None:
        """Remove a blob. Raises NotFound."""
        try:
            await asyncio.to_thread(os.unlink, self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}: not found") from None

    def _walk(self) -> list[BlobInfo]:
        out = []
        with os.scandir(self.root / "blobs" / "sha256") as it:
            for entry in it:
                if len(entry.name) == 64:
                    st = entry.stat()
                    out.append(BlobInfo("sha256:" + entry.name, st.st_size, st.st_mtime_ns))
        return out

    async def walk(self) -> list[BlobInfo]:
        """Every committed blob (scanned in a thread)."""
        return await asyncio.to_thread(self._walk)

    def _open(self, ref: str, total: int, expected: str) -> tuple[Path, int, int, hashlib._Hash, int, str]:
        path = self._ingest_path(ref)
        hasher = hashlib.sha256()
        if path.exists() and (path / "data").exists():
            started = int((path / "startedat").read_text() or 0)
            saved_total = int((path / "total").read_text() or 0) if (path / "total").exists() else 0
            saved_expected = (path / "expected").read_text() if (path / "expected").exists() else ""
            with open(path / "data", "rb") as f:
                while block := f.read(READ_CHUNK):
                    hasher.update(block)
                offset = f.tell()
            if total and saved_total and total != saved_total:
                raise FailedPrecondition(
                    f"ref {ref!r} was started with total {saved_total}, not {total}")
            return path, offset, started, hasher, total or saved_total, expected or saved_expected
        shutil.rmtree(path, ignore_errors=True)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        started = time.time_ns()
        (tmp / "ref").write_text(ref)
        (tmp / "startedat").write_text(str(started))
        (tmp / "total").write_text(str(total))
        (tmp / "expected").write_text(expected)
        (tmp / "data").touch()
        os.rename(tmp, path)
        return path, 0, started, hasher, total, expected

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        """Lock ``ref`` and open (or resume) its ingest.

        ``total``: expected size (0: unknown); ``expected``: digest the commit must
        produce. Raises InvalidArgument (empty ref, bad digest), Unavailable (ref locked),
        FailedPrecondition (resumed with a different total).
        """
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            parse_digest(expected)
        if ref in self._locked:
            raise Unavailable(f"ref {ref} locked: unavailable")
        self._locked[ref] = None
        try:
            path, offset, started, hasher, total, expected = await asyncio.to_thread(
                self._open, ref, total, expected)
            w = Writer(self, ref, path, total, expected, started, offset, hasher)
        except BaseException:
            self._locked.pop(ref, None)
            raise
        self._locked[ref] = w
        return w

    def _unlock(self, ref: str) -> None:
        self._locked.pop(ref, None)

    def locked(self, ref: str) -> bool:
        """Whether a live writer holds ``ref``."""
        return ref in self._locked

    def _status(self, path: Path) -> Status | None:
        try:
            ref = (path / "ref").read_text()
            started = int((path / "startedat").read_text() or 0)
            total = int((path / "total").read_text() or 0)
            expected = (path / "expected").read_text() if (path / "expected").exists() else ""
            st = os.stat(path / "data")
        except (FileNotFoundError, ValueError):
            return None
        return Status(ref, st.st_size, total, expected, started, st.st_mtime_ns)

    async def status(self, ref: str) -> Status:
        """The state of the write ``ref``. Raises NotFound."""
        live = self._locked.get(ref)
        if live is not None:
            return live.status()
        st = await asyncio.to_thread(self._status, self._ingest_path(ref))
        if st is None:
            raise NotFound(f"ref {ref}: not found")
        return st

    def _statuses(self) -> list[Status]:
        out = []
        with os.scandir(self.root / "ingest") as it:
            for entry in it:
                if entry.is_dir() and not entry.name.endswith(".tmp"):
                    st = self._status(Path(entry.path))
                    if st is not None:
                        out.append(st)
        return out

    async def list_statuses(self) -> list[Status]:
        """Every write in progress (live writers report their in-memory state)."""
        found = await asyncio.to_thread(self._statuses)
        return [w.status() if (w := self._locked.get(s.ref)) is not None else s for s in found]

    async def abort(self, ref: str) -> None:
        """Remove the ingest ``ref``. Raises NotFound, Unavailable (a live writer holds it)."""
        if ref in self._locked:
            raise Unavailable(f"ref {ref} locked: unavailable")
        path = self._ingest_path(ref)
        if not path.exists():
            raise NotFound(f"ref {ref}: not found")
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def close(self) -> None:
        for w in list(self._locked.values()):
            if w is not None:
                w.close()


__all__ = ["BlobInfo", "LocalStore", "Status", "Writer", "parse_digest"]
