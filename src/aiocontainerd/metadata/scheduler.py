"""The GC scheduler (plugin ``io.containerd.gc.v1.scheduler``): when collections run.

containerd's policy (``plugins/gc/scheduler.go``), so that collecting never takes more
than ``pause_threshold`` of the daemon's time (collections hold every snapshotter and
the content commit lock: run after every deletion, they would stall the next container's
snapshot and spend a core while its runtime starts):

- once ``startup_delay`` after the daemon starts (cleans up what a killed daemon left;
  none with ``0s``);
- after a collection that took ``t`` on average under its locks (at least 5 ms), the next
  one is due ``t / pause_threshold - t`` later (0.02: at least ~245 ms; 0: every second);
  when it is due it runs only if something was deleted meanwhile, else it is due again as
  much later; deletions a failed collection did not collect stay owed;
- a deletion (images, content, leases, containers, snapshots) brings a collection forward
  to ``schedule_delay`` from now only when none is due yet (before the first one), or
  when ``deletion_threshold`` N > 0 deletions have accumulated;
- ``sync`` deletes collect at once and wait for it.

Durations are containerd's strings: ``"100ms"``, ``"1s"``, ``"0s"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re

from ..plugin import METADATA, InitContext, Registration
from .gc import GarbageCollector, GCStats

log = logging.getLogger(__name__)
GC = "io.containerd.gc.v1"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
#: containerd's floor on the average collection time used for the interval, seconds
MIN_GC_SECONDS = 0.005


def parse_duration(text: str) -> float:
    """Seconds in a duration string like ``"100ms"``. Raises ValueError."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r} (use e.g. 100ms, 1s, 5m)")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclasses.dataclass
class SchedulerConfig:
    """``[plugins."io.containerd.gc.v1.scheduler"]`` (containerd's keys and defaults)."""

    pause_threshold: float = 0.02
    deletion_threshold: int = 0
    schedule_delay: str = "0ms"
    startup_delay: str = "100ms"

    def validate(self) -> None:
        """Raises ValueError for a bad duration or a pause threshold outside [0, 0.5]."""
        for name in ("schedule_delay", "startup_delay"):
            parse_duration(getattr(self, name))
        if not 0.0 <= self.pause_threshold <= 0.5:
            raise ValueError(f"pause_threshold {self.pause_threshold} is not in [0, 0.5]")


class Scheduler:
    """Decides when :class:`GarbageCollector` runs (see the module doc)."""

    def __init__(self, collector: GarbageCollector, config: SchedulerConfig) -> None:
        self._collector = collector
        self._threshold = config.deletion_threshold
        self._delay = parse_duration(config.schedule_delay)
        self._pause = config.pause_threshold
        self._deletions = 0
        self._collected = False            # at least one collection ran
        self._interval = 1.0               # until the first collection is timed
        self._gc_seconds = 0.0
        self._collections = 0
        self._loop = asyncio.get_running_loop()
        self._due: float | None = None     # loop time of the next collection
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        startup = parse_duration(config.startup_delay)
        if startup > 0:                    # containerd: no start-up collection with 0
            self._schedule(startup)
        self.last: GCStats | None = None

    def deleted(self) -> None:
        """Count one deletion; bring the next collection forward when the policy says so."""
        self._deletions += 1
        if ((self._threshold > 0 and self._deletions >= self._threshold)
                or (self._due is None and self._threshold == 0)):
            if self._due is None or self._due > self._loop.time() + self._delay:
                self._schedule(self._delay)

    def _schedule(self, delay: float) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._due = self._loop.time() + delay
        self._timer = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = self._due = None
        if self._task is not None and not self._task.done():
            self._schedule(self._interval)      # the previous one is still running: later
            return
        if self._collected and self._deletions == 0:
            self._schedule(self._interval)      # nothing deleted since: not needed yet
            return
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._collect()
        except Exception:
            log.exception("garbage collection failed")
            self._schedule(self._interval + 1.0)   # the deletions are still owed: retried then

    async def _collect(self) -> GCStats:
        deletions, self._deletions = self._deletions, 0
        try:
            stats = await self._collector.collect()
        except BaseException:
            self._deletions += deletions   # not collected (failed or cancelled): still owed
            raise
        # the time under the collector's locks (containerd's stats.Elapsed()), not the wait
        # for them: a collection queued behind an unpack must not stretch the interval
        self._gc_seconds += stats.seconds
        self._collections += 1
        self._collected = True
        if self._pause > 0:                # containerd: 0 keeps the interval at 1 s
            avg = max(self._gc_seconds / self._collections, MIN_GC_SECONDS)
            self._interval = avg / self._pause - avg
        self._schedule(self._interval)
        self.last = stats
        return stats

    async def collect(self) -> GCStats:
        """Collect now and wait for it (a ``sync`` delete)."""
        return await self._collect()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _init(ctx: InitContext) -> Scheduler:
    config: SchedulerConfig = ctx.config
    config.validate()
    metadata = ctx.get(METADATA)
    scheduler = Scheduler(GarbageCollector(metadata.db, metadata.content, metadata.snapshotters),
                          config)
    metadata.scheduler = scheduler
    return scheduler


PLUGIN = Registration(GC, "scheduler", _init, requires=(METADATA,), config=SchedulerConfig)
