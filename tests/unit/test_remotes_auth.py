"""WWW-Authenticate parsing, credentials (mapping, docker config.json) and the token authorizer."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from aiocontainerd.errors import InvalidArgument
from aiocontainerd.remotes.auth import (
    AuthError,
    Authorizer,
    Challenge,
    DockerConfig,
    StaticCredentials,
    as_provider,
    lookup,
    parse_challenges,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- challenges -------------------------------------------------------------------------------------

def test_bearer_challenge() -> None:
    (c,) = parse_challenges(['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                             'scope="repository:library/busybox:pull"'])
    assert c == Challenge("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                                     "scope": "repository:library/busybox:pull"})


def test_basic_challenge_and_order() -> None:
    got = parse_challenges(['Basic realm="Registry Realm"', 'Bearer realm="https://t/token"'])
    assert [c.scheme for c in got] == ["bearer", "basic"]
    assert got[1].params == {"realm": "Registry Realm"}


def test_several_challenges_in_one_value() -> None:
    got = parse_challenges(['Basic realm="r", Bearer realm="https://t/token",service=s, Digest nonce=1'])
    assert [c.scheme for c in got] == ["bearer", "digest", "basic"]
    assert got[0].params == {"realm": "https://t/token", "service": "s"}


@pytest.mark.parametrize(("value", "params"), [
    ('Bearer realm="a\\"b",error="insufficient_scope"', {"realm": 'a"b', "error": "insufficient_scope"}),
    ("bearer REALM=tok , Service = svc", {"realm": "tok", "service": "svc"}),
    ('Bearer realm="https://t/token",scope="repository:a:pull repository:b:pull"',
     {"realm": "https://t/token", "scope": "repository:a:pull repository:b:pull"}),
    ("Bearer", {}),
    ('Bearer realm="unterminated', {}),
])
def test_challenge_params(value: str, params: dict[str, str]) -> None:
    (c,) = parse_challenges([value])
    assert c.scheme == "bearer" and dict(c.params) == params


def test_unknown_schemes_skipped() -> None:
    assert parse_challenges(['Negotiate abc', 'NTLM', '']) == []


# -- credentials ------------------------------------------------------------------------------------

def test_static_credentials_aliases() -> None:
    creds = StaticCredentials({"https://index.docker.io/v1/": ("u", "p"), "127.0.0.1:5000": ("a", "b")})
    assert creds("registry-1.docker.io") == ("u", "p") == creds("docker.io")
    assert creds("127.0.0.1:5000") == ("a", "b")
    assert creds("127.0.0.1:5001") is None
    assert creds.hosts() == ["127.0.0.1:5000", "docker.io"]


def test_docker_config_forms(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hubuser:hub:pass")},
        "http://127.0.0.1:5000/v2/": {"username": "plain", "password": "pw"},
        "ghcr.io": {"identitytoken": "refresh-me", "auth": b64("ignored:x")},
        "empty.example.com": {},
    }, "credsStore": "desktop"}))
    config = DockerConfig.load(path)
    assert config("registry-1.docker.io") == ("hubuser", "hub:pass")
    assert config("127.0.0.1:5000") == ("plain", "pw")
    assert config("ghcr.io") == ("", "refresh-me")
    assert config("empty.example.com") is None and config("quay.io") is None


def test_docker_config_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"r.io": {"auth": b64("a:b")}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert DockerConfig.load()("r.io") == ("a", "b")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    assert DockerConfig.load()("r.io") is None  # missing file: no credentials


@pytest.mark.parametrize(("text", "message"), [
    ("{", "invalid JSON"),
    ("[]", "expected a JSON object"),
    ('{"auths": []}', "key 'auths': expected an object"),
    ('{"auths": {"r": 1}}', "key 'auths.r': expected an object"),
    ('{"auths": {"r": {"auth": "%%%"}}}', "not base64"),
    ('{"auths": {"r": {"auth": "' + b64("nocolon") + '"}}}', "not base64 of 'user:password'"),
])
def test_docker_config_invalid(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        DockerConfig.load(path)


async def test_providers() -> None:
    assert as_provider(None) is None
    provider = as_provider({"h": ("u", "p")})
    assert await lookup(provider, "h") == ("u", "p")

    async def async_provider(host: str) -> tuple[str, str] | None:
        return ("x", "y") if host == "h" else None

    assert await lookup(async_provider, "h") == ("x", "y")
    assert await lookup(async_provider, "other") is None
    assert await lookup(lambda host: ("", ""), "h") is None


# -- the authorizer against an in-process token server ------------------------------------------------

class TokenServer:
    def __init__(self) -> None:
        self.requests: list[web.Request] = []
        self.forms: list[dict[str, str]] = []
        self.fail_with = 0
        self.delay = 0.0
        self.count = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request)
        if request.method == "POST":
            self.forms.append(dict(await request.post()))  # type: ignore[arg-type]
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with:
            return web.json_response({"details": "nope"}, status=self.fail_with)
        self.count += 1
        return web.json_response({"token": f"t{self.count}", "expires_in": 300})


@pytest.fixture
async def token_server() -> AsyncIterator[tuple[TokenServer, str]]:
    server = TokenServer()
    app = web.Application()
    app.router.add_route("*", "/token", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield server, f"http://127.0.0.1:{port}/token"
    await runner.cleanup()


async def test_bearer_anonymous_cached_per_scope(token_server: tuple[TokenServer, str]) -> None:
    server, realm = token_server
    async with aiohttp.ClientSession() as session:
        auth = Authorizer(session)
        assert await auth.authorization("reg:5000", ["repository:a:pull"]) is None
        assert await auth.challenge("reg:5000", [f'Bearer realm="{realm}",service="svc",scope="x:y:pull"'])
        got = await asyncio.gather(*[auth.authorization("reg:5000", ["repository:a:pull"]) for _ in range(5)])
        assert set(got) == {"Bearer t1"} and server.count == 1  # one fetch serves concurrent callers
        assert await auth.authorization("reg:5000", ["repository:b:pull"]) == "Bearer t2"
        assert await auth.authorization("reg:5000", ["repository:a:pull"]) == "Bearer t1"
        req = server.requests[0]
        assert req.query["service"] == "svc"
        assert req.query.getall("scope") == ["repository:a:pull", "x:y:pull"]
        assert "Authorization" not in req.headers
        auth.forget("reg:5000", ["repository:a:pull"])
        assert await auth.authorization("reg:5000", ["repository:a:pull"]) == "Bearer t3"
        assert await auth.authorization("other:1", []) is None  # never for another host


async def test_bearer_with_credentials_and_refresh_token(token_server: tuple[TokenServer, str]) -> None:
    server, realm = token_server
    async with aiohttp.ClientSession() as session:
        auth = Authorizer(session, StaticCredentials({"reg": ("alice", "pw"), "ident": ("", "refresh")}))
        await auth.challenge("reg", [f'Bearer realm="{realm}"'])
        assert await auth.authorization("reg", ["repository:a:pull"]) == "Bearer t1"
        assert server.requests[-1].headers["Authorization"] == "Basic " + b64("alice:pw")
        await auth.challenge("ident", [f'Bearer realm="{realm}",service="svc"'])
        assert await auth.authorization("ident", ["repository:a:pull"]) == "Bearer t2"
        assert server.requests[-1].method == "POST"
        assert server.forms[-1] == {"grant_type": "refresh_token", "refresh_token": "refresh",
                                    "service": "svc", "client_id": "aiocontainerd",
                                    "scope": "repository:a:pull"}


async def test_bearer_token_refused(token_server: tuple[TokenServer, str]) -> None:
    server, realm = token_server
    server.fail_with = 401
    async with aiohttp.ClientSession() as session:
        auth = Authorizer(session, StaticCredentials({"reg": ("alice", "bad")}))
        await auth.challenge("reg", [f'Bearer realm="{realm}"'])
        with pytest.raises(AuthError, match="401"):
            await auth.authorization("reg", ["repository:a:pull"])
        server.fail_with = 0  # a refusal is not cached
        assert await auth.authorization("reg", ["repository:a:pull"]) == "Bearer t1"


async def test_basic_needs_credentials() -> None:
    async with aiohttp.ClientSession() as session:
        auth = Authorizer(session)
        assert not await auth.challenge("reg", ['Basic realm="r"'])
        auth = Authorizer(session, {"reg": ("u", "p")}.get)  # type: ignore[arg-type]
        assert await auth.challenge("reg", ['Basic realm="r"'])
        assert await auth.authorization("reg") == "Basic " + b64("u:p")
        assert not await auth.challenge("reg", ["Negotiate"])
        with pytest.raises(AuthError, match="invalid token auth challenge realm"):
            await auth.challenge("reg", ['Bearer realm="ftp://x"'])


async def test_credentials_and_plain_http_realms(token_server: tuple[TokenServer, str]) -> None:
    server, realm = token_server
    async with aiohttp.ClientSession() as session:
        auth = Authorizer(session, StaticCredentials({"reg": ("alice", "pw")}))
        # a loopback realm may get them (test registries); a plain-http realm on the network may not
        await auth.challenge("reg", [f'Bearer realm="{realm}"'])
        await auth.authorization("reg", [])
        assert "Authorization" in server.requests[-1].headers
    from aiocontainerd.remotes.auth import _realm_may_get_credentials
    assert _realm_may_get_credentials("https://auth.example.com/token")
    assert not _realm_may_get_credentials("http://auth.example.com/token")
    assert _realm_may_get_credentials("http://127.0.0.1:5000/token")
