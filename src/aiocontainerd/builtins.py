"""The plugins a daemon loads by default, in no particular order (the registry sorts them)."""

from __future__ import annotations

from .images.service import PLUGIN as TRANSFER_LOCAL
from .metadata.plugin import CONTENT_PLUGIN as CONTENT_LOCAL
from .metadata.plugin import PLUGIN as METADATA_LMDB
from .metadata.scheduler import PLUGIN as GC_SCHEDULER
from .plugin import Registration
from .services.containers import PLUGIN as CONTAINERS
from .services.content import PLUGIN as CONTENT
from .services.health import PLUGIN as HEALTH
from .services.images import PLUGIN as IMAGES
from .services.introspection import PLUGIN as INTROSPECTION
from .services.leases import PLUGIN as LEASES
from .services.namespaces import PLUGIN as NAMESPACES
from .services.snapshots import PLUGIN as SNAPSHOTS
from .services.transfer import PLUGINS as TRANSFER_PLUGINS
from .services.version import PLUGIN as VERSION


def registrations() -> list[Registration]:
    """Every built-in plugin registration."""
    return [CONTENT_LOCAL, METADATA_LMDB, GC_SCHEDULER, TRANSFER_LOCAL, VERSION, NAMESPACES,
            CONTAINERS, CONTENT, IMAGES, LEASES, SNAPSHOTS, INTROSPECTION, HEALTH,
            *TRANSFER_PLUGINS]


def config_types() -> dict[str, type | None]:
    """Plugin URI -> config dataclass, for config validation and ``config default``."""
    return {r.uri: r.config for r in registrations()}
