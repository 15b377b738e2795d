"""The report card's TOML config: read, checked key by key against a schema generated from the method
registry, so a misspelt key or section is an error with a "did you mean", never silently ignored.

Sections (all but ``[data]``, one ``[[model]]`` and one ``[threat.*]`` optional)::

    [data]        dataset (digits | fashion-mnist | npz:PATH), split, limit | indices, seed, data_dir
    [[model]]     name, and path = DIR | FILE | "module:function" | "zoo:NAME" (with input_range = [LO, HI] or one pair per
                  channel, mean = [...], std = [...], class_names = [...], trust_file = true, as on the CLI)
                  or train = {arch, method, epochs, batch_size, lr, grad_clip, and the method's options
                  as `robustcert train` names them: sigma, eps, norm, pgd_steps, schedule, ramp_start, …}
    [threat.linf] eps = [budgets], target = one of them      (and/or [threat.l2])
    [methods]     <method> = {its parameters (see docs/methods.md), models = [...], eps = [subset], limit = K}
    [validation]  smoothing_attack, smoothing_attack_limit, calibration, calibration_limit
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustcert.errors import RobustCertError
from robustcert.methods import Params, all_methods, get_method
from robustcert.methods.base import did_you_mean, param_fields
from robustcert.validation import NORMS

SECTIONS = ("data", "model", "threat", "methods", "validation")
DATA_KEYS = ("dataset", "split", "limit", "indices", "seed", "data_dir")
MODEL_KEYS = ("name", "path", "train", "input_range", "mean", "std", "class_names", "trust_file")
FILE_MODEL_KEYS = ("input_range", "mean", "std", "class_names", "trust_file")  # what a path's file cannot say
# the loop's options, then every keyword of robustcert.train.factory.make_loss (a test keeps them equal)
TRAIN_LOOP_KEYS = ("arch", "method", "epochs", "batch_size", "lr", "grad_clip")
TRAIN_KEYS = TRAIN_LOOP_KEYS + (
    "sigma", "eps", "norm", "pgd_steps", "noise_samples", "consistency_lambda", "consistency_eta",
    "smoothadv_eps", "smoothadv_steps", "schedule", "ramp_start", "ramp_end", "kappa_end", "ibp_init",
    "shi_reg", "shi_tol", "sabr_lambda", "mtl_alpha",
)
THREAT_KEYS = ("eps", "target")
SELECTION_KEYS = ("models", "eps", "limit")  # which runs of a method, besides its parameters
VALIDATION_DEFAULTS: dict[str, Any] = {
    "smoothing_attack": True,
    "smoothing_attack_limit": 50,
    "calibration": False,
    "calibration_limit": 50,
}


@dataclass
class MethodConfig:
    """One ``[methods]`` entry: the method's validated parameters (without the budgets, which come from
    the threats) and which models, budgets and examples it runs on."""

    name: str
    values: dict[str, Any]
    models: list[str] | None = None
    eps: list[float] | None = None
    limit: int | None = None


@dataclass
class EvaluateConfig:
    data: dict[str, Any]
    models: list[dict[str, Any]]
    threats: dict[str, dict[str, Any]]
    methods: list[MethodConfig]
    validation: dict[str, Any] = field(default_factory=lambda: dict(VALIDATION_DEFAULTS))

    def to_json(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "model": self.models,
            "threat": self.threats,
            "methods": {m.name: {**m.values, **_selection(m)} for m in self.methods},
            "validation": self.validation,
        }


def _selection(m: MethodConfig) -> dict[str, Any]:
    return {k: v for k, v in (("models", m.models), ("eps", m.eps), ("limit", m.limit)) if v is not None}


def _check_keys(table: Any, known: tuple[str, ...], where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise RobustCertError(f"{where} must be a table (key = value pairs), got {table!r}")
    for key in table:
        if key not in known:
            raise RobustCertError(
                f"unknown key {key!r} in {where}{did_you_mean(str(key), known)}; known keys: {', '.join(known)}"
            )
    return dict(table)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RobustCertError(f"{where} must be a whole number >= 1, got {value!r}")
    return value


def _budgets(values: Any, where: str) -> list[float]:
    if not isinstance(values, list) or not values:
        raise RobustCertError(f"{where} must be a list of budgets, e.g. [0.01, 0.02]")
    out = []
    for e in values:
        if isinstance(e, bool) or not isinstance(e, int | float) or not math.isfinite(e) or e < 0:
            raise RobustCertError(f"{where} values must be numbers >= 0, got {e!r}")
        out.append(float(e))
    if len(set(out)) != len(out):
        raise RobustCertError(f"{where} lists a budget twice: {values}")
    return out


def load_config(path: str | Path) -> EvaluateConfig:
    """Read and validate an evaluate config; RobustCertError names the bad key and how to fix it."""
    path = Path(path)
    if path.is_dir():
        raise RobustCertError(f"config {path} is a directory; give the TOML file, e.g. --config {path}/card.toml")
    if not path.is_file():
        raise RobustCertError(
            f"config file {path} does not exist; for an example, see the demo's config (configs/demo.toml in the "
            "robustcert package) or README.md's report card section"
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RobustCertError(f"{path} is not valid TOML: {exc}") from None
    return validate_config(raw, base_dir=path.parent)


def validate_config(raw: Mapping[str, Any], base_dir: Path = Path(".")) -> EvaluateConfig:
    """Check every section and key of a parsed config (see the module docstring)."""
    _check_keys(raw, SECTIONS, "the config (top-level sections)")
    data = _check_keys(raw.get("data", {}), DATA_KEYS, "[data]")
    if "dataset" not in data:
        raise RobustCertError('the config needs [data] dataset = "digits" (or "fashion-mnist", "npz:PATH")')
    dataset = str(data["dataset"])
    if dataset.startswith("npz:") and not Path(dataset[4:]).is_absolute():  # relative to the config, as paths
        data["dataset"] = f"npz:{(base_dir / dataset[4:]).resolve()}"
    data.setdefault("split", "test")
    data.setdefault("seed", 0)
    if isinstance(data["seed"], bool) or not isinstance(data["seed"], int) or data["seed"] < 0:
        raise RobustCertError(f"[data] seed must be a whole number >= 0, got {data['seed']!r}")
    if "limit" in data:
        _positive_int(data["limit"], "[data] limit")
    if "limit" in data and "indices" in data:
        raise RobustCertError("[data] takes limit or indices, not both")
    models = _models(raw.get("model", []), base_dir)
    threats = _threats(raw.get("threat", {}))
    names = [m["name"] for m in models]
    methods = _methods(raw.get("methods", {}), threats, names)
    validation = {**VALIDATION_DEFAULTS, **_check_keys(raw.get("validation", {}), tuple(VALIDATION_DEFAULTS), "[validation]")}
    for key in ("smoothing_attack", "calibration"):
        if not isinstance(validation[key], bool):
            raise RobustCertError(f"[validation] {key} must be true or false, got {validation[key]!r}")
    for key in ("smoothing_attack_limit", "calibration_limit"):
        _positive_int(validation[key], f"[validation] {key}")
    return EvaluateConfig(data=data, models=models, threats=threats, methods=methods, validation=validation)


def _models(models: Any, base_dir: Path) -> list[dict[str, Any]]:
    if not isinstance(models, list) or not models:
        raise RobustCertError("the config needs at least one [[model]] with a name and path = DIR or train = {...}")
    seen: set[str] = set()
    out = []
    for k, model in enumerate(models):
        model = _check_keys(model, MODEL_KEYS, f"[[model]] #{k + 1}")
        name = model.get("name")
        if not isinstance(name, str) or not name or not name.replace("-", "").replace("_", "").isalnum():
            raise RobustCertError(f"[[model]] #{k + 1} needs name = letters, digits, - and _, got {name!r}")
        if name in seen:
            raise RobustCertError(f"two [[model]] entries are named {name!r}; names must be unique")
        seen.add(name)
        if ("path" in model) == ("train" in model):
            raise RobustCertError(f"model {name!r} needs exactly one of path = DIR or train = {{...}}")
        if "path" in model:
            from robustcert.models.shipped import is_zoo, resolve_location

            text = str(model["path"])
            p = Path(text)
            python_model = ":" in text and not (base_dir / p).exists() and p.suffix.lower() != ".onnx"
            if is_zoo(text):  # a shipped model: an unknown name fails here, before anything runs
                model["path"] = resolve_location(text)
            elif not python_model:  # a directory or a model file, relative to the config
                model["path"] = str(p if p.is_absolute() else (base_dir / p).resolve())
            _file_model_keys(model, name)
        else:
            stated = [key for key in FILE_MODEL_KEYS if key in model]
            if stated:
                raise RobustCertError(f"model {name!r}: {stated} apply to path = ... models only (a trained model takes [0, 1])")
            model["train"] = _check_keys(model["train"], TRAIN_KEYS, f"model {name!r} train")
        out.append(model)
    return out


def _file_model_keys(model: dict[str, Any], name: str) -> None:
    """Check (and normalise in place) what a [[model]] states about its file: the input range as text,
    mean/std as lists of finite numbers, class_names as strings, trust_file as a boolean."""
    from robustcert.domain import InputDomain

    if "input_range" in model:
        model["input_range"] = InputDomain.coerce(model["input_range"], f"model {name!r} input_range").text()
    for key in ("mean", "std"):
        if key in model:
            values = model[key] if isinstance(model[key], list) else [model[key]]
            if not values or not all(_is_number(v) for v in values):
                raise RobustCertError(f"model {name!r} {key} must be a number or a list of numbers, got {model[key]!r}")
            model[key] = [float(v) for v in values]
    if ("mean" in model) != ("std" in model):
        raise RobustCertError(f"model {name!r}: give both mean and std (one value, or one per channel)")
    names = model.get("class_names")
    if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) and n for n in names)):
        raise RobustCertError(f"model {name!r} class_names must be a list of non-empty strings, got {names!r}")
    if not isinstance(model.get("trust_file", False), bool):
        raise RobustCertError(f"model {name!r} trust_file must be true or false")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value))


def model_spec(model: Mapping[str, Any], path: str) -> Any:
    """The :class:`~robustcert.models.sources.ModelSpec` of a validated [[model]] entry at ``path``."""
    from robustcert.models.sources import ModelSpec

    def floats(key: str) -> tuple[float, ...] | None:
        return tuple(model[key]) if key in model else None

    names = model.get("class_names")
    return ModelSpec(
        location=path,
        input_range=model.get("input_range"),
        mean=floats("mean"),
        std=floats("std"),
        class_names=tuple(names) if names is not None else None,
        trust_file=bool(model.get("trust_file", False)),
    )


def _threats(threats: Any) -> dict[str, dict[str, Any]]:
    threats = _check_keys(threats, NORMS, "[threat] (use [threat.linf] and/or [threat.l2])")
    if not threats:
        raise RobustCertError("the config needs at least one [threat.linf] or [threat.l2] with eps = [...]")
    out = {}
    for norm, threat in threats.items():
        threat = _check_keys(threat, THREAT_KEYS, f"[threat.{norm}]")
        eps = _budgets(threat.get("eps"), f"[threat.{norm}] eps")
        target = float(threat.get("target", max(eps)))
        if target not in eps:
            raise RobustCertError(f"[threat.{norm}] target {target:g} must be one of its eps values {eps}")
        out[norm] = {"eps": eps, "target": target}
    return out


def _methods(methods: Any, threats: dict[str, dict[str, Any]], model_names: list[str]) -> list[MethodConfig]:
    known = tuple(m.name for m in all_methods())
    methods = _check_keys(methods, known, "[methods]")
    out = []
    for name, options in methods.items():
        entry = get_method(name)
        where = f"methods.{name}"
        own = tuple(f.name for f in param_fields(entry.params) if f.name not in ("norm", *SELECTION_KEYS))
        allowed = own + SELECTION_KEYS
        options = _check_keys(options, allowed, where)
        models = options.pop("models", None)
        if models is not None:
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise RobustCertError(f"{where}.models must be a list of [[model]] names")
            for m in models:
                if m not in model_names:
                    raise RobustCertError(f"{where}.models names {m!r}, which is not a [[model]]{did_you_mean(m, model_names)}")
        eps = options.pop("eps", None)
        if eps is not None:
            eps = _budgets(eps, f"{where}.eps")
        limit = options.pop("limit", None)
        if limit is not None:
            limit = _positive_int(limit, f"{where}.limit")
        norms = [n for n in threats if n in entry.norms]
        if not norms:
            raise RobustCertError(
                f"{name} certifies {' or '.join(entry.norms)} only: add a [threat.{entry.norms[0]}] section "
                f"or remove methods.{name}"
            )
        if eps is not None:
            for norm in norms:
                if not set(eps) <= set(threats[norm]["eps"]):
                    raise RobustCertError(
                        f"{where}.eps {eps} must be a subset of [threat.{norm}] eps {threats[norm]['eps']}"
                    )
        method_params(entry.name, options, norms[0], eps or threats[norms[0]]["eps"])  # validate now
        out.append(MethodConfig(name=name, values=options, models=models, eps=eps, limit=limit))
    return out


def method_params(name: str, values: Mapping[str, Any], norm: str, eps: list[float]) -> Params:
    """The validated parameters of method ``name`` for one run: its TOML values plus the run's budgets."""
    entry = get_method(name)
    full = dict(values)
    if entry.budgeted:
        full.update(norm=norm, eps=eps)
    return entry.make_params(full, where=f"methods.{name}")
