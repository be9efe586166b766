"""CNI result types (SPEC.md section 5, "ADD Success") and version conversion.

Results come in three wire shapes, all parsed into the one :class:`Result`:

- 1.0.0 / 1.1.0::

    {"cniVersion": "1.0.0",
     "interfaces": [{"name": "eth0", "mac": "..", "mtu": 1500, "sandbox": "/var/run/netns/x"}],
     "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
     "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
     "dns": {"nameservers": [..], "domain": "..", "search": [..], "options": [..]}}

- 0.3.0 / 0.3.1 / 0.4.0: the same, and each ``ips`` entry carries ``"version": "4"|"6"``;
- 0.1.0 / 0.2.0: ``{"ip4": {"ip": "10.1.0.5/16", "gateway": .., "routes": [..]}, "ip6": {..}, "dns": {..}}``.

:func:`convert_result` rewrites a raw result dict into another version's shape
(libcni does the same before handing a cached result on as ``prevResult``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

#: spec versions whose network configurations we accept
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def version_tuple(version: str) -> tuple[int, int, int]:
    """``"0.4.0"`` -> ``(0, 4, 0)``; raises :class:`ConfigError` for anything else."""
    try:
        parts = [int(p) for p in version.split(".")]
    except (AttributeError, ValueError):
        raise ConfigError(f"invalid CNI version {version!r}") from None
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts):
        raise ConfigError(f"invalid CNI version {version!r}")
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def version_at_least(version: str, minimum: str) -> bool:
    """Whether spec ``version`` is ``minimum`` or later (both as strings)."""
    return version_tuple(version) >= version_tuple(minimum)


@dataclass(frozen=True)
class Interface:
    """One ``interfaces`` entry: ``sandbox`` is the netns path, or "" for a host interface."""

    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True)
class IPConfig:
    """One ``ips`` entry.

    ``address`` is the CIDR string as sent (``"10.88.0.5/16"``), ``ip`` the bare
    address (``"10.88.0.5"``), ``gateway`` "" when absent, ``interface`` the index
    into :attr:`Result.interfaces` or None.
    """

    address: str
    gateway: str = ""
    interface: int | None = None

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def is_ipv4(self) -> bool:
        return ipaddress.ip_address(self.ip).version == 4


@dataclass(frozen=True)
class Route:
    """One ``routes`` entry (``dst`` CIDR; ``gw`` "" when absent; 1.1.0 extras when given)."""

    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True)
class DNS:
    """The ``dns`` object of a result (or of a network configuration)."""

    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@dataclass(frozen=True)
class Result:
    """A parsed ADD result of one network (the final plugin's output).

    ``raw`` keeps the plugin's JSON object unchanged: it is what gets cached and
    passed on as ``prevResult``.
    """

    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def interface_ips(self, ifname: str, default_ifname: str = "eth0") -> list[IPConfig]:
        """The IPs assigned to interface ``ifname``, in result order.

        An IP without an ``interface`` index belongs to ``default_ifname`` (what
        go-cni does when a plugin returns no interfaces).
        """
        out = []
        for ip in self.ips:
            if ip.interface is None or not 0 <= ip.interface < len(self.interfaces):
                name = default_ifname
            else:
                name = self.interfaces[ip.interface].name
            if name == ifname:
                out.append(ip)
        return out


def _str(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"invalid result: {what} must be a string, got {value!r}")
    return value


def _uint(value: Any, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"invalid result: {what} must be an unsigned integer, got {value!r}")
    return value


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"invalid result: {what} must be a list of strings, got {value!r}")
    return tuple(value)


def _cidr(value: Any, what: str) -> str:
    text = _str(value, what)
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        raise ConfigError(f"invalid result: {what} {text!r} is not an address in CIDR notation") from None
    if "/" not in text:
        raise ConfigError(f"invalid result: {what} {text!r} has no prefix length")
    return text


def parse_dns(obj: Any) -> DNS:
    """A ``dns`` object -> :class:`DNS` (None/{} -> empty)."""
    if not obj:
        return DNS()
    if not isinstance(obj, Mapping):
        raise ConfigError(f"invalid result: dns must be an object, got {obj!r}")
    return DNS(nameservers=_strings(obj.get("nameservers"), "dns.nameservers"),
               domain=_str(obj.get("domain"), "dns.domain"),
               search=_strings(obj.get("search"), "dns.search"),
               options=_strings(obj.get("options"), "dns.options"))


def _parse_route(obj: Any) -> Route:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"invalid result: route must be an object, got {obj!r}")
    table = obj.get("table")
    scope = obj.get("scope")
    return Route(dst=_cidr(obj.get("dst"), "route dst"), gw=_str(obj.get("gw"), "route gw"),
                 mtu=_uint(obj.get("mtu"), "route mtu"), advmss=_uint(obj.get("advmss"), "route advmss"),
                 priority=_uint(obj.get("priority"), "route priority"),
                 table=None if table is None else _uint(table, "route table"),
                 scope=None if scope is None else _uint(scope, "route scope"))


def _as_current(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Any supported result shape -> the 1.x shape (dict copy)."""
    version = raw.get("cniVersion") or ("1.0.0" if "ips" in raw or "interfaces" in raw else "0.1.0")
    if not isinstance(version, str):
        raise ConfigError(f"invalid result: cniVersion {version!r}")
    if version_tuple(version) >= (0, 3, 0):
        out = dict(raw)
        ips = []
        for ip in raw.get("ips") or []:
            if not isinstance(ip, Mapping):
                raise ConfigError(f"invalid result: ips entry must be an object, got {ip!r}")
            ips.append({k: v for k, v in ip.items() if k != "version"})
        out["ips"] = ips
        return out
    # 0.1.0 / 0.2.0: ip4/ip6 blocks without interfaces
    out = {"cniVersion": version, "interfaces": [], "ips": [], "routes": []}
    for key in ("ip4", "ip6"):
        block = raw.get(key)
        if not block:
            continue
        if not isinstance(block, Mapping):
            raise ConfigError(f"invalid result: {key} must be an object")
        ip = {"address": block.get("ip")}
        if block.get("gateway"):
            ip["gateway"] = block["gateway"]
        out["ips"].append(ip)
        out["routes"].extend(block.get("routes") or [])
    if raw.get("dns"):
        out["dns"] = raw["dns"]
    return out


def parse_result(raw: Mapping[str, Any]) -> Result:
    """A plugin's ADD output (decoded JSON) -> :class:`Result`.

    Accepts every shape in the module docstring. Raises :class:`ConfigError`
    ("invalid result: ...") for a malformed one, e.g. an IP whose ``interface``
    index is past the end of ``interfaces``.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"invalid result: expected a JSON object, got {raw!r}")
    cur = _as_current(raw)
    interfaces = []
    for obj in cur.get("interfaces") or []:
        if not isinstance(obj, Mapping):
            raise ConfigError(f"invalid result: interface must be an object, got {obj!r}")
        interfaces.append(Interface(
            name=_str(obj.get("name"), "interface name"), mac=_str(obj.get("mac"), "interface mac"),
            mtu=_uint(obj.get("mtu"), "interface mtu"), sandbox=_str(obj.get("sandbox"), "interface sandbox"),
            socket_path=_str(obj.get("socketPath"), "interface socketPath"),
            pci_id=_str(obj.get("pciID"), "interface pciID")))
    ips = []
    for obj in cur.get("ips") or []:
        index = obj.get("interface")
        if index is not None:
            index = _uint(index, "ip interface")
            if index >= len(interfaces):
                raise ConfigError(f"invalid result: IP configuration interface number {index} "
                                  f"is >= number of interfaces {len(interfaces)}")
        ips.append(IPConfig(address=_cidr(obj.get("address"), "ip address"),
                            gateway=_str(obj.get("gateway"), "ip gateway"), interface=index))
    routes = tuple(_parse_route(r) for r in cur.get("routes") or [])
    return Result(cni_version=_str(raw.get("cniVersion"), "cniVersion") or "0.1.0",
                  interfaces=tuple(interfaces), ips=tuple(ips), routes=routes,
                  dns=parse_dns(cur.get("dns")), raw=dict(raw))


def convert_result(raw: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    """Rewrite a raw result into the shape of spec version ``to_version``.

    0.3.0 and later differ only in the ``version`` key of each ``ips`` entry
    (present before 1.0.0: "4" or "6" from the address). Converting down to
    0.1.0/0.2.0 keeps the first IPv4 and IPv6 address as ``ip4``/``ip6``.
    Raises :class:`ConfigError` for an unknown version or a malformed result.
    """
    target = version_tuple(to_version)
    cur = _as_current(raw)
    if target >= (1, 0, 0):
        cur["cniVersion"] = to_version
        return cur
    if target >= (0, 3, 0):
        ips = []
        for ip in cur.get("ips") or []:
            entry = dict(ip)
            family = ipaddress.ip_interface(_cidr(ip.get("address"), "ip address")).version
            entry["version"] = str(family)
            ips.append(entry)
        cur["ips"] = ips
        cur["cniVersion"] = to_version
        return cur
    out: dict[str, Any] = {"cniVersion": to_version}
    for ip in cur.get("ips") or []:
        family = ipaddress.ip_interface(_cidr(ip.get("address"), "ip address")).version
        key = f"ip{family}"
        if key in out:
            continue
        block: dict[str, Any] = {"ip": ip["address"]}
        if ip.get("gateway"):
            block["gateway"] = ip["gateway"]
        routes = [r for r in cur.get("routes") or []
                  if ipaddress.ip_network(r.get("dst"), strict=False).version == family]
        if routes:
            block["routes"] = routes
        out[key] = block
    if cur.get("dns"):
        out["dns"] = cur["dns"]
    return out


def select_pod_ips(ips: Sequence[IPConfig], preference: str = "ipv4") -> tuple[str, list[str]]:
    """Pick the pod IP and the additional IPs from the default interface's IPs.

    As containerd's CRI does: one IP is the pod IP; with several, ``"ipv4"`` (the
    default, and any unknown value) takes the first IPv4 address, ``"ipv6"`` the
    first IPv6 one, ``"cni"`` the first in result order. The additional IPs are
    the ones skipped before it followed by those after it. Bare addresses, no
    prefix length: ``("10.88.0.5", ["fd00::5"])``. Empty input -> ``("", [])``.
    """
    addrs = [ip.ip for ip in ips]
    if not addrs:
        return "", []
    if len(addrs) == 1:
        return addrs[0], []
    if preference in ("ipv4", "ipv6") or preference != "cni":
        want = 6 if preference == "ipv6" else 4
        for i, ip in enumerate(ips):
            if ipaddress.ip_address(ip.ip).version == want:
                return addrs[i], addrs[:i] + addrs[i + 1:]
    return addrs[0], addrs[1:]
