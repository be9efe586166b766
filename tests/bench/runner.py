"""The A/B loop: start, run the scenarios of a group, stop; alternate the daemons run by run."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from . import daemons, fixtures
from .daemons import Kind, Running
from .scenarios import Scenario, Unsupported


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def _describe(run: Running) -> dict[str, Any]:
    """What the daemon says about itself (after its measurements; never timed)."""
    info: dict[str, Any] = {"version": run.version, "revision": run.revision,
                            "command": run.argv}
    try:
        async with run.client() as c:
            plugins = await c.plugins()
        info["plugins"] = dict(Counter(p.status for p in plugins))
        info["plugins_ok"] = sorted(f"{p.type}.{p.id}" for p in plugins if p.status == "ok")
    except Exception as e:
        info["plugins"] = f"Introspection.Plugins failed: {e}"
    if shutil.which("ctr"):
        try:
            async with asyncio.timeout(10):
                await run.ctr("version")
            info["ctr version"] = "ok"
        except (daemons.DaemonError, TimeoutError) as e:
            info["ctr version"] = str(e) or "no answer in 10 s"
    return info


def _groups(scenarios: list[Scenario]) -> dict[str, list[Scenario]]:
    groups: dict[str, list[Scenario]] = {}
    for s in scenarios:
        groups.setdefault(s.group, []).append(s)
    return groups


async def bench(scenarios: list[Scenario], kinds: list[Kind], runs: int, warmup: int = 1,
                keep: bool = False) -> dict[str, Any]:
    """Run every scenario ``runs`` times on each daemon; return the results document.

    Raises :class:`~tests.bench.daemons.DaemonError` when a daemon fails; the
    daemons are stopped and the temporary folder removed in every case.
    """
    active = [k for k in kinds if k.skipped is None]
    for k in kinds:
        if k.skipped:
            _say(f"SKIP {k.name}: {k.skipped}")
    samples: dict[str, dict[str, list[float]]] = {s.name: {k.name: [] for k in active}
                                                  for s in scenarios}
    notes: dict[str, dict[str, str]] = {s.name: {k.name: "skipped" for k in kinds if k.skipped}
                                        for s in scenarios}
    info: dict[str, Any] = {k.name: {"skipped": k.skipped} for k in kinds if k.skipped}
    warnings: list[str] = []
    session = Path(tempfile.mkdtemp(prefix="acbench-"))
    _say(f"run folders under {session}" + (" (kept)" if keep else " (deleted at the end)"))
    load_before = os.getloadavg()
    live: list[Running] = []
    load_per_run: list[dict[str, Any]] = []
    needs = set().union(*(s.needs for s in scenarios))
    fx = fixtures.Fixtures()  # rebound to the provided ones below; once() reads it when called

    async def once(kind: Kind, folder: str, index: int, group: list[Scenario]) -> str:
        run = await daemons.start(kind, session / folder, index)
        run.fixtures = fx
        live.append(run)
        parts = []
        unsupported: set[str] = set()
        try:
            for s in group:
                try:
                    value = await s.run(run)
                except Unsupported as e:
                    notes[s.name][kind.name] = "n/a"
                    unsupported.add(s.name)
                    if s.derived_from not in unsupported:  # said once per measurement
                        parts.append(f"{s.name}: n/a ({e})")
                    continue
                samples[s.name][kind.name].append(value)
                parts.append(f"{value:.1f} {s.unit}")
            if kind.name not in info:
                info[kind.name] = await _describe(run)
        finally:
            warnings.extend(await daemons.stop(run))
            live.remove(run)
        return f"{kind.name} " + " ".join(parts)

    try:
        # session fixtures (registry, large image) first: set up once, torn down after the rounds
        async with fixtures.provide(needs, session / "fixtures") as fx:
            for w in range(warmup):
                done = [await once(k, f"warmup{w}-{k.name}", -1, []) for k in active]
                _say(f"warm-up {w + 1}/{warmup}: " + ", ".join(d.split()[0] for d in done)
                     + " started")
            for name, group in _groups(scenarios).items():
                for i in range(runs):
                    # the machine is shared: the 1-minute load average says how busy it was
                    load = os.getloadavg()[0]
                    line = [await once(k, f"{name}-{i:02d}-{k.name}", i, group) for k in active]
                    load_per_run.append({"group": name, "run": i, "load1_before": round(load, 2)})
                    _say(f"[{name}] run {i + 1}/{runs} (load {load:.2f}): " + " | ".join(line))
    finally:
        for run in list(live):  # interrupted, or a daemon failed
            with contextlib.suppress(Exception):
                warnings.extend(await daemons.stop(run))
        warnings.extend(daemons.cleanup(session, keep))

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": {"node": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                 "python": platform.python_version(),
                 "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                 "load_per_run": load_per_run},
        "runs": runs, "warmup": warmup,
        "order": "alternating, " + " then ".join(k.name for k in active) + " in each round",
        "ratio": "aiocontainerd/containerd; median rows: median of run-by-run ratios, "
                 "other rows: ratio of the stats",
        "daemons": info,
        "fixtures": fx.describe(),
        "results": [{"name": s.name, "unit": s.unit, "group": s.group, "stats": list(s.stats),
                     "better": "higher" if s.higher_is_better else "lower",
                     "samples": samples[s.name], "notes": notes[s.name]} for s in scenarios],
        "warnings": warnings,
        "kept": str(session) if keep else None,
    }
