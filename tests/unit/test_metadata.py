from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lmdb
import pytest

from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from aiocontainerd.metadata import ContainerStore, MetadataDB, NamespaceStore, SchemaError
from aiocontainerd.metadata.containers import Container, Runtime
from aiocontainerd.types import TypedValue

SPEC = TypedValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b'{"ociVersion":"1.1.0"}')


@pytest.fixture
def db(tmp_path: Path):
    d = MetadataDB.open(tmp_path / "db", map_size=64 << 20)
    yield d
    d.close()


async def test_namespace_crud(db: MetadataDB) -> None:
    ns = NamespaceStore(db)
    await ns.create("a", {"x": "1"})
    with pytest.raises(AlreadyExists):
        await ns.create("a")
    await ns.create("b")
    assert [n.name for n in ns.list()] == ["a", "b"]
    assert ns.get("a").labels == {"x": "1"}
    assert (await ns.update("a", {"y": "2"}, ["labels.y"])).labels == {"x": "1", "y": "2"}
    assert (await ns.update("a", {}, ["labels.x"])).labels == {"y": "2"}
    assert (await ns.update("a", {"z": "3"})).labels == {"z": "3"}
    with pytest.raises(InvalidArgument, match="cannot update 'name'"):
        await ns.update("a", {}, ["name"])
    await ns.delete("a")
    with pytest.raises(NotFound):
        ns.get("a")
    with pytest.raises(NotFound):
        await ns.delete("a")
    with pytest.raises(InvalidArgument):
        await ns.create("no way")


async def test_namespace_with_objects_cannot_be_deleted(db: MetadataDB) -> None:
    ns, cs = NamespaceStore(db), ContainerStore(db)
    await cs.create("busy", Container("c1", Runtime("io.containerd.runc.v2"), SPEC))
    assert ns.get("busy").labels == {}  # created on first use
    await ns.create("busy2")  # a namespace that sorts after "busy" with the same prefix
    with pytest.raises(FailedPrecondition, match=r"must be empty.*containers"):
        await ns.delete("busy")
    await ns.delete("busy2")
    await cs.delete("busy", "c1")
    await ns.delete("busy")


async def test_container_crud_and_rules(db: MetadataDB) -> None:
    cs = ContainerStore(db)
    c = await cs.create("default", Container("web", Runtime("io.containerd.runc.v2"), SPEC,
                                       labels={"tier": "fe"}, image="docker.io/library/nginx:latest",
                                       snapshotter="overlayfs", snapshot_key="web"))
    assert c.created_at == c.updated_at > 0
    with pytest.raises(AlreadyExists):
        await cs.create("default", Container("web", Runtime("r"), SPEC))
    with pytest.raises(InvalidArgument, match=r"Runtime\.Name"):
        await cs.create("default", Container("x", Runtime(""), SPEC))
    with pytest.raises(InvalidArgument, match="Spec"):
        await cs.create("default", Container("x", Runtime("r"), None))
    with pytest.raises(InvalidArgument, match="Snapshotter must be set"):
        await cs.create("default", Container("x", Runtime("r"), SPEC, snapshot_key="k"))
    got = cs.get("default", "web")
    assert got == c
    with pytest.raises(NotFound):
        cs.get("other", "web")
    upd = await cs.update("default", Container("web", Runtime(""), None, labels={"v": "2"}), ["labels.v"])
    assert upd.labels == {"tier": "fe", "v": "2"} and upd.spec == SPEC
    assert upd.updated_at >= c.updated_at and upd.created_at == c.created_at
    with pytest.raises(InvalidArgument, match="immutable"):
        await cs.update("default", Container("web", Runtime("other"), SPEC))
    with pytest.raises(InvalidArgument, match="cannot update 'runtime'"):
        await cs.update("default", Container("web", Runtime("other"), SPEC), ["runtime"])
    assert [x.id for x in cs.list("default", ["labels.tier==fe"])] == ["web"]
    assert cs.list("default", ["image~=redis"]) == []
    assert [x.id for x in cs.list("default", ["runtime.name==io.containerd.runc.v2"])] == ["web"]


def test_schema_version_is_checked(tmp_path: Path) -> None:
    MetadataDB.open(tmp_path / "db", map_size=64 << 20).close()
    env = lmdb.open(str(tmp_path / "db"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"99", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(SchemaError, match="schema version 99"):
        MetadataDB.open(tmp_path / "db", map_size=64 << 20)


WRITER = textwrap.dedent("""
    import asyncio, sys
    from aiocontainerd.metadata import ContainerStore, MetadataDB
    from aiocontainerd.metadata.containers import Container, Runtime
    from aiocontainerd.types import TypedValue
    async def main():
        db = MetadataDB.open(sys.argv[1], map_size=256 << 20)
        cs = ContainerStore(db)
        spec = TypedValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"x" * 20000)
        print("ready", flush=True)
        i = int(sys.argv[2])
        while True:
            await cs.create("ns%d" % (i % 3), Container("c%d" % i, Runtime("io.containerd.runc.v2"),
                            spec, labels={"n": str(i)}, extensions={"e": spec}))
            i += 1
    asyncio.run(main())
""")


def test_kill_during_writes_leaves_only_whole_objects(tmp_path: Path) -> None:
    path = tmp_path / "db"
    for round_ in range(3):
        start = round_ * 1_000_000
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(start)],
                                stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.1 * round_)
        assert proc.poll() is None, "the writer stopped before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        db = MetadataDB.open(path, map_size=256 << 20)
        try:
            cs = ContainerStore(db)
            items = [c for ns in ("ns0", "ns1", "ns2") for c in cs.list(ns)]
            assert any(int(c.id[1:]) >= start for c in items), "this round wrote nothing"
            for c in items:
                assert c.labels == {"n": c.id[1:]}
                assert c.spec is not None and len(c.spec.value) == 20000
                assert c.extensions["e"].value == c.spec.value
            assert {n.name for n in NamespaceStore(db).list()} <= {"ns0", "ns1", "ns2"}
        finally:
            db.close()


async def test_update_extension_changes_only_that_extension(db: MetadataDB) -> None:
    store = ContainerStore(db)
    spec = TypedValue("types.containerd.io/opencontainers/runtime-spec/1/Spec", b"{}")
    await store.create("ns", Container(id="c", runtime=Runtime("io.containerd.runc.v2"), spec=spec,
                                       labels={"a": "1"}, extensions={"x": TypedValue("t", b"1")}))
    before = store.get("ns", "c")
    await store.update_extension("ns", "c", "y", TypedValue("t", b"2"))
    after = store.get("ns", "c")
    assert after.extensions == {"x": TypedValue("t", b"1"), "y": TypedValue("t", b"2")}
    assert (after.spec, after.labels, after.runtime) == (before.spec, before.labels, before.runtime)
    assert after.updated_at >= before.updated_at
    with pytest.raises(NotFound):
        await store.update_extension("ns", "missing", "y", TypedValue("t", b"2"))
    with pytest.raises(InvalidArgument):
        await store.update_extension("ns", "c", "", TypedValue("t", b"2"))


async def test_concurrent_updates_commit_together_and_fail_alone(db: MetadataDB) -> None:
    """Updates queued together share a commit; one that raises is undone without the others."""
    import asyncio

    def put(name: str, fail: bool = False):
        def fn(txn):
            txn.put("namespaces", name.encode(), {"labels": {}})
            if fail:
                raise AlreadyExists(name)
            return name
        return fn

    results = await asyncio.gather(*(db.update(put(f"n{i}", fail=i == 2)) for i in range(5)),
                                   return_exceptions=True)
    assert results[:2] == ["n0", "n1"] and results[3:] == ["n3", "n4"]
    assert isinstance(results[2], AlreadyExists)
    with db.read() as txn:
        assert [txn.get("namespaces", f"n{i}".encode()) is not None for i in range(5)] == \
            [True, True, False, True, True]
