"""The metadata layer over a real backend (native): namespaces, sharing, races with GC."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from aiocontainerd.content import LocalStore
from aiocontainerd.errors import AlreadyExists, NotFound
from aiocontainerd.metadata import MetadataDB
from aiocontainerd.metadata.gc import GarbageCollector
from aiocontainerd.metadata.plugin import Metadata
from aiocontainerd.snapshotters.native import NativeSnapshotter

pytestmark = pytest.mark.integration


@pytest.fixture
async def metadata(tmp_path: Path):
    if os.geteuid() != 0:
        pytest.skip("native snapshots need root (ownership is preserved)")
    backend = await NativeSnapshotter.open(tmp_path / "native")
    db = MetadataDB.open(tmp_path / "db", map_size=256 << 20)
    m = Metadata(db, LocalStore(tmp_path / "content"), {"native": backend})
    yield m
    await backend.close()
    db.close()


async def test_two_commits_to_one_name(metadata: Metadata) -> None:
    sn = metadata.snapshotters["native"]
    await sn.prepare("ns", "a")
    await sn.prepare("ns", "b")
    results = await asyncio.gather(sn.commit("ns", "X", "a"), sn.commit("ns", "X", "b"),
                                   return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["AlreadyExists", "NoneType"]
    loser = "a" if isinstance(results[0], AlreadyExists) else "b"
    assert sn.stat("ns", loser).kind.name == "ACTIVE"  # the loser's work is kept


async def test_gc_never_removes_what_a_commit_just_made(metadata: Metadata) -> None:
    sn = metadata.snapshotters["native"]
    gc = GarbageCollector(metadata.db, metadata.content, metadata.snapshotters)
    keep = {"containerd.io/gc.root": "test"}

    async def churn(worker: int) -> None:
        for i in range(15):
            await sn.prepare("st", f"a{worker}-{i}", labels=keep)
            await sn.commit("st", f"c{worker}-{i}", f"a{worker}-{i}", labels=keep)

    async def collect() -> None:
        for _ in range(15):
            await gc.collect()
            await asyncio.sleep(0)

    await asyncio.gather(*(churn(w) for w in range(3)), collect())
    await gc.collect()
    for w in range(3):
        for i in range(15):
            # the committed snapshot's backend storage is there: a view of it mounts
            mounts = await sn.view("st", f"v{w}-{i}", f"c{w}-{i}")
            assert Path(mounts[0].source).is_dir()


async def test_shared_target_carries_only_inherited_labels(metadata: Metadata) -> None:
    sn = metadata.snapshotters["native"]
    ref = {"containerd.io/snapshot.ref": "chain-1"}
    await sn.prepare("la", "extract-1", labels=ref)
    await sn.commit("la", "chain-1", "extract-1",
                    labels={"containerd.io/gc.root": "x", "owner": "team-a",
                            "containerd.io/snapshot/keep": "yes"})
    with pytest.raises(AlreadyExists, match="target snapshot"):
        await sn.prepare("lb", "extract-2", labels=ref)
    shared = sn.stat("lb", "chain-1")
    assert "owner" not in shared.labels and "containerd.io/gc.root" not in shared.labels
    assert shared.labels["containerd.io/snapshot/keep"] == "yes"
    with pytest.raises(NotFound):
        sn.stat("lb", "extract-2")


async def test_storage_is_freed_after_the_collection_lets_go(metadata: Metadata) -> None:
    """Removed snapshots go wave by wave, children first, under the snapshotter's exclusive
    lock; their folders are deleted once the lock is released, so a prepare made meanwhile
    neither waits for the deletion nor loses its own folder."""
    sn = metadata.snapshotters["native"]
    backend = sn.backend
    gc = GarbageCollector(metadata.db, metadata.content, metadata.snapshotters)
    # unreferenced: a chain of three commits with two active leaves on its top
    await sn.prepare("gc", "a1")
    await sn.commit("gc", "c1", "a1")
    await sn.prepare("gc", "a2", "c1")
    await sn.commit("gc", "c2", "a2")
    await sn.prepare("gc", "a3", "c2")
    await sn.commit("gc", "c3", "a3")
    await sn.prepare("gc", "leaf1", "c3")
    await sn.prepare("gc", "leaf2", "c3")
    folders = {p.name for p in backend.snapshots_dir.iterdir()}
    for key in ("leaf1", "leaf2"):
        await sn.remove("gc", key)
    for key in ("c3", "c2", "c1"):
        await sn.remove("gc", key)
    assert len(folders) == 5

    made_during: list[str] = []
    real_cleanup = backend.cleanup

    async def cleanup() -> None:
        # would wait forever if the collection still held the lock
        mounts = await asyncio.wait_for(
            sn.prepare("gc", "during", labels={"containerd.io/gc.root": "t"}), 5)
        made_during.append(mounts[0].source)
        await real_cleanup()

    backend.cleanup = cleanup  # type: ignore[method-assign]
    stats = await gc.collect()
    assert stats.backend_snapshots == 5
    assert made_during and Path(made_during[0]).is_dir()
    assert {p.name for p in backend.snapshots_dir.iterdir()} == {Path(made_during[0]).name}
    assert len(await backend.walk()) == 1
