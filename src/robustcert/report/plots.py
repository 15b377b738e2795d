"""Curves of certified accuracy against radius / eps (matplotlib, PNG). Reads rows or report data only.

Method labels, colours and order come from the method registry (colour = the method's position in it),
and every legend entry states its example count, so curves over different example sets are never
shown as comparable without it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robustcert.methods import all_methods, get_method  # noqa: E402
from robustcert.report.summary import (  # noqa: E402
    attack_accuracy,
    bound_certified_accuracy,
    example_count,
    rows_of_type,
)
from robustcert.rows import AttackRow, BoundRow, Row, SmoothingRow  # noqa: E402

MODEL_STYLES = [
    ("-", "o"),
    ("--", "s"),
    ("-.", "^"),
    (":", "D"),
    ((0, (5, 1)), "v"),
    ((0, (3, 1, 1, 1)), "P"),
]


def method_color(name: str) -> Any:
    """The method's colour: its position in the registry on the tab10 palette (stable across plots)."""
    names = [m.name for m in all_methods()]
    rank = names.index(name) if name in names else len(names)
    return plt.get_cmap("tab10")(rank % 10)


def smoothing_curve(rows: Sequence[SmoothingRow], points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(radii, certified accuracy at each radius) on a fine grid up to the largest radius."""
    radii_seen = np.array([r.radius if r.correct else -1.0 for r in rows])
    top = max(float(radii_seen.max(initial=0.0)) * 1.05, 0.25)
    grid = np.linspace(0.0, top, points)
    acc = (radii_seen[None, :] >= grid[:, None]).mean(axis=1) if len(rows) else np.zeros_like(grid)
    return grid, acc


def write_curve(out_dir: str | os.PathLike[str], rows: Sequence[Row], method: str, title: str = "") -> Path:
    """Write ``curve.png``: certified accuracy against radius (smoothing) or eps (bound methods, attacks);
    the legend gives the method's label and the example count n."""
    info = get_method(method)
    n = example_count(rows)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if info.family == "smoothing":
        srows = rows_of_type(rows, SmoothingRow, method)
        grid, acc = smoothing_curve(srows)
        alpha = srows[0].alpha if srows else 0.001
        sigma = srows[0].sigma if srows else None
        ax.plot(
            grid,
            acc,
            drawstyle="steps-post",
            color=method_color(method),
            label=f"{info.label} σ={sigma} (holds w.p. ≥ {1 - alpha:g}), n={n}",
        )
        ax.set_xlabel("L2 radius (pixel units in [0, 1])")
    else:
        if info.family == "attack":
            arows = rows_of_type(rows, AttackRow, method)
            table = attack_accuracy(arows)
            norm = arows[0].norm if arows else "linf"
            label = f"{info.label} accuracy (upper limit), n={n}"
        else:
            brows = rows_of_type(rows, BoundRow, method)
            table = bound_certified_accuracy(brows)
            norm = brows[0].norm if brows else "linf"
            label = f"{info.label} (verified), n={n}"
        eps = [float(k) for k in table]
        ax.plot(eps, list(table.values()), marker="o", color=method_color(method), label=label)
        ax.set_xlabel(f"{'L∞' if norm == 'linf' else 'L2'} eps (pixel units in [0, 1])")
    ax.set_ylabel("attack accuracy" if info.family == "attack" else "certified accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_card_curves(report: dict[str, Any], path: Path) -> None:
    """The report card's curves: accuracy against budget, one axis per norm; colour = method, line style
    and marker = model; each legend entry gives its example count."""
    norms = list(report["threats"])
    fig, axes = plt.subplots(1, len(norms), figsize=(8.5 * len(norms), 4.6), dpi=110, squeeze=False)
    for ax, norm in zip(axes[0], norms, strict=True):
        for m, (model, entry) in enumerate(report["models"].items()):
            linestyle, marker = MODEL_STYLES[m % len(MODEL_STYLES)]
            for rec in entry["methods"].values():
                if rec["norm"] != norm:
                    continue
                table = rec["attack_accuracy"] if rec["family"] == "attack" else rec["certified_accuracy"]
                points = [(float(b), v) for b, v in table.items() if v is not None]
                label = f"{model}: {rec['label']}"
                if rec["family"] == "smoothing":
                    label += f" σ={rec['sigma']} (w.p. ≥ {1 - rec['alpha']:g})"
                elif rec["family"] == "attack":
                    label += " accuracy (upper limit)"
                label += f", n={rec['n_examples']}"
                ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    linestyle=linestyle,
                    marker=marker,
                    markersize=4,
                    color=method_color(rec["method"]),
                    alpha=0.6 if rec["family"] == "attack" else 1.0,
                    label=label,
                )
        ax.set_title(f"{'L2' if norm == 'l2' else 'L∞'} threat model", fontsize=10)
        ax.set_xlabel(f"{'L2 radius' if norm == 'l2' else 'L∞ eps'} (inputs in [0, 1])")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_clean_vs_certified(report: dict[str, Any], path: Path) -> None:
    """Bars per model: clean accuracy, each method's certified accuracy and the attack accuracy at each
    threat's target budget, labelled with their example counts when those differ from the clean one's."""
    models = list(report["models"])
    series: dict[str, list[float]] = {}
    for entry_index, model in enumerate(models):
        entry = report["models"][model]
        bars: list[tuple[str, float | None]] = [("clean", entry["clean_accuracy"])]
        for norm, target in entry["targets"].items():
            where = f"{norm} @ {target['eps']:g}"
            for rec in target["methods"].values():
                bars.append((f"{rec['label']} {where}", rec["certified_accuracy"]))
            if target["attack_accuracy"] is not None:
                bars.append((f"{target['attack_label']} {where}", target["attack_accuracy"]))
        for label, value in bars:
            # a bar a model does not have stays NaN (not drawn), unlike a measured 0%
            series.setdefault(label, [math.nan] * len(models))[entry_index] = (
                math.nan if value is None else value
            )
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) * len(series) / 3), 4.2), dpi=110)
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        ax.bar([m + k * width for m in range(len(models))], values, width, label=label)
    counts = {
        model: sorted(
            {entry["clean_n_examples"]}
            | {rec["n_examples"] for t in entry["targets"].values() for rec in t["methods"].values()}
        )
        for model, entry in report["models"].items()
    }
    ax.set_xticks(
        [m + 0.4 - width / 2 for m in range(len(models))],
        [f"{model}\nn={'/'.join(str(c) for c in counts[model])}" for model in models],
    )
    ax.set_ylabel("accuracy at the target budget")
    ax.set_ylim(0, 1.05)
    ax.set_title("clean vs certified accuracy (smoothing: with probability ≥ 1 − alpha)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
