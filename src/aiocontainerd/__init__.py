"""aiocontainerd: containerd re-made in Python on one asyncio event loop.

Public entry points: :class:`Daemon` (run the daemon inside your loop),
:class:`Client` (talk to a running one), :class:`Config`.
"""

from .client import Client
from .config import Config
from .daemon import Daemon

__all__ = ["Client", "Config", "Daemon"]
