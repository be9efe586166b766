"""hosts.toml directories and the default hosts (containerd's config_path layout)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from aiocontainerd.errors import InvalidArgument
from aiocontainerd.remotes.hosts import (
    ALL_CAPABILITIES,
    Hosts,
    RegistryHost,
    host_directory,
    is_localhost,
    parse_duration,
    parse_hosts_toml,
    split_host_port,
)


def write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hosts.toml").write_text(text)
    return folder


def test_defaults_without_config() -> None:
    hosts = Hosts()
    (hub,) = hosts("docker.io")
    assert (hub.scheme, hub.host, hub.path) == ("https", "registry-1.docker.io", "/v2")
    assert hub.capabilities == ALL_CAPABILITIES and not hub.is_mirror_for("docker.io")
    (other,) = hosts("ghcr.io")
    assert (other.scheme, other.host, other.skip_verify) == ("https", "ghcr.io", None)
    assert not other.http_fallback


@pytest.mark.parametrize(("namespace", "scheme", "fallback", "skip_verify"), [
    ("localhost", "https", False, True),
    ("localhost:443", "https", False, True),
    ("localhost:80", "http", False, None),
    ("localhost:5000", "https", True, True),   # https first, plain http if the server speaks it
    ("127.0.0.1:5000", "https", True, True),
    ("127.1.2.3:5000", "https", True, True),
    ("[::1]:5000", "https", True, True),
    ("10.0.0.1:5000", "https", False, None),   # not loopback: https only
    ("example.com:5000", "https", False, None),
])
def test_default_loopback_rules(namespace: str, scheme: str, fallback: bool,
                                skip_verify: bool | None) -> None:
    (h,) = Hosts()(namespace)
    assert (h.host, h.scheme, h.http_fallback, h.skip_verify) == (namespace, scheme, fallback, skip_verify)


def test_plain_http_option() -> None:
    hosts = Hosts(plain_http=True)
    for ns in ("127.0.0.1:5000", "example.com", "localhost"):
        (h,) = hosts(ns)
        assert (h.scheme, h.http_fallback) == ("http", False)
    assert hosts("docker.io")[0].scheme == "https"  # docker hub stays https, as containerd


def test_localhost_helpers() -> None:
    assert is_localhost("localhost") and is_localhost("localhost:5000") and is_localhost("127.0.0.1")
    assert is_localhost("127.255.0.1:1") and is_localhost("[::1]:5000") and is_localhost("::1")
    assert not is_localhost("10.0.0.1") and not is_localhost("example.com") and not is_localhost("[::2]:1")
    assert split_host_port("[::1]:5000") == ("::1", "5000") and split_host_port("h:1") == ("h", "1")
    assert split_host_port("h") == ("h", "") and split_host_port("::1") == ("::1", "")
    assert host_directory("localhost:5000") == "localhost_5000_" and host_directory("h.io") == "h.io"


def test_hosts_toml_full(tmp_path: Path) -> None:
    folder = write(tmp_path / "docker.io", '''
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve"]

[host."https://mirror-a.example.com"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.pem"
  client = [["client.cert", "client.key"], "/abs/both.pem"]
  dial_timeout = "1m30s"
  [host."https://mirror-a.example.com".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."http://mirror-b.example.com:5000/custom/prefix"]
  override_path = true

[host."mirror-c.example.com/sub"]
''')
    hosts = Hosts(tmp_path)("docker.io")
    assert [h.host for h in hosts] == ["mirror-a.example.com", "mirror-b.example.com:5000",
                                      "mirror-c.example.com", "registry-1.docker.io"]
    a, b, c, server = hosts
    assert a.capabilities == {"pull"} and a.skip_verify is True
    assert a.ca == (str(folder / "ca.pem"),)
    assert a.client == ((str(folder / "client.cert"), str(folder / "client.key")), ("/abs/both.pem", ""))
    assert a.header == {"x-one": ("1",), "x-many": ("a", "b")}
    assert a.dial_timeout == 90.0 and a.path == "/v2" and a.is_mirror_for("docker.io")
    assert (b.scheme, b.path) == ("http", "/custom/prefix")
    assert (c.scheme, c.path) == ("https", "/sub/v2")
    assert server.capabilities == {"pull", "resolve"} and server.scheme == "https"
    assert not server.is_mirror_for("docker.io")


def test_hosts_toml_without_server_appends_default(tmp_path: Path) -> None:
    write(tmp_path / "127.0.0.1_5000_",
          '[host."http://127.0.0.1:6000"]\ncapabilities = ["pull", "resolve"]\n')
    hosts = Hosts(tmp_path)("127.0.0.1:5000")
    assert [h.origin for h in hosts] == ["http://127.0.0.1:6000", "https://127.0.0.1:5000"]
    assert hosts[-1].http_fallback and hosts[0].is_mirror_for("127.0.0.1:5000")


def test_host_dir_lookup_order(tmp_path: Path) -> None:
    write(tmp_path / "_default", 'server = "https://fallback.example.com"\n')
    write(tmp_path / "ghcr.io", 'server = "https://ghcr-mirror.example.com"\n')
    write(tmp_path / "localhost:5000", 'server = "http://localhost:5000"\n')
    hosts = Hosts(tmp_path)
    assert hosts("ghcr.io")[0].host == "ghcr-mirror.example.com"
    assert hosts("quay.io")[0].host == "fallback.example.com"
    assert hosts("localhost:5000")[0].scheme == "http"
    write(tmp_path / "localhost_5000_", 'server = "https://windows-style.example.com"\n')
    assert hosts("localhost:5000")[0].host == "windows-style.example.com"


def test_http_server_with_tls_config_tries_https_first(tmp_path: Path) -> None:
    write(tmp_path / "r.example.com", 'server = "http://r.example.com:5000"\nskip_verify = true\n')
    (h,) = Hosts(tmp_path)("r.example.com")
    assert (h.scheme, h.http_fallback) == ("https", True)
    write(tmp_path / "s.example.com", 'server = "http://s.example.com:80"\nskip_verify = true\n')
    assert Hosts(tmp_path)("s.example.com")[0].scheme == "http"


def test_certs_d_without_hosts_toml(tmp_path: Path) -> None:
    folder = tmp_path / "r.example.com"
    folder.mkdir()
    for name in ("ca.crt", "client.cert", "client.key", "other.cert"):
        (folder / name).write_text("x")
    (h,) = Hosts(tmp_path)("r.example.com")
    assert h.host == "r.example.com" and h.scheme == "https"
    assert h.ca == (str(folder / "ca.crt"),)
    assert h.client == ((str(folder / "client.cert"), str(folder / "client.key")),
                        (str(folder / "other.cert"), ""))


def test_reload_on_change(tmp_path: Path) -> None:
    folder = write(tmp_path / "r.io", 'server = "https://one.example.com"\n')
    hosts = Hosts(tmp_path)
    assert hosts("r.io")[0].host == "one.example.com"
    (folder / "hosts.toml").write_text('server = "https://two.example.com:8443"\n')
    assert hosts("r.io")[0].host == "two.example.com:8443"


@pytest.mark.parametrize(("text", "message"), [
    ("server = ", "invalid TOML"),
    ('capabilities = ["pull", "fly"]', "unknown capability 'fly'"),
    ("skip_verify = 1", "key 'skip_verify': expected a boolean"),
    ("ca = 1", "key 'ca': expected a string or a list"),
    ('client = [["a"]]', "key 'client': invalid pair"),
    ('dial_timeout = "soon"', "key 'dial_timeout'"),
    ("server = 5", "key 'server': expected a string"),
    ('server = "ftp://x"', "unable to parse server"),
    ("colour = 'blue'", "unknown key 'colour'"),
    ('[host."https://m"]\nheader = 3', "key 'host.\"https://m\".header': expected a table"),
    ('[host."https://m"]\nfoo = 1', "unknown key 'host.\"https://m\".foo'"),
])
def test_invalid_hosts_toml(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path / "r.io", text)
    with pytest.raises(InvalidArgument, match=r"hosts\.toml") as e:
        Hosts(tmp_path)("r.io")
    assert message in e.value.message


def test_parse_duration() -> None:
    assert parse_duration("5s") == 5 and parse_duration("250ms") == 0.25 and parse_duration("1h1m") == 3660
    assert parse_duration("0") == 0 and parse_duration("1.5s") == 1.5
    for bad in ("", "5", "s", "5x", "-"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_ssl_contexts(tmp_path: Path) -> None:
    assert RegistryHost("h", scheme="http").ssl_context() is None
    ctx = RegistryHost("h", skip_verify=True).ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    strict = RegistryHost("h").ssl_context()
    assert strict is not None and strict.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(InvalidArgument, match="unable to load CA cert"):
        RegistryHost("h", ca=(str(tmp_path / "missing.pem"),)).ssl_context()
    with pytest.raises(InvalidArgument, match="key pair"):
        RegistryHost("h", client=((str(tmp_path / "missing.cert"), ""),)).ssl_context()


def test_parse_hosts_toml_direct(tmp_path: Path) -> None:
    entries = parse_hosts_toml('[host."https://m.example.com"]\n', tmp_path)
    assert entries[0].host == "m.example.com" and entries[-1].host == ""
