"""Registry authentication: challenges, credentials, tokens.

The flow (Docker registry token auth, as containerd's ``dockerAuthorizer``):

1. A request without credentials gets ``401`` with ``WWW-Authenticate``.
   :func:`parse_challenges` reads it: ``Bearer realm=…,service=…,scope=…``
   and/or ``Basic realm=…`` (bearer preferred).
2. :meth:`Authorizer.challenge` records, per registry host, how to answer:
   *basic* (needs credentials) or *bearer* (a token from the realm: GET with
   HTTP basic credentials, or anonymous; POST ``grant_type=refresh_token``
   for an identity token).
3. :meth:`Authorizer.authorization` gives the ``Authorization`` value for a
   host and the request's scopes (``repository:<path>:pull[,push]``); bearer
   tokens are cached per host + scope set until they expire, and one fetch
   serves concurrent callers.

Credentials come from a :data:`CredentialsProvider`: a callable
``host -> (username, secret) | None`` (sync or async), a mapping, or a
:class:`DockerConfig` (``~/.docker/config.json``). An empty username with a
secret is an identity (refresh) token. Credentials are only ever sent to the
host they were looked up for, and to the token realm that host's challenge
names (over HTTPS, or plain HTTP on loopback) — never to a redirect target.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from ..errors import InvalidArgument
from .hosts import is_localhost

Credentials = tuple[str, str]
CredentialsProvider = Callable[[str], "Credentials | Awaitable[Credentials | None] | None"]

DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
CLIENT_ID = "aiocontainerd"


# -- challenges ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``scheme`` lower-case, ``params`` keys lower-case."""

    scheme: str
    params: Mapping[str, str]


_SCHEME_ORDER = {"bearer": 0, "digest": 1, "basic": 2}
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _token(s: str, i: int) -> tuple[str, int]:
    j = i
    while j < len(s) and s[j] in _TOKEN_CHARS:
        j += 1
    return s[i:j], j


def _skip_space(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _quoted(s: str, i: int) -> tuple[str | None, int]:
    """A quoted string starting at ``s[i] == '"'``; ``None`` if unterminated."""
    out = []
    i += 1
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return None, i


def _parse_one(value: str) -> list[Challenge]:
    out: list[Challenge] = []
    i = _skip_space(value, 0)
    while i < len(value):
        scheme, i = _token(value, i)
        if not scheme:
            break
        params: dict[str, str] = {}
        i = _skip_space(value, i)
        while i < len(value):
            start = i
            key, j = _token(value, i)
            j = _skip_space(value, j)
            if not key or j >= len(value) or value[j] != "=":
                i = start  # a new scheme (or garbage) begins here
                break
            j = _skip_space(value, j + 1)
            if j < len(value) and value[j] == '"':
                val, j = _quoted(value, j)
                if val is None:
                    break
            else:
                val, j = _token(value, j)
            params[key.lower()] = val
            i = _skip_space(value, j)
            if i < len(value) and value[i] == ",":
                i = _skip_space(value, i + 1)
            else:
                break
        if scheme.lower() in _SCHEME_ORDER:
            out.append(Challenge(scheme.lower(), params))
        if i < len(value) and value[i] not in _TOKEN_CHARS:
            break
    return out


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """The bearer/digest/basic challenges in ``WWW-Authenticate`` values, bearer first.

    Each value may hold one challenge or several separated by commas
    (``Basic realm="r", Bearer realm="t"``); unknown schemes are skipped.
    """
    out = [c for v in values for c in _parse_one(v)]
    return sorted(out, key=lambda c: _SCHEME_ORDER[c.scheme])


# -- credentials ----------------------------------------------------------------------------

def _host_key(key: str) -> str:
    """``https://host:5000/v1/`` → ``host:5000``; Docker Hub spellings → ``docker.io``."""
    k = key.strip()
    if "://" in k:
        k = k.split("://", 1)[1]
    k = k.split("/", 1)[0].lower()
    return "docker.io" if k in DOCKER_HUB_ALIASES else k


class StaticCredentials:
    """Credentials from a mapping ``host → (username, secret)``; Docker Hub names are aliases."""

    def __init__(self, entries: Mapping[str, Credentials]) -> None:
        self._entries = {_host_key(k): (str(v[0]), str(v[1])) for k, v in entries.items()}

    def __call__(self, host: str) -> Credentials | None:
        return self._entries.get(_host_key(host))

    def hosts(self) -> list[str]:
        return sorted(self._entries)


class DockerConfig(StaticCredentials):
    """Credentials from a docker ``config.json`` (``auths`` only).

    Each ``auths`` entry may carry ``auth`` (base64 ``user:password``),
    ``username`` + ``password``, or ``identitytoken`` (used as a refresh token,
    username ``""``). Keys may be URLs (``https://index.docker.io/v1/``) or
    ``host[:port]``. Credential helpers (``credsStore``/``credHelpers``) are
    not run.
    """

    @classmethod
    def from_json(cls, data: Any, where: str = "config.json") -> DockerConfig:
        if not isinstance(data, dict):
            raise InvalidArgument(f"{where}: expected a JSON object")
        auths = data.get("auths")
        auths = {} if auths is None else auths
        if not isinstance(auths, dict):
            raise InvalidArgument(f"{where}: key 'auths': expected an object")
        entries: dict[str, Credentials] = {}
        for key, entry in auths.items():
            if not isinstance(entry, dict):
                raise InvalidArgument(f"{where}: key 'auths.{key}': expected an object")
            creds = _decode_entry(entry, f"{where}: key 'auths.{key}'")
            if creds is not None:
                entries[key] = creds
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> DockerConfig:
        """Read ``path``, or ``$DOCKER_CONFIG/config.json``, or ``~/.docker/config.json``.

        A missing file is no credentials; an unreadable or invalid one raises InvalidArgument.
        """
        if path is None:
            folder = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
            path = os.path.join(folder, "config.json")
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return cls({})
        except OSError as e:
            raise InvalidArgument(f"{path}: {e.strerror}") from None
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as e:
            raise InvalidArgument(f"{path}: invalid JSON: {e}") from None
        return cls.from_json(data, str(path))


def _decode_entry(entry: Mapping[str, Any], where: str) -> Credentials | None:
    if entry.get("identitytoken"):
        return "", str(entry["identitytoken"])
    if entry.get("auth"):
        try:
            raw = base64.b64decode(str(entry["auth"]), validate=False).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument(f"{where}: 'auth' is not base64 of 'user:password'") from None
        user, sep, secret = raw.partition(":")
        if not sep:
            raise InvalidArgument(f"{where}: 'auth' is not base64 of 'user:password'")
        return user, secret
    if entry.get("username") or entry.get("password"):
        return str(entry.get("username", "")), str(entry.get("password", ""))
    return None


def as_provider(credentials: CredentialsProvider | Mapping[str, Credentials] | None
                ) -> CredentialsProvider | None:
    """A callable provider from a provider, a mapping, or ``None``."""
    if credentials is None or callable(credentials):
        return credentials
    return StaticCredentials(credentials)


async def lookup(provider: CredentialsProvider | None, host: str) -> Credentials | None:
    """Call ``provider`` (sync or async) for ``host``; ``None`` when it has nothing."""
    if provider is None:
        return None
    result = provider(host)
    if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
        result = await result
    if not result or not (result[0] or result[1]):
        return None
    return str(result[0]), str(result[1])


# -- tokens and the authorizer ---------------------------------------------------------------

class AuthError(Exception):
    """Credentials were refused or a token could not be had (the request layer words it)."""


@dataclasses.dataclass
class _Token:
    value: str
    expires_at: float | None


@dataclasses.dataclass
class _HostAuth:
    scheme: str
    credentials: Credentials | None
    realm: str = ""
    service: str = ""
    scopes: tuple[str, ...] = ()
    ssl: ssl.SSLContext | None = None
    tokens: dict[str, asyncio.Future[_Token]] = dataclasses.field(default_factory=dict)


def _realm_may_get_credentials(realm: str) -> bool:
    parts = urllib.parse.urlsplit(realm)
    return parts.scheme == "https" or (parts.scheme == "http" and is_localhost(parts.netloc))


class Authorizer:
    """Answers registry challenges; one per resolver, state kept per registry host.

    ``session`` is used for token requests; ``credentials`` looked up by host
    when a challenge arrives; ``headers`` (e.g. User-Agent) go on token requests.
    """

    def __init__(self, session: aiohttp.ClientSession, credentials: CredentialsProvider | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> None:
        self.session = session
        self.credentials = credentials
        self.headers = dict(headers or {})
        self.timeout = timeout
        self._hosts: dict[str, _HostAuth] = {}

    def known(self, host: str) -> bool:
        """Whether a challenge from ``host`` has been answered (requests will carry credentials)."""
        return host in self._hosts

    async def challenge(self, host: str, www_authenticate: Sequence[str], *,
                        ssl_context: ssl.SSLContext | None = None) -> bool:
        """Record how to answer ``host``'s 401; ``True`` when a retry with credentials makes sense.

        ``False``: no supported challenge, or basic auth without credentials.
        """
        for c in parse_challenges(www_authenticate):
            if c.scheme == "bearer":
                realm = c.params.get("realm", "")
                parts = urllib.parse.urlsplit(realm)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    raise AuthError(f"invalid token auth challenge realm {realm!r}")
                scopes = tuple(c.params["scope"].split()) if c.params.get("scope") else ()
                old = self._hosts.get(host)
                if (old is not None and old.scheme == "bearer" and old.realm == realm
                        and old.service == c.params.get("service", "")):
                    old.scopes = scopes  # the registry's latest word on what it wants
                    return True
                creds = await lookup(self.credentials, host)
                self._hosts[host] = _HostAuth("bearer", creds, realm, c.params.get("service", ""),
                                              scopes, ssl_context)
                return True
            if c.scheme == "basic":
                creds = await lookup(self.credentials, host)
                if creds is None or not creds[0] or not creds[1]:
                    continue
                self._hosts[host] = _HostAuth("basic", creds)
                return True
        return False

    def forget(self, host: str, scopes: Sequence[str] = ()) -> None:
        """Drop the cached token for ``host`` + ``scopes`` (after the registry refused it)."""
        h = self._hosts.get(host)
        if h is not None:
            h.tokens.pop(self._scope_key(h, scopes), None)

    @staticmethod
    def _scope_key(h: _HostAuth, scopes: Sequence[str]) -> str:
        return " ".join(sorted(set(scopes) | set(h.scopes)))

    async def authorization(self, host: str, scopes: Sequence[str] = ()) -> str | None:
        """The ``Authorization`` header value for a request to ``host`` needing ``scopes``.

        ``None`` before any challenge from ``host``. Raises :class:`AuthError`
        when the token server refuses.
        """
        h = self._hosts.get(host)
        if h is None:
            return None
        if h.scheme == "basic":
            assert h.credentials is not None
            raw = f"{h.credentials[0]}:{h.credentials[1]}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        key = self._scope_key(h, scopes)
        fut = h.tokens.get(key)
        if fut is not None and fut.done() and (fut.exception() is not None or (
                fut.result().expires_at is not None and fut.result().expires_at <= time.monotonic())):
            fut = None
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            h.tokens[key] = fut
            try:
                fut.set_result(await self._fetch_token(h, key.split()))
            except BaseException as e:
                h.tokens.pop(key, None)
                fut.set_exception(e)
                fut.exception()  # retrieved: the waiters and this caller see it
                raise
        token = await asyncio.shield(fut)
        return "Bearer " + token.value

    async def _fetch_token(self, h: _HostAuth, scopes: list[str]) -> _Token:
        creds = h.credentials
        if creds is not None and not _realm_may_get_credentials(h.realm):
            creds = None  # never send credentials to a plain-http realm off this machine
        headers = dict(self.headers)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        try:
            if creds is not None and not creds[0]:
                form = {"grant_type": "refresh_token", "refresh_token": creds[1], "service": h.service,
                        "client_id": CLIENT_ID}
                if scopes:
                    form["scope"] = " ".join(scopes)
                async with self.session.post(h.realm, data=form, headers=headers, ssl=h.ssl or True,
                                             allow_redirects=False, timeout=timeout) as resp:
                    return await self._token_from(resp, h.realm)
            params: list[tuple[str, str]] = []
            if h.service:
                params.append(("service", h.service))
            params += [("scope", s) for s in scopes]
            if creds is not None:
                raw = f"{creds[0]}:{creds[1]}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
            async with self.session.get(h.realm, params=params, headers=headers, ssl=h.ssl or True,
                                        allow_redirects=creds is None,
                                        timeout=timeout) as resp:
                return await self._token_from(resp, h.realm)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise AuthError(f"failed to fetch token from {h.realm}: {e or type(e).__name__}") from None

    @staticmethod
    async def _token_from(resp: aiohttp.ClientResponse, realm: str) -> _Token:
        if not 200 <= resp.status < 400:
            body = (await resp.content.read(4096)).decode(errors="replace").strip()
            raise AuthError(f"failed to fetch token from {realm}: {resp.status} {resp.reason}"
                            + (f": {body}" if body else ""))
        try:
            data = json.loads(await resp.content.read(1 << 20))
        except ValueError:
            raise AuthError(f"token response from {realm} is not JSON") from None
        if not isinstance(data, dict):
            raise AuthError(f"token response from {realm} is not a JSON object")
        token = data.get("access_token") or data.get("token")
        if not token or not isinstance(token, str):
            raise AuthError(f"authorization server {realm} did not include a token in the response")
        expires = data.get("expires_in")
        expires_at = None
        if isinstance(expires, int | float) and not isinstance(expires, bool) and expires > 0:
            expires_at = time.monotonic() + max(float(expires) - 5.0, 1.0)
        return _Token(token, expires_at)
