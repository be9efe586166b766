"""A real registry (Debian's ``docker-registry``, CNCF distribution 2.8) and an aiohttp front for it.

``Registry`` runs the real binary on a free loopback port with filesystem storage in a temporary
folder. ``RegistryFront`` is a reverse proxy in front of it that adds what the bare registry does
not do in tests: basic or bearer (Docker token flow) authentication, a record of every request it
saw, fault injection (status codes, truncated or corrupted blobs) and blob redirects to a second
"blob storage" server on another port, the way registries backed by S3 or a CDN behave::

    async with Registry() as registry, RegistryFront(registry, auth="bearer",
                                                     users={"user": "pass"}) as front:
        await push(front.host, "library/busybox", "latest", busybox_image(), auth=("user", "pass"))
        front.truncate_blob(layer.digest, after_bytes=1000)
        ...
        assert all("Authorization" not in r.headers for r in front.seen(server="storage"))

Every server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.support.lifecycle import StartStop

REGISTRY_BINARY = "/usr/bin/docker-registry"
SERVICE = "test-registry"
API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}
AuthMode = Literal["none", "basic", "bearer"]
Server = Literal["front", "token", "storage"]

# Headers that belong to one connection, never forwarded by a proxy (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
    "Transfer-Encoding", "Upgrade", "Host", "Content-Length"))
_REPO_PATH = re.compile(r"^/v2/(?P<name>.+?)/(?P<kind>manifests|blobs|tags|referrers)(?P<rest>/.*)?$")
_XOR = bytes(b ^ 0x5A for b in range(256))   # corrupt_blob: same length, every byte different
_BLOB_PATH = re.compile(r"^/v2/(?P<name>.+?)/blobs/(?P<digest>[a-z0-9+._-]+:[a-zA-Z0-9=_-]+)$")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bound_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready TCP socket bound to a free port on ``host`` (no race with other tests)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    return s


def registry_available(binary: str = REGISTRY_BINARY) -> bool:
    """Whether the real registry binary is installed."""
    return os.access(binary, os.X_OK)


class Registry(StartStop):
    """The real ``docker-registry serve`` on 127.0.0.1:<free port>, storage in a temporary folder.

    No authentication, deletes enabled, log level warn, its output in ``log_path``. Use as an
    async context manager (or ``start()``/``stop()``); ``host`` is ``"127.0.0.1:PORT"``.
    """

    def __init__(self, root: Path | str | None = None, *, binary: str = REGISTRY_BINARY,
                 timeout: float = 20.0) -> None:
        self.binary = binary
        self.timeout = timeout
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="aioc-registry-"))
        self.storage = self.root / "data"
        self.config_path = self.root / "config.yml"
        self.log_path = self.root / "registry.log"
        self.port = 0
        self.process: asyncio.subprocess.Process | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` — the registry's address, as a reference's domain."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    def config(self, port: int) -> str:
        """The registry's YAML configuration for ``port``."""
        return (
            "version: 0.1\n"
            "log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: aiocontainerd-test-secret\n"
            "  headers:\n    X-Content-Type-Options: [nosniff]\n"
            "health:\n  storagedriver:\n    enabled: false\n")

    async def start(self) -> None:
        """Start the registry and wait until ``GET /v2/`` answers 200 (retries another port once
        or twice if the chosen one was taken meanwhile)."""
        if not registry_available(self.binary):
            raise FileNotFoundError(f"{self.binary} is not installed (apt-get install docker-registry)")
        self.storage.mkdir(parents=True, exist_ok=True)
        last: Exception | None = None
        for _ in range(3):
            self.port = free_port()
            self.config_path.write_text(self.config(self.port))
            log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                self.process = await asyncio.create_subprocess_exec(
                    self.binary, "serve", str(self.config_path),
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
            finally:
                os.close(log)
            try:
                await self._wait_ready()
                return
            except (RuntimeError, TimeoutError) as e:
                last = e
                await self._terminate()
        raise RuntimeError(f"docker-registry did not start: {last}\n{self.log_text()}")

    async def _wait_ready(self) -> None:
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"docker-registry exited with {self.process.returncode}")
                try:
                    async with session.get(f"{self.url}/v2/", timeout=aiohttp.ClientTimeout(total=2)) as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                if loop.time() > deadline:
                    raise TimeoutError(f"docker-registry on {self.host} did not answer in {self.timeout}s")
                await asyncio.sleep(0.02)

    async def _terminate(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """SIGTERM (then SIGKILL after 5 s) and remove the temporary folder if this object made it."""
        await self._terminate()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_text(self) -> str:
        """What the registry printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class SeenRequest:
    """One request a front server received, as it arrived (before any header was dropped)."""

    server: Server
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    status: int = 0

    @property
    def authorization(self) -> str | None:
        """The Authorization header the client sent, if any."""
        return self.headers.get("Authorization")


@dataclass
class _Fault:
    kind: Literal["fail", "truncate", "corrupt"]
    times: int | None                       # None: every time
    pattern: re.Pattern[str] | None = None  # fail: matched (re.search) against the path
    method: str | None = None
    status: int = 500
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    digest: str = ""
    after_bytes: int = 0

    def take(self) -> bool:
        """Consume one use; False if used up."""
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class _Token:
    user: str | None
    scopes: frozenset[tuple[str, str, str]]   # (type, name, action)
    expires: float


def _error_body(code: str, message: str, detail: object = None) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()


def _default_error_code(path: str, status: int) -> str:
    if status == 404:
        m = _REPO_PATH.match(path)
        if m and m["kind"] == "manifests":
            return "MANIFEST_UNKNOWN"
        if m and m["kind"] == "blobs":
            return "BLOB_UNKNOWN"
        return "NAME_UNKNOWN"
    codes = {400: "UNSUPPORTED", 401: "UNAUTHORIZED", 403: "DENIED", 429: "TOOMANYREQUESTS"}
    return codes.get(status, "UNKNOWN")


def parse_scope(scope: str) -> set[tuple[str, str, str]]:
    """``repository:a/b:pull,push`` → {("repository", "a/b", "pull"), ("repository", "a/b", "push")}.

    The name may hold a port-less host and slashes; type and actions never hold a colon.
    """
    out: set[tuple[str, str, str]] = set()
    for part in scope.split():
        kind, _, rest = part.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind and name:
            out.update((kind, name, a) for a in actions.split(",") if a)
    return out


class RegistryFront(StartStop):
    """An aiohttp reverse proxy in front of a ``Registry``: auth, request log, fault injection.

    ``auth``: ``"none"``; ``"basic"`` (``users`` checked on every /v2 request); or ``"bearer"``
    (the Docker token flow: 401 with ``WWW-Authenticate: Bearer realm="http://<front>/token",
    service="test-registry",scope="repository:<name>:pull"`` — ``pull,push`` for writes —, a
    token endpoint at ``GET /token`` (and OAuth2 ``POST /token`` unless ``oauth_post=False``), and
    the token checked on every /v2 request). With ``users`` set the token endpoint needs their
    basic credentials; ``anonymous_pull=True`` lets anyone pull (basic mode: GET/HEAD without
    credentials; bearer: anonymous pull-only tokens). Credentials are never forwarded upstream.

    Fault injection (each consumed per matching request; settable any time):
    ``fail(path_regex, status, times=1)``, ``truncate_blob(digest, after_bytes, times=1)``,
    ``corrupt_blob(digest, times=None)``; ``redirect_blobs = True`` answers blob GET/HEAD with
    307 to the "blob storage" server (``storage_host``, another port) which serves the bytes
    itself and records whether an Authorization header arrived. Faults apply where the bytes are
    served: on the front, or on the storage server when redirecting; ``fail`` rules are checked
    after authentication succeeded (so a client's anonymous first try does not use them up), on
    every server. Blob ``Range`` requests are honoured (206, passed to the registry).

    Every request is recorded in ``requests`` (see ``seen()``).
    """

    def __init__(self, registry: Registry | str, *, auth: AuthMode = "none",
                 users: Mapping[str, str] | None = None, anonymous_pull: bool = False,
                 redirect_blobs: bool = False, oauth_post: bool = True, token_ttl: int = 300,
                 service: str = SERVICE) -> None:
        self.upstream = registry.host if isinstance(registry, Registry) else registry
        self.auth: AuthMode = auth
        self.users: dict[str, str] = dict(users or {})
        self.anonymous_pull = anonymous_pull
        self.redirect_blobs = redirect_blobs
        self.oauth_post = oauth_post
        self.token_ttl = token_ttl
        self.service = service
        self.requests: list[SeenRequest] = []
        self.tokens: dict[str, _Token] = {}
        self._faults: list[_Fault] = []
        self._signing_key = secrets.token_bytes(16)
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.port = 0
        self.storage_port = 0

    # -- addresses ---------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` of the front (use it as the registry host in references)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage_host(self) -> str:
        """``127.0.0.1:PORT`` of the blob storage server that redirects point to."""
        return f"127.0.0.1:{self.storage_port}"

    @property
    def realm(self) -> str:
        """The bearer token endpoint, ``http://127.0.0.1:PORT/token``."""
        return f"{self.url}/token"

    # -- fault injection -----------------------------------------------------------------------
    def fail(self, path_regex: str, status: int, times: int | None = 1, *, method: str | None = None,
             headers: Mapping[str, str] | None = None, body: bytes | None = None) -> None:
        """Answer the next ``times`` requests whose path matches ``path_regex`` (re.search; None:
        forever), and whose method is ``method`` if given, with ``status`` and a distribution-style
        JSON error (or ``body``), plus ``headers`` (e.g. ``Retry-After``)."""
        self._faults.append(_Fault("fail", times, re.compile(path_regex), method.upper() if method else None,
                                   status, dict(headers or {}), body))

    def truncate_blob(self, digest: str, after_bytes: int, times: int | None = 1) -> None:
        """Blob GETs of ``digest`` send the full Content-Length but close the connection after
        ``after_bytes`` body bytes."""
        self._faults.append(_Fault("truncate", times, digest=digest, after_bytes=after_bytes))

    def corrupt_blob(self, digest: str, times: int | None = None) -> None:
        """Blob GETs of ``digest`` serve other bytes of the same length (every byte XOR 0x5A)."""
        self._faults.append(_Fault("corrupt", times, digest=digest))

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        self._faults.clear()

    def expire_tokens(self) -> None:
        """Make every token issued so far invalid (clients must fetch a new one)."""
        self.tokens.clear()

    def seen(self, path_regex: str | None = None, *, method: str | None = None,
             server: Server | None = None) -> list[SeenRequest]:
        """Recorded requests, optionally filtered by path (re.search), method and server."""
        pattern = re.compile(path_regex) if path_regex is not None else None
        return [r for r in self.requests
                if (pattern is None or pattern.search(r.path))
                and (method is None or r.method == method.upper())
                and (server is None or r.server == server)]

    def _take_fail(self, request: web.Request) -> web.Response | None:
        for f in self._faults:
            if (f.kind == "fail" and f.pattern is not None and f.pattern.search(request.path)
                    and (f.method is None or f.method == request.method) and f.take()):
                body = f.body if f.body is not None else _error_body(
                    _default_error_code(request.path, f.status), f"injected failure {f.status}")
                return web.Response(status=f.status, body=body, headers={
                    "Content-Type": "application/json", **API_VERSION_HEADER, **f.headers})
        return None

    def _take_blob_faults(self, digest: str) -> tuple[int | None, bool]:
        truncate: int | None = None
        corrupt = False
        for f in self._faults:
            if f.digest != digest:
                continue
            if f.kind == "truncate" and truncate is None and f.take():
                truncate = f.after_bytes
            elif f.kind == "corrupt" and not corrupt and f.take():
                corrupt = True
        return truncate, corrupt

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the front and the storage server on free loopback ports."""
        self._session = aiohttp.ClientSession(auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                              timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        front = web.Application(client_max_size=1 << 40)
        front.router.add_route("*", "/token", self._token)
        front.router.add_route("*", "/{tail:.*}", self._front)
        storage = web.Application()
        storage.router.add_route("*", "/{tail:.*}", self._storage)
        self.port = await self._serve(front)
        self.storage_port = await self._serve(storage)

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await runner.setup()
        self._runners.append(runner)
        sock = bound_socket()
        await web.SockSite(runner, sock).start()
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        """Stop both servers and close the upstream session."""
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- auth ----------------------------------------------------------------------------------
    def _record(self, server: Server, request: web.Request) -> SeenRequest:
        seen = SeenRequest(server, request.method, request.path, request.query_string,
                           CIMultiDict(request.headers))
        self.requests.append(seen)
        return seen

    def _basic_user(self, header: str | None) -> tuple[str | None, bool]:
        """(user, valid) from a Basic Authorization header; (None, False) when absent."""
        if not header or not header.lower().startswith("basic "):
            return None, False
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except ValueError:
            return None, False
        return user, self.users.get(user) == password and user in self.users

    def _required(self, request: web.Request) -> tuple[str, str, str] | None:
        """The scope entry a /v2 request needs; None for the base endpoint."""
        m = _REPO_PATH.match(request.path)
        write = request.method not in ("GET", "HEAD")
        if m:
            return ("repository", m["name"], "push" if write else "pull")
        if request.path.rstrip("/") == "/v2/_catalog":
            return ("registry", "catalog", "*")
        return None

    def _challenge(self, request: web.Request, error: str | None = None) -> web.Response:
        if self.auth == "basic":
            challenge = f'Basic realm="{self.service}"'
        else:
            challenge = f'Bearer realm="{self.realm}",service="{self.service}"'
            need = self._required(request)
            if need is not None:
                kind, name, action = need
                actions = "pull,push" if action == "push" else action
                challenge += f',scope="{kind}:{name}:{actions}"'
            if error:
                challenge += f',error="{error}"'
        return web.Response(status=401, body=_error_body("UNAUTHORIZED", "authentication required"),
                            headers={"WWW-Authenticate": challenge, "Content-Type": "application/json",
                                     **API_VERSION_HEADER})

    def _authorize(self, request: web.Request) -> web.Response | None:
        """None if the request may pass, else the 401 to answer."""
        if self.auth == "none":
            return None
        read = request.method in ("GET", "HEAD")
        header = request.headers.get("Authorization")
        if self.auth == "basic":
            _, valid = self._basic_user(header)
            if valid or (header is None and read and self.anonymous_pull):
                return None
            return self._challenge(request)
        if not header or not header.lower().startswith("bearer "):
            return self._challenge(request)
        token = self.tokens.get(header[7:].strip())
        if token is None or token.expires < time.time():
            return self._challenge(request, "invalid_token")
        need = self._required(request)
        if need is None or need in token.scopes or (need[0], need[1], "*") in token.scopes:
            return None
        return self._challenge(request, "insufficient_scope")

    async def _token(self, request: web.Request) -> web.StreamResponse:
        """The token endpoint: GET (Docker token spec) or POST (OAuth2 password/refresh grant)."""
        seen = self._record("token", request)
        response = await self._token_response(request)
        seen.status = response.status
        return response

    async def _token_response(self, request: web.Request) -> web.Response:
        if self.auth != "bearer":
            return web.Response(status=404)
        failure = self._take_fail(request)
        if failure is not None:
            return failure
        refresh: str | None = None
        if request.method == "GET":
            scopes = request.query.getall("scope", [])
            user, valid = self._basic_user(request.headers.get("Authorization"))
            has_credentials = "Authorization" in request.headers
        elif request.method == "POST" and self.oauth_post:
            form = await request.post()
            scopes = [str(s) for s in form.getall("scope", [])]
            grant = form.get("grant_type")
            if grant == "password":
                user = str(form.get("username", ""))
                valid = user in self.users and self.users[user] == form.get("password")
                has_credentials = True
            elif grant == "refresh_token":
                old = self.tokens.get(str(form.get("refresh_token", "")))
                user, valid, has_credentials = (old.user if old else None), old is not None, True
            else:
                return web.json_response({"error": "unsupported_grant_type"}, status=400)
        else:
            return web.Response(status=404 if request.method == "POST" else 405)
        requested: set[tuple[str, str, str]] = set()
        for s in scopes:
            requested |= parse_scope(s)
        if has_credentials and not valid:
            return web.json_response({"details": "incorrect username or password"}, status=401,
                                     headers={"WWW-Authenticate": f'Basic realm="{self.service}"'})
        if not has_credentials and self.users:
            if not self.anonymous_pull:
                return web.json_response({"details": "authentication required"}, status=401,
                                         headers={"WWW-Authenticate": f'Basic realm="{self.service}"'})
            requested = {s for s in requested if s[2] == "pull"}
            user = None
        token = secrets.token_urlsafe(24)
        self.tokens[token] = _Token(user, frozenset(requested), time.time() + self.token_ttl)
        granted = " ".join(sorted(f"{k}:{n}:{a}" for k, n, a in requested))
        body: dict[str, object] = {"token": token, "access_token": token, "expires_in": self.token_ttl,
                                   "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if request.method == "POST":
            refresh = secrets.token_urlsafe(24)
            self.tokens[refresh] = _Token(user, frozenset(requested), time.time() + 86400)
            body.update(refresh_token=refresh, scope=granted, token_type="Bearer")
        return web.json_response(body)

    # -- proxying ------------------------------------------------------------------------------
    async def _front(self, request: web.Request) -> web.StreamResponse:
        seen = self._record("front", request)
        response = await self._front_response(request)
        seen.status = response.status
        return response

    async def _front_response(self, request: web.Request) -> web.StreamResponse:
        if not request.path.startswith("/v2"):
            return web.Response(status=404)
        denied = self._authorize(request)
        if denied is not None:
            return denied
        failure = self._take_fail(request)
        if failure is not None:
            return failure
        blob = _BLOB_PATH.match(request.path)
        if blob is not None and request.method in ("GET", "HEAD"):
            if self.redirect_blobs:
                return self._redirect(blob["name"], blob["digest"])
            return await self._serve_blob(request, blob["name"], blob["digest"])
        return await self._forward(request)

    def _signature(self, path: str) -> str:
        return hashlib.sha256(self._signing_key + path.encode()).hexdigest()[:32]

    def _redirect(self, name: str, digest: str) -> web.Response:
        path = f"/storage/{name}/{digest}"
        location = f"http://{self.storage_host}{quote(path)}?expires=300&sig={self._signature(path)}"
        return web.Response(status=307, headers={"Location": location, **API_VERSION_HEADER})

    async def _storage(self, request: web.Request) -> web.StreamResponse:
        seen = self._record("storage", request)
        response = await self._storage_response(request)
        seen.status = response.status
        return response

    async def _storage_response(self, request: web.Request) -> web.StreamResponse:
        m = re.match(r"^/storage/(?P<name>.+)/(?P<digest>[^/]+)$", request.path)
        if m is None or request.method not in ("GET", "HEAD"):
            return web.Response(status=404)
        if request.query.get("sig") != self._signature(request.path):
            return web.Response(status=403, text="signature does not match (was the URL altered?)")
        failure = self._take_fail(request)
        if failure is not None:
            return failure
        return await self._serve_blob(request, m["name"], m["digest"])

    def _upstream_headers(self, request: web.Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() != "authorization"}
        headers["X-Forwarded-Host"] = self.host
        headers["X-Forwarded-Proto"] = "http"
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        return headers

    def _downstream_headers(self, upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        for k, v in upstream.headers.items():
            if k.lower() in HOP_BY_HOP:
                continue
            if k.lower() == "location":
                v = v.replace(f"http://{self.upstream}", self.url)
            headers.add(k, v)
        return headers

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = request.content if request.body_exists else None
        async with self._session.request(
                request.method, f"http://{self.upstream}{request.rel_url}", data=body,
                headers=self._upstream_headers(request), allow_redirects=False,
                skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding")) as upstream:
            return await self._relay(request, upstream, None, False)

    async def _serve_blob(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("range", "if-range", "accept", "if-none-match")}
        truncate, corrupt = self._take_blob_faults(digest) if request.method == "GET" else (None, False)
        async with self._session.request(
                request.method, f"http://{self.upstream}/v2/{name}/blobs/{digest}", headers=headers,
                allow_redirects=False, skip_auto_headers=("User-Agent", "Accept-Encoding")) as upstream:
            if upstream.status == 416:
                # distribution 2.8 announces the whole blob's Content-Length on a 416 and then
                # sends a 33-byte message: answer a well-formed 416 instead.
                answer = self._downstream_headers(upstream)
                answer.popall("Content-Type", None)
                return web.Response(status=416, text="invalid range: failed to overlap\n", headers=answer)
            return await self._relay(request, upstream, truncate, corrupt)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse, truncate: int | None,
                     corrupt: bool) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=self._downstream_headers(upstream))
        length = upstream.headers.get("Content-Length")
        if length is not None:
            response.content_length = int(length)
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        sent = 0
        async for chunk in upstream.content.iter_chunked(1 << 16):
            if corrupt:
                chunk = chunk.translate(_XOR)
            if truncate is not None and sent + len(chunk) >= truncate:
                await response.write(chunk[: truncate - sent])
                self._cut(request)
                return response
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
        return response

    @staticmethod
    def _cut(request: web.Request) -> None:
        """Close the client connection mid-body (the client sees fewer bytes than announced)."""
        transport = request.transport
        if transport is not None:
            transport.close()


__all__ = ["REGISTRY_BINARY", "SERVICE", "Registry", "RegistryFront", "SeenRequest", "bound_socket",
           "free_port", "parse_scope", "registry_available"]
