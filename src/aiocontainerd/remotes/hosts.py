"""Registry hosts: which endpoints serve a registry namespace, and how to reach them.

containerd's ``hosts.toml`` layout: for a namespace (the domain of a
reference, e.g. ``docker.io`` or ``127.0.0.1:5000``), the first of these
directories under ``config_path`` that exists is read::

    <config_path>/<host>_<port>_/     (":" spelled the Windows-safe way)
    <config_path>/<host[:port]>/
    <config_path>/_default/

and in it ``hosts.toml``::

    server = "https://registry-1.docker.io"     # upstream, tried last
    capabilities = ["pull", "resolve", "push"]  # for the server (default: all)

    [host."https://mirror.example.com"]         # tried first, in file order
      capabilities = ["pull", "resolve"]
      skip_verify = false
      ca = "ca.crt"                             # or a list; relative to the folder
      client = [["client.cert", "client.key"]]  # or "both.pem", or a list of files
      override_path = false                     # true: the URL path is the API root
      dial_timeout = "5s"
      [host."https://mirror.example.com".header]
        x-custom = "1"                          # or a list of values

Without a ``hosts.toml`` a folder of Docker-style certificates (``*.crt``
CAs, ``*.cert`` + ``*.key`` client pairs) is used for the default host.
Without any folder, the default: ``docker.io`` → ``https://registry-1.docker.io``;
a loopback host (``localhost``, ``127.0.0.0/8``, ``::1``) → plain HTTP
allowed, as containerd's DefaultHost logic: port 80 is HTTP, no port or
443 is HTTPS without verification, any other port tries HTTPS (unverified)
and falls back to HTTP when the server answers in plain HTTP; anything else →
``https``. ``plain_http=True`` (``ctr --plain-http``) makes the default scheme
``http`` for every host without a ``hosts.toml``.

An error in a ``hosts.toml`` raises InvalidArgument naming the file and key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from .reference import DEFAULT_DOMAIN, DEFAULT_REGISTRY_HOST

PULL = "pull"
RESOLVE = "resolve"
PUSH = "push"
REFERRERS = "referrers"
ALL_CAPABILITIES = frozenset({PULL, RESOLVE, PUSH, REFERRERS})


@dataclasses.dataclass(frozen=True)
class RegistryHost:
    """One endpoint of a registry namespace.

    ``host`` is ``name[:port]`` as in a URL; ``path`` the API root (``/v2``);
    ``capabilities`` a subset of pull/resolve/push/referrers; TLS settings as in
    ``hosts.toml``; ``header`` extra request headers (name → values);
    ``http_fallback``: HTTPS is tried first and plain HTTP used if the server
    answers in plain HTTP (loopback defaults only).
    """

    host: str
    scheme: str = "https"
    path: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    skip_verify: bool | None = None
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    header: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    dial_timeout: float | None = None
    http_fallback: bool = False

    @property
    def origin(self) -> str:
        """``scheme://host``."""
        return f"{self.scheme}://{self.host}"

    def has(self, *capabilities: str) -> bool:
        return all(c in self.capabilities for c in capabilities)

    def is_mirror_for(self, namespace: str) -> bool:
        """Whether this host serves ``namespace`` as a mirror (requests then carry ``?ns=``)."""
        if namespace == self.host:
            return False
        return not (namespace == DEFAULT_DOMAIN and self.host == DEFAULT_REGISTRY_HOST)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for this host (``None`` for plain HTTP). Raises InvalidArgument."""
        if self.scheme != "https" and not self.http_fallback:
            return None
        return _ssl_context(self.skip_verify, self.ca, self.client)


_SSL_CACHE: dict[tuple[Any, ...], ssl.SSLContext] = {}


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _ssl_context(skip_verify: bool | None, ca: tuple[str, ...],
                 client: tuple[tuple[str, str], ...]) -> ssl.SSLContext:
    files = (*ca, *(p for pair in client for p in pair if p))
    key = (bool(skip_verify), ca, client, tuple(_mtime(f) for f in files))
    if key in _SSL_CACHE:
        return _SSL_CACHE[key]
    ctx = ssl.create_default_context()
    for path in ca:
        try:
            ctx.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as e:
            raise InvalidArgument(f"unable to load CA cert {path!r}: {e}") from None
    for cert, key_file in client:
        try:
            ctx.load_cert_chain(cert, key_file or None)
        except (OSError, ssl.SSLError) as e:
            raise InvalidArgument(f"failed to load X509 key pair {cert!r}: {e}") from None
    if skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _SSL_CACHE[key] = ctx
    return ctx


def split_host_port(host: str) -> tuple[str, str]:
    """``("127.0.0.1", "5000")`` for ``127.0.0.1:5000``; brackets of IPv6 removed."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, ""
        rest = host[end + 1:]
        return host[1:end], rest[1:] if rest.startswith(":") else ""
    if host.count(":") == 1:
        name, port = host.split(":")
        return name, port
    return host, ""


def is_localhost(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1), with or without a port."""
    name, _ = split_host_port(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_directory(host: str) -> str:
    """The Windows-safe folder name of ``host``: ``localhost:5000`` → ``localhost_5000_``."""
    idx = host.rfind(":")
    return f"{host[:idx]}_{host[idx + 1:]}_" if idx > 0 else host


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``"5s"``, ``"1m30s"``, ``"250ms"``). Raises ValueError."""
    if text in ("0", "+0", "-0"):
        return 0.0
    body = text.lstrip("+")
    if not body or _DURATION_PART.sub("", body):
        raise ValueError(f"invalid duration {text!r}")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(body))


def _strings(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(f"{where}: key {key!r}: expected a string or a list of strings")


def _abs(path: str, base: Path) -> str:
    return path if os.path.isabs(path) else str(base / path)


def _parse_entry(server: str, cfg: Mapping[str, Any], base: Path, where: str,
                 prefix: str) -> RegistryHost | None:
    """One host entry; ``None`` host (empty server) means "the default upstream"."""
    known = {"capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout"}
    for key in cfg:
        if key not in known and not (prefix == "" and key in ("server", "host")):
            raise InvalidArgument(f"{where}: unknown key {prefix + key!r}")
    caps = cfg.get("capabilities")
    if caps is None:
        capabilities = ALL_CAPABILITIES
    else:
        names = [c.lower() for c in _strings(caps, prefix + "capabilities", where)]
        for c in names:
            if c not in ALL_CAPABILITIES:
                raise InvalidArgument(f"{where}: key {prefix + 'capabilities'!r}: unknown capability {c!r}")
        capabilities = frozenset(names)
    skip_verify = cfg.get("skip_verify")
    if skip_verify is not None and not isinstance(skip_verify, bool):
        raise InvalidArgument(f"{where}: key {prefix + 'skip_verify'!r}: expected a boolean")
    override_path = cfg.get("override_path", False)
    if not isinstance(override_path, bool):
        raise InvalidArgument(f"{where}: key {prefix + 'override_path'!r}: expected a boolean")
    ca = tuple(_abs(p, base) for p in _strings(cfg["ca"], prefix + "ca", where)) if "ca" in cfg else ()
    client: list[tuple[str, str]] = []
    if "client" in cfg:
        value = cfg["client"]
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise InvalidArgument(f"{where}: key {prefix + 'client'!r}: expected a string or a list")
        for item in items:
            if isinstance(item, str):
                client.append((_abs(item, base), ""))
            elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
                client.append((_abs(item[0], base), _abs(item[1], base)))
            else:
                raise InvalidArgument(f"{where}: key {prefix + 'client'!r}: invalid pair {item!r}")
    header: dict[str, tuple[str, ...]] = {}
    if "header" in cfg:
        if not isinstance(cfg["header"], dict):
            raise InvalidArgument(f"{where}: key {prefix + 'header'!r}: expected a table")
        for name, value in cfg["header"].items():
            header[name] = tuple(_strings(value, f"{prefix}header.{name}", where))
    dial_timeout = None
    if cfg.get("dial_timeout"):
        try:
            dial_timeout = parse_duration(str(cfg["dial_timeout"]))
        except ValueError as e:
            raise InvalidArgument(f"{where}: key {prefix + 'dial_timeout'!r}: {e}") from None
    if not server:
        return RegistryHost(host="", capabilities=capabilities, skip_verify=skip_verify, ca=ca,
                            client=tuple(client), header=header, dial_timeout=dial_timeout)
    url = server if "://" in server else "https://" + server
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https") or not rest:
        raise InvalidArgument(f"{where}: unable to parse server {server!r}")
    netloc, slash, path = rest.partition("/")
    if not netloc:
        raise InvalidArgument(f"{where}: unable to parse server {server!r}")
    path = os.path.normpath("/" + path) if slash and path else ""
    if path in ("", "/"):
        path = "" if override_path else "/v2"
    elif not path.endswith("/v2") and not override_path:
        path += "/v2"
    return RegistryHost(host=netloc, scheme=scheme, path=path, capabilities=capabilities,
                        skip_verify=skip_verify, ca=ca, client=tuple(client), header=header,
                        dial_timeout=dial_timeout)


def parse_hosts_toml(text: str, base: Path, where: str = "hosts.toml") -> list[RegistryHost]:
    """The host entries of a ``hosts.toml`` body, mirrors first and the server last.

    The server entry has ``host == ""`` when the file names no ``server`` (the
    caller fills in the default upstream). Raises InvalidArgument.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"{where}: invalid TOML: {e}") from None
    server = data.get("server", "")
    if not isinstance(server, str):
        raise InvalidArgument(f"{where}: key 'server': expected a string")
    hosts_table = data.get("host", {})
    if not isinstance(hosts_table, dict):
        raise InvalidArgument(f"{where}: key 'host': expected a table")
    out: list[RegistryHost] = []
    for name, cfg in hosts_table.items():  # tomllib keeps the file's order
        if not isinstance(cfg, dict):
            raise InvalidArgument(f"{where}: key 'host.{name}': expected a table")
        entry = _parse_entry(name, cfg, base, where, f'host."{name}".')
        assert entry is not None
        out.append(entry)
    root = _parse_entry(server, data, base, where, "")
    assert root is not None
    out.append(root)
    return out


def _load_cert_files(folder: Path) -> list[RegistryHost]:
    ca: list[str] = []
    client: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        names = []
    for name in names:
        if (folder / name).is_dir():
            continue
        if name.endswith(".crt"):
            ca.append(str(folder / name))
        elif name.endswith(".cert"):
            key = folder / (name[:-5] + ".key")
            client.append((str(folder / name), str(key) if key.exists() else ""))
    return [RegistryHost(host="", ca=tuple(ca), client=tuple(client))]


class Hosts:
    """The registry-hosts function: ``hosts(namespace) -> [RegistryHost, …]`` in try order.

    ``config_path``: the ``certs.d``-style root of ``hosts.toml`` folders
    (``None``: defaults only). ``plain_http``: default scheme ``http`` for hosts
    without configuration. Files are re-read when their mtime changes.
    """

    def __init__(self, config_path: str | os.PathLike[str] | None = None, *,
                 plain_http: bool = False) -> None:
        self.config_path = Path(config_path) if config_path else None
        self.plain_http = plain_http
        self._cache: dict[str, tuple[Any, list[RegistryHost]]] = {}

    def host_dir(self, namespace: str) -> Path | None:
        """The folder configuring ``namespace``, or ``None``."""
        if self.config_path is None:
            return None
        candidates = []
        if host_directory(namespace) != namespace:
            candidates.append(self.config_path / host_directory(namespace))
        candidates += [self.config_path / namespace, self.config_path / "_default"]
        for path in candidates:
            if path.exists():
                return path
        return None

    def __call__(self, namespace: str) -> list[RegistryHost]:
        folder = self.host_dir(namespace)
        configured: list[RegistryHost] | None = None
        if folder is not None:
            toml = folder / "hosts.toml"
            try:
                st = toml.stat()
                stamp: Any = (st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            cached = self._cache.get(str(folder))
            if cached is not None and cached[0] == stamp and stamp is not None:
                configured = list(cached[1])
            elif stamp is not None and st.st_size > 0:
                configured = parse_hosts_toml(toml.read_text(), folder, str(toml))
                self._cache[str(folder)] = (stamp, configured)
            else:
                configured = _load_cert_files(folder)
        return self._with_default(namespace, configured)

    def _with_default(self, namespace: str, hosts: list[RegistryHost] | None) -> list[RegistryHost]:
        hosts = list(hosts) if hosts is not None else [RegistryHost(host="")]
        if hosts and not hosts[-1].host:
            last = hosts[-1]
            if namespace == DEFAULT_DOMAIN:
                last = dataclasses.replace(last, host=DEFAULT_REGISTRY_HOST, scheme="https")
            elif is_localhost(namespace) and not self.plain_http:
                _, port = split_host_port(namespace)
                if port == "80":
                    last = dataclasses.replace(last, host=namespace, scheme="http")
                else:
                    # https without verification; any port but 443 may also speak plain http
                    last = dataclasses.replace(
                        last, host=namespace, scheme="http" if port not in ("", "443") else "https",
                        skip_verify=True if last.skip_verify is None else last.skip_verify)
            else:
                last = dataclasses.replace(last, host=namespace,
                                           scheme="http" if self.plain_http else "https")
            hosts[-1] = last
        out = []
        for h in hosts:
            explicit_tls = bool(h.ca or h.client or h.skip_verify is not None)
            if h.scheme == "http" and explicit_tls and split_host_port(h.host)[1] != "80":
                # TLS configured for an http endpoint: try https first, fall back to http
                h = dataclasses.replace(h, scheme="https", http_fallback=True)
            out.append(h)
        return out


RegistryHosts = Callable[[str], Sequence[RegistryHost]]


def static_hosts(*hosts: RegistryHost) -> RegistryHosts:
    """A hosts function that returns ``hosts`` for every namespace (tests, single registries)."""
    return lambda namespace: list(hosts)
