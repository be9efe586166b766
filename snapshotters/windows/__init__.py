"""The Windows snapshotter, plugin ``io.containerd.snapshotter.v1.windows``, and the Windows
container layer format.

On Windows, containerd's snapshotter (``plugins/snapshots/windows``) keeps
layers on NTFS and drives them through the Host Compute Service (hcsshim:
``ConvertToBaseLayer``, sandbox VHDX scratch layers, ``ImportLayer``). None of
that exists on Linux, so here the plugin is registered (Introspection lists it)
and its init raises :class:`~aiocontainerd.plugin.SkipPlugin` with
"windows snapshotter is unsupported on this platform".

What is platform-neutral lives here and is tested on Linux:

- :mod:`.layer` — the layer tar format (``Files/``, ``Hives/``, ``UtilityVM/``,
  Windows metadata in PAX records, whiteouts, alternate data streams, hard
  links) and applying/exporting a layer to/from a folder;
- :mod:`.mounts` — ``windows-layer`` mounts with ``parentLayerPaths`` and the
  rules containerd's windows differ uses to turn mounts into layer stacks.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from aiocontainerd.plugin import SNAPSHOTTER, InitContext, Registration, SkipPlugin

SKIP_UNSUPPORTED = "windows snapshotter is unsupported on this platform"


async def init(ctx: InitContext) -> NoReturn:
    """Plugin init: skipped everywhere but Windows (and unimplemented there, see the module doc)."""
    if sys.platform != "win32":
        raise SkipPlugin(SKIP_UNSUPPORTED)
    raise SkipPlugin("windows snapshotter needs the Host Compute Service, which aiocontainerd does not drive")


PLUGIN = Registration(SNAPSHOTTER, "windows", init)

__all__ = ["PLUGIN", "SKIP_UNSUPPORTED", "init"]
