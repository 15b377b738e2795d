"""Model directories: ``model.pt`` (state dict) + ``model.json`` (metadata), as DESIGN.md's file contract."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import robustcert
from robustcert.errors import RobustCertError
from robustcert.models.zoo import build_model

REQUIRED_FIELDS = ("arch", "dataset", "input_shape", "num_classes", "normalize")


def save_model(directory: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.pt`` and ``model.json`` atomically (write to a temp file, then rename)."""
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


def read_model_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a model directory; RobustCertError if it is not one."""
    directory = Path(directory)
    meta_path = directory / "model.json"
    if not meta_path.exists() or not (directory / "model.pt").exists():
        raise RobustCertError(
            f"{directory} is not a model directory (needs model.pt and model.json); train one with `robustcert train ... --out {directory}`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise RobustCertError(f"{meta_path} is not valid JSON: {exc}") from exc
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise RobustCertError(f"{meta_path} lacks the fields {missing}")
    return meta


def load_model(directory: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the architecture named in ``model.json``, load the weights, and return it in eval mode."""
    meta = read_model_meta(directory)
    norm = meta["normalize"]
    model = build_model(meta["arch"], meta["input_shape"], meta["num_classes"], norm["mean"], norm["std"])
    state = torch.load(Path(directory) / "model.pt", map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RobustCertError(
            f"{directory}/model.pt does not match architecture {meta['arch']}: {exc}"
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
