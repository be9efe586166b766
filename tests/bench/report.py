"""Statistics, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

A, B = "aiocontainerd", "containerd"


def stat(values: Sequence[float], name: str) -> float | None:
    """``median``, ``mean``, ``min``, ``max`` or ``pNN`` (nearest rank) of ``values``; None if empty."""
    if not values:
        return None
    if name == "median":
        return statistics.median(values)
    if name == "mean":
        return statistics.fmean(values)
    if name == "min":
        return min(values)
    if name == "max":
        return max(values)
    if name.startswith("p"):
        ordered = sorted(values)
        rank = math.ceil(float(name[1:]) / 100 * len(ordered))
        return ordered[max(rank, 1) - 1]
    raise ValueError(f"unknown stat {name!r}")


def ratio(a: Sequence[float], b: Sequence[float], name: str) -> float | None:
    """aiocontainerd/containerd for one stat.

    For the median, the median of the run-by-run ratios a[i]/b[i] (each pair ran
    back to back, so slow phases of the machine cancel out); for other stats,
    the ratio of the two stats.
    """
    if not a or not b:
        return None
    if name == "median" and len(a) == len(b) and all(b):
        return statistics.median(x / y for x, y in zip(a, b, strict=True))
    sa, sb = stat(a, name), stat(b, name)
    if sa is None or not sb:
        return None
    return sa / sb


def rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per scenario and stat: name, unit, stat, both values and the ratio."""
    out = []
    for r in results:
        a, b = r["samples"].get(A, []), r["samples"].get(B, [])
        for s in r["stats"]:
            label = r["name"] if s == "median" and len(r["stats"]) == 1 else f"{r['name']}, {s}"
            out.append({"scenario": label, "unit": r["unit"], "stat": s,
                        A: stat(a, s), B: stat(b, s), "ratio": ratio(a, b, s),
                        "better": r.get("better", "lower"), "notes": r.get("notes", {})})
    return out


def _cell(value: float | None, note: str | None) -> str:
    if value is None:
        return note or "n/a"
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


HIGHER = "higher is better"


def table(table_rows: list[dict[str, Any]]) -> str:
    """The table as aligned text; rows where a higher value is better say so after their unit."""
    head = ["scenario", A, B, "ratio"]
    lines = [head]
    for r in table_rows:
        notes = r["notes"]
        unit = f"{r['unit']}, {HIGHER}" if r.get("better") == "higher" else r["unit"]
        lines.append([f"{r['scenario']} ({unit})",
                      _cell(r[A], notes.get(A)), _cell(r[B], notes.get(B)),
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = [f"{{:<{widths[0]}}}", *(f"{{:>{w}}}" for w in widths[1:])]
    text = ["  ".join(f.format(c) for f, c in zip(fmt, line, strict=True)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (folders created), indented."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
