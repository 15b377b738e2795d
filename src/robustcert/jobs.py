"""The jobs behind ``robustcert certify`` / ``attack`` / ``report``: one method over a data split into a run
directory, and re-rendering a directory from its rows.

A job validates everything up front (model, data shape and classes, the method's parameters through the
registry) before the first example runs, writes its rows as it goes and resumes with ``resume=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from robustcert.errors import RobustCertError
from robustcert.methods import Method, ModelInfo, Params, get_method
from robustcert.rows import Row

EVALUATE_FILE = "evaluate.json"  # marks an evaluate (report card) directory


@dataclass
class LoadedModel:
    """A model ready for every method: the module in eval mode, what methods may know of it, and the
    file that pins it (its sha256 goes into run.json)."""

    module: nn.Module
    info: ModelInfo
    source: Path
    sha256: str


def load_run_model(model_dir: Path) -> LoadedModel:
    """Load a robustcert model directory (model.pt + model.json)."""
    from robustcert.models import file_sha256, load_model

    module, meta = load_model(model_dir)
    info = ModelInfo(input_shape=tuple(meta["input_shape"]), num_classes=int(meta["num_classes"]), meta=meta)
    return LoadedModel(module, info, Path(model_dir).resolve(), file_sha256(Path(model_dir) / "model.pt"))


def check_data_fits(data: Any, info: ModelInfo) -> None:
    """RobustCertError unless the data's input shape and class count are the model's."""
    if tuple(data.input_shape) != tuple(info.input_shape):
        raise RobustCertError(
            f"data set {data.name} has inputs of shape {list(data.input_shape)} but the model takes "
            f"{list(info.input_shape)}; choose the data set the model was trained on (--dataset)"
        )
    if data.num_classes != info.num_classes:
        raise RobustCertError(
            f"data set {data.name} has {data.num_classes} classes but the model has {info.num_classes}; "
            "choose the data set the model was trained on (--dataset)"
        )


def certify_run(
    *,
    method: str | Method,
    params: Params,
    model_dir: Path,
    dataset: str | None = None,
    split: str = "test",
    data_dir: Path | None = None,
    limit: int | None = None,
    indices: list[int] | None = None,
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
    out: Path,
    show_progress: bool = True,
    quiet: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run one registered method on a model directory over a data split into ``out``; returns the summary.

    With ``ray_address`` ("auto" or HOST:PORT) or ``workers`` (a local Ray with N CPUs) the examples run on
    Ray; the rows are the same as a serial run's."""
    from robustcert.data import load_dataset
    from robustcert.report import print_summary, summarize, write_curve, write_summary
    from robustcert.runs import run_examples, select_indices

    entry = get_method(method) if isinstance(method, str) else method
    loaded = load_run_model(model_dir)
    final = entry.finalize(params, loaded.info)
    data = load_dataset(dataset or loaded.info.meta["dataset"], split, data_dir)
    check_data_fits(data, loaded.info)
    chosen = select_indices(len(data), limit, indices)
    out = Path(out)
    certifier = entry.build(loaded.module, loaded.info, final, out / "log.txt")
    run_info = {
        "method": entry.name,
        "family": entry.family,
        "params": final.to_json(),
        "model": str(loaded.source),
        "model_sha256": loaded.sha256,
        "dataset": data.name,
        "split": split,
        "batch_size": certifier.batch_size,
    }
    executor = None
    if ray_address or workers:
        from robustcert.runs.ray_backend import ray_executor

        executor = ray_executor(ray_address, workers)
    rows = run_examples(
        out, run_info, data, chosen, certifier, entry.row_type,
        seed=seed, resume=resume, force=force, show_progress=show_progress, executor=executor,
    )
    summary = summarize(rows, entry.name)
    write_summary(out, summary)
    arch = loaded.info.meta.get("arch", loaded.source.name)
    write_curve(out, rows, entry.name, title=f"{arch} on {data.name}/{split}")
    if not quiet:
        print_summary(summary, title=f"{entry.label}: {arch} on {data.name}/{split}")
        print(f"files: {out}/run.json, results.jsonl, summary.json, curve.png")
    return summary


TRAINING_FILES = ("train_state.pt", "model.pt", "model.json")


def prepare_training_dir(out: Path, *, force: bool) -> None:
    """With ``force``, remove a previous training run's files from ``out`` (nothing else in it)."""
    if force:
        for name in TRAINING_FILES:
            (Path(out) / name).unlink(missing_ok=True)


def read_run(run_dir: Path) -> tuple[dict[str, Any], list[Row]]:
    """``run.json`` and the validated rows of a run directory."""
    from robustcert.runs import read_rows

    run_json = Path(run_dir) / "run.json"
    if not Path(run_dir).exists():
        raise RobustCertError(f"{run_dir} does not exist; give the --out of a certify, attack or evaluate command")
    if not run_json.exists():
        raise RobustCertError(
            f"{run_dir} is neither a run directory (run.json) nor an evaluate directory ({EVALUATE_FILE}); "
            "give the --out of a certify, attack or evaluate command"
        )
    try:
        info = json.loads(run_json.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RobustCertError(f"{run_json} is not valid JSON; rerun the command with --force") from None
    if not isinstance(info, dict) or not isinstance(info.get("method"), str):
        raise RobustCertError(f"{run_json} is not a run.json object with a method; rerun the command with --force")
    entry = get_method(str(info.get("method")))
    return info, read_rows(Path(run_dir) / "results.jsonl", entry.row_type)


def rerender_run(run_dir: Path) -> dict[str, Any]:
    """Rebuild summary.json and curve.png of ``run_dir`` from its results.jsonl (no recomputation)."""
    from robustcert.report import print_summary, summarize, write_curve, write_summary

    info, rows = read_run(run_dir)
    if not rows:
        raise RobustCertError(f"{run_dir}/results.jsonl holds no rows; run the command (with --resume) first")
    summary = summarize(rows, info["method"])
    write_summary(run_dir, summary)
    write_curve(run_dir, rows, info["method"])
    print_summary(summary, title=f"{get_method(info['method']).label}: {run_dir}")
    return summary


def rerender(run_dir: Path) -> int:
    """Re-render a run directory or an evaluate directory from its rows; returns an exit status."""
    if (Path(run_dir) / EVALUATE_FILE).exists():
        from robustcert.report.card import build_report, write_report
        from robustcert.report.console import print_report_card

        report = build_report(Path(run_dir))
        write_report(Path(run_dir), report)
        return print_report_card(report, Path(run_dir))
    rerender_run(Path(run_dir))
    return 0
