"""Aggregate certificate rows into ``summary.json`` (DESIGN.md's contract). Reads rows only."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]
RADIUS_STEP = 0.25


def radius_grid(rows: Sequence[Row], step: float = RADIUS_STEP) -> list[float]:
    """0, step, 2·step, … up to the largest certified radius seen (at least 0 and step)."""
    largest = max((float(r.get("radius", 0.0)) for r in rows), default=0.0)
    top = max(step, math.floor(largest / step + 1e-9) * step)
    return [round(k * step, 10) for k in range(int(round(top / step)) + 1)]


def key(value: float) -> str:
    """The summary's key for a radius or eps: ``str(float(r))`` ("0.0", "0.25")."""
    return str(float(value))


def smoothing_certified_accuracy(rows: Sequence[Row], radii: Sequence[float]) -> dict[str, float]:
    """Fraction of all examples whose smoothed prediction is correct with certified radius ≥ r."""
    n = len(rows)
    return {
        key(r): (sum(1 for row in rows if row["correct"] and float(row["radius"]) >= r) / n if n else 0.0)
        for r in radii
    }


def bound_certified_accuracy(rows: Sequence[Row]) -> dict[str, float]:
    """Per eps: fraction of the examples (at that eps) that are correctly classified and verified."""
    by_eps: dict[float, list[Row]] = {}
    for row in rows:
        by_eps.setdefault(float(row["eps"]), []).append(row)
    return {
        key(e): sum(1 for r in group if r["correct"] and r["certified"]) / len(group)
        for e, group in sorted(by_eps.items())
    }


def attack_accuracy(rows: Sequence[Row]) -> dict[str, float]:
    """Per eps: fraction of examples correctly classified that the attack did not break (an upper limit)."""
    by_eps: dict[float, list[Row]] = {}
    for row in rows:
        by_eps.setdefault(float(row["eps"]), []).append(row)
    return {
        key(e): sum(1 for r in group if r["correct"] and not r["attack_success"]) / len(group)
        for e, group in sorted(by_eps.items())
    }


def summarize(rows: Sequence[Row], method: str | None = None) -> dict[str, Any]:
    """The summary of one run's rows: method, n_examples, clean_accuracy, certified_accuracy, mean_seconds."""
    rows = list(rows)
    method = method or (rows[0]["method"] if rows else "unknown")
    indices = {int(r["index"]) for r in rows}
    first_per_index: dict[int, Row] = {}
    for row in rows:
        first_per_index.setdefault(int(row["index"]), row)
    n = len(indices)
    summary: dict[str, Any] = {
        "method": method,
        "n_examples": n,
        "clean_accuracy": (sum(1 for r in first_per_index.values() if r["correct"]) / n) if n else 0.0,
        "mean_seconds": (sum(float(r.get("seconds", 0.0)) for r in rows) / n) if n else 0.0,
    }
    if method == "smoothing":
        summary["certified_accuracy"] = smoothing_certified_accuracy(rows, radius_grid(rows))
        summary["abstain_rate"] = (sum(1 for r in rows if r["prediction"] == -1) / n) if n else 0.0
        if rows:
            summary.update({k: rows[0][k] for k in ("sigma", "n0", "n", "alpha") if k in rows[0]})
            summary["guarantee"] = (
                f"each radius holds with probability >= 1 - alpha = {1 - float(rows[0]['alpha']):g} (randomized smoothing)"
            )
        if any("base_correct" in r for r in rows):
            summary["base_accuracy"] = sum(1 for r in rows if r.get("base_correct")) / n if n else 0.0
    elif method == "pgd":
        summary["attack_accuracy"] = attack_accuracy(rows)
        summary["norm"] = rows[0].get("norm") if rows else None
    else:
        summary["certified_accuracy"] = bound_certified_accuracy(rows)
        summary["norm"] = rows[0].get("norm") if rows else None
        summary["guarantee"] = "deterministic: every verified example is robust in the whole ball"
    return summary


def write_summary(out_dir: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
