from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from aiocontainerd import builtins
from aiocontainerd.config import Config, ConfigError, dump, load


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_no_file_is_all_defaults() -> None:
    cfg = load(None, builtins.config_types())
    assert cfg == Config()
    assert cfg.ttrpc_address == cfg.grpc.address + ".ttrpc"


def test_values_and_plugin_section(tmp_path: Path) -> None:
    f = write(tmp_path / "c.toml", """
version = 3
root = "/r"
disabled_plugins = ["io.containerd.grpc.v1.healthcheck"]
[grpc]
address = "/s/c.sock"
gid = 5
[metrics]
address = "127.0.0.1:1338"
[plugins."io.containerd.metadata.v1.lmdb"]
map_size = 1048576
""")
    cfg = load(f, builtins.config_types())
    assert cfg.root == "/r" and cfg.grpc.address == "/s/c.sock" and cfg.grpc.gid == 5
    assert cfg.metrics.address == "127.0.0.1:1338"
    assert cfg.disabled_plugins == ["io.containerd.grpc.v1.healthcheck"]
    assert cfg.plugins["io.containerd.metadata.v1.lmdb"].map_size == 1048576


@pytest.mark.parametrize(("text", "message"), [
    ("rooot = '/x'", "unknown key 'rooot'"),
    ("[grpc]\nuid = 'zero'", "key 'grpc.uid': expected int"),
    ("[grpc]\nuid = true", "key 'grpc.uid': expected int"),
    ("disabled_plugins = 'x'", "key 'disabled_plugins': expected an array"),
    ("grpc = 1", "key 'grpc': expected a table"),
    ("version = 2", "unsupported config version 2"),
    ("[plugins.'io.containerd.nope.v1.x']\na = 1", "unknown plugin 'io.containerd.nope.v1.x'"),
    ("[plugins.'io.containerd.metadata.v1.lmdb']\nmapsize = 1", "unknown key"),
    ("[plugins.'io.containerd.grpc.v1.version']\na = 1", "takes no configuration"),
    ("[debug]\nlevel = 'loud'", "unknown level 'loud'"),
    ("version = '3'", "must be the number 3"),
    ("[metrics]\naddress = 'nonsense'", "is not host:port"),
    ("[metrics]\naddress = '127.0.0.1:99999'", "is not host:port"),
    ("[grpc]\nuid = 99999999999", "not a valid id"),
    ("[plugins.'io.containerd.metadata.v1.lmdb']\nmap_size = -1", "too small"),
    ("required_plugins = ['io.containerd.nope.v1.x']", "no such plugins"),
    ("required_plugins = ['io.containerd.grpc.v1.version']\n"
     "disabled_plugins = ['io.containerd.grpc.v1.version']", "also disabled"),
    ("[grpc\n", "invalid TOML"),
])
def test_errors_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    f = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as e:
        load(f, builtins.config_types())
    assert message in str(e.value)
    assert str(f) in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "none.toml")


def test_imports_merge_over_the_main_file(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "10-grpc.toml", "[grpc]\ngid = 7\n")
    write(tmp_path / "conf.d" / "20-plugins.toml",
          "[plugins.'io.containerd.metadata.v1.lmdb']\nmap_size = 4194304\n")
    main = write(tmp_path / "main.toml", """
imports = ["conf.d/*.toml"]
[grpc]
address = "/a.sock"
gid = 1
""")
    cfg = load(main, builtins.config_types())
    assert cfg.grpc.address == "/a.sock" and cfg.grpc.gid == 7
    assert cfg.plugins["io.containerd.metadata.v1.lmdb"].map_size == 4194304


def test_imports_like_containerd(tmp_path: Path) -> None:
    # nested imports are followed, a glob matching the main file skips it, arrays append
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "a.toml", 'imports = ["b.toml"]\ndisabled_plugins = ["p.a"]\n')
    write(tmp_path / "d" / "b.toml", 'disabled_plugins = ["p.b"]\n[debug]\nlevel = "debug"\n')
    main = write(tmp_path / "main.toml", 'imports = ["*.toml", "d/a.toml"]\ndisabled_plugins = ["p.m"]\n')
    cfg = load(main, builtins.config_types())
    assert cfg.disabled_plugins == ["p.m", "p.a", "p.b"]
    assert cfg.debug.level == "debug"


def test_bad_value_in_import_names_the_imported_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "20.toml", "[debug]\nlevel = 'loud'\n")
    main = write(tmp_path / "main.toml", 'imports = ["20.toml"]\n')
    with pytest.raises(ConfigError) as e:
        load(main, builtins.config_types())
    assert str(e.value).startswith(str(bad))


def test_error_in_import_names_that_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.toml", "[grpc]\nport = 1\n")
    main = write(tmp_path / "main.toml", 'imports = ["bad.toml"]\n')
    with pytest.raises(ConfigError) as e:
        load(main, builtins.config_types())
    assert str(bad) in str(e.value) and "grpc.port" in str(e.value)


def test_dump_round_trips(tmp_path: Path) -> None:
    types = builtins.config_types()
    cfg = Config(root="/x", grpc=dataclasses.replace(Config().grpc, uid=3))
    f = write(tmp_path / "d.toml", dump(cfg, types))
    again = load(f, types)
    assert again.root == "/x" and again.grpc.uid == 3
    assert again.plugins["io.containerd.metadata.v1.lmdb"].map_size > 0
