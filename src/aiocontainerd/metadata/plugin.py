"""The metadata plugin, ``io.containerd.metadata.v1.lmdb``: opens the store of record.

Its folder is ``<root>/io.containerd.metadata.v1.lmdb/``. (The daemon's lock
on its root keeps a second daemon off the same database.)
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..content import LocalStore
from ..plugin import CONTENT, METADATA, SNAPSHOTTER, InitContext, Registration
from ..snapshots import Snapshotter
from .containers import ContainerStore
from .content import ContentStore
from .db import DEFAULT_MAP_SIZE, MetadataDB
from .images import ImageStore
from .leases import LeaseStore
from .namespaces import NamespaceStore
from .snapshots import NamespacedSnapshotter

if TYPE_CHECKING:
    from .scheduler import Scheduler


@dataclasses.dataclass
class LMDBConfig:
    """``[plugins."io.containerd.metadata.v1.lmdb"]``; ``map_size``: the most the
    database may grow to, in bytes (address space only; disk is used as written)."""

    map_size: int = DEFAULT_MAP_SIZE

    def __post_init__(self) -> None:
        if self.map_size < 1 << 20:
            raise ValueError(f"key 'map_size': {self.map_size} bytes is too small (at least 1048576)")


class Metadata:
    """The open store: the database and its per-object stores.

    ``scheduler`` is set by the GC scheduler plugin when it loads; deletions
    are reported to it.
    """

    def __init__(self, db: MetadataDB, local: LocalStore,
                 snapshotters: Mapping[str, Snapshotter] | None = None) -> None:
        self.db = db
        self.scheduler: Scheduler | None = None
        #: every backend snapshotter, namespaced, by name (``overlayfs``, ``native``, ...)
        self.snapshotters = {name: NamespacedSnapshotter(name, backend, db, on_delete=self.deleted)
                             for name, backend in (snapshotters or {}).items()}
        self.namespaces = NamespaceStore(db)
        self.containers = ContainerStore(db, on_delete=self.deleted)
        self.content = ContentStore(db, local, on_delete=self.deleted)
        self.images = ImageStore(db, on_delete=self.deleted)
        self.leases = LeaseStore(db)

    def deleted(self) -> None:
        """An object was deleted: let the GC scheduler count it."""
        if self.scheduler is not None:
            self.scheduler.deleted()

    async def collect(self) -> None:
        """Collect garbage now (``sync`` deletes); a no-op without a GC scheduler."""
        if self.scheduler is not None:
            await self.scheduler.collect()

    async def close(self) -> None:
        self.db.close()


async def _init(ctx: InitContext) -> Metadata:
    config: LMDBConfig = ctx.config
    local = ctx.get(CONTENT)
    return Metadata(MetadataDB.open(ctx.root, map_size=config.map_size), local,
                    ctx.get_all(SNAPSHOTTER))


PLUGIN = Registration(METADATA, "lmdb", _init, requires=(CONTENT, SNAPSHOTTER), config=LMDBConfig)


async def _init_content(ctx: InitContext) -> LocalStore:
    return await asyncio.to_thread(LocalStore, ctx.root)


CONTENT_PLUGIN = Registration(CONTENT, "content", _init_content)
