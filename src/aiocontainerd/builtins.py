"""The plugins a daemon loads by default, in no particular order (the registry sorts them)."""

from __future__ import annotations

from .cri.plugin import PLUGIN as CRI
from .diff.service import PLUGIN as DIFF_SERVICE
from .events import PLUGIN as EVENT_EXCHANGE
from .images.service import PLUGIN as TRANSFER_LOCAL
from .metadata.plugin import CONTENT_PLUGIN as CONTENT_LOCAL
from .metadata.plugin import PLUGIN as METADATA_LMDB
from .metadata.scheduler import PLUGIN as GC_SCHEDULER
from .plugin import Registration
from .runtimes.v2.manager import PLUGIN as RUNTIME_V2_TASK
from .services.containers import PLUGIN as CONTAINERS
from .services.content import PLUGIN as CONTENT
from .services.diff import PLUGIN as DIFF
from .services.events import PLUGINS as EVENTS_PLUGINS
from .services.health import PLUGIN as HEALTH
from .services.images import PLUGIN as IMAGES
from .services.introspection import PLUGIN as INTROSPECTION
from .services.leases import PLUGIN as LEASES
from .services.namespaces import PLUGIN as NAMESPACES
from .services.snapshots import PLUGIN as SNAPSHOTS
from .services.tasks import PLUGIN as TASKS
from .services.transfer import PLUGINS as TRANSFER_PLUGINS
from .services.version import PLUGIN as VERSION
from .snapshotters.btrfs import PLUGIN as SNAPSHOTTER_BTRFS
from .snapshotters.devmapper import PLUGIN as SNAPSHOTTER_DEVMAPPER
from .snapshotters.native import PLUGIN as SNAPSHOTTER_NATIVE
from .snapshotters.overlay import PLUGIN as SNAPSHOTTER_OVERLAYFS
from .snapshotters.windows import PLUGIN as SNAPSHOTTER_WINDOWS


def registrations() -> list[Registration]:
    """Every built-in plugin registration."""
    return [CONTENT_LOCAL, METADATA_LMDB, GC_SCHEDULER, TRANSFER_LOCAL, VERSION, NAMESPACES,
            CONTAINERS, CONTENT, IMAGES, LEASES, SNAPSHOTS, INTROSPECTION, HEALTH,
            *TRANSFER_PLUGINS, SNAPSHOTTER_OVERLAYFS, SNAPSHOTTER_NATIVE, SNAPSHOTTER_BTRFS,
            SNAPSHOTTER_DEVMAPPER, SNAPSHOTTER_WINDOWS, DIFF_SERVICE, DIFF,
            RUNTIME_V2_TASK, TASKS, CRI,
            EVENT_EXCHANGE, *EVENTS_PLUGINS]


def config_types() -> dict[str, type | None]:
    """Plugin URI -> config dataclass, for config validation and ``config default``."""
    return {r.uri: r.config for r in registrations()}
