"""Fetch one blob into the content store, resuming an earlier partial write.

The piece a pull calls per descriptor (the caller bounds concurrency, by
default 3 at a time, and opens the writer under its lease)::

    writer = await store.writer(ref=f"remotes-{desc.digest}", total=desc.size, expected=desc.digest)
    try:
        await fetch_blob(fetcher, desc, writer)
    finally:
        writer.close()          # no-op after a commit; keeps the ingest after a failure

``writer`` is an :class:`aiocontainerd.content.Writer` (or anything with
``offset``, ``digest()``, ``write``, ``truncate``, ``commit``): bytes already
in the ingest are kept and the download continues from ``writer.offset`` with
a Range request. Before committing, the size and digest are checked; if a
resumed write turns out wrong (the earlier bytes were bad) it is restarted
from zero once, and if the registry's bytes are wrong the ingest is emptied
and FailedPrecondition raised — a corrupt blob never reaches ``blobs/``. A
blob that is already committed counts as success.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..errors import AlreadyExists, FailedPrecondition
from .descriptor import Descriptor
from .fetcher import Fetcher

log = logging.getLogger("aiocontainerd.remotes")

#: How many blobs a pull should download at once (containerd's max_concurrent_downloads).
DEFAULT_MAX_CONCURRENT_DOWNLOADS = 3


class BlobWriter(Protocol):
    """What :func:`fetch_blob` needs of a content writer."""

    offset: int

    def digest(self) -> str: ...

    async def write(self, data: bytes | memoryview) -> None: ...

    async def truncate(self, size: int) -> None: ...

    async def commit(self, size: int = 0, expected: str = "") -> str: ...


async def _copy(fetcher: Fetcher, desc: Descriptor, writer: BlobWriter) -> None:
    async for chunk in fetcher.fetch(desc, offset=writer.offset):
        await writer.write(chunk)


async def fetch_blob(fetcher: Fetcher, desc: Descriptor, writer: BlobWriter) -> str:
    """Download ``desc`` into ``writer`` and commit it; returns the digest (see the module doc).

    Raises FailedPrecondition (size or digest mismatch: the registry sent bad
    bytes), and whatever :meth:`Fetcher.fetch` raises (the writer is then left
    open with what it has, for a later resume).
    """
    if writer.offset > desc.size:
        await writer.truncate(0)
    resumed = writer.offset > 0
    await _copy(fetcher, desc, writer)
    if (writer.offset, writer.digest()) != (desc.size, desc.digest) and resumed:
        log.info("resumed download does not verify, starting over",
                 extra={"fields": {"digest": desc.digest, "got": writer.digest()}})
        await writer.truncate(0)
        await _copy(fetcher, desc, writer)
    if writer.offset != desc.size or writer.digest() != desc.digest:
        got, size = writer.digest(), writer.offset
        await writer.truncate(0)
        raise FailedPrecondition(f"content {desc.digest} from {fetcher.name} failed verification: "
                                 f"got {got} ({size} bytes), expected {desc.digest} ({desc.size} bytes)")
    try:
        return await writer.commit(desc.size, desc.digest)
    except AlreadyExists:
        return desc.digest
