"""Where a model comes from: ``--model`` names a robustcert model directory, an ONNX file or
``module:function`` (a Python callable returning an ``nn.Module``). Each becomes a :class:`ModelSource`:
the module in eval mode, what is known of its input shape and class count, and a fingerprint that pins
the exact weights in ``run.json``.

What a file cannot say is taken from the data: the input shape of a ``module:function`` model is the data
set's, and the class count of every file model is read from its output on one example, then checked
against the data (an error shows both). Models loaded from files are treated like robustcert's own:
inputs in [0, 1], normalisation inside the model (a per-model input domain is not supported yet).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcert.errors import RobustCertError


@dataclass
class ModelSource:
    """A loaded model: ``module`` (eval mode), ``kind`` (directory | onnx | python), the input shape per
    example if the source states it, the class count if known, metadata, and ``fingerprint``: the sha256
    of the model file, or of the weights for a Python model."""

    module: nn.Module
    kind: str
    location: str
    fingerprint: str
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_weights(module: nn.Module) -> str:
    """A fingerprint of a module's state (names, dtypes, shapes and values), stable across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def _from_directory(path: Path) -> ModelSource:
    from robustcert.models.checkpoint import load_model

    module, meta = load_model(path)
    return ModelSource(
        module=module,
        kind="directory",
        location=str(path.resolve()),
        fingerprint=_sha256_file(path / "model.pt"),
        input_shape=tuple(int(s) for s in meta["input_shape"]),
        num_classes=int(meta["num_classes"]),
        meta=meta,
    )


def _from_onnx(path: Path) -> ModelSource:
    from robustcert.graph import load_onnx

    module = load_onnx(path)
    notes = list(getattr(module.ir, "notes", []) or [])
    return ModelSource(
        module=module.eval(),
        kind="onnx",
        location=str(path.resolve()),
        fingerprint=_sha256_file(path),
        input_shape=tuple(module.input_shape),
        meta={"notes": notes} if notes else {},
    )


def _from_python(spec: str) -> ModelSource:
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name.isidentifier():
        raise RobustCertError(f"--model {spec!r}: write a Python model as module:function, e.g. mynets:build")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module next to where the user runs the command
    try:
        py_module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RobustCertError(
            f"--model {spec!r}: cannot import {module_name!r} ({exc}); run from its directory or add it to PYTHONPATH"
        ) from None
    factory = getattr(py_module, function_name, None)
    if not callable(factory):
        raise RobustCertError(f"--model {spec!r}: {module_name} has no function {function_name!r}")
    module = factory()
    if not isinstance(module, nn.Module):
        raise RobustCertError(
            f"--model {spec!r}: {function_name}() returned {type(module).__name__}, not a torch.nn.Module"
        )
    return ModelSource(
        module=module.eval(), kind="python", location=spec, fingerprint=_sha256_weights(module)
    )


def load_model_source(spec: str | os.PathLike[str]) -> ModelSource:
    """Load ``--model``: a model directory, an ``.onnx`` file, or ``module:function``."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        return _from_directory(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise RobustCertError(f"ONNX file {path} does not exist; check the path")
        return _from_onnx(path)
    if path.is_file():
        if path.name == "model.pt":
            return _from_directory(path)  # the checkpoint's error names the directory to give instead
        raise RobustCertError(
            f"--model {path}: unsupported model file; give a robustcert model directory, an .onnx file "
            "(torch.onnx.export) or module:function returning an nn.Module"
        )
    if ":" in text and not path.exists():
        return _from_python(text)
    return _from_directory(path)  # the checkpoint's error says how to make one


def complete(source: ModelSource, data_shape: tuple[int, ...], data_classes: int, data_name: str) -> ModelSource:
    """Fill in what the source did not state from the data, and check what it did: the input shape must be
    the data's, and the model must map one example to a vector of ``data_classes`` scores."""
    shape = tuple(int(s) for s in data_shape)
    if source.input_shape is not None and tuple(source.input_shape) != shape:
        raise RobustCertError(
            f"data set {data_name} has inputs of shape {list(shape)} but the model takes "
            f"{list(source.input_shape)}; choose data of the model's shape (--dataset)"
        )
    try:
        with torch.no_grad():
            out = source.module(torch.zeros((1, *shape)))
    except Exception as exc:
        raise RobustCertError(
            f"the model fails on one input of shape [1, {', '.join(map(str, shape))}] from {data_name}: "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RobustCertError(
            f"the model's output for one example has shape {got}; robustcert needs class scores of shape [1, K]"
        )
    classes = int(out.shape[1])
    if source.num_classes is not None and source.num_classes != classes:
        raise RobustCertError(f"the model's metadata says {source.num_classes} classes but it outputs {classes}")
    if classes != data_classes:
        raise RobustCertError(
            f"data set {data_name} has {data_classes} classes but the model outputs {classes} scores; "
            "choose the data set the model was made for (--dataset)"
        )
    source.input_shape, source.num_classes = shape, classes
    return source
