"""End-to-end jobs behind the CLI: a certification run, re-rendering a run, and the demo.

Each job validates its input up front (RobustCertError with a fix), writes its files as it goes and
resumes with ``resume=True``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from robustcert.errors import RobustCertError
from robustcert.methods import (
    BOUND_METHODS,
    bound_certifier,
    exact_certifier,
    parse_eps_list,
    pgd_certifier,
    smoothing_certifier,
)
from robustcert.models import file_sha256, load_model
from robustcert.report import print_summary, summarize, write_curve, write_summary
from robustcert.runs import parse_indices, read_rows, run_examples, select_indices
from robustcert.validation import check_norm

CERTIFY_METHODS = ("smoothing", *BOUND_METHODS, "exact", "pgd")


def resolve_params(method: str, params: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The method's parameters with defaults filled from the model's metadata, validated."""
    if method == "smoothing":
        sigma = params.get("sigma")
        if sigma is None:
            sigma = meta.get("train", {}).get("sigma")
            if sigma is None:
                raise RobustCertError("--sigma is required: the model was not trained with Gaussian noise")
        resolved = {k: params[k] for k in ("n0", "n", "alpha", "batch")}
        resolved["sigma"] = float(sigma)
        if not (resolved["sigma"] > 0 and math.isfinite(resolved["sigma"])):
            raise RobustCertError(f"sigma must be > 0, got {sigma}")
        if resolved["n0"] <= 0 or resolved["n"] <= 0:
            raise RobustCertError(f"n0 and n must be >= 1, got n0={resolved['n0']}, n={resolved['n']}")
        if not 0 < resolved["alpha"] < 1:
            raise RobustCertError(f"alpha must be in (0, 1), got {resolved['alpha']}")
        if resolved["batch"] <= 0:
            raise RobustCertError(f"batch must be >= 1, got {resolved['batch']}")
        return resolved
    if method in (*BOUND_METHODS, "exact", "pgd"):
        resolved = {"norm": check_norm(params["norm"]), "eps": parse_eps_list(params["eps"])}
        if method == "alpha-crown":
            resolved["alpha_steps"] = int(params.get("alpha_steps", 20))
        if method == "exact":
            resolved["time_limit"] = float(params.get("time_limit", 30.0))
        if method == "pgd":
            resolved["steps"], resolved["restarts"] = (
                int(params.get("steps", 50)),
                int(params.get("restarts", 3)),
            )
        return resolved
    raise RobustCertError(f"unknown method {method!r}; choose one of: {', '.join(CERTIFY_METHODS)}")


def make_certifier(method: str, model: torch.nn.Module, num_classes: int, p: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The per-example certifier for ``method`` with resolved parameters ``p``."""
    if method == "smoothing":
        return smoothing_certifier(model, num_classes, p["sigma"], p["n0"], p["n"], p["alpha"], p["batch"]), 1
    if method in BOUND_METHODS:
        options = {"alpha_steps": p["alpha_steps"]} if method == "alpha-crown" else {}
        return bound_certifier(model, method, p["norm"], p["eps"], **options), len(p["eps"])
    if method == "exact":
        return exact_certifier(model, p["norm"], p["eps"], p["time_limit"]), len(p["eps"])
    if method == "pgd":
        return pgd_certifier(model, p["norm"], p["eps"], p["steps"], p["restarts"]), len(p["eps"])
    raise RobustCertError(f"unknown method {method!r}")


def certify_run(
    *,
    method: str,
    model_dir: Path,
    dataset: str | None,
    split: str,
    data_dir: Path | None,
    params: dict[str, Any],
    limit: int | None,
    indices: str | list[int] | None,
    seed: int,
    resume: bool,
    out: Path,
    show_progress: bool = True,
    quiet: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run ``method`` on a model directory over a data split into ``out``; returns the summary.

    With ``ray_address`` ("auto" or HOST:PORT) or ``workers`` (start a local Ray with N CPUs) the examples
    run on Ray; the rows are the same as a serial run's.
    """
    from robustcert.data import load_dataset

    if method not in CERTIFY_METHODS:
        raise RobustCertError(f"unknown method {method!r}; choose one of: {', '.join(CERTIFY_METHODS)}")
    model, meta = load_model(model_dir)
    resolved = resolve_params(method, params, meta)
    data = load_dataset(dataset or meta["dataset"], split, data_dir)
    if list(data.input_shape) != list(meta["input_shape"]):
        raise RobustCertError(
            f"data set {data.name} has inputs of shape {list(data.input_shape)} but the model takes {meta['input_shape']}"
        )
    if data.num_classes != meta["num_classes"]:
        raise RobustCertError(
            f"data set {data.name} has {data.num_classes} classes but the model has {meta['num_classes']}"
        )
    chosen = select_indices(len(data), limit, parse_indices(indices) if isinstance(indices, str) else indices)
    certifier, rows_per_example = make_certifier(method, model, meta["num_classes"], resolved)
    run_info = {
        "method": method,
        "params": resolved,
        "model": str(Path(model_dir).resolve()),
        "model_sha256": file_sha256(Path(model_dir) / "model.pt"),
        "dataset": data.name,
        "split": split,
    }
    executor = None
    if ray_address or workers:
        from robustcert.runs.ray_backend import ray_executor

        executor = ray_executor(ray_address, workers)
    rows = run_examples(
        out,
        run_info,
        data,
        chosen,
        certifier,
        seed=seed,
        resume=resume,
        rows_per_example=rows_per_example,
        show_progress=show_progress,
        executor=executor,
    )
    summary = summarize(rows, method)
    write_summary(out, summary)
    write_curve(out, rows, method, title=f"{meta['arch']} on {data.name}/{split}")
    if not quiet:
        print_summary(
            summary,
            title=f"{method}: {meta['arch']} on {data.name}/{split}, {summary['n_examples']} examples",
        )
        print(f"files: {out}/run.json, results.jsonl, summary.json, curve.png")
    return summary


def rerender_run(run_dir: Path) -> dict[str, Any]:
    """Rebuild summary.json and curve.png of ``run_dir`` from its results.jsonl (no recomputation)."""
    run_json = Path(run_dir) / "run.json"
    if not run_json.exists():
        raise RobustCertError(
            f"{run_dir} is neither a run directory (run.json) nor an evaluate directory (evaluate.json)"
        )
    info = json.loads(run_json.read_text())
    rows = read_rows(Path(run_dir) / "results.jsonl")
    if not rows:
        raise RobustCertError(f"{run_dir}/results.jsonl holds no rows")
    summary = summarize(rows, info["method"])
    write_summary(run_dir, summary)
    write_curve(run_dir, rows, info["method"])
    print_summary(summary, title=f"{info['method']}: {run_dir}")
    return summary


def print_report_card(report: dict[str, Any], out: Path) -> int:
    """Print the report card's headline; 3 if any certificate was broken (the command's exit status), else 0."""
    from rich.console import Console

    console = Console(width=120)
    if report["unsound"]:
        console.print(
            f"[bold white on red] UNSOUND CERTIFICATES: {len(report['unsound'])} [/] — see {out}/report.html"
        )
        for u in report["unsound"][:10]:
            console.print(
                f"[red]  {u['model']} {u['method']} {u['norm']} eps={u['eps']:g} example {u['index']}: {u['evidence']}[/]"
            )
    from rich.table import Table

    table = Table(
        title=f"report card: {report['dataset']}/{report['split']}, {report['n_examples']} examples"
    )
    for column in ("model", "clean", "threat @ target", "PGD (upper limit)", "certified"):
        table.add_column(column)
    for name, entry in report["models"].items():
        for norm, target in entry["targets"].items():
            cert = ", ".join(f"{m} {100 * v:.1f}%" for m, v in target["certified_accuracy"].items())
            pgd = "—" if target["pgd_accuracy"] is None else f"{100 * target['pgd_accuracy']:.1f}%"
            clean = "—" if entry["clean_accuracy"] is None else f"{100 * entry['clean_accuracy']:.1f}%"
            table.add_row(name, clean, f"{norm} @ {target['eps']:g}", pgd, cert)
    console.print(table)
    console.print(
        "smoothing numbers hold with probability >= 1 - alpha; the others are deterministic; PGD is an upper limit"
    )
    console.print(f"report: {out}/report.html, report.md, report.json, curves.png, clean_vs_certified.png")
    return 3 if report["unsound"] else 0


def evaluate_and_print(
    config: Path, out: Path, ray_address: str | None = None, workers: int | None = None
) -> int:
    """Run ``robustcert evaluate`` and print its headline; returns the exit status (3 = unsound certificates)."""
    from robustcert.evaluate import run_evaluate

    report = run_evaluate(config, Path(out), ray_address=ray_address, workers=workers)
    return print_report_card(report, Path(out))


def rerender(run_dir: Path) -> int:
    """Re-render a run directory or an evaluate directory from its rows; returns an exit status."""
    from robustcert.evaluate import CONFIG_NAME

    if (Path(run_dir) / CONFIG_NAME).exists():
        from robustcert.report.card import build_report, write_report

        report = build_report(Path(run_dir))
        write_report(Path(run_dir), report)
        return print_report_card(report, Path(run_dir))
    rerender_run(run_dir)
    return 0


def demo_config(quick: bool = False) -> Path:
    """The path of the bundled demo config (``quick``: a tiny variant written next to it for tests)."""
    from importlib.resources import files

    return Path(str(files("robustcert") / "configs" / ("demo_quick.toml" if quick else "demo.toml")))


def run_demo(out: Path, quick: bool = False) -> int:
    """The main job on the embedded default (digits): train a Gaussian-noise cnn-small and a PGD-trained
    mlp-2x64, then the whole report card (smoothing, IBP, CROWN, alpha-CROWN, exact, PGD, validation,
    latency). Resumable: finished models and rows in ``out`` are reused. Returns the exit status."""
    print(f"robustcert demo: the report card on digits -> {out}", flush=True)
    return evaluate_and_print(demo_config(quick), out)
