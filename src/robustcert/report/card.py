"""The report card: aggregates an ``evaluate`` directory's rows into report.json, report.md, report.html
(self-contained, images embedded) and plots. Reads rows and the stored measurements only, so
``robustcert report DIR`` re-renders without recomputing.

Unsound certificates are found by cross-checking rows: a bound/exact certificate at (model, norm, eps,
example) is unsound if PGD at the same budget, or the exact MILP, found a misclassified point there; a
smoothing certificate is unsound if the smoothed-prediction attack (``validation.json``) changed the
smoothed prediction inside the certified radius.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from robustcert.errors import RobustCertError  # noqa: E402
from robustcert.report.summary import (  # noqa: E402
    attack_accuracy,
    bound_certified_accuracy,
    key,
    smoothing_certified_accuracy,
)
from robustcert.runs import read_rows  # noqa: E402

Row = dict[str, Any]
DETERMINISTIC = ("ibp", "crown", "alpha-crown", "exact")
METHOD_ORDER = ("smoothing", "ibp", "crown", "alpha-crown", "exact", "pgd")


def _accuracy_at(rows: list[Row], method: str, budgets: list[float]) -> dict[str, float | None]:
    """The run summary's accuracy at each of the threat's budgets (``report.summary`` computes it, so a run
    directory and the report card cannot disagree); None at a budget the method was not run at."""
    if method == "smoothing":
        return dict(smoothing_certified_accuracy(rows, budgets))
    table = attack_accuracy(rows) if method == "pgd" else bound_certified_accuracy(rows)
    return {key(b): table.get(key(b)) for b in budgets}


def _find_unsound(
    runs: list[dict[str, Any]], rows_of: dict[int, list[Row]], validation: dict[str, Any]
) -> list[dict[str, Any]]:
    unsound = []
    broken: dict[tuple[str, str, float, int], str] = {}
    for k, run in enumerate(runs):
        for r in rows_of[k]:
            if run["method"] == "pgd" and r["correct"] and r["attack_success"]:
                broken[(run["model"], run["norm"], float(r["eps"]), r["index"])] = (
                    f"PGD margin {r['adv_margin']:.4g}"
                )
            if run["method"] == "exact" and r.get("status") == "counterexample":
                broken.setdefault(
                    (run["model"], run["norm"], float(r["eps"]), r["index"]), "exact MILP counterexample"
                )
    for k, run in enumerate(runs):
        if run["method"] not in DETERMINISTIC:
            continue
        for r in rows_of[k]:
            evidence = broken.get((run["model"], run["norm"], float(r["eps"]), r["index"]))
            if r["certified"] and evidence:
                unsound.append(
                    {
                        "model": run["model"],
                        "method": run["method"],
                        "norm": run["norm"],
                        "eps": float(r["eps"]),
                        "index": r["index"],
                        "evidence": evidence,
                    }
                )
    for model, result in validation.get("smoothing_attack", {}).items():
        for b in result.get("broken", []):
            unsound.append(
                {
                    "model": model,
                    "method": "smoothing",
                    "norm": "l2",
                    "eps": b["radius"],
                    "index": b["index"],
                    "evidence": f"smoothed prediction {b['prediction_at_attack']} ≠ certified "
                    f"{b['certified_prediction']} at L2 distance {b['distance']:.4g}",
                }
            )
    return unsound


def build_report(out: Path) -> dict[str, Any]:
    """The report card's numbers, from the rows under ``out`` (an ``evaluate`` output directory)."""
    out = Path(out)
    info_path = out / "evaluate.json"
    if not info_path.exists():
        raise RobustCertError(
            f"{out} is not an evaluate directory (no evaluate.json); run `robustcert evaluate` first"
        )
    info = json.loads(info_path.read_text())
    config, runs = info["config"], info["runs"]
    validation = (
        json.loads((out / "validation.json").read_text()) if (out / "validation.json").exists() else {}
    )
    latency = json.loads((out / "latency.json").read_text()) if (out / "latency.json").exists() else {}
    rows_of = {k: read_rows(out / run["dir"] / "results.jsonl") for k, run in enumerate(runs)}
    report: dict[str, Any] = {
        "dataset": config["data"]["dataset"],
        "split": config["data"]["split"],
        "n_examples": len(info["indices"]),
        "threats": config["threat"],
        "models": {},
        "unsound": _find_unsound(runs, rows_of, validation),
        "validation": validation,
    }
    for name, model_dir in info["models"].items():
        meta = json.loads((Path(model_dir) / "model.json").read_text())
        entry: dict[str, Any] = {
            "arch": meta["arch"],
            "train": meta.get("train", {}),
            "methods": {},
            "targets": {},
            "latency": {},
        }
        clean = None
        for k, run in enumerate(runs):
            if run["model"] != name:
                continue
            rows = rows_of[k]
            if not rows:
                continue
            budgets = [float(e) for e in config["threat"][run["norm"]]["eps"]]
            n = len({r["index"] for r in rows})
            first = {}
            for r in rows:
                first.setdefault(r["index"], r)
            record: dict[str, Any] = {
                "method": run["method"],
                "norm": run["norm"],
                "n_examples": n,
                "accuracy": sum(1 for r in first.values() if r["correct"]) / n,
                "certified_accuracy" if run["method"] != "pgd" else "pgd_accuracy": _accuracy_at(
                    rows, run["method"], budgets
                ),
                "seconds_per_example": sum(float(r.get("seconds", 0)) for r in rows) / n,
                "dir": run["dir"],
            }
            if run["method"] == "smoothing":
                record["alpha"] = rows[0]["alpha"]
                record["sigma"] = rows[0]["sigma"]
                record["guarantee"] = (
                    f"holds with probability >= {1 - rows[0]['alpha']:g} (randomized smoothing)"
                )
                record["base_accuracy"] = sum(1 for r in rows if r.get("base_correct")) / n
                record["abstain_rate"] = sum(1 for r in rows if r["prediction"] == -1) / n
            elif run["method"] != "pgd":
                record["guarantee"] = "deterministic"
                clean = record["accuracy"] if clean is None else clean
            else:
                clean = record["accuracy"]
            entry["methods"][f"{run['method']}/{run['norm']}"] = record
        smoothing = entry["methods"].get("smoothing/l2")
        entry["clean_accuracy"] = clean if clean is not None else (smoothing or {}).get("base_accuracy")
        for norm, threat in config["threat"].items():
            target = key(float(threat["target"]))
            pgd = entry["methods"].get(f"pgd/{norm}", {}).get("pgd_accuracy", {}).get(target)
            certified = {
                rec["method"]: rec["certified_accuracy"][target]
                for rec in entry["methods"].values()
                if rec["norm"] == norm
                and rec["method"] != "pgd"
                and rec["certified_accuracy"][target] is not None
            }
            entry["targets"][norm] = {
                "eps": float(threat["target"]),
                "pgd_accuracy": pgd,
                "certified_accuracy": certified,
                "gap": {m: (pgd - c) if pgd is not None else None for m, c in certified.items()},
            }
        lat = latency.get(name, {})
        base = lat.get("undefended_seconds")
        if base:
            entry["latency"]["undefended_seconds"] = base
            if "smoothed_predict_seconds" in lat:
                entry["latency"]["smoothed_predict_seconds"] = lat["smoothed_predict_seconds"]
                entry["latency"]["smoothed_predict_n"] = lat["smoothed_predict_n"]
                entry["latency"]["smoothed_predict_ratio"] = lat["smoothed_predict_seconds"] / base
            for label, rec in entry["methods"].items():
                entry["latency"][f"{label}_ratio"] = rec["seconds_per_example"] / base
        report["models"][name] = entry
    return report


METHOD_COLORS = {
    "smoothing": "tab:blue",
    "ibp": "tab:orange",
    "crown": "tab:green",
    "alpha-crown": "tab:red",
    "exact": "tab:purple",
    "pgd": "tab:gray",
}
MODEL_STYLES = [
    ("-", "o"),
    ("--", "s"),
    ("-.", "^"),
    (":", "D"),
    ((0, (5, 1)), "v"),
    ((0, (3, 1, 1, 1)), "P"),
]


def _plot_curves(report: dict[str, Any], path: Path) -> None:
    """Certified accuracy against budget: one axis per norm; colour = method, line style and marker = model."""
    norms = list(report["threats"])
    fig, axes = plt.subplots(1, len(norms), figsize=(8.5 * len(norms), 4.6), dpi=110, squeeze=False)
    for ax, norm in zip(axes[0], norms, strict=True):
        for m, (model, entry) in enumerate(report["models"].items()):
            linestyle, marker = MODEL_STYLES[m % len(MODEL_STYLES)]
            for rec in entry["methods"].values():
                if rec["norm"] != norm:
                    continue
                table = rec.get("certified_accuracy") or rec.get("pgd_accuracy")
                points = [(float(b), v) for b, v in table.items() if v is not None]
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                label = f"{model}: {rec['method']}"
                if rec["method"] == "smoothing":
                    label += f" σ={rec['sigma']} (w.p. ≥ {1 - rec['alpha']:g})"
                elif rec["method"] == "pgd":
                    label += " accuracy (upper limit)"
                ax.plot(
                    xs,
                    ys,
                    linestyle=linestyle,
                    marker=marker,
                    markersize=4,
                    color=METHOD_COLORS[rec["method"]],
                    alpha=0.6 if rec["method"] == "pgd" else 1.0,
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


def _plot_clean_vs_certified(report: dict[str, Any], path: Path) -> None:
    models = list(report["models"])
    series: dict[str, list[float]] = {"clean": []}
    labels: list[str] = []
    for norm, threat in report["threats"].items():
        for method in METHOD_ORDER:
            if any(
                method in e["targets"].get(norm, {}).get("certified_accuracy", {})
                for e in report["models"].values()
            ):
                labels.append(f"{method} {norm} @ {threat['target']:g}")
        labels.append(f"PGD {norm} @ {threat['target']:g}")
    for label in labels:
        series[label] = []
    for model in models:
        entry = report["models"][model]
        series["clean"].append(entry.get("clean_accuracy") or 0.0)
        for label in labels:
            method, norm, _ = label.split(" ", 2)
            target = entry["targets"].get(norm, {})
            value = (
                target.get("pgd_accuracy")
                if method == "PGD"
                else target.get("certified_accuracy", {}).get(method)
            )
            series[label].append(value or 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) * len(series) / 3), 4.2), dpi=110)
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        ax.bar([m + k * width for m in range(len(models))], values, width, label=label)
    ax.set_xticks([m + 0.4 - width / 2 for m in range(len(models))], models)
    ax.set_ylabel("accuracy at the target budget")
    ax.set_ylim(0, 1.05)
    ax.set_title("clean vs certified accuracy (smoothing: with probability ≥ 1 − alpha)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: unsound certificates first, then per model the target-budget table, curves, latency."""
    lines = [
        f"# robustcert report card — {report['dataset']}/{report['split']}, {report['n_examples']} examples",
        "",
    ]
    if report["unsound"]:
        lines += [
            f"## ⚠ UNSOUND CERTIFICATES: {len(report['unsound'])}",
            "",
            "A certified example was broken inside its certified budget. These certificates are wrong.",
            "",
            "| model | method | norm | budget | example | evidence |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {u['model']} | {u['method']} | {u['norm']} | {u['eps']:g} | {u['index']} | {u['evidence']} |"
            for u in report["unsound"]
        ]
        lines.append("")
    else:
        checked = "PGD at every budget" + (
            " and an attack on the smoothed prediction inside every certified radius"
            if report["validation"].get("smoothing_attack")
            else ""
        )
        lines += [f"**Every certificate survived its check** ({checked}).", ""]
    lines += [
        "Deterministic certificates (IBP, CROWN, α-CROWN, exact) hold for every input in the ball. "
        "Randomized-smoothing certificates hold with probability ≥ 1 − alpha over the sampling; "
        "PGD accuracy is an empirical upper limit, not a guarantee; it attacks the base model, so for smoothing "
        "(a different, randomized classifier) its gap is indicative only.",
        "",
    ]
    lines += [
        "## Summary at the target budget",
        "",
        "| model | clean | threat | target | PGD (upper limit) | certified | gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["models"].items():
        for norm, target in entry["targets"].items():
            cert = (
                ", ".join(
                    f"{m} {_pct(v)}" + (" (p≥1−α)" if m == "smoothing" else "")
                    for m, v in target["certified_accuracy"].items()
                )
                or "—"
            )
            gap = (
                ", ".join(f"{m} {100 * v:.1f} pts" for m, v in target["gap"].items() if v is not None) or "—"
            )
            lines.append(
                f"| {name} | {_pct(entry['clean_accuracy'])} | {norm} | {target['eps']:g} | "
                f"{_pct(target['pgd_accuracy'])} | {cert} | {gap} |"
            )
    lines += [
        "",
        "![certified accuracy against radius](curves.png)",
        "",
        "![clean vs certified](clean_vs_certified.png)",
        "",
    ]
    for name, entry in report["models"].items():
        train = entry["train"]
        lines += [
            f"## {name}: {entry['arch']}, trained with {train.get('method', '?')}"
            + "".join(f", {k}={train[k]}" for k in ("sigma", "eps", "norm") if k in train),
            "",
        ]
        for norm in report["threats"]:
            recs = [r for r in entry["methods"].values() if r["norm"] == norm]
            if not recs:
                continue
            budgets = list((recs[0].get("certified_accuracy") or recs[0].get("pgd_accuracy")).keys())
            lines += [
                f"**{norm}**: accuracy by budget",
                "",
                "| method | " + " | ".join(budgets) + " | s/example |",
                "|---|" + "---|" * (len(budgets) + 1),
            ]
            for rec in recs:
                table = rec.get("certified_accuracy") or rec.get("pgd_accuracy")
                label = rec["method"] + (
                    f" (σ={rec['sigma']}, p≥{1 - rec['alpha']:g})" if rec["method"] == "smoothing" else ""
                )
                label += " (attack: upper limit)" if rec["method"] == "pgd" else ""
                lines.append(
                    f"| {label} | "
                    + " | ".join(_pct(table[b]) for b in budgets)
                    + f" | {rec['seconds_per_example']:.4f} |"
                )
            lines.append("")
        lat = entry["latency"]
        if lat:
            lines += [
                "**Latency** (per example, measured in this run)",
                "",
                "| what | seconds | × undefended |",
                "|---|---|---|",
                f"| undefended inference | {lat['undefended_seconds']:.6f} | 1 |",
            ]
            if "smoothed_predict_seconds" in lat:
                lines.append(
                    f"| smoothed predict (n={lat['smoothed_predict_n']}) | {lat['smoothed_predict_seconds']:.4f} | "
                    f"{lat['smoothed_predict_ratio']:.0f} |"
                )
            for label, rec in entry["methods"].items():
                lines.append(f"| {label} | {rec['seconds_per_example']:.4f} | {lat[label + '_ratio']:.0f} |")
            lines.append("")
    cal = report["validation"].get("calibration") or {}
    if cal:
        lines += [
            "## Calibration of smoothing certificates",
            "",
            "| model | checked | wrong | rate | alpha |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {c['checked']} | {c['wrong']} | {c['rate']:.4f} | {c['alpha']} |"
            for m, c in cal.items()
        ]
        lines.append("")
    return "\n".join(lines) + "\n"


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render_html(report: dict[str, Any], out: Path) -> str:
    """report.html: the markdown's content as a self-contained page (images embedded as data URIs)."""
    md = render_markdown(report)
    body: list[str] = []
    table: list[str] = []

    def flush_table() -> None:
        if table:
            head, *rest = table

            def cells(line, tag):
                return "".join(
                    f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in line.strip().strip("|").split("|")
                )  # noqa: E731

            body.append(
                "<table><tr>"
                + cells(head, "th")
                + "</tr>"
                + "".join("<tr>" + cells(r, "td") + "</tr>" for r in rest if not set(r) <= set("|-"))
                + "</table>"
            )
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("## ⚠"):
            body.append(f'<div class="unsound">{html.escape(line[3:])}</div>')
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            name = line[line.index("(") + 1 : -1]
            if (out / name).exists():
                body.append(f'<img alt="{html.escape(name)}" src="{_embed(out / name)}">')
        elif line.startswith("**") and line.endswith(")."):
            body.append(f'<p class="ok">{html.escape(line.replace("**", ""))}</p>')
        elif line:
            text = html.escape(line).replace("**", "")
            body.append(f"<p>{text}</p>")
    flush_table()
    style = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
.unsound{background:#c62828;color:#fff;font-size:1.4em;font-weight:bold;padding:.6em 1em;border-radius:4px}
.ok{background:#e8f5e9;border-left:5px solid #2e7d32;padding:.5em 1em}"""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>robustcert report card</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>\n"
    )


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write report.json, curves.png, clean_vs_certified.png, report.md and report.html into ``out``."""
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot_curves(report, out / "curves.png")
    _plot_clean_vs_certified(report, out / "clean_vs_certified.png")
    (out / "report.md").write_text(render_markdown(report))
    (out / "report.html").write_text(render_html(report, out))
