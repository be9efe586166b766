"""The GC scheduler (plugin ``io.containerd.gc.v1.scheduler``): when collections run.

- After a deletion (images, content, leases, containers) a collection is
  scheduled ``schedule_delay`` later; with ``deletion_threshold`` N > 0, only
  once N deletions have accumulated (containerd's default 0: the first one);
- once ``startup_delay`` after the daemon starts (cleans up what a killed
  daemon left behind);
- at once, awaited, for deletes that ask for ``sync``.

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


def parse_duration(text: str) -> float:
    """Seconds in a duration string like ``"100ms"``. Raises ValueError."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"invalid duration {text!r} (use e.g. 100ms, 1s, 5m)")
    return float(m.group(1)) * _UNIT[m.group(2)]


@dataclasses.dataclass
class SchedulerConfig:
    """``[plugins."io.containerd.gc.v1.scheduler"]``."""

    deletion_threshold: int = 0
    schedule_delay: str = "0ms"
    startup_delay: str = "100ms"


class Scheduler:
    """Decides when :class:`GarbageCollector` runs (see the module doc)."""

    def __init__(self, collector: GarbageCollector, config: SchedulerConfig) -> None:
        self._collector = collector
        self._threshold = config.deletion_threshold
        self._delay = parse_duration(config.schedule_delay)
        self._deletions = 0
        self._task: asyncio.Task[None] | None = None
        self._startup = asyncio.get_running_loop().call_later(
            parse_duration(config.startup_delay), self._schedule, 0.0)
        self.last: GCStats | None = None

    def deleted(self) -> None:
        """Count one deletion; schedule a collection when the threshold is reached."""
        self._deletions += 1
        if self._deletions >= max(self._threshold, 1):
            self._schedule(self._delay)

    def _schedule(self, delay: float) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(delay))

    async def _run(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        self._deletions = 0
        try:
            self.last = await self._collector.collect()
        except Exception:
            log.exception("garbage collection failed")

    async def collect(self) -> GCStats:
        """Collect now and wait for it (a ``sync`` delete)."""
        self._deletions = 0
        self.last = await self._collector.collect()
        return self.last

    async def close(self) -> None:
        self._startup.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _init(ctx: InitContext) -> Scheduler:
    config: SchedulerConfig = ctx.config
    for name in ("schedule_delay", "startup_delay"):
        parse_duration(getattr(config, name))
    metadata = ctx.get(METADATA)
    scheduler = Scheduler(GarbageCollector(metadata.db, metadata.content, metadata.snapshotters),
                          config)
    metadata.scheduler = scheduler
    return scheduler


PLUGIN = Registration(GC, "scheduler", _init, requires=(METADATA,), config=SchedulerConfig)
