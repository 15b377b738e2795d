"""``robustcert evaluate``: the report card. One TOML config names models, a data split, threat models and
methods; every method runs through the run engine (resumable, optionally on Ray); every certificate is
then attacked inside its own budget; latency is measured in the same run; ``report.card`` renders it.

Config (all keys but ``[data]`` and one ``[[model]]`` optional)::

    [data]
    dataset = "digits"        # digits | fashion-mnist | npz:PATH
    split = "test"
    limit = 100               # or indices = [0, 5, 7]
    seed = 0

    [[model]]
    name = "gaussian"
    path = "runs/m1"          # an existing model directory ...
    [[model]]
    name = "pgd"
    train = { arch = "mlp-2x64", method = "pgd", eps = 0.1, epochs = 10 }   # ... or one to train

    [threat.linf]
    eps = [0.01, 0.02, 0.05]
    target = 0.02
    [threat.l2]
    eps = [0.0, 0.25, 0.5, 0.75, 1.0]   # radii for smoothing and eps for bound methods under L2
    target = 0.25

    [methods]
    smoothing = { n0 = 100, n = 10000, alpha = 0.001 }   # sigma: the model's training sigma unless given
    ibp = {}
    crown = {}
    alpha-crown = { alpha_steps = 20 }
    exact = { time_limit = 10, models = ["pgd"], eps = [0.02], limit = 20 }   # eps ⊆ the threat's; first 20 examples
    pgd = { steps = 50, restarts = 3 }

    [validation]
    smoothing_attack = true       # attack the smoothed prediction within every certified radius
    smoothing_attack_limit = 50   # at most this many certified examples per model
    calibration = false           # estimate the rate of wrong smoothing certificates and compare with alpha
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from robustcert.errors import RobustCertError
from robustcert.methods import BOUND_METHODS

KNOWN_METHODS = ("smoothing", *BOUND_METHODS, "exact", "pgd")
CONFIG_NAME = "evaluate.json"


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate an evaluate config (TOML); RobustCertError names the bad key."""
    path = Path(path)
    if not path.exists():
        raise RobustCertError(f"config file {path} does not exist")
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise RobustCertError(f"{path} is not valid TOML: {exc}") from exc
    return validate_config(config, base_dir=path.parent)


def validate_config(config: dict[str, Any], base_dir: Path = Path(".")) -> dict[str, Any]:
    data = dict(config.get("data", {}))
    if "dataset" not in data:
        raise RobustCertError('config needs [data] dataset = "digits" (or fashion-mnist, npz:PATH)')
    data.setdefault("split", "test")
    data.setdefault("seed", 0)
    models = config.get("model", [])
    if not models:
        raise RobustCertError("config needs at least one [[model]] with a name and a path or a train table")
    names = set()
    for model in models:
        name = model.get("name")
        if not name or not str(name).replace("-", "").replace("_", "").isalnum():
            raise RobustCertError(f"every [[model]] needs a name of letters, digits, - and _, got {name!r}")
        if name in names:
            raise RobustCertError(f"two models are named {name!r}")
        names.add(name)
        if ("path" in model) == ("train" in model):
            raise RobustCertError(f"model {name!r} needs exactly one of path = DIR or train = {{...}}")
        if "path" in model:
            model["path"] = (
                str((base_dir / model["path"]).resolve())
                if not Path(model["path"]).is_absolute()
                else model["path"]
            )
    threats = config.get("threat", {})
    for norm, threat in threats.items():
        if norm not in ("linf", "l2"):
            raise RobustCertError(f"unknown threat [threat.{norm}]; use [threat.linf] or [threat.l2]")
        eps = threat.get("eps")
        if not isinstance(eps, list) or not eps:
            raise RobustCertError(f"[threat.{norm}] needs eps = [a list of budgets]")
        for e in eps:
            if not isinstance(e, int | float) or not math.isfinite(e) or e < 0:
                raise RobustCertError(f"[threat.{norm}] eps values must be numbers >= 0, got {e!r}")
        threat.setdefault("target", max(eps))
        if float(threat["target"]) not in [float(e) for e in eps]:
            raise RobustCertError(f"[threat.{norm}] target {threat['target']} must be one of its eps values")
    if not threats:
        raise RobustCertError("config needs at least one [threat.linf] or [threat.l2] with eps = [...]")
    methods = config.get("methods", {})
    unknown = sorted(set(methods) - set(KNOWN_METHODS))
    if unknown:
        raise RobustCertError(f"unknown methods {unknown}; choose from {', '.join(KNOWN_METHODS)}")
    for method, options in methods.items():
        for model_name in options.get("models", []):
            if model_name not in names:
                raise RobustCertError(
                    f"methods.{method}.models names {model_name!r}, which is not a [[model]]"
                )
    if "smoothing" in methods and "l2" not in threats:
        raise RobustCertError("smoothing certifies L2 radii: add [threat.l2] eps = [0.0, 0.25, 0.5, ...]")
    validation = {
        "smoothing_attack": True,
        "smoothing_attack_limit": 50,
        "calibration": False,
        "calibration_limit": 50,
        **config.get("validation", {}),
    }
    return {"data": data, "model": models, "threat": threats, "methods": methods, "validation": validation}


def _train_model(spec: dict[str, Any], dataset: str, out: Path, seed: int) -> Path:
    from robustcert.data import load_dataset
    from robustcert.models import read_model_meta
    from robustcert.train import train_model
    from robustcert.train.factory import make_loss

    train = dict(spec["train"])
    method = train.pop("method", "standard")
    arch = train.pop("arch", "cnn-small")
    epochs = int(train.pop("epochs", 20))
    batch = int(train.pop("batch_size", 64))
    lr = float(train.pop("lr", 1e-3))
    loss, params = make_loss(
        method, **{k: train[k] for k in ("sigma", "eps", "norm", "pgd_steps") if k in train}
    )
    model_dir = out / "models" / spec["name"]
    if (model_dir / "model.json").exists() and read_model_meta(model_dir).get("epochs_done") == epochs:
        return model_dir
    print(f"training model {spec['name']}: {arch} ({method}, {epochs} epochs)", flush=True)
    train_model(
        arch=arch,
        train_data=load_dataset(dataset, "train"),
        test_data=load_dataset(dataset, "test"),
        loss=loss,
        method=method,
        method_params=params,
        out_dir=model_dir,
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        seed=seed,
        resume=True,
    )
    return model_dir


def _applies(method: str, options: dict[str, Any], model_name: str, meta: dict[str, Any]) -> bool:
    if "models" in options:
        return model_name in options["models"]
    if method == "smoothing":
        return "sigma" in options or meta.get("train", {}).get("sigma") is not None
    return True


def planned_runs(config: dict[str, Any], model_dirs: dict[str, Path]) -> list[dict[str, Any]]:
    """Every (model, method, norm) run the config asks for; PGD runs are added for validation."""
    from robustcert.models import read_model_meta

    runs = []
    methods = dict(config["methods"])
    methods.setdefault("pgd", {})  # always: the empirical upper limit and the check of every certificate
    for name, model_dir in model_dirs.items():
        meta = read_model_meta(model_dir)
        for method, options in methods.items():
            if not _applies(method, options, name, meta):
                continue
            norms = (
                ["l2"]
                if method == "smoothing"
                else (["linf"] if method == "exact" else list(config["threat"]))
            )
            for norm in norms:
                if norm not in config["threat"]:
                    continue
                threat_eps = [float(e) for e in config["threat"][norm]["eps"]]
                eps = [float(e) for e in options.get("eps", threat_eps)]
                if not set(eps) <= set(threat_eps):
                    raise RobustCertError(
                        f"methods.{method}.eps {eps} must be a subset of [threat.{norm}] eps {threat_eps}"
                    )
                limit = options.get("limit")
                if limit is not None and (not isinstance(limit, int) or limit <= 0):
                    raise RobustCertError(
                        f"methods.{method}.limit must be a whole number >= 1, got {limit!r}"
                    )
                runs.append(
                    {
                        "model": name,
                        "method": method,
                        "norm": norm,
                        "options": options,
                        "eps": eps,
                        "limit": limit,
                        "dir": f"runs/{name}/{method}-{norm}",
                    }
                )
    return runs


def _params(method: str, norm: str, eps: list[float], options: dict[str, Any]) -> dict[str, Any]:
    if method == "smoothing":
        return {
            "sigma": options.get("sigma"),
            "n0": int(options.get("n0", 100)),
            "n": int(options.get("n", 10_000)),
            "alpha": float(options.get("alpha", 0.001)),
            "batch": int(options.get("batch", 1000)),
        }
    params: dict[str, Any] = {"norm": norm, "eps": [float(e) for e in eps]}
    if method == "alpha-crown":
        params["alpha_steps"] = int(options.get("alpha_steps", 20))
    if method == "exact":
        params["time_limit"] = float(options.get("time_limit", 30.0))
    if method == "pgd":
        params["steps"], params["restarts"] = int(options.get("steps", 50)), int(options.get("restarts", 3))
    return params


def _median_seconds(fn, repeats: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_latency(
    model_dir: Path, data, indices: list[int], smoothing: dict[str, Any] | None
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Undefended inference time per example and, for smoothed models, PREDICT time at the chosen n,
    measured here in one process (medians), so that the report's ratios compare like with like."""
    from robustcert.models import load_model

    model, meta = load_model(model_dir)
    sample = [data.x[i] for i in indices[:20]]

    @torch.inference_mode()
    def undefended() -> None:
        for x in sample:
            model(x.unsqueeze(0)).argmax(1)

    undefended()
    result: dict[str, Any] = {"undefended_seconds": _median_seconds(undefended) / len(sample)}
    if smoothing is not None:
        from robustcert.smoothing import SmoothedClassifier

        sigma = smoothing.get("sigma") or meta["train"]["sigma"]
        n = int(smoothing.get("predict_n", smoothing.get("n", 10_000)))
        smoothed = SmoothedClassifier(model, sigma=float(sigma), num_classes=meta["num_classes"])
        few = sample[:3]

        def predict() -> None:
            for x in few:
                smoothed.predict(
                    x,
                    n=n,
                    alpha=float(smoothing.get("alpha", 0.001)),
                    batch_size=int(smoothing.get("batch", 1000)),
                    seed=0,
                )

        result["smoothed_predict_seconds"] = _median_seconds(predict, repeats=3) / len(few)
        result["smoothed_predict_n"] = n
    return result


def validate_smoothing(
    model_dir: Path, data, rows: list[dict[str, Any]], limit: int, seed: int
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Attack the smoothed prediction inside each certified radius (up to ``limit`` certified examples)."""
    from robustcert.attacks.smoothed import attack_smoothed
    from robustcert.models import load_model
    from robustcert.runs import example_seed

    model, meta = load_model(model_dir)
    certified = [r for r in rows if r["prediction"] != -1 and r["radius"] > 0][:limit]
    broken = []
    for row in certified:
        res = attack_smoothed(
            model,
            data.x[row["index"]],
            row["prediction"],
            row["radius"],
            row["sigma"],
            meta["num_classes"],
            alpha=row["alpha"],
            seed=example_seed(seed, row["index"]) % (2**31),
        )
        if res.broken:
            broken.append(
                {
                    "index": row["index"],
                    "radius": row["radius"],
                    "distance": res.distance,
                    "certified_prediction": row["prediction"],
                    "prediction_at_attack": res.prediction,
                }
            )
    return {"attacked": len(certified), "broken": broken}


def calibrate_smoothing(
    model_dir: Path, data, rows: list[dict[str, Any]], limit: int, seed: int
) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Estimate the rate of wrong smoothing certificates: for each certified example, a fresh sample of
    4n draws gives a two-sided 99.9% interval on p_A; a certificate is counted wrong when that interval lies
    wholly below its pA_lower. Expected rate ≤ alpha (plus the interval's own 0.1% error)."""
    from robustcert.models import load_model
    from robustcert.runs import example_seed
    from robustcert.smoothing import SmoothedClassifier, clopper_pearson_interval

    model, meta = load_model(model_dir)
    certified = [r for r in rows if r["prediction"] != -1][:limit]
    wrong = 0
    for row in certified:
        smoothed = SmoothedClassifier(model, sigma=row["sigma"], num_classes=meta["num_classes"])
        n_fresh = 4 * int(row["n"])
        counts = smoothed.sample_counts(
            data.x[row["index"]], n_fresh, batch_size=1000, seed=example_seed(seed + 7919, row["index"])
        )
        _, upper = clopper_pearson_interval(counts[row["prediction"]], n_fresh, 0.001)
        wrong += int(upper < row["pA_lower"])
    alpha = certified[0]["alpha"] if certified else None
    return {
        "checked": len(certified),
        "wrong": wrong,
        "rate": wrong / len(certified) if certified else 0.0,
        "alpha": alpha,
    }


def run_evaluate(
    config_path: str | os.PathLike[str],
    out: Path,
    *,
    resume: bool = True,
    ray_address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run the whole report card into ``out`` and render it; returns report.json's content.

    Resumable: trained models and finished rows under ``out`` are reused.
    """
    from robustcert.data import load_dataset
    from robustcert.report.card import build_report, write_report
    from robustcert.runs import parse_indices, read_rows, select_indices
    from robustcert.workflows import certify_run

    config = load_config(config_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = config["data"]
    seed = int(data_cfg["seed"])
    data = load_dataset(data_cfg["dataset"], data_cfg["split"], data_cfg.get("data_dir"))
    indices_cfg = data_cfg.get("indices")
    indices = select_indices(
        len(data),
        data_cfg.get("limit"),
        parse_indices(indices_cfg) if isinstance(indices_cfg, str) else indices_cfg,
    )
    model_dirs = {}
    for spec in config["model"]:
        model_dirs[spec["name"]] = (
            Path(spec["path"]) if "path" in spec else _train_model(spec, data_cfg["dataset"], out, seed)
        )
    runs = planned_runs(config, model_dirs)
    (out / CONFIG_NAME).write_text(
        json.dumps(
            {
                "config": config,
                "models": {k: str(v) for k, v in model_dirs.items()},
                "runs": runs,
                "indices": indices,
            },
            indent=2,
        )
        + "\n"
    )
    for run in runs:
        eps = run["eps"]
        print(f"== {run['model']}: {run['method']} ({run['norm']})", flush=True)
        certify_run(
            method=run["method"],
            model_dir=model_dirs[run["model"]],
            dataset=data_cfg["dataset"],
            split=data_cfg["split"],
            data_dir=data_cfg.get("data_dir"),
            params=_params(run["method"], run["norm"], eps, run["options"]),
            limit=None,
            indices=indices[: run["limit"]] if run["limit"] else indices,
            seed=seed,
            resume=resume,
            out=out / run["dir"],
            show_progress=show_progress,
            quiet=True,
            ray_address=ray_address,
            workers=workers,
        )
    validation: dict[str, Any] = {"smoothing_attack": {}, "calibration": {}}
    latency: dict[str, Any] = {}
    for name, model_dir in model_dirs.items():
        smoothing_run = next((r for r in runs if r["model"] == name and r["method"] == "smoothing"), None)
        latency[name] = measure_latency(
            model_dir, data, indices, smoothing_run["options"] if smoothing_run else None
        )
        if smoothing_run:
            rows = read_rows(out / smoothing_run["dir"] / "results.jsonl")
            if config["validation"]["smoothing_attack"]:
                print(f"== {name}: attacking smoothing certificates inside their radii", flush=True)
                validation["smoothing_attack"][name] = validate_smoothing(
                    model_dir, data, rows, int(config["validation"]["smoothing_attack_limit"]), seed
                )
            if config["validation"]["calibration"]:
                print(f"== {name}: calibration of smoothing certificates", flush=True)
                validation["calibration"][name] = calibrate_smoothing(
                    model_dir, data, rows, int(config["validation"]["calibration_limit"]), seed
                )
    (out / "validation.json").write_text(json.dumps(validation, indent=2) + "\n")
    (out / "latency.json").write_text(json.dumps(latency, indent=2) + "\n")
    report = build_report(out)
    write_report(out, report)
    return report
