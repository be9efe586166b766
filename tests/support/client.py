"""A small registry client for tests (plain HTTP, aiohttp): requests with the auth dance, push.

Not the code under test — a known-simple client used to load registries with test images and to
check what a registry or ``RegistryFront`` answers::

    async with RegistryClient(front.host, auth=("user", "pass")) as c:
        await c.push_image("library/busybox", "latest", image)
        r = await c.get_manifest("library/busybox", "latest")
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote

import aiohttp
import yarl
from multidict import CIMultiDictProxy

if TYPE_CHECKING:
    from tests.support.images import Blob, Image

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
Body = bytes | Callable[[], Any] | None
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^,\s]*))')


@dataclass
class Response:
    """A finished HTTP exchange: status, headers, whole body, final URL."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str

    def json(self) -> Any:
        return json.loads(self.body)


class RegistryError(Exception):
    """A registry answered with an unexpected status."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url}: {status} {body[:500]!r}")
        self.method, self.url, self.status, self.body = method, url, status, body


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` → ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _PARAM.finditer(rest)}


class RegistryClient:
    """Talks the distribution API to ``host`` ("127.0.0.1:PORT") over plain HTTP.

    With ``auth=(user, password)`` it answers basic and bearer challenges (fetching a token from
    the realm with basic credentials, anonymously without ``auth``) and retries once.
    """

    def __init__(self, host: str, *, auth: tuple[str, str] | None = None, scheme: str = "http",
                 session: aiohttp.ClientSession | None = None) -> None:
        self.host = host
        self.base = f"{scheme}://{host}"
        self.auth = auth
        self._session = session
        self._own_session = session is None
        self._authorization: str | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False,
                                                  timeout=aiohttp.ClientTimeout(total=600))
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- generic -------------------------------------------------------------------------------
    def _basic(self) -> str:
        assert self.auth is not None
        return "Basic " + base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()

    async def _answer(self, challenge: str) -> str | None:
        """The Authorization header that answers a WWW-Authenticate challenge, or None."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            return self._basic() if self.auth else None
        if scheme != "bearer" or "realm" not in params:
            return None
        query: dict[str, str] = {k: params[k] for k in ("service", "scope") if k in params}
        headers = {"Authorization": self._basic()} if self.auth else {}
        async with self.session.get(params["realm"], params=query, headers=headers) as r:
            body = await r.read()
            if r.status != 200:
                raise RegistryError("GET", str(r.url), r.status, body)
        token = json.loads(body)
        return "Bearer " + (token.get("token") or token["access_token"])

    async def request(self, method: str, path: str, *, headers: Mapping[str, str] | None = None,
                      data: Body = None, allow_redirects: bool = True,
                      expect: Iterable[int] | None = None) -> Response:
        """``method`` on ``path`` (relative to the host, or an absolute URL), answering one auth
        challenge. ``data`` may be a callable making a fresh body (an open file is closed after).
        Raises ``RegistryError`` if ``expect`` is given and the status is not in it."""
        url = yarl.URL(path, encoded=True) if "://" in path else yarl.URL(self.base + path, encoded=True)
        for attempt in range(2):
            sent = dict(headers or {})
            if self._authorization and yarl.URL(str(url)).origin() == yarl.URL(self.base).origin():
                sent.setdefault("Authorization", self._authorization)
            with contextlib.ExitStack() as stack:
                body = data() if callable(data) else data
                close = getattr(body, "close", None)
                if close is not None:
                    stack.callback(close)
                async with self.session.request(method, url, headers=sent, data=body,
                                                allow_redirects=allow_redirects) as r:
                    response = Response(r.status, r.headers, await r.read(), str(r.url))
            challenge = response.headers.get("WWW-Authenticate")
            if response.status == 401 and challenge and attempt == 0:
                answer = await self._answer(challenge)
                if answer is not None and answer != sent.get("Authorization"):
                    self._authorization = answer
                    continue
            break
        if expect is not None and response.status not in set(expect):
            raise RegistryError(method, str(url), response.status, response.body)
        return response

    # -- reading -------------------------------------------------------------------------------
    async def get_manifest(self, repo: str, ref: str, *, accept: Iterable[str] = MANIFEST_TYPES,
                           method: str = "GET") -> Response:
        """GET (or HEAD) ``/v2/<repo>/manifests/<ref>``; raises unless 200."""
        return await self.request(method, f"/v2/{repo}/manifests/{ref}",
                                  headers={"Accept": ", ".join(accept)}, expect=[200])

    async def get_blob(self, repo: str, digest: str, *, byte_range: tuple[int, int | None] | None = None,
                       allow_redirects: bool = True, expect: Iterable[int] | None = (200, 206)) -> Response:
        """GET ``/v2/<repo>/blobs/<digest>``, optionally ``Range: bytes=start-[end]``."""
        headers = {}
        if byte_range is not None:
            start, end = byte_range
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        return await self.request("GET", f"/v2/{repo}/blobs/{digest}", headers=headers,
                                  allow_redirects=allow_redirects, expect=expect)

    async def blob_exists(self, repo: str, digest: str) -> bool:
        r = await self.request("HEAD", f"/v2/{repo}/blobs/{digest}", expect=[200, 404])
        return r.status == 200

    async def tags(self, repo: str) -> list[str]:
        r = await self.request("GET", f"/v2/{repo}/tags/list", expect=[200])
        return list(r.json().get("tags") or [])

    async def delete_manifest(self, repo: str, digest: str) -> None:
        await self.request("DELETE", f"/v2/{repo}/manifests/{digest}", expect=[202])

    # -- writing -------------------------------------------------------------------------------
    async def push_blob(self, repo: str, blob: Blob) -> None:
        """POST an upload session, then PUT the whole blob (monolithic) with its digest."""
        r = await self.request("POST", f"/v2/{repo}/blobs/uploads/", expect=[202])
        location = r.headers["Location"]
        if "://" not in location:
            location = self.base + location
        location += ("&" if "?" in location else "?") + "digest=" + quote(blob.digest, safe="")
        path = blob.path

        def body() -> Any:
            return open(path, "rb") if path is not None else blob.data

        await self.request("PUT", location, data=body, expect=[201], headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(blob.size)})

    async def push_manifest(self, repo: str, ref: str, blob: Blob) -> str:
        """PUT a manifest or index under ``ref`` (tag or digest); returns Docker-Content-Digest."""
        r = await self.request("PUT", f"/v2/{repo}/manifests/{ref}", data=blob.data,
                               headers={"Content-Type": blob.media_type}, expect=[201])
        return r.headers.get("Docker-Content-Digest", "")

    async def push_image(self, repo: str, tag: str, image: Image) -> None:
        """Every blob, then each manifest (by digest under an index), then the tag (index last)."""
        children = image.children or (image,)
        for child in children:
            for blob in (*child.layers, child.config):
                await self.push_blob(repo, blob)
            if image.index is not None:
                await self.push_manifest(repo, child.manifest.digest, child.manifest)
        if image.index is not None:
            await self.push_manifest(repo, tag, image.index)
        else:
            await self.push_manifest(repo, tag, image.manifest)
