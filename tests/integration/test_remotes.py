"""The registry client against a real registry (Debian's docker-registry) behind a test front.

The front adds auth (basic, bearer), fault injection (status codes, truncated and corrupted
blobs) and redirects to a separate "blob storage" server, all on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import parse_qs

import aiohttp
import pytest

from aiocontainerd.content import LocalStore
from aiocontainerd.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from aiocontainerd.remotes import (
    Descriptor,
    DockerConfig,
    Hosts,
    Limits,
    Pusher,
    Resolver,
    children,
    fetch_blob,
    mediatypes,
    platforms,
    walk,
)
from aiocontainerd.remotes.platforms import Platform
from tests.support import fixtures
from tests.support.images import Blob, Image, busybox_image, multi_platform, push
from tests.support.registry import Registry, RegistryFront

pytestmark = pytest.mark.integration

registry = fixtures.registry
registry_front = fixtures.registry_front

USERS = {"alice": "s3cret"}
BEARER = {"auth": "bearer", "users": USERS}
BASIC = {"auth": "basic", "users": USERS}


def desc(blob: Blob, **extra: object) -> Descriptor:
    return Descriptor(blob.media_type, blob.digest, blob.size, **extra)  # type: ignore[arg-type]


def resolver(**kwargs: object) -> Resolver:
    """A resolver that talks plain HTTP (the front has no TLS), as ``ctr --plain-http``."""
    return Resolver(Hosts(plain_http=True), **kwargs)  # type: ignore[arg-type]


async def push_image(pusher: Pusher, image: Image) -> None:
    """Layers and config, each manifest by digest under an index, the root by the pusher's tag."""
    for child in image.children or (image,):
        for blob in (*child.layers, child.config):
            await pusher.push(desc(blob), blob.data)
        if image.index is not None:
            await pusher.push(desc(child.manifest), child.manifest.data, by_digest=True)
    await pusher.push(desc(image.root), image.root.data)


# -- resolve ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("media", ["oci", "docker"])
async def test_resolve_by_tag_and_digest(registry_front: RegistryFront, media: str) -> None:
    image = busybox_image(media=media)  # type: ignore[arg-type]
    await push(registry_front.host, "library/busybox", "1.0", image)
    async with resolver() as r:
        name, d = await r.resolve(f"{registry_front.host}/library/busybox:1.0")
        assert name == f"{registry_front.host}/library/busybox:1.0"
        assert d == desc(image.manifest)
        name2, d2 = await r.resolve(f"{registry_front.host}/library/busybox@{image.digest}")
        assert name2.endswith(f"@{image.digest}") and d2 == d
        _, d3 = await r.resolve(f"{registry_front.host}/library/busybox:1.0@{image.digest}")
        assert d3 == d
        assert await r.fetcher(name).read(d) == image.manifest.data
    heads = registry_front.seen(r"/manifests/", method="HEAD")
    assert heads and all(mediatypes.OCI_INDEX in h.headers["Accept"] for h in heads)
    assert "*/*" in heads[0].headers["Accept"]


async def test_default_hosts_fall_back_to_plain_http_on_loopback(registry_front: RegistryFront) -> None:
    image = busybox_image()
    await push(registry_front.host, "app", "latest", image)
    async with Resolver() as r:  # default hosts: https first on loopback, then http
        _, d = await r.resolve(f"{registry_front.host}/app")
        assert d.digest == image.digest
        _, d = await r.resolve(f"{registry_front.host}/app")  # remembered: no second TLS try
    assert d.digest == image.digest


async def test_unknown_tag_repo_and_blob_are_not_found(registry_front: RegistryFront) -> None:
    image = busybox_image()
    await push(registry_front.host, "library/busybox", "latest", image)
    async with resolver() as r:
        with pytest.raises(NotFound, match="nope"):
            await r.resolve(f"{registry_front.host}/library/busybox:nope")
        with pytest.raises(NotFound):
            await r.resolve(f"{registry_front.host}/no/such/repo:latest")
        with pytest.raises(NotFound):
            await r.resolve(f"{registry_front.host}/library/busybox@sha256:{'0' * 64}")
        missing = Descriptor(mediatypes.OCI_LAYER_GZIP, "sha256:" + "1" * 64, 10)
        with pytest.raises(NotFound, match="could not fetch content descriptor"):
            async for _ in r.fetcher(f"{registry_front.host}/library/busybox").fetch(missing):
                pass


async def test_server_error_is_clear(registry_front: RegistryFront) -> None:
    image = busybox_image()
    await push(registry_front.host, "app", "v1", image)
    async with resolver() as r:
        registry_front.fail(r"/manifests/v1$", 500, times=1)  # once: retried and fine
        assert (await r.resolve(f"{registry_front.host}/app:v1"))[1].digest == image.digest
        registry_front.fail(r"/manifests/v1$", 500, times=None)
        with pytest.raises(Unavailable, match=r"500 Internal Server Error"):
            await r.resolve(f"{registry_front.host}/app:v1")
        registry_front.clear_faults()
        registry_front.fail(r"/blobs/", 503, times=None, method="GET")
        with pytest.raises(Unavailable, match=r"503.*unknown: injected failure 503"):
            await r.fetcher(f"{registry_front.host}/app").read(desc(image.config))


async def test_head_405_falls_back_to_get(registry_front: RegistryFront) -> None:
    image = busybox_image()
    await push(registry_front.host, "app", "v1", image)
    registry_front.fail(r"/manifests/v1$", 405, times=None, method="HEAD")
    async with resolver() as r:
        _, d = await r.resolve(f"{registry_front.host}/app:v1")
    assert d == desc(image.manifest)
    assert registry_front.seen(r"/manifests/v1$", method="GET")


async def test_manifest_size_limit(registry_front: RegistryFront) -> None:
    image = busybox_image()
    await push(registry_front.host, "app", "v1", image)
    async with resolver(limits=Limits(max_manifest_size=100)) as r:
        with pytest.raises(InvalidArgument, match="larger than the limit of 100 bytes"):
            await r.resolve(f"{registry_front.host}/app:v1")


# -- auth ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("registry_front", [BASIC, BEARER], indirect=True, ids=["basic", "bearer"])
async def test_401_without_credentials(registry_front: RegistryFront) -> None:
    await push(registry_front.host, "private/app", "v1", busybox_image(), auth=("alice", "s3cret"))
    async with resolver() as r:
        with pytest.raises(FailedPrecondition) as e:
            await r.resolve(f"{registry_front.host}/private/app:v1")
    assert "pull access denied" in e.value.message
    assert registry_front.host in e.value.message


@pytest.mark.parametrize("registry_front", [BASIC, BEARER], indirect=True, ids=["basic", "bearer"])
async def test_401_with_wrong_credentials(registry_front: RegistryFront) -> None:
    await push(registry_front.host, "private/app", "v1", busybox_image(), auth=("alice", "s3cret"))
    async with resolver(credentials={registry_front.host: ("alice", "wrong")}) as r:
        with pytest.raises(FailedPrecondition, match="pull access denied") as e:
            await r.resolve(f"{registry_front.host}/private/app:v1")
    assert registry_front.host in e.value.message
    if registry_front.auth == "basic":
        assert "unauthorized: authentication required" in e.value.message
    else:
        assert "401" in e.value.message


async def test_basic_with_credentials(registry: Registry) -> None:
    image = busybox_image()
    async with RegistryFront(registry, **BASIC) as front:  # type: ignore[arg-type]
        await push(front.host, "private/app", "v1", image, auth=("alice", "s3cret"))
        async with resolver(credentials={front.host: ("alice", "s3cret")}) as r:
            name, _ = await r.resolve(f"{front.host}/private/app:v1")
            assert await r.fetcher(name).read(desc(image.config)) == image.config.data
        sent = [x.authorization for x in front.seen(r"^/v2/private/")]
        assert sent[-1] == "Basic " + base64.b64encode(b"alice:s3cret").decode()


async def test_bearer_with_credentials_and_token_cache(registry: Registry) -> None:
    image = busybox_image(layers=2)
    async with RegistryFront(registry, **BEARER) as front:  # type: ignore[arg-type]
        await push(front.host, "private/app", "v1", image, auth=("alice", "s3cret"))
        front.requests.clear()
        def credentials(host: str) -> tuple[str, str] | None:
            return ("alice", "s3cret") if host == front.host else None

        async with resolver(credentials=credentials) as r:
            name, d = await r.resolve(f"{front.host}/private/app:v1")
            fetcher = r.fetcher(name)
            await fetcher.read(d)
            for blob in (image.config, *image.layers):
                assert await fetcher.read(desc(blob), max_size=blob.size) == blob.data
            tokens = front.seen(server="token")
            assert len(tokens) == 1  # one token for the repository's pull scope, reused
            assert tokens[0].method == "GET" and tokens[0].authorization.startswith("Basic ")
            assert parse_qs(tokens[0].query)["scope"] == ["repository:private/app:pull"]
            front.expire_tokens()  # the registry refuses the cached token: a new one is fetched
            assert await fetcher.read(desc(image.config)) == image.config.data
            assert len(front.seen(server="token")) == 2


async def test_bearer_from_docker_config_json(registry: Registry, tmp_path: Path) -> None:
    image = busybox_image()
    async with RegistryFront(registry, **BEARER) as front:  # type: ignore[arg-type]
        await push(front.host, "private/app", "v1", image, auth=("alice", "s3cret"))
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"auths": {f"http://{front.host}": {
            "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        async with resolver(credentials=DockerConfig.load(config)) as r:
            _, d = await r.resolve(f"{front.host}/private/app:v1")
        assert d.digest == image.digest


async def test_bearer_with_identity_token(registry: Registry) -> None:
    image = busybox_image()
    async with RegistryFront(registry, **BEARER) as front:  # type: ignore[arg-type]
        await push(front.host, "private/app", "v1", image, auth=("alice", "s3cret"))
        async with aiohttp.ClientSession() as s, s.post(front.realm, data={
                "grant_type": "password", "username": "alice", "password": "s3cret",
                "service": "test-registry", "client_id": "test",
                "scope": "repository:private/app:pull"}) as resp:
            refresh = (await resp.json())["refresh_token"]
        front.requests.clear()
        async with resolver(credentials={front.host: ("", refresh)}) as r:
            _, d = await r.resolve(f"{front.host}/private/app:v1")
        assert d.digest == image.digest
        (token_request,) = front.seen(server="token")
        assert token_request.method == "POST" and token_request.authorization is None


async def test_anonymous_bearer_pull(registry: Registry) -> None:
    image = busybox_image()
    async with RegistryFront(registry, auth="bearer", users=USERS, anonymous_pull=True) as front:
        await push(front.host, "public/app", "v1", image, auth=("alice", "s3cret"))
        front.requests.clear()
        async with resolver() as r:
            name, d = await r.resolve(f"{front.host}/public/app:v1")
            assert await r.fetcher(name).read(d) == image.manifest.data
            with pytest.raises(FailedPrecondition, match="push access denied"):
                await r.pusher(f"{front.host}/public/app:v2").push(desc(image.manifest),
                                                                   image.manifest.data)
        assert all(t.authorization is None for t in front.seen(server="token"))


async def test_redirect_to_blob_storage_without_credentials(registry: Registry) -> None:
    image = busybox_image()
    async with RegistryFront(registry, redirect_blobs=True, **BEARER) as front:  # type: ignore[arg-type]
        await push(front.host, "private/app", "v1", image, auth=("alice", "s3cret"))
        front.requests.clear()
        async with resolver(credentials={front.host: ("alice", "s3cret")}) as r:
            name, _ = await r.resolve(f"{front.host}/private/app:v1")
            layer = image.layers[0]
            store = LocalStore(Path(registry.root) / "content")
            writer = await store.writer("layer", layer.size, layer.digest)
            assert await fetch_blob(r.fetcher(name), desc(layer), writer) == layer.digest
        storage = front.seen(server="storage")
        assert storage and all(x.authorization is None for x in storage)
        assert all(x.status in (200, 206) for x in storage)
        blob_gets = front.seen(r"/blobs/", server="front", method="GET")
        assert blob_gets and blob_gets[-1].authorization.startswith("Bearer ")


# -- fetch into the content store ------------------------------------------------------------------

async def test_fetch_resumes_after_truncation(registry_front: RegistryFront, tmp_path: Path) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "app", "v1", image)
    registry_front.truncate_blob(layer.digest, after_bytes=1000, times=2)
    store = LocalStore(tmp_path / "content")
    async with resolver() as r:
        writer = await store.writer("pull-layer", layer.size, layer.digest)
        try:
            digest = await fetch_blob(r.fetcher(f"{registry_front.host}/app"), desc(layer), writer)
        finally:
            writer.close()
    assert digest == layer.digest and store.blob_path(layer.digest).read_bytes() == layer.data
    gets = registry_front.seen(rf"/blobs/{layer.digest}$", method="GET")
    assert len(gets) == 3
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == "bytes=1000-" and gets[2].headers["Range"] == "bytes=2000-"


async def test_fetch_resumes_a_partial_ingest(registry_front: RegistryFront, tmp_path: Path) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "app", "v1", image)
    store = LocalStore(tmp_path / "content")
    writer = await store.writer("pull-layer", layer.size, layer.digest)
    await writer.write(layer.data[:5000])
    writer.close()  # e.g. the daemon stopped mid-download
    async with resolver() as r:
        writer = await store.writer("pull-layer", layer.size, layer.digest)
        assert writer.offset == 5000
        await fetch_blob(r.fetcher(f"{registry_front.host}/app"), desc(layer), writer)
    assert store.exists(layer.digest)
    (get,) = registry_front.seen(rf"/blobs/{layer.digest}$", method="GET")
    assert get.headers["Range"] == "bytes=5000-"


async def test_fetch_gives_up_after_bounded_attempts(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "app", "v1", image)
    registry_front.truncate_blob(layer.digest, after_bytes=0, times=None)  # never any progress
    async with resolver(max_resumes=2) as r:
        with pytest.raises(Unavailable, match="gave up after 3 attempts"):
            async for _ in r.fetcher(f"{registry_front.host}/app").fetch(desc(layer)):
                pass
    assert len(registry_front.seen(rf"/blobs/{layer.digest}$", method="GET")) == 3


async def test_corrupt_blob_is_rejected(registry_front: RegistryFront, tmp_path: Path) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "app", "v1", image)
    registry_front.corrupt_blob(layer.digest)
    store = LocalStore(tmp_path / "content")
    async with resolver() as r:
        fetcher = r.fetcher(f"{registry_front.host}/app")
        writer = await store.writer("pull-layer", layer.size, layer.digest)
        with pytest.raises(FailedPrecondition, match="failed verification"):
            await fetch_blob(fetcher, desc(layer), writer)
        writer.close()
        assert not store.exists(layer.digest)
        registry_front.corrupt_blob(image.config.digest)
        with pytest.raises(FailedPrecondition, match="expected " + image.config.digest):
            await fetcher.read(desc(image.config))
        registry_front.clear_faults()
        writer = await store.writer("pull-layer", layer.size, layer.digest)
        assert writer.offset == 0  # the bad bytes were not kept for a resume
        await fetch_blob(fetcher, desc(layer), writer)
    assert store.blob_path(layer.digest).read_bytes() == layer.data


async def test_fetch_from_offset_and_at_end(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "app", "v1", image)
    async with resolver() as r:
        fetcher = r.fetcher(f"{registry_front.host}/app")
        got = b"".join([c async for c in fetcher.fetch(desc(layer), offset=layer.size - 10)])
        assert got == layer.data[-10:]
        assert [c async for c in fetcher.fetch(desc(layer), offset=layer.size)] == []
        with pytest.raises(InvalidArgument):
            async for _ in fetcher.fetch(desc(layer), offset=layer.size + 1):
                pass


async def test_layer_urls_are_not_contacted(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "app", "v1", image)
    foreign = desc(layer, urls=("http://127.0.0.1:9/elsewhere",))
    async with resolver() as r:
        data = await r.fetcher(f"{registry_front.host}/app").read(foreign, max_size=layer.size)
    assert data == layer.data


# -- push ------------------------------------------------------------------------------------------

async def test_push_then_resolve(registry_front: RegistryFront) -> None:
    image = busybox_image(layers=2)
    async with resolver() as r:
        pusher = r.pusher(f"{registry_front.host}/pushed/app:v1")
        await push_image(pusher, image)
        name, d = await r.resolve(f"{registry_front.host}/pushed/app:v1")
        assert d == desc(image.manifest)
        fetcher = r.fetcher(name)
        for blob in (image.config, *image.layers):
            assert await fetcher.read(desc(blob), max_size=blob.size) == blob.data
        again = await pusher.push(desc(image.layers[0]), image.layers[0].data)
        assert again.exists and again.uploaded == 0
        same = await pusher.push(desc(image.manifest), image.manifest.data)
        assert same.exists
    puts = registry_front.seen(r"/manifests/v1$", method="PUT")
    assert len(puts) == 1 and puts[0].headers["Content-Type"] == mediatypes.OCI_MANIFEST


async def test_push_multi_platform_then_resolve(registry_front: RegistryFront) -> None:
    image = multi_platform()
    async with resolver() as r:
        await push_image(r.pusher(f"{registry_front.host}/multi:v1"), image)
        _, d = await r.resolve(f"{registry_front.host}/multi:v1")
    assert d == desc(image.index)  # type: ignore[arg-type]
    assert len(registry_front.seen(r"/manifests/sha256:", method="PUT")) == 3


async def test_push_streams_chunked(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]

    async def chunks(offset: int):  # a re-openable reader, like the content store's read()
        for i in range(offset, layer.size, 100_000):
            yield layer.data[i:i + 100_000]

    async with resolver(chunk_size=256 * 1024) as r:
        result = await r.pusher(f"{registry_front.host}/chunked/app:v1").push(desc(layer), chunks)
        assert result.uploaded == layer.size and not result.exists
        got = await r.fetcher(f"{registry_front.host}/chunked/app").read(desc(layer), max_size=layer.size)
    assert got == layer.data
    patches = registry_front.seen(r"/blobs/uploads/", method="PATCH")
    assert len(patches) == -(-layer.size // (256 * 1024))
    assert patches[0].headers["Content-Range"] == f"0-{256 * 1024 - 1}"


async def test_push_monolithic_from_iterator(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]

    async def once():
        for i in range(0, layer.size, 65536):
            yield layer.data[i:i + 65536]

    async with resolver() as r:
        result = await r.pusher(f"{registry_front.host}/mono/app:v1").push(desc(layer), once())
    assert result.uploaded == layer.size
    (put,) = registry_front.seen(r"/blobs/uploads/", method="PUT")
    assert parse_qs(put.query)["digest"] == [layer.digest]
    assert put.headers["Content-Length"] == str(layer.size)


async def test_push_cross_repository_mount(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "source/app", "v1", image)
    annotated = desc(layer, annotations={
        "containerd.io/distribution.source.127.0.0.1": "other/thing,source/app"})
    async with resolver() as r:
        result = await r.pusher(f"{registry_front.host}/target/app:v1").push(annotated, layer.data)
    assert result.mounted_from == f"{registry_front.host}/source/app" and result.uploaded == 0
    (post,) = registry_front.seen(r"/target/app/blobs/uploads/", method="POST")
    assert parse_qs(post.query) == {"mount": [layer.digest], "from": ["source/app"]}
    assert not registry_front.seen(r"/target/app/blobs/uploads/.+", method="PUT")


async def test_push_with_bearer_auth(registry: Registry) -> None:
    image = busybox_image()
    async with RegistryFront(registry, **BEARER) as front:  # type: ignore[arg-type]
        async with resolver(credentials={front.host: ("alice", "s3cret")}) as r:
            await push_image(r.pusher(f"{front.host}/team/app:v1"), image)
            _, d = await r.resolve(f"{front.host}/team/app:v1")
        assert d.digest == image.digest
        scopes = {s for t in front.seen(server="token") for s in parse_qs(t.query).get("scope", [])}
        assert "repository:team/app:pull,push" in scopes


async def test_push_manifest_mismatch_is_refused_locally(registry_front: RegistryFront) -> None:
    image = busybox_image()
    async with resolver() as r:
        pusher = r.pusher(f"{registry_front.host}/app:v1")
        with pytest.raises(InvalidArgument, match="the descriptor says"):
            await pusher.push(desc(image.manifest), b"{}")
        same_size = b" " * image.manifest.size
        with pytest.raises(InvalidArgument, match="does not match its descriptor"):
            await pusher.push(desc(image.manifest), same_size)
    assert not registry_front.seen(r"/manifests/", method="PUT")


# -- platforms and trees ---------------------------------------------------------------------------

@pytest.mark.parametrize(("wanted", "expected"), [
    ("linux/arm/v7", ("linux", "arm", "v7")),
    ("linux/arm64/v8", ("linux", "arm64", "")),
    ("linux/amd64", ("linux", "amd64", "")),
])
async def test_platform_selection_from_index(registry_front: RegistryFront, wanted: str,
                                             expected: tuple[str, str, str]) -> None:
    image = multi_platform()
    await push(registry_front.host, "multi", "latest", image)
    async with resolver() as r:
        name, index = await r.resolve(f"{registry_front.host}/multi")
        assert mediatypes.is_index(index.media_type)
        fetcher = r.fetcher(name)
        entries = children(index, await fetcher.read(index))
        (best,) = platforms.only(platforms.parse(wanted)).select(entries, limit=1)
        assert best.platform == Platform(*expected)
        manifest = children(best, await fetcher.read(best))
        config = json.loads(await fetcher.read(manifest[0]))
        assert (config["os"], config["architecture"], config.get("variant", "")) == expected


async def test_no_platform_matches(registry_front: RegistryFront) -> None:
    image = multi_platform()
    await push(registry_front.host, "multi", "latest", image)
    async with resolver() as r:
        name, index = await r.resolve(f"{registry_front.host}/multi")
        entries = children(index, await r.fetcher(name).read(index))
    assert platforms.only(platforms.parse("linux/arm/v6")).select(entries) == []
    assert len(platforms.ALL.select(entries)) == 3


async def test_walk_all_platforms(registry_front: RegistryFront) -> None:
    image = multi_platform()
    await push(registry_front.host, "multi", "latest", image)
    async with resolver() as r:
        name, index = await r.resolve(f"{registry_front.host}/multi")
        fetcher = r.fetcher(name)

        async def kids(d: Descriptor) -> list[Descriptor]:
            if mediatypes.is_manifest_or_index(d.media_type):
                return children(d, await fetcher.read(d))
            return []

        everything = await walk(index, kids)
    assert {d.digest for d in everything} == set(image.blobs)
    assert everything[0] == index


async def test_children_limit(registry_front: RegistryFront) -> None:
    image = busybox_image(layers=3)
    await push(registry_front.host, "app", "v1", image)
    async with resolver() as r:
        name, d = await r.resolve(f"{registry_front.host}/app:v1")
        body = await r.fetcher(name).read(d)
    with pytest.raises(InvalidArgument, match="3 layers, more than the limit of 2"):
        children(d, body, Limits(max_children=2))


# -- hosts.toml ------------------------------------------------------------------------------------

async def test_hosts_toml_mirror_then_upstream(registry_front: RegistryFront, registry: Registry,
                                               tmp_path: Path) -> None:
    image = busybox_image()
    await push(registry_front.host, "library/busybox", "latest", image)
    folder = tmp_path / "certs.d" / "registry.test"
    folder.mkdir(parents=True)
    (folder / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\n\n'
        f'[host."http://{registry_front.host}"]\n  capabilities = ["pull", "resolve"]\n'
        f'  [host."http://{registry_front.host}".header]\n    x-mirror = "yes"\n')
    async with Resolver(Hosts(tmp_path / "certs.d")) as r:
        _, d = await r.resolve("registry.test/library/busybox:latest")
        assert d.digest == image.digest
        (head,) = registry_front.seen(r"/manifests/latest$", method="HEAD")
        assert head.query == "ns=registry.test" and head.headers["x-mirror"] == "yes"
        registry_front.fail(r"/manifests/", 404, times=None)  # the mirror lacks it: the server has it
        _, d = await r.resolve("registry.test/library/busybox:latest")
        assert d.digest == image.digest
        registry_front.clear_faults()
        registry_front.fail(r"/manifests/", 500, times=None)  # mirror broken: upstream still answers
        _, d = await r.resolve("registry.test/library/busybox:latest")
        assert d.digest == image.digest
