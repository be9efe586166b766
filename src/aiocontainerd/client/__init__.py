"""``aiocontainerd.Client``: an asyncio client of the containerd API over its unix socket.

Works against aiocontainerd and against containerd itself::

    async with Client("/run/aiocontainerd/aiocontainerd.sock") as client:
        print(await client.version())
        await client.namespaces.create("builds", {"team": "ci"})

Calls raise the core errors of :mod:`aiocontainerd.errors` (NotFound,
AlreadyExists, InvalidArgument, ...) mapped from the gRPC status, so code
catches the same classes whether it embeds the daemon or talks to one.
The namespace of namespaced calls is the client's (``namespace=``), sent as
the ``containerd-namespace`` header; :meth:`Client.with_namespace` derives a
client for another one on the same connection.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from grpclib.client import Channel

from ..api.containerd.services.introspection import v1 as introspection_api
from ..api.containerd.services.namespaces import v1 as namespaces_api
from ..api.containerd.services.version import v1 as version_api
from ..config import DEFAULT_ADDRESS
from ..metadata.namespaces import Namespace
from ..services import h2speed
from ..services.context import DEFAULT_NAMESPACE, NAMESPACE_HEADER
from .containers import Container, ContainerInfo, Containers
from .events import Envelope, Events
from .images import ClientStream, Images, Progress, _call
from .tasks import ExitStatus, Process, ProcessStatus, Task, Tasks

h2speed.apply()

__all__ = ["Client", "ClientStream", "Container", "ContainerInfo", "Containers", "Envelope", "Events",
           "ExitStatus", "Images", "Namespaces", "PluginInfo", "Process", "ProcessStatus", "Progress",
           "ServerInfo", "Task", "Tasks", "Version"]


@dataclasses.dataclass(frozen=True)
class Version:
    """The server's ``version`` and ``revision`` strings."""

    version: str
    revision: str


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """Introspection.Server: the daemon's persistent UUID, pid and pid-namespace inode."""

    uuid: str
    pid: int
    pidns: int


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """One plugin as Introspection reports it; ``error`` is its init error message or None."""

    type: str
    id: str
    requires: tuple[str, ...]
    platforms: tuple[str, ...]
    capabilities: tuple[str, ...]
    exports: dict[str, str]
    error: str | None

    @property
    def status(self) -> str:
        """``ok``, ``skip`` or ``error``, as ``ctr plugins ls`` shows it."""
        if self.error is None:
            return "ok"
        return "skip" if "skip plugin" in self.error else "error"


class Namespaces:
    """Namespaces service calls (not namespaced themselves)."""

    def __init__(self, stub: namespaces_api.NamespacesStub) -> None:
        self._stub = stub

    async def create(self, name: str, labels: Mapping[str, str] | None = None) -> Namespace:
        """Create a namespace. Raises AlreadyExists, InvalidArgument."""
        r = await _call(self._stub.create(namespaces_api.CreateNamespaceRequest(
            namespace=namespaces_api.Namespace(name=name, labels=dict(labels or {})))))
        return Namespace(r.namespace.name, dict(r.namespace.labels))

    async def get(self, name: str) -> Namespace:
        """Raises NotFound."""
        r = await _call(self._stub.get(namespaces_api.GetNamespaceRequest(name=name)))
        return Namespace(r.namespace.name, dict(r.namespace.labels))

    async def list(self) -> list[Namespace]:
        r = await _call(self._stub.list(namespaces_api.ListNamespacesRequest()))
        return [Namespace(n.name, dict(n.labels)) for n in r.namespaces]

    async def update(self, name: str, labels: Mapping[str, str],
                     paths: Iterable[str] = ()) -> Namespace:
        """Update labels by field paths (``labels``, ``labels.<key>``). Raises NotFound."""
        from ..api.google.protobuf import FieldMask

        r = await _call(self._stub.update(namespaces_api.UpdateNamespaceRequest(
            namespace=namespaces_api.Namespace(name=name, labels=dict(labels)),
            update_mask=FieldMask(paths=list(paths)) if paths else None)))
        return Namespace(r.namespace.name, dict(r.namespace.labels))

    async def set_label(self, name: str, key: str, value: str) -> Namespace:
        """Set one label; an empty ``value`` removes it (as ``ctr namespaces label``)."""
        return await self.update(name, {key: value}, [f"labels.{key}"])

    async def delete(self, name: str) -> None:
        """Delete an empty namespace. Raises NotFound, FailedPrecondition."""
        await _call(self._stub.delete(namespaces_api.DeleteNamespaceRequest(name=name)))


class Client:
    """Connection to a containerd API socket (see the module doc)."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, namespace: str = DEFAULT_NAMESPACE,
                 timeout: float | None = None, _channel: Channel | None = None) -> None:
        self.address = address
        self.namespace = namespace
        self._owns_channel = _channel is None
        self._channel = _channel or Channel(path=address)
        stub_args: dict[str, Any] = {"timeout": timeout,
                                     "metadata": {NAMESPACE_HEADER: namespace}}
        self._version = version_api.VersionStub(self._channel, **stub_args)
        self._introspection = introspection_api.IntrospectionStub(self._channel, **stub_args)
        self.namespaces = Namespaces(namespaces_api.NamespacesStub(self._channel, **stub_args))
        self.images = Images(self._channel, stub_args["metadata"], timeout)
        self.tasks = Tasks(self._channel, stub_args["metadata"], timeout)
        self.containers = Containers(self._channel, stub_args["metadata"], self.images, timeout, self)
        self.events = Events(self._channel, stub_args["metadata"], timeout)

    def with_namespace(self, namespace: str) -> Client:
        """A client for ``namespace`` sharing this one's connection (close the original)."""
        return Client(self.address, namespace=namespace, _channel=self._channel)

    async def version(self) -> Version:
        r = await _call(self._version.version())
        return Version(r.version, r.revision)

    async def server(self) -> ServerInfo:
        r = await _call(self._introspection.server())
        return ServerInfo(r.uuid, r.pid, r.pidns)

    async def plugins(self, filters: Iterable[str] = ()) -> list[PluginInfo]:
        """Introspection.Plugins with containerd filters (e.g. ``type==io.containerd.grpc.v1``)."""
        r = await _call(self._introspection.plugins(
            introspection_api.PluginsRequest(filters=list(filters))))
        return [PluginInfo(
            type=p.type, id=p.id, requires=tuple(p.requires),
            platforms=tuple("/".join(x for x in (q.os, q.architecture, q.variant) if x)
                            for q in p.platforms),
            capabilities=tuple(p.capabilities), exports=dict(p.exports),
            error=p.init_err.message if p.init_err is not None else None,
        ) for p in r.plugins]

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
