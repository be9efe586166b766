"""Layer stream compression: detect, decompress and compress (containerd's ``pkg/archive/compression``).

Everything here is a *blocking*, file-like API meant for a worker thread:

- :func:`detect` names the compression of a stream from its first bytes, as
  containerd's ``DetectCompression`` does: gzip (``1f 8b 08``), zstd (frame
  magic ``28 b5 2f fd`` or a skippable frame ``0x184D2A5?``), otherwise
  uncompressed;
- :func:`decompress` wraps a raw binary reader in a reader of the
  uncompressed bytes, sniffing the compression (``compression=None``) or
  trusting the caller's;
- :func:`open_layer` does what containerd's diff stream processors do for a
  layer media type: a compressed type (gzip, zstd, or Docker's ambiguous
  uncompressed ``…rootfs.diff.tar``) is sniffed and decompressed, a plain
  OCI tar (and a wrapped ``+encrypted`` type) is read as it is; a media type
  that is not a layer raises :class:`~aiocontainerd.errors.Unimplemented`;
- :func:`compressor` returns a writer that compresses into a destination and
  finishes the stream on ``close()`` (the destination stays open).

gzip uses ``isal.igzip_threaded`` (ISA-L; decompression and compression run in
their own thread and release the GIL), zstd uses ``zstandard``.
"""

from __future__ import annotations

import enum
import io
from typing import IO, Any

from ..errors import ContainerdError, InvalidArgument, Unimplemented
from ..remotes import mediatypes

#: Bytes read ahead to sniff the compression (containerd peeks 10).
SNIFF_SIZE = 10
#: Block size of the threaded gzip reader/writer and of zstd reads.
BLOCK_SIZE = 1 << 20

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_SKIPPABLE_START = 0x184D2A50
_ZSTD_SKIPPABLE_MASK = 0xFFFFFFF0


class Compression(enum.Enum):
    """A layer stream's compression; values are containerd's names (``""``: none)."""

    UNCOMPRESSED = ""
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def extension(self) -> str:
        """File extension as containerd names it (``gz``, ``zst``, ``""``)."""
        return {"gzip": "gz", "zstd": "zst"}.get(self.value, "")


def detect(head: bytes) -> Compression:
    """The compression a stream starting with ``head`` uses (at least 8 bytes for zstd
    skippable frames); anything unrecognised is :attr:`Compression.UNCOMPRESSED`."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    if len(head) >= 8 and int.from_bytes(head[:4], "little") & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE_START:
        return Compression.ZSTD
    return Compression.UNCOMPRESSED


def for_media_type(media_type: str) -> Compression | None:
    """The compression a layer media type promises; ``None`` when it must be sniffed.

    containerd decompresses every *compressed* layer type by sniffing the
    magic (so a gzip layer mislabelled zstd still works), and Docker's plain
    ``…rootfs.diff.tar`` may hold compressed bytes: those are ``None``. A plain
    OCI tar and wrapped types (``+encrypted``) are read as they are.
    Raises :class:`Unimplemented` for a media type that is not a layer.
    """
    try:
        kind = mediatypes.compression(mediatypes.base(media_type))
    except ValueError:
        raise Unimplemented(f"unsupported layer media type {media_type!r}") from None
    return Compression.UNCOMPRESSED if kind == "" else None


def media_type_compression(media_type: str) -> Compression:
    """Compression to *write* a diff of ``media_type`` with (the walking differ's choice).

    Only ``application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]`` are produced, as
    containerd; anything else raises :class:`Unimplemented` "unsupported diff media type".
    """
    table = {mediatypes.OCI_LAYER: Compression.UNCOMPRESSED,
             mediatypes.OCI_LAYER_GZIP: Compression.GZIP,
             mediatypes.OCI_LAYER_ZSTD: Compression.ZSTD}
    try:
        return table[media_type]
    except KeyError:
        raise Unimplemented(f"unsupported diff media type: {media_type}") from None


class _Prefixed(io.RawIOBase):
    """A raw reader that first returns ``head`` (bytes already read) and then ``raw``'s bytes."""

    def __init__(self, head: bytes, raw: IO[bytes], close_raw: bool) -> None:
        self._head = memoryview(head)
        self._raw = raw
        self._close_raw = close_raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            return readinto(view) or 0
        data = self._raw.read(len(view))
        view[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            super().close()
            if self._close_raw:
                self._raw.close()


class _Reader(io.RawIOBase):
    """A reader over ``inner`` that closes ``owned`` after it, and (``name`` set) turns a
    decompressor's own errors into InvalidArgument naming the format."""

    def __init__(self, inner: Any, owned: tuple[Any, ...] = (), *, close_inner: bool = True,
                 name: str = "") -> None:
        self._inner = inner
        self._owned = owned
        self._close_inner = close_inner
        self._name = name

    def readable(self) -> bool:
        return True

    def _call(self, fn: Any, arg: Any) -> Any:
        try:
            return fn(arg)
        except ContainerdError:
            raise
        except (MemoryError, RecursionError):
            raise
        except Exception as e:  # zlib/ISA-L/zstd errors, truncation (EOFError), I/O errors
            if self._name:
                raise InvalidArgument(f"corrupt {self._name} layer data: {e}") from e
            raise

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        readinto = getattr(self._inner, "readinto", None)
        if readinto is not None:
            return self._call(readinto, view) or 0
        data = self._call(self._inner.read, len(view))
        view[:len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        # large reads straight from the decompressor, without an extra copy
        if size is None or size < 0:
            return self._call(lambda _: self._inner.read(), None)
        return self._call(self._inner.read, size)

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        try:
            if self._close_inner:
                self._inner.close()
        finally:
            for obj in self._owned:
                obj.close()


def _read_head(raw: IO[bytes], size: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        data = raw.read(size - got)
        if not data:
            break
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def decompress(raw: IO[bytes], compression: Compression | None = None, *,
               close_raw: bool = True) -> IO[bytes]:
    """A reader of the uncompressed bytes of ``raw`` (blocking; use in a worker thread).

    ``compression=None`` sniffs the first bytes (:func:`detect`). Closing the
    returned reader stops the decompressor and, with ``close_raw``, closes ``raw``.
    Corrupt compressed data raises :class:`~aiocontainerd.errors.InvalidArgument`
    from ``read``.
    """
    source: Any = raw
    if compression is None:
        head = _read_head(raw, SNIFF_SIZE)
        compression = detect(head)
        source = _Prefixed(head, raw, close_raw)
        owned: tuple[Any, ...] = (source,)
    else:
        owned = (raw,) if close_raw else ()
    if compression is Compression.UNCOMPRESSED:
        return _Reader(source, owned, close_inner=False)  # type: ignore[return-value]
    if compression is Compression.GZIP:
        from isal import igzip_threaded

        reader = igzip_threaded.open(source, "rb", block_size=BLOCK_SIZE)
        return _Reader(reader, owned, name="gzip")  # type: ignore[return-value]
    if compression is Compression.ZSTD:
        import zstandard

        zreader = zstandard.ZstdDecompressor().stream_reader(
            source, read_size=BLOCK_SIZE, read_across_frames=True, closefd=False)
        return _Reader(zreader, owned, name="zstd")  # type: ignore[return-value]
    raise InvalidArgument(f"unsupported compression {compression!r}")


def open_layer(raw: IO[bytes], media_type: str, *, close_raw: bool = True) -> IO[bytes]:
    """The uncompressed tar stream of a layer blob read from ``raw`` (see :func:`for_media_type`)."""
    return decompress(raw, for_media_type(media_type), close_raw=close_raw)


class _Compressor(io.RawIOBase):
    """A writer compressing into ``dest``; ``close()`` ends the stream, ``dest`` stays open."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._finished = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._inner.write(b)
        return len(memoryview(b).cast("B"))

    def flush(self) -> None:
        if not self.closed and not self._finished:
            self._inner.flush()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._inner.close()
        finally:
            self._finished = True
            super().close()


def compressor(dest: Any, compression: Compression, *, level: int | None = None) -> IO[bytes]:
    """A writer that compresses into ``dest`` (blocking; use in a worker thread).

    ``close()`` writes the end of the compressed stream and leaves ``dest``
    open. ``level``: ISA-L 0-3 for gzip (default 2), zstd 1-22 (default 3).
    Uncompressed: writes go straight to ``dest``.
    """
    if compression is Compression.UNCOMPRESSED:
        return _Compressor(_Unclosed(dest))  # type: ignore[return-value]
    if compression is Compression.GZIP:
        from isal import igzip_threaded

        kwargs = {} if level is None else {"compresslevel": level}
        return _Compressor(igzip_threaded.open(_Unclosed(dest), "wb", threads=1,  # type: ignore[return-value]
                                               block_size=BLOCK_SIZE, **kwargs))
    if compression is Compression.ZSTD:
        import zstandard

        cctx = zstandard.ZstdCompressor(level=3 if level is None else level)
        return _Compressor(cctx.stream_writer(dest, closefd=False))  # type: ignore[return-value]
    raise InvalidArgument(f"unsupported compression {compression!r}")


class _Unclosed(io.RawIOBase):
    """``dest`` seen through a writer whose ``close()`` only flushes."""

    def __init__(self, dest: Any) -> None:
        self._dest = dest

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._dest.write(b)
        return len(memoryview(b).cast("B"))

    def flush(self) -> None:
        if not self.closed:
            self._dest.flush()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            super().close()


__all__ = ["Compression", "compressor", "decompress", "detect", "for_media_type",
           "media_type_compression", "open_layer"]
