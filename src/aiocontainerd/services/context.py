"""Per-request context taken from gRPC metadata (containerd's request headers).

``containerd-namespace`` selects the namespace (default ``default``);
``containerd-lease`` puts created objects under a lease (used from the
content/images issue on). Handlers read them with :func:`namespace` and
:func:`lease`; the server sets them for the duration of each call.
"""

from __future__ import annotations

import contextvars
import dataclasses

from .. import identifiers
from ..errors import FailedPrecondition

NAMESPACE_HEADER = "containerd-namespace"
LEASE_HEADER = "containerd-lease"
DEFAULT_NAMESPACE = "default"


@dataclasses.dataclass(frozen=True)
class RequestContext:
    namespace: str | None = None
    lease: str | None = None


current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "aiocontainerd_request", default=None)


def namespace() -> str:
    """The request's namespace (``default`` without the header), validated.

    Raises FailedPrecondition for an empty header, InvalidArgument for an invalid name.
    """
    ctx = current.get()
    name = ctx.namespace if ctx is not None else None
    if name is None:
        return DEFAULT_NAMESPACE
    if name == "":
        raise FailedPrecondition("namespace is required")
    return identifiers.validate(name)


def lease() -> str | None:
    """The request's lease ID, or None."""
    ctx = current.get()
    return ctx.lease if ctx is not None else None
