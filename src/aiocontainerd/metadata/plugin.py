"""The metadata plugin, ``io.containerd.metadata.v1.lmdb``: opens the store of record.

Its folder is ``<root>/io.containerd.metadata.v1.lmdb/``. (The daemon's lock
on its root keeps a second daemon off the same database.)
"""

from __future__ import annotations

import dataclasses

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

    def __init__(self, db: MetadataDB) -> None:
        self.db = db
        self.namespaces = NamespaceStore(db)
        self.containers = ContainerStore(db)

    async def close(self) -> None:
        self.db.close()


async def _init(ctx: InitContext) -> Metadata:
    config: LMDBConfig = ctx.config
    return Metadata(MetadataDB.open(ctx.root, map_size=config.map_size))


PLUGIN = Registration(METADATA, "lmdb", _init, config=LMDBConfig)
