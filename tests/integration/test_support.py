"""The test fixtures themselves: the real registry, its front (auth, faults, redirects), test images."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.support.client import RegistryClient, RegistryError, parse_challenge
from tests.support.images import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER_ZSTD,
    REF_NAME,
    Image,
    busybox_image,
    decompress,
    docker_save_tar,
    large_image,
    multi_platform,
    oci_layout_tar,
    push,
    rootfs,
    sha256_digest,
    verify_blob,
)
from tests.support.registry import Registry, RegistryFront

pytestmark = pytest.mark.integration


USERS = {"user": "pass"}
IMAGES: dict[str, Callable[[], Image]] = {
    "single-layer": lambda: busybox_image(),
    "multi-layer-zstd": lambda: busybox_image(3, "zstd"),
    "docker-media": lambda: busybox_image(2, media="docker"),
    "multi-platform": lambda: multi_platform(),
    "multi-platform-docker": lambda: multi_platform(layers=2, media="docker"),
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def check_served(client: RegistryClient, repo: str, image: Image) -> None:
    """Every manifest and blob of ``image`` comes back byte for byte."""
    r = await client.get_manifest(repo, "v1")
    assert r.body == image.root.data
    assert r.headers["Content-Type"] == image.root.media_type
    assert r.headers["Docker-Content-Digest"] == image.digest
    for child in image.children:
        r = await client.get_manifest(repo, child.manifest.digest)
        assert r.body == child.manifest.data
    for blob in image.blobs.values():
        if blob not in (image.index, *(c.manifest for c in image.children or (image,))):
            assert (await client.get_blob(repo, blob.digest)).body == blob.data


# -- the registry process ------------------------------------------------------------------------
async def test_registry_lifecycle() -> None:
    async with Registry() as reg:
        assert reg.process is not None
        pid, root = reg.process.pid, reg.root
        async with aiohttp.ClientSession() as s, s.get(f"{reg.url}/v2/") as r:
            assert r.status == 200
            assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not root.exists()


async def test_front_stops_its_servers(registry: Registry) -> None:
    async with RegistryFront(registry, redirect_blobs=True) as front:
        hosts = [front.host, front.storage_host]
        assert len(set(hosts)) == 2
    for host in hosts:
        ip, port = host.split(":")
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection(ip, int(port))
            writer.close()


# -- push and read back --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(IMAGES))
async def test_push_and_get_back(registry_front: RegistryFront, name: str) -> None:
    image = IMAGES[name]()
    await push(registry_front.host, f"test/{name}", "v1", image)
    async with RegistryClient(registry_front.host) as client:
        await check_served(client, f"test/{name}", image)
        assert await client.tags(f"test/{name}") == ["v1"]


@pytest.mark.parametrize("registry_front", [{"auth": "basic", "users": USERS}], indirect=True)
async def test_front_fixture_takes_parameters(registry_front: RegistryFront) -> None:
    assert registry_front.auth == "basic"
    await push(registry_front.host, "param/img", "v1", busybox_image(), auth=("user", "pass"))
    async with RegistryClient(registry_front.host) as anonymous:
        assert (await anonymous.request("GET", "/v2/")).status == 401


async def test_push_directly_to_registry(registry: Registry) -> None:
    image = busybox_image(3, "zstd", "docker")
    await push(registry.host, "direct", "v1", image)
    async with RegistryClient(registry.host) as client:
        await check_served(client, "direct", image)


@pytest.mark.parametrize("auth", ["none", "basic", "bearer"])
async def test_auth_modes(registry: Registry, auth: str) -> None:
    image = multi_platform()
    async with RegistryFront(registry, auth=auth, users=USERS) as front:  # type: ignore[arg-type]
        await push(front.host, "private/img", "v1", image, auth=("user", "pass"))
        async with RegistryClient(front.host, auth=("user", "pass")) as client:
            await check_served(client, "private/img", image)
        async with RegistryClient(front.host) as anonymous:
            if auth == "none":
                await anonymous.get_manifest("private/img", "v1")
            else:
                with pytest.raises(RegistryError) as e:
                    await anonymous.get_manifest("private/img", "v1")
                assert e.value.status == 401
        async with RegistryClient(front.host, auth=("user", "wrong")) as wrong:
            if auth != "none":
                with pytest.raises(RegistryError) as e:
                    await wrong.get_manifest("private/img", "v1")
                assert e.value.status == 401
        v2 = front.seen(r"^/v2/", server="front")
        if auth == "basic":
            assert {r.authorization for r in v2 if r.status < 400} == {basic("user", "pass")}
        if auth == "bearer":
            passed = [r for r in v2 if r.status < 400]
            assert passed and all(str(r.authorization).startswith("Bearer ") for r in passed)
            tokens = front.seen("^/token$", server="token")
            assert tokens and all("service=test-registry" in r.query for r in tokens)


async def test_bearer_challenge_and_token_endpoint(registry: Registry) -> None:
    async with RegistryFront(registry, auth="bearer", users=USERS) as front, aiohttp.ClientSession() as s:
        async with s.get(f"{front.url}/v2/") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == f'Bearer realm="{front.realm}",service="test-registry"'
        async with s.get(f"{front.url}/v2/lib/x/manifests/v1") as r:
            assert r.status == 401
            assert r.headers["WWW-Authenticate"] == (
                f'Bearer realm="http://{front.host}/token",service="test-registry",scope="repository:lib/x:pull"')
        async with s.post(f"{front.url}/v2/lib/x/blobs/uploads/") as r:
            assert r.status == 401
            assert parse_challenge(r.headers["WWW-Authenticate"])[1]["scope"] == "repository:lib/x:pull,push"
        query = {"service": "test-registry", "scope": "repository:lib/x:pull"}
        async with s.get(front.realm, params=query) as r:
            assert r.status == 401                      # users set, no anonymous pull
        async with s.get(front.realm, params=query, headers={"Authorization": basic("user", "bad")}) as r:
            assert r.status == 401
        async with s.get(front.realm, params=query, headers={"Authorization": basic("user", "pass")}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["token"] == body["access_token"] and body["expires_in"] == 300
        bearer = {"Authorization": f"Bearer {body['token']}"}
        async with s.get(f"{front.url}/v2/lib/x/tags/list", headers=bearer) as r:
            assert r.status == 404                      # authorized; the repository does not exist
        async with s.post(f"{front.url}/v2/lib/x/blobs/uploads/", headers=bearer) as r:
            assert r.status == 401                      # a pull token cannot push
            assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
        async with s.get(f"{front.url}/v2/other/y/tags/list", headers=bearer) as r:
            assert r.status == 401                      # nor read another repository
        form = {"grant_type": "password", "username": "user", "password": "pass", "service": "test-registry",
                "scope": "repository:lib/x:pull,push", "client_id": "containerd-client"}
        async with s.post(front.realm, data=form) as r:
            assert r.status == 200
            oauth = await r.json()
        assert oauth["access_token"] and oauth["refresh_token"]
        async with s.post(f"{front.url}/v2/lib/x/blobs/uploads/",
                          headers={"Authorization": f"Bearer {oauth['access_token']}"}) as r:
            assert r.status == 202
        front.expire_tokens()
        async with s.get(f"{front.url}/v2/lib/x/tags/list", headers=bearer) as r:
            assert r.status == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        front.oauth_post = False
        async with s.post(front.realm, data=form) as r:
            assert r.status == 404                      # clients must fall back to GET


async def test_anonymous_pull(registry: Registry) -> None:
    image = busybox_image()
    async with RegistryFront(registry, auth="bearer", users=USERS, anonymous_pull=True) as front:
        await push(front.host, "pub/img", "v1", image, auth=("user", "pass"))
        async with RegistryClient(front.host) as anonymous:
            await check_served(anonymous, "pub/img", image)
            with pytest.raises(RegistryError) as e:
                await anonymous.push_blob("pub/img", busybox_image(2).layers[1])
            assert e.value.status == 401
        anonymous_tokens = [r for r in front.seen("^/token$") if r.authorization is None]
        assert anonymous_tokens and {r.status for r in anonymous_tokens} == {200}


# -- faults --------------------------------------------------------------------------------------
async def test_truncated_blob_arrives_short(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "t/trunc", "v1", image)
    registry_front.truncate_blob(layer.digest, after_bytes=1000)
    url = f"{registry_front.url}/v2/t/trunc/blobs/{layer.digest}"
    got = bytearray()
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(url) as r:
            assert r.status == 200 and r.content_length == layer.size
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in r.content.iter_any():
                    got += chunk
        assert bytes(got) == layer.data[:1000]
        async with s.get(url) as r:                     # times=1: the next GET is whole
            assert await r.read() == layer.data


async def test_corrupt_blob_same_length(registry_front: RegistryFront) -> None:
    image = busybox_image()
    config = image.config
    await push(registry_front.host, "t/corrupt", "v1", image)
    registry_front.corrupt_blob(config.digest)
    async with RegistryClient(registry_front.host) as client:
        r = await client.get_blob("t/corrupt", config.digest)
        assert len(r.body) == config.size and r.body != config.data
        assert sha256_digest(r.body) != config.digest
        registry_front.clear_faults()
        assert (await client.get_blob("t/corrupt", config.digest)).body == config.data


async def test_fail_rule(registry_front: RegistryFront) -> None:
    image = busybox_image()
    await push(registry_front.host, "t/fail", "v1", image)
    registry_front.fail(r"/manifests/v1$", 500, times=2)
    registry_front.fail(r"/blobs/", 404, times=1, method="GET")
    async with RegistryClient(registry_front.host) as client:
        for _ in range(2):
            r = await client.request("GET", "/v2/t/fail/manifests/v1")
            assert r.status == 500 and r.json()["errors"][0]["code"] == "UNKNOWN"
        assert (await client.get_manifest("t/fail", "v1")).body == image.manifest.data
        r = await client.get_blob("t/fail", image.config.digest, expect=None)
        assert r.status == 404 and r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
        assert (await client.get_blob("t/fail", image.config.digest)).body == image.config.data


async def test_range_requests(registry_front: RegistryFront) -> None:
    image = busybox_image()
    layer = image.layers[0]
    await push(registry_front.host, "t/range", "v1", image)
    async with RegistryClient(registry_front.host) as client:
        r = await client.get_blob("t/range", layer.digest, byte_range=(100, 199))
        assert r.status == 206 and r.body == layer.data[100:200]
        assert r.headers["Content-Range"] == f"bytes 100-199/{layer.size}"
        r = await client.get_blob("t/range", layer.digest, byte_range=(layer.size - 10, None))
        assert r.status == 206 and r.body == layer.data[-10:]
        r = await client.get_blob("t/range", layer.digest, byte_range=(layer.size, None), expect=[416])
        assert r.headers["Content-Range"] == f"bytes */{layer.size}"
    # a download cut short, resumed with Range: the two parts make the blob
    registry_front.truncate_blob(layer.digest, after_bytes=5000)
    got = bytearray()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{registry_front.url}/v2/t/range/blobs/{layer.digest}") as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                async for chunk in resp.content.iter_any():
                    got += chunk
        assert len(got) == 5000
        async with s.get(f"{registry_front.url}/v2/t/range/blobs/{layer.digest}",
                         headers={"Range": f"bytes={len(got)}-"}) as resp:
            assert resp.status == 206
            got += await resp.read()
    assert sha256_digest(bytes(got)) == layer.digest


async def test_redirect_to_storage_without_authorization(registry: Registry) -> None:
    image = busybox_image()
    layer = image.layers[0]
    async with RegistryFront(registry, auth="bearer", users=USERS, redirect_blobs=True) as front:
        await push(front.host, "t/redir", "v1", image, auth=("user", "pass"))
        async with RegistryClient(front.host, auth=("user", "pass")) as client:
            r = await client.get_blob("t/redir", layer.digest, allow_redirects=False, expect=[307])
            location = r.headers["Location"]
            assert location.startswith(f"http://{front.storage_host}/") and front.storage_host != front.host
            assert client._authorization is not None and client._authorization.startswith("Bearer ")
            # followed by aiohttp: the Authorization header stays behind at the front
            r = await client.get_blob("t/redir", layer.digest)
            assert r.body == layer.data and r.url.startswith(f"http://{front.storage_host}/")
            r = await client.get_blob("t/redir", layer.digest, byte_range=(10, 19))
            assert r.status == 206 and r.body == layer.data[10:20]
        storage = front.seen(server="storage")
        assert len(storage) == 2 and all(seen.authorization is None for seen in storage)
        async with aiohttp.ClientSession() as s:
            async with s.get(location, headers={"Authorization": "Bearer leaked"}) as resp:
                assert resp.status == 200 and await resp.read() == layer.data
            async with s.get(location.replace("sig=", "sig=0")) as resp:
                assert resp.status == 403               # the URL must arrive unaltered
        assert front.seen(server="storage")[-2].authorization == "Bearer leaked"
        front.truncate_blob(layer.digest, 100)          # faults apply where the bytes are served
        async with aiohttp.ClientSession() as s, s.get(location) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


# -- images --------------------------------------------------------------------------------------
def test_images_are_well_formed_and_deterministic() -> None:
    for image in (busybox_image(3, "zstd"), busybox_image(2, "none", "docker"), busybox_image()):
        manifest, config = image.manifest.json(), image.config.json()
        assert manifest["config"]["digest"] == image.config.digest
        assert [d["digest"] for d in manifest["layers"]] == [b.digest for b in image.layers]
        assert config["rootfs"]["diff_ids"] == [
            sha256_digest(decompress(b.data, b.media_type)) for b in image.layers]
        assert config["config"]["Cmd"] == ["/bin/sh"] and config["architecture"] == "amd64"
        assert len([h for h in config["history"] if not h.get("empty_layer")]) == len(image.layers)
    docker = busybox_image(1, media="docker")
    assert docker.manifest.media_type == DOCKER_MANIFEST and docker.config.media_type == DOCKER_CONFIG
    assert docker.layers[0].media_type == DOCKER_LAYER_GZIP
    assert busybox_image(1, "zstd").layers[0].media_type == OCI_LAYER_ZSTD
    assert busybox_image(3, "zstd").layers[0].data[:4] == b"\x28\xb5\x2f\xfd"
    # rebuilt from scratch: the same bytes
    from tests.support import images
    first = busybox_image(2).digest
    images._busybox_image.cache_clear()
    assert busybox_image(2).digest == first


def test_rootfs_and_whiteouts() -> None:
    fs = rootfs(busybox_image(3))
    assert fs["/bin/busybox"].data == Path("/bin/busybox").read_bytes()
    assert fs["/bin/sh"].kind == "symlink" and fs["/bin/sh"].target == "busybox"
    assert "/etc/issue" not in fs and fs["/etc/passwd"].data.startswith(b"root:x:0:0")
    assert fs["/layer2/file"].data == b"layer 2\n" and fs["/layer3/file"].data == b"layer 3\n"
    assert "/opaque/old" not in fs and fs["/opaque/new"].data == b"new\n"
    assert fs["/tmp"].mode == 0o1777


def test_multi_platform_index() -> None:
    oci, docker = multi_platform(), multi_platform(media="docker")
    assert oci.index is not None and oci.index.media_type == OCI_INDEX
    assert docker.index is not None and docker.index.media_type == DOCKER_LIST
    platforms = [m["platform"] for m in oci.index.json()["manifests"]]
    assert platforms == [{"architecture": "amd64", "os": "linux"}, {"architecture": "arm64", "os": "linux"},
                         {"architecture": "arm", "os": "linux", "variant": "v7"}]
    arm = oci.for_platform("linux", "arm", "v7")
    assert arm.config.json()["variant"] == "v7" and arm.layers[0].digest != oci.layers[0].digest
    assert len(oci.blobs) == 1 + 3 * 3


def test_archives() -> None:
    image = multi_platform()
    with tarfile.open(fileobj=io.BytesIO(oci_layout_tar(image, "latest"))) as t:
        assert json.loads(t.extractfile("oci-layout").read()) == {"imageLayoutVersion": "1.0.0"}  # type: ignore[union-attr]
        index = json.loads(t.extractfile("index.json").read())  # type: ignore[union-attr]
        assert index["manifests"][0]["digest"] == image.digest
        assert index["manifests"][0]["annotations"][REF_NAME] == "latest"
        for digest, blob in image.blobs.items():
            assert t.extractfile(f"blobs/sha256/{digest[7:]}").read() == blob.data  # type: ignore[union-attr]
    single = busybox_image(2)
    with tarfile.open(fileobj=io.BytesIO(docker_save_tar(single, "busybox:1"))) as t:
        manifest = json.loads(t.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert manifest[0]["RepoTags"] == ["busybox:1"]
        assert t.extractfile(manifest[0]["Config"]).read() == single.config.data  # type: ignore[union-attr]
        diffs = [sha256_digest(t.extractfile(p).read()) for p in manifest[0]["Layers"]]  # type: ignore[union-attr]
        assert diffs == list(single.diff_ids)
        assert json.loads(t.extractfile("repositories").read()) == {  # type: ignore[union-attr]
            "busybox": {"1": manifest[0]["Layers"][-1].split("/")[0]}}


async def test_large_image_small_build_and_push(registry: Registry, tmp_path: Path) -> None:
    image = await asyncio.to_thread(large_image, tmp_path, 6, 3)
    assert all(b.path is not None and verify_blob(b) for b in image.layers)
    assert image.layers[1].size < (6 << 20)            # partly compressible
    raw = sum(len(gzip.decompress(b.data)) for b in image.layers[1:])
    assert 5 << 20 < raw < 8 << 20
    again = await asyncio.to_thread(large_image, tmp_path, 6, 3)
    assert again.digest == image.digest
    await push(registry.host, "big/img", "v1", image)
    async with RegistryClient(registry.host) as client:
        r = await client.get_blob("big/img", image.layers[2].digest)
        assert hashlib.sha256(r.body).hexdigest() == image.layers[2].hex
