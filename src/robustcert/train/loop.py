"""The one training loop shared by every method; the method is the pluggable loss.

Guarantees: the run is a function of (seed, data, arguments) — shuffling and noise come from generators
seeded by (seed, epoch), so a run resumed from its last epoch checkpoint continues exactly as an
uninterrupted one. A checkpoint (``model.pt``, ``model.json``, ``train_state.pt``) is written after
every epoch, each file atomically. ``train_state.pt`` holds only tensors and plain data (the optimizer,
scheduler and global torch RNG states) and is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustcert.data.base import Dataset
from robustcert.errors import RobustCertError
from robustcert.models.checkpoint import load_weights_file, save_model
from robustcert.models.modes import eval_mode
from robustcert.models.zoo import build_model
from robustcert.progress import progress
from robustcert.seeding import derived_seed
from robustcert.train.losses import LossContext

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor, LossContext], torch.Tensor]


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset, batch_size: int = 1000) -> float:
    """Clean accuracy of ``model`` (in eval mode; its mode is restored) on ``data``."""
    correct = 0
    with eval_mode(model):
        for start in range(0, len(data), batch_size):
            logits = model(data.x[start : start + batch_size])
            correct += int((logits.argmax(1) == data.y[start : start + batch_size]).sum())
    return correct / max(len(data), 1)


_STATE_FIX = "delete train_state.pt to train from scratch, or choose another --out"
_STATE_KEYS = ("config", "epoch", "history", "model", "optimizer", "scheduler")


def _check_int(value: Any, flag: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RobustCertError(f"{flag} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(value: Any, flag: str, positive: bool) -> float:
    relation = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RobustCertError(f"{flag} must be a finite number {relation}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise RobustCertError(f"{flag} must be a finite number {relation}, got {value!r}")
    return number


def _load_train_state(path: Path) -> dict[str, Any]:
    """``train_state.pt`` loaded with weights_only=True and checked for the keys and types resume uses."""
    state = load_weights_file(path, _STATE_FIX)
    if not isinstance(state, dict) or any(key not in state for key in _STATE_KEYS):
        raise RobustCertError(f"{path} is not a robustcert training checkpoint; {_STATE_FIX}")
    if not (
        isinstance(state["config"], dict)
        and _is_plain_int(state["epoch"])
        and state["epoch"] >= 0
        and isinstance(state["history"], list)
        and isinstance(state["model"], dict)
        and isinstance(state["optimizer"], dict)
        and isinstance(state["scheduler"], dict)
        and isinstance(state.get("torch_rng", torch.empty(0, dtype=torch.uint8)), torch.Tensor)
    ):
        raise RobustCertError(f"{path} holds a damaged training checkpoint; {_STATE_FIX}")
    return state


def _is_plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def train_model(
    *,
    arch: str,
    train_data: Dataset,
    test_data: Dataset | None,
    loss: Loss,
    method: str,
    method_params: dict[str, Any],
    out_dir: str | os.PathLike[str],
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    resume: bool = False,
    show_progress: bool = True,
    grad_clip: float = 0.0,
    command: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``arch`` on ``train_data`` with ``loss`` (Adam, cosine learning rate), checkpointing each epoch.

    With ``resume`` and a ``train_state.pt`` in ``out_dir`` whose arguments match, training continues after
    the last finished epoch, bit for bit as an uninterrupted run (the global torch RNG state is part of the
    checkpoint, for losses that draw from it). ``train_state.pt`` is loaded with ``weights_only=True``:
    a tampered run directory cannot run code. Returns the model (eval mode) and its metadata (also in
    ``model.json``).

    A loss with an ``initialize(model)`` method (certified training's IBP initialisation) gets the freshly
    built model before training, under the seeded initialisation RNG. ``grad_clip`` > 0 clips the global
    gradient norm of every step to it (0: no clipping); it is recorded in model.json's ``train`` section.
    ``command`` (the command line that trained the model, when given) is recorded as model.json's
    ``command``; it is not part of the arguments a resumed run must match.

    Raises RobustCertError, before anything is written, for: epochs, batch_size not integers >= 1; lr not
    finite > 0; weight_decay not finite >= 0; an unknown arch (listing the choices); empty training data;
    test data whose input shape or class count differs from the training data's.
    """
    epochs = _check_int(epochs, "--epochs", 1)
    batch_size = _check_int(batch_size, "--batch-size", 1)
    lr = _check_float(lr, "--lr", positive=True)
    weight_decay = _check_float(weight_decay, "weight_decay", positive=False)
    grad_clip = _check_float(grad_clip, "--grad-clip", positive=False)
    if len(train_data) == 0:
        raise RobustCertError(
            f"training data {train_data.name}/{train_data.split} is empty; pass a data set with examples"
        )
    if test_data is not None and (
        test_data.input_shape != train_data.input_shape or test_data.num_classes != train_data.num_classes
    ):
        raise RobustCertError(
            f"test data {test_data.name}/{test_data.split} ({list(test_data.input_shape)}, {test_data.num_classes} "
            f"classes) does not match the training data ({list(train_data.input_shape)}, "
            f"{train_data.num_classes} classes); use the splits of one data set"
        )
    out = Path(out_dir)
    torch.manual_seed(derived_seed(seed, 0xA11CE))  # weight initialisation
    model = build_model(arch, train_data.input_shape, train_data.num_classes, train_data.mean, train_data.std)
    initialize = getattr(loss, "initialize", None)
    if callable(initialize):
        initialize(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(train_data) + batch_size - 1) // batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    config = {
        "arch": arch,
        "dataset": train_data.name,
        "method": method,
        "params": method_params,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
    }
    if grad_clip > 0:  # only then, so checkpoints written before the option existed still resume
        config["grad_clip"] = grad_clip
    start_epoch = 0
    history: list[dict[str, float]] = []
    state_path = out / "train_state.pt"
    if resume and state_path.exists():
        state = _load_train_state(state_path)
        if state["config"] != config:
            raise RobustCertError(
                f"cannot resume {out}: it was trained with different arguments {json.dumps(state['config'])}; use another --out"
            )
        if state["epoch"] > epochs:
            raise RobustCertError(
                f"{state_path} claims {state['epoch']} of {epochs} epochs done; {_STATE_FIX}"
            )
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if "torch_rng" in state:  # absent in checkpoints of robustcert <= 0.1.0
                torch.set_rng_state(state["torch_rng"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise RobustCertError(
                f"cannot resume from {state_path}: its model or optimizer state does not fit ({type(exc).__name__}); "
                f"{_STATE_FIX}"
            ) from exc
        start_epoch, history = state["epoch"], state["history"]
    elif not resume and state_path.exists():
        raise RobustCertError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --out"
        )

    meta: dict[str, Any] = {}
    total_steps = epochs * steps_per_epoch
    with progress(f"train {arch}/{method}", (epochs - start_epoch) * steps_per_epoch, show_progress) as bar:
        for epoch in range(start_epoch, epochs):
            model.train()
            gen = torch.Generator().manual_seed(derived_seed(seed, epoch))
            order = torch.randperm(len(train_data), generator=gen)
            running, seen = 0.0, 0
            for step in range(steps_per_epoch):
                idx = order[step * batch_size : (step + 1) * batch_size]
                x, y = train_data.x[idx], train_data.y[idx]
                ctx = LossContext(gen, (epoch * steps_per_epoch + step) / total_steps)
                value = loss(model, x, y, ctx)
                if not torch.isfinite(value):
                    raise RobustCertError(
                        f"training diverged at epoch {epoch + 1} (loss {float(value)}); lower --lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                optimizer.step()
                scheduler.step()
                running += float(value.detach()) * len(idx)
                seen += len(idx)
                bar.advance(1, f"epoch {epoch + 1}/{epochs} loss {running / seen:.3f}")
            model.eval()
            record = {"epoch": epoch + 1, "loss": running / max(seen, 1)}
            if test_data is not None:
                record["test_accuracy"] = accuracy(model, test_data)
            history.append(record)
            meta = {
                "arch": arch,
                "dataset": train_data.name,
                "input_shape": list(train_data.input_shape),
                "num_classes": train_data.num_classes,
                "normalize": {"mean": list(train_data.mean), "std": list(train_data.std)},
                "train": {
                    "method": method,
                    **method_params,
                    "epochs": epochs,
                    "batch_size": batch_size,
                    "lr": lr,
                    **({"grad_clip": grad_clip} if grad_clip > 0 else {}),
                },
                "seed": seed,
                **({"command": command} if command is not None else {}),
                "clean_accuracy": record.get("test_accuracy"),
                "epochs_done": epoch + 1,
                "history": history,
            }
            save_model(out, model, meta)
            tmp = out / "train_state.pt.tmp"
            torch.save(
                {
                    "config": config,
                    "epoch": epoch + 1,
                    "history": history,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
                tmp,
            )
            os.replace(tmp, state_path)
    if not meta:  # resumed a finished run
        from robustcert.models.checkpoint import read_model_meta

        meta = read_model_meta(out)
    model.eval()
    return model, meta
