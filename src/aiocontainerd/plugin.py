"""Plugins: registration, dependency-ordered initialisation, and their reported state.

Every part of the daemon is a plugin named as containerd names it: a *type*
(``io.containerd.grpc.v1``) and an *ID* (``namespaces``), together
``io.containerd.grpc.v1.namespaces``. A :class:`Registration` declares the
types it requires (``"*"``: every other plugin), its config dataclass, and an
async ``init(ctx)`` returning the plugin's instance.

Lifecycle (``PluginSet.init_all``):

1. Registrations are ordered so each comes after every plugin of each type it
   requires (a cycle is a :class:`PluginError`).
2. Disabled IDs (``disabled_plugins``) are left out.
3. Each ``init`` gets an :class:`InitContext`: its config, its own root and
   state folders (``<root>/<type>.<id>``), and ``get``/``get_all`` for the
   instances of the plugins it requires.
4. A failing ``init`` is recorded as that plugin's ``error`` (shown by
   Introspection) and the daemon goes on, unless the ID is in
   ``required_plugins``: then :class:`PluginError` stops start-up. Raising
   :class:`SkipPlugin` marks the plugin skipped (e.g. unsupported platform).
5. ``close_all`` closes instances (``async close()``) in reverse order.

Registrations are plain values: the daemon holds the only live set, so two
daemons in one process never share plugin state.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FailedPrecondition, NotFound

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger(__name__)

# Plugin types, as containerd names them.
METADATA = "io.containerd.metadata.v1"
EVENT = "io.containerd.event.v1"
TTRPC = "io.containerd.ttrpc.v1"
SERVICE = "io.containerd.service.v1"
GRPC = "io.containerd.grpc.v1"
INTERNAL = "io.containerd.internal.v1"
CONTENT = "io.containerd.content.v1"
SNAPSHOTTER = "io.containerd.snapshotter.v1"
RUNTIME = "io.containerd.runtime.v2"


class PluginError(Exception):
    """Start-up cannot go on: a required plugin failed, or the dependencies form a cycle."""


class SkipPlugin(Exception):
    """Raised by ``init`` when the plugin does not apply here (e.g. wrong platform)."""


@dataclasses.dataclass(frozen=True)
class Registration:
    """A plugin declaration. ``init(ctx)`` returns the instance or raises."""

    type: str
    id: str
    init: Callable[[InitContext], Awaitable[Any]]
    requires: tuple[str, ...] = ()
    config: type | None = None
    capabilities: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        """``<type>.<id>``, the plugin's full name (config section, required_plugins)."""
        return f"{self.type}.{self.id}"


@dataclasses.dataclass
class Plugin:
    """A registration's outcome: its instance, or the error its ``init`` raised."""

    registration: Registration
    instance: Any = None
    error: BaseException | None = None
    exports: dict[str, str] = dataclasses.field(default_factory=dict)
    platforms: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and self.instance is not None

    @property
    def skipped(self) -> bool:
        return isinstance(self.error, SkipPlugin)


@dataclasses.dataclass
class InitContext:
    """What a plugin's ``init`` may use. Folders are not created until the plugin asks."""

    registration: Registration
    config: Any
    root: Path
    state: Path
    properties: dict[str, str]
    plugins: PluginSet
    exports: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: Metrics | None = None  # the daemon's /v1/metrics registry, when there is one

    def get(self, type_: str, id_: str | None = None) -> Any:
        """The instance of the required plugin ``type_`` (and ``id_``).

        Without ``id_`` the type must have exactly one initialised plugin.
        Raises :class:`FailedPrecondition` when it is not initialised.
        """
        if type_ not in self.registration.requires and "*" not in self.registration.requires:
            raise FailedPrecondition(f"{self.registration.uri} does not declare it requires {type_}")
        return self.plugins.instance(type_, id_)

    def get_all(self, type_: str) -> dict[str, Any]:
        """Instances of every initialised plugin of ``type_``, by ID."""
        return {p.registration.id: p.instance for p in self.plugins.of_type(type_) if p.ok}


def _host_platform() -> tuple[str, str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return (platform.system().lower(), arch, "v7" if machine == "armv7l" else "")


def order(registrations: Iterable[Registration]) -> list[Registration]:
    """Registrations in initialisation order: after every plugin of each required type."""
    regs = list(registrations)
    by_type: dict[str, list[Registration]] = {}
    for r in regs:
        by_type.setdefault(r.type, []).append(r)
    done: list[Registration] = []
    seen: set[str] = set()
    visiting: set[str] = set()

    def visit(r: Registration) -> None:
        if r.uri in seen:
            return
        if r.uri in visiting:
            raise PluginError(f"plugin dependency cycle through {r.uri}")
        visiting.add(r.uri)
        for t in r.requires:
            deps = [d for d in regs if d.type != r.type] if t == "*" else by_type.get(t, [])
            for dep in deps:
                if t == "*" and "*" in dep.requires:
                    continue
                visit(dep)
        visiting.discard(r.uri)
        seen.add(r.uri)
        done.append(r)

    for r in regs:
        visit(r)
    return done


class PluginSet:
    """The daemon's live plugins, in the order they were initialised."""

    def __init__(self) -> None:
        self.plugins: list[Plugin] = []

    def __iter__(self) -> Iterator[Plugin]:
        return iter(self.plugins)

    def of_type(self, type_: str) -> list[Plugin]:
        return [p for p in self.plugins if p.registration.type == type_]

    def get(self, uri: str) -> Plugin:
        for p in self.plugins:
            if p.registration.uri == uri:
                return p
        raise NotFound(f"plugin {uri} not found")

    def instance(self, type_: str, id_: str | None = None) -> Any:
        """The instance of plugin ``type_``/``id_``; raises FailedPrecondition if not initialised."""
        found = [p for p in self.of_type(type_) if id_ is None or p.registration.id == id_]
        if not found:
            raise FailedPrecondition(f"no plugin {type_}{'.' + id_ if id_ else ''} loaded")
        ok = [p for p in found if p.ok]
        if not ok:
            raise FailedPrecondition(f"plugin {found[0].registration.uri} failed to initialise: "
                                     f"{found[0].error}")
        if len(ok) > 1:
            raise FailedPrecondition(f"more than one plugin of type {type_}")
        return ok[0].instance

    async def init_all(
        self,
        registrations: Sequence[Registration],
        *,
        configs: Callable[[Registration], Any],
        root: Path,
        state: Path,
        properties: dict[str, str],
        disabled: Iterable[str] = (),
        required: Iterable[str] = (),
        metrics: Metrics | None = None,
    ) -> None:
        """Initialise ``registrations`` in dependency order (see the module doc).

        Raises :class:`PluginError` when a plugin in ``required`` fails or is disabled.
        """
        disabled, required = set(disabled), set(required)
        missing = required & disabled
        if missing:
            raise PluginError(f"required plugins are disabled: {sorted(missing)}")
        for reg in order(registrations):
            if reg.uri in disabled:
                log.info("plugin disabled", extra={"fields": {"id": reg.uri}})
                continue
            ctx = InitContext(
                registration=reg,
                config=configs(reg),
                root=root / reg.uri,
                state=state / reg.uri,
                properties=properties,
                plugins=self,
                metrics=metrics,
            )
            plugin = Plugin(reg, platforms=[_host_platform()])
            self.plugins.append(plugin)
            try:
                plugin.instance = await reg.init(ctx)
                plugin.exports = ctx.exports
            except SkipPlugin as e:
                plugin.error = e
                log.info("skip loading plugin", extra={"fields": {"id": reg.uri, "reason": str(e)}})
            except Exception as e:
                plugin.error = e
                log.warning("failed to load plugin",
                            extra={"fields": {"id": reg.uri, "error": str(e)}})
            if reg.uri in required and not plugin.ok:
                raise PluginError(f"required plugin {reg.uri} failed to initialise: {plugin.error}")
        loaded = {p.registration.uri for p in self.plugins}
        absent = required - loaded
        if absent:
            raise PluginError(f"required plugins not registered: {sorted(absent)}")

    async def close_all(self) -> None:
        """Close every initialised instance that has ``close()``, in reverse order."""
        for p in reversed(self.plugins):
            close = getattr(p.instance, "close", None)
            if p.ok and close is not None:
                try:
                    await close()
                except Exception:
                    log.exception("error closing plugin",
                                  extra={"fields": {"id": p.registration.uri}})
