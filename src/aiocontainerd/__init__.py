"""aiocontainerd: containerd re-made in Python on one asyncio event loop.

Public entry points: :class:`Daemon` (run the daemon inside your loop),
:class:`Client` (talk to a running one), :class:`Config`. They are imported on
first use, so the daemon does not pay for the client's imports at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client
    from .config import Config
    from .daemon import Daemon

__all__ = ["Client", "Config", "Daemon"]
_WHERE = {"Client": ".client", "Config": ".config", "Daemon": ".daemon"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
