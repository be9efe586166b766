"""``python -m tests.bench``: run the benchmarks, print the table, write the JSON."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from . import daemons, fixtures, report, runner
from .scenarios import SCENARIOS, Scenario

DEFAULT_JSON = Path(__file__).parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    p.add_argument("--runs", type=int, default=10, help="runs per daemon and scenario (default 10)")
    p.add_argument("--warmup", type=int, default=1,
                   help="unrecorded starts of each daemon first (default 1)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON,
                   help=f"where to write the results (default {DEFAULT_JSON})")
    p.add_argument("--only", action="append", default=[], metavar="TEXT",
                   help="only scenarios whose name contains TEXT (repeatable)")
    p.add_argument("--containerd", default=daemons.CONTAINERD,
                   help=f"containerd binary (default {daemons.CONTAINERD})")
    p.add_argument("--keep", action="store_true",
                   help="keep the run folders (configs, logs) instead of deleting them")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be at least 1 and --warmup at least 0")
    return args


async def _bench(args: argparse.Namespace, scenarios: list[Scenario]) -> dict[str, Any]:
    # SIGTERM like Ctrl-C (which asyncio.run turns into a cancel): the runner stops the daemons
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await runner.bench(scenarios, daemons.kinds(args.containerd), args.runs,
                              args.warmup, args.keep)


def select(only: list[str]) -> list[Scenario]:
    """Scenarios whose name contains one of ``only`` (all if empty), plus those they derive from."""
    chosen = {s.name for s in SCENARIOS if not only or any(t.lower() in s.name.lower() for t in only)}
    chosen |= {s.derived_from for s in SCENARIOS if s.name in chosen and s.derived_from}
    return [s for s in SCENARIOS if s.name in chosen]


def main(argv: list[str] | None = None) -> int:
    """Run, print, write; 0 on success, 1 when a daemon or a fixture failed."""
    args = parse_args(argv)
    scenarios = select(args.only)
    if not scenarios:
        print(f"no scenario matches {args.only}; have: {[s.name for s in SCENARIOS]}", file=sys.stderr)
        return 2
    try:
        doc = asyncio.run(_bench(args, scenarios))
    except (daemons.DaemonError, fixtures.FixtureError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; daemons stopped, run folders removed", file=sys.stderr)
        return 130
    table_rows = report.rows(doc["results"])
    doc["table"] = table_rows
    report.write_json(args.json, doc)
    for w in doc["warnings"]:
        print(f"WARNING: {w}", file=sys.stderr)
    print()
    print(report.table(table_rows))
    print(f"\n{doc['runs']} runs, {doc['order']}; ratio = {doc['ratio']}; below 1 is better, "
          f"except in rows marked '{report.HIGHER}' (throughputs: above 1 is better there).")
    large = doc["fixtures"].get("large_image")
    if large:
        print(f"fetch rows: {large['ref']}, {large['layers']} {large['compression']} layers, "
              f"{large['compressed_bytes'] / 1e6:.0f} MB compressed ({large['uncompressed_mib']} MiB "
              "of files); a fresh daemon per run; MB/s = compressed bytes / seconds. "
              "containerd 1.6 has no Transfer service: its daemon-side pull row is ctr content fetch.")
    usr = doc["fixtures"].get("usr_image")
    if usr:
        sizes = ", ".join(f"{c} {n / 1e6:.0f} MB" for c, n in usr["compressed_bytes"].items())
        print(f"pull+unpack rows: {', '.join(usr['refs'].values())}: {usr['layers']} layers of this "
              f"host's files ({usr['entries']} entries, {usr['tar_bytes'] / 1e6:.0f} MB uncompressed "
              f"tar; {sizes}); a fresh daemon per run, overlayfs; MB/s = uncompressed bytes / seconds; "
              "every layer checked unpacked (committed snapshot, inode count) after the clock stopped. "
              "containerd 1.6 has no Transfer service: its daemon-side pull+unpack row is ctr images pull.")
    for name, d in doc["daemons"].items():
        if d.get("skipped"):
            print(f"{name}: skipped: {d['skipped']}")
        else:
            print(f"{name} {d['version']}: plugins {d.get('plugins')}, ctr version {d.get('ctr version')}")
    print(f"load average before/after: {doc['host']['loadavg_before'][0]:.2f}/"
          f"{doc['host']['loadavg_after'][0]:.2f} on {doc['host']['cpus']} CPUs; JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
