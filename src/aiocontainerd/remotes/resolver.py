"""The resolver: reference → descriptor, and fetchers/pushers for a repository.

Contract (containerd's ``remotes.Resolver`` on the Docker registry API)::

    async with Resolver(Hosts("/etc/aiocontainerd/certs.d"), DockerConfig.load()) as r:
        name, desc = await r.resolve("busybox")       # docker.io/library/busybox:latest
        fetcher = r.fetcher(name)
        async for chunk in fetcher.fetch(desc): ...
        pusher = r.pusher("127.0.0.1:5000/mirror/busybox:latest")

:meth:`Resolver.resolve` asks each host able to *resolve* (tags) or *pull*
(digests), in order, with ``HEAD /v2/<repo>/manifests/<tag-or-digest>`` and
the ``Accept`` list containerd sends. The descriptor comes from the response:
``Content-Type`` (parameters dropped), ``Content-Length`` and, for a tag,
``Docker-Content-Digest``. When the HEAD lacks the digest or the size, is
refused with 405 or 404 (registries and proxies that mishandle HEAD), or the
media type cannot be trusted, a ``GET`` fetches the
body (at most ``max_manifest_size`` bytes) and the digest is computed and
checked against the one asked for. A digest reference that is not found under
``manifests/`` is tried under ``blobs/`` (old registries), its media type then
read from the body. Schema 1 manifests raise Unimplemented.

Errors: InvalidArgument (bad reference, manifest over the limits), NotFound
(no host has it, or none is configured to resolve), FailedPrecondition
(access denied; digest mismatch), Unavailable (network, 5xx), Unimplemented
(schema 1). When several hosts fail, the error that got furthest is raised
(as containerd: transport < not found < other status < too large).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import aiohttp

from ..errors import ContainerdError, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from . import mediatypes, reference
from ._http import Repository, Transport, read_limited, status_error
from .auth import Credentials, CredentialsProvider, as_provider
from .descriptor import Descriptor, validate_digest
from .fetcher import Fetcher
from .hosts import PULL, RESOLVE, Hosts, RegistryHost, RegistryHosts
from .limits import Limits
from .pusher import DEFAULT_CHUNK_SIZE, Pusher


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    """``<algorithm>:<hex>`` of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _manifest_media_type(content_type: str) -> str:
    mt = mediatypes.base(content_type)
    if mt == "text/plain":  # registries that serve schema 1 untyped (containerd's quirk)
        return mediatypes.DOCKER_SCHEMA1_MANIFEST
    return mt


class Resolver:
    """Resolves references and hands out fetchers and pushers (see the module doc).

    ``hosts``: registry hosts function (default :class:`Hosts` with no config
    folder: docker.io → registry-1.docker.io, loopback may be plain HTTP);
    ``credentials``: a provider ``host -> (user, secret)``, a mapping, or a
    :class:`~.auth.DockerConfig`; ``headers``: added to every request;
    ``limits``: manifest bounds; ``session``: an aiohttp session to use (not
    closed by the resolver); timeouts in seconds (connect; between reads);
    ``chunk_size``: blobs larger than this are pushed in chunks of this size;
    ``max_resumes``: reconnections of a broken download without progress.

    Use as an async context manager, or call :meth:`close`.
    """

    def __init__(self, hosts: RegistryHosts | None = None,
                 credentials: CredentialsProvider | Mapping[str, Credentials] | None = None, *,
                 headers: Mapping[str, str] | None = None, limits: Limits | None = None,
                 session: aiohttp.ClientSession | None = None, connect_timeout: float = 30.0,
                 read_timeout: float = 60.0, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 max_resumes: int = 3) -> None:
        self.hosts: RegistryHosts = hosts if hosts is not None else Hosts()
        self.credentials = as_provider(credentials)
        self.headers = dict(headers or {})
        self.limits = limits or Limits()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.chunk_size = chunk_size
        self.max_resumes = max_resumes
        self._session = session
        self._owns_session = session is None
        self._transport: Transport | None = None

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (if the resolver made it)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
        self._transport = None

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            if self._session is None:
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, limit_per_host=16),
                    cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=True)
                self._owns_session = True
            self._transport = Transport(self._session, self.credentials, self.headers,
                                        connect_timeout=self.connect_timeout,
                                        read_timeout=self.read_timeout)
        return self._transport

    def repository(self, ref: str | reference.Reference) -> Repository:
        """The repository of ``ref`` with its hosts. Raises InvalidArgument."""
        r = ref if isinstance(ref, reference.Reference) else reference.parse(ref)
        hosts: list[RegistryHost] = list(self.hosts(r.domain))
        return Repository(r, hosts, self.transport, self.limits)

    def fetcher(self, ref: str | reference.Reference) -> Fetcher:
        """A fetcher for the repository of ``ref`` (its tag/digest do not matter)."""
        return Fetcher(self.repository(ref), max_resumes=self.max_resumes)

    def pusher(self, ref: str | reference.Reference) -> Pusher:
        """A pusher for ``ref``: manifests go to its tag (or digest), blobs to its repository."""
        return Pusher(self.repository(ref), chunk_size=self.chunk_size)

    async def resolve(self, ref: str) -> tuple[str, Descriptor]:
        """``(normalised name, descriptor of its manifest or index)`` (see the module doc)."""
        repo = self.repository(ref)
        r = repo.ref
        if r.digest:
            validate_digest(r.digest)
            paths = [("manifests", r.digest), ("blobs", r.digest)]
            hosts = repo.filter(PULL)
        else:
            paths = [("manifests", r.tag)]
            hosts = repo.filter(PULL, RESOLVE)
        if not hosts:
            raise NotFound(f"{r}: no resolve hosts configured for {r.domain}: not found")
        first_err: ContainerdError | None = None
        priority = 0

        def note(err: ContainerdError, prio: int) -> None:
            nonlocal first_err, priority
            if prio > priority:
                first_err, priority = err, prio

        for parts in paths:
            if priority > 2:  # only a 404 under manifests/ falls back to blobs/
                break
            for i, host in enumerate(hosts):
                try:
                    desc = await self._resolve_at(repo, host, parts, last_host=i == len(hosts) - 1)
                except _Ranked as e:
                    note(e.error, e.priority)
                    continue
                except Unimplemented:
                    raise
                except ContainerdError as e:  # transport failures, token refused
                    note(e, 1)
                    continue
                return str(r), desc
        raise first_err or NotFound(f"{r}: not found")

    async def _resolve_at(self, repo: Repository, host: RegistryHost, parts: tuple[str, str], *,
                          last_host: bool) -> Descriptor:
        r = repo.ref
        req = repo.request(host, "HEAD", *parts)
        req.headers["Accept"] = mediatypes.RESOLVE_ACCEPT
        resp = await self.transport.send(req, last_host=last_host)
        resp.release()
        if resp.status in (404, 405) or parts[0] == "blobs":
            # 405: HEAD not implemented; 404: some registries and proxies answer HEAD wrongly, so
            # a GET decides; blobs/ carries no media type, the body tells it
            return await self._resolve_get(repo, host, parts, last_host=last_host)
        if resp.status >= 300:
            raise await _ranked(resp, r)
        content_type = resp.headers.get("Content-Type", "")
        media_type = mediatypes.base(content_type)
        mediatypes.check_not_schema1(media_type)
        size = resp.content_length
        digest = r.digest
        if not digest and size is not None:
            header = resp.headers.get("Docker-Content-Digest", "")
            if header:
                try:
                    digest = validate_digest(header)
                except InvalidArgument:
                    raise FailedPrecondition(f"{r}: {header!r} in header is not a valid digest") from None
        if not digest or size is None or media_type in ("", "text/plain"):
            return await self._resolve_get(repo, host, parts, last_host=last_host)
        try:
            repo.limits.check_manifest_size(size, str(r))
        except InvalidArgument as e:
            raise _Ranked(e, 4) from None
        return Descriptor(media_type, digest, size)

    async def _resolve_get(self, repo: Repository, host: RegistryHost, parts: tuple[str, str], *,
                           last_host: bool) -> Descriptor:
        r = repo.ref
        req = repo.request(host, "GET", *parts)
        req.headers["Accept"] = mediatypes.RESOLVE_ACCEPT
        resp = await self.transport.send(req, last_host=last_host)
        if resp.status >= 300:
            raise await _ranked(resp, r)
        try:
            body = await read_limited(resp, repo.limits.max_manifest_size, str(r))
        except InvalidArgument as e:
            raise _Ranked(e, 4) from None
        content_type = resp.headers.get("Content-Type", "")
        media_type = _manifest_media_type(content_type)
        if (media_type in ("", mediatypes.OCTET_STREAM, "application/json") or parts[0] == "blobs"
                or mediatypes.base(content_type) == "text/plain"):
            sniffed = mediatypes.sniff(body)
            if sniffed or media_type != mediatypes.DOCKER_SCHEMA1_MANIFEST:
                media_type = sniffed or media_type or mediatypes.OCTET_STREAM
        mediatypes.check_not_schema1(media_type, body)
        algorithm = (r.digest or "sha256:").split(":", 1)[0]
        actual = digest_of(body, algorithm)
        if r.digest and actual != r.digest:
            raise _Ranked(FailedPrecondition(f"{r}: registry returned content with digest {actual}, "
                                             f"expected {r.digest}"), 3)
        header = resp.headers.get("Docker-Content-Digest", "")
        if header and header.startswith(algorithm + ":") and header != actual:
            raise _Ranked(FailedPrecondition(f"{r}: manifest digest {actual} does not match the "
                                             f"registry's Docker-Content-Digest {header}"), 3)
        return Descriptor(media_type, actual, len(body))


class _Ranked(Exception):
    """A per-host failure with containerd's rank (2: not found, 3: other status, 4: too large)."""

    def __init__(self, error: ContainerdError, priority: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.priority = priority


async def _ranked(resp: aiohttp.ClientResponse, r: reference.Reference) -> _Ranked:
    err = await status_error(resp, action="pull", what=str(r))
    return _Ranked(err, 2 if isinstance(err, NotFound) else 3)
