"""The scenarios: each an async function returning one sample, registered in SCENARIOS.

See the package docstring for how to add one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .daemons import DaemonError, PeakRSS, Running, rss_mb
from .fixtures import LARGE_IMAGE, FixtureMissing, Fixtures

STATS = ("median", "p10", "p90", "p99", "mean", "min", "max")


class Unsupported(Exception):
    """Raised by a scenario when this daemon cannot do it (yet); shown as n/a."""


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One row (or one row per stat) of the table."""

    name: str
    unit: str
    run: Callable[[Running], Awaitable[float]]
    #: scenarios of one group share a daemon start per run, in list order
    group: str = "startup"
    stats: tuple[str, ...] = ("median",)
    #: session fixtures the scenario uses (see :mod:`tests.bench.fixtures`)
    needs: frozenset[str] = frozenset()
    #: name of the scenario (same group, earlier in the list) whose ``run.recorded``
    #: values this one reads; ``--only`` selecting this one selects that one too
    derived_from: str | None = None
    #: a throughput: the table marks the row, and there a ratio above 1 is better
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        bad = set(self.stats) - set(STATS)
        if bad:
            raise ValueError(f"scenario {self.name!r}: unknown stats {sorted(bad)}")


async def start_to_version(run: Running) -> float:
    """Milliseconds from the spawn until the first Version answer (measured by the harness)."""
    return run.start_seconds * 1000


IDLE_AFTER = 1.0  # seconds after the Version answer


async def idle_rss(run: Running) -> float:
    """VmRSS (MB) of the daemon process 1 s after it answered Version, doing nothing."""
    await asyncio.sleep(max(0.0, run.answered_at + IDLE_AFTER - time.perf_counter()))
    return rss_mb(run.pid)


# -- pulling a large image from the loopback registry -------------------------------------------
#
# Each run is a fresh daemon with empty folders, so every run downloads all of
# the image (manifest, config, 7 gzip layers; about 317 MB) from the one
# registry the series started (fixtures.LARGE_IMAGE). The primary row is
# seconds (below 1 is better, like every other row); the MB/s row (compressed
# bytes / seconds) is the same measurement as a throughput, marked "higher is
# better"; its p10 is the slow tail. The daemon's VmRSS is sampled every 50 ms
# during the fetch (the harness's own memory is not counted; ctr's neither).

FETCH_TIMEOUT = 600.0  # seconds for one fetch
RSS_INTERVAL = 0.05


def _large(run: Running) -> tuple[str, int, list[str]]:
    """(reference, compressed bytes, every blob digest) of the series' large image."""
    fx: Fixtures | None = run.fixtures
    if fx is None:
        raise DaemonError("no session fixtures on this run (runner bug)")
    try:
        ref, image = fx.large()
    except FixtureMissing as e:
        raise Unsupported(str(e)) from e
    blobs = image.blobs
    return ref, sum(b.size for b in blobs.values()), sorted(blobs)


async def _ctr_fetch(run: Running, ref: str) -> None:
    """``ctr --debug content fetch --plain-http REF``: ctr downloads, the daemon's Content.Write stores.

    ``--debug`` only turns ctr's progress display off: that display ends on its
    100 ms ticker (every fetch would be rounded up to the next tenth of a
    second after ctr started) and calls Content.ListStatuses and Info every
    100 ms during the fetch. ctr's debug log goes to stderr (a few lines).
    """
    await run.ctr("--debug", "content", "fetch", "--plain-http", ref)


class _NoTransfer(Exception):
    pass


async def _transfer_pull(run: Running, ref: str) -> None:
    """Transfer.Transfer(OCIRegistry(ref, http) -> ImageStore(ref), no unpack), as ctr 1.7+ sends.

    Used when :class:`aiocontainerd.Client` has no ``images`` API yet; raises
    _NoTransfer when the daemon does not serve the Transfer service.
    """
    from aiocontainerd.api.containerd.services.transfer import v1 as transfer_api
    from aiocontainerd.api.containerd.types import transfer as transfer_types
    from aiocontainerd.api.google.protobuf import Any as AnyMsg
    from aiocontainerd.services.context import DEFAULT_NAMESPACE, NAMESPACE_HEADER

    request = transfer_api.TransferRequest(
        source=AnyMsg.pack(transfer_types.OciRegistry(
            reference=ref, resolver=transfer_types.RegistryResolver(default_scheme="http"))),
        destination=AnyMsg.pack(transfer_types.ImageStore(name=ref)),
        options=transfer_api.TransferOptions())
    channel = Channel(path=run.address)
    try:
        stub = transfer_api.TransferStub(channel, metadata={NAMESPACE_HEADER: DEFAULT_NAMESPACE})
        await stub.transfer(request)
    except GRPCError as e:
        if e.status == Status.UNIMPLEMENTED:
            raise _NoTransfer(e.message) from e
        raise DaemonError(f"Transfer.Transfer {ref}: {e.status.name}: {e.message}") from e
    finally:
        channel.close()


async def _daemon_pull(run: Running, ref: str) -> None:
    """The daemon pulls ``ref`` itself, fetch only (no unpack).

    containerd 1.6 has no Transfer service: its fastest equivalent, ``ctr
    content fetch``, stands in. aiocontainerd: ``Client.images.pull`` when the
    client has it, else the raw Transfer call; Unsupported when neither exists.
    """
    if run.kind == "containerd":
        await _ctr_fetch(run, ref)
        return
    async with run.client() as client:
        images = getattr(client, "images", None)
        pull = getattr(images, "pull", None)
        if pull is not None:
            params = inspect.signature(pull).parameters
            kwargs: dict[str, object] = {"plain_http": True}
            if "unpack" in params:
                kwargs["unpack"] = False
            await pull(ref, **kwargs)
            return
    try:
        await _transfer_pull(run, ref)
    except _NoTransfer as e:
        raise Unsupported(f"Client has no images.pull and the daemon no Transfer service ({e})") from e


async def _check_stored(run: Running, digests: list[str]) -> None:
    """Every blob of the image is in the daemon's content store (after the clock stopped)."""
    listed = set((await run.ctr("content", "ls", "-q")).split())
    missing = [d for d in digests if d not in listed]
    if missing:
        raise DaemonError(f"{run.kind}: {len(missing)} of {len(digests)} blobs missing after the "
                          f"fetch, e.g. {missing[0]}")


def _fetch_scenario(how: Callable[[Running, str], Awaitable[None]]) -> Callable[[Running], Awaitable[float]]:
    async def scenario(run: Running) -> float:
        ref, size, digests = _large(run)
        async with PeakRSS(run.pid, RSS_INTERVAL) as peak:
            t0 = time.perf_counter()
            async with asyncio.timeout(FETCH_TIMEOUT):
                await how(run, ref)
            seconds = time.perf_counter() - t0
        await _check_stored(run, digests)
        run.recorded["MB/s"] = size / 1e6 / seconds
        run.recorded["peak RSS"] = peak.mb
        return seconds

    scenario.__doc__ = f"Seconds to fetch the large image: {how.__doc__}"
    return scenario


def _recorded(key: str) -> Callable[[Running], Awaitable[float]]:
    async def derived(run: Running) -> float:
        if key not in run.recorded:
            raise Unsupported(f"no {key} recorded (the measuring scenario did not run)")
        return run.recorded[key]

    return derived


def _fetch_rows(name: str, group: str, how: Callable[[Running, str], Awaitable[None]]) -> list[Scenario]:
    """Three rows from one measurement: seconds, MB/s, daemon peak RSS."""
    needs = frozenset({LARGE_IMAGE})
    return [
        Scenario(name, "s", _fetch_scenario(how), group=group, stats=("median", "p90"), needs=needs),
        Scenario(f"{name}, throughput", "MB/s", _recorded("MB/s"), group=group,
                 stats=("median", "p10"), needs=needs, derived_from=name, higher_is_better=True),
        Scenario(f"{name}, daemon peak RSS", "MB", _recorded("peak RSS"), group=group,
                 stats=("median", "max"), needs=needs, derived_from=name),
    ]


FETCH_CTR = "fetch 500 MB image, ctr content fetch"
FETCH_DAEMON = "fetch 500 MB image, daemon-side pull [containerd: ctr fetch]"


SCENARIOS: list[Scenario] = [
    Scenario("start to Version answered", "ms", start_to_version, stats=("median", "p90")),
    Scenario("idle RSS", "MB", idle_rss),
    *_fetch_rows(FETCH_CTR, "fetch-ctr", _ctr_fetch),
    *_fetch_rows(FETCH_DAEMON, "fetch-daemon", _daemon_pull),
]
