"""``containerd.services.introspection.v1.Introspection`` (``io.containerd.grpc.v1.introspection``).

- ``Plugins``: every loaded plugin with its requirements, platforms, exports,
  capabilities and init error (``"<reason>: skip plugin"`` for skipped ones,
  which ``ctr plugins ls`` shows as ``skip``). Filters: ``type``, ``id``,
  ``capabilities``, ``exports.<key>``, ``platforms``.
- ``Server``: the daemon's UUID (made once, kept in ``<plugin root>/uuid``
  across restarts), its pid and pid-namespace inode.
- ``PluginInfo``: one plugin by type and ID.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from grpclib.const import Status

from .. import filters
from ..api.containerd import types as ctypes
from ..api.containerd.services.introspection import v1 as api
from ..api.google import protobuf as pb
from ..api.google import rpc
from ..errors import InvalidArgument, NotFound, Unimplemented
from ..plugin import GRPC, InitContext, Plugin, PluginSet, Registration
from .convert import status


def _platforms(p: Plugin) -> list[ctypes.Platform]:
    return [ctypes.Platform(os=o, architecture=a, variant=v) for o, a, v in p.platforms]


def _init_err(p: Plugin) -> rpc.Status | None:
    if p.error is None:
        return None if p.instance is not None else status(Status.UNKNOWN.value, "not initialised")
    if p.skipped:
        return status(Status.UNKNOWN.value, f"{p.error}: skip plugin")
    code = getattr(p.error, "code", Status.UNKNOWN)
    return status(code.value, str(p.error) or type(p.error).__name__)


def _wire(p: Plugin) -> api.Plugin:
    r = p.registration
    return api.Plugin(
        type=r.type, id=r.id, requires=list(r.requires), platforms=_platforms(p),
        exports=dict(p.exports), capabilities=list(r.capabilities), init_err=_init_err(p))


def _field(p: Plugin, path: Sequence[str]) -> str | None:
    head = path[0] if path else ""
    if head in ("type", "id") and len(path) == 1:
        return getattr(p.registration, head)
    if head == "capabilities":
        caps = p.registration.capabilities
        return ",".join(caps) if caps else None
    if head == "exports":
        return filters.map_field(path, p.exports)
    if head == "platforms":
        return ",".join("/".join(x for x in plat if x) for plat in p.platforms) or None
    return None


def load_uuid(root: Path) -> str:
    """The UUID kept in ``root/uuid``, created (atomically) on first use."""
    path = root / "uuid"
    try:
        text = path.read_text().strip()
        uuid.UUID(text)
        return text
    except (FileNotFoundError, ValueError):
        pass
    root.mkdir(parents=True, exist_ok=True, mode=0o711)
    value = str(uuid.uuid4())
    tmp = root / "uuid.tmp"
    with open(tmp, "w") as f:
        f.write(value)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return value


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class IntrospectionService(api.IntrospectionBase):
    def __init__(self, plugins: PluginSet, server_uuid: str) -> None:
        self._plugins = plugins
        self._uuid = server_uuid

    async def plugins(self, message: api.PluginsRequest) -> api.PluginsResponse:
        match = filters.parse(message.filters)
        return api.PluginsResponse(plugins=[
            _wire(p) for p in self._plugins if match.match(lambda path, p=p: _field(p, path))])

    async def server(self, message: pb.Empty) -> api.ServerResponse:
        return api.ServerResponse(uuid=self._uuid, pid=os.getpid(), pidns=_pidns())

    async def plugin_info(self, message: api.PluginInfoRequest) -> api.PluginInfoResponse:
        if not message.type:
            raise InvalidArgument("plugin type must be set")
        found = [p for p in self._plugins
                 if p.registration.type == message.type
                 and (not message.id or p.registration.id == message.id)]
        if not found:
            raise NotFound(f"plugin {message.type}.{message.id}: not found")
        if len(found) > 1:
            raise InvalidArgument(f"multiple plugins of type {message.type}: give an id")
        if message.options is not None:
            raise Unimplemented(f"plugin {found[0].registration.uri} takes no info options")
        return api.PluginInfoResponse(plugin=_wire(found[0]))


async def _init(ctx: InitContext) -> IntrospectionService:
    return IntrospectionService(ctx.plugins, load_uuid(ctx.root))


PLUGIN = Registration(GRPC, "introspection", _init)
