"""The fetcher: the bytes of a descriptor from a repository, resumable.

Contract::

    fetcher = resolver.fetcher("docker.io/library/busybox:latest")
    async for chunk in fetcher.fetch(desc, offset=0):   # bytes from offset to the end
        ...
    body = await fetcher.read(manifest_desc)            # whole, size and digest verified

:meth:`Fetcher.fetch` GETs ``/v2/<repo>/manifests/<digest>`` for manifests
and indexes and ``/v2/<repo>/blobs/<digest>`` for everything else, from each
host able to *pull* in turn until one has it. It does not use a descriptor's
``urls`` (foreign layers elsewhere on the internet are not contacted): the
registry must hold the blob. Redirects (to blob storage) are followed without
credentials.

Resuming: ``offset > 0`` sends ``Range: bytes=<offset>-``. A ``206`` must
start at the offset; a ``200`` (range ignored) has its first ``offset`` bytes
discarded; a ``416`` at ``offset == size`` means nothing is left. If the
connection breaks mid-body (or ends before ``size``), the fetcher reconnects
with a Range from where it stopped — at most ``max_resumes`` times in a row
without progress — so a consumer sees one continuous stream.

:meth:`fetch` does not verify the digest (the content writer does on commit,
see :func:`~.fetch.fetch_blob`); it refuses more bytes than ``desc.size``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator

import aiohttp

from ..errors import ContainerdError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from . import mediatypes
from ._http import Repository, sanitize, status_error
from .descriptor import Descriptor, validate_digest
from .hosts import PULL

log = logging.getLogger("aiocontainerd.remotes")

CHUNK = 1 << 20
MAX_TOTAL_RESUMES = 1000  # a hard stop even while every reconnection makes progress
_BROKEN = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError, ConnectionError)


class Fetcher:
    """Reads content of one repository (see the module doc)."""

    def __init__(self, repo: Repository, *, max_resumes: int = 3) -> None:
        self.repo = repo
        self.max_resumes = max_resumes

    @property
    def name(self) -> str:
        return self.repo.ref.name

    async def fetch(self, desc: Descriptor, offset: int = 0) -> AsyncIterator[bytes]:
        """Yield the bytes of ``desc`` from ``offset`` to the end (see the module doc).

        Raises NotFound (no host has it), InvalidArgument (bad digest or offset),
        FailedPrecondition (access denied; more data than the descriptor says),
        Unavailable (network failures beyond the resume budget, 5xx).
        """
        validate_digest(desc.digest)
        if offset < 0 or (desc.size and offset > desc.size):
            raise InvalidArgument(f"offset {offset} outside of {desc.digest} ({desc.size} bytes)")
        if desc.size and offset == desc.size:
            return
        position = offset
        stalled = 0
        resumes = 0
        while True:
            resp = await self._open(desc, position)
            if resp is None:
                return
            started_at = position
            broken: BaseException | None = None
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if desc.size and position + len(chunk) > desc.size:
                        raise FailedPrecondition(
                            f"{desc.digest}: registry sent more than the descriptor's {desc.size} bytes")
                    position += len(chunk)
                    yield chunk
            except _BROKEN as e:
                broken = e
            finally:
                resp.close()
            if not desc.size:
                if broken is None:
                    return
            elif position == desc.size:
                return
            elif broken is None:
                broken = ConnectionError("connection closed early")
            stalled = 0 if position > started_at else stalled + 1
            resumes += 1
            if stalled > self.max_resumes or resumes > MAX_TOTAL_RESUMES:
                raise Unavailable(f"fetching {desc.digest} from {self.name} failed at offset {position}: "
                                  f"{type(broken).__name__}: {broken}; gave up after {resumes} attempts")
            log.info("download broken, resuming", extra={"fields": {
                "digest": desc.digest, "offset": position, "error": str(broken) or type(broken).__name__}})

    async def _open(self, desc: Descriptor, offset: int) -> aiohttp.ClientResponse | None:
        """A response whose remaining body starts at ``offset``; ``None`` if nothing is left."""
        hosts = self.repo.filter(PULL)
        if not hosts:
            raise NotFound(f"{self.name}: no pull hosts configured: not found")
        kind = "manifests" if mediatypes.is_manifest_or_index(desc.media_type) else "blobs"
        first_err: ContainerdError | None = None
        for i, host in enumerate(hosts):
            req = self.repo.request(host, "GET", kind, desc.digest)
            req.headers["Accept"] = f"{desc.media_type}, */*" if desc.media_type else "*/*"
            req.headers["Accept-Encoding"] = "identity"
            if offset:
                req.headers["Range"] = f"bytes={offset}-"
            try:
                resp = await self.repo.transport.send(req, last_host=i == len(hosts) - 1)
            except ContainerdError as e:
                first_err = first_err or e
                continue
            if resp.status == 206:
                content_range = resp.headers.get("Content-Range", "")
                if not content_range.startswith(f"bytes {offset}-"):
                    resp.close()
                    raise FailedPrecondition(f"{desc.digest}: unhandled content range in response: "
                                             f"{content_range!r} (asked for bytes={offset}-)")
                return resp
            if resp.status == 200:
                if offset:
                    await self._discard(resp, offset, desc)
                return resp
            if resp.status == 416 and desc.size and offset >= desc.size:
                resp.release()
                return None
            err = await status_error(resp, action="pull", what=f"content {desc.digest}")
            first_err = first_err or err
        if first_err is None or isinstance(first_err, NotFound):
            raise NotFound(f"could not fetch content descriptor {desc.digest} ({desc.media_type}) "
                           f"from remote {self.name}: not found")
        raise first_err

    @staticmethod
    async def _discard(resp: aiohttp.ClientResponse, count: int, desc: Descriptor) -> None:
        """Drop the first ``count`` bytes of a body whose server ignored our Range."""
        log.debug("registry ignored the range request, discarding",
                  extra={"fields": {"url": sanitize(str(resp.url)), "bytes": count}})
        left = count
        try:
            while left:
                chunk = await resp.content.read(min(left, CHUNK))
                if not chunk:
                    break
                left -= len(chunk)
        except _BROKEN as e:
            resp.close()
            raise Unavailable(f"{desc.digest}: failed to discard to offset {count}: {e}") from None
        if left:
            resp.close()
            raise Unavailable(f"{desc.digest}: unable to discard to offset {count}")

    async def read(self, desc: Descriptor, max_size: int | None = None) -> bytes:
        """The whole content of ``desc``, size and digest verified (manifests, indexes, configs).

        ``max_size`` defaults to the manifest size limit. Raises InvalidArgument
        (too large), FailedPrecondition (size or digest mismatch), and what
        :meth:`fetch` raises.
        """
        limit = self.repo.limits.max_manifest_size if max_size is None else max_size
        if desc.size > limit:
            raise InvalidArgument(f"{desc.digest} is {desc.size} bytes, larger than the limit of "
                                  f"{limit} bytes")
        parts: list[bytes] = []
        total = 0
        async for chunk in self.fetch(desc):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise InvalidArgument(f"{desc.digest} is larger than the limit of {limit} bytes")
        body = b"".join(parts)
        if len(body) != desc.size:
            raise FailedPrecondition(f"{desc.digest}: got {len(body)} bytes, expected {desc.size}")
        algorithm = desc.digest.split(":", 1)[0]
        actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if actual != desc.digest:
            raise FailedPrecondition(f"content from {self.name} has digest {actual}, expected {desc.digest}")
        return body
