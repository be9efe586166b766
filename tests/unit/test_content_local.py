from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from aiocontainerd.content import LocalStore
from aiocontainerd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable

DATA = os.urandom(300_000)
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


async def read_all(store: LocalStore, digest: str, offset: int = 0, size: int = 0) -> bytes:
    return b"".join([c async for c in store.read(digest, offset, size, chunk=65536)])


async def test_write_commit_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    w = await store.writer("ref1", total=len(DATA), expected=DIGEST)
    await w.write(DATA[:1000])
    await w.write(DATA[1000:])
    assert (await store.status("ref1")).offset == len(DATA)
    assert await w.commit() == DIGEST
    assert (await store.info(DIGEST)).size == len(DATA)
    assert await read_all(store, DIGEST) == DATA
    assert await read_all(store, DIGEST, 100, 50) == DATA[100:150]
    assert [b.digest for b in await store.walk()] == [DIGEST]
    assert await store.list_statuses() == []
    with pytest.raises(NotFound):
        await store.status("ref1")


async def test_one_writer_per_ref_and_resume_after_close(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    w = await store.writer("r")
    with pytest.raises(Unavailable, match="locked"):
        await store.writer("r")
    await w.write(DATA[:123_456])
    w.close()
    # a new store object (a restarted daemon) resumes at the same offset
    store2 = LocalStore(tmp_path)
    w2 = await store2.writer("r", expected=DIGEST)
    assert w2.offset == 123_456
    await w2.write(DATA[123_456:])
    assert await w2.commit(len(DATA)) == DIGEST


async def test_mismatch_keeps_ingest_and_existing_blob_is_already_exists(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    w = await store.writer("bad", expected=DIGEST)
    await w.write(DATA[:10] + bytes([DATA[10] ^ 0xFF]) + DATA[11:])  # one byte surely changed
    with pytest.raises(FailedPrecondition, match="unexpected commit digest"):
        await w.commit()
    assert not store.exists(DIGEST)
    w = await store.writer("bad")
    await w.truncate(0)
    await w.write(DATA)
    await w.commit(expected=DIGEST)
    w = await store.writer("again")
    await w.write(DATA)
    with pytest.raises(AlreadyExists):
        await w.commit()
    assert await store.list_statuses() == []
    assert len(await store.walk()) == 1


async def test_wrong_size_abort_and_bad_digests(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    w = await store.writer("s", total=5)
    await w.write(b"abcd")
    with pytest.raises(FailedPrecondition, match="size"):
        await w.commit()
    await store.abort("s")
    with pytest.raises(NotFound):
        await store.abort("s")
    for bad in ["sha256:xyz", "md5:00", "", "sha256:" + "A" * 64]:
        with pytest.raises(InvalidArgument):
            await store.info(bad)
    with pytest.raises(NotFound):
        await store.info("sha256:" + "0" * 64)


async def test_reads_from_the_page_cache_and_through_a_thread_agree(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiocontainerd.content import local

    store = LocalStore(tmp_path)
    w = await store.writer("ref1", total=len(DATA), expected=DIGEST)
    await w.write(DATA)
    await w.commit()
    fd = os.open(store.blob_path(DIGEST), os.O_RDONLY)
    try:                                  # just written: in the page cache
        assert local._cached_read(fd, 1000, 5) == DATA[5:1005]
        assert local._cached_read(fd, 1000, len(DATA) - 10) == DATA[-10:]
        assert local._cached_read(fd, 10, len(DATA)) is None        # past the end
    finally:
        os.close(fd)
    assert await read_all(store, DIGEST, 7, 200_000) == DATA[7:200_007]
    monkeypatch.setattr(local, "_cached_read", lambda fd, size, offset: None)   # never cached
    assert await read_all(store, DIGEST, 7, 200_000) == DATA[7:200_007]
