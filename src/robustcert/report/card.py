"""The report card: aggregates an ``evaluate`` directory's rows into report.json, report.md, report.html
(self-contained, images embedded) and plots. Reads rows and the stored measurements only, so
``robustcert report DIR`` re-renders without recomputing.

:func:`build_report` computes every number once into a JSON-able dict; :func:`card_blocks` turns that
dict into headings, paragraphs and tables; report.md and report.html are two independent renderings of
those blocks (:mod:`robustcert.report.document`), so they carry the same content and neither is parsed
from the other.

What the card guarantees:

- Method labels, order, families and which methods are deterministic come from the method registry.
- Every accuracy carries the number of examples it is over (``n``). At a target budget, a method's clean
  accuracy, certified accuracy, attack accuracy and gap are all over that method's own examples; a table
  that holds rows with different ``n`` says so.
- Unsound certificates are found by cross-checking rows: a deterministic certificate at (model, norm,
  eps, example) is unsound if an attack at the same budget, or the exact verifier, found a misclassified
  point there; a smoothing certificate is unsound if the smoothed-prediction attack (``validation.json``)
  changed the smoothed prediction inside the certified radius.
- Latency is shown as measured (``latency.json``: median and interquartile range of interleaved repeats,
  ratios to two significant digits, with each measurement's example count and batch size); certifiers'
  own time per example comes from their rows and is labelled as measured during the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustcert.errors import RobustCertError
from robustcert.methods import all_methods, get_method
from robustcert.report.document import Block, Heading, Image, Paragraph, Table, to_html, to_markdown
from robustcert.report.format import pct, ratio, ratio_range, seconds, seconds_range
from robustcert.report.plots import plot_card_curves, plot_clean_vs_certified
from robustcert.report.summary import (
    attack_accuracy,
    bound_certified_accuracy,
    example_count,
    key,
    rows_of_type,
    smoothing_certified_accuracy,
)
from robustcert.rows import AttackRow, BoundRow, ExactRow, Row, SmoothingRow

EVALUATE_FILE = "evaluate.json"
CURVES_FILE = "curves.png"
BARS_FILE = "clean_vs_certified.png"


def _rank(name: str) -> int:
    """The method's position in the registry (the report's order)."""
    names = [m.name for m in all_methods()]
    if name not in names:
        get_method(name)  # raises RobustCertError naming the unknown method and the choices
    return names.index(name)


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.exists():
        if default is not None:
            return default
        raise RobustCertError(f"{path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RobustCertError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _first_per_example(rows: Sequence[Row]) -> dict[int, Row]:
    first: dict[int, Row] = {}
    for r in rows:
        first.setdefault(r.index, r)
    return first


def _base_correct(rows: Sequence[Row]) -> dict[int, bool]:
    """Per example: is the undefended base model's prediction correct (smoothing rows: ``base_correct``)."""
    return {
        i: (r.base_correct if isinstance(r, SmoothingRow) else r.correct)
        for i, r in _first_per_example(rows).items()
    }


def _budget_table(
    rows: Sequence[Row], family: str, name: str, budgets: list[float]
) -> dict[str, float | None]:
    """Accuracy at each of the threat's budgets (``report.summary`` computes it, so a run directory and
    the report card cannot disagree); None at a budget the method was not run at."""
    if family == "smoothing":
        return dict(smoothing_certified_accuracy(rows_of_type(rows, SmoothingRow, name), budgets))
    table = (
        attack_accuracy(rows_of_type(rows, AttackRow, name))
        if family == "attack"
        else bound_certified_accuracy(rows_of_type(rows, BoundRow, name))
    )
    return {key(b): table.get(key(b)) for b in budgets}


def _examples_at(rows: Sequence[Row], family: str, eps: float) -> dict[int, Row]:
    """The rows that decide each example's verdict at budget ``eps`` (smoothing: its one row, a radius)."""
    if family == "smoothing":
        return _first_per_example(rows)
    return {r.index: r for r in rows if isinstance(r, BoundRow | AttackRow) and float(r.eps) == eps}


def _find_unsound(
    runs: list[dict[str, Any]], rows_of: dict[int, list[Row]], validation: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The unsound certificates, and how many deterministic certificates were checked: ``certified``
    (all of them) and ``attacked`` (those with an attack row at the same model, norm, budget, example)."""
    unsound = []
    broken: dict[tuple[str, str, float, int], str] = {}
    attacked: set[tuple[str, str, float, int]] = set()
    for k, run in enumerate(runs):
        for r in rows_of[k]:
            where = (run["model"], run["norm"], float(getattr(r, "eps", -1.0)), r.index)
            if isinstance(r, AttackRow):
                attacked.add(where)
            if isinstance(r, AttackRow) and r.correct and r.attack_success:
                broken[where] = f"{get_method(run['method']).label} margin {r.adv_margin:.4g}"
            if isinstance(r, ExactRow) and r.status == "counterexample":
                broken.setdefault(where, f"{get_method(run['method']).label} counterexample")
    checked = {"certified": 0, "attacked": 0}
    for k, run in enumerate(runs):
        info = get_method(run["method"])
        if not info.deterministic:
            continue
        for r in rows_of[k]:
            if not isinstance(r, BoundRow):
                continue
            where = (run["model"], run["norm"], float(r.eps), r.index)
            if r.certified:
                checked["certified"] += 1
                checked["attacked"] += where in attacked
            evidence = broken.get(where)
            if r.certified and evidence:
                unsound.append(
                    {
                        "model": run["model"],
                        "method": run["method"],
                        "label": info.label,
                        "norm": run["norm"],
                        "eps": float(r.eps),
                        "index": r.index,
                        "evidence": evidence,
                    }
                )
    smoothing_label = next((m.label for m in all_methods() if m.family == "smoothing"), "smoothing")
    for model, result in validation.get("smoothing_attack", {}).items():
        for b in result.get("broken", []):
            unsound.append(
                {
                    "model": model,
                    "method": "smoothing",
                    "label": smoothing_label,
                    "norm": "l2",
                    "eps": b["radius"],
                    "index": b["index"],
                    "evidence": f"smoothed prediction {b['prediction_at_attack']} ≠ certified "
                    f"{b['certified_prediction']} at L2 distance {b['distance']:.4g}",
                }
            )
    return unsound, checked


def _method_record(
    run: dict[str, Any], rows: list[Row], budgets: list[float], run_dir: Path
) -> dict[str, Any]:
    info = get_method(run["method"])
    n = example_count(rows)
    first = _first_per_example(rows)
    run_json = _read_json(run_dir / "run.json", default={})
    record: dict[str, Any] = {
        "method": info.name,
        "label": info.label,
        "family": info.family,
        "deterministic": info.deterministic,
        "norm": run["norm"],
        "n_examples": n,
        "accuracy": sum(1 for r in first.values() if r.correct) / n,
        "attack_accuracy" if info.family == "attack" else "certified_accuracy": _budget_table(
            rows, info.family, info.name, budgets
        ),
        "seconds_per_example": sum(r.seconds for r in rows) / n,
        "batch_size": run_json.get("batch_size"),
        "dir": run["dir"],
    }
    if info.family == "smoothing":
        srows = rows_of_type(rows, SmoothingRow, info.name)
        record["alpha"] = srows[0].alpha
        record["sigma"] = srows[0].sigma
        record["n_samples"] = srows[0].n
        record["guarantee"] = f"holds with probability >= {1 - srows[0].alpha:g} (randomized smoothing)"
        record["base_accuracy"] = sum(1 for r in srows if r.base_correct) / n
        record["abstain_rate"] = sum(1 for r in srows if r.prediction == -1) / n
    elif info.deterministic:
        record["guarantee"] = "deterministic"
    elif info.family == "attack":
        record["guarantee"] = "none (an attack: empirical upper limit)"
    return record


def _target(
    eps: float,
    runs: list[tuple[dict[str, Any], list[Row]]],
) -> dict[str, Any]:
    """The summary at one threat's target budget, for one model: each method over its own examples,
    with the attack accuracy, clean accuracy and gap over the same examples."""
    attack_runs = [(run, rows) for run, rows in runs if get_method(run["method"]).family == "attack"]
    attack_label = " + ".join(get_method(run["method"]).label for run, _ in attack_runs)
    # an example survives the attacks at eps if it is correct and no attack run broke it
    survives: dict[int, bool] = {}
    for _run, rows in attack_runs:
        for r in rows:
            if isinstance(r, AttackRow) and float(r.eps) == eps:
                survives[r.index] = survives.get(r.index, True) and r.correct and not r.attack_success
    methods: dict[str, Any] = {}
    for run, rows in runs:
        info = get_method(run["method"])
        if info.family == "attack":
            continue
        at = _examples_at(rows, info.family, eps)
        if not at:
            continue  # not run at this budget
        indices = sorted(at)
        n = len(indices)
        if info.family == "smoothing":
            certified = sum(
                1 for r in at.values() if isinstance(r, SmoothingRow) and r.correct and r.radius >= eps
            )
        else:
            certified = sum(1 for r in at.values() if r.correct and r.certified)
        base = _base_correct(rows)
        attacked = all(i in survives for i in indices)
        attack_same = sum(survives[i] for i in indices) / n if attacked else None
        acc = certified / n
        methods[info.name] = {
            "label": info.label,
            "family": info.family,
            "deterministic": info.deterministic,
            "n_examples": n,
            "certified_accuracy": acc,
            "clean_accuracy": sum(base[i] for i in indices) / n,
            "attack_accuracy": attack_same,
            "gap": None if attack_same is None else attack_same - acc,
        }
    n_attack = len(survives)
    counts = {m["n_examples"] for m in methods.values()} | ({n_attack} if survives else set())
    return {
        "eps": eps,
        "n_examples": n_attack if survives else max(counts, default=0),
        "attack_label": attack_label,
        "attack_accuracy": sum(survives.values()) / n_attack if survives else None,
        "certified_accuracy": {m: rec["certified_accuracy"] for m, rec in methods.items()},
        "gap": {m: rec["gap"] for m, rec in methods.items()},
        "methods": methods,
        "same_examples": len(counts) <= 1,
    }


def _latency(measured: Any, methods: dict[str, Any], model: str) -> dict[str, Any]:
    """The model's latency section: the interleaved measurement (if any) and each run's own time."""
    from robustcert.evaluation.latency import LatencyResult

    out: dict[str, Any] = {"measured": None, "note": "", "certifiers": {}}
    undefended = None
    if measured:
        try:
            result = LatencyResult.from_json(measured, f"latency.json[{model!r}]")
        except RobustCertError as exc:
            out["note"] = str(exc)
        else:
            out["measured"] = result.to_json()
            undefended = result.undefended.seconds.median
    for label, rec in methods.items():
        out["certifiers"][label] = {
            "label": rec["label"],
            "norm": rec["norm"],
            "n_examples": rec["n_examples"],
            "batch_size": rec["batch_size"],
            "seconds_per_example": rec["seconds_per_example"],
            "ratio_to_undefended": rec["seconds_per_example"] / undefended if undefended else None,
        }
    return out


def build_report(out: Path) -> dict[str, Any]:
    """The report card's numbers, from the rows under ``out`` (an ``evaluate`` output directory).

    Reads ``evaluate.json`` (``config``, ``models``, ``runs`` with model/method/norm/dir, ``indices``),
    each run's ``results.jsonl`` (as the registry's row type of its method), each model's ``model.json``,
    and optionally ``validation.json`` and ``latency.json`` (model name → ``LatencyResult.to_json()``).
    Raises RobustCertError if ``out`` is not an evaluate directory or a file is malformed."""
    from robustcert.runs.store import read_rows

    out = Path(out)
    if not (out / EVALUATE_FILE).exists():
        raise RobustCertError(
            f"{out} is not an evaluate directory (no {EVALUATE_FILE}); run `robustcert evaluate` first"
        )
    info = _read_json(out / EVALUATE_FILE)
    config, runs = info["config"], info["runs"]
    threats = config["threat"]
    norm_order = list(threats)
    validation = _read_json(out / "validation.json", default={})
    latency = _read_json(out / "latency.json", default={})
    runs = sorted(runs, key=lambda r: (_rank(r["method"]), norm_order.index(r["norm"])))
    rows_of = {
        k: read_rows(out / run["dir"] / "results.jsonl", get_method(run["method"]).row_type)
        for k, run in enumerate(runs)
    }
    unsound, checked = _find_unsound(runs, rows_of, validation)
    present = sorted({run["method"] for k, run in enumerate(runs) if rows_of[k]}, key=_rank)
    report: dict[str, Any] = {
        "dataset": config["data"]["dataset"],
        "split": config["data"]["split"],
        "n_examples": len(info["indices"]),
        "threats": threats,
        "methods": [
            {"name": m.name, "label": m.label, "family": m.family, "deterministic": m.deterministic}
            for m in (get_method(name) for name in present)
        ],
        "attack_label": " + ".join(get_method(m).label for m in present if get_method(m).family == "attack"),
        "models": {},
        "unsound": unsound,
        "checked": checked,
        "validation": validation,
    }
    for name, model_dir in info["models"].items():
        # a robustcert model directory describes itself; a model file (ONNX, module:function) is named by its source
        meta_path = Path(model_dir) / "model.json"
        meta = _read_json(meta_path) if meta_path.is_file() else {"arch": Path(str(model_dir)).name}
        mine = [(run, rows_of[k]) for k, run in enumerate(runs) if run["model"] == name and rows_of[k]]
        methods: dict[str, Any] = {}
        for run, rows in mine:
            budgets = [float(e) for e in threats[run["norm"]]["eps"]]
            methods[f"{run['method']}/{run['norm']}"] = _method_record(run, rows, budgets, out / run["dir"])
        # clean accuracy of the base model: over the largest example set among the runs
        clean, clean_n = None, 0
        for _run, rows in mine:
            base = _base_correct(rows)
            if len(base) > clean_n:
                clean, clean_n = sum(base.values()) / len(base), len(base)
        run_json = _read_json(out / mine[0][0]["dir"] / "run.json") if mine else {}
        report["models"][name] = {
            "arch": meta["arch"],
            "domain": str(run_json.get("domain", "0,1")),
            "class_names": run_json.get("class_names"),
            "train": meta.get("train", {}),
            "clean_accuracy": clean,
            "clean_n_examples": clean_n,
            "methods": methods,
            "targets": {
                norm: _target(float(threat["target"]), [(r, rows) for r, rows in mine if r["norm"] == norm])
                for norm, threat in threats.items()
                if any(r["norm"] == norm for r, _ in mine)
            },
            "latency": _latency(latency.get(name), methods, name),
        }
    return report


# ---------------------------------------------------------------------------------------------- rendering


def _n_note(counts: set[int]) -> str:
    return (
        f"Rows are over different numbers of examples (n = {', '.join(str(c) for c in sorted(counts))}): "
        "each accuracy is over its own row's n examples (a smaller n is a subset), so accuracies in rows "
        "with different n are over different example sets and are not directly comparable."
    )


def _soundness_blocks(report: dict[str, Any]) -> list[Block]:
    unsound = report["unsound"]
    if unsound:
        return [
            Paragraph(
                strong=f"UNSOUND CERTIFICATES: {len(unsound)}",
                text="A certified example was broken inside its certified budget. These certificates are wrong.",
                kind="alert",
            ),
            Table(
                ["model", "method", "norm", "budget", "example", "evidence"],
                [
                    [
                        u["model"],
                        u.get("label", u["method"]),
                        u["norm"],
                        f"{u['eps']:g}",
                        str(u["index"]),
                        u["evidence"],
                    ]
                    for u in unsound
                ],
                numeric=frozenset({3, 4}),
            ),
        ]
    checked = report["checked"]
    checks = [
        f"{report['attack_label'] or 'an attack'} at the same budget on {checked['attacked']} of "
        f"{checked['certified']} deterministic certificates"
    ]
    attacked = report["validation"].get("smoothing_attack") or {}
    if attacked:
        counts = ", ".join(f"{m}: {r.get('attacked', '?')} certified examples" for m, r in attacked.items())
        checks.append(f"an attack on the smoothed prediction inside the certified radius ({counts})")
    return [
        Paragraph(strong="Every certificate survived its check", text=f"({'; '.join(checks)}).", kind="ok")
    ]


def _guarantee_text(report: dict[str, Any]) -> str:
    deterministic = [m["label"] for m in report["methods"] if m["deterministic"]]
    smoothing = [m["label"] for m in report["methods"] if m["family"] == "smoothing"]
    attacks = [m["label"] for m in report["methods"] if m["family"] == "attack"]
    parts = []
    if deterministic:
        parts.append(
            f"Deterministic certificates ({', '.join(deterministic)}) hold for every input in the ball."
        )
    if smoothing:
        parts.append(
            f"Randomized-smoothing certificates ({', '.join(smoothing)}) hold with probability ≥ 1 − alpha over "
            "the sampling."
        )
    if attacks:
        parts.append(
            f"Attack accuracy ({', '.join(attacks)}) is an empirical upper limit, not a guarantee; it attacks "
            "the base model, so for smoothing (a different, randomized classifier) its gap is indicative only."
        )
    parts.append("n is the number of examples each accuracy is over.")
    return " ".join(parts)


def _summary_blocks(report: dict[str, Any]) -> list[Block]:
    rows: list[list[str]] = []
    counts: set[int] = set()
    for name, entry in report["models"].items():
        for norm, target in entry["targets"].items():
            where = f"{norm} @ {target['eps']:g}"
            for rec in target["methods"].values():
                counts.add(rec["n_examples"])
                label = rec["label"] + (" (p ≥ 1 − α)" if rec["family"] == "smoothing" else "")
                gap = "—" if rec["gap"] is None else f"{100 * rec['gap']:.1f} pts"
                rows.append(
                    [
                        name,
                        where,
                        label,
                        str(rec["n_examples"]),
                        pct(rec["clean_accuracy"]),
                        pct(rec["certified_accuracy"]),
                        pct(rec["attack_accuracy"]),
                        gap,
                    ]
                )
            if not target["methods"] and target["attack_accuracy"] is not None:
                counts.add(target["n_examples"])
                rows.append(
                    [
                        name,
                        where,
                        "—",
                        str(target["n_examples"]),
                        pct(entry["clean_accuracy"]),
                        "—",
                        pct(target["attack_accuracy"]),
                        "—",
                    ]
                )

    blocks: list[Block] = [
        Heading("Summary at the target budget"),
        Table(
            [
                "model",
                "threat @ target",
                "method",
                "n",
                "clean",
                "certified",
                f"{report['attack_label'] or 'attack'} (upper limit)",
                "gap",
            ],
            rows,
            numeric=frozenset({3, 4, 5, 6, 7}),
            caption="Clean, certified and attack accuracy and the gap of each row are over the same n examples.",
        ),
    ]
    if len(counts) > 1:
        blocks.append(Paragraph(_n_note(counts)))
    return blocks


def _model_blocks(report: dict[str, Any], name: str, entry: dict[str, Any]) -> list[Block]:
    from robustcert.domain import InputDomain

    train = entry["train"]
    origin = (
        f"trained with {train.get('method', '?')}" + "".join(f", {k}={train[k]}" for k in ("sigma", "eps", "norm") if k in train)
        if train
        else "a model file"
    )
    domain = entry.get("domain", "0,1")
    blocks: list[Block] = [Heading(f"{name}: {entry['arch']}, {origin}; inputs in {InputDomain.parse(domain)}")]
    for norm in report["threats"]:
        recs = [r for r in entry["methods"].values() if r["norm"] == norm]
        if not recs:
            continue
        budgets = [key(float(b)) for b in report["threats"][norm]["eps"]]
        rows = []
        for rec in recs:
            table = rec["attack_accuracy"] if rec["family"] == "attack" else rec["certified_accuracy"]
            label = rec["label"]
            if rec["family"] == "smoothing":
                label += f" (σ={rec['sigma']}, p ≥ {1 - rec['alpha']:g})"
            elif rec["family"] == "attack":
                label += " (attack: upper limit)"
            rows.append(
                [label, str(rec["n_examples"])]
                + [pct(table.get(b)) for b in budgets]
                + [seconds(rec["seconds_per_example"])]
            )
        blocks.append(
            Table(
                ["method", "n"] + [f"{float(b):g}" for b in budgets] + ["time / example"],
                rows,
                numeric=frozenset(range(1, len(budgets) + 3)),
                caption=f"{norm}: accuracy by budget ({'radius' if norm == 'l2' else 'eps'})",
            )
        )
        counts = {r["n_examples"] for r in recs}
        if len(counts) > 1:
            blocks.append(Paragraph(_n_note(counts)))
    blocks += _latency_blocks(entry["latency"])
    return blocks


def _latency_blocks(lat: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    measured = lat.get("measured")
    if measured:
        u = measured["undefended"]
        us = u["seconds_per_example"]
        rows = [
            [
                "undefended inference" + (f" ({u['detail']})" if u.get("detail") else ""),
                str(u["examples"]),
                str(u["batch_size"]),
                seconds_range(us["median"], us["low"], us["high"]),
                "1×",
            ]
        ]
        for name, d in measured["defended"].items():
            ds, r = d["seconds_per_example"], d["ratio"]
            rows.append(
                [
                    name + (f" ({d['detail']})" if d.get("detail") else ""),
                    str(d["examples"]),
                    str(d["batch_size"]),
                    seconds_range(ds["median"], ds["low"], ds["high"]),
                    ratio_range(r["median"], r["low"], r["high"]),
                ]
            )
        threads = measured["torch_threads"]
        blocks.append(
            Table(
                ["procedure", "n", "batch", "time / example: median (IQR)", "× undefended: median (IQR)"],
                rows,
                numeric=frozenset({1, 2, 3, 4}),
                caption=(
                    f"Latency, measured in one process: {measured['warmup']} warm-up call(s), then "
                    f"{measured['repeats']} rounds with each defended call timed back to back with an "
                    f"undefended one, {threads} torch thread{'s' if threads != 1 else ''}. The ratio is the "
                    "median of those pairs' ratios; n is the number of examples per call."
                ),
            )
        )
    elif lat.get("note"):
        blocks.append(Paragraph(strong="Latency not shown:", text=lat["note"]))
    certifiers = lat.get("certifiers") or {}
    if certifiers:
        undefended = measured["undefended"]["seconds_per_example"]["median"] if measured else None
        rows = [
            [
                f"{c['label']} ({c['norm']})",
                str(c["n_examples"]),
                "—" if c["batch_size"] is None else str(c["batch_size"]),
                seconds(c["seconds_per_example"]),
                "—" if c["ratio_to_undefended"] is None else ratio(c["ratio_to_undefended"]),
            ]
            for c in certifiers.values()
        ]
        caption = (
            "Time per example of each run, from its rows (wall time during the run, amortised over the "
            "batch; not interleaved with the undefended timing"
            + (
                f", so the ratio to the undefended median of {seconds(undefended)} is indicative only)."
                if undefended
                else ")."
            )
        )
        blocks.append(
            Table(
                ["run", "n", "batch", "time / example", "× undefended"],
                rows,
                numeric=frozenset({1, 2, 3, 4}),
                caption=caption,
            )
        )
    return blocks


def _calibration_blocks(report: dict[str, Any]) -> list[Block]:
    cal = report["validation"].get("calibration") or {}
    if not cal:
        return []
    return [
        Heading("Calibration of smoothing certificates"),
        Table(
            ["model", "n (checked)", "wrong", "rate", "alpha"],
            [
                [m, str(c["checked"]), str(c["wrong"]), f"{c['rate']:.4f}", f"{c['alpha']}"]
                for m, c in cal.items()
            ],
            numeric=frozenset({1, 2, 3, 4}),
        ),
    ]


def card_title(report: dict[str, Any]) -> str:
    return f"robustcert report card — {report['dataset']}/{report['split']}, {report['n_examples']} examples"


def card_blocks(report: dict[str, Any]) -> list[Block]:
    """The report card as blocks: soundness first, then the target-budget summary, the plots, a section
    per model (accuracy by budget, latency), and calibration."""
    blocks = _soundness_blocks(report)
    blocks.append(Paragraph(_guarantee_text(report)))
    blocks += _summary_blocks(report)
    blocks += [
        Image(CURVES_FILE, "certified accuracy against radius"),
        Image(BARS_FILE, "clean vs certified"),
    ]
    for name, entry in report["models"].items():
        blocks += _model_blocks(report, name, entry)
    blocks += _calibration_blocks(report)
    return blocks


def render_markdown(report: dict[str, Any]) -> str:
    """report.md, rendered from the report data."""
    return to_markdown(card_title(report), card_blocks(report))


def render_html(report: dict[str, Any], out: Path) -> str:
    """report.html, rendered from the report data; the PNGs under ``out`` are embedded as data URIs."""
    return to_html(card_title(report), card_blocks(report), Path(out))


def write_report(out: Path, report: dict[str, Any]) -> None:
    """Write report.json, curves.png, clean_vs_certified.png, report.md and report.html into ``out``."""
    out = Path(out)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_card_curves(report, out / CURVES_FILE)
    plot_clean_vs_certified(report, out / BARS_FILE)
    (out / "report.md").write_text(render_markdown(report))
    (out / "report.html").write_text(render_html(report, out))
