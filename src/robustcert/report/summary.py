"""Aggregate certificate rows into ``summary.json`` (DESIGN.md's contract). Reads rows only.

Rows are the typed dataclasses of :mod:`robustcert.rows`; what a method's rows mean (a radius, a
certificate per budget, an attack per budget) comes from its family in the method registry.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from robustcert.errors import RobustCertError
from robustcert.methods import get_method
from robustcert.rows import AttackRow, BoundRow, Row, SmoothingRow

RADIUS_STEP = 0.25
R = TypeVar("R", bound=Row)
E = TypeVar("E", BoundRow, AttackRow)


def radius_grid(rows: Sequence[SmoothingRow], step: float = RADIUS_STEP) -> list[float]:
    """0, step, 2·step, … up to the largest certified radius seen (at least 0 and step)."""
    largest = max((r.radius for r in rows), default=0.0)
    top = max(step, math.floor(largest / step + 1e-9) * step)
    return [round(k * step, 10) for k in range(int(round(top / step)) + 1)]


def key(value: float) -> str:
    """The summary's key for a radius or eps: ``str(float(r))`` ("0.0", "0.25")."""
    return str(float(value))


def rows_of_type(rows: Sequence[Row], row_type: type[R], method: str) -> list[R]:
    """``rows`` as ``row_type`` rows; RobustCertError if one is of another type (a mixed-up results file)."""
    out: list[R] = []
    for row in rows:
        if not isinstance(row, row_type):
            raise RobustCertError(
                f"{method}: expected {row_type.__name__} rows, got a {type(row).__name__} "
                f"(method {row.method!r}, example {row.index})"
            )
        out.append(row)
    return out


def example_count(rows: Sequence[Row]) -> int:
    """The number of distinct examples among ``rows``."""
    return len({r.index for r in rows})


def smoothing_certified_accuracy(rows: Sequence[SmoothingRow], radii: Sequence[float]) -> dict[str, float]:
    """Fraction of all examples whose smoothed prediction is correct with certified radius ≥ r."""
    n = len(rows)
    return {
        key(r): (sum(1 for row in rows if row.correct and row.radius >= r) / n if n else 0.0) for r in radii
    }


def _by_eps(rows: Sequence[E]) -> dict[float, list[E]]:
    groups: dict[float, list[E]] = {}
    for row in rows:
        groups.setdefault(float(row.eps), []).append(row)
    return dict(sorted(groups.items()))


def bound_certified_accuracy(rows: Sequence[BoundRow]) -> dict[str, float]:
    """Per eps: fraction of the examples (at that eps) that are correctly classified and verified."""
    return {
        key(e): sum(1 for r in group if r.correct and r.certified) / len(group)
        for e, group in _by_eps(rows).items()
    }


def attack_accuracy(rows: Sequence[AttackRow]) -> dict[str, float]:
    """Per eps: fraction of examples correctly classified that the attack did not break (an upper limit)."""
    return {
        key(e): sum(1 for r in group if r.correct and not r.attack_success) / len(group)
        for e, group in _by_eps(rows).items()
    }


def examples_per_budget(rows: Sequence[E]) -> dict[str, int]:
    """Per eps: how many distinct examples have a row there (the denominator of that budget's accuracy)."""
    return {key(e): example_count(group) for e, group in _by_eps(rows).items()}


def summarize(rows: Sequence[Row], method: str | None = None) -> dict[str, Any]:
    """The summary of one run's rows (all of one method): ``method``, ``label``, ``n_examples``,
    ``clean_accuracy``, ``mean_seconds``, and per family ``certified_accuracy`` (smoothing: by radius;
    bound/exact/sdp: by eps) or ``attack_accuracy`` (attacks: by eps), with ``n_examples_at`` the example
    count behind each budget's accuracy."""
    rows = list(rows)
    name = method or (rows[0].method if rows else None)
    if name is None:
        raise RobustCertError("cannot summarise an empty run without its method name")
    info = get_method(name)
    n = example_count(rows)
    first_per_index: dict[int, Row] = {}
    for row in rows:
        first_per_index.setdefault(row.index, row)
    summary: dict[str, Any] = {
        "method": name,
        "label": info.label,
        "family": info.family,
        "n_examples": n,
        "clean_accuracy": (sum(1 for r in first_per_index.values() if r.correct) / n) if n else 0.0,
        "mean_seconds": (sum(r.seconds for r in rows) / n) if n else 0.0,
    }
    if info.family == "smoothing":
        srows = rows_of_type(rows, SmoothingRow, name)
        grid = radius_grid(srows)
        summary["certified_accuracy"] = smoothing_certified_accuracy(srows, grid)
        summary["n_examples_at"] = {key(r): n for r in grid}
        summary["abstain_rate"] = (sum(1 for r in srows if r.prediction == -1) / n) if n else 0.0
        if srows:
            first = srows[0]
            summary.update({"sigma": first.sigma, "n0": first.n0, "n": first.n, "alpha": first.alpha})
            summary["guarantee"] = (
                f"each radius holds with probability >= 1 - alpha = {1 - first.alpha:g} (randomized smoothing)"
            )
            summary["base_accuracy"] = sum(1 for r in srows if r.base_correct) / n
    elif info.family == "attack":
        arows = rows_of_type(rows, AttackRow, name)
        summary["attack_accuracy"] = attack_accuracy(arows)
        summary["n_examples_at"] = examples_per_budget(arows)
        summary["norm"] = arows[0].norm if arows else None
        summary["guarantee"] = "none: an attack's accuracy is an empirical upper limit"
    else:
        brows = rows_of_type(rows, BoundRow, name)
        summary["certified_accuracy"] = bound_certified_accuracy(brows)
        summary["n_examples_at"] = examples_per_budget(brows)
        summary["norm"] = brows[0].norm if brows else None
        if info.deterministic:
            summary["guarantee"] = "deterministic: every verified example is robust in the whole ball"
    return summary


def write_summary(out_dir: str | os.PathLike[str], summary: dict[str, Any]) -> Path:
    path = Path(out_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
