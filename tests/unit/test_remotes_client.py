"""Resolver, fetcher and pusher against small in-process registries that misbehave on purpose.

The real registry (tests/integration/test_remotes.py) shows the normal paths; these servers
produce the quirks a real one does not: missing headers, ignored ranges, schema 1, odd
Location headers, redirects to other hosts, rate limits.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from aiocontainerd.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable, Unimplemented
from aiocontainerd.remotes import Descriptor, Limits, Resolver, mediatypes
from aiocontainerd.remotes.hosts import RegistryHost, static_hosts

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                       "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": "sha256:" + "c" * 64,
                                  "size": 2}, "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 40
BLOB_DESC = Descriptor(mediatypes.OCI_LAYER, "sha256:" + hashlib.sha256(BLOB).hexdigest(), len(BLOB))


class Fake:
    """An aiohttp server whose routes the test fills in; records (method, path_qs, headers)."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.host = ""
        self.runner: web.AppRunner | None = None

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path_qs, dict(request.headers)))
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN", "message": "nope"}]}, status=404)
        return await handler(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.host = f"127.0.0.1:{port}"

    def registry_host(self, **kwargs: object) -> RegistryHost:
        return RegistryHost(self.host, scheme="http", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    f = Fake()
    await f.start()
    yield f
    assert f.runner is not None
    await f.runner.cleanup()


@pytest.fixture
async def other() -> AsyncIterator[Fake]:
    f = Fake()
    await f.start()
    yield f
    assert f.runner is not None
    await f.runner.cleanup()


def resolver_for(*hosts: RegistryHost, **kwargs: object) -> Resolver:
    return Resolver(static_hosts(*hosts), **kwargs)  # type: ignore[arg-type]


def serve(body: bytes, content_type: str, *, digest: str | None = None, head_digest: bool = True,
          status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": content_type}
        if digest and (request.method == "GET" or head_digest):
            headers["Docker-Content-Digest"] = digest
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)
    return handler


# -- resolve ------------------------------------------------------------------------------------------

async def test_head_without_digest_falls_back_to_get(fake: Fake) -> None:
    fake.on("HEAD", "/v2/app/manifests/v1", serve(MANIFEST, mediatypes.OCI_MANIFEST))
    fake.on("GET", "/v2/app/manifests/v1", serve(MANIFEST, mediatypes.OCI_MANIFEST + "; charset=utf-8"))
    async with resolver_for(fake.registry_host()) as r:
        _, d = await r.resolve(f"{fake.host}/app:v1")
    assert d == Descriptor(mediatypes.OCI_MANIFEST, MANIFEST_DIGEST, len(MANIFEST))
    assert [m for m, _, _ in fake.seen] == ["HEAD", "GET"]
    assert fake.seen[1][2]["Accept"] == mediatypes.RESOLVE_ACCEPT


async def test_get_body_digest_is_verified(fake: Fake) -> None:
    fake.on("GET", f"/v2/app/manifests/{MANIFEST_DIGEST}", serve(MANIFEST + b" ", mediatypes.OCI_MANIFEST))
    fake.on("HEAD", f"/v2/app/manifests/{MANIFEST_DIGEST}", serve(MANIFEST, ""))
    fake.on("GET", "/v2/app/manifests/v1", serve(MANIFEST, mediatypes.OCI_MANIFEST,
                                                 digest="sha256:" + "0" * 64, head_digest=False))
    fake.on("HEAD", "/v2/app/manifests/v1", serve(MANIFEST, mediatypes.OCI_MANIFEST))
    async with resolver_for(fake.registry_host()) as r:
        with pytest.raises(FailedPrecondition, match=f"expected {MANIFEST_DIGEST}"):
            await r.resolve(f"{fake.host}/app@{MANIFEST_DIGEST}")
        with pytest.raises(FailedPrecondition, match="does not match the registry's Docker-Content-Digest"):
            await r.resolve(f"{fake.host}/app:v1")


async def test_schema1_refused(fake: Fake) -> None:
    schema1 = b'{"schemaVersion": 1, "name": "app", "tag": "old", "fsLayers": []}'
    fake.on("HEAD", "/v2/app/manifests/old", serve(schema1, mediatypes.DOCKER_SCHEMA1_MANIFEST,
                                                   digest="sha256:" + "1" * 64))
    fake.on("HEAD", "/v2/app/manifests/plain", serve(schema1, "text/plain", digest="sha256:" + "1" * 64))
    fake.on("GET", "/v2/app/manifests/plain", serve(schema1, "text/plain"))
    fake.on("HEAD", "/v2/app/manifests/fine", serve(MANIFEST, "text/plain", digest=MANIFEST_DIGEST))
    fake.on("GET", "/v2/app/manifests/fine", serve(MANIFEST, "text/plain"))
    async with resolver_for(fake.registry_host()) as r:
        for tag in ("old", "plain"):
            with pytest.raises(Unimplemented, match="schema 1 manifests are not supported"):
                await r.resolve(f"{fake.host}/app:{tag}")
        _, d = await r.resolve(f"{fake.host}/app:fine")  # text/plain holding OCI: sniffed
    assert d.media_type == mediatypes.OCI_MANIFEST


async def test_head_404_quirk_is_checked_with_get(fake: Fake) -> None:
    fake.on("HEAD", "/v2/app/manifests/v1", serve(b"", "", status=404))
    fake.on("GET", "/v2/app/manifests/v1", serve(MANIFEST, mediatypes.OCI_MANIFEST, digest=MANIFEST_DIGEST))
    async with resolver_for(fake.registry_host()) as r:
        _, d = await r.resolve(f"{fake.host}/app:v1")
        assert d.digest == MANIFEST_DIGEST
        with pytest.raises(NotFound, match="app:v2: not found"):
            await r.resolve(f"{fake.host}/app:v2")


async def test_digest_falls_back_to_blobs_endpoint(fake: Fake) -> None:
    fake.on("HEAD", f"/v2/app/blobs/{MANIFEST_DIGEST}", serve(MANIFEST, "application/octet-stream"))
    fake.on("GET", f"/v2/app/blobs/{MANIFEST_DIGEST}", serve(MANIFEST, "application/octet-stream"))
    async with resolver_for(fake.registry_host()) as r:
        _, d = await r.resolve(f"{fake.host}/app@{MANIFEST_DIGEST}")
    assert d == Descriptor(mediatypes.OCI_MANIFEST, MANIFEST_DIGEST, len(MANIFEST))
    assert fake.seen[0][1] == f"/v2/app/manifests/{MANIFEST_DIGEST}"


async def test_no_fallback_to_blobs_after_other_errors(fake: Fake) -> None:
    fake.on("HEAD", f"/v2/app/manifests/{MANIFEST_DIGEST}", serve(b"", "", status=403))
    fake.on("GET", f"/v2/app/blobs/{MANIFEST_DIGEST}", serve(MANIFEST, "application/octet-stream"))
    async with resolver_for(fake.registry_host()) as r:
        with pytest.raises(FailedPrecondition, match="pull access denied"):
            await r.resolve(f"{fake.host}/app@{MANIFEST_DIGEST}")
    assert not [p for _, p, _ in fake.seen if "/blobs/" in p]


async def test_oversized_streamed_manifest(fake: Fake) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": mediatypes.OCI_MANIFEST})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b" " * 100)
        await resp.write_eof()
        return resp

    fake.on("GET", "/v2/app/manifests/big", chunked)
    fake.on("HEAD", "/v2/app/manifests/big", serve(b"", "", status=405))
    async with resolver_for(fake.registry_host(), limits=Limits(max_manifest_size=500)) as r:
        with pytest.raises(InvalidArgument, match="larger than the limit of 500 bytes"):
            await r.resolve(f"{fake.host}/app:big")


async def test_mirror_gets_ns_and_falls_through(fake: Fake, other: Fake) -> None:
    other.on("HEAD", "/v2/library/app/manifests/v1", serve(MANIFEST, mediatypes.OCI_MANIFEST,
                                                           digest=MANIFEST_DIGEST))
    mirror = fake.registry_host(capabilities=frozenset({"pull", "resolve"}))
    async with resolver_for(mirror, other.registry_host()) as r:
        _, d = await r.resolve(f"{other.host}/library/app:v1")
    assert d.digest == MANIFEST_DIGEST
    assert fake.seen[0][1] == f"/v2/library/app/manifests/v1?ns={other.host}"
    assert other.seen[0][1] == "/v2/library/app/manifests/v1"


async def test_no_resolve_hosts() -> None:
    host = RegistryHost("127.0.0.1:9", scheme="http", capabilities=frozenset({"pull"}))
    async with resolver_for(host) as r:
        with pytest.raises(NotFound, match="no resolve hosts"):
            await r.resolve("127.0.0.1:9/app:v1")


async def test_rate_limit_is_retried(fake: Fake) -> None:
    calls = 0

    async def limited(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls < 3:
            return web.Response(status=429, headers={"Retry-After": "0"})
        return await serve(MANIFEST, mediatypes.OCI_MANIFEST, digest=MANIFEST_DIGEST)(request)

    fake.on("HEAD", "/v2/app/manifests/v1", limited)
    async with resolver_for(fake.registry_host()) as r:
        _, d = await r.resolve(f"{fake.host}/app:v1")
    assert d.digest == MANIFEST_DIGEST and calls == 3


async def test_unreachable_host_is_unavailable() -> None:
    async with resolver_for(RegistryHost("127.0.0.1:9", scheme="http")) as r:
        with pytest.raises(Unavailable, match=r"127\.0\.0\.1:9"):
            await r.resolve("127.0.0.1:9/app:v1")


# -- fetch --------------------------------------------------------------------------------------------

def blob_handler(*, honour_range: bool = True, content_range: str | None = None, extra: bytes = b"",
                 status_at_end: int = 416) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        rng = request.headers.get("Range")
        if rng and honour_range:
            start = int(rng.removeprefix("bytes=").rstrip("-"))
            if start >= len(BLOB):
                return web.Response(status=status_at_end)
            return web.Response(status=206, body=BLOB[start:] + extra, headers={
                "Content-Range": content_range or f"bytes {start}-{len(BLOB) - 1}/{len(BLOB)}"})
        return web.Response(body=BLOB + extra)
    return handler


async def collect(r: Resolver, name: str, desc: Descriptor, offset: int = 0) -> bytes:
    return b"".join([c async for c in r.fetcher(name).fetch(desc, offset)])


async def test_range_ignored_discards_prefix(fake: Fake) -> None:
    fake.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", blob_handler(honour_range=False))
    async with resolver_for(fake.registry_host()) as r:
        assert await collect(r, f"{fake.host}/app", BLOB_DESC, 1000) == BLOB[1000:]
    assert fake.seen[0][2]["Range"] == "bytes=1000-" and fake.seen[0][2]["Accept-Encoding"] == "identity"


async def test_range_answers(fake: Fake) -> None:
    fake.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", blob_handler(content_range="bytes 5-9/10240"))
    async with resolver_for(fake.registry_host()) as r:
        with pytest.raises(FailedPrecondition, match="unhandled content range"):
            await collect(r, f"{fake.host}/app", BLOB_DESC, 100)
        short = Descriptor(BLOB_DESC.media_type, BLOB_DESC.digest, 0)  # size unknown
        fake.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", blob_handler())
        assert await collect(r, f"{fake.host}/app", short) == BLOB


async def test_more_bytes_than_the_descriptor(fake: Fake) -> None:
    fake.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", blob_handler(extra=b"junk"))
    async with resolver_for(fake.registry_host()) as r:
        with pytest.raises(FailedPrecondition, match="more than the descriptor's"):
            await collect(r, f"{fake.host}/app", BLOB_DESC)


async def test_fetch_tries_the_next_host(fake: Fake, other: Fake) -> None:
    other.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", blob_handler())
    async with resolver_for(fake.registry_host(), other.registry_host()) as r:
        assert await collect(r, f"{other.host}/app", BLOB_DESC) == BLOB
    assert fake.seen[0][1].startswith(f"/v2/app/blobs/{BLOB_DESC.digest}?ns=")


async def test_manifest_fetched_from_manifests_endpoint(fake: Fake) -> None:
    fake.on("GET", f"/v2/app/manifests/{MANIFEST_DIGEST}", serve(MANIFEST, mediatypes.OCI_MANIFEST))
    d = Descriptor(mediatypes.OCI_MANIFEST, MANIFEST_DIGEST, len(MANIFEST))
    async with resolver_for(fake.registry_host()) as r:
        assert await r.fetcher(f"{fake.host}/app").read(d) == MANIFEST
        with pytest.raises(InvalidArgument, match="larger than the limit"):
            await r.fetcher(f"{fake.host}/app").read(d, max_size=10)
    assert fake.seen[0][2]["Accept"] == f"{mediatypes.OCI_MANIFEST}, */*"


# -- redirects and credentials --------------------------------------------------------------------------

def basic_protected(inner: Handler) -> Handler:
    good = "Basic " + base64.b64encode(b"u:p").decode()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != good:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="test"'})
        return await inner(request)
    return handler


async def test_redirect_to_another_host_drops_credentials(fake: Fake, other: Fake) -> None:
    async def to_storage(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": f"http://{other.host}/store/blob?sig=secret"})

    async def same_host(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": f"/v2/app/blobs/{BLOB_DESC.digest}"})

    fake.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", basic_protected(to_storage))
    fake.on("GET", "/v2/app/blobs/moved", basic_protected(same_host))
    other.on("GET", "/store/blob", blob_handler())
    async with resolver_for(fake.registry_host(), credentials={fake.host: ("u", "p")}) as r:
        assert await collect(r, f"{fake.host}/app", BLOB_DESC, 10) == BLOB[10:]
        assert all("Authorization" not in h for _, _, h in other.seen)
        assert other.seen[-1][2]["Range"] == "bytes=10-"
        # a redirect within the registry host keeps them
        moved = Descriptor(BLOB_DESC.media_type, BLOB_DESC.digest, BLOB_DESC.size)
        fake.seen.clear()
        fake.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", basic_protected(blob_handler()))
        await collect(r, f"{fake.host}/app", moved)
        assert fake.seen[-1][2]["Authorization"].startswith("Basic ")


async def test_redirect_loop_stops(fake: Fake) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": request.path})

    fake.on("GET", f"/v2/app/blobs/{BLOB_DESC.digest}", loop)
    async with resolver_for(fake.registry_host()) as r:
        with pytest.raises(Unavailable, match="stopped after 10 redirects"):
            await collect(r, f"{fake.host}/app", BLOB_DESC)


# -- push -----------------------------------------------------------------------------------------------

async def test_push_upload_location_elsewhere_gets_no_credentials(fake: Fake, other: Fake) -> None:
    async def start(request: web.Request) -> web.StreamResponse:
        return web.Response(status=202, headers={"Location": f"http://{other.host}/upload/1?state=abc"})

    async def put(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        assert hashlib.sha256(body).hexdigest() == BLOB_DESC.digest.split(":")[1]
        return web.Response(status=201, headers={"Docker-Content-Digest": BLOB_DESC.digest})

    fake.on("HEAD", f"/v2/app/blobs/{BLOB_DESC.digest}", basic_protected(serve(b"", "", status=404)))
    fake.on("POST", "/v2/app/blobs/uploads/", basic_protected(start))
    other.on("PUT", "/upload/1", put)
    async with resolver_for(fake.registry_host(), credentials={fake.host: ("u", "p")}) as r:
        result = await r.pusher(f"{fake.host}/app:v1").push(BLOB_DESC, BLOB)
    assert result.uploaded == len(BLOB)
    (_, path, headers), = other.seen
    assert "Authorization" not in headers and "state=abc" in path and "digest=sha256" in path


async def test_push_chunked_follows_locations(fake: Fake) -> None:
    received = bytearray()

    async def start(request: web.Request) -> web.StreamResponse:
        return web.Response(status=202, headers={"Location": "/v2/app/blobs/uploads/u0",
                                                 "OCI-Chunk-Min-Length": "3000"})

    async def patch(request: web.Request) -> web.StreamResponse:
        start_, end = map(int, request.headers["Content-Range"].split("-"))
        assert start_ == len(received)
        received.extend(await request.read())
        assert end == len(received) - 1
        n = int(request.path.rsplit("u", 1)[1]) + 1
        return web.Response(status=202, headers={"Location": f"{fake.host}/v2/app/blobs/uploads/u{n}",
                                                 "Range": f"0-{end}"})

    async def finish(request: web.Request) -> web.StreamResponse:
        assert request.query["digest"] == BLOB_DESC.digest and bytes(received) == BLOB
        return web.Response(status=201)

    fake.on("POST", "/v2/app/blobs/uploads/", start)
    for i in range(5):
        fake.on("PATCH", f"/v2/app/blobs/uploads/u{i}", patch)
    fake.on("PUT", "/v2/app/blobs/uploads/u4", finish)
    async with resolver_for(fake.registry_host(), chunk_size=1000) as r:
        result = await r.pusher(f"{fake.host}/app:v1").push(BLOB_DESC, BLOB)
    assert result.uploaded == len(BLOB)
    patches = [h["Content-Range"] for m, _, h in fake.seen if m == "PATCH"]
    assert patches == ["0-2999", "3000-5999", "6000-8999", "9000-10239"]  # the registry's minimum wins


async def test_push_failure_cancels_upload(fake: Fake) -> None:
    async def start(request: web.Request) -> web.StreamResponse:
        return web.Response(status=202, headers={"Location": "/v2/app/blobs/uploads/x"})

    fake.on("POST", "/v2/app/blobs/uploads/", start)
    fake.on("PUT", "/v2/app/blobs/uploads/x", serve(json.dumps({"errors": [
        {"code": "DIGEST_INVALID", "message": "provided digest did not match uploaded content"}]}).encode(),
        "application/json", status=400))
    fake.on("DELETE", "/v2/app/blobs/uploads/x", serve(b"", "", status=204))
    async with resolver_for(fake.registry_host()) as r:
        with pytest.raises(InvalidArgument, match="digest invalid: provided digest did not match"):
            await r.pusher(f"{fake.host}/app:v1").push(BLOB_DESC, BLOB)
    assert fake.seen[-1][0] == "DELETE"


async def test_push_short_content(fake: Fake) -> None:
    async with resolver_for(fake.registry_host()) as r:
        with pytest.raises(InvalidArgument, match="descriptor says"):
            await r.pusher(f"{fake.host}/app:v1").push(BLOB_DESC, BLOB[:-1])
    assert fake.seen == []  # refused before any request


@pytest.mark.parametrize("chunk_size", [1 << 20, 4096], ids=["monolithic", "chunked"])
@pytest.mark.parametrize(("data", "message"), [(BLOB[:5000], "ended after 5000 bytes"),
                                               (BLOB + b"!", "longer than the descriptor's")])
@pytest.mark.parametrize("reopenable", [False, True])
async def test_streamed_content_must_fit_the_descriptor(fake: Fake, chunk_size: int, data: bytes,
                                                        message: str, reopenable: bool) -> None:
    completed: list[int] = []

    async def start(request: web.Request) -> web.StreamResponse:
        return web.Response(status=202, headers={"Location": "/v2/app/blobs/uploads/x"})

    async def upload(request: web.Request) -> web.StreamResponse:
        body = await request.read()  # an aborted body never gets here whole
        completed.append(len(body))
        return web.Response(status=202 if request.method == "PATCH" else 201,
                            headers={"Location": "/v2/app/blobs/uploads/x"})

    async def chunks(offset: int = 0) -> AsyncIterator[bytes]:
        for i in range(offset, len(data), 1000):
            yield data[i:i + 1000]

    fake.on("POST", "/v2/app/blobs/uploads/", start)
    for method in ("PATCH", "PUT"):
        fake.on(method, "/v2/app/blobs/uploads/x", upload)
    fake.on("DELETE", "/v2/app/blobs/uploads/x", serve(b"", "", status=204))
    async with resolver_for(fake.registry_host(), chunk_size=chunk_size) as r:
        with pytest.raises(InvalidArgument, match=message):
            await r.pusher(f"{fake.host}/app:v1").push(BLOB_DESC, chunks if reopenable else chunks())
    assert sum(completed) < len(BLOB)  # the registry never received a whole blob
    assert fake.seen[-1][0] == "DELETE"


async def test_push_manifest_by_tag_or_digest(fake: Fake) -> None:
    d = Descriptor(mediatypes.OCI_MANIFEST, MANIFEST_DIGEST, len(MANIFEST))
    fake.on("PUT", "/v2/app/manifests/v1", serve(b"", "", status=201, digest=MANIFEST_DIGEST))
    fake.on("PUT", f"/v2/app/manifests/{MANIFEST_DIGEST}", serve(b"", "", status=201))
    async with resolver_for(fake.registry_host()) as r:
        await r.pusher(f"{fake.host}/app:v1").push(d, MANIFEST)
        await r.pusher(f"{fake.host}/app:v1").push(d, MANIFEST, by_digest=True)
        await r.pusher(f"{fake.host}/app@sha256:{'9' * 64}").push(d, MANIFEST)
        fake.on("PUT", "/v2/app/manifests/v2", serve(b"", "", status=201, digest="sha256:" + "0" * 64))
        with pytest.raises(FailedPrecondition, match="registry stored"):
            await r.pusher(f"{fake.host}/app:v2").push(d, MANIFEST)
    puts = [(p, h["Content-Type"]) for m, p, h in fake.seen if m == "PUT"]
    assert puts[:3] == [("/v2/app/manifests/v1", mediatypes.OCI_MANIFEST),
                        (f"/v2/app/manifests/{MANIFEST_DIGEST}", mediatypes.OCI_MANIFEST),
                        (f"/v2/app/manifests/{MANIFEST_DIGEST}", mediatypes.OCI_MANIFEST)]


# -- helpers --------------------------------------------------------------------------------------------

def test_sanitize_and_error_bodies() -> None:
    from aiocontainerd.remotes._http import _origin_key, join_path, registry_errors, sanitize, with_query

    assert sanitize("https://u:p@h/x?sig=abc&ns=docker.io&e=") == "https://h/x?sig=REDACTED&ns=docker.io&e="
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"},
                                  {"code": "DENIED"}]}).encode()
    assert registry_errors(body) == "manifest unknown: manifest unknown; denied"
    assert registry_errors(b"<html>") == "" and registry_errors(b'{"errors": 1}') == ""
    assert join_path("/v2", "library/busybox", "blobs", "uploads/") == "/v2/library/busybox/blobs/uploads/"
    assert join_path("", "a", "manifests", "v1") == "/a/manifests/v1"
    assert with_query("/x?a=1", [("b", "sha256:1")]) == "/x?a=1&b=sha256:1"
    assert _origin_key("https://H.example.com:443/x") == ("https", "h.example.com", 443)
