"""Daemon configuration: TOML in containerd's version-3 shape.

Shape (every key optional; ``aiocontainerd config default`` prints them all)::

    version = 3
    root = "/var/lib/aiocontainerd"          # persistent data, one folder per plugin
    state = "/run/aiocontainerd"             # runtime state (sockets, bundles)
    disabled_plugins = []                    # plugin IDs not to load
    required_plugins = []                    # plugin IDs whose init failure is fatal
    imports = []                             # more TOML files (globs, relative to this one)
    [grpc]    address, uid, gid
    [ttrpc]   address, uid, gid
    [debug]   level, format
    [metrics] address
    [plugins."io.containerd.<type>.<id>"]    # each plugin's own section

Imported files are merged over the importing one in order, as containerd's
``imports`` are: tables merged key by key, arrays appended (without repeats),
other values replaced; imports of imports are followed, and a file already
loaded (the main one matched by its own glob, say) is skipped. Every key is
checked against the dataclasses below and the plugins' declared config types:
an unknown key, a wrong type or an unknown plugin raises :class:`ConfigError`
naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

VERSION = 3
DEFAULT_ROOT = "/var/lib/aiocontainerd"
DEFAULT_STATE = "/run/aiocontainerd"
DEFAULT_ADDRESS = "/run/aiocontainerd/aiocontainerd.sock"


class ConfigError(ValueError):
    """A configuration file that cannot be read, parsed or validated."""


MAX_ID = (1 << 32) - 2


def _check_ids(section: str, uid: int, gid: int) -> None:
    for name, value in (("uid", uid), ("gid", gid)):
        if not 0 <= value <= MAX_ID:
            raise ValueError(f"key '{section}.{name}': {value} is not a valid id (0 to {MAX_ID})")


@dataclasses.dataclass
class GRPCConfig:
    """``[grpc]``: the unix socket serving the containerd API and CRI."""

    address: str = DEFAULT_ADDRESS
    uid: int = 0
    gid: int = 0

    def __post_init__(self) -> None:
        if not self.address:
            raise ValueError("key 'grpc.address': must not be empty")
        _check_ids("grpc", self.uid, self.gid)


@dataclasses.dataclass
class TTRPCConfig:
    """``[ttrpc]``: the socket shims publish events to; empty means ``<grpc.address>.ttrpc``."""

    address: str = ""
    uid: int = 0
    gid: int = 0

    def __post_init__(self) -> None:
        _check_ids("ttrpc", self.uid, self.gid)


LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")


@dataclasses.dataclass
class DebugConfig:
    """``[debug]``: log ``level`` (trace, debug, info, warn, error, fatal) and ``format`` (text, json)."""

    level: str = "info"
    format: str = "text"

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise ValueError(f"key 'debug.level': unknown level {self.level!r} "
                             f"(one of {', '.join(LOG_LEVELS)})")
        if self.format not in ("text", "json"):
            raise ValueError(f"key 'debug.format': must be 'text' or 'json', not {self.format!r}")


@dataclasses.dataclass
class MetricsConfig:
    """``[metrics]``: ``host:port`` serving Prometheus ``/v1/metrics``; empty disables it."""

    address: str = ""

    def __post_init__(self) -> None:
        if self.address:
            _, sep, port = self.address.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"key 'metrics.address': {self.address!r} is not host:port "
                                 "with a port from 0 to 65535")


@dataclasses.dataclass
class Config:
    """The whole daemon configuration; ``plugins`` maps plugin IDs to their config objects."""

    version: int = VERSION
    root: str = DEFAULT_ROOT
    state: str = DEFAULT_STATE
    disabled_plugins: list[str] = dataclasses.field(default_factory=list)
    required_plugins: list[str] = dataclasses.field(default_factory=list)
    imports: list[str] = dataclasses.field(default_factory=list)
    grpc: GRPCConfig = dataclasses.field(default_factory=GRPCConfig)
    ttrpc: TTRPCConfig = dataclasses.field(default_factory=TTRPCConfig)
    debug: DebugConfig = dataclasses.field(default_factory=DebugConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    plugins: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ttrpc_address(self) -> str:
        """The ttrpc socket path: ``[ttrpc] address`` or ``<grpc.address>.ttrpc``."""
        return self.ttrpc.address or self.grpc.address + ".ttrpc"

    def plugin_config(self, plugin_id: str, config_type: type | None) -> Any:
        """The config object of plugin ``plugin_id``: its section, or the type's defaults."""
        if plugin_id in self.plugins:
            return self.plugins[plugin_id]
        return config_type() if config_type is not None else None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against type ``tp``, building dataclasses; returns the converted value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key {key!r}: expected a table, got {type(value).__name__}")
        return build(tp, value, where, key)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _check(value, arm, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: key {key!r}: expected {tp}, got {type(value).__name__}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: key {key!r}: expected an array, got {type(value).__name__}")
        return [_check(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key {key!r}: expected a table, got {type(value).__name__}")
        return {k: _check(v, item, f"{key}.{k}", where) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is type(None) and value is None:
        return None
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: key {key!r}: expected {_type_name(tp)}, "
                          f"got {type(value).__name__} {value!r}")
    return value


def build(cls: type, data: Mapping[str, Any], where: str = "<config>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a TOML table, rejecting unknown keys and wrong types.

    ``where`` names the file in errors; ``prefix`` is the dotted path of the table.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {dotted!r}")
        kwargs[key] = _check(value, hints[key], dotted, where)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass's own check (__post_init__) names its key
        raise ConfigError(f"{where}: {'in ' + prefix + ': ' if prefix else ''}{e}") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = value
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None


def _validate_file(data: dict[str, Any], where: str, plugin_types: Mapping[str, type | None]) -> None:
    """Validate one file's tables (plugins against their declared config types)."""
    version = data.get("version", VERSION)
    if isinstance(version, str) and version.isdigit():
        raise ConfigError(f"{where}: key 'version': must be the number {version}, not the string "
                          f"{version!r}")
    if version != VERSION:
        raise ConfigError(f"{where}: key 'version': unsupported config version {version!r} "
                          f"(this daemon reads version {VERSION})")
    build(Config, {k: v for k, v in data.items() if k != "plugins"}, where)
    plugins = _check(data.get("plugins", {}), dict[str, Any], "plugins", where)
    for plugin_id, section in plugins.items():
        if plugin_id not in plugin_types:
            raise ConfigError(f"{where}: unknown plugin {plugin_id!r} in key 'plugins'")
        config_type = plugin_types[plugin_id]
        if config_type is None:
            raise ConfigError(f"{where}: plugin {plugin_id!r} takes no configuration")
        _check(section, config_type, f"plugins.{plugin_id!r}", where)


def load(path: str | os.PathLike[str] | None,
         plugin_types: Mapping[str, type | None] | None = None) -> Config:
    """Load the config at ``path`` (``None``: all defaults) with its ``imports``.

    ``plugin_types`` maps plugin IDs to their config dataclass (``None``: no config);
    when given, plugin sections are validated and built into those types.
    Raises :class:`ConfigError`.
    """
    plugin_types = plugin_types or {}
    merged: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        loaded: set[Path] = set()

        def visit(file: Path) -> None:
            nonlocal merged
            real = file.resolve()
            if real in loaded:
                return
            loaded.add(real)
            data = _read(file)
            _validate_file(data, str(file), plugin_types)
            merged = _merge(merged, {k: v for k, v in data.items() if k != "imports"})
            for pattern in data.get("imports", []):
                full = pattern if os.path.isabs(pattern) else str(file.parent / pattern)
                matches = sorted(glob.glob(full))
                if not matches and not glob.has_magic(full):
                    raise ConfigError(f"{file}: key 'imports': {full} not found")
                for match in matches:
                    visit(Path(match))

        visit(path)
    plugins = merged.pop("plugins", {})
    config = build(Config, merged, str(path or "<defaults>"))
    for plugin_id, section in plugins.items():
        config.plugins[plugin_id] = _check(section, plugin_types[plugin_id],
                                           f"plugins.{plugin_id!r}", str(path))
    known = set(plugin_types)
    if known:
        both = set(config.required_plugins) & set(config.disabled_plugins)
        if both:
            raise ConfigError(f"{path}: key 'required_plugins': {sorted(both)} are also disabled")
        unknown = set(config.required_plugins) - known
        if unknown:
            raise ConfigError(f"{path}: key 'required_plugins': no such plugins {sorted(unknown)}")
    return config


def dump(config: Config, plugin_types: Mapping[str, type | None]) -> str:
    """TOML text of ``config`` with every plugin's section filled in (``config default``)."""
    data = dataclasses.asdict(config)
    data["plugins"] = {}
    for plugin_id in sorted(plugin_types):
        config_type = plugin_types[plugin_id]
        if config_type is not None:
            section = config.plugin_config(plugin_id, config_type)
            data["plugins"][plugin_id] = dataclasses.asdict(section)
    return tomli_w.dumps(data)
