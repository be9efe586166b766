"""The exchange plugin, ``io.containerd.event.v1.exchange``: the daemon's one :class:`Exchange`.

Other plugins list ``plugin.EVENT`` in ``requires`` and take it with
``ctx.get(EVENT)``. Its ``close()`` (at daemon shutdown) ends every subscription.
"""

from __future__ import annotations

from ..plugin import EVENT, InitContext, Registration
from .exchange import Exchange


async def _init(ctx: InitContext) -> Exchange:
    return Exchange()


PLUGIN = Registration(EVENT, "exchange", _init)
