"""The CNI runtime side for pod sandboxes, as containerd's CRI uses go-cni/libcni.

Networks: containerd's ``cni-loopback`` (ifname ``lo``) first, then the networks
of the conf dir (``eth0``, ``eth1``, ... in file-name order, at most
``max_conf_num``). The object is *ready* when at least one conf dir network is
loaded (containerd's minimum of 2 networks, counting loopback).

Per attachment (SPEC.md section 3): ADD runs the list's plugins in order,
chaining each result into the next one's ``prevResult``; DEL runs them in
reverse with the cached final ADD result as ``prevResult`` (0.4.0 and later);
CHECK runs them in order with it (0.4.0 and later, unless ``disableCheck``).
The conf dir is re-read whenever its fingerprint (mtimes, sizes, names)
changes, checked before each operation and by :meth:`CNI.status`.

Example::

    cni = CNI(conf_dir="/etc/cni/net.d", bin_dirs=["/opt/cni/bin", "/usr/lib/cni"])
    ready, reason = cni.status()
    res = await cni.setup(sandbox_id, netns_path,
                          args=pod_args(sandbox_id, namespace="default", name="web", uid=uid),
                          capability_args=capability_args(port_mappings=[...]))
    ip, additional = res.pod_ips()
    ...
    await cni.teardown(sandbox_id, netns_path)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cache import DEFAULT_CACHE_DIR, CachedAttachment, ResultCache
from .config import (
    DEFAULT_BIN_DIRS,
    DEFAULT_CONF_DIR,
    NetworkConfigList,
    conf_list_from_bytes,
    describe,
    dir_signature,
    find_plugin,
    load_conf_dir,
    loopback_network,
    plugin_request,
)
from .errors import NOT_INITIALIZED_MESSAGE, CNIError, ConfigError, NotInitialized, PluginNotFound
from .invoke import DEFAULT_TIMEOUT, RuntimeConf, exec_plugin, version_probe
from .types import (
    DNS,
    IPConfig,
    Result,
    Route,
    convert_result,
    parse_result,
    select_pod_ips,
    version_at_least,
)

log = logging.getLogger(__name__)

DEFAULT_IF_PREFIX = "eth"
#: the capability key under which containerd passes the pod's annotations
POD_ANNOTATIONS_CAPABILITY = "io.kubernetes.cri.pod-annotations"


@dataclass(frozen=True)
class Network:
    """A loaded network and the interface name it gets in the pod (``lo``, ``eth0``...)."""

    config: NetworkConfigList
    ifname: str

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class InterfaceConfig:
    """What the results say about one interface name (go-cni's ``Config``)."""

    ip_configs: list[IPConfig] = field(default_factory=list)
    mac: str = ""
    sandbox: str = ""
    pci_id: str = ""
    socket_path: str = ""


@dataclass
class SetupResult:
    """The outcome of :meth:`CNI.setup` across all networks (go-cni's ``Result``).

    ``interfaces`` maps interface names (host and pod side) to their config; the
    default interface (``eth0``) is always present. ``dns`` has one entry per
    network (possibly empty), ``routes`` all routes, ``results`` the per-network
    ``(network name, ifname, Result)`` in network order.
    """

    interfaces: dict[str, InterfaceConfig]
    dns: list[DNS]
    routes: list[Route]
    results: list[tuple[str, str, Result]]
    default_ifname: str = "eth0"

    def pod_ips(self, preference: str = "ipv4") -> tuple[str, list[str]]:
        """``(pod IP, additional IPs)`` of the default interface, picked as containerd
        does (:func:`aiocontainerd.cri.cni.types.select_pod_ips`); ``("", [])`` if none."""
        conf = self.interfaces.get(self.default_ifname)
        return select_pod_ips(conf.ip_configs if conf else [], preference)


def pod_args(sandbox_id: str, *, namespace: str, name: str, uid: str) -> list[tuple[str, str]]:
    """containerd's CNI_ARGS for a pod: ``IgnoreUnknown=1``, ``K8S_POD_NAMESPACE``,
    ``K8S_POD_NAME``, ``K8S_POD_INFRA_CONTAINER_ID`` (= the sandbox id), ``K8S_POD_UID``."""
    return [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name),
            ("K8S_POD_INFRA_CONTAINER_ID", sandbox_id), ("K8S_POD_UID", uid)]


def capability_args(*, port_mappings: Iterable[Mapping[str, Any]] = (),
                    bandwidth: Mapping[str, int] | None = None,
                    dns: Mapping[str, Sequence[str]] | None = None,
                    ip_ranges: Sequence[Any] | None = None, cgroup_path: str = "",
                    annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The capability arguments (CNI CONVENTIONS.md) containerd passes for a pod.

    - ``port_mappings``: ``[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp",
      "hostIP": ""}]``; entries with ``hostPort <= 0`` are dropped (as containerd) ->
      ``portMappings`` (omitted when empty);
    - ``bandwidth``: ``{"ingressRate", "ingressBurst", "egressRate", "egressBurst"}`` -> ``bandwidth``;
    - ``dns``: ``{"servers": [..], "searches": [..], "options": [..]}`` -> ``dns``;
    - ``ip_ranges``: passed as ``ipRanges`` unchanged; ``cgroup_path`` -> ``cgroupPath``;
    - ``annotations`` -> ``io.kubernetes.cri.pod-annotations`` (always set, ``{}`` if None).
    """
    out: dict[str, Any] = {POD_ANNOTATIONS_CAPABILITY: dict(annotations or {})}
    pms = [dict(p) for p in port_mappings if int(p.get("hostPort") or 0) > 0]
    if pms:
        out["portMappings"] = pms
    if bandwidth:
        out["bandwidth"] = dict(bandwidth)
    if dns is not None:
        out["dns"] = {k: list(dns.get(k) or []) for k in ("servers", "searches", "options")}
    if ip_ranges:
        out["ipRanges"] = list(ip_ranges)
    if cgroup_path:
        out["cgroupPath"] = cgroup_path
    return out


class CNI:
    """CNI networking for pod sandboxes; see the module docstring.

    Args: ``conf_dir`` (network configuration files), ``bin_dirs`` (plugin
    search path, also ``CNI_PATH``), ``max_conf_num`` (networks taken from the
    conf dir; ``<= 0`` all), ``cache_dir`` (result cache, libcni layout),
    ``loopback`` (attach containerd's ``cni-loopback`` network first; False when
    the caller brings ``lo`` up itself), ``if_prefix`` (``eth`` -> eth0, eth1...),
    ``timeout`` (seconds per plugin execution), ``serial`` (attach networks one
    after another instead of concurrently), ``skip_invalid`` (pass over invalid
    conf files instead of failing the load).
    """

    def __init__(self, *, conf_dir: str = DEFAULT_CONF_DIR, bin_dirs: Sequence[str] = DEFAULT_BIN_DIRS,
                 max_conf_num: int = 1, cache_dir: str = DEFAULT_CACHE_DIR, loopback: bool = True,
                 if_prefix: str = DEFAULT_IF_PREFIX, timeout: float | None = DEFAULT_TIMEOUT,
                 serial: bool = False, skip_invalid: bool = False) -> None:
        self.conf_dir = conf_dir
        self.bin_dirs = list(bin_dirs)
        self.max_conf_num = max_conf_num
        self.loopback = loopback
        self.if_prefix = if_prefix
        self.timeout = timeout
        self.serial = serial
        self.skip_invalid = skip_invalid
        self.cache = ResultCache(cache_dir)
        self._networks: list[Network] = []
        self._signature: tuple[Any, ...] | None = None
        self._load_error: Exception | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.load()

    # -- configuration ---------------------------------------------------------------

    @property
    def default_ifname(self) -> str:
        return f"{self.if_prefix}0"

    def load(self) -> None:
        """Re-read the conf dir now. Never raises: a failure leaves only the
        loopback network loaded (not ready) and is kept as :attr:`last_load_status`."""
        self._signature = dir_signature(self.conf_dir)
        networks = [Network(loopback_network(), "lo")] if self.loopback else []
        try:
            lists = load_conf_dir(self.conf_dir, self.max_conf_num, skip_invalid=self.skip_invalid)
        except (ConfigError, NotInitialized) as e:
            if self._load_error is None or str(self._load_error) != str(e):
                log.warning("cni config load failed: %s", e)
            self._load_error = e
            self._networks = networks
            return
        self._load_error = None
        networks += [Network(conf, f"{self.if_prefix}{i}") for i, conf in enumerate(lists)]
        self._networks = networks
        log.info("cni config loaded from %s: %s", self.conf_dir, [n.name for n in networks])

    def reload_if_changed(self) -> bool:
        """Reload when the conf dir's fingerprint changed since the last load; True if it did."""
        if dir_signature(self.conf_dir) == self._signature:
            return False
        self.load()
        return True

    @property
    def last_load_status(self) -> str:
        """``"OK"`` or the last load error (containerd's verbose ``lastCNILoadStatus``),
        e.g. ``cni config load failed: no network config found in /etc/cni/net.d: cni plugin
        not initialized``."""
        if self._load_error is None:
            return "OK"
        return f"cni config load failed: {self._load_error}"

    def networks(self) -> list[Network]:
        """The loaded networks (loopback first), after a reload check."""
        self.reload_if_changed()
        return list(self._networks)

    def status(self) -> tuple[bool, str]:
        """``(ready, reason)``: ready once a conf dir network is loaded; otherwise
        ``(False, "cni plugin not initialized")`` — containerd's text, which its CRI
        reports as ``Network plugin returns error: cni plugin not initialized``.
        The load error itself is :attr:`last_load_status`."""
        self.reload_if_changed()
        if self._ready():
            return True, ""
        return False, NOT_INITIALIZED_MESSAGE

    def _ready(self) -> bool:
        return any(n.ifname != "lo" or not self.loopback for n in self._networks) and self._load_error is None

    def config_info(self) -> dict[str, Any]:
        """go-cni's ``GetConfig`` shape for the CRI verbose status (``cniconfig``):
        ``{"PluginDirs", "PluginConfDir", "PluginMaxConfNum", "Prefix", "Networks": [...]}``."""
        nets = self.networks()
        return {"PluginDirs": self.bin_dirs, "PluginConfDir": self.conf_dir,
                "PluginMaxConfNum": self.max_conf_num, "Prefix": self.if_prefix,
                "Networks": describe((n.config, n.ifname) for n in nets)}

    async def validate(self) -> None:
        """VERSION-probe every plugin of every loaded network; raises
        :class:`PluginNotFound` or :class:`ConfigError` when a plugin is missing or
        does not support its network's ``cniVersion``."""
        for net in self.networks():
            for plugin in net.config.plugins:
                path = find_plugin(plugin.type, self.bin_dirs)
                versions = await version_probe(path, net.config.cni_version, bin_dirs=self.bin_dirs,
                                               plugin_timeout=self.timeout)
                if net.config.cni_version not in versions:
                    raise ConfigError(f"plugin type={plugin.type!r} does not support config version "
                                      f"{net.config.cni_version!r} (supports {versions})")

    # -- attachments -----------------------------------------------------------------

    def _lock(self, container_id: str) -> asyncio.Lock:
        lock = self._locks.get(container_id)
        if lock is None:
            lock = self._locks[container_id] = asyncio.Lock()
        return lock

    def _release(self, container_id: str, lock: asyncio.Lock) -> None:
        if not lock.locked() and self._locks.get(container_id) is lock:
            del self._locks[container_id]

    async def _run(self, network: NetworkConfigList, command: str, rt: RuntimeConf,
                   prev: Mapping[str, Any] | None, *, chain: bool) -> Mapping[str, Any] | None:
        plugins = list(network.plugins)
        if command == "DEL":
            plugins.reverse()
        caps = rt.capability_args or {}
        for plugin in plugins:
            path = find_plugin(plugin.type, self.bin_dirs)
            if prev is not None:
                prev = convert_result(prev, network.cni_version)
            req = plugin_request(network, plugin, prev_result=prev, capability_args=caps)
            out = await exec_plugin(path, command, req, rt=rt, bin_dirs=self.bin_dirs,
                                    plugin_timeout=self.timeout, network=network.name)
            if chain:
                if out is None:
                    raise CNIError("plugin returned no result", plugin=plugin.type, command=command,
                                   network=network.name)
                prev = out
        return prev

    async def add_network(self, network: NetworkConfigList, rt: RuntimeConf) -> Result:
        """ADD one network list (SPEC section 3, "Adding an attachment") and cache it.

        The cache entry (config, args) is written before the first plugin runs, so
        a crash mid-ADD still leaves DEL something to go on; the final result is
        added to it on success. Raises :class:`CNIError`, :class:`PluginNotFound`,
        :class:`ConfigError` (an invalid final result).
        """
        entry = CachedAttachment(container_id=rt.container_id, network=network.name, ifname=rt.ifname,
                                 netns=rt.netns, config=network.source, args=rt.args,
                                 capability_args=rt.capability_args or {}, result=None)
        await asyncio.to_thread(self.cache.put, entry)
        raw = await self._run(network, "ADD", rt, None, chain=True)
        assert raw is not None
        result = parse_result(raw)
        entry = CachedAttachment(**{**entry.__dict__, "result": dict(raw)})
        await asyncio.to_thread(self.cache.put, entry)
        return result

    async def del_network(self, network: NetworkConfigList, rt: RuntimeConf) -> None:
        """DEL one network list in reverse plugin order (SPEC section 3, "Deleting an
        attachment"), with the cached ADD result as ``prevResult`` for 0.4.0 and later;
        the cache entry is removed on success. Raises :class:`CNIError`, :class:`PluginNotFound`."""
        prev = None
        if version_at_least(network.cni_version, "0.4.0"):
            cached = await asyncio.to_thread(self.cache.get, network.name, rt.container_id, rt.ifname)
            prev = cached.result if cached else None
        await self._run(network, "DEL", rt, prev, chain=False)
        await asyncio.to_thread(self.cache.delete, network.name, rt.container_id, rt.ifname)

    async def check_network(self, network: NetworkConfigList, rt: RuntimeConf) -> None:
        """CHECK one network list (SPEC section 3, "Checking an attachment"). A no-op for
        ``disableCheck`` and for versions before 0.4.0 (which have no CHECK). Raises
        :class:`CNIError` (also when there is no cached ADD result), :class:`PluginNotFound`."""
        if network.disable_check or not version_at_least(network.cni_version, "0.4.0"):
            return
        cached = await asyncio.to_thread(self.cache.get, network.name, rt.container_id, rt.ifname)
        if cached is None or cached.result is None:
            raise CNIError(f"no cached result of network {network.name!r} for container "
                           f"{rt.container_id!r} ifname {rt.ifname!r}", command="CHECK", network=network.name)
        await self._run(network, "CHECK", rt, cached.result, chain=False)

    def _rt(self, container_id: str, netns: str, ifname: str, args: Iterable[tuple[str, str]],
            caps: Mapping[str, Any] | None) -> RuntimeConf:
        return RuntimeConf(container_id=container_id, netns=netns, ifname=ifname,
                           args=tuple((str(k), str(v)) for k, v in args), capability_args=dict(caps or {}))

    async def setup(self, container_id: str, netns: str, *, args: Iterable[tuple[str, str]] = (),
                    capability_args: Mapping[str, Any] | None = None) -> SetupResult:
        """Attach the pod (``container_id`` = sandbox id) in netns path ``netns`` to every
        loaded network and return the combined result.

        Raises :class:`NotInitialized` when no conf dir network is loaded, and the
        first network's error (:class:`CNIError`, :class:`PluginNotFound`,
        :class:`ConfigError`) when an ADD fails — after a best-effort DEL of every
        network, so a failed setup leaves no interface, lease or cache entry behind.
        """
        await asyncio.to_thread(self.reload_if_changed)  # scandir/stat, maybe re-reads confs
        if not self._ready():
            raise NotInitialized()
        networks = list(self._networks)
        args = list(args)
        lock = self._lock(container_id)
        async with lock:
            try:
                rts = [self._rt(container_id, netns, n.ifname, args, capability_args) for n in networks]
                if self.serial:
                    results = [await self.add_network(n.config, rt)
                               for n, rt in zip(networks, rts, strict=True)]
                else:
                    outcomes = await asyncio.gather(
                        *(self.add_network(n.config, rt) for n, rt in zip(networks, rts, strict=True)),
                        return_exceptions=True)
                    for o in outcomes:
                        if isinstance(o, BaseException):
                            raise o
                    results = list(outcomes)  # type: ignore[arg-type]
                return self._combine(networks, results)
            except BaseException:
                try:
                    await asyncio.shield(self._teardown(container_id, netns, networks, args, capability_args))
                except Exception as e:
                    log.warning("cleanup after failed cni setup of %s: %s", container_id, e)
                raise
            finally:
                self._release(container_id, lock)

    def _combine(self, networks: list[Network], results: list[Result]) -> SetupResult:
        out = SetupResult(interfaces={self.default_ifname: InterfaceConfig()}, dns=[], routes=[], results=[],
                          default_ifname=self.default_ifname)
        for net, res in zip(networks, results, strict=True):
            out.results.append((net.name, net.ifname, res))
            for intf in res.interfaces:
                out.interfaces[intf.name] = InterfaceConfig(mac=intf.mac, sandbox=intf.sandbox,
                                                            pci_id=intf.pci_id, socket_path=intf.socket_path)
            for ip in res.ips:
                if ip.interface is not None:
                    name = res.interfaces[ip.interface].name
                else:
                    name = net.ifname if net.ifname == "lo" else self.default_ifname
                out.interfaces.setdefault(name, InterfaceConfig()).ip_configs.append(ip)
            out.dns.append(res.dns)
            out.routes.extend(res.routes)
        return out

    async def teardown(self, container_id: str, netns: str, *, args: Iterable[tuple[str, str]] = (),
                       capability_args: Mapping[str, Any] | None = None) -> None:
        """Detach the pod from every network it may be attached to: each cached
        attachment of ``container_id`` (with the config, args and capability args
        it was added with) and each loaded network, in reverse network order.

        Idempotent: an attachment already gone (no cache entry, plugin DEL of
        something missing) is success; ``netns`` may be "" (already removed).
        Every network is tried; the first failure is raised afterwards
        (:class:`CNIError`, :class:`PluginNotFound`) and its cache entry kept so a
        retry DELs it again. Does not require the object to be ready.
        """
        await asyncio.to_thread(self.reload_if_changed)  # scandir/stat, maybe re-reads confs
        lock = self._lock(container_id)
        async with lock:
            try:
                await self._teardown(container_id, netns, list(self._networks), list(args), capability_args)
            finally:
                self._release(container_id, lock)

    async def _teardown(self, container_id: str, netns: str, networks: list[Network],
                        args: list[tuple[str, str]], caps: Mapping[str, Any] | None) -> None:
        cached = {(c.network, c.ifname): c for c in
                  await asyncio.to_thread(self.cache.attachments, container_id)}
        todo: list[tuple[NetworkConfigList, RuntimeConf]] = []
        for net in reversed(networks):
            entry = cached.pop((net.name, net.ifname), None)
            todo.append(self._del_target(container_id, netns, net.config, net.ifname, args, caps, entry))
        for entry in cached.values():
            try:
                conf = conf_list_from_bytes(entry.config)
            except ConfigError as e:
                log.warning("dropping unreadable cni cache entry %s/%s: %s", entry.network, entry.ifname, e)
                await asyncio.to_thread(self.cache.delete, entry.network, container_id, entry.ifname)
                continue
            todo.append(self._del_target(container_id, netns, conf, entry.ifname, args, caps, entry))
        # reverse of the ADD order, the loopback network last
        todo.sort(key=lambda t: t[1].ifname == "lo")
        first: BaseException | None = None
        for conf, rt in todo:
            try:
                await self.del_network(conf, rt)
            except (CNIError, PluginNotFound) as e:
                text = str(e)
                if "not found" in text or (not netns and "no such file or directory" in text):
                    await asyncio.to_thread(self.cache.delete, conf.name, container_id, rt.ifname)
                    continue
                log.warning("cni DEL of %s on network %s failed: %s", container_id, conf.name, e)
                first = first or e
        if first is not None:
            raise first

    def _del_target(self, container_id: str, netns: str, conf: NetworkConfigList, ifname: str,
                    args: list[tuple[str, str]], caps: Mapping[str, Any] | None,
                    entry: CachedAttachment | None) -> tuple[NetworkConfigList, RuntimeConf]:
        if entry is None:
            return conf, self._rt(container_id, netns, ifname, args, caps)
        try:
            conf = conf_list_from_bytes(entry.config) if entry.config else conf
        except ConfigError:
            pass
        return conf, RuntimeConf(container_id=container_id, netns=netns, ifname=ifname,
                                 args=entry.args or tuple(args),
                                 capability_args=entry.capability_args or caps)

    async def check(self, container_id: str, netns: str, *, args: Iterable[tuple[str, str]] = (),
                    capability_args: Mapping[str, Any] | None = None) -> None:
        """CHECK every loaded network of the pod (skipping those without CHECK, see
        :meth:`check_network`) with its current configuration (as libcni) and the
        args it was added with when cached. Raises
        :class:`NotInitialized` when not ready, else the first :class:`CNIError`."""
        await asyncio.to_thread(self.reload_if_changed)  # scandir/stat, maybe re-reads confs
        if not self._ready():
            raise NotInitialized()
        args = list(args)
        lock = self._lock(container_id)
        async with lock:
            try:
                for net in list(self._networks):
                    entry = await asyncio.to_thread(self.cache.get, net.name, container_id, net.ifname)
                    _, rt = self._del_target(container_id, netns, net.config, net.ifname, args,
                                             capability_args, entry)
                    await self.check_network(net.config, rt)
            finally:
                self._release(container_id, lock)
