"""CRI benchmarks: our CRI plugin against containerd 1.6's, same client, same images, one run.

Both daemons run with their CRI plugin on (``python -m tests.bench --only CRI``), configured by
:mod:`tests.support.cri` (``cri_config`` for ours, ``containerd16_cri_config`` for containerd),
and are driven by the same client: the generated grpclib CRI client
(``aiocontainerd.api.runtime.v1`` RuntimeServiceStub / ImageServiceStub) on the daemon's socket.

The session fixture (:data:`~tests.bench.fixtures.CRI_SETUP`, :func:`cri_fixture`): a loopback
registry holding the images the suite builds itself (``minimal_images()``: the pause image
``registry.k8s.io/pause:3.10`` and busybox ``registry.k8s.io/e2e-test-images/busybox:1.29-2``),
a ``hosts.toml`` folder mirroring ``registry.k8s.io`` to it, and one private CNI bridge network per
daemon (bridge + host-local on a free 10.x.y.0/24 + portmap), torn down at the end. Runs of the
group ``cri`` get a CRI section in their config (``daemons.CRI_SECTIONS``); every run is a fresh
daemon whose images are pulled with PullImage before any clock starts.

One group (``cri``), in order, per daemon start:

* idle: the daemon's VmRSS 1 s after it answered Version (CRI plugin loaded, nothing pulled);
* lifecycle: LIFECYCLE times, one after the other, the kubelet sequence on one pod:
  RunPodSandbox, CreateContainer (busybox ``top``, as critest's benchmark), StartContainer,
  StopContainer (timeout 60 s; ``top`` exits on SIGTERM), RemoveContainer, StopPodSandbox,
  RemovePodSandbox — each call timed on its own; rows: median and p99 of the LIFECYCLE samples
  of each call per daemon start (table: median over the starts; p99 of 50 by nearest rank is
  the slowest sample, usually the first pod of the daemon's life, shown in a row of its own);
* scale: PODS pods each with one running container (started untimed, PARALLEL at a time), 1 s
  to settle, then LIST_CALLS ListPodSandbox and LIST_CALLS ListContainers calls (median and p99),
  then as many of each whose reply this client leaves undecoded ("wire only": the daemon's
  answer and the transport, without the Python decode that is ~90% of the decoded row and
  grows with the reply's size; a Go client such as kubelet decodes in a few per cent of it;
  the reply's size in bytes is a row too),
  then the daemon's VmRSS and PSS and the total VmRSS and PSS of its shim processes (our fork
  server included; containerd: one containerd-shim-runc-v2 per pod); everything is stopped and
  removed afterwards (untimed) and the bridge's host-local leases are checked to be released.

Pods carry a log directory and containers a log path (as kubelet sets them). Every pod the
scenario made is stopped and removed before it returns, even when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.encoding.proto import ProtoCodec

from aiocontainerd.api.runtime import v1 as api

from . import daemons
from .daemons import DaemonError, Running, rss_mb
from .fixtures import CRI_SETUP, FixtureError, FixtureMissing, Fixtures

if TYPE_CHECKING:
    from .scenarios import Scenario

# tests.bench.scenarios imports this module to list its rows: names of that module are imported
# where they are used, so that either module can be imported first

LIFECYCLE = 50      # pods run through the whole lifecycle per daemon start
PODS = 100          # pods (one container each) running for the list and memory rows
LIST_CALLS = 100    # ListPodSandbox / ListContainers calls with PODS pods running
PARALLEL = 4        # pods started / removed at once around the scale measurements (untimed)
SETTLE = 1.0        # seconds after the last start before listing and reading memory
RPC_TIMEOUT = 120.0
STOP_TIMEOUT = 60   # StopContainer timeout (as critest's DefaultStopContainerTimeout)
MIB = 1 << 20
OPS = ("RunPodSandbox", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
       "StopPodSandbox", "RemovePodSandbox")
LISTS = ("ListPodSandbox", "ListContainers")
WIRE_LISTS = tuple(f"{name} wire" for name in LISTS)
KINDS = ("aiocontainerd", "containerd")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the session fixture ------------------------------------------------------------------------
@dataclasses.dataclass
class CRIFixture:
    """The registry, mirrors and per-daemon CNI networks of a series."""

    images: Any            # tests.support.cri.CRIImages
    host: str              # its registry, 127.0.0.1:PORT
    hosts_dir: Path
    networks: dict[str, Any]   # kind name -> tests.support.cri.CNINetwork
    sandbox_image: str
    image: str

    def section(self, kind: str, run_folder: Path) -> str:
        """The CRI config section of ``kind`` for a run in ``run_folder``."""
        from tests.support import cri as support

        net = self.networks[kind]
        if kind == "containerd":
            return support.containerd16_cri_config(hosts_dir=self.hosts_dir, cni=net,
                                                   sandbox_image=self.sandbox_image)
        return support.cri_config(hosts_dir=self.hosts_dir, cni=net, sandbox_image=self.sandbox_image)

    def describe(self) -> dict[str, object]:
        return {"registry": self.host, "sandbox_image": self.sandbox_image, "image": self.image,
                "images": "built by the suite (tests.support.cri.minimal_images)",
                "networks": {k: {"bridge": n.bridge, "subnet": n.subnet} for k, n in self.networks.items()}}


@contextlib.asynccontextmanager
async def cri_fixture(folder: Path, fx: Fixtures) -> AsyncIterator[CRIFixture | None]:
    """Set up the CRI session fixture under ``folder``; None (and ``fx.missing``) when this
    machine cannot run CRI pods."""
    from tests.support import cri as support
    from tests.support.registry import registry_available

    reason = support.cri_unusable()
    if reason is None and not registry_available():
        reason = "/usr/bin/docker-registry not found (apt-get install docker-registry)"
    if reason is not None:
        fx.missing[CRI_SETUP] = reason
        _say(f"SKIP CRI scenarios: {reason}")
        yield None
        return
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    images = support.CRIImages(use_critest_images=False)
    try:
        await images.start()
    except Exception as e:
        await images.stop()
        raise FixtureError(f"CRI images registry: {e!r}") from e
    networks: dict[str, Any] = {}
    try:
        hosts = support.write_hosts_dir(folder / "certs.d", images.host)
        subnets: list[str] = []
        for kind in KINDS:
            subnet = support.private_subnet()
            while subnet in subnets:   # two free /24s, one per daemon
                subnet = support.private_subnet()
            subnets.append(subnet)
            networks[kind] = support.write_cni_conflist(folder / f"net.d-{kind}", subnet=subnet,
                                                        data_dir=folder / f"cni-{kind}")
        fixture = CRIFixture(images, images.host, hosts, networks, support.SANDBOX_IMAGE,
                             support.BUSYBOX_IMAGE)
        fx.setup_seconds["CRI images, mirrors, CNI networks"] = time.perf_counter() - t0
        _say(f"CRI: registry {images.host} holds {support.SANDBOX_IMAGE} and {support.BUSYBOX_IMAGE} "
             "(suite-built); networks "
             + ", ".join(f"{k} {n.bridge} {n.subnet}" for k, n in networks.items()))
        for kind in KINDS:
            daemons.CRI_SECTIONS[kind] = lambda d, k=kind: fixture.section(k, d)
        try:
            yield fixture
        finally:
            daemons.CRI_SECTIONS.clear()
    finally:
        for kind, net in networks.items():
            left = net.leases()
            if left:
                _say(f"WARNING: CRI {kind}: host-local leases left at the end: {left}")
            net.cleanup()
        await images.stop()


# -- talking CRI ----------------------------------------------------------------------------------
class CRI:
    """The generated CRI client on a daemon's socket (both daemons serve CRI on their gRPC socket)."""

    def __init__(self, run: Running) -> None:
        self.run = run
        self.channel = Channel(path=run.address)
        self.rt = api.RuntimeServiceStub(self.channel, timeout=RPC_TIMEOUT)
        self.img = api.ImageServiceStub(self.channel, timeout=RPC_TIMEOUT)
        self.logs = run.folder / "pod-logs"
        self.serial = 0

    def close(self) -> None:
        self.channel.close()

    async def pull(self, fx: CRIFixture) -> None:
        """Pull the sandbox and the container image (untimed)."""
        for ref in (fx.sandbox_image, fx.image):
            await self.img.pull_image(api.PullImageRequest(image=api.ImageSpec(image=ref)))

    def pod_config(self, tag: str) -> api.PodSandboxConfig:
        self.serial += 1
        name = f"bench-{tag}-{self.serial}"
        return api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace="bench", uid=f"uid-{name}", attempt=0),
            hostname=name, log_directory=str(self.logs / name), labels={"bench": tag},
            linux=api.LinuxPodSandboxConfig(cgroup_parent=""))

    def container_config(self, image: str) -> api.ContainerConfig:
        return api.ContainerConfig(
            metadata=api.ContainerMetadata(name="top", attempt=0), image=api.ImageSpec(image=image),
            command=["top"], log_path="top.log", linux=api.LinuxContainerConfig(), labels={"bench": "1"})

    async def cleanup(self) -> None:
        """Stop and remove every pod (and so its containers); untimed."""
        pods = (await self.rt.list_pod_sandbox(api.ListPodSandboxRequest())).items
        sem = asyncio.Semaphore(PARALLEL)

        async def one(id: str) -> None:
            async with sem:
                await self.rt.stop_pod_sandbox(api.StopPodSandboxRequest(pod_sandbox_id=id))
                await self.rt.remove_pod_sandbox(api.RemovePodSandboxRequest(pod_sandbox_id=id))

        results = await asyncio.gather(*(one(p.id) for p in pods), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise DaemonError(f"{self.run.kind}: {len(failed)} of {len(pods)} pods not removed: "
                              f"{failed[0]!r}")


def _fixture(run: Running) -> CRIFixture:
    from .scenarios import Unsupported

    fx: Fixtures | None = run.fixtures
    if fx is None:
        raise DaemonError("no session fixtures on this run (runner bug)")
    if CRI_SETUP in fx.missing:
        raise Unsupported(fx.missing[CRI_SETUP])
    if fx.cri is None:
        raise FixtureMissing(f"the scenario did not declare needs={{{CRI_SETUP!r}}}")
    return fx.cri


class _Undecoded(ProtoCodec):
    """Requests encoded as usual, replies left as their bytes."""

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


async def _undecoded(channel: Channel, method: str, request: Any) -> bytes:
    """The reply bytes of the RuntimeService ``method`` (``channel`` with ``_Undecoded``)."""
    async with channel.request(f"/runtime.v1.RuntimeService/{method}", Cardinality.UNARY_UNARY,
                               type(request), bytes, timeout=RPC_TIMEOUT) as stream:
        await stream.send_message(request, end=True)
        reply = await stream.recv_message()
    assert isinstance(reply, bytes)
    return reply


async def _timed(times: list[float], call: Awaitable[Any]) -> Any:
    t0 = time.perf_counter()
    result = await call
    times.append((time.perf_counter() - t0) * 1000)
    return result


def _record(run: Running, name: str, times: list[float]) -> float:
    from .scenarios import stat_of

    run.recorded[f"{name} p99"] = stat_of(times, "p99")
    run.recorded[f"{name} median"] = statistics.median(times)
    return run.recorded[f"{name} median"]


# -- scenarios ------------------------------------------------------------------------------------
async def idle(run: Running) -> float:
    """VmRSS (MiB) of the daemon with its CRI plugin 1 s after it answered Version."""
    from .scenarios import IDLE_AFTER

    _fixture(run)
    await asyncio.sleep(max(0.0, run.answered_at + IDLE_AFTER - time.perf_counter()))
    return rss_mb(run.pid) * 1e6 / MIB


async def lifecycle(run: Running) -> float:
    """LIFECYCLE pods through RunPodSandbox ... RemovePodSandbox, each call timed; returns the
    RunPodSandbox median (ms), the others recorded."""
    fx = _fixture(run)
    c = CRI(run)
    times: dict[str, list[float]] = {op: [] for op in OPS}
    try:
        await c.pull(fx)
        container = c.container_config(fx.image)
        rt = c.rt
        for _ in range(LIFECYCLE):
            config = c.pod_config("life")
            pod = (await _timed(times["RunPodSandbox"], rt.run_pod_sandbox(
                api.RunPodSandboxRequest(config=config)))).pod_sandbox_id
            cid = (await _timed(times["CreateContainer"], rt.create_container(api.CreateContainerRequest(
                pod_sandbox_id=pod, config=container, sandbox_config=config)))).container_id
            await _timed(times["StartContainer"], rt.start_container(
                api.StartContainerRequest(container_id=cid)))
            await _timed(times["StopContainer"], rt.stop_container(
                api.StopContainerRequest(container_id=cid, timeout=STOP_TIMEOUT)))
            await _timed(times["RemoveContainer"], rt.remove_container(
                api.RemoveContainerRequest(container_id=cid)))
            await _timed(times["StopPodSandbox"], rt.stop_pod_sandbox(
                api.StopPodSandboxRequest(pod_sandbox_id=pod)))
            await _timed(times["RemovePodSandbox"], rt.remove_pod_sandbox(
                api.RemovePodSandboxRequest(pod_sandbox_id=pod)))
    finally:
        try:
            await c.cleanup()
        finally:
            c.close()
    for op in OPS:
        _record(run, op, times[op])
    run.recorded["RunPodSandbox first"] = times["RunPodSandbox"][0]
    return run.recorded["RunPodSandbox median"]


def _shims(run: Running) -> set[int]:
    from tests.support.runtime import shims_of

    return shims_of(run.folder)


async def scale(run: Running) -> float:
    """PODS pods with a container each, then LIST_CALLS calls of each list RPC and the memory
    of the daemon and its shims; returns the ListPodSandbox median (ms), the rest recorded."""
    from .scenarios import _pss_mb

    fx = _fixture(run)
    c = CRI(run)
    sem = asyncio.Semaphore(PARALLEL)
    container = c.container_config(fx.image)

    async def one() -> None:
        async with sem:
            config = c.pod_config("scale")
            pod = (await c.rt.run_pod_sandbox(api.RunPodSandboxRequest(config=config))).pod_sandbox_id
            cid = (await c.rt.create_container(api.CreateContainerRequest(
                pod_sandbox_id=pod, config=container, sandbox_config=config))).container_id
            await c.rt.start_container(api.StartContainerRequest(container_id=cid))

    try:
        await c.pull(fx)
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(PODS)))
        run.recorded["scale start"] = time.perf_counter() - t0
        await asyncio.sleep(SETTLE)
        pods = (await c.rt.list_pod_sandbox(api.ListPodSandboxRequest())).items
        ctrs = (await c.rt.list_containers(api.ListContainersRequest())).containers
        ready = [p for p in pods if p.state == api.PodSandboxState.SANDBOX_READY]
        running = [x for x in ctrs if x.state == api.ContainerState.CONTAINER_RUNNING]
        if len(ready) != PODS or len(running) != PODS:
            raise DaemonError(f"{run.kind}: {len(ready)} pods ready and {len(running)} containers "
                              f"running, expected {PODS} of each")
        lists: dict[str, list[float]] = {name: [] for name in LISTS + WIRE_LISTS}
        for _ in range(LIST_CALLS):
            await _timed(lists["ListPodSandbox"], c.rt.list_pod_sandbox(api.ListPodSandboxRequest()))
        for _ in range(LIST_CALLS):
            await _timed(lists["ListContainers"], c.rt.list_containers(api.ListContainersRequest()))
        wire = Channel(path=run.address, codec=_Undecoded())
        try:
            for name, request in zip(LISTS, (api.ListPodSandboxRequest(), api.ListContainersRequest()),
                                     strict=True):
                for _ in range(LIST_CALLS):
                    reply = await _timed(lists[f"{name} wire"], _undecoded(wire, name, request))
                run.recorded[f"{name} bytes"] = float(len(reply))
        finally:
            wire.close()
        run.recorded["daemon RSS"] = rss_mb(run.pid) * 1e6 / MIB
        run.recorded["daemon PSS"] = _pss_mb(run.pid) * 1e6 / MIB
        shims = _shims(run)
        run.recorded["shims RSS"] = sum(rss_mb(p) for p in shims) * 1e6 / MIB
        run.recorded["shims PSS"] = sum(_pss_mb(p) for p in shims) * 1e6 / MIB
        run.recorded["shim processes"] = float(len(shims))
    finally:
        try:
            await c.cleanup()
        finally:
            c.close()
    for name in LISTS + WIRE_LISTS:
        _record(run, name, lists[name])
    return run.recorded["ListPodSandbox median"]


# -- rows -----------------------------------------------------------------------------------------
GROUP = "cri"
NEEDS = frozenset({CRI_SETUP})
IDLE = "CRI daemon idle RSS"
LIFE = f"CRI RunPodSandbox, median of {LIFECYCLE} per start"
SCALE = f"CRI ListPodSandbox with {PODS} pods, median of {LIST_CALLS} calls"


def cri_rows() -> list[Scenario]:
    """The rows of the ``cri`` group (see the module docstring)."""
    from .scenarios import Scenario, _recorded

    def derived(name: str, unit: str, key: str, source: str,
                stats: tuple[str, ...] = ("median",)) -> Scenario:
        return Scenario(name, unit, _recorded(key), group=GROUP, stats=stats, needs=NEEDS,
                        derived_from=source)

    rows = [Scenario(IDLE, "MiB", idle, group=GROUP, needs=NEEDS),
            Scenario(LIFE, "ms", lifecycle, group=GROUP, needs=NEEDS),
            derived(f"CRI RunPodSandbox, p99 of {LIFECYCLE} per start", "ms", "RunPodSandbox p99", LIFE),
            derived("CRI RunPodSandbox, the first after the daemon started (in the p99)", "ms",
                    "RunPodSandbox first", LIFE)]
    for op in OPS[1:]:
        rows.append(derived(f"CRI {op}, median of {LIFECYCLE} per start", "ms", f"{op} median", LIFE))
        rows.append(derived(f"CRI {op}, p99 of {LIFECYCLE} per start", "ms", f"{op} p99", LIFE))
    rows += [Scenario(SCALE, "ms", scale, group=GROUP, needs=NEEDS),
             derived(f"CRI ListPodSandbox with {PODS} pods, p99 of {LIST_CALLS} calls", "ms",
                     "ListPodSandbox p99", SCALE),
             derived(f"CRI ListContainers with {PODS} pods, median of {LIST_CALLS} calls", "ms",
                     "ListContainers median", SCALE),
             derived(f"CRI ListContainers with {PODS} pods, p99 of {LIST_CALLS} calls", "ms",
                     "ListContainers p99", SCALE),
             *(derived(f"CRI {name} with {PODS} pods, wire only (reply not decoded), {stat} of "
                       f"{LIST_CALLS} calls", "ms", f"{name} wire {stat}", SCALE)
               for name in LISTS for stat in ("median", "p99")),
             *(derived(f"CRI {name} with {PODS} pods, reply size", "bytes", f"{name} bytes", SCALE)
               for name in LISTS),
             derived(f"CRI daemon RSS with {PODS} pods", "MiB", "daemon RSS", SCALE, ("median", "max")),
             derived(f"CRI daemon PSS with {PODS} pods", "MiB", "daemon PSS", SCALE),
             derived(f"CRI shims total RSS with {PODS} pods", "MiB", "shims RSS", SCALE),
             derived(f"CRI shims total PSS with {PODS} pods", "MiB", "shims PSS", SCALE),
             derived(f"CRI shim processes with {PODS} pods", "processes", "shim processes", SCALE),
             derived(f"CRI {PODS} pods + containers started, {PARALLEL} at a time", "s", "scale start",
                     SCALE)]
    return rows


__all__ = ["CRIFixture", "cri_fixture", "cri_rows"]
