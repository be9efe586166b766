"""Daemon-side pull (aiocontainerd.images.pull) from a real registry on loopback."""

from __future__ import annotations

import asyncio

import pytest

from aiocontainerd.errors import FailedPrecondition, NotFound, Unavailable
from aiocontainerd.images.pull import PullOptions, pull
from aiocontainerd.metadata.plugin import Metadata
from aiocontainerd.remotes import Hosts, Resolver, platforms
from tests.support import fixtures
from tests.support.images import busybox_image, multi_platform, push
from tests.support.registry import Registry, RegistryFront

pytestmark = pytest.mark.integration
metadata = fixtures.metadata   # the fixture


@pytest.fixture
async def resolver():
    async with Resolver(Hosts(plain_http=True)) as r:
        yield r


def on_disk(m: Metadata) -> set[str]:
    return {"sha256:" + p.name for p in (m.content.local.root / "blobs" / "sha256").iterdir()}


async def test_pull_single_and_multi_layer(registry: Registry, metadata: Metadata,
                                           resolver: Resolver) -> None:
    for layers, compression in [(1, "gzip"), (3, "zstd"), (2, "none")]:
        image = busybox_image(layers, compression)
        await push(registry.host, f"test/bb{layers}", "v1", image)
        events = []
        got = await pull(f"{registry.host}/test/bb{layers}:v1", resolver=resolver, metadata=metadata,
                         namespace="default", progress=events.append)
        assert got.name == f"{registry.host}/test/bb{layers}:v1"
        assert got.target.digest == image.digest
        assert set(image.blobs) <= on_disk(metadata)
        info = metadata.content.info("default", image.digest)
        # containerd keys the label by host name without the port
        assert info.labels["containerd.io/distribution.source.127.0.0.1"] == f"test/bb{layers}"
        assert info.labels["containerd.io/gc.ref.content.config"] == image.config.digest
        assert {e.digest for e in events if e.status == "done"} == set(image.blobs)
    # nothing else is left: the lease is gone and GC keeps exactly the images' blobs
    await metadata.collect()
    assert await metadata.content.list_statuses("default") == []


async def test_platforms(registry: Registry, metadata: Metadata, resolver: Resolver) -> None:
    image = multi_platform()
    await push(registry.host, "test/multi", "1", image)
    ref = f"{registry.host}/test/multi:1"
    await pull(ref, resolver=resolver, metadata=metadata, namespace="host")
    amd64 = image.for_platform("linux", "amd64")
    have = {i.digest for i in metadata.content.list("host")}
    assert set(amd64.blobs) - {image.digest} <= have
    assert not (set(image.for_platform("linux", "arm64").layers[0].digest for _ in [0]) & have)
    await pull(ref, resolver=resolver, metadata=metadata, namespace="arm",
               options=PullOptions(platform=platforms.only(platforms.parse("linux/arm/v7"))))
    arm = image.for_platform("linux", "arm", "v7")
    assert arm.layers[0].digest in {i.digest for i in metadata.content.list("arm")}
    await pull(ref, resolver=resolver, metadata=metadata, namespace="all",
               options=PullOptions(all_platforms=True))
    assert set(image.blobs) <= {i.digest for i in metadata.content.list("all")}


async def test_resume_after_truncation_and_reject_corruption(registry: Registry, metadata: Metadata,
                                                             resolver: Resolver) -> None:
    image = busybox_image(2)
    await push(registry.host, "test/faulty", "1", image)
    async with RegistryFront(registry) as front:
        layer = image.layers[0]
        front.truncate_blob(layer.digest, layer.size // 2)
        await pull(f"{front.host}/test/faulty:1", resolver=resolver, metadata=metadata,
                   namespace="default")
        ranged = [r for r in front.seen(rf"/blobs/{layer.digest}") if "range" in
                  {k.lower() for k in r.headers}]
        assert ranged, "the broken download was resumed with a Range request"
        assert metadata.content.has("default", layer.digest)
        # a blob no namespace has yet, served with wrong bytes: refused, nothing named
        other = busybox_image(3)
        await push(registry.host, "test/faulty", "2", other)
        assert not metadata.content.local.exists(other.layers[2].digest)
        front.corrupt_blob(other.layers[2].digest)
        with pytest.raises(FailedPrecondition):
            await pull(f"{front.host}/test/faulty:2", resolver=resolver, metadata=metadata,
                       namespace="corrupt")
        assert metadata.images.list("corrupt") == []
        assert not metadata.content.local.exists(other.layers[2].digest)


async def test_registry_errors(registry: Registry, metadata: Metadata, resolver: Resolver) -> None:
    with pytest.raises(NotFound):
        await pull(f"{registry.host}/test/none:1", resolver=resolver, metadata=metadata,
                   namespace="default")
    image = busybox_image()
    await push(registry.host, "test/e500", "1", image)
    async with RegistryFront(registry) as front:
        front.fail(r"/v2/test/e500/blobs/", 500, times=100)
        with pytest.raises(Unavailable):
            await pull(f"{front.host}/test/e500:1", resolver=resolver, metadata=metadata,
                       namespace="default")
    assert metadata.images.list("default") == []


async def test_limits_leave_the_store_unchanged(registry: Registry, metadata: Metadata) -> None:
    import json

    from aiocontainerd.errors import InvalidArgument
    from aiocontainerd.remotes import Limits
    from tests.support.client import RegistryClient
    from tests.support.images import Blob

    image = busybox_image()
    await push(registry.host, "test/base", "1", image)
    layer = image.layers[0].descriptor()
    # a manifest listing 10,000 layers (the same blob over and over, which the registry accepts)
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": image.config.descriptor(), "layers": [layer] * 10_000}).encode()
    client = RegistryClient(registry.host)
    try:
        await client.push_manifest("test/base", "huge",
                                   Blob.of("application/vnd.oci.image.manifest.v1+json", body))
    finally:
        await client.close()
    async with Resolver(Hosts(plain_http=True)) as resolver:
        with pytest.raises(InvalidArgument, match="10000 layers"):
            await pull(f"{registry.host}/test/base:huge", resolver=resolver, metadata=metadata,
                       namespace="default")
    async with Resolver(Hosts(plain_http=True), limits=Limits(max_manifest_size=200)) as small:
        with pytest.raises(InvalidArgument, match="limit"):
            await pull(f"{registry.host}/test/base:1", resolver=small, metadata=metadata,
                       namespace="default")
    assert metadata.images.list("default") == []
    await metadata.collect()
    assert on_disk(metadata) == set()


async def test_two_pulls_of_one_image_at_once(registry: Registry, metadata: Metadata) -> None:
    image = busybox_image(3)
    await push(registry.host, "test/twice", "1", image)
    ref = f"{registry.host}/test/twice:1"
    async with Resolver(Hosts(plain_http=True)) as r1, Resolver(Hosts(plain_http=True)) as r2:
        a, b = await asyncio.gather(
            pull(ref, resolver=r1, metadata=metadata, namespace="default"),
            pull(ref, resolver=r2, metadata=metadata, namespace="default"))
    assert a.target.digest == b.target.digest == image.digest
    assert set(image.blobs) <= {i.digest for i in metadata.content.list("default")}


async def test_push_one_platform_of_an_index(registry: Registry, metadata: Metadata,
                                             resolver: Resolver) -> None:
    from aiocontainerd.images.push import PushOptions
    from aiocontainerd.images.push import push as push_image
    from aiocontainerd.remotes.descriptor import Descriptor

    image = multi_platform()
    await push(registry.host, "test/src", "1", image)
    got = await pull(f"{registry.host}/test/src:1", resolver=resolver, metadata=metadata,
                     namespace="default", options=PullOptions(all_platforms=True))
    target = Descriptor(got.target.media_type, got.target.digest, got.target.size)
    arm64 = platforms.only(platforms.parse("linux/arm64"))
    await push_image(f"{registry.host}/test/dst:arm64", target, resolver=resolver, metadata=metadata,
                     namespace="default", options=PushOptions(platform=arm64))
    _, pushed = await resolver.resolve(f"{registry.host}/test/dst:arm64")
    assert pushed.digest == image.for_platform("linux", "arm64").manifest.digest


async def test_invalid_image_config_is_invalid_argument(metadata: Metadata) -> None:
    import hashlib
    import json

    from aiocontainerd.errors import InvalidArgument
    from aiocontainerd.images.unpack import unpack
    from aiocontainerd.remotes.descriptor import Descriptor

    async def put(data: bytes) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        w = await metadata.content.writer("default", digest, len(data), digest)
        await w.write(data)
        await w.commit(labels={"containerd.io/gc.root": "t"})
        return Descriptor("x", digest, len(data))

    config = await put(b"this is not json")
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": config.digest, "size": config.size},
                       "layers": []}).encode()
    manifest = await put(body)
    target = Descriptor("application/vnd.oci.image.manifest.v1+json", manifest.digest, manifest.size)
    metadata.snapshotters["x"] = None  # never reached: the config is read first
    with pytest.raises(InvalidArgument, match="not a valid image config"):
        await unpack(target, metadata=metadata, diff=None, snapshotter="x", namespace="default")
