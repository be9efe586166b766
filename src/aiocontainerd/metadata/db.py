"""The store of record: one LMDB environment under ``<root>/io.containerd.metadata.v1.lmdb/``.

Layout (LMDB named databases; keys are UTF-8, values compact JSON objects)::

    meta          b"schema"                   -> schema version (decimal)
    namespaces    <namespace>                 -> {"labels": {...}}
    containers    <namespace> NUL <id>        -> container record
    images        <namespace> NUL <name>      -> image record              (next issues)
    content       <namespace> NUL <digest>    -> {"size", "labels", "created_at", "updated_at"}
    ingests       <namespace> NUL <ref>       -> {"expected", "expires_at"} (writes in progress)
    snapshots     <namespace> NUL <snapshotter> NUL <key>              (next issues)
    leases        <namespace> NUL <id>        -> {"labels", "created_at"}
    lease_resources <namespace> NUL <lease> NUL <type> NUL <id> -> {}
    sandboxes     <namespace> NUL <id>                                 (next issues)

Objects of a namespace sort together under the ``<namespace> NUL`` prefix, so
"is this namespace empty" and "list in namespace" are prefix range scans.

Contract:
- Every mutation is one function run by :meth:`MetadataDB.update` inside one
  write transaction on the database's single writer thread (commits fsync, which
  must not block the event loop); LMDB commits it atomically, so a crash (or
  SIGKILL) between transactions never leaves half an object, and a function that
  raises aborts the whole transaction.
- Reads run in :meth:`MetadataDB.read` snapshots on the loop (point reads and
  short scans are fast), isolated from the writer.
- The schema version is written when the database is created and checked at
  every open: a database written by an incompatible version raises
  :class:`SchemaError` instead of being misread.
- Keys are 1 to 511 bytes (LMDB's limit): a longer name is InvalidArgument, an
  empty one is simply not found.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from ..errors import InvalidArgument
from ..tasks import complete

T = TypeVar("T")
MAX_KEY = 511
SCHEMA_VERSION = 1
DEFAULT_MAP_SIZE = 16 << 30
SEP = "\0"

#: Named databases whose keys start with ``<namespace> NUL``; a namespace is
#: empty when none of them holds a key under its prefix.
NAMESPACED = ("containers", "images", "content", "ingests", "snapshots", "leases", "sandboxes")
#: Databases keyed by namespace that do not keep a namespace from being deleted.
DEPENDENT = ("lease_resources",)
DATABASES = ("meta", "namespaces", *NAMESPACED, *DEPENDENT)


class SchemaError(RuntimeError):
    """The database on disk has a schema this daemon does not read."""


def key(*parts: str) -> bytes:
    """Join key components with NUL (``key("default", "redis")``)."""
    return SEP.join(parts).encode()


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes) -> dict[str, Any]:
    return json.loads(raw)


class Txn:
    """One LMDB transaction with named-database helpers; values are JSON objects."""

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, Any]) -> None:
        self._txn = txn
        self._dbs = dbs

    def get(self, db: str, k: bytes) -> dict[str, Any] | None:
        if not k or len(k) > MAX_KEY:
            return None
        raw = self._txn.get(k, db=self._dbs[db])
        return None if raw is None else decode(raw)

    def put(self, db: str, k: bytes, value: dict[str, Any], *, overwrite: bool = True) -> bool:
        """Store ``value``; with ``overwrite=False`` returns False if the key exists."""
        if not k or len(k) > MAX_KEY:
            raise InvalidArgument(f"name of {len(k)} bytes: names must be 1 to {MAX_KEY} bytes "
                                  "with their namespace")
        return self._txn.put(k, encode(value), db=self._dbs[db], overwrite=overwrite)

    def delete(self, db: str, k: bytes) -> bool:
        if not k or len(k) > MAX_KEY:
            return False
        return self._txn.delete(k, db=self._dbs[db])

    def scan(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, dict[str, Any]]]:
        """Keys and values of ``db`` starting with ``prefix``, in key order."""
        if len(prefix) > MAX_KEY:
            return
        with self._txn.cursor(db=self._dbs[db]) as cur:
            if not cur.set_range(prefix):
                return
            for k, v in cur:
                if not k.startswith(prefix):
                    return
                yield k, decode(v)

    def any(self, db: str, prefix: bytes) -> bool:
        """Whether ``db`` holds any key starting with ``prefix``."""
        if len(prefix) > MAX_KEY:
            return False
        with self._txn.cursor(db=self._dbs[db]) as cur:
            return cur.set_range(prefix) and cur.key().startswith(prefix)


def open_env(path: Path, databases: Iterable[str], *, map_size: int, schema_version: int,
             what: str) -> tuple[lmdb.Environment, dict[str, Any]]:
    """Open (creating) the LMDB folder ``path`` with named ``databases`` (one is ``meta``).

    The schema version is written on creation and checked afterwards: another
    version raises :class:`SchemaError` naming ``what``. Used by the metadata
    store and the snapshotters' metastores.
    """
    names = list(databases)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = lmdb.open(str(path), map_size=map_size, max_dbs=len(names) + 8, subdir=True, lock=True,
                    sync=True, metasync=True)
    try:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name.encode(), txn=txn) for name in names}
            raw = txn.get(b"schema", db=dbs["meta"])
            if raw is None:
                txn.put(b"schema", str(schema_version).encode(), db=dbs["meta"])
            elif int(raw) != schema_version:
                raise SchemaError(f"{path}: {what} schema version {int(raw)}, "
                                  f"this daemon reads version {schema_version}")
    except BaseException:
        env.close()
        raise
    return env, dbs


class GroupWriter:
    """The one writer thread of an LMDB environment, committing in groups.

    :meth:`update` runs ``fn(txn)`` in a write transaction on the writer thread and
    returns its result once committed (and synced); aborted if ``fn`` raises, which
    re-raises. It runs to completion even if the caller is cancelled.

    Group commit: updates queued while the writer is busy are committed together, each
    in its own nested transaction (so one that raises is undone alone, and each sees
    the ones before it, as if they ran one after the other) under one parent whose
    commit — the fsync, most of an update's cost — they share.
    """

    def __init__(self, env: lmdb.Environment, dbs: dict[str, Any], thread_name: str) -> None:
        self._env = env
        self._dbs = dbs
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=thread_name)
        #: updates waiting for the writer thread: (fn, its future, the future's loop)
        self._pending: list[tuple[Callable[[Txn], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]] = []
        self._pending_lock = threading.Lock()
        self._draining = False

    def apply(self, fn: Callable[[Txn], T]) -> T:
        """``fn(txn)`` in one write transaction on the calling thread."""
        with self._env.begin(write=True) as txn:
            return fn(Txn(txn, self._dbs))

    async def update(self, fn: Callable[[Txn], T]) -> T:
        """See the class doc."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append((fn, fut, loop))
            start, self._draining = not self._draining, True
        if start:
            try:
                self._thread.submit(self._drain)
            except BaseException:
                with self._pending_lock:
                    self._pending.remove((fn, fut, loop))
                    self._draining = False
                raise
        return await complete(fut)

    async def exclusive(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the writer thread, between write transactions (nothing is written
        while it runs); runs to completion even if the caller is cancelled."""
        loop = asyncio.get_running_loop()
        return await complete(loop.run_in_executor(self._thread, fn))

    def _drain(self) -> None:
        """The writer thread: commit what is queued, batch by batch, until nothing is."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            for (_, fut, loop), outcome in zip(batch, self._commit(batch), strict=True):
                with contextlib.suppress(RuntimeError):   # its loop is closed: nobody waits
                    loop.call_soon_threadsafe(_settle, fut, *outcome)

    def _commit(self, batch: list[tuple[Callable[[Txn], Any], Any, Any]]
                ) -> list[tuple[Any, BaseException | None]]:
        """(result, error) of each function of ``batch``, committed in one transaction."""
        if len(batch) == 1:
            try:
                return [(self.apply(batch[0][0]), None)]
            except BaseException as e:
                return [(None, e)]
        outcomes: list[tuple[Any, BaseException | None]] = []
        try:
            with self._env.begin(write=True) as parent:
                for fn, _, _ in batch:
                    child = self._env.begin(write=True, parent=parent)
                    try:
                        result = fn(Txn(child, self._dbs))
                    except BaseException as e:
                        child.abort()
                        outcomes.append((None, e))
                    else:
                        child.commit()
                        outcomes.append((result, None))
        except BaseException as e:   # the commit failed: none of them is stored
            return [(None, e)] * len(batch)
        return outcomes

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._thread.shutdown(wait=True)


class MetadataDB:
    """The LMDB environment; open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, env: lmdb.Environment, dbs: dict[str, Any], path: Path) -> None:
        self._env = env
        self._dbs = dbs
        self.path = path
        self._writer = GroupWriter(env, dbs, "lmdb-writer")

    @classmethod
    def open(cls, path: str | os.PathLike[str], map_size: int = DEFAULT_MAP_SIZE) -> MetadataDB:
        """Open (creating if needed) the database folder ``path``.

        Raises :class:`SchemaError` if it was written with another schema version.
        """
        path = Path(path)
        env, dbs = open_env(path, DATABASES, map_size=map_size, schema_version=SCHEMA_VERSION,
                            what="metadata")
        return cls(env, dbs, path)

    @contextlib.contextmanager
    def read(self) -> Iterator[Txn]:
        """A read-only snapshot transaction."""
        with self._env.begin(write=False) as txn:
            yield Txn(txn, self._dbs)

    async def update(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn(txn)`` in one write transaction on the writer thread; returns its result
        once committed and synced (group commit: see :class:`GroupWriter`)."""
        return await self._writer.update(fn)

    def close(self) -> None:
        self._writer.close()
        self._env.close()


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
