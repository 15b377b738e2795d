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

CERTIFY_METHODS = ("smoothing", *BOUND_METHODS, "exact", "pgd")


def _check_norm(norm: str) -> str:
    if norm not in ("linf", "l2"):
        raise RobustCertError(f"unknown norm {norm!r}; use linf or l2")
    return norm


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
        resolved = {"norm": _check_norm(params["norm"]), "eps": parse_eps_list(params["eps"])}
        if method == "alpha-crown":
            resolved["alpha_steps"] = int(params.get("alpha_steps", 20))
        if method == "exact":
            resolved["time_limit"] = float(params.get("time_limit", 30.0))
        if method == "pgd":
            resolved["steps"], resolved["restarts"] = int(params.get("steps", 50)), int(params.get("restarts", 3))
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


def certify_run(*, method: str, model_dir: Path, dataset: str | None, split: str, data_dir: Path | None,
                params: dict[str, Any], limit: int | None, indices: str | list[int] | None, seed: int,
                resume: bool, out: Path, show_progress: bool = True, quiet: bool = False,
                ray_address: str | None = None, workers: int | None = None) -> dict[str, Any]:
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
        raise RobustCertError(f"data set {data.name} has {data.num_classes} classes but the model has {meta['num_classes']}")
    chosen = select_indices(len(data), limit, parse_indices(indices) if isinstance(indices, str) else indices)
    certifier, rows_per_example = make_certifier(method, model, meta["num_classes"], resolved)
    run_info = {
        "method": method, "params": resolved, "model": str(Path(model_dir).resolve()),
        "model_sha256": file_sha256(Path(model_dir) / "model.pt"), "dataset": data.name, "split": split,
    }
    executor = None
    if ray_address or workers:
        from robustcert.runs.ray_backend import ray_executor

        executor = ray_executor(ray_address, workers)
    rows = run_examples(out, run_info, data, chosen, certifier, seed=seed, resume=resume,
                        rows_per_example=rows_per_example, show_progress=show_progress, executor=executor)
    summary = summarize(rows, method)
    write_summary(out, summary)
    write_curve(out, rows, method, title=f"{meta['arch']} on {data.name}/{split}")
    if not quiet:
        print_summary(summary, title=f"{method}: {meta['arch']} on {data.name}/{split}, {summary['n_examples']} examples")
        print(f"files: {out}/run.json, results.jsonl, summary.json, curve.png")
    return summary


def rerender_run(run_dir: Path) -> dict[str, Any]:
    """Rebuild summary.json and curve.png of ``run_dir`` from its results.jsonl (no recomputation)."""
    run_json = Path(run_dir) / "run.json"
    if not run_json.exists():
        raise RobustCertError(f"{run_dir} is not a run directory (no run.json)")
    info = json.loads(run_json.read_text())
    rows = read_rows(Path(run_dir) / "results.jsonl")
    if not rows:
        raise RobustCertError(f"{run_dir}/results.jsonl holds no rows")
    summary = summarize(rows, info["method"])
    write_summary(run_dir, summary)
    write_curve(run_dir, rows, info["method"])
    print_summary(summary, title=f"{info['method']}: {run_dir}")
    return summary


def run_demo(out: Path, quick: bool = False) -> dict[str, Any]:
    """Train a Gaussian-noise cnn-small (σ = 0.25) on digits and certify its test set by smoothing.

    Resumable: a finished model or finished examples in ``out`` are reused.
    """
    from robustcert.data import load_dataset
    from robustcert.models import read_model_meta
    from robustcert.train import GaussianLoss, train_model

    sigma = 0.25
    model_dir = out / "model"
    epochs = 3 if quick else 30
    train_data, test_data = load_dataset("digits", "train"), load_dataset("digits", "test")
    finished = (model_dir / "model.json").exists() and read_model_meta(model_dir).get("epochs_done") == epochs
    if not finished:
        print(f"[1/2] training cnn-small on digits with Gaussian noise σ={sigma} ({epochs} epochs)")
        train_model(arch="cnn-small", train_data=train_data, test_data=test_data, loss=GaussianLoss(sigma),
                    method="gaussian", method_params={"sigma": sigma}, out_dir=model_dir, epochs=epochs,
                    seed=0, resume=True)
    print(f"[2/2] certifying the digits test set by randomized smoothing (n=10,000, alpha=0.001)")
    summary = certify_run(
        method="smoothing", model_dir=model_dir, dataset="digits", split="test", data_dir=None,
        params={"sigma": sigma, "n0": 100, "n": 1000 if quick else 10_000, "alpha": 0.001, "batch": 1000},
        limit=20 if quick else None, indices=None, seed=0, resume=True, out=out / "smoothing",
    )
    print(f"model: {model_dir}; run: {out / 'smoothing'}")
    return summary
