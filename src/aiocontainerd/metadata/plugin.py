"""The metadata plugin, ``io.containerd.metadata.v1.lmdb``: opens the store of record.

Its folder is ``<root>/io.containerd.metadata.v1.lmdb/``. An exclusive lock
(``daemon.lock``) keeps a second daemon off the same root; the second one
fails to start with FailedPrecondition instead of sharing the database.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os

from ..errors import FailedPrecondition
from ..plugin import METADATA, InitContext, Registration
from .containers import ContainerStore
from .db import DEFAULT_MAP_SIZE, MetadataDB
from .namespaces import NamespaceStore


@dataclasses.dataclass
class LMDBConfig:
    """``[plugins."io.containerd.metadata.v1.lmdb"]``; ``map_size``: the most the
    database may grow to, in bytes (address space only; disk is used as written)."""

    map_size: int = DEFAULT_MAP_SIZE


class Metadata:
    """The open store: the database and its per-object stores."""

    def __init__(self, db: MetadataDB, lock_fd: int) -> None:
        self.db = db
        self.namespaces = NamespaceStore(db)
        self.containers = ContainerStore(db)
        self._lock_fd = lock_fd

    async def close(self) -> None:
        self.db.close()
        os.close(self._lock_fd)


async def _init(ctx: InitContext) -> Metadata:
    config: LMDBConfig = ctx.config
    ctx.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(ctx.root / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FailedPrecondition(
            f"{ctx.root} is in use by another daemon (root directories cannot be shared)"
        ) from None
    try:
        db = MetadataDB.open(ctx.root / "db", map_size=config.map_size)
    except BaseException:
        os.close(fd)
        raise
    return Metadata(db, fd)


PLUGIN = Registration(METADATA, "lmdb", _init, config=LMDBConfig)
