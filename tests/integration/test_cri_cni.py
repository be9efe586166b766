"""CNI with the real plugins (Debian's containernetworking-plugins in /usr/lib/cni), as root.

A bridge + host-local + portmap network list on 10.88.213.0/24 and a bridge name
used only here; host-local keeps its leases in the test's temp dir. Checks a pod
namespace gets eth0 with an address in range and a default route, the host a
veth on the bridge; CHECK passes; DEL removes the interface and the lease; the
namespace pin goes away. Teardown removes the bridge, leases and any iptables
rule naming the test's container id, whatever happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiocontainerd.cri import netns
from aiocontainerd.cri.cni import CNI, CNIError, RuntimeConf, capability_args, pod_args

pytestmark = pytest.mark.integration

PLUGIN_DIR = "/usr/lib/cni"
SUBNET = "10.88.213.0/24"


def need_env() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, bridges)")
    for plugin in ("bridge", "host-local", "portmap", "loopback"):
        if not os.access(os.path.join(PLUGIN_DIR, plugin), os.X_OK):
            pytest.skip(f"CNI plugin {plugin} missing from {PLUGIN_DIR} (containernetworking-plugins)")
    if shutil.which("iptables") is None:
        pytest.skip("iptables missing (portmap needs it)")
    if not os.path.exists("/proc/self/ns/net"):
        pytest.skip("kernel without network namespaces")


def iptables_cleanup(marker: str) -> None:
    """Delete every rule (nat and filter) whose text names ``marker``, then the
    per-container chains portmap made for it (CNI-DN-<hash>, named in those rules)."""
    for table in ("nat", "filter"):
        out = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True).stdout
        chains = set()
        for line in out.splitlines():
            if marker in line and line.startswith("-A "):
                parts = shlex.split(line)
                chains.update(p for p in parts if p.startswith("CNI-DN-"))
                subprocess.run(["iptables", "-t", table, "-D", *parts[1:]], capture_output=True)
        for chain in chains:
            subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True)
            subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict]:
    need_env()
    tag = uuid.uuid4().hex[:8]
    bridge = f"aiocni{tag}"[:15]
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    leases = tmp_path / "leases"
    netns_dir = tmp_path / "netns"
    conf = {
        "cniVersion": "1.0.0", "name": f"aioc-cni-test-{tag}",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(leases)}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (conf_dir / "10-test.conflist").write_text(json.dumps(conf))
    state = {"tag": tag, "bridge": bridge, "conf_dir": conf_dir, "leases": leases,
             "netns_dir": netns_dir, "cache": tmp_path / "cache", "id": f"aioccni{tag}", "netns": []}
    try:
        yield state
    finally:
        for path in state["netns"]:
            netns.remove_sync(path)
        iptables_cleanup(state["id"])
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(leases, ignore_errors=True)


def ip_json(*args: str, ns: str | None = None) -> list[dict]:
    cmd = ["ip", "-j", *args]
    if ns:
        cmd = ["nsenter", f"--net={ns}", *cmd]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout or "[]")


async def test_netns_create_remove(tmp_path: Path) -> None:
    need_env()
    base = tmp_path / "netns"
    path = await netns.create(str(base))
    try:
        assert path.startswith(str(base) + "/cni-")
        assert netns.exists(path)
        links = ip_json("link", "show", ns=path)
        assert [link["ifname"] for link in links] == ["lo"]
        assert "UP" in links[0]["flags"]
        from pyroute2 import IPRoute

        def names() -> list[str]:
            with IPRoute() as ipr:
                return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]

        assert await netns.run_in(path, names) == ["lo"]
    finally:
        await netns.remove(path)
    assert not netns.exists(path)
    assert not os.path.exists(path)
    await netns.remove(path)  # idempotent
    assert os.listdir(base) == []


async def test_bridge_add_check_del(env: dict) -> None:
    cni = CNI(conf_dir=str(env["conf_dir"]), bin_dirs=[PLUGIN_DIR], cache_dir=str(env["cache"]), timeout=60)
    assert cni.status() == (True, "")
    path = await netns.create(str(env["netns_dir"]), loopback_up=False)
    env["netns"].append(path)
    cid = env["id"]
    args = pod_args(cid, namespace="default", name="web", uid=str(uuid.uuid4()))
    caps = capability_args(port_mappings=[{"hostPort": 18213, "containerPort": 80, "protocol": "tcp"}])

    res = await cni.setup(cid, path, args=args, capability_args=caps)
    ip, extra = res.pod_ips()
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SUBNET)
    assert extra == []
    assert res.interfaces["eth0"].sandbox == path
    assert res.interfaces["lo"].ip_configs  # loopback network attached too

    addrs = ip_json("addr", "show", "eth0", ns=path)
    assert any(a["local"] == ip for a in addrs[0]["addr_info"])
    lo = ip_json("link", "show", "lo", ns=path)[0]
    assert "UP" in lo["flags"]
    routes = ip_json("route", "show", "default", ns=path)
    assert routes and routes[0]["gateway"] == "10.88.213.1"
    host_ports = ip_json("link", "show", "master", env["bridge"])
    assert len(host_ports) == 1 and host_ports[0]["ifname"].startswith("veth")
    lease_files = list((env["leases"] / res.results[1][0]).glob("10.88.213.*"))
    assert [f.name for f in lease_files] == [ip]
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert "18213" in nat and cid in nat

    try:
        await cni.check(cid, path)
    except CNIError as e:
        # containernetworking/plugins#819 (fixed after Debian's 1.1.1): portmap's CHECK
        # looks for ip6tables rules of an IPv4-only attachment
        assert e.plugin == "portmap" and "ipv6" in str(e), e
    # CHECK of the bridge alone (same network name, so the same cached result) passes
    net = cni.networks()[1]
    bridge_only = dataclasses.replace(net.config, plugins=net.config.plugins[:1])
    await cni.check_network(bridge_only, RuntimeConf(cid, path, "eth0", tuple(args)))

    await cni.teardown(cid, path)
    assert ip_json("link", "show", ns=path) and [
        link["ifname"] for link in ip_json("link", "show", ns=path)] == ["lo"]
    assert ip_json("link", "show", "master", env["bridge"]) == []
    assert not list((env["leases"] / res.results[1][0]).glob("10.88.213.*"))
    nat = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert cid not in nat
    assert cni.cache.attachments(cid) == []
    await cni.teardown(cid, path)  # idempotent

    await netns.remove(path)
    env["netns"].remove(path)
    assert os.listdir(env["netns_dir"]) == []


async def test_del_after_restart_and_netns_gone(env: dict) -> None:
    """A fresh CNI object (daemon restart) with the conf dir emptied still DELs the
    attachment from the cache, even after the namespace is gone."""
    cni = CNI(conf_dir=str(env["conf_dir"]), bin_dirs=[PLUGIN_DIR], cache_dir=str(env["cache"]))
    path = await netns.create(str(env["netns_dir"]))
    env["netns"].append(path)
    cid = env["id"]
    res = await cni.setup(cid, path, args=pod_args(cid, namespace="ns", name="p", uid="u"))
    ip, _ = res.pod_ips()
    for f in env["conf_dir"].iterdir():
        f.unlink()
    restarted = CNI(conf_dir=str(env["conf_dir"]), bin_dirs=[PLUGIN_DIR], cache_dir=str(env["cache"]))
    assert restarted.status() == (False, "cni plugin not initialized")
    assert "no network config found in" in restarted.last_load_status
    await netns.remove(path)
    env["netns"].remove(path)
    await restarted.teardown(cid, "")
    assert restarted.cache.attachments(cid) == []
    assert not list(env["leases"].glob(f"*/{ip}"))
    # the veth dies with the namespace, which the kernel tears down asynchronously
    for _ in range(200):
        if not ip_json("link", "show", "master", env["bridge"]):
            break
        await asyncio.sleep(0.05)
    assert ip_json("link", "show", "master", env["bridge"]) == []
