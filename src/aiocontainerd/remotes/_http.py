"""The request machinery shared by the resolver, fetcher and pusher (internal).

One :class:`Transport` per resolver owns the aiohttp session and the
:class:`~.auth.Authorizer`. :meth:`Transport.send` does one logical request
to one registry host:

- adds the resolver's headers, the host's ``hosts.toml`` headers and, once the
  host has challenged, its ``Authorization``;
- answers a ``401`` by recording the challenge and retrying (at most twice;
  a cached token the registry refused is dropped first);
- retries ``408``/``429`` and, on the last host only, one ``500``/``503``/``504``
  and transient transport errors (bounded attempts, short backoff), as
  containerd's ``doWithRetries``;
- follows redirects of GET/HEAD itself (at most 10), keeping ``Authorization``
  only while the target is the registry host it was meant for — blob storage
  behind a redirect never sees credentials;
- for loopback hosts configured "https, else http", switches to plain HTTP for
  good when the server answers a TLS handshake in plain HTTP.

:func:`status_error` turns a final non-2xx response into the core error
(containerd's errdefs mapping).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
from multidict import CIMultiDict

from ..errors import (
    ContainerdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from ..version import version
from .auth import AuthError, Authorizer, CredentialsProvider
from .hosts import RegistryHost
from .limits import Limits
from .reference import Reference, repository_scope

log = logging.getLogger("aiocontainerd.remotes")

MAX_ATTEMPTS = 5
MAX_REDIRECTS = 10
AUTH_RETRIES = 2
REDIRECTS = frozenset({301, 302, 303, 307, 308})
Body = bytes | Callable[[], AsyncIterable[bytes] | bytes] | AsyncIterable[bytes] | None


def user_agent() -> str:
    return f"aiocontainerd/{version()}"


def sanitize(url: str) -> str:
    """``url`` without credentials and with query values (signed-URL tokens) redacted, ``ns`` kept."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    redacted = [(k, v if k == "ns" or not v else "REDACTED") for k, v in query]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    urllib.parse.urlencode(redacted, safe=":/@"), ""))


def registry_errors(body: bytes) -> str:
    """``"code: message; …"`` from an OCI error body (``{"errors": [...]}``), else ``""``."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    out = []
    for e in errors:
        if not isinstance(e, dict):
            continue
        code = str(e.get("code", "unknown")).lower().replace("_", " ")
        message = e.get("message") or ""
        out.append(f"{code}: {message}" if message else code)
    return "; ".join(out)


def denied(action: str, host: str, detail: str = "") -> FailedPrecondition:
    """The error for a registry that refuses us (401 after authentication, or no credentials)."""
    return FailedPrecondition(
        f"{action} access denied, repository does not exist or may require authorization: "
        f"{host}: {detail or 'unauthorized: authentication required'}")


async def status_error(resp: aiohttp.ClientResponse, *, action: str, what: str) -> ContainerdError:
    """The core error for a final non-2xx ``resp`` (the body is read, at most 64 KiB).

    401 → FailedPrecondition "<action> access denied …: <host>: unauthorized: …";
    403 → FailedPrecondition (denied); 404 → NotFound "<what>: not found";
    408/429/5xx → Unavailable; 405/501 → Unimplemented; 400/413/414/416 →
    InvalidArgument; any other → FailedPrecondition. The registry's own error
    codes and messages are appended.
    """
    body = b""
    if resp.method != "HEAD":
        try:
            body = await resp.content.read(64 * 1024)
        except (aiohttp.ClientError, TimeoutError):
            body = b""
    resp.release()
    detail = registry_errors(body)
    host = resp.url.host or ""
    if resp.url.port is not None and not resp.url.is_default_port():
        host = f"{host}:{resp.url.port}"
    status = resp.status
    if status == 401:
        return denied(action, host, detail)
    if status == 403:
        return FailedPrecondition(f"{action} access denied: {host}: "
                                  f"{detail or 'denied: requested access to the resource is denied'}")
    if status == 404:
        return NotFound(f"{what}: not found" + (f" ({detail})" if detail else ""))
    message = (f"unexpected status from {resp.method} request to {sanitize(str(resp.url))}: "
               f"{status} {resp.reason or ''}".rstrip() + (f": {detail}" if detail else ""))
    if status in (408, 429) or status >= 500:
        return Unavailable(message)
    if status in (405, 501):
        return Unimplemented(message)
    if status in (400, 413, 414, 416):
        return InvalidArgument(message)
    return FailedPrecondition(message)


@dataclasses.dataclass
class Request:
    """One logical request: ``target`` is a path under the host (``/v2/…``) or an absolute URL."""

    host: RegistryHost
    method: str
    target: str
    headers: CIMultiDict[str] = dataclasses.field(default_factory=CIMultiDict)
    scopes: tuple[str, ...] = ()
    action: str = "pull"  # for error messages: pull or push
    authorize: bool = True  # False: never attach credentials (upload elsewhere)


def _origin_key(url: str) -> tuple[str, str, int | None]:
    """(scheme, host lower-cased, port with the scheme's default filled in) of ``url``."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port if port is not None else default


def _is_tls_mismatch(e: BaseException) -> bool:
    """A TLS handshake answered in plain HTTP (the server does not speak TLS)."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or getattr(cause, "os_error", None) or cause.__context__
        if cause is e:
            break
    return False


class Transport:
    """The shared HTTP machinery of one resolver (see the module doc)."""

    def __init__(self, session: aiohttp.ClientSession, credentials: CredentialsProvider | None,
                 headers: Mapping[str, str] | None = None, *, connect_timeout: float = 30.0,
                 read_timeout: float = 60.0) -> None:
        self.session = session
        self.headers: CIMultiDict[str] = CIMultiDict(headers or {})
        self.headers.setdefault("User-Agent", user_agent())
        self.authorizer = Authorizer(session, credentials, {"User-Agent": self.headers["User-Agent"]},
                                     timeout=max(connect_timeout, read_timeout))
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._plain_http: set[str] = set()  # hosts that fell back from https to http

    def origin(self, host: RegistryHost) -> str:
        if host.http_fallback and host.host in self._plain_http:
            return f"http://{host.host}"
        return host.origin

    def url(self, req: Request) -> str:
        if "://" in req.target:
            return req.target
        return self.origin(req.host) + req.target

    def same_origin(self, host: RegistryHost, url: str) -> bool:
        """Whether ``url`` is on ``host`` itself (same scheme and host:port): credentials may go there."""
        return _origin_key(url) == _origin_key(self.origin(host))

    def _ssl(self, host: RegistryHost, url: str) -> ssl.SSLContext | bool:
        if not url.startswith("https://"):
            return True
        if urllib.parse.urlsplit(url).netloc != host.host:
            return True  # elsewhere (blob storage): default verification
        return host.ssl_context() or True

    def _timeout(self, host: RegistryHost) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, connect=None,
                                     sock_connect=host.dial_timeout or self.connect_timeout,
                                     sock_read=self.read_timeout)

    async def _headers(self, req: Request, url: str) -> CIMultiDict[str]:
        headers = CIMultiDict(self.headers)
        for name, values in req.host.header.items():
            headers.popall(name, None)
            for v in values:
                headers.add(name, v)
        for name in set(req.headers.keys()):
            headers.popall(name, None)
        headers.extend(req.headers)
        if req.authorize and self.same_origin(req.host, url):
            try:
                value = await self.authorizer.authorization(req.host.host, req.scopes)
            except AuthError as e:
                raise denied(req.action, req.host.host, str(e)) from None
            if value:
                headers["Authorization"] = value
        return headers

    async def _once(self, req: Request, url: str, data: Any) -> aiohttp.ClientResponse:
        """Send once, following GET/HEAD redirects with credentials only for the registry host."""
        method = req.method
        for _ in range(MAX_REDIRECTS + 1):
            headers = await self._headers(req, url)
            resp = await self.session.request(method, url, headers=headers, data=data,
                                              ssl=self._ssl(req.host, url), allow_redirects=False,
                                              timeout=self._timeout(req.host))
            if resp.status in REDIRECTS and method in ("GET", "HEAD") and "Location" in resp.headers:
                location = urllib.parse.urljoin(url, resp.headers["Location"])
                resp.release()
                log.debug("redirect", extra={"fields": {"from": sanitize(url), "to": sanitize(location)}})
                url = location
                continue
            return resp
        raise Unavailable(f"{req.method} {sanitize(self.url(req))}: stopped after {MAX_REDIRECTS} redirects")

    async def send(self, req: Request, body: Body = None, *,
                   last_host: bool = True) -> aiohttp.ClientResponse:
        """Do ``req`` with auth, retries and redirects; returns the final response (any status).

        ``body``: bytes, a callable returning a fresh body (so the request can be
        repeated after a 401 or a transient error), or a one-shot async iterable
        (not repeatable: a 401 then comes back to the caller). Raises Unavailable
        for transport failures, FailedPrecondition when a token cannot be had.
        """
        attempts = 0
        auth_retries = 0
        statuses: list[int] = []
        while True:
            url = self.url(req)
            replayable = body is None or isinstance(body, bytes | bytearray | memoryview) or callable(body)
            data = body() if callable(body) else body
            try:
                resp = await self._once(req, url, data)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                own = _own_error(e)
                if own is not None:  # raised by our request body (content does not fit its descriptor)
                    raise own from None
                if (req.host.http_fallback and req.host.host not in self._plain_http
                        and url.startswith("https://") and _is_tls_mismatch(e)):
                    log.info("host does not speak TLS, using plain http",
                             extra={"fields": {"host": req.host.host}})
                    self._plain_http.add(req.host.host)
                    if replayable:
                        continue
                attempts += 1
                if last_host and replayable and attempts < MAX_ATTEMPTS and not isinstance(
                        e, aiohttp.ClientConnectorCertificateError | aiohttp.InvalidURL):
                    await asyncio.sleep(0.05 * attempts)
                    continue
                raise Unavailable(f"{req.method} {sanitize(url)}: {_describe(e)}") from None
            statuses.append(resp.status)
            if (resp.status == 401 and req.authorize and auth_retries < AUTH_RETRIES and replayable
                    and self.same_origin(req.host, str(resp.url))):
                sent_auth = "Authorization" in resp.request_info.headers
                if sent_auth:
                    self.authorizer.forget(req.host.host, req.scopes)
                try:
                    retry = await self.authorizer.challenge(
                        req.host.host, resp.headers.getall("WWW-Authenticate", []),
                        ssl_context=req.host.ssl_context())
                except AuthError as e:
                    resp.release()
                    raise denied(req.action, req.host.host, str(e)) from None
                if retry:
                    auth_retries += 1
                    resp.release()
                    continue
                return resp
            retriable = resp.status in (408, 429) or (
                resp.status in (500, 503, 504) and last_host
                and not (len(statuses) > 1 and statuses[-2] == resp.status))
            attempts += 1
            if retriable and replayable and attempts < MAX_ATTEMPTS:
                resp.release()
                await asyncio.sleep(_retry_after(resp, attempts))
                continue
            return resp


def _own_error(e: BaseException) -> ContainerdError | None:
    """A core error that aiohttp wrapped while sending a request body, if any."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ContainerdError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _retry_after(resp: aiohttp.ClientResponse, attempt: int) -> float:
    value = resp.headers.get("Retry-After", "")
    if value.isdigit():
        return min(float(value), 5.0)
    return min(0.1 * attempt, 1.0)


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


async def read_limited(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body of ``resp`` (released after); InvalidArgument past ``limit`` bytes.

    A broken connection raises Unavailable.
    """
    try:
        if resp.content_length is not None and resp.content_length > limit:
            raise InvalidArgument(f"manifest {what} is {resp.content_length} bytes, larger than the limit "
                                  f"of {limit} bytes (max_manifest_size)")
        parts: list[bytes] = []
        total = 0
        while chunk := await resp.content.read(min(limit + 1 - total, 1 << 20) or 1):
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise InvalidArgument(f"manifest {what} is larger than the limit of {limit} bytes "
                                      "(max_manifest_size)")
        return b"".join(parts)
    except (aiohttp.ClientError, TimeoutError) as e:
        raise Unavailable(f"reading {what} from {sanitize(str(resp.url))}: {_describe(e)}") from None
    finally:
        resp.release()


def join_path(*parts: str) -> str:
    """``/``-joined, no duplicate slashes; a trailing slash on the last part is kept."""
    out = "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))
    return out + "/" if parts and parts[-1].endswith("/") else out


def with_query(target: str, params: Sequence[tuple[str, str]]) -> str:
    if not params:
        return target
    sep = "&" if "?" in target else "?"
    return target + sep + urllib.parse.urlencode(list(params), safe=":/@")


@dataclasses.dataclass
class Repository:
    """One repository as seen through its hosts: builds requests, filters hosts by capability."""

    ref: Reference
    hosts: list[RegistryHost]
    transport: Transport
    limits: Limits

    def filter(self, *capabilities: str) -> list[RegistryHost]:
        return [h for h in self.hosts if h.has(*capabilities)]

    def request(self, host: RegistryHost, method: str, *parts: str, push: bool = False,
                extra_scopes: Sequence[str] = ()) -> Request:
        """A request for ``<host path>/<repository>/<parts…>`` (``?ns=<domain>`` for a mirror)."""
        target = join_path(host.path, self.ref.path, *parts)
        if host.is_mirror_for(self.ref.domain):
            target = with_query(target, [("ns", self.ref.domain)])
        return Request(host, method, target, scopes=(repository_scope(self.ref, push), *extra_scopes),
                       action="push" if push else "pull")
