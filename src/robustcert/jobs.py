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
from robustcert.models.sources import ModelSpec
from robustcert.rows import Row

EVALUATE_FILE = "evaluate.json"  # marks an evaluate (report card) directory
MODEL_FILE_SUFFIXES = (".onnx", ".pt2", ".ts", ".jit", ".torchscript")


@dataclass
class LoadedModel:
    """A model ready for every method: the module in eval mode, what methods may know of it, where it came
    from and the fingerprint that pins it (its sha256 goes into run.json)."""

    module: nn.Module
    info: ModelInfo
    source: str
    kind: str
    sha256: str
    spec: ModelSpec


def load_run_model(model: ModelSpec | str | Path, data: Any) -> LoadedModel:
    """Load ``--model`` (a model directory, a model file or ``module:function``, with what the user states
    about it in a :class:`ModelSpec`) and check it against ``data``: same input shape, class scores of
    the data's class count, per-channel statements that fit the channels, and every example inside the
    input domain."""
    from robustcert.models.sources import ModelSpec, complete, load_model_source

    spec = ModelSpec.of(model)
    domain = spec.domain
    shape = tuple(int(s) for s in data.input_shape)
    domain.check_channels(shape, "--input-range")
    for what, values in (("--mean", spec.mean), ("--std", spec.std)):
        if values is not None and len(values) not in (1, shape[0]):
            raise RobustCertError(
                f"{what} has {len(values)} values but the inputs have {shape[0]} channels; give one value or {shape[0]}"
            )
    source = complete(load_model_source(spec, shape), shape, int(data.num_classes), data.name)
    assert source.input_shape is not None and source.num_classes is not None
    if spec.class_names is not None and len(spec.class_names) != source.num_classes:
        raise RobustCertError(
            f"--class-names gives {len(spec.class_names)} names but the model has {source.num_classes} classes"
        )
    domain.check_data(data.x, f"the data ({data.name}/{data.split})")
    info = ModelInfo(
        input_shape=source.input_shape,
        num_classes=source.num_classes,
        meta=source.meta,
        domain=domain,
        class_names=spec.class_names,
    )
    return LoadedModel(source.module, info, source.location, source.kind, source.fingerprint, spec)


def default_dataset(model: ModelSpec | str | Path) -> str:
    """The data set a robustcert model directory was trained on; a model file does not say, so the user
    must name one."""
    from robustcert.models import read_model_meta

    model = ModelSpec.of(model).location
    path = Path(model)
    is_file_model = (path.is_file() and path.name != "model.pt") or path.suffix.lower() in MODEL_FILE_SUFFIXES or (
        ":" in str(model) and not path.exists()
    )
    if not is_file_model:  # a model directory, or a path whose error read_model_meta explains
        return str(read_model_meta(path)["dataset"])
    raise RobustCertError(f"--model {model} does not say which data it was made for; add --dataset NAME")


def certify_run(
    *,
    method: str | Method,
    params: Params,
    model_dir: ModelSpec | str | Path,
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
    data = load_dataset(dataset or default_dataset(model_dir), split, data_dir)
    loaded = load_run_model(model_dir, data)
    final = entry.finalize(params, loaded.info)
    chosen = select_indices(len(data), limit, indices)
    out = Path(out)
    certifier = entry.build(loaded.module, loaded.info, final, out / "log.txt")
    run_info = {
        "method": entry.name,
        "family": entry.family,
        "params": final.to_json(),
        "model": loaded.source,
        "model_kind": loaded.kind,
        "model_sha256": loaded.sha256,
        "domain": loaded.info.domain.text(),
        **loaded.spec.to_json(),
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
    arch = loaded.info.meta.get("arch", Path(loaded.source).name)
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
