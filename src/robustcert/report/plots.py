"""Curves of certified accuracy against radius / eps (matplotlib, PNG). Reads rows only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from robustcert.report.summary import attack_accuracy, bound_certified_accuracy  # noqa: E402

Row = dict[str, Any]


def smoothing_curve(rows: Sequence[Row], points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(radii, certified accuracy at each radius) on a fine grid up to the largest radius."""
    radii_seen = np.array([float(r["radius"]) if r["correct"] else -1.0 for r in rows])
    top = max(float(radii_seen.max(initial=0.0)) * 1.05, 0.25)
    grid = np.linspace(0.0, top, points)
    acc = (radii_seen[None, :] >= grid[:, None]).mean(axis=1) if len(rows) else np.zeros_like(grid)
    return grid, acc


def write_curve(out_dir: str | os.PathLike[str], rows: Sequence[Row], method: str, title: str = "") -> Path:
    """Write ``curve.png``: certified accuracy against radius (smoothing) or eps (bound methods, PGD)."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if method == "smoothing":
        grid, acc = smoothing_curve(rows)
        alpha = float(rows[0]["alpha"]) if rows else 0.001
        sigma = rows[0].get("sigma") if rows else None
        ax.plot(grid, acc, drawstyle="steps-post", label=f"smoothing σ={sigma} (holds w.p. ≥ {1 - alpha:g})")
        ax.set_xlabel("L2 radius (pixel units in [0, 1])")
    else:
        table = attack_accuracy(rows) if method == "pgd" else bound_certified_accuracy(rows)
        eps = [float(k) for k in table]
        norm = rows[0].get("norm", "linf") if rows else "linf"
        label = f"{method} (PGD accuracy: upper limit)" if method == "pgd" else f"{method} (verified)"
        ax.plot(eps, list(table.values()), marker="o", label=label)
        ax.set_xlabel(f"{'L∞' if norm == 'linf' else 'L2'} eps (pixel units in [0, 1])")
    ax.set_ylabel("certified accuracy")
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
