"""``robustcert evaluate``: the report card. Trains or loads the models, runs every planned method through
the run engine (resumable, optionally on Ray), attacks every smoothing certificate, measures latency in
the same process, and renders the report (``report.card``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustcert.data.base import Dataset
from robustcert.errors import RobustCertError
from robustcert.evaluation.config import EvaluateConfig, load_config, model_spec
from robustcert.evaluation.plan import PlannedRun, plan_runs
from robustcert.jobs import EVALUATE_FILE, LoadedModel, certify_run, load_run_model
from robustcert.methods import get_method


def _number(value: Any, kind: type[int] | type[float], where: str) -> Any:
    """``value`` as ``kind`` (a TOML int is a fine float; a float is not an int); RobustCertError
    naming ``where`` otherwise (the range checks are the training loop's)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        ok = ok or isinstance(value, float)
    if not ok:
        raise RobustCertError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    return kind(value)


def _train_model(spec: dict[str, Any], config: EvaluateConfig, out: Path) -> Path:
    """Train the ``train = {...}`` model of the config into ``out/models/<name>`` (resumable)."""
    from robustcert.data import load_dataset
    from robustcert.models import read_model_meta
    from robustcert.train import train_model
    from robustcert.train.factory import make_loss

    train = dict(spec["train"])
    where = f"model {spec['name']!r} train"
    method = str(train.pop("method", "standard"))
    arch = str(train.pop("arch", "cnn-small"))
    epochs = _number(train.pop("epochs", 20), int, f"{where} epochs")
    batch = _number(train.pop("batch_size", 64), int, f"{where} batch_size")
    lr = _number(train.pop("lr", 1e-3), float, f"{where} lr")
    grad_clip = _number(train.pop("grad_clip", 0.0), float, f"{where} grad_clip")
    loss, params = make_loss(method, **train)  # the rest are the loss's options (config.TRAIN_KEYS)
    model_dir = out / "models" / spec["name"]
    if (model_dir / "model.json").exists() and read_model_meta(model_dir).get("epochs_done") == epochs:
        return model_dir
    print(f"training model {spec['name']}: {arch} ({method}, {epochs} epochs)", flush=True)
    dataset, data_dir = config.data["dataset"], config.data.get("data_dir")
    train_model(
        arch=arch,
        train_data=load_dataset(dataset, "train", data_dir),
        test_data=load_dataset(dataset, "test", data_dir),
        loss=loss,
        method=method,
        method_params=params,
        out_dir=model_dir,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        seed=int(config.data["seed"]),
        resume=True,
        grad_clip=grad_clip,
    )
    return model_dir


def _select(config: EvaluateConfig, data: Dataset) -> list[int]:
    from robustcert.runs import parse_indices, select_indices

    raw = config.data.get("indices")
    indices = parse_indices(raw) if isinstance(raw, str) else raw
    return select_indices(len(data), config.data.get("limit"), indices)


def _latency(loaded: LoadedModel, data: Dataset, indices: list[int], smoothing: PlannedRun | None) -> dict[str, Any]:
    """Undefended inference vs the smoothed PREDICT at the certified n, interleaved in one process."""
    import torch

    from robustcert.evaluation.latency import Procedure, measure_latency

    model = loaded.module
    sample = data.x[torch.as_tensor(indices[:20])]

    @torch.inference_mode()
    def undefended() -> None:
        for x in sample:
            model(x.unsqueeze(0)).argmax(1)

    defended: dict[str, Procedure] = {}
    few = sample[:3]
    if smoothing is not None:
        from robustcert.smoothing import SmoothedClassifier

        p: Any = smoothing.params
        smoothed = SmoothedClassifier(model, sigma=float(p.sigma), num_classes=loaded.info.num_classes)

        def predict() -> None:
            for x in few:
                smoothed.predict(x, n=p.n, alpha=p.alpha, batch_size=p.batch, seed=0)

        defended["smoothed predict"] = Procedure(
            predict, batch_size=p.batch, detail=f"n = {p.n:,}, alpha = {p.alpha:g}"
        )
    result = measure_latency(
        undefended, defended, undefended_examples=len(sample), defended_examples=len(few), batch_size=1
    )
    return result.to_json()


def run_evaluate(
    config_path: str | Path,
    out: Path,
    *,
    resume: bool = True,
    force: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the whole report card into ``out`` and render it; returns report.json's content.

    Resumable: trained models and finished rows under ``out`` are reused (``force`` recomputes every run)."""
    from robustcert.data import load_dataset
    from robustcert.evaluation.checks import attack_smoothing_certificates, calibrate_smoothing
    from robustcert.report.card import build_report, write_report
    from robustcert.runs import read_rows

    config = load_config(config_path)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustCertError(f"cannot create {out}: {exc.strerror}; choose another --out") from None
    seed = int(config.data["seed"])
    data = load_dataset(config.data["dataset"], config.data["split"], config.data.get("data_dir"))
    indices = _select(config, data)
    model_dirs = {
        spec["name"]: model_spec(spec, str(spec["path"]) if "path" in spec else str(_train_model(spec, config, out)))
        for spec in config.models
    }
    models = {name: load_run_model(d, data) for name, d in model_dirs.items()}  # loaded and checked once
    infos = {name: m.info for name, m in models.items()}
    runs, skipped = plan_runs(config, infos)
    for note in skipped:
        print(f"skipped: {note}", flush=True)
    (out / EVALUATE_FILE).write_text(
        json.dumps(
            {
                "config": config.to_json(),
                "models": {k: v.location for k, v in model_dirs.items()},
                "runs": [r.to_json() for r in runs],
                "skipped": skipped,
                "indices": indices,
            },
            indent=2,
        )
        + "\n"
    )
    for run in runs:
        print(f"== {run.model}: {get_method(run.method).label} ({run.norm})", flush=True)
        certify_run(
            method=run.method,
            params=run.params,
            model_dir=model_dirs[run.model],
            dataset=config.data["dataset"],
            split=config.data["split"],
            data_dir=config.data.get("data_dir"),
            indices=indices[: run.limit] if run.limit else indices,
            seed=seed,
            resume=resume,
            force=force,
            out=out / run.dir,
            show_progress=show_progress,
            quiet=True,
            ray_address=ray_address,
            workers=workers,
        )
    validation: dict[str, Any] = {"smoothing_attack": {}, "calibration": {}}
    latency: dict[str, Any] = {}
    checks = config.validation
    for name, loaded in models.items():
        smoothing = next((r for r in runs if r.model == name and r.method == "smoothing"), None)
        latency[name] = _latency(loaded, data, indices, smoothing)
        if smoothing is None:
            continue
        rows = read_rows(out / smoothing.dir / "results.jsonl", get_method("smoothing").row_type)
        k = loaded.info.num_classes
        if checks["smoothing_attack"]:
            print(f"== {name}: attacking smoothing certificates inside their radii", flush=True)
            validation["smoothing_attack"][name] = attack_smoothing_certificates(
                loaded.module, k, data, rows, int(checks["smoothing_attack_limit"]), seed, loaded.info.domain
            )
        if checks["calibration"]:
            print(f"== {name}: calibration of smoothing certificates", flush=True)
            validation["calibration"][name] = calibrate_smoothing(
                loaded.module, k, data, rows, int(checks["calibration_limit"]), seed
            )
    (out / "validation.json").write_text(json.dumps(validation, indent=2) + "\n")
    (out / "latency.json").write_text(json.dumps(latency, indent=2) + "\n")
    report = build_report(out)
    write_report(out, report)
    return report
