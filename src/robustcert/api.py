"""The Python entry point: ``robustcert.certify(model, x, y, method, ...)`` for any ``nn.Module``.

It is the CLI's ``certify``/``attack`` without files: the same registry entry, the same parameter
validation (:func:`~robustcert.methods.base.build_params`), the same certifier and the same typed rows,
so a row from Python and a row from the command line for the same model, example, parameters and seed
are equal (timings aside).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.methods import ModelInfo, get_method
from robustcert.rows import Row
from robustcert.seeding import example_seed


def _class_count(model: nn.Module, x: torch.Tensor) -> int:
    from robustcert.models.modes import eval_mode

    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x[:1])
    except Exception as exc:
        raise RobustCertError(
            f"the model fails on one input of shape {list(x[:1].shape)}: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RobustCertError(f"the model's output for one example has shape {got}; robustcert needs class scores [1, K]")
    return int(out.shape[1])


def certify(
    model: nn.Module,
    x: torch.Tensor,
    y: Any,
    method: str = "crown",
    *,
    domain: Any = None,
    seed: int = 0,
    indices: list[int] | None = None,
    **params: Any,
) -> list[Row]:
    """Run a registered method (``"crown"``, ``"smoothing"``, ``"pgd"``, ...; see docs/methods.md) on the
    batch ``x`` [B, C, ...] with labels ``y`` and return its rows: ``rows_per_example`` rows per example
    (one per eps for bound, exact and attack methods), examples in order.

    ``params`` are the method's parameters by name (``eps=[0.01, 0.02]``, ``norm="l2"``, ``sigma=0.25``,
    ``float_model="real"``, ...), validated as on the CLI: an unknown name or a bad value raises
    RobustCertError with a fix. ``domain`` is the input domain (an InputDomain, ``(lo, hi)``, per-channel
    pairs or ``"LO,HI"``; default [0, 1]); every value of ``x`` must lie in it and every certificate is
    over the ball ∩ domain. ``indices`` name the examples in the rows (default 0..B−1); each example's
    randomness comes from ``(seed, index)`` as in a CLI run, so rows match the CLI's for the same
    indices. The model is used in eval mode; its mode is restored.
    """
    from robustcert.models.modes import eval_mode

    if not isinstance(model, nn.Module):
        raise RobustCertError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise RobustCertError("x must be a floating-point tensor [B, C, ...] (a batch; x.unsqueeze(0) for one input)")
    if not bool(torch.isfinite(x).all()):
        raise RobustCertError("x contains NaN or inf; pass finite inputs")
    labels = torch.as_tensor(y)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.reshape(-1).numel() != x.shape[0]:
        raise RobustCertError(f"y must hold one integer label per example ({x.shape[0]}), got {tuple(labels.shape)} {labels.dtype}")
    labels = labels.reshape(-1).long()
    index_list = list(range(x.shape[0])) if indices is None else [int(i) for i in indices]
    if len(index_list) != x.shape[0] or len(set(index_list)) != len(index_list):
        raise RobustCertError(f"indices must name each of the {x.shape[0]} examples once")
    entry = get_method(method)
    dom = InputDomain.coerce(domain)
    dom.check_channels(tuple(x.shape[1:]))
    dom.check_data(x.detach(), "x", "pass domain=(lo, hi), or one (lo, hi) per channel, that holds every input")
    x = x.detach().float()
    with eval_mode(model):
        k = _class_count(model, x)
        if int(labels.min()) < 0 or int(labels.max()) >= k:
            raise RobustCertError(f"y has labels outside 0..{k - 1}; the model has {k} classes")
        info = ModelInfo(input_shape=tuple(int(s) for s in x.shape[1:]), num_classes=k, domain=dom)
        final = entry.finalize(entry.make_params(params), info)
        certifier = entry.build(model, info, final, None)
        rows: list[Row] = []
        step = max(1, int(certifier.batch_size))
        for start in range(0, x.shape[0], step):
            chunk = index_list[start : start + step]
            seeds = [example_seed(seed, i) for i in chunk]
            ys = [int(v) for v in labels[start : start + step]]
            began = time.perf_counter()
            batch = certifier.certify_batch(x[start : start + step], ys, chunk, seeds)
            seconds = (time.perf_counter() - began) / len(chunk)
            for per_example in batch:
                for row in per_example:
                    row.domain, row.seconds = dom.text(), seconds / len(per_example)
                rows.extend(per_example)
    return rows
