"""Terminal tables of a summary (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def summary_table(summary: dict[str, Any], title: str = "") -> Table:
    """One row per radius/eps: certified (or attack) accuracy, plus the clean accuracy and time."""
    method = summary["method"]
    column = "radius" if method == "smoothing" else "eps"
    table = Table(title=title or f"{method}: {summary['n_examples']} examples")
    table.add_column(column, justify="right")
    accuracies = summary.get("certified_accuracy") or summary.get("attack_accuracy") or {}
    table.add_column("PGD accuracy" if method == "pgd" else "certified accuracy", justify="right")
    for budget, acc in accuracies.items():
        table.add_row(budget, f"{100 * acc:.1f}%")
    return table


def summary_caption(summary: dict[str, Any]) -> str:
    """Clean accuracy, time per example and what kind of guarantee the numbers are."""
    text = f"clean accuracy {100 * summary['clean_accuracy']:.1f}%, {summary['mean_seconds']:.3f} s/example"
    if "base_accuracy" in summary:
        text += f" (base model accuracy {100 * summary['base_accuracy']:.1f}%)"
    if "guarantee" in summary:
        text += f"\n{summary['guarantee']}"
    return text


def print_summary(summary: dict[str, Any], title: str = "") -> None:
    console = Console(width=120)
    console.print(summary_table(summary, title))
    console.print(summary_caption(summary))
