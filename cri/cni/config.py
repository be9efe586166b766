"""Network configuration files (SPEC.md section 1) and plugin lookup.

A *network configuration list* (``.conflist``)::

    {"cniVersion": "1.0.0", "name": "mynet", "disableCheck": false,
     "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {...}},
                 {"type": "portmap", "capabilities": {"portMappings": true}}]}

A single *network configuration* (``.conf`` / ``.json``, pre-1.0 style) is one
plugin object with ``name`` and ``cniVersion`` at top level; it is wrapped into a
list of one plugin, as libcni's ``ConfListFromConf`` does.

Directory loading follows containerd (go-cni ``loadFromConfDir``): files ending
``.conf``, ``.conflist`` or ``.json`` in the conf dir, sorted by name; the first
``max_conf_num`` of them become networks (``<= 0`` = all). By default an invalid
file fails the whole load, as in containerd; ``skip_invalid=True`` passes over it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, NotInitialized, PluginNotFound
from .types import SUPPORTED_VERSIONS, version_tuple

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CONF_EXTENSIONS = (".conf", ".conflist", ".json")

#: the loopback network containerd attaches every pod to (go-cni ``WithLoNetwork``)
LOOPBACK_CONFIG = b'{"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}'


@dataclass(frozen=True)
class PluginConf:
    """One plugin configuration object of a list: its ``type``, its declared
    ``capabilities`` (names whose value is true) and the whole object (``conf``)."""

    type: str
    capabilities: frozenset[str]
    conf: Mapping[str, Any]


@dataclass(frozen=True)
class NetworkConfigList:
    """A network: ``name``, the selected ``cni_version``, ``plugins`` in order,
    ``disable_check``, the bytes it was loaded from (``source``, what the result
    cache stores) and the file (``path``, "" when not from a file)."""

    name: str
    cni_version: str
    plugins: tuple[PluginConf, ...]
    disable_check: bool = False
    source: bytes = field(default=b"", repr=False)
    path: str = ""


def _select_version(obj: Mapping[str, Any], where: str) -> str:
    """SPEC section 1 "Version considerations": highest supported of cniVersion + cniVersions."""
    declared = obj.get("cniVersion")
    if not isinstance(declared, str) or not declared:
        raise ConfigError(f"{where}: missing or invalid cniVersion")
    candidates = [declared]
    extra = obj.get("cniVersions")
    if extra is not None:
        if not isinstance(extra, list) or not all(isinstance(v, str) for v in extra):
            raise ConfigError(f"{where}: cniVersions must be a list of strings")
        candidates += extra
    supported = [v for v in candidates if v in SUPPORTED_VERSIONS]
    if not supported:
        raise ConfigError(f"{where}: unsupported CNI version {declared!r} "
                          f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
    return max(supported, key=version_tuple)


def _plugin(obj: Any, where: str) -> PluginConf:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where}: plugin configuration must be an object")
    ptype = obj.get("type")
    if not isinstance(ptype, str) or not ptype or "/" in ptype or "\\" in ptype:
        raise ConfigError(f"{where}: plugin type {ptype!r} is missing or invalid")
    caps = obj.get("capabilities") or {}
    if not isinstance(caps, Mapping):
        raise ConfigError(f"{where}: capabilities must be an object")
    return PluginConf(type=ptype, capabilities=frozenset(k for k, v in caps.items() if v is True),
                      conf=dict(obj))


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: missing network name")
    if not name[0].isalnum() or any(not (c.isalnum() or c in "_.-") for c in name):
        raise ConfigError(f"{where}: invalid network name {name!r}")
    return name


def _decode(data: bytes, where: str) -> Mapping[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: invalid JSON: {e}") from None
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{where}: expected a JSON object")
    return obj


def conf_list_from_bytes(data: bytes, *, path: str = "") -> NetworkConfigList:
    """Parse a ``.conflist`` document. Raises :class:`ConfigError` (bad JSON, no name,
    unsupported version, no ``plugins`` or a plugin without ``type``)."""
    where = path or "network configuration list"
    obj = _decode(data, where)
    name = _check_name(obj.get("name"), where)
    version = _select_version(obj, where)
    plugins = obj.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ConfigError(f"{where}: CNI config list has no networks")
    disable = obj.get("disableCheck", False)
    if isinstance(disable, str):  # libcni accepts "true"/"false" strings too
        disable = disable.lower() == "true"
    return NetworkConfigList(name=name, cni_version=version,
                             plugins=tuple(_plugin(p, where) for p in plugins),
                             disable_check=bool(disable), source=bytes(data), path=path)


def conf_list_from_conf(data: bytes, *, path: str = "") -> NetworkConfigList:
    """Parse a single-plugin ``.conf``/``.json`` document and wrap it into a list
    (``{"cniVersion", "name", "plugins": [<the object>]}``). A document without
    ``type`` (e.g. a conflist misnamed ``.conf``) is a :class:`ConfigError`."""
    where = path or "network configuration"
    obj = _decode(data, where)
    if not obj.get("type"):
        raise ConfigError(f"network type not found in {where}")
    name = _check_name(obj.get("name"), where)
    version = _select_version(obj, where)
    wrapped = {"cniVersion": obj.get("cniVersion"), "name": name, "plugins": [obj]}
    if "cniVersions" in obj:
        wrapped["cniVersions"] = obj["cniVersions"]
    source = json.dumps(wrapped).encode()
    return NetworkConfigList(name=name, cni_version=version, plugins=(_plugin(obj, where),),
                             source=source, path=path)


def conf_files(conf_dir: str) -> list[str]:
    """Paths of the candidate files in ``conf_dir``, sorted by name (missing dir -> [])."""
    try:
        entries = list(os.scandir(conf_dir))
    except FileNotFoundError:
        return []
    return sorted(e.path for e in entries if e.name.endswith(CONF_EXTENSIONS) and e.is_file())


def load_file(path: str) -> NetworkConfigList:
    """One configuration file -> a network list. Raises :class:`ConfigError` or ``OSError``."""
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".conflist"):
        return conf_list_from_bytes(data, path=path)
    return conf_list_from_conf(data, path=path)


def load_conf_dir(conf_dir: str, max_conf_num: int = 1, *,
                  skip_invalid: bool = False) -> list[NetworkConfigList]:
    """The networks of ``conf_dir`` in file-name order (at most ``max_conf_num``; ``<= 0`` all).

    Raises :class:`NotInitialized` ("no network config found in <dir>") when the
    directory has no candidate file (or, with ``skip_invalid``, no valid one),
    :class:`ConfigError` for an invalid file unless ``skip_invalid``.
    """
    files = conf_files(conf_dir)
    if not files:
        raise NotInitialized(f"no network config found in {conf_dir}: cni plugin not initialized")
    networks: list[NetworkConfigList] = []
    for path in files:
        try:
            networks.append(load_file(path))
        except (ConfigError, OSError) as e:
            if not skip_invalid:
                if isinstance(e, ConfigError):
                    raise ConfigError(f"failed to load CNI config file {path}: {e}") from None
                raise ConfigError(f"failed to read CNI config file {path}: {e}") from None
            continue
        if len(networks) == max_conf_num:
            break
    if not networks:
        raise NotInitialized(f"no valid networks found in {conf_dir}: cni plugin not initialized")
    return networks


def dir_signature(conf_dir: str) -> tuple[Any, ...]:
    """A cheap fingerprint of ``conf_dir`` (its mtime and each candidate file's
    name, mtime, size, inode): a change means the configuration must be reloaded."""
    try:
        st = os.stat(conf_dir)
    except FileNotFoundError:
        return ("missing",)
    files = []
    try:
        for entry in os.scandir(conf_dir):
            if entry.name.endswith(CONF_EXTENSIONS):
                try:
                    est = entry.stat()
                except FileNotFoundError:
                    continue
                files.append((entry.name, est.st_mtime_ns, est.st_size, est.st_ino))
    except FileNotFoundError:
        return ("missing",)
    return (st.st_mtime_ns, st.st_ino, tuple(sorted(files)))


def find_plugin(ptype: str, bin_dirs: Sequence[str]) -> str:
    """The path of plugin ``ptype``: the first executable ``<dir>/<type>`` in ``bin_dirs``.

    Raises :class:`PluginNotFound` (``failed to find plugin "x" in path [..]``, libcni's text).
    """
    for d in bin_dirs:
        candidate = os.path.join(d, ptype)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise PluginNotFound(f"failed to find plugin {ptype!r} in path {list(bin_dirs)}")


def plugin_request(network: NetworkConfigList, plugin: PluginConf, *,
                   prev_result: Mapping[str, Any] | None,
                   capability_args: Mapping[str, Any]) -> dict[str, Any]:
    """The stdin object for one plugin execution (SPEC section 3, "Deriving request
    configuration from plugin configuration"): the plugin object with ``name`` and
    ``cniVersion`` of the network, ``prevResult`` when given, ``runtimeConfig`` =
    the capability args whose name the plugin declares in ``capabilities``
    (only when there is at least one), ``capabilities`` removed, ``cni.dev/`` keys dropped."""
    req = {k: v for k, v in plugin.conf.items() if k != "capabilities" and not k.startswith("cni.dev/")}
    req["name"] = network.name
    req["cniVersion"] = network.cni_version
    if prev_result is not None:
        req["prevResult"] = prev_result
    else:
        req.pop("prevResult", None)
    runtime = {k: capability_args[k] for k in sorted(plugin.capabilities) if k in capability_args}
    if runtime:
        req["runtimeConfig"] = runtime
    else:
        req.pop("runtimeConfig", None)
    return req


def loopback_network() -> NetworkConfigList:
    """containerd's ``cni-loopback`` network (0.3.1, one ``loopback`` plugin)."""
    return conf_list_from_bytes(LOOPBACK_CONFIG)


def describe(networks: Iterable[tuple[NetworkConfigList, str]]) -> list[dict[str, Any]]:
    """``[(network, ifname)]`` -> the ``Networks`` part of go-cni's ``GetConfig``
    (``{"Config": {"Name", "CNIVersion", "Plugins": [{"Network": {...}, "Source"}], "Source"}, "IFName"}``),
    used by the CRI for ``Status`` verbose info ``cniconfig``."""
    out = []
    for net, ifname in networks:
        out.append({
            "Config": {
                "Name": net.name, "CNIVersion": net.cni_version,
                "Plugins": [{"Network": {"type": p.type, **({"capabilities": {c: True for c in sorted(
                    p.capabilities)}} if p.capabilities else {})}, "Source": json.dumps(p.conf)}
                    for p in net.plugins],
                "Source": net.source.decode(errors="replace"),
            },
            "IFName": ifname,
        })
    return out
