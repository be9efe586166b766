"""The devmapper snapshotter, plugin ``io.containerd.snapshotter.v1.devmapper``.

Snapshots are thin devices of a device-mapper thin-pool that the operator made
beforehand (see containerd's ``docs/snapshotters/devmapper.md`` for making one
on loop devices or LVM); the snapshotter never creates the pool.

Modules, following containerd's ``plugins/snapshots/devmapper``:

- :mod:`.config` — ``[plugins."io.containerd.snapshotter.v1.devmapper"]`` and its checks;
- :mod:`.device_info` — device records and their state machine;
- :mod:`.metadata` — the pool metadata store and thin device ID allocation;
- :mod:`.dmsetup` — the ``dmsetup`` command layer (a runner can be swapped for tests);
- :mod:`.pool_device` — pool operations with state tracking and rollback;
- :mod:`.snapshotter` — the :class:`~aiocontainerd.snapshots.Snapshotter` on top.

Plugin start-up (:func:`init`), in this order:

1. no device-mapper in the kernel (no ``device-mapper`` in ``/proc/misc`` or
   ``/sys/class/misc``): skipped, "device-mapper is not available in this kernel";
2. no ``pool_name``: skipped, "devmapper not configured" (as containerd skips it);
3. ``root_path`` defaults to the plugin's root folder, exported as ``root``;
   a missing required key is an error naming it;
4. ``dmsetup`` missing or the pool not found: an error (Introspection shows it).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import TYPE_CHECKING

from aiocontainerd.plugin import SNAPSHOTTER, InitContext, Registration, SkipPlugin

from .config import DevmapperConfig, DevmapperConfigError, parse_size
from .device_info import MAX_DEVICE_ID, DeviceInfo, DeviceState
from .dmsetup import Dmsetup, DmsetupError

if TYPE_CHECKING:
    from .snapshotter import DevmapperSnapshotter

SKIP_NO_KERNEL = "device-mapper is not available in this kernel"
SKIP_NOT_CONFIGURED = "devmapper not configured"


def device_mapper_available(proc_misc: str = "/proc/misc", sys_misc: str = "/sys/class/misc") -> bool:
    """Whether the running kernel has device-mapper (its misc device is registered)."""
    if os.path.exists(os.path.join(sys_misc, "device-mapper")):
        return True
    try:
        with open(proc_misc) as f:
            return any(line.split()[-1:] == ["device-mapper"] for line in f)
    except OSError:
        return False


async def init(ctx: InitContext) -> DevmapperSnapshotter:
    """Plugin init (see the module doc for the order of checks)."""
    if not device_mapper_available():
        raise SkipPlugin(SKIP_NO_KERNEL)
    config: DevmapperConfig = dataclasses.replace(ctx.config or DevmapperConfig())
    if not config.pool_name:
        raise SkipPlugin(SKIP_NOT_CONFIGURED)
    if not config.root_path:
        config.root_path = str(ctx.root)
    ctx.exports["root"] = config.root_path
    config.validate()
    if shutil.which("dmsetup") is None:
        raise DevmapperConfigError("dmsetup is not installed (apt-get install dmsetup)")
    from .snapshotter import DevmapperSnapshotter
    return await DevmapperSnapshotter.open(config)


PLUGIN = Registration(SNAPSHOTTER, "devmapper", init, config=DevmapperConfig)

__all__ = ["MAX_DEVICE_ID", "PLUGIN", "SKIP_NOT_CONFIGURED", "SKIP_NO_KERNEL", "DeviceInfo",
           "DeviceState", "DevmapperConfig", "DevmapperConfigError", "Dmsetup", "DmsetupError",
           "device_mapper_available", "init", "parse_size"]
