"""Remotes: the registry client (containerd's ``core/remotes`` and ``remotes/docker``).

Pieces, each one job:

- :mod:`.reference` — parse and normalise image references (``busybox`` →
  ``docker.io/library/busybox:latest``).
- :mod:`.mediatypes` — OCI / Docker media types; schema 1 refused.
- :mod:`.platforms` — platform parse/format, host default, matching and order.
- :mod:`.descriptor` — :class:`Descriptor`.
- :mod:`.hosts` — ``hosts.toml`` (mirrors, TLS, headers, capabilities) and defaults.
- :mod:`.auth` — challenges, credentials (callback, mapping, docker ``config.json``), tokens.
- :mod:`.resolver` — :class:`Resolver`: reference → descriptor; fetchers and pushers.
- :mod:`.fetcher` — :class:`Fetcher`: bytes of a descriptor, resumable with Range.
- :mod:`.pusher` — :class:`Pusher`: blobs (mount, monolithic, chunked) and manifests.
- :mod:`.fetch` — :func:`fetch_blob`: one blob into a content writer, verified.
- :mod:`.limits` — :class:`Limits` on manifests; children and tree walk with cycle checks.

Errors are :mod:`aiocontainerd.errors` classes: InvalidArgument, NotFound,
FailedPrecondition (access denied, verification failures), Unavailable
(network, 5xx, retries exhausted), Unimplemented (schema 1).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import Challenge, DockerConfig, StaticCredentials, parse_challenges
    from .descriptor import Descriptor
    from .fetch import fetch_blob
    from .fetcher import Fetcher
    from .hosts import Hosts, RegistryHost, static_hosts
    from .limits import Limits, children, walk
    from .platforms import Platform
    from .pusher import Pusher, PushResult
    from .reference import Reference
    from .resolver import Resolver

#: name -> submodule; imported on first use so ``from aiocontainerd.remotes import
#: mediatypes`` (the daemon's start) does not import aiohttp.
_WHERE = {
    "Challenge": "auth", "DockerConfig": "auth", "StaticCredentials": "auth",
    "parse_challenges": "auth", "Descriptor": "descriptor", "fetch_blob": "fetch",
    "Fetcher": "fetcher", "Hosts": "hosts", "RegistryHost": "hosts", "static_hosts": "hosts",
    "Limits": "limits", "children": "limits", "walk": "limits", "Platform": "platforms",
    "Pusher": "pusher", "PushResult": "pusher", "Reference": "reference", "Resolver": "resolver",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Challenge", "Descriptor", "DockerConfig", "Fetcher", "Hosts", "Limits", "Platform", "PushResult",
    "Pusher", "Reference", "RegistryHost", "Resolver", "StaticCredentials", "children", "fetch_blob",
    "parse_challenges", "static_hosts", "walk",
]
