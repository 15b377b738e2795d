"""Terminal tables of a run's summary (rich): one row per budget with the number of examples behind it."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def summary_table(summary: dict[str, Any], title: str = "") -> Table:
    """One row per radius/eps: certified (or attack) accuracy and the example count n it is over."""
    family = summary.get("family", "")
    label = summary.get("label", summary["method"])
    n = summary["n_examples"]
    heading = f"{title}, {n} examples" if title else f"{label}: {n} examples"
    table = Table(title=escape(heading), min_width=min(len(heading) + 4, 118))  # a title on one line
    table.add_column("radius" if family == "smoothing" else "eps", justify="right")
    attack = family == "attack" or "attack_accuracy" in summary
    accuracies = summary.get("attack_accuracy" if attack else "certified_accuracy") or {}
    table.add_column(f"{label} accuracy (upper limit)" if attack else "certified accuracy", justify="right")
    table.add_column("n", justify="right")
    counts = summary.get("n_examples_at", {})
    for budget, acc in accuracies.items():
        table.add_row(budget, f"{100 * acc:.1f}%", str(counts.get(budget, n)))
    return table


def summary_caption(summary: dict[str, Any]) -> str:
    """Clean accuracy, time per example and what kind of guarantee the numbers are."""
    text = (
        f"clean accuracy {100 * summary['clean_accuracy']:.1f}% (n={summary['n_examples']}), "
        f"{summary['mean_seconds']:.3f} s/example"
    )
    if "base_accuracy" in summary:
        text += f" (base model accuracy {100 * summary['base_accuracy']:.1f}%)"
    if "guarantee" in summary:
        text += f"\n{summary['guarantee']}"
    return text


def print_summary(summary: dict[str, Any], title: str = "", console: Console | None = None) -> None:
    """Print :func:`summary_table` and :func:`summary_caption`."""
    console = console or Console(width=120)
    console.print(summary_table(summary, title))
    console.print(escape(summary_caption(summary)))
