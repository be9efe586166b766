"""The scenarios: each an async function returning one sample, registered in SCENARIOS.

See the package docstring for how to add one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from .daemons import DaemonError, PeakRSS, Running, mounts_under, rss_mb
from .fixtures import BUSYBOX_IMAGE, LARGE_IMAGE, USR_IMAGE, FixtureMissing, Fixtures

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


async def _transfer_pull(run: Running, ref: str, unpack: bool = False) -> None:
    """Transfer.Transfer(OCIRegistry(ref, http) -> ImageStore(ref)), as ctr 1.7+ sends.

    Without ``unpack``, fetch only; with it, the ImageStore asks for an unpack
    of linux/amd64 into overlayfs (``ctr images pull`` 1.7+). Used when
    :class:`aiocontainerd.Client` lacks the option; raises _NoTransfer when the
    daemon does not serve the Transfer service.
    """
    from aiocontainerd.api.containerd import types as ctypes
    from aiocontainerd.api.containerd.services.transfer import v1 as transfer_api
    from aiocontainerd.api.containerd.types import transfer as transfer_types
    from aiocontainerd.api.google.protobuf import Any as AnyMsg
    from aiocontainerd.services.context import DEFAULT_NAMESPACE, NAMESPACE_HEADER

    store = transfer_types.ImageStore(name=ref)
    if unpack:
        platform = ctypes.Platform(os="linux", architecture="amd64")
        store = transfer_types.ImageStore(name=ref, platforms=[platform], unpacks=[
            transfer_types.UnpackConfiguration(platform=platform, snapshotter=SNAPSHOTTER)])
    request = transfer_api.TransferRequest(
        source=AnyMsg.pack(transfer_types.OciRegistry(
            reference=ref, resolver=transfer_types.RegistryResolver(default_scheme="http"))),
        destination=AnyMsg.pack(store),
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


# -- pull+unpack of a real-files image ----------------------------------------------------------
#
# The image: tests.bench.usrimage (this host's /usr subtrees, 7 layers, about
# 1.4 GiB of tar, gzip level 6 and zstd level 3 variants with the same diff IDs),
# pushed once to the series' registry (fixtures.USR_IMAGE). Each run is a fresh
# daemon: every run downloads all layers and unpacks them into the default
# snapshotter, overlayfs. Rows from one measurement: seconds (primary), MB/s of
# *uncompressed* (tar) bytes, the daemon's peak VmRSS, and the overlay mounts
# found under the daemon's folders once the pull returned (unmounted then; 0
# expected). After the clock stopped, the unpack is checked: every layer's
# chain ID is a committed overlayfs snapshot whose inode count (Snapshots.Usage)
# is the layer's (entries - hard links + its root folder).

UNPACK_TIMEOUT = 1800.0  # seconds for one pull+unpack
SNAPSHOTTER = "overlayfs"


class _NoUnpack(DaemonError):
    """The pull stored the image but unpacked nothing."""


def _usr(run: Running, compression: str) -> tuple[str, int, tuple[str, ...], tuple[int, ...]]:
    """(reference, uncompressed tar bytes, chain IDs, inodes per layer) of the real-files image."""
    fx: Fixtures | None = run.fixtures
    if fx is None:
        raise DaemonError("no session fixtures on this run (runner bug)")
    try:
        ref, image = fx.usr(compression)
    except FixtureMissing as e:
        raise Unsupported(str(e)) from e
    assert fx.usr_image is not None
    return (ref, fx.usr_image.tar_bytes, image.chain_ids,
            tuple(layer.inodes for layer in fx.usr_image.layers))


async def _ctr_pull(run: Running, ref: str) -> None:
    """``ctr --debug images pull --plain-http REF``: ctr fetches through Content.Write, then unpacks
    layer by layer (Snapshots.Prepare, Diff.Apply, Snapshots.Commit) into overlayfs.

    ``--debug`` turns the progress display off (see :func:`_ctr_fetch`).
    """
    await run.ctr("--debug", "images", "pull", "--plain-http", ref)


async def _snapshots(run: Running) -> dict[str, str]:
    """{key: kind} of the daemon's overlayfs snapshots (``ctr snapshots ls``)."""
    out = await run.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls")
    found = {}
    for line in out.splitlines()[1:]:
        fields = line.split()
        if fields:
            found[fields[0]] = fields[-1]
    return found


async def _check_unpacked(run: Running, chain: tuple[str, ...], inodes: tuple[int, ...]) -> None:
    """Every layer is a committed snapshot holding as many inodes as the layer has (DaemonError if not)."""
    found = await _snapshots(run)
    if not found:
        raise _NoUnpack(f"{run.kind}: the image was pulled but nothing unpacked (no {SNAPSHOTTER} snapshot)")
    missing = [c for c in chain if found.get(c) != "Committed"]
    if missing:
        raise DaemonError(f"{run.kind}: {len(missing)} of {len(chain)} layers not unpacked "
                          f"(no committed {SNAPSHOTTER} snapshot {missing[0]}); has {found}")
    wrong = []
    for i, (key, expected) in enumerate(zip(chain, inodes, strict=True)):
        line = (await run.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "usage", key)).splitlines()[-1]
        got = int(line.split()[-1])
        if got != expected:
            wrong.append(f"layer {i + 1}: {got} inodes, expected {expected}")
    if wrong:
        raise DaemonError(f"{run.kind}: unpacked layers differ from the image: " + "; ".join(wrong))


def _unmount_leftovers(run: Running) -> int:
    """Unmount what is mounted under the daemon's folder (temporary apply mounts included:
    its TMPDIR is there); returns how many there were, said on stderr."""
    points = mounts_under(run.folder)
    for point in points:
        r = subprocess.run(["umount", "-l", point], capture_output=True, text=True, check=False)
        print(f"{run.kind} run {run.index}: left-over mount {point} after the pull, unmounted"
              + ("" if r.returncode == 0 else f" (failed: {r.stderr.strip()})"), file=sys.stderr, flush=True)
    return len(points)


def _unpack_scenario(compression: str, how: Callable[[Running, str], Awaitable[None]]
                     ) -> Callable[[Running], Awaitable[float]]:
    async def scenario(run: Running) -> float:
        ref, tar_bytes, chain, inodes = _usr(run, compression)
        async with PeakRSS(run.pid, RSS_INTERVAL) as peak:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(UNPACK_TIMEOUT):
                    await how(run, ref)
            finally:
                seconds = time.perf_counter() - t0
                run.recorded["left-over mounts"] = _unmount_leftovers(run)
        await _check_unpacked(run, chain, inodes)
        run.recorded["MB/s"] = tar_bytes / 1e6 / seconds
        run.recorded["peak RSS"] = peak.mb
        return seconds

    scenario.__doc__ = f"Seconds to pull and unpack the {compression} real-files image: {how.__doc__}"
    return scenario


def _client_unpack_kwargs() -> dict[str, object] | None:
    """The keyword arguments that make ``Client.images.pull`` unpack into overlayfs, or None
    when it has no such option (``snapshotter=`` today; ``unpack=`` too, should one appear)."""
    try:
        from aiocontainerd.client.images import Images
    except ImportError:
        return None
    params = inspect.signature(Images.pull).parameters
    if "snapshotter" not in params and "unpack" not in params:
        return None
    kwargs: dict[str, object] = {"plain_http": True}
    if "unpack" in params:
        kwargs["unpack"] = True
    if "snapshotter" in params:
        kwargs["snapshotter"] = SNAPSHOTTER
    return kwargs


def _daemon_pull_how() -> str:
    kwargs = _client_unpack_kwargs()
    if kwargs is None:
        return ("Transfer.Transfer(OCIRegistry -> ImageStore(unpacks=[linux/amd64 overlayfs])); "
                "Client.images.pull has no unpack/snapshotter option")
    return f"Client.images.pull(ref, {', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


async def _daemon_pull_unpack(run: Running, ref: str) -> None:
    """The daemon pulls and unpacks ``ref`` itself (Transfer, ImageStore with an unpack configuration).

    containerd 1.6 has no Transfer service: its column is ``ctr images pull``
    (client-side fetch and unpack). aiocontainerd: ``Client.images.pull`` with
    its unpack option when it has one, else the raw Transfer call with
    ``ImageStore.unpacks = [{linux/amd64, overlayfs}]`` (as ctr 1.7+ sends);
    the row is n/a when the daemon stored the image but did not unpack it.
    """
    if run.kind == "containerd":
        await _ctr_pull(run, ref)
        return
    kwargs = _client_unpack_kwargs()
    if kwargs is None:
        await _transfer_pull(run, ref, unpack=True)
        return
    async with run.client() as client:
        await client.images.pull(ref, **kwargs)  # type: ignore[arg-type]


def _daemon_unpack_or_na(compression: str) -> Callable[[Running], Awaitable[float]]:
    timed = _unpack_scenario(compression, _daemon_pull_unpack)

    async def scenario(run: Running) -> float:
        try:
            return await timed(run)
        except _NoUnpack as e:
            if run.kind == "containerd":
                raise
            raise Unsupported(f"{e}; pulled with {_daemon_pull_how()}") from e

    scenario.__doc__ = timed.__doc__
    return scenario


def _unpack_rows(name: str, group: str, run: Callable[[Running], Awaitable[float]]) -> list[Scenario]:
    """Four rows from one measurement: seconds, MB/s (uncompressed), daemon peak RSS, left-over mounts."""
    needs = frozenset({USR_IMAGE})
    return [
        Scenario(name, "s", run, group=group, stats=("median", "p90"), needs=needs),
        Scenario(f"{name}, throughput", "MB/s", _recorded("MB/s"), group=group,
                 stats=("median", "p10"), needs=needs, derived_from=name, higher_is_better=True),
        Scenario(f"{name}, daemon peak RSS", "MB", _recorded("peak RSS"), group=group,
                 stats=("median", "max"), needs=needs, derived_from=name),
        Scenario(f"{name}, mounts left", "mounts", _recorded("left-over mounts"), group=group,
                 stats=("max",), needs=needs, derived_from=name),
    ]


UNPACK_GZIP = "pull+unpack 1 GB gzip image, ctr images pull"
UNPACK_ZSTD = "pull+unpack 1 GB zstd image, ctr images pull"
UNPACK_DAEMON = "pull+unpack 1 GB gzip image, daemon-side pull [containerd: ctr images pull]"
UNPACK_DAEMON_ZSTD = "pull+unpack 1 GB zstd image, daemon-side pull [containerd: ctr images pull]"


FETCH_CTR = "fetch 500 MB image, ctr content fetch"
FETCH_DAEMON = "fetch 500 MB image, daemon-side pull [containerd: ctr fetch]"

# -- running containers -------------------------------------------------------------------------
#
# The busybox-static image of the tests (fixtures.BUSYBOX_IMAGE) is pulled into each fresh
# daemon with `ctr images pull --plain-http` before the clock starts; both daemons then run it
# with the same ctr and the same runc (`runc` on PATH): containerd 1.6 through its Go
# containerd-shim-runc-v2, aiocontainerd through its default io.containerd.runc.v2 shim.
# Containers live in a namespace of the run's own (their cgroups are /<namespace>/<id>), and
# everything is removed before the scenario returns (untimed).

RUN_SERIES = 30          # `ctr run --rm` per daemon start
CONCURRENT = 50          # containers started at once
CONTAINER_TIMEOUT = 300.0


def _namespace(run: Running) -> str:
    return f"acbench{os.getpid()}r{run.index + 1}"


async def _ctr_ns(run: Running, *args: str) -> str:
    return await run.ctr("--namespace", _namespace(run), *args)


async def _busybox(run: Running) -> str:
    """The busybox reference, pulled into this daemon once per start (untimed)."""
    fx: Fixtures | None = run.fixtures
    if fx is None:
        raise DaemonError("no session fixtures on this run (runner bug)")
    try:
        ref = fx.busybox()
    except FixtureMissing as e:
        raise Unsupported(str(e)) from e
    if not run.recorded.get("busybox pulled"):
        await _ctr_ns(run, "images", "pull", "--plain-http", ref)
        run.recorded["busybox pulled"] = 1.0
    return ref


async def _ctr_run_status(run: Running, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "ctr", "--address", run.address, "--namespace", _namespace(run), "run", *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def _unsupported_if_unimplemented(run: Running, output: str) -> None:
    if run.kind != "containerd" and ("Unimplemented" in output or "not implemented" in output):
        raise Unsupported(output.strip().splitlines()[-1] if output.strip() else "Unimplemented")


async def _remove_all(run: Running) -> None:
    """Kill, delete and remove every container of the run's namespace, then its cgroups (untimed)."""
    ids = (await _ctr_ns(run, "containers", "ls", "-q")).split()
    sem = asyncio.Semaphore(4)

    async def one(id: str) -> None:
        async with sem:
            for args in (("task", "kill", "--signal", "SIGKILL", id), ("task", "delete", "--force", id),
                         ("containers", "rm", id)):
                with contextlib.suppress(DaemonError):
                    await _ctr_ns(run, *args)

    await asyncio.gather(*(one(i) for i in ids))
    left = (await _ctr_ns(run, "containers", "ls", "-q")).split()
    if left:
        raise DaemonError(f"{run.kind}: containers left after removal: {left}")
    _remove_cgroups(_namespace(run))
    _remove_shim_sockets(run, ids)


def _remove_shim_sockets(run: Running, ids: list[str]) -> None:
    """Shim sockets (/run/containerd/s/<sha256(address/namespace/id)>, Go's and ours) that a
    shim left behind once its task was deleted: a stale file a later run could trip on."""
    from tests.support.runtime import go_shim_socket

    for id in ids:
        with contextlib.suppress(OSError):
            go_shim_socket(run.address, _namespace(run), id).unlink()


def _remove_cgroups(namespace: str) -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        d = hierarchy / namespace
        if d.is_dir():
            subs = sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: len(str(p)), reverse=True)
            for sub in subs:
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                d.rmdir()


async def run_rm_true(run: Running) -> float:
    """Median ms of `ctr run --rm IMG id true`, RUN_SERIES times in a row on this daemon start
    (p90 kept for the derived row)."""
    ref = await _busybox(run)
    times = []
    try:
        for i in range(RUN_SERIES):
            t0 = time.perf_counter()
            async with asyncio.timeout(CONTAINER_TIMEOUT):
                code, out = await _ctr_run_status(run, "--rm", ref, f"lat{i}", "true")
            elapsed = time.perf_counter() - t0
            if code != 0:
                _unsupported_if_unimplemented(run, out)
                raise DaemonError(f"{run.kind}: ctr run --rm {ref} lat{i} true: exit {code}: {out.strip()}")
            times.append(elapsed * 1000)
    finally:
        await _remove_all(run)
    run.recorded["run p90"] = stat_of(times, "p90")
    run.recorded["run min"] = min(times)
    return statistics.median(times)


def stat_of(values: list[float], name: str) -> float:
    from .report import stat

    value = stat(values, name)
    assert value is not None
    return value


async def run_concurrent(run: Running) -> float:
    """Seconds for CONCURRENT `ctr run -d IMG id sleep 1000` started at once until all returned
    (each started task then checked RUNNING; failed starts counted in a row of their own; all
    removed afterwards, untimed)."""
    ref = await _busybox(run)
    fifo = run.folder / "fifo"
    try:
        t0 = time.perf_counter()
        async with asyncio.timeout(CONTAINER_TIMEOUT):
            results = await asyncio.gather(*(
                _ctr_run_status(run, "-d", "--fifo-dir", str(fifo), ref, f"par{i}", "sleep", "1000")
                for i in range(CONCURRENT)))
        seconds = time.perf_counter() - t0
        failed = [(i, code, out) for i, (code, out) in enumerate(results) if code != 0]
        if len(failed) == CONCURRENT:
            _unsupported_if_unimplemented(run, failed[0][2])
            raise DaemonError(f"{run.kind}: every ctr run -d failed, e.g. par0: {failed[0][2].strip()}")
        if failed:   # a real failure, counted in its own row; the series goes on
            last = failed[0][2].strip().splitlines()[-1:] or [""]
            print(f"{run.kind} run {run.index}: {len(failed)} of {CONCURRENT} ctr run -d failed, e.g. "
                  f"par{failed[0][0]}: {last[0]}", file=sys.stderr, flush=True)
        listed = (await _ctr_ns(run, "task", "ls")).splitlines()[1:]
        running = [line.split()[0] for line in listed if line.split()[-1:] == ["RUNNING"]]
        if len(running) != CONCURRENT - len(failed):
            raise DaemonError(f"{run.kind}: {len(running)} tasks RUNNING after {CONCURRENT - len(failed)} "
                              f"successful starts: {listed}")
        run.recorded["concurrent per container"] = seconds / CONCURRENT * 1000
        run.recorded["concurrent failed"] = float(len(failed))
    finally:
        await _remove_all(run)
    return seconds


SHIM_SETTLE = 1.0   # seconds after `ctr run -d` returned before the shim's memory is read


def _pss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise DaemonError(f"no Pss in /proc/{pid}/smaps_rollup")


async def shim_rss(run: Running) -> float:
    """VmRSS (MB) of the shim process serving one `sleep` container, 1 s after `ctr run -d`
    returned (its PSS, and the PSS of all this daemon's shim processes, kept for derived rows)."""
    from tests.support.runtime import bundle, cmdline, cwd, shims_of

    ref = await _busybox(run)
    id = "rss"
    try:
        code, out = await _ctr_run_status(run, "-d", "--fifo-dir", str(run.folder / "fifo"), ref, id,
                                          "sleep", "1000")
        if code != 0:
            _unsupported_if_unimplemented(run, out)
            raise DaemonError(f"{run.kind}: ctr run -d {ref} {id}: exit {code}: {out.strip()}")
        await asyncio.sleep(SHIM_SETTLE)
        shims = shims_of(run.folder)
        where = str(bundle(run.folder / "state", _namespace(run), id))
        serving = [p for p in shims if cwd(p) == where or id in cmdline(p)]
        if len(serving) != 1:
            raise DaemonError(f"{run.kind}: expected one shim serving {id}, found {serving} among "
                              f"{ {p: cmdline(p) for p in shims} }")
        (pid,) = serving
        rss = rss_mb(pid)
        run.recorded["shim PSS"] = _pss_mb(pid)
        run.recorded["all shims PSS"] = sum(_pss_mb(p) for p in shims)
        run.recorded["shim processes"] = float(len(shims))
    finally:
        await _remove_all(run)
    return rss


CTR_RUN = f"ctr run --rm busybox true, median of {RUN_SERIES} per start"
CTR_RUN_50 = f"{CONCURRENT} x ctr run -d at once, wall time"
SHIM_MEMORY = "shim serving 1 container, VmRSS"
CONTAINER_NEEDS = frozenset({BUSYBOX_IMAGE})


def _container_rows() -> list[Scenario]:
    return [
        Scenario(CTR_RUN, "ms", run_rm_true, group="run", needs=CONTAINER_NEEDS),
        Scenario(f"ctr run --rm busybox true, p90 of {RUN_SERIES} per start", "ms", _recorded("run p90"),
                 group="run", needs=CONTAINER_NEEDS, derived_from=CTR_RUN),
        Scenario(CTR_RUN_50, "s", run_concurrent, group="run-concurrent", stats=("median", "p90"),
                 needs=CONTAINER_NEEDS),
        Scenario(f"{CTR_RUN_50}, per container", "ms", _recorded("concurrent per container"),
                 group="run-concurrent", needs=CONTAINER_NEEDS, derived_from=CTR_RUN_50),
        Scenario(f"{CTR_RUN_50}, failed starts", "starts", _recorded("concurrent failed"),
                 group="run-concurrent", stats=("max",), needs=CONTAINER_NEEDS, derived_from=CTR_RUN_50),
        Scenario(SHIM_MEMORY, "MB", shim_rss, group="shim-memory", needs=CONTAINER_NEEDS),
        Scenario("shim serving 1 container, PSS", "MB", _recorded("shim PSS"), group="shim-memory",
                 needs=CONTAINER_NEEDS, derived_from=SHIM_MEMORY),
        Scenario("shim serving 1 container, PSS of all the daemon's shim processes", "MB",
                 _recorded("all shims PSS"), group="shim-memory", needs=CONTAINER_NEEDS,
                 derived_from=SHIM_MEMORY),
    ]


from .cri import cri_rows  # noqa: E402  (tests.bench.cri builds on the helpers above)

SCENARIOS: list[Scenario] = [
    Scenario("start to Version answered", "ms", start_to_version, stats=("median", "p90")),
    Scenario("idle RSS", "MB", idle_rss),
    *_fetch_rows(FETCH_CTR, "fetch-ctr", _ctr_fetch),
    *_fetch_rows(FETCH_DAEMON, "fetch-daemon", _daemon_pull),
    *_unpack_rows(UNPACK_GZIP, "unpack-gzip", _unpack_scenario("gzip", _ctr_pull)),
    *_unpack_rows(UNPACK_ZSTD, "unpack-zstd", _unpack_scenario("zstd", _ctr_pull)),
    *_unpack_rows(UNPACK_DAEMON, "unpack-daemon", _daemon_unpack_or_na("gzip")),
    *_unpack_rows(UNPACK_DAEMON_ZSTD, "unpack-daemon-zstd", _daemon_unpack_or_na("zstd")),
    *_container_rows(),
    *cri_rows(),
]
