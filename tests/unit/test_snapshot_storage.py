"""The snapshot metastore (aiocontainerd.snapshots.storage), after containerd's metastore_test.go."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import lmdb
import pytest

from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from aiocontainerd.snapshots import Info, Kind, Usage
from aiocontainerd.snapshots.storage import (
    LABEL_SNAPSHOT_REF,
    MetaStore,
    SchemaError,
    Snapshot,
    disk_usage,
    inherited_labels,
)


@pytest.fixture
async def ms(tmp_path: Path) -> AsyncIterator[MetaStore]:
    store = MetaStore.open(tmp_path / "metadata.lmdb")
    yield store
    store.close()


async def populate(ms: MetaStore) -> None:
    """containerd's basePopulate: two committed, three active, two views."""
    await ms.create(Kind.ACTIVE, "committed-tmp-1")
    await ms.commit_active("committed-tmp-1", "committed-1", Usage(size=1))
    await ms.create(Kind.ACTIVE, "committed-tmp-2", "committed-1")
    await ms.commit_active("committed-tmp-2", "committed-2", Usage(size=2))
    await ms.create(Kind.ACTIVE, "active-1")
    await ms.create(Kind.ACTIVE, "active-2", "committed-1")
    await ms.create(Kind.ACTIVE, "active-3", "committed-2")
    await ms.create(Kind.VIEW, "view-1")
    await ms.create(Kind.VIEW, "view-2", "committed-2")


BASE = {
    "committed-1": ("", Kind.COMMITTED),
    "committed-2": ("committed-1", Kind.COMMITTED),
    "active-1": ("", Kind.ACTIVE),
    "active-2": ("committed-1", Kind.ACTIVE),
    "active-3": ("committed-2", Kind.ACTIVE),
    "view-1": ("", Kind.VIEW),
    "view-2": ("committed-2", Kind.VIEW),
}


async def test_get_info(ms: MetaStore) -> None:
    await populate(ms)
    for key, (parent, kind) in BASE.items():
        _, info, _ = ms.get_info(key)
        assert (info.name, info.parent, info.kind) == (key, parent, kind)
        assert info.created_at == info.updated_at > 0
    assert ms.get_info("committed-2")[2] == Usage(size=2)
    assert ms.get_info("active-1")[2] == Usage()
    with pytest.raises(NotFound):
        ms.get_info("active-not-exist")
    with pytest.raises(NotFound):
        ms.get_info("")


async def test_walk(ms: MetaStore) -> None:
    await populate(ms)
    assert {i.name: (i.parent, i.kind) for i in ms.walk()} == BASE
    assert [i.name for i in ms.walk(["kind==view"])] == ["view-1", "view-2"]
    assert sorted(i.name for i in ms.walk(["parent==committed-2", "name==active-1"])) == [
        "active-1", "active-3", "view-2"]
    assert sorted(i.name for i in ms.walk(['parent!=""'])) == [
        "active-2", "active-3", "committed-2", "view-2"]
    with pytest.raises(InvalidArgument):
        ms.walk(["kind=="])


async def test_get_snapshot(ms: MetaStore) -> None:
    await ms.create(Kind.ACTIVE, "committed-tmp-1")
    cid = await ms.commit_active("committed-tmp-1", "committed-1", Usage())
    created = {
        "active-1": await ms.create(Kind.ACTIVE, "active-1"),
        "active-2": await ms.create(Kind.ACTIVE, "active-2", "committed-1"),
        "view-1": await ms.create(Kind.VIEW, "view-1"),
        "view-2": await ms.create(Kind.VIEW, "view-2", "committed-1"),
    }
    for key, s in created.items():
        assert ms.get_snapshot(key) == s
    assert created["view-2"].parent_ids == (cid,)
    with pytest.raises(FailedPrecondition):
        ms.get_snapshot("committed-1")
    with pytest.raises(NotFound):
        ms.get_snapshot("active-not-exist")


async def test_create_active(ms: MetaStore) -> None:
    a1 = await ms.create(Kind.ACTIVE, "active-1")
    assert a1.kind == Kind.ACTIVE
    v1 = await ms.create(Kind.VIEW, "view-1")
    assert v1.id != a1.id and v1.kind == Kind.VIEW
    commit_id = await ms.commit_active("active-1", "committed-1", Usage())
    assert commit_id == a1.id, "the id does not change on commit"
    a3 = await ms.create(Kind.ACTIVE, "active-3", "committed-1")
    assert a3.id not in (a1.id, v1.id) and a3.parent_ids == (commit_id,)
    v2 = await ms.create(Kind.VIEW, "view-2", "committed-1")
    assert v2.parent_ids == (commit_id,) and v2.kind == Kind.VIEW


async def test_create_errors(ms: MetaStore) -> None:
    await populate(ms)
    with pytest.raises(AlreadyExists):
        await ms.create(Kind.ACTIVE, "active-1")
    with pytest.raises(AlreadyExists):
        await ms.create(Kind.VIEW, "committed-1")
    with pytest.raises(NotFound):
        await ms.create(Kind.ACTIVE, "active-new", "does-not-exist")
    with pytest.raises(InvalidArgument):
        await ms.create(Kind.ACTIVE, "active-new", "active-1")
    with pytest.raises(InvalidArgument):
        await ms.create(Kind.VIEW, "view-new", "view-1")
    with pytest.raises(InvalidArgument):
        await ms.create(Kind.COMMITTED, "committed-new")
    with pytest.raises(InvalidArgument):
        await ms.create(Kind.ACTIVE, "")
    with pytest.raises(InvalidArgument):
        await ms.create(Kind.ACTIVE, "k" * 512)
    await ms.create(Kind.ACTIVE, "k" * 511)


async def test_commit(ms: MetaStore) -> None:
    a1 = await ms.create(Kind.ACTIVE, "active-1")
    assert await ms.commit_active("active-1", "committed-1", Usage(10, 2)) == a1.id
    with pytest.raises(NotFound):
        ms.get_snapshot("active-1")
    with pytest.raises(FailedPrecondition):
        ms.get_snapshot("committed-1")
    sid, info, usage = ms.get_info("committed-1")
    assert (sid, info.kind, usage) == (a1.id, Kind.COMMITTED, Usage(10, 2))


async def test_commit_errors(ms: MetaStore) -> None:
    await populate(ms)
    with pytest.raises(AlreadyExists):
        await ms.commit_active("active-1", "committed-1", Usage())
    with pytest.raises(FailedPrecondition):
        await ms.commit_active("committed-1", "committed-3", Usage())
    with pytest.raises(FailedPrecondition):
        await ms.commit_active("view-1", "committed-3", Usage())
    with pytest.raises(NotFound):
        await ms.commit_active("no-such-active", "committed-3", Usage())
    with pytest.raises(InvalidArgument):
        await ms.commit_active("active-1", "", Usage())
    # nothing changed
    assert ms.get_info("active-1")[1].kind == Kind.ACTIVE
    with pytest.raises(NotFound):
        ms.get_info("committed-3")


async def test_remove(ms: MetaStore) -> None:
    a1 = await ms.create(Kind.ACTIVE, "active-1")
    commit_id = await ms.commit_active("active-1", "committed-1", Usage())
    v1 = await ms.create(Kind.VIEW, "view-1", "committed-1")
    v2 = await ms.create(Kind.VIEW, "view-2", "committed-1")
    with pytest.raises(NotFound):
        await ms.remove("active-1")
    with pytest.raises(FailedPrecondition, match="remove"):
        await ms.remove("committed-1")
    assert await ms.remove("view-2") == (v2.id, Kind.VIEW)
    with pytest.raises(FailedPrecondition):
        await ms.remove("committed-1")
    assert await ms.remove("view-1") == (v1.id, Kind.VIEW)
    assert await ms.remove("committed-1") == (commit_id, Kind.COMMITTED) == (a1.id, Kind.COMMITTED)
    assert ms.ids() == set()


async def test_remove_with_children(ms: MetaStore) -> None:
    await populate(ms)
    for _ in range(2):
        with pytest.raises(FailedPrecondition):
            await ms.remove("committed-1")
    # the child of committed-1 that was an active when created is a committed one now
    await ms.remove("active-2")
    await ms.remove("active-3")
    await ms.remove("view-2")
    with pytest.raises(FailedPrecondition):
        await ms.remove("committed-1")  # committed-2 is still its child
    await ms.remove("committed-2")
    await ms.remove("committed-1")


async def test_parents(ms: MetaStore) -> None:
    await populate(ms)
    ids = {k: ms.get_info(k)[0] for k in BASE}
    assert ms.get_snapshot("active-1").parent_ids == ()
    assert ms.get_snapshot("active-2").parent_ids == (ids["committed-1"],)
    assert ms.get_snapshot("active-3").parent_ids == (ids["committed-2"], ids["committed-1"])
    assert ms.get_snapshot("view-2").parent_ids == (ids["committed-2"], ids["committed-1"])
    s = await ms.create(Kind.VIEW, "view-3", "committed-2")
    assert s.parent_ids == (ids["committed-2"], ids["committed-1"])


async def test_deep_chain(ms: MetaStore) -> None:
    parent, ids = "", []
    for i in range(200):
        s = await ms.create(Kind.ACTIVE, f"a{i}", parent)
        await ms.commit_active(f"a{i}", f"c{i}", Usage())
        parent = f"c{i}"
        ids.append(s.id)
    assert (await ms.create(Kind.VIEW, "v", parent)).parent_ids == tuple(reversed(ids))


async def test_rebase_on_commit(ms: MetaStore) -> None:
    await populate(ms)
    cases = [
        ("rebase-active-1", "rebase-committed-1", "", "committed-1", None),
        ("rebase-active-2", "rebase-committed-2", "committed-1", "committed-1", None),
        ("rebase-active-3", "rebase-committed-3", "", "nonexist", NotFound),
        ("rebase-active-4", "rebase-committed-4", "committed-1", "", None),
        ("rebase-active-5", "rebase-committed-5", "", "active-1", FailedPrecondition),
        ("rebase-active-6", "rebase-committed-6", "committed-1", "committed-2", InvalidArgument),
    ]
    for key, name, old, new, error in cases:
        await ms.create(Kind.ACTIVE, key, old)
        if error is not None:
            with pytest.raises(error):
                await ms.commit_active(key, name, Usage(), parent=new)
            continue
        sid = await ms.commit_active(key, name, Usage(), parent=new)
        view = await ms.create(Kind.VIEW, f"{name}-view", name)
        pid = ms.get_info(new or old)[0]
        assert view.parent_ids == (sid, pid)
        with pytest.raises(FailedPrecondition):
            await ms.remove(new or old)  # the rebased snapshot is its child now
        await ms.remove(f"{name}-view")
        await ms.remove(name)


async def test_update_labels(ms: MetaStore) -> None:
    await ms.create(Kind.ACTIVE, "a", labels={"l1": "v1", "empty": ""})
    _, info, _ = ms.get_info("a")
    assert info.labels == {"l1": "v1"}, "an empty label value is no label"
    await asyncio.sleep(0.001)
    new = await ms.update_info(Info(Kind.COMMITTED, "a", parent="nope", labels={"l1": "v1", "l2": "v2",
                                                                                  "l3": "v3"}))
    assert new.labels == {"l1": "v1", "l2": "v2", "l3": "v3"}
    assert (new.kind, new.parent, new.created_at) == (Kind.ACTIVE, "", info.created_at)
    assert new.updated_at > info.updated_at
    new = await ms.update_info(Info(Kind.ACTIVE, "a", labels={"l1": "updated", "l4": "v4"}),
                               ["labels.l1", "labels.l2"])
    assert new.labels == {"l1": "updated", "l3": "v3"}
    new = await ms.update_info(Info(Kind.ACTIVE, "a", labels={"l4": "v4"}), ["labels"])
    assert new.labels == {"l4": "v4"}
    assert ms.get_info("a")[1] == new
    with pytest.raises(InvalidArgument):
        await ms.update_info(Info(Kind.ACTIVE, "a", parent="x"), ["parent"])
    with pytest.raises(NotFound):
        await ms.update_info(Info(Kind.ACTIVE, "nope"))


async def test_commit_inherits_snapshot_labels(ms: MetaStore) -> None:
    labels = {"containerd.io/snapshot/remote": "yes", LABEL_SNAPSHOT_REF: "sha256:abc",
              "containerd.io/gc.root": "x", "other": "o"}
    assert inherited_labels(labels) == {"containerd.io/snapshot/remote": "yes",
                                        LABEL_SNAPSHOT_REF: "sha256:abc"}
    await ms.create(Kind.ACTIVE, "a", labels=labels)
    await ms.commit_active("a", "c", Usage(), {"other": "committed", "containerd.io/snapshot/remote": "no"})
    assert ms.get_info("c")[1].labels == {"containerd.io/snapshot/remote": "no",
                                          LABEL_SNAPSHOT_REF: "sha256:abc", "other": "committed"}


async def test_hook_failure_aborts(ms: MetaStore) -> None:
    seen: list[Snapshot] = []

    def failing(s: Snapshot) -> None:
        seen.append(s)
        raise OSError("no space left")

    with pytest.raises(OSError, match="no space"):
        await ms.create(Kind.ACTIVE, "a", hook=failing)
    with pytest.raises(NotFound):
        ms.get_info("a")
    await ms.create(Kind.ACTIVE, "a")
    await ms.commit_active("a", "c", Usage())

    def refuse(sid: str, kind: Kind) -> None:
        assert kind == Kind.COMMITTED
        raise OSError("busy")

    with pytest.raises(OSError, match="busy"):
        await ms.remove("c", hook=refuse)
    assert ms.get_info("c")[1].kind == Kind.COMMITTED


async def test_ids_never_reused(tmp_path: Path) -> None:
    ms = MetaStore.open(tmp_path / "m")
    first = await ms.create(Kind.ACTIVE, "a")
    await ms.remove("a")
    ms.close()
    ms = MetaStore.open(tmp_path / "m")
    second = await ms.create(Kind.ACTIVE, "a")
    assert int(second.id) > int(first.id)
    assert ms.ids() == {second.id}
    ms.close()


async def test_close_twice_and_closed(tmp_path: Path) -> None:
    ms = MetaStore.open(tmp_path / "m")
    await ms.create(Kind.ACTIVE, "a")
    ms.close()
    ms.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        ms.get_info("a")
    with pytest.raises(FailedPrecondition, match="closed"):
        await ms.create(Kind.ACTIVE, "b")


def test_schema_mismatch(tmp_path: Path) -> None:
    MetaStore.open(tmp_path / "m").close()
    env = lmdb.open(str(tmp_path / "m"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(SchemaError, match="version 99"):
        MetaStore.open(tmp_path / "m")


async def test_cancelled_write_completes(ms: MetaStore) -> None:
    """A cancelled caller waits for its write: afterwards the record is there or not, never half."""
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(s: Snapshot) -> None:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()

    task = asyncio.create_task(ms.create(Kind.ACTIVE, "a", hook=slow))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done(), "the write is still running: the caller waits for it"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ms.get_info("a")[1].kind == Kind.ACTIVE


def test_disk_usage(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    (root / "f").write_bytes(b"x" * 10000)
    os.link(root / "f", root / "d" / "hardlink")
    os.symlink("f", root / "link")
    usage = disk_usage(root)
    assert usage.inodes == 4  # root, d, f (once), link
    expected = sum(os.lstat(p).st_blocks * 512 for p in (root, root / "d", root / "f", root / "link"))
    assert usage.size == expected >= 10000
    with pytest.raises(FileNotFoundError):
        disk_usage(tmp_path / "missing")
