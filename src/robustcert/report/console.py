"""The report card's headline on the terminal (rich): unsound certificates first, in red, then one row per
(model, threat) at the target budget with its example count, then what the numbers guarantee."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robustcert.report.format import pct

MAX_UNSOUND_LINES = 10


def headline_table(report: dict[str, Any]) -> tuple[Table, set[int]]:
    """The headline table, and the set of example counts it shows (more than one: rows differ in n).

    A certified accuracy over a different number of examples than its row's ``n`` is marked ``(n=K)``."""
    attack = report.get("attack_label") or "attack"
    table = Table(
        title=f"report card: {report['dataset']}/{report['split']}, {report['n_examples']} examples"
    )
    for column in (
        "model",
        "n",
        "clean",
        "threat @ target",
        f"{attack} (upper limit)",
        "certified",
    ):
        table.add_column(column, justify="right" if column == "n" else "left")
    counts: set[int] = set()
    for name, entry in report["models"].items():
        for norm, target in entry["targets"].items():
            n = target["n_examples"]
            counts.add(n)
            cells = []
            for rec in target["methods"].values():
                cell = f"{rec['label']} {pct(rec['certified_accuracy'])}"
                if rec["n_examples"] != n:
                    cell += f" (n={rec['n_examples']})"
                    counts.add(rec["n_examples"])
                cells.append(cell)
            clean = pct(entry["clean_accuracy"])
            if entry["clean_n_examples"] != n:
                clean += f" (n={entry['clean_n_examples']})"
                counts.add(entry["clean_n_examples"])
            table.add_row(
                escape(name),
                str(n),
                clean,
                f"{norm} @ {target['eps']:g}",
                pct(target["attack_accuracy"]),
                escape(", ".join(cells) or "—"),
            )
    return table, counts


def guarantee_caption(report: dict[str, Any]) -> str:
    """One line on what the numbers are: smoothing is probabilistic, the rest deterministic, attacks are
    upper limits (labels from the report's method list, i.e. the registry)."""
    attacks = [m["label"] for m in report.get("methods", []) if m["family"] == "attack"]
    text = "smoothing numbers hold with probability >= 1 - alpha; the others are deterministic"
    if attacks:
        text += f"; {' and '.join(attacks)} " + (
            "is an upper limit" if len(attacks) == 1 else "are upper limits"
        )
    return text


def print_report_card(report: dict[str, Any], out: Path, console: Console | None = None) -> int:
    """Print the report card's headline; returns 3 if any certificate was broken (the command's exit
    status), else 0."""
    console = console or Console(width=120)
    unsound = report["unsound"]
    if unsound:
        console.print(
            f"[bold white on red] UNSOUND CERTIFICATES: {len(unsound)} [/] — see {escape(str(out))}/report.html"
        )
        for u in unsound[:MAX_UNSOUND_LINES]:
            console.print(
                f"[red]  {escape(u['model'])} {escape(u.get('label', u['method']))} {u['norm']} "
                f"eps={u['eps']:g} example {u['index']}: {escape(u['evidence'])}[/]"
            )
        if len(unsound) > MAX_UNSOUND_LINES:
            console.print(f"[red]  … and {len(unsound) - MAX_UNSOUND_LINES} more[/]")
    table, counts = headline_table(report)
    console.print(table)
    console.print(guarantee_caption(report))
    if len(counts) > 1:
        console.print(
            "n = examples each accuracy is over; a value marked (n=K) is over K examples, a different example "
            "set from the rest of its row, so do not compare it with them directly"
        )
    console.print(
        f"report: {escape(str(out))}/report.html, report.md, report.json, curves.png, clean_vs_certified.png"
    )
    return 3 if unsound else 0
