"""Helpers for the CRI tests and benchmarks: images to pull, registry mirrors, a CNI bridge network,
CRI configuration for our daemon and for containerd 1.6, and the cri-tools binaries.

Images. critest pulls fixed names under ``registry.k8s.io`` and ``gcr.io/k8s-staging-cri-tools``.
On a developer machine they are built once, outside the repo, by
``/work/shared/critest-images/build.sh`` into a registry storage folder (``CRI_TOOLS`` =
``/work/tools`` by default, storage ``$CRI_TOOLS/registry/data``). ``CRIImages`` serves that storage
with a registry of its own, or — in CI, where that folder does not exist — pushes a minimal set the
suite builds itself (``pause_image()``: a static pause program compiled with gcc, or busybox
``sleep`` without gcc; ``busybox_image()`` from busybox-static) under the same names::

    async with CRIImages() as images:                      # images.host = "127.0.0.1:PORT"
        hosts_dir = write_hosts_dir(tmp / "certs.d", images.host)
        net = write_cni_conflist(tmp / "net.d")
        toml = cri_config(hosts_dir=hosts_dir, cni=net, stream_port=free_port())
        ...
        net.cleanup()

``registry.k8s.io`` and ``gcr.io`` are mirrored to the loopback registry through a ``hosts.toml``
folder (containerd's ``registry.config_path``): ``registry.k8s.io/X`` → ``http://HOST/v2/X``,
``gcr.io/k8s-staging-cri-tools/X`` → ``http://HOST/v2/k8s-staging-cri-tools/X``.

The CNI network is a ``bridge`` + ``portmap`` conflist on a private /24 that no route of the host
uses, with its own bridge name and host-local lease folder, so two tests never share one.

``cri_setup(base)`` does all three at once. containerd 1.6 with CRI on (benchmarks, comparisons) is
``containerd_cri_process(base, setup.containerd16())``. crictl/critest (built outside the repo by
``/work/tools/build-cri-tools.sh``; absent in CI) are found by ``crictl()``/``critest()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.lifecycle import StartStop

if TYPE_CHECKING:
    from tests.conftest import DaemonProcess

# -- where things are -------------------------------------------------------------------------------
CRI_TOOLS = Path(os.environ.get("CRI_TOOLS", "/work/tools"))   # outside the repo; absent in CI
CRITEST_REGISTRY_STORAGE = CRI_TOOLS / "registry" / "data"      # build.sh's pushes land here
PAUSE_TAG = "3.10"                                              # the tag build.sh pushes
SANDBOX_IMAGE = f"registry.k8s.io/pause:{PAUSE_TAG}"
BUSYBOX_IMAGE = "registry.k8s.io/e2e-test-images/busybox:1.29-2"   # critest's default test image
MIRRORED_HOSTS = ("registry.k8s.io", "gcr.io")
CNI_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")                 # upstream default, Debian's package
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")   # what write_cni_conflist needs
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
RUNC_RUNTIME = "io.containerd.runc.v2"
PAUSE_SOURCE = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction stop = {0}, child = {0};
    stop.sa_handler = quit;
    child.sa_handler = reap;
    child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGINT, &stop, NULL);
    sigaction(SIGTERM, &stop, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
"""


def tool(name: str) -> Path | None:
    """``crictl``/``critest`` built by ``/work/tools/build-cri-tools.sh`` (``$CRI_TOOLS/bin``), or
    one on ``$PATH``; None if neither exists."""
    built = CRI_TOOLS / "bin" / name
    if os.access(built, os.X_OK):
        return built
    found = shutil.which(name)
    return Path(found) if found else None


def crictl() -> Path | None:
    return tool("crictl")


def critest() -> Path | None:
    return tool("critest")


def critest_images_available(storage: Path = CRITEST_REGISTRY_STORAGE) -> bool:
    """Whether build.sh's images (the pause image at least) are in ``storage``."""
    return (storage / "docker/registry/v2/repositories/pause/_manifests/tags" / PAUSE_TAG).is_dir()


def cni_bin_dir(dirs: Sequence[str] = CNI_BIN_DIRS, plugins: Sequence[str] = CNI_PLUGINS) -> str | None:
    """The first of ``dirs`` holding every one of ``plugins``, or None
    (``apt-get install containernetworking-plugins`` puts them in /usr/lib/cni)."""
    for d in dirs:
        if all(os.access(os.path.join(d, p), os.X_OK) for p in plugins):
            return d
    return None


def cri_unusable() -> str | None:
    """Why a CRI integration test cannot run here, or None."""
    if os.geteuid() != 0:
        return "CRI tests need root (network namespaces, mounts, cgroups)"
    if cni_bin_dir() is None:
        return f"CNI plugins {', '.join(CNI_PLUGINS)} not found in {' or '.join(CNI_BIN_DIRS)} " \
               "(apt-get install containernetworking-plugins)"
    if shutil.which("runc") is None:
        return "runc is missing (apt-get install runc)"
    return None


def _toml(value: object) -> str:
    """A TOML value for str/bool/int/float/list (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _table(header: str, values: Mapping[str, object]) -> str:
    lines = [f"[{header}]"]
    lines += [f"  {k} = {_toml(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- registry mirrors -------------------------------------------------------------------------------
def write_hosts_dir(folder: Path | str, registry_host: str, hosts: Iterable[str] = MIRRORED_HOSTS,
                    *, scheme: str = "http") -> Path:
    """containerd's ``hosts.toml`` folder (``registry.config_path``): for each of ``hosts`` a
    ``<host>/hosts.toml`` sending pulls and resolves to ``scheme://registry_host`` first; upstream
    stays the ``server`` (unreachable offline, which is fine: the mirror answers). Returns ``folder``."""
    folder = Path(folder)
    for host in hosts:
        d = folder / host
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(
            f"server = {json.dumps('https://' + host)}\n\n"
            f"[host.{json.dumps(f'{scheme}://{registry_host}')}]\n"
            '  capabilities = ["pull", "resolve"]\n')
    return folder


# -- CNI --------------------------------------------------------------------------------------------
def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out: list[ipaddress.IPv4Network] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/route").read_text().splitlines()[1:]:
            f = line.split()
            dest, mask = (ipaddress.IPv4Address(bytes.fromhex(f[i])[::-1]) for i in (1, 7))
            if int(mask):      # skip the default route
                out.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=5).stdout
        for line in text.splitlines():
            parts = line.split()
            if "inet" in parts:
                out.append(ipaddress.IPv4Interface(parts[parts.index("inet") + 1]).network)
    return out


def private_subnet() -> str:
    """A random ``10.x.y.0/24`` (x in 200..249) that overlaps no route or address of the host."""
    used = _used_ipv4_networks()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise RuntimeError("no free private /24 found")


@dataclass
class CNINetwork:
    """A written CNI conflist; ``cleanup()`` removes the bridge link and the lease folder."""

    name: str
    bridge: str
    subnet: str
    conf_dir: Path
    data_dir: Path
    bin_dir: str
    conflist: dict[str, Any] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))

    @property
    def path(self) -> Path:
        return self.conf_dir / f"10-{self.name}.conflist"

    def leases(self) -> list[str]:
        """IPs host-local still holds (a leak if any remain after every pod is gone)."""
        d = self.data_dir / self.name
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir()
                      if p.name[:1].isdigit() and not p.name.startswith("last_reserved_ip"))

    def cleanup(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def write_cni_conflist(conf_dir: Path | str, *, subnet: str | None = None, name: str | None = None,
                       bridge: str | None = None, data_dir: Path | str | None = None,
                       bin_dir: str | None = None, cni_version: str = "1.0.0",
                       portmap: bool = True, ip_masq: bool = False) -> CNINetwork:
    """Write ``<conf_dir>/10-<name>.conflist``: a ``bridge`` (gateway, hairpin, host-local IPAM
    on ``subnet`` — by default a free ``private_subnet()`` — with leases in ``data_dir``) and,
    with ``portmap``, a ``portmap`` plugin taking the ``portMappings`` capability. No masquerade
    by default (tests stay on the host). Names are random so parallel tests never collide."""
    token = secrets.token_hex(4)
    conf = Path(conf_dir)
    conf.mkdir(parents=True, exist_ok=True)
    net = CNINetwork(
        name=name or f"aioc-{token}", bridge=bridge or f"aioc{token}", subnet=subnet or private_subnet(),
        conf_dir=conf, data_dir=Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="aioc-cni-")),
        bin_dir=bin_dir or cni_bin_dir() or CNI_BIN_DIRS[-1])
    if len(net.bridge) > 15:
        raise ValueError(f"bridge name {net.bridge!r} is longer than 15 characters")
    plugins: list[dict[str, Any]] = [{
        "type": "bridge", "bridge": net.bridge, "isGateway": True, "ipMasq": ip_masq,
        "hairpinMode": True,
        "ipam": {"type": "host-local", "dataDir": str(net.data_dir),
                 "ranges": [[{"subnet": net.subnet, "gateway": net.gateway}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    net.conflist = {"cniVersion": cni_version, "name": net.name, "plugins": plugins}
    net.path.write_text(json.dumps(net.conflist, indent=2) + "\n")
    return net


# -- CRI configuration --------------------------------------------------------------------------------
def cri_config(*, hosts_dir: Path | str | None = None, cni: CNINetwork | None = None,
               cni_conf_dir: Path | str | None = None, cni_bin_dirs: Sequence[str] | None = None,
               sandbox_image: str = SANDBOX_IMAGE, stream_port: int = 0,
               runtime_type: str = RUNC_RUNTIME, runtime_options: Mapping[str, object] | None = None,
               restrict_oom_score_adj: bool = True, extra: Mapping[str, object] | None = None) -> str:
    """Our daemon's ``[plugins."io.containerd.grpc.v1.cri"]`` section (containerd's CRI key layout,
    as ``aiocontainerd.cri.config`` reads it): sandbox image, ``registry.config_path`` = the
    hosts.toml folder, CNI conf/bin dirs (from ``cni`` unless given), a loopback streaming server
    on ``stream_port`` (0: any), the default runtime ``runc`` of ``runtime_type`` (our shim serves
    ``io.containerd.runc.v2``), and ``restrict_oom_score_adj`` (this kind of machine lacks
    CAP_SYS_RESOURCE). ``extra`` adds top-level keys of the section."""
    p = f'plugins."{CRI_PLUGIN}"'
    conf_dir = str(cni_conf_dir if cni_conf_dir is not None else (cni.conf_dir if cni else "/etc/cni/net.d"))
    bins = list(cni_bin_dirs if cni_bin_dirs is not None else ([cni.bin_dir] if cni else CNI_BIN_DIRS))
    top: dict[str, object] = {
        "sandbox_image": sandbox_image, "stream_server_address": "127.0.0.1",
        "stream_server_port": str(stream_port), "restrict_oom_score_adj": restrict_oom_score_adj,
        "enable_selinux": False, **(extra or {})}
    out = _table(p, top)
    out += _table(f"{p}.containerd", {"default_runtime_name": "runc"})
    out += _table(f"{p}.containerd.runtimes.runc", {"runtime_type": runtime_type})
    if runtime_options:
        out += _table(f"{p}.containerd.runtimes.runc.options", runtime_options)
    out += _table(f"{p}.cni", {"bin_dirs": bins, "conf_dir": conf_dir, "max_conf_num": 1})
    if hosts_dir is not None:
        out += _table(f"{p}.registry", {"config_path": str(hosts_dir)})
    return out


def containerd16_cri_config(*, hosts_dir: Path | str | None = None, cni: CNINetwork | None = None,
                            cni_conf_dir: Path | str | None = None, bin_dir: str | None = None,
                            sandbox_image: str = SANDBOX_IMAGE, stream_port: int | None = None,
                            snapshotter: str = "overlayfs", restrict_oom_score_adj: bool = True) -> str:
    """The same for containerd 1.6 (config version 2 layout: ``cni.bin_dir`` is one folder,
    runc options ``SystemdCgroup``; the streaming port must be a real one — 1.6 puts the configured
    port in the URLs it returns, so ``None`` picks a free port now)."""
    p = f'plugins."{CRI_PLUGIN}"'
    conf_dir = str(cni_conf_dir if cni_conf_dir is not None else (cni.conf_dir if cni else "/etc/cni/net.d"))
    bin_dir = bin_dir or (cni.bin_dir if cni else None) or cni_bin_dir() or "/usr/lib/cni"
    out = _table(p, {
        "sandbox_image": sandbox_image, "stream_server_address": "127.0.0.1",
        "stream_server_port": str(stream_port if stream_port else free_port()),
        "restrict_oom_score_adj": restrict_oom_score_adj, "enable_selinux": False})
    out += _table(f"{p}.containerd", {"snapshotter": snapshotter, "default_runtime_name": "runc"})
    out += _table(f"{p}.containerd.runtimes.runc", {"runtime_type": RUNC_RUNTIME})
    out += _table(f"{p}.containerd.runtimes.runc.options", {"SystemdCgroup": False})
    out += _table(f"{p}.cni", {"bin_dir": bin_dir, "conf_dir": conf_dir, "max_conf_num": 1})
    if hosts_dir is not None:
        out += _table(f"{p}.registry", {"config_path": str(hosts_dir)})
    return out


def containerd16_config(base: Path | str, cri: str, *, address: str | None = None) -> str:
    """A whole containerd 1.6 config file (version 2) on ``base`` (root/, state/, state/c.sock,
    opt/) with the CRI section ``cri`` (from ``containerd16_cri_config``)."""
    base = Path(base)
    return ("version = 2\n"
            f"root = {_toml(str(base / 'root'))}\n"
            f"state = {_toml(str(base / 'state'))}\n"
            + _table("grpc", {"address": address or str(base / "state" / "c.sock")})
            + _table('plugins."io.containerd.internal.v1.opt"', {"path": str(base / "opt")})
            + cri)


def containerd_cri_process(base: Path, cri: str, *, path: Sequence[Path | str] = ()) -> Any:
    """``tests.support.runtime.ContainerdProcess`` on ``base`` with CRI on, configured by the
    section ``cri`` (``containerd16_cri_config``); its ``address`` serves both the containerd API
    and CRI. Call ``start()``/``stop()`` as usual."""
    from tests.support.runtime import ContainerdProcess

    d = ContainerdProcess(base, path=path)
    d.config_path.write_text(containerd16_config(base, cri, address=d.address))
    return d


# -- images -----------------------------------------------------------------------------------------
@cache
def _pause_binary() -> bytes | None:
    """PAUSE_SOURCE compiled static with gcc, or None without gcc/static libc."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    with tempfile.TemporaryDirectory(prefix="aioc-pause-") as d:
        src, out = Path(d, "pause.c"), Path(d, "pause")
        src.write_text(PAUSE_SOURCE)
        r = subprocess.run([gcc, "-static", "-O2", "-s", "-o", str(out), str(src)],
                           capture_output=True, timeout=120)
        return out.read_bytes() if r.returncode == 0 else None


def pause_image() -> Any:
    """A one-layer sandbox image: ``/pause`` (static, exits on SIGTERM/SIGINT, reaps children) run
    as 65535:65535 — or, without gcc, busybox with ``sleep infinity`` as its entrypoint."""
    from tests.support import images as im

    binary = _pause_binary()
    if binary is None:
        base = im.busybox_image()
        return im.make_image(base.layers, base.diff_ids, container_config={
            "Entrypoint": ["/bin/sleep", "infinity"], "Cmd": None})
    entries = [("pause", im.Entry("file", 0o755, binary))]
    tar = im.make_tar(entries)
    layer = im.Blob.of(im.OCI_LAYER_GZIP, im.compress(tar, "gzip"))
    return im.make_image([layer], [im.sha256_digest(tar)], container_config={
        "Entrypoint": ["/pause"], "Cmd": None, "User": "65535:65535", "Env": [im.PATH_ENV]})


def minimal_images() -> dict[str, Any]:
    """What ``CRIImages`` pushes when the critest images are not available: the sandbox image
    and critest's default busybox, under their critest names."""
    from tests.support.images import busybox_image

    return {f"pause:{PAUSE_TAG}": pause_image(), "e2e-test-images/busybox:1.29-2": busybox_image()}


class CRIImages(StartStop):
    """A loopback registry serving CRI test images; ``host`` is ``127.0.0.1:PORT``.

    With build.sh's storage present (``critest_images_available()``, or ``storage`` given), a
    registry of its own serves it read-mostly (nothing is pushed); otherwise an empty registry
    gets ``minimal_images()`` (``critest = False`` then: critest cannot run on it). Mirror
    ``registry.k8s.io`` and ``gcr.io`` to it with ``write_hosts_dir(folder, images.host)``."""

    def __init__(self, *, storage: Path | str | None = None, use_critest_images: bool = True) -> None:
        given = Path(storage) if storage is not None else None
        if given is None and use_critest_images and critest_images_available():
            given = CRITEST_REGISTRY_STORAGE
        self.storage = given
        self.critest = given is not None and critest_images_available(given)
        self.registry: Any = None
        self._root: Path | None = None

    @property
    def host(self) -> str:
        return str(self.registry.host)

    async def start(self) -> None:
        from tests.support.images import push
        from tests.support.registry import Registry

        self._root = Path(tempfile.mkdtemp(prefix="aioc-cri-registry-"))
        if self.storage is not None:
            (self._root / "data").symlink_to(self.storage)
        self.registry = Registry(self._root)
        await self.registry.start()
        if self.storage is None:
            for name, image in minimal_images().items():
                repo, _, tag = name.rpartition(":")
                await push(self.registry.host, repo, tag, image)

    async def stop(self) -> None:
        if self.registry is not None:
            await self.registry.stop()
            self.registry = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)   # removes the symlink, not the storage
            self._root = None


# -- everything at once -----------------------------------------------------------------------------
@dataclass
class CRISetup:
    """Images served on loopback, a hosts.toml folder mirroring to them and a CNI network, all
    under ``base``; ``ours()``/``containerd16()`` give each daemon's CRI section for them."""

    base: Path
    images: CRIImages
    hosts_dir: Path
    cni: CNINetwork

    def ours(self, **kwargs: Any) -> str:
        """``cri_config`` for this setup (keyword arguments passed on)."""
        return cri_config(hosts_dir=self.hosts_dir, cni=self.cni, **kwargs)

    def containerd16(self, **kwargs: Any) -> str:
        """``containerd16_cri_config`` for this setup (keyword arguments passed on)."""
        return containerd16_cri_config(hosts_dir=self.hosts_dir, cni=self.cni, **kwargs)


@contextlib.asynccontextmanager
async def cri_setup(base: Path | str, *, use_critest_images: bool = True,
                    subnet: str | None = None) -> AsyncIterator[CRISetup]:
    """``CRIImages`` + ``write_hosts_dir(base/"certs.d")`` + ``write_cni_conflist(base/"net.d",
    leases in base/"cni")``; on exit the registry stops and the bridge and leases are removed::

        async with cri_setup(short_tmp()) as s:
            cfg.write_text("version = 3\n" + s.ours(stream_port=free_port()))
    """
    base = Path(base)
    async with CRIImages(use_critest_images=use_critest_images) as images:
        net = write_cni_conflist(base / "net.d", data_dir=base / "cni", subnet=subnet)
        try:
            yield CRISetup(base, images, write_hosts_dir(base / "certs.d", images.host), net)
        finally:
            net.cleanup()


def need_cri() -> None:
    """Skip the calling test unless ``cri_unusable()`` is None."""
    import pytest

    reason = cri_unusable()
    if reason is not None:
        pytest.skip(reason)


@contextlib.asynccontextmanager
async def cri_daemon(base: Path) -> AsyncIterator[tuple[CRISetup, DaemonProcess]]:
    """``need_cri()``, then ``cri_setup(base/"cri")`` and our daemon (a real process on ``base``)
    started with a ``base/config.toml`` of ``setup.ours()``; stopped on exit if still running."""
    import asyncio

    from tests.conftest import DaemonProcess

    need_cri()
    async with cri_setup(base / "cri") as setup:
        config = base / "config.toml"
        config.write_text("version = 3\n" + setup.ours())
        daemon = DaemonProcess(base, "--config", str(config))
        await asyncio.to_thread(daemon.start, 60)
        try:
            yield setup, daemon
        finally:
            if daemon.proc is not None:
                daemon.stop()


# -- critest ------------------------------------------------------------------------------------------
def critest_argv(address: str, *, benchmark: bool = False, focus: str | None = None,
                 skip: str | None = None, report_dir: Path | str | None = None,
                 extra: Sequence[str] = ()) -> list[str]:
    """critest's command line against the CRI socket ``address`` (path or ``unix://``), verbose,
    serial (critest's default of one node; an explicit ``--parallel`` trips a ginkgo check);
    ``report_dir`` gets ginkgo's JUnit report (``junit.xml``)."""
    binary = critest()
    if binary is None:
        raise FileNotFoundError("critest is not built (/work/tools/build-cri-tools.sh)")
    endpoint = address if "://" in address else f"unix://{address}"
    argv = [str(binary), f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}",
            "--ginkgo.no-color"]
    # -benchmark turns on --ginkgo.succinct, which ginkgo refuses together with -v
    argv.append("--benchmark" if benchmark else "--ginkgo.v")
    if focus:
        argv.append(f"--ginkgo.focus={focus}")
    if skip:
        argv.append(f"--ginkgo.skip={skip}")
    if report_dir is not None:
        argv += [f"--report-dir={report_dir}", "--ginkgo.junit-report=junit.xml"]
    return [*argv, *extra]


def crictl_argv(address: str, *args: str, timeout: str = "30s") -> list[str]:
    """``crictl`` against ``address`` (no config file read)."""
    binary = crictl()
    if binary is None:
        raise FileNotFoundError("crictl is not built (/work/tools/build-cri-tools.sh)")
    endpoint = address if "://" in address else f"unix://{address}"
    return [str(binary), "--config", "/dev/null", "--runtime-endpoint", endpoint,
            "--image-endpoint", endpoint, "--timeout", timeout, *args]


__all__ = [
    "BUSYBOX_IMAGE",
    "CNI_BIN_DIRS",
    "CRI_TOOLS",
    "MIRRORED_HOSTS",
    "PAUSE_TAG",
    "SANDBOX_IMAGE",
    "CNINetwork",
    "CRIImages",
    "CRISetup",
    "cni_bin_dir",
    "containerd16_config",
    "containerd16_cri_config",
    "containerd_cri_process",
    "cri_config",
    "cri_setup",
    "cri_unusable",
    "crictl",
    "crictl_argv",
    "critest",
    "critest_argv",
    "critest_images_available",
    "free_port",
    "minimal_images",
    "need_cri",
    "pause_image",
    "private_subnet",
    "write_cni_conflist",
    "write_hosts_dir",
]
