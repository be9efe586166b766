"""CNI library with fake plugins: small Python scripts that log their env and stdin
and answer as their configuration tells them (result, error, delay)."""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from pathlib import Path

import pytest

from aiocontainerd.cri.cni import (
    CNI,
    CNIError,
    ConfigError,
    IPConfig,
    NotInitialized,
    PluginNotFound,
    capability_args,
    conf_list_from_bytes,
    conf_list_from_conf,
    convert_result,
    load_conf_dir,
    parse_result,
    pod_args,
    select_pod_ips,
)

FAKE = f"""#!{sys.executable}
import json, os, sys, time
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": conf["cniVersion"], "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}}))
    sys.exit(0)
with open(conf.get("log") or os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"type": conf["type"], "cmd": cmd, "env": env, "stdin": conf}}) + "\\n")
time.sleep(conf.get("sleep", 0))
fail = conf.get("fail", {{}}).get(cmd)
if fail == "text":
    sys.stderr.write("something broke\\n")
    sys.exit(2)
if fail:
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": fail["code"], "msg": fail["msg"],
                      "details": fail.get("details", "")}}))
    sys.exit(1)
if cmd == "ADD":
    res = conf.get("prevResult") or conf.get("result") or {{}}
    res = dict(res, cniVersion=conf["cniVersion"])
    if conf.get("add_dns"):
        res["dns"] = conf["add_dns"]
    print(json.dumps(res))
"""

RESULT_100 = {
    "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"},
                   {"name": "vethab", "mac": "55:44:33:22:11:11"},
                   {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "fd00::5/64", "interface": 2},
            {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
    "dns": {"nameservers": ["10.1.0.1"]},
}


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "log.jsonl"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("fake-a", "fake-b", "fake-c", "loopback"):
        p = bindir / name
        p.write_text(FAKE)
        p.chmod(0o755)
    conf = tmp_path / "net.d"
    conf.mkdir()
    return {"bin": bindir, "conf": conf, "log": tmp_path / "log.jsonl", "cache": tmp_path / "cache"}


def calls(lab: dict) -> list[dict]:
    if not lab["log"].exists():
        return []
    return [json.loads(line) for line in lab["log"].read_text().splitlines()]


def write_list(lab: dict, fname: str, plugins: list[dict], *, name: str = "net", version: str = "1.0.0",
               **extra) -> Path:
    for p in plugins:
        p.setdefault("log", str(lab["log"]))
    path = lab["conf"] / fname
    path.write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins, **extra}))
    return path


def make_cni(lab: dict, **kw) -> CNI:
    return CNI(conf_dir=str(lab["conf"]), bin_dirs=[str(lab["bin"] / "missing"), str(lab["bin"])],
               cache_dir=str(lab["cache"]), **kw)


# -- configuration ----------------------------------------------------------------------


def test_load_order_wrap_and_max(lab: dict) -> None:
    write_list(lab, "20-b.conflist", [{"type": "fake-b"}], name="b")
    (lab["conf"] / "10-a.conf").write_text(json.dumps(
        {"cniVersion": "0.4.0", "name": "a", "type": "fake-a", "bridge": "x"}))
    (lab["conf"] / "30-c.json").write_text(json.dumps({"cniVersion": "0.3.1", "name": "c", "type": "fake-c"}))
    (lab["conf"] / "00-ignored.txt").write_text("not a config")
    nets = load_conf_dir(str(lab["conf"]), 1)
    assert [n.name for n in nets] == ["a"]
    assert nets[0].plugins[0].conf["bridge"] == "x" and nets[0].cni_version == "0.4.0"
    assert json.loads(nets[0].source)["plugins"][0]["type"] == "fake-a"
    assert [n.name for n in load_conf_dir(str(lab["conf"]), 0)] == ["a", "b", "c"]
    cni = make_cni(lab, max_conf_num=2)
    assert [(n.name, n.ifname) for n in cni.networks()] == [
        ("cni-loopback", "lo"), ("a", "eth0"), ("b", "eth1")]
    assert cni.status() == (True, "")
    info = cni.config_info()
    assert [n["IFName"] for n in info["Networks"]] == ["lo", "eth0", "eth1"]


def test_not_ready_messages_and_reload(lab: dict) -> None:
    cni = make_cni(lab)
    assert cni.status() == (False, "cni plugin not initialized")
    assert cni.last_load_status == (f"cni config load failed: no network config found in {lab['conf']}: "
                                    "cni plugin not initialized")
    write_list(lab, "10-net.conflist", [{"type": "fake-a"}])
    assert cni.status() == (True, "")  # picked up without an explicit reload
    assert cni.last_load_status == "OK"
    bad = lab["conf"] / "05-bad.conf"
    bad.write_text("{not json")
    ready, reason = cni.status()
    assert not ready and reason == "cni plugin not initialized"
    assert "failed to load CNI config file" in cni.last_load_status and "05-bad.conf" in cni.last_load_status
    skipping = make_cni(lab, skip_invalid=True)
    assert skipping.status() == (True, "")
    bad.unlink()
    assert cni.status() == (True, "")


def test_versions_and_validation() -> None:
    with pytest.raises(ConfigError, match="unsupported CNI version"):
        conf_list_from_bytes(b'{"cniVersion": "2.0.0", "name": "n", "plugins": [{"type": "x"}]}')
    picked = conf_list_from_bytes(b'{"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "9.9.9"], '
                                  b'"name": "n", "plugins": [{"type": "x"}]}')
    assert picked.cni_version == "1.0.0"
    with pytest.raises(ConfigError, match="no networks"):
        conf_list_from_bytes(b'{"cniVersion": "1.0.0", "name": "n", "plugins": []}')
    with pytest.raises(ConfigError, match="network type not found"):
        conf_list_from_conf(b'{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x"}]}')
    with pytest.raises(ConfigError, match="plugin type"):
        conf_list_from_bytes(b'{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}')
    with pytest.raises(ConfigError, match="invalid network name"):
        conf_list_from_bytes(b'{"cniVersion": "1.0.0", "name": "-n", "plugins": [{"type": "x"}]}')


# -- execution ------------------------------------------------------------------------


async def test_add_chain_capabilities_env(lab: dict) -> None:
    write_list(lab, "10-net.conflist", [
        {"type": "fake-a", "capabilities": {"portMappings": True, "dns": False}, "result": RESULT_100},
        {"type": "fake-b", "capabilities": {"bandwidth": True, "dns": True}, "add_dns": {"search": ["s"]}},
    ], name="mynet")
    cni = make_cni(lab)
    caps = capability_args(port_mappings=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                                          {"hostPort": 0, "containerPort": 81, "protocol": "tcp"}],
                           bandwidth={"ingressRate": 1000}, annotations={"a": "b"})
    args = pod_args("sb1", namespace="ns", name="pod", uid="u1")
    res = await cni.setup("sb1", "/var/run/netns/x", args=args, capability_args=caps)

    log = calls(lab)  # networks are attached concurrently: lo may come anywhere
    lo = next(c for c in log if c["type"] == "loopback")
    a, b = (c for c in log if c["type"] != "loopback")
    assert [(c["type"], c["cmd"]) for c in (lo, a, b)] == [("loopback", "ADD"), ("fake-a", "ADD"),
                                                           ("fake-b", "ADD")]
    assert lo["env"]["CNI_IFNAME"] == "lo" and lo["stdin"]["cniVersion"] == "0.3.1"
    assert "runtimeConfig" not in lo["stdin"]
    assert a["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "sb1", "CNI_NETNS": "/var/run/netns/x",
                        "CNI_IFNAME": "eth0", "CNI_PATH": f"{lab['bin'] / 'missing'}:{lab['bin']}",
                        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;"
                                    "K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=u1"}
    assert a["stdin"]["name"] == "mynet" and a["stdin"]["cniVersion"] == "1.0.0"
    assert "prevResult" not in a["stdin"] and "capabilities" not in a["stdin"]
    assert a["stdin"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    assert b["stdin"]["runtimeConfig"] == {"bandwidth": {"ingressRate": 1000}}  # dns not given
    assert b["stdin"]["prevResult"] == dict(RESULT_100, cniVersion="1.0.0")

    ip, extra = res.pod_ips()
    assert (ip, extra) == ("10.1.0.5", ["fd00::5"])
    assert res.pod_ips("ipv6") == ("fd00::5", ["10.1.0.5"])
    assert res.interfaces["eth0"].mac == "99:88:77:66:55:44"
    assert res.dns[1].search == ("s",)  # the last plugin's output is the network's result
    assert res.routes[0].gw == "10.1.0.1"

    cached = json.loads((lab["cache"] / "results" / "mynet-sb1-eth0").read_text())
    assert cached["kind"] == "cniCacheV1" and cached["containerId"] == "sb1" and cached["ifName"] == "eth0"
    assert json.loads(base64.b64decode(cached["config"]))["name"] == "mynet"
    assert cached["cniArgs"][0] == ["IgnoreUnknown", "1"]
    assert cached["capabilityArgs"]["portMappings"][0]["hostPort"] == 8080
    assert cached["result"]["dns"] == {"search": ["s"]}
    assert oct(os.stat(lab["cache"] / "results" / "mynet-sb1-eth0").st_mode & 0o777) == "0o600"


async def test_del_reverse_prev_result_and_after_restart(lab: dict) -> None:
    conf = write_list(lab, "10-net.conflist", [{"type": "fake-a", "result": RESULT_100}, {"type": "fake-b"}],
                      name="mynet")
    cni = make_cni(lab)
    await cni.setup("sb2", "/ns", args=[("K8S_POD_NAME", "p")])
    lab["log"].unlink()
    conf.unlink()  # config gone, daemon restarted: DEL must come from the cache
    restarted = make_cni(lab)
    assert not restarted.status()[0]
    await restarted.teardown("sb2", "/ns")
    log = calls(lab)
    assert [(c["type"], c["cmd"]) for c in log] == [("fake-b", "DEL"), ("fake-a", "DEL"), ("loopback", "DEL")]
    assert log[0]["stdin"]["prevResult"] == dict(RESULT_100, cniVersion="1.0.0")
    assert log[0]["env"]["CNI_ARGS"] == "K8S_POD_NAME=p"  # args of the ADD
    assert "prevResult" not in log[2]["stdin"]  # 0.3.1: no prevResult on DEL
    assert restarted.cache.attachments("sb2") == []
    lab["log"].unlink()
    await restarted.teardown("sb2", "")  # nothing cached, nothing loaded: no-op
    assert [(c["type"], c["cmd"]) for c in calls(lab)] == [("loopback", "DEL")]  # the loaded lo network


async def test_check_and_disable_check(lab: dict) -> None:
    write_list(lab, "10-net.conflist", [{"type": "fake-a", "result": RESULT_100}, {"type": "fake-b"}])
    cni = make_cni(lab)
    with pytest.raises(CNIError, match="no cached result"):
        await cni.check("sb3", "/ns")
    await cni.setup("sb3", "/ns")
    lab["log"].unlink()
    await cni.check("sb3", "/ns")
    log = calls(lab)
    # not lo: 0.3.1 has no CHECK
    assert [(c["type"], c["cmd"]) for c in log] == [("fake-a", "CHECK"), ("fake-b", "CHECK")]
    assert log[1]["stdin"]["prevResult"]["ips"][1]["address"] == "10.1.0.5/16"
    write_list(lab, "10-net.conflist", [{"type": "fake-a", "result": RESULT_100}], disableCheck=True)
    lab["log"].unlink()
    await cni.check("sb3", "/ns")
    assert calls(lab) == []


async def test_plugin_errors_and_cleanup(lab: dict) -> None:
    write_list(lab, "10-net.conflist", [
        {"type": "fake-a", "result": RESULT_100},
        {"type": "fake-b",
         "fail": {"ADD": {"code": 7, "msg": "Invalid Configuration", "details": "too small"}}},
    ], name="errnet")
    cni = make_cni(lab)
    with pytest.raises(CNIError) as ei:
        await cni.setup("sb4", "/ns")
    e = ei.value
    assert (e.cni_code, e.msg, e.details, e.plugin, e.command) == (7, "Invalid Configuration", "too small",
                                                                   "fake-b", "ADD")
    assert str(e) == "plugin type='fake-b' failed (add): Invalid Configuration; too small"
    # the failed setup was undone: DEL of every network, cache empty
    dels = [(c["type"], c["cmd"]) for c in calls(lab) if c["cmd"] == "DEL"]
    assert dels == [("fake-b", "DEL"), ("fake-a", "DEL"), ("loopback", "DEL")]
    assert cni.cache.attachments("sb4") == []

    write_list(lab, "10-net.conflist", [{"type": "fake-a", "fail": {"ADD": "text"}}])
    with pytest.raises(CNIError, match="something broke"):
        await cni.setup("sb5", "/ns")
    write_list(lab, "10-net.conflist", [{"type": "nope"}])
    with pytest.raises(PluginNotFound, match="failed to find plugin 'nope'"):
        await cni.setup("sb6", "/ns")


async def test_del_failure_keeps_cache_for_retry(lab: dict) -> None:
    write_list(lab, "10-net.conflist", [{"type": "fake-a", "result": RESULT_100}], name="n")
    cni = make_cni(lab)
    await cni.setup("sb7", "/ns")
    write_list(lab, "10-net.conflist", [{"type": "fake-a", "fail": {"DEL": {"code": 11, "msg": "busy"}}}],
               name="n")
    # the cached config (from ADD) is what DEL runs, so the new failing config is not used
    await cni.teardown("sb7", "/ns")
    assert cni.cache.attachments("sb7") == []
    await cni.setup("sb8", "/ns")  # now added with the failing-DEL config
    with pytest.raises(CNIError, match="busy") as ei:
        await cni.teardown("sb8", "/ns")
    assert ei.value.cni_code == 11
    assert [a.network for a in cni.cache.attachments("sb8")] == ["n"]  # lo went, n kept for a retry


async def test_timeout(lab: dict) -> None:
    write_list(lab, "10-net.conflist", [{"type": "fake-a", "sleep": 30}])
    cni = make_cni(lab, timeout=0.5, loopback=False)
    t0 = time.monotonic()
    with pytest.raises(CNIError) as ei:
        await cni.setup("sb9", "/ns")
    assert ei.value.cni_code == -1 and "timed out" in str(ei.value)
    assert time.monotonic() - t0 < 10


async def test_not_initialized_and_validate(lab: dict) -> None:
    cni = make_cni(lab)
    with pytest.raises(NotInitialized, match="cni plugin not initialized"):
        await cni.setup("x", "/ns")
    write_list(lab, "10-net.conflist", [{"type": "fake-a"}], version="1.1.0")
    with pytest.raises(ConfigError, match=r"does not support config version '1\.1\.0'"):
        await cni.validate()
    write_list(lab, "10-net.conflist", [{"type": "fake-a"}], version="0.4.0")
    await cni.validate()


async def test_040_results(lab: dict) -> None:
    result_040 = convert_result(RESULT_100, "0.4.0")
    assert [ip["version"] for ip in result_040["ips"]] == ["6", "4"]
    write_list(lab, "10-net.conflist", [{"type": "fake-a", "result": result_040}, {"type": "fake-b"}],
               version="0.4.0")
    cni = make_cni(lab)
    res = await cni.setup("sb10", "/ns")
    assert res.pod_ips() == ("10.1.0.5", ["fd00::5"])
    b = next(c for c in calls(lab) if c["type"] == "fake-b")
    assert b["stdin"]["prevResult"]["cniVersion"] == "0.4.0"
    assert b["stdin"]["prevResult"]["ips"][0]["version"] == "6"
    lab["log"].unlink()
    await cni.teardown("sb10", "/ns")
    dels = calls(lab)
    assert dels[0]["stdin"]["prevResult"]["ips"][1]["version"] == "4"  # 0.4.0 has prevResult on DEL


# -- results ----------------------------------------------------------------------------


def test_parse_result_shapes() -> None:
    r = parse_result(dict(RESULT_100, cniVersion="1.0.0"))
    assert [i.name for i in r.interfaces] == ["cni0", "vethab", "eth0"]
    assert r.ips[1] == IPConfig("10.1.0.5/16", "10.1.0.1", 2) and r.ips[1].ip == "10.1.0.5"
    assert r.dns.nameservers == ("10.1.0.1",)
    assert [ip.address for ip in r.interface_ips("eth0")] == ["fd00::5/64", "10.1.0.5/16"]
    r040 = parse_result(convert_result(RESULT_100, "0.4.0"))
    assert r040.ips == r.ips and r040.cni_version == "0.4.0"
    r020 = parse_result({"cniVersion": "0.2.0", "ip4": {"ip": "10.2.0.3/24", "gateway": "10.2.0.1",
                                                        "routes": [{"dst": "0.0.0.0/0"}]}})
    assert r020.ips == (IPConfig("10.2.0.3/24", "10.2.0.1", None),) and r020.routes[0].dst == "0.0.0.0/0"
    assert r020.interface_ips("eth0") == list(r020.ips)
    down = convert_result(RESULT_100, "0.2.0")
    assert down["ip4"]["ip"] == "10.1.0.5/16" and down["ip6"]["ip"] == "fd00::5/64"
    with pytest.raises(ConfigError, match="interface number 5"):
        parse_result({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/8", "interface": 5}]})
    with pytest.raises(ConfigError, match="CIDR"):
        parse_result({"cniVersion": "1.0.0", "ips": [{"address": "banana"}]})


def test_select_pod_ips() -> None:
    v6, v4a, v4b = IPConfig("fd00::1/64"), IPConfig("10.0.0.1/8"), IPConfig("10.0.0.2/8")
    assert select_pod_ips([]) == ("", [])
    assert select_pod_ips([v6]) == ("fd00::1", [])
    assert select_pod_ips([v6, v4a, v4b]) == ("10.0.0.1", ["fd00::1", "10.0.0.2"])
    assert select_pod_ips([v4a, v6], "ipv6") == ("fd00::1", ["10.0.0.1"])
    assert select_pod_ips([v6, v4a], "cni") == ("fd00::1", ["10.0.0.1"])
    assert select_pod_ips([v6, v6], "ipv4") == ("fd00::1", ["fd00::1"])
