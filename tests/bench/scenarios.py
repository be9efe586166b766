"""The scenarios: each an async function returning one sample, registered in SCENARIOS.

See the package docstring for how to add one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from .daemons import Running, rss_mb

STATS = ("median", "p90", "p99", "mean", "min", "max")


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


SCENARIOS: list[Scenario] = [
    Scenario("start to Version answered", "ms", start_to_version, stats=("median", "p90")),
    Scenario("idle RSS", "MB", idle_rss),
]
