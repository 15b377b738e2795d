"""Model directories: ``model.pt`` (state dict) + ``model.json`` (metadata), as DESIGN.md's file contract.

Guarantees:
- Nothing read here is unpickled with code execution allowed: ``.pt`` files are read with
  ``torch.load(weights_only=True)`` (tensors and plain data only) by :func:`load_weights_file`, which the
  training loop uses for ``train_state.pt`` too.
- A missing, unreadable, corrupt or truncated ``model.pt``, a ``model.json`` that is not a JSON object or
  lacks or mistypes a required field, and weights that do not fit the recorded architecture each raise
  :class:`RobustCertError` naming the file and what to do — never a raw KeyError/RuntimeError/EOFError.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robustcert
from robustcert.errors import RobustCertError
from robustcert.models.zoo import build_model

REQUIRED_FIELDS = ("arch", "dataset", "input_shape", "num_classes", "normalize")
RETRAIN_HINT = "retrain the model (`robustcert train ... --out DIR`) or restore the file from a backup"


def save_model(directory: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.pt`` and ``model.json``, each atomically (write to a temp file, then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise RobustCertError(f"model metadata lacks {missing}")
    meta = {**meta, "robustcert_version": robustcert.__version__}
    tmp = directory / "model.pt.tmp"
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, directory / "model.pt")
    tmp_json = directory / "model.json.tmp"
    tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_json, directory / "model.json")
    return directory


def load_weights_file(path: str | os.PathLike[str], fix: str) -> Any:
    """The contents of a file written by ``torch.save``, loaded with ``weights_only=True`` on the CPU.

    Only tensors and plain data (dicts, lists, tuples, numbers, strings, None) are accepted, so a tampered
    file cannot run code. Any failure — missing, unreadable, empty, truncated, corrupt, or holding other
    objects — is a one-line RobustCertError naming ``path`` and ending with ``fix`` (what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise RobustCertError(f"{path} is missing; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise RobustCertError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); {fix}") from exc
    except Exception as exc:  # torch raises EOFError, KeyError, RuntimeError, UnpicklingError, ... here
        if path.stat().st_size == 0:
            what = "it is empty"
        elif type(exc).__name__ == "UnpicklingError":
            what = "it is corrupt, or holds objects other than tensors and plain data (refused: loading them could run code)"
        else:
            what = f"it is corrupt or truncated ({type(exc).__name__})"
        raise RobustCertError(f"{path} cannot be loaded: {what}; {fix}") from exc


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _check_meta(meta: Any, meta_path: Path) -> dict[str, Any]:
    """``meta`` if it has every required field with a usable type, else RobustCertError naming the field."""
    if not isinstance(meta, dict):
        raise RobustCertError(
            f"{meta_path} must hold a JSON object, not a {type(meta).__name__}; {RETRAIN_HINT}"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise RobustCertError(f"{meta_path} lacks the fields {missing}; {RETRAIN_HINT}")

    def bad(field: str, expected: str) -> RobustCertError:
        value: Any = meta
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return RobustCertError(
            f"{meta_path}: field {field!r} must be {expected}, got {value!r}; {RETRAIN_HINT}"
        )

    if not isinstance(meta["arch"], str):
        raise bad("arch", "an architecture name")
    if not isinstance(meta["dataset"], str):
        raise bad("dataset", "a data set name")
    shape = meta["input_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and s > 0 for s in shape)):
        raise bad("input_shape", "a list of 3 positive integers [C, H, W]")
    if not (_is_int(meta["num_classes"]) and meta["num_classes"] >= 2):
        raise bad("num_classes", "an integer >= 2")
    norm = meta["normalize"]
    if not isinstance(norm, dict):
        raise bad("normalize", 'an object {"mean": [...], "std": [...]}')
    channels = shape[0]
    for key in ("mean", "std"):
        values = norm.get(key)
        if not (isinstance(values, list) and len(values) == channels and all(_is_number(v) for v in values)):
            raise bad(f"normalize.{key}", f"a list of {channels} finite numbers (one per channel)")
    if not all(v > 0 for v in norm["std"]):
        raise bad("normalize.std", "a list of numbers > 0")
    return meta


def read_model_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked metadata of a model directory; RobustCertError (naming the file) if it is not one.

    Checks that ``model.json`` and ``model.pt`` exist, that ``model.json`` is a JSON object with every
    field of REQUIRED_FIELDS, and that those fields have usable types (see :func:`load_model`).
    """
    directory = Path(directory)
    meta_path = directory / "model.json"
    if directory.is_file():
        raise RobustCertError(
            f"--model takes a model directory (model.pt + model.json), and {directory} is a file; "
            f"give its directory {directory.parent}"
        )
    if not directory.is_dir():
        raise RobustCertError(
            f"model directory {directory} does not exist; train one with `robustcert train ... --out {directory}`"
        )
    if not meta_path.is_file() and not (directory / "model.pt").is_file():
        raise RobustCertError(
            f"{directory} is not a model directory (needs model.pt and model.json); train one with `robustcert train ... --out {directory}`"
        )
    for name in ("model.json", "model.pt"):
        if not (directory / name).is_file():
            raise RobustCertError(
                f"{directory / name} is missing, so {directory} is not a complete model directory; {RETRAIN_HINT}"
            )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RobustCertError(
            f"{meta_path} is not valid JSON (line {exc.lineno}: {exc.msg}); {RETRAIN_HINT}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise RobustCertError(f"{meta_path} is not UTF-8 text, so not valid JSON; {RETRAIN_HINT}") from exc
    except OSError as exc:
        raise RobustCertError(f"cannot read {meta_path} ({exc.strerror}); {RETRAIN_HINT}") from exc
    return _check_meta(meta, meta_path)


def load_model(directory: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the architecture named in ``model.json``, load the weights, and return it in eval mode.

    Raises RobustCertError for any problem with the directory (see :func:`read_model_meta` and
    :func:`load_weights_file`) and when ``model.pt`` does not hold exactly the architecture's weights.
    """
    meta = read_model_meta(directory)
    norm = meta["normalize"]
    try:
        model = build_model(meta["arch"], meta["input_shape"], meta["num_classes"], norm["mean"], norm["std"])
    except RobustCertError as exc:
        raise RobustCertError(
            f"{Path(directory) / 'model.json'} describes no buildable model: {exc}"
        ) from exc
    weights = Path(directory) / "model.pt"
    state = load_weights_file(weights, RETRAIN_HINT)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RobustCertError(f"{weights} does not hold a state dict of tensors; {RETRAIN_HINT}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else str(exc)
        raise RobustCertError(
            f"{weights} does not match architecture {meta['arch']} in model.json ({detail[:300]}); {RETRAIN_HINT}"
        ) from exc
    model.eval()
    return model, meta


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (used in run.json to pin the exact model)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
