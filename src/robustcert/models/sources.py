"""Where a model comes from: ``--model`` names a robustcert model directory, an ONNX file, a
``torch.export`` program (``.pt2``), a TorchScript file (``.pt``/``.ts``/``.jit``), ``module:function``
(a Python callable returning an ``nn.Module``) or ``zoo:NAME``, a model directory shipped with robustcert
(:mod:`robustcert.models.shipped`; resolved to its directory when the :class:`ModelSpec` is made). Each becomes a :class:`ModelSource`: the module in eval
mode, what is known of its input shape and class count, and a fingerprint that pins the exact weights in
``run.json``.

What a file cannot say the user states in a :class:`ModelSpec` (``--input-range``, ``--mean``/``--std``,
``--class-names``, ``--trust-model-file``): the input domain (default [0, 1]), the normalisation the
model expects to have been applied to its inputs (then it is put in front of the model, so budgets and
the domain are in the units of the data), and class names. The input shape and class count come from
the model and are checked against the data (:func:`complete`; an error shows both), and the data must
lie in the domain. ``.pt2`` and TorchScript files can run code when loaded, so they are read only with
``trust_file`` (``--trust-model-file``).
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

from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError

EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".jit", ".torchscript")


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


@dataclass(frozen=True)
class ModelSpec:
    """``--model`` and what the user states about it. ``location``: a model directory, a model file or
    ``module:function`` (``zoo:NAME`` is replaced by the shipped model's directory on construction; an
    unknown name raises :class:`RobustCertError`); ``input_range``: the input domain (an :class:`InputDomain`, ``"LO,HI"`` text,
    per-channel ``"LO,HI;LO,HI"``; None = [0, 1]); ``mean``/``std``: per-channel normalisation the model
    expects its inputs to have had (applied in front of it; one value or one per channel);
    ``class_names``: one name per class; ``trust_file``: allow formats whose loading can run code."""

    location: str
    input_range: InputDomain | str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    trust_file: bool = False

    def __post_init__(self) -> None:
        from robustcert.models.shipped import resolve_location

        object.__setattr__(self, "location", resolve_location(os.fspath(self.location)))

    @classmethod
    def of(cls, model: ModelSpec | str | os.PathLike[str]) -> ModelSpec:
        return model if isinstance(model, ModelSpec) else cls(os.fspath(model))

    @property
    def domain(self) -> InputDomain:
        return InputDomain.coerce(self.input_range, "input range")

    def to_json(self) -> dict[str, Any]:
        """What ``run.json`` records of the user's statements (the domain is recorded separately)."""
        out: dict[str, Any] = {}
        if self.mean is not None:
            out["normalize"] = {"mean": list(self.mean), "std": list(self.std or ())}
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        return out


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


def _from_exported(path: Path, trust: bool, input_shape: tuple[int, ...] | None) -> ModelSource:
    from robustcert.graph.export_frontend import EXPORT, load_exported, sniff_format

    if not path.is_file():
        raise RobustCertError(f"model file {path} does not exist; check the path")
    module = load_exported(path, trust=trust, input_shape=input_shape)  # TorchScript needs the data's shape
    notes = list(getattr(module.ir, "notes", []) or [])
    kind = "torch.export" if sniff_format(str(path)) == EXPORT else "torchscript"
    return ModelSource(
        module=module.eval(),
        kind=kind,
        location=str(path.resolve()),
        fingerprint=_sha256_file(path),
        input_shape=tuple(module.input_shape),
        meta={"notes": notes} if notes else {},
    )


def load_model_source(
    spec: ModelSpec | str | os.PathLike[str], input_shape: tuple[int, ...] | None = None
) -> ModelSource:
    """Load ``--model`` (a model directory, an ``.onnx``, ``.pt2`` or TorchScript file, or
    ``module:function``) and apply the spec's normalisation. ``input_shape`` (per example; the data's)
    is needed by TorchScript files, which do not record theirs; :func:`complete` checks the rest."""
    spec = ModelSpec.of(spec)
    source = _load(spec, input_shape)
    if spec.mean is not None or spec.std is not None:
        source = _normalized(source, spec)
    if spec.class_names is not None and len(set(spec.class_names)) != len(spec.class_names):
        raise RobustCertError("--class-names: names must be distinct")
    return source


def _load(spec: ModelSpec, input_shape: tuple[int, ...] | None) -> ModelSource:
    text = spec.location
    path = Path(text)
    suffix = path.suffix.lower()
    if path.is_dir():
        return _from_directory(path)
    if suffix == ".onnx":
        if not path.is_file():
            raise RobustCertError(f"ONNX file {path} does not exist; check the path")
        return _from_onnx(path)
    if suffix in EXPORT_SUFFIXES or (suffix in TORCHSCRIPT_SUFFIXES and path.name != "model.pt"):
        return _from_exported(path, spec.trust_file, input_shape)
    if path.is_file():
        if path.name == "model.pt":
            return _from_directory(path)  # the checkpoint's error names the directory to give instead
        raise RobustCertError(
            f"--model {path}: unsupported model file; give a robustcert model directory, an .onnx file "
            "(torch.onnx.export), a .pt2 (torch.export.save) or TorchScript file (torch.jit.save), or "
            "module:function returning an nn.Module"
        )
    if ":" in text and not path.exists():
        return _from_python(text)
    return _from_directory(path)  # the checkpoint's error says how to make one


def _normalized(source: ModelSource, spec: ModelSpec) -> ModelSource:
    """The source with ``Normalize(mean, std)`` in front: the model then takes the data's raw units."""
    from torch import nn as _nn

    from robustcert.models.normalize import Normalize

    if source.kind == "directory":
        raise RobustCertError(
            "--mean/--std: a robustcert model directory already normalises inside the model; "
            "drop --mean/--std (they are for model files that expect normalised inputs)"
        )
    if spec.mean is None or spec.std is None:
        raise RobustCertError("give both --mean and --std (one value, or one per channel), e.g. --mean 0.5 --std 0.25")
    try:
        norm = Normalize(spec.mean, spec.std)
    except ValueError as exc:
        raise RobustCertError(f"--mean/--std: {str(exc).removeprefix('Normalize: ')}") from None
    module = _nn.Sequential(norm, source.module).eval()
    meta = {**source.meta, "normalize": {"mean": list(spec.mean), "std": list(spec.std)}}
    return ModelSource(
        module=module, kind=source.kind, location=source.location, fingerprint=source.fingerprint,
        input_shape=source.input_shape, num_classes=source.num_classes, meta=meta,
    )


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
