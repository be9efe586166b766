"""Garbage collection over the metadata and content stores, as containerd's rules say."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from aiocontainerd.content import LocalStore
from aiocontainerd.errors import AlreadyExists, NotFound
from aiocontainerd.metadata import ContainerStore, MetadataDB
from aiocontainerd.metadata.containers import Container, Runtime
from aiocontainerd.metadata.content import ContentStore
from aiocontainerd.metadata.gc import GarbageCollector
from aiocontainerd.metadata.images import Image, ImageStore
from aiocontainerd.metadata.leases import LeaseStore, Resource
from aiocontainerd.types import Descriptor, TypedValue

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class World:
    def __init__(self, path: Path) -> None:
        self.db = MetadataDB.open(path / "db", map_size=64 << 20)
        self.local = LocalStore(path / "content")
        self.content = ContentStore(self.db, self.local)
        self.images = ImageStore(self.db)
        self.leases = LeaseStore(self.db)
        self.containers = ContainerStore(self.db)
        self.gc = GarbageCollector(self.db, self.content)

    async def put(self, data: bytes, ns: str = "default", labels: dict | None = None,
                  lease: str | None = None) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        w = await self.content.writer(ns, "ref-" + digest[7:19], len(data), digest, lease)
        await w.write(data)
        await w.commit(labels=labels)
        return digest

    def on_disk(self) -> set[str]:
        return {"sha256:" + p.name for p in (self.local.root / "blobs" / "sha256").iterdir()}


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.db.close()


async def test_image_keeps_its_tree_alive(world: World) -> None:
    layer = await world.put(b"layer" * 1000)
    config = await world.put(b"{}")
    manifest = await world.put(b"manifest", labels={
        "containerd.io/gc.ref.content.l.0": layer, "containerd.io/gc.ref.content.config": config})
    stray = await world.put(b"stray")
    await world.images.create("default", Image("docker.io/library/x:1", Descriptor(MANIFEST, manifest, 8)))
    stats = await world.gc.collect()
    assert stats.content == 1 and stats.blobs == 1
    assert world.on_disk() == {layer, config, manifest}
    assert stray not in world.on_disk()
    await world.images.delete("default", "docker.io/library/x:1")
    stats = await world.gc.collect()
    assert world.on_disk() == set() and stats.bytes == 5000 + 2 + 8


async def test_shared_blob_lives_while_any_namespace_holds_it(world: World) -> None:
    digest = await world.put(b"shared", ns="a", labels={"containerd.io/gc.root": "x"})
    # namespace b commits the same digest without sending any bytes (shared policy)
    w = await world.content.writer("b", "r", 6, digest)
    info = await w.commit(labels={"containerd.io/gc.root": "y"})
    assert info.size == 6 and world.content.has("b", digest)
    with pytest.raises(AlreadyExists):
        await world.content.writer("b", "r2", 6, digest)
    await world.content.delete("a", digest)
    await world.gc.collect()
    assert digest in world.on_disk()
    await world.content.delete("b", digest)
    await world.gc.collect()
    assert digest not in world.on_disk()


async def test_leases_hold_content_until_deleted_or_expired(world: World) -> None:
    await world.leases.create("default", "pull-1")
    held = await world.put(b"held", lease="pull-1")
    assert Resource(held, "content") in world.leases.resources("default", "pull-1")
    await world.leases.create("default", "old", {"containerd.io/gc.expire": "2001-01-01T00:00:00Z"})
    old = await world.put(b"old", lease="old")
    stats = await world.gc.collect()
    assert held in world.on_disk() and old not in world.on_disk()
    assert stats.leases == 1
    with pytest.raises(NotFound):
        world.leases.get("default", "old")
    await world.leases.delete("default", "pull-1")
    await world.gc.collect()
    assert world.on_disk() == set()


async def test_unknown_lease_aborts_the_write(world: World) -> None:
    with pytest.raises(NotFound, match="lease"):
        await world.content.writer("default", "r", 0, "", lease="nope")


async def test_ingests_being_written_or_leased_survive_orphans_do_not(world: World) -> None:
    live = await world.content.writer("default", "live")
    await live.write(b"partial")
    await world.leases.create("default", "l")
    leased = await world.content.writer("default", "leased", lease="l")
    await leased.write(b"partial")
    leased.close()
    orphan = await world.content.writer("default", "orphan")
    await orphan.write(b"partial")
    orphan.close()
    # an ingest a killed daemon left with no record at all
    stray = await world.local.writer("default/stray")
    await stray.write(b"x")
    stray.close()
    stats = await world.gc.collect()
    refs = {s.ref for s in await world.content.list_statuses("default")}
    assert refs == {"live", "leased"}
    assert stats.ingests == 2
    await live.commit()


async def test_container_labels_and_content_refs(world: World) -> None:
    a = await world.put(b"a")
    b = await world.put(b"b", labels={"containerd.io/gc.ref.content": a})
    await world.containers.create("default", Container(
        "c", Runtime("io.containerd.runc.v2"), TypedValue("x", b"{}"),
        labels={"containerd.io/gc.ref.content.spec": b}))
    await world.gc.collect()
    assert world.on_disk() == {a, b}


async def test_gc_never_sees_a_blob_between_commit_and_record(world: World,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    data = os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    w = await world.content.writer("default", "race", len(data), digest)
    await w.write(data)
    # run a collection exactly in the window between the blob landing on disk and its record
    record = world.content._record_commit
    collections: list[asyncio.Task] = []

    async def record_after_a_collection(*args, **kwargs):
        collections.append(asyncio.create_task(world.gc.collect()))
        await asyncio.sleep(0.1)  # time enough for a collection that is not held off
        return await record(*args, **kwargs)

    monkeypatch.setattr(world.content, "_record_commit", record_after_a_collection)
    await w.commit(labels={"containerd.io/gc.root": "yes"})
    await asyncio.gather(*collections)
    assert collections
    await world.gc.collect()
    assert world.content.has("default", digest) and digest in world.on_disk()
