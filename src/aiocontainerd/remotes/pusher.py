"""The pusher: content into a repository, as the OCI distribution spec describes.

Contract::

    pusher = resolver.pusher("127.0.0.1:5000/app:v1")
    await pusher.push(layer_desc, lambda offset: store.read(layer_desc.digest, offset))
    await pusher.push(config_desc, config_bytes)
    await pusher.push(manifest_desc, manifest_bytes)          # PUT …/manifests/v1

Blobs (anything not a manifest or index), on the first host able to *push*:

1. ``HEAD /v2/<repo>/blobs/<digest>`` — ``200``: already there, nothing sent.
2. Cross-repository mount, when the source repository is known (``mount_from``
   or the descriptor's ``containerd.io/distribution.source.<host>`` annotation,
   as containerd labels pulled content): ``POST …/blobs/uploads/?mount=…&from=…``
   — ``201``: mounted, nothing sent; ``202``: the registry opened an upload
   instead; ``401``: not allowed to read the source, start a plain upload.
3. ``POST …/blobs/uploads/`` → ``202`` + ``Location`` (relative or absolute;
   an upload URL on another host gets no credentials).
4. Blobs up to ``chunk_size`` bytes: one ``PUT <location>?digest=…`` with the
   body (monolithic). Larger: ``PATCH`` chunks with ``Content-Range``,
   following each response's ``Location`` (and the registry's
   ``OCI-Chunk-Min-Length``), then a closing ``PUT ?digest=…``.

Manifests and indexes: ``HEAD`` for existence (by tag, existing only if its
``Docker-Content-Digest`` is this digest), then ``PUT
/v2/<repo>/manifests/<tag-or-digest>`` with ``Content-Type`` the descriptor's
media type. The tag of the pusher's reference is used (containerd's
behaviour, so push children first and the root last), or the digest when
the reference pins another digest or ``by_digest=True``. The body is checked
against the descriptor (size, digest, manifest size limit) before sending.

The content (``reader``) is ``bytes``, an async iterable of chunks (one
pass), or a callable ``offset -> async iterable`` (repeatable, which lets a
refused request be retried after authenticating). The registry checks the
digest of what it received (``?digest=``); a failed upload is cancelled with
``DELETE <location>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TypeAlias

import aiohttp

from ..errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from . import mediatypes
from ._http import Repository, Request, sanitize, status_error, with_query
from .descriptor import Descriptor, validate_digest
from .hosts import PUSH, RegistryHost
from .reference import Reference

log = logging.getLogger("aiocontainerd.remotes")

DEFAULT_CHUNK_SIZE = 64 << 20
DISTRIBUTION_SOURCE_LABEL = "containerd.io/distribution.source"
Reader: TypeAlias = (bytes | bytearray | memoryview | AsyncIterable[bytes]
                     | Callable[[int], AsyncIterable[bytes]])


@dataclasses.dataclass(frozen=True)
class PushResult:
    """What a push did: ``exists`` (nothing sent), ``mounted_from`` (``host/repo``), or ``uploaded`` bytes."""

    digest: str
    exists: bool = False
    mounted_from: str = ""
    uploaded: int = 0
    location: str = ""


def distribution_source_key(ref: Reference) -> str:
    """The annotation/label naming the source repositories of content pulled from ``ref``'s host."""
    return f"{DISTRIBUTION_SOURCE_LABEL}.{ref.hostname}"


def select_mount_candidate(ref: Reference, annotations: Mapping[str, str]) -> str:
    """The source repository to mount from: the one sharing most leading path components.

    Candidates come from ``annotations[containerd.io/distribution.source.<host>]``
    (comma-separated repository paths); the target itself is skipped; ``""`` if none.
    """
    value = annotations.get(distribution_source_key(ref), "")
    target = ref.path.split("/")
    best, best_len = "", 0
    for repo in filter(None, value.split(",")):
        if repo == ref.path:
            continue
        common = 0
        for a, b in zip(target, repo.split("/"), strict=False):
            if a != b:
                break
            common += 1
        if common >= best_len:
            best, best_len = repo, common
    return best


async def _iterate(reader: Reader, offset: int = 0) -> AsyncIterator[bytes]:
    if isinstance(reader, bytes | bytearray | memoryview):
        data = bytes(reader)
        for i in range(offset, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]
        return
    source = reader(offset) if callable(reader) else reader
    async for chunk in source:
        if chunk:
            yield bytes(chunk)


class _Content:
    """One pass over a reader, cut into request bodies of exact sizes, counting what went out.

    A body that would come out short, or (for the final one) with bytes left over,
    raises InvalidArgument inside the request, which aborts it before the
    registry sees a complete body.
    """

    def __init__(self, reader: Reader, desc: Descriptor) -> None:
        self.source = _iterate(reader).__aiter__()
        self.desc = desc
        self.count = 0
        self._pending = b""

    async def _next(self) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        async for chunk in self.source:
            if chunk:
                return chunk
        return b""

    async def take(self, limit: int, final: bool = False) -> AsyncIterator[bytes]:
        """Yield exactly ``limit`` bytes; with ``final``, insist the content ends there."""
        left = limit
        while left > 0:
            chunk = await self._next()
            if not chunk:
                raise InvalidArgument(f"content of {self.desc.digest} ended after {self.count} bytes, "
                                      f"the descriptor says {self.desc.size}")
            if len(chunk) > left:
                chunk, self._pending = chunk[:left], chunk[left:]
            left -= len(chunk)
            if left == 0 and final:
                self._pending = self._pending or await self._next()
                if self._pending:
                    raise InvalidArgument(f"content of {self.desc.digest} is longer than the "
                                          f"descriptor's {self.desc.size} bytes")
            self.count += len(chunk)
            yield chunk


class Pusher:
    """Writes content into one repository (see the module doc)."""

    def __init__(self, repo: Repository, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if chunk_size <= 0:
            raise InvalidArgument("chunk_size must be positive")
        self.repo = repo
        self.chunk_size = chunk_size

    @property
    def ref(self) -> Reference:
        return self.repo.ref

    def _host(self) -> RegistryHost:
        hosts = self.repo.filter(PUSH)
        if not hosts:
            raise NotFound(f"{self.ref.name}: no push hosts configured: not found")
        return hosts[0]

    async def push(self, desc: Descriptor, reader: Reader, *, mount_from: str | None = None,
                   by_digest: bool = False) -> PushResult:
        """Push ``desc``'s content read from ``reader`` (see the module doc).

        Raises InvalidArgument (bad descriptor; a manifest body that does not
        match it or is over the limit; the registry refused the content),
        NotFound (no push host; repository unknown), FailedPrecondition (push
        access denied; digest mismatch reported by the registry), Unavailable
        (network, 5xx).
        """
        validate_digest(desc.digest)
        if not desc.media_type:
            raise InvalidArgument(f"descriptor {desc.digest}: media type must not be empty")
        if isinstance(reader, bytes | bytearray | memoryview) and len(reader) != desc.size:
            raise InvalidArgument(f"content of {desc.digest} is {len(reader)} bytes, "
                                  f"the descriptor says {desc.size}")
        host = self._host()
        if mediatypes.is_manifest_or_index(desc.media_type):
            return await self._push_manifest(host, desc, reader, by_digest)
        return await self._push_blob(host, desc, reader, mount_from)

    # -- manifests ---------------------------------------------------------------------

    def _manifest_object(self, desc: Descriptor, by_digest: bool) -> str:
        r = self.ref
        if by_digest or (r.digest and r.digest != desc.digest) or not r.tag:
            return desc.digest
        return r.tag

    async def _push_manifest(self, host: RegistryHost, desc: Descriptor, reader: Reader,
                             by_digest: bool) -> PushResult:
        self.repo.limits.check_manifest_size(desc.size, desc.digest)
        parts: list[bytes] = []
        total = 0
        async for chunk in _iterate(reader):
            parts.append(chunk)
            total += len(chunk)
            self.repo.limits.check_manifest_size(total, desc.digest)
        body = b"".join(parts)
        algorithm = desc.digest.split(":", 1)[0]
        actual = f"{algorithm}:{hashlib.new(algorithm, body).hexdigest()}"
        if len(body) != desc.size or actual != desc.digest:
            raise InvalidArgument(f"manifest content ({actual}, {len(body)} bytes) does not match its "
                                  f"descriptor ({desc.digest}, {desc.size} bytes)")
        obj = self._manifest_object(desc, by_digest)
        head = self.repo.request(host, "HEAD", "manifests", obj, push=True)
        head.headers["Accept"] = f"{desc.media_type}, */*"
        resp = await self.repo.transport.send(head)
        resp.release()
        if resp.status == 200 and (obj == desc.digest or
                                   resp.headers.get("Docker-Content-Digest") == desc.digest):
            return PushResult(desc.digest, exists=True)
        if resp.status not in (200, 401, 404):
            raise await status_error(resp, action="push", what=f"{self.ref.name}/manifests/{obj}")
        put = self.repo.request(host, "PUT", "manifests", obj, push=True)
        put.headers["Content-Type"] = desc.media_type
        resp = await self.repo.transport.send(put, body)
        if resp.status not in (200, 201, 202, 204):
            raise await status_error(resp, action="push", what=f"{self.ref.name}/manifests/{obj}")
        resp.release()
        self._check_digest_header(resp, desc)
        return PushResult(desc.digest, uploaded=len(body), location=resp.headers.get("Location", ""))

    @staticmethod
    def _check_digest_header(resp: aiohttp.ClientResponse, desc: Descriptor) -> None:
        header = resp.headers.get("Docker-Content-Digest", "")
        if header and header != desc.digest:
            raise FailedPrecondition(f"registry stored {header}, expected {desc.digest}")

    # -- blobs -------------------------------------------------------------------------

    async def exists(self, desc: Descriptor) -> bool:
        """Whether the repository already has blob ``desc`` (HEAD; a refused check says False)."""
        head = self.repo.request(self._host(), "HEAD", "blobs", desc.digest, push=True)
        resp = await self.repo.transport.send(head)
        resp.release()
        if resp.status == 200:
            return True
        if resp.status in (401, 404):
            return False
        raise await status_error(resp, action="push", what=f"{self.ref.name}/blobs/{desc.digest}")

    async def _push_blob(self, host: RegistryHost, desc: Descriptor, reader: Reader,
                         mount_from: str | None) -> PushResult:
        if await self.exists(desc):
            return PushResult(desc.digest, exists=True)
        source = mount_from if mount_from is not None else select_mount_candidate(self.ref, desc.annotations)
        resp = None
        if source and source != self.ref.path:
            post = self.repo.request(host, "POST", "blobs", "uploads/", push=True,
                                     extra_scopes=(f"repository:{source}:pull",))
            post.target = with_query(post.target, [("mount", desc.digest), ("from", source)])
            resp = await self.repo.transport.send(post)
            if resp.status == 201:
                resp.release()
                return PushResult(desc.digest, mounted_from=f"{self.ref.domain}/{source}",
                                  location=resp.headers.get("Location", ""))
            if resp.status in (401, 403, 404):
                log.debug("cross-repository mount refused", extra={"fields": {
                    "digest": desc.digest, "from": source, "status": resp.status}})
                resp.release()
                resp = None
        if resp is None:
            post = self.repo.request(host, "POST", "blobs", "uploads/", push=True)
            resp = await self.repo.transport.send(post)
        if resp.status == 201:
            resp.release()
            return PushResult(desc.digest, exists=True, location=resp.headers.get("Location", ""))
        if resp.status not in (200, 202, 204):
            raise await status_error(resp, action="push", what=f"{self.ref.name}/blobs/uploads")
        resp.release()
        location = self._location(host, resp)
        min_chunk = resp.headers.get("OCI-Chunk-Min-Length", "")
        chunk_size = max(self.chunk_size, int(min_chunk) if min_chunk.isdigit() else 0)
        try:
            if desc.size > chunk_size:
                return await self._upload_chunked(host, desc, reader, location, chunk_size)
            return await self._upload_monolithic(host, desc, reader, location)
        except BaseException:
            await self._cancel(host, location)
            raise

    def _location(self, host: RegistryHost, resp: aiohttp.ClientResponse) -> str:
        """The absolute upload URL from ``Location`` (path-only and scheme-less forms accepted)."""
        location = resp.headers.get("Location", "")
        if not location:
            raise FailedPrecondition(f"{self.ref.name}: registry opened an upload without a Location")
        if location.startswith("/"):
            return self.repo.transport.origin(host) + location
        if "://" not in location:
            return f"{urllib.parse.urlsplit(str(resp.url)).scheme}://{location}"
        return location

    def _upload_request(self, host: RegistryHost, method: str, url: str) -> Request:
        req = self.repo.request(host, method, "blobs", "uploads/", push=True)
        req.target = url
        return req

    async def _upload_monolithic(self, host: RegistryHost, desc: Descriptor, reader: Reader,
                                 location: str) -> PushResult:
        put = self._upload_request(host, "PUT", with_query(location, [("digest", desc.digest)]))
        put.headers["Content-Type"] = "application/octet-stream"
        put.headers["Content-Length"] = str(desc.size)
        if isinstance(reader, bytes | bytearray | memoryview):
            resp = await self.repo.transport.send(put, bytes(reader))
            sent = len(reader)
        elif callable(reader):  # re-openable: the request may be repeated (auth, transient errors)
            passes: list[_Content] = []

            def body() -> AsyncIterable[bytes]:
                passes.append(_Content(reader, desc))
                return passes[-1].take(desc.size, final=True)

            resp = await self.repo.transport.send(put, body)
            sent = passes[-1].count if passes else 0
        else:
            content = _Content(reader, desc)
            resp = await self.repo.transport.send(put, content.take(desc.size, final=True))
            sent = content.count
        return await self._finish(resp, desc, sent, location)

    async def _finish(self, resp: aiohttp.ClientResponse, desc: Descriptor, sent: int,
                      location: str) -> PushResult:
        if resp.status not in (200, 201, 202, 204):
            raise await status_error(resp, action="push", what=f"upload {sanitize(location)}")
        resp.release()
        if sent != desc.size:
            raise InvalidArgument(f"blob {desc.digest}: sent {sent} bytes, descriptor says {desc.size}")
        self._check_digest_header(resp, desc)
        return PushResult(desc.digest, uploaded=sent, location=resp.headers.get("Location", ""))

    async def _upload_chunked(self, host: RegistryHost, desc: Descriptor, reader: Reader, location: str,
                              chunk_size: int) -> PushResult:
        content = _Content(reader, desc)
        offset = 0
        while offset < desc.size:
            n = min(chunk_size, desc.size - offset)
            patch = self._upload_request(host, "PATCH", location)
            patch.headers["Content-Type"] = "application/octet-stream"
            patch.headers["Content-Range"] = f"{offset}-{offset + n - 1}"
            patch.headers["Content-Length"] = str(n)
            resp = await self.repo.transport.send(patch, content.take(n, final=offset + n == desc.size))
            if resp.status not in (202, 204):
                raise await status_error(resp, action="push", what=f"upload {sanitize(location)}")
            resp.release()
            if resp.headers.get("Location"):
                location = self._location(host, resp)
            offset += n
        put = self._upload_request(host, "PUT", with_query(location, [("digest", desc.digest)]))
        put.headers["Content-Length"] = "0"
        resp = await self.repo.transport.send(put, b"")
        return await self._finish(resp, desc, content.count, location)

    async def _cancel(self, host: RegistryHost, location: str) -> None:
        """Best-effort ``DELETE`` of an upload session."""
        try:
            resp = await self.repo.transport.send(self._upload_request(host, "DELETE", location))
            resp.release()
        except (Unavailable, FailedPrecondition, aiohttp.ClientError, TimeoutError, OSError):
            pass
