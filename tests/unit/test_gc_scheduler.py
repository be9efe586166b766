"""The GC scheduler's policy (containerd's plugins/gc/scheduler.go), with a fake collector."""

from __future__ import annotations

import asyncio

import pytest

from aiocontainerd.metadata.gc import GCStats
from aiocontainerd.metadata.scheduler import Scheduler, SchedulerConfig


class FakeCollector:
    def __init__(self, seconds: float = 0.001) -> None:
        self.runs = 0
        self.fail = False
        self.seconds = seconds

    async def collect(self) -> GCStats:
        self.runs += 1
        if self.fail:
            raise OSError("disk gone")
        return GCStats(seconds=self.seconds)


def scheduler(collector: FakeCollector, **config: object) -> Scheduler:
    return Scheduler(collector, SchedulerConfig(**config))  # type: ignore[arg-type]


async def test_startup_then_at_most_pause_threshold_of_the_time() -> None:
    c = FakeCollector()
    s = scheduler(c, startup_delay="10ms", pause_threshold=0.5)   # interval: 5 ms / 0.5 - 5 ms
    await asyncio.sleep(0.05)
    assert c.runs == 1                      # the start-up collection; nothing deleted since
    for _ in range(5):
        s.deleted()                         # a collection is due already: not brought forward
    assert c.runs == 1
    await asyncio.sleep(0.05)
    assert c.runs == 2                      # the due one ran, once for all five
    await asyncio.sleep(0.05)
    assert c.runs == 2                      # and none without deletions
    await s.close()


async def test_no_startup_collection_with_zero_delay() -> None:
    c = FakeCollector()
    s = scheduler(c, startup_delay="0s")
    await asyncio.sleep(0.02)
    assert c.runs == 0
    s.deleted()                             # nothing due yet: the first deletion schedules one
    await asyncio.sleep(0.02)
    assert c.runs == 1
    await s.close()


async def test_deletion_threshold_brings_it_forward() -> None:
    c = FakeCollector()
    s = scheduler(c, startup_delay="1h", deletion_threshold=3)
    s.deleted()
    s.deleted()
    await asyncio.sleep(0.02)
    assert c.runs == 0
    s.deleted()
    await asyncio.sleep(0.02)
    assert c.runs == 1
    await s.close()


async def test_a_failed_collection_keeps_its_deletions_owed() -> None:
    c = FakeCollector()
    s = scheduler(c, startup_delay="1h")
    s.deleted()
    c.fail = True
    with pytest.raises(OSError):
        await s.collect()                   # a sync delete's collection fails
    c.fail = False
    s._interval = 0.01                      # let the next due time come quickly
    s._schedule(0.0)
    await asyncio.sleep(0.03)
    assert c.runs == 2                      # retried: the deletion was not forgotten
    await s.close()


async def test_interval_uses_time_under_the_locks_and_close_stops_everything() -> None:
    c = FakeCollector(seconds=0.02)
    s = scheduler(c, startup_delay="1h", pause_threshold=0.02)
    await s.collect()
    assert s._interval == pytest.approx(0.02 / 0.02 - 0.02)
    await s.close()
    s.deleted()
    await s.collect()                       # a sync collection finishing after close...
    runs = c.runs
    await asyncio.sleep(1.1)                # ...schedules nothing on a closed store
    assert c.runs == runs
    assert s._timer is None or s._timer.cancelled()


def test_pause_threshold_bounds() -> None:
    SchedulerConfig(pause_threshold=0).validate()
    with pytest.raises(ValueError):
        SchedulerConfig(pause_threshold=0.6).validate()
