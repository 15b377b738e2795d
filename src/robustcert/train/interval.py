"""Interval bound propagation for *training*: batched, differentiable, in the inputs' dtype (float32).

Certification never uses this module (it recomputes sound bounds with :mod:`robustcert.bounds`, which
covers float rounding); training needs bounds that are cheap, differentiable and expose the interval at
every ReLU's input (for Shi et al.'s warm-up regularisers). It supports the ``nn.Sequential`` models of
the zoo: :class:`Normalize`, ``Linear``, ``Conv2d``, ``ReLU``, ``Flatten`` (and ``Identity``), ending
with a ``Linear`` layer.

Guarantee (real arithmetic): for every input in the box ``[lo, hi]``, every pre-activation lies in the
interval recorded for it, and ``f_y(x) − f_j(x) >= margin[b, j]`` for the returned margin bounds (the last
``Linear`` is merged with the margin specification ``C = e_y − e_j`` before the interval is applied, as
in Gowal et al. 2018, so those bounds are at least as tight as subtracting logit intervals).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.models.normalize import Normalize

SUPPORTED = (Normalize, nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity)


class IntervalTrace(NamedTuple):
    """The intervals of one propagation: ``first_in`` the interval entering the first Linear/Conv2d layer
    (the input box after the model's normalisation); ``pre_relu`` (lower, upper) at every ReLU's input,
    in order; ``last_in`` the interval entering the final Linear layer ``last``."""

    first_in: tuple[torch.Tensor, torch.Tensor]
    pre_relu: list[tuple[torch.Tensor, torch.Tensor]]
    last_in: tuple[torch.Tensor, torch.Tensor]
    last: nn.Linear


def _layers(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential):
        raise RobustCertError(
            f"certified training needs an nn.Sequential model (a zoo architecture), got {type(model).__name__}"
        )
    layers = list(model)
    for layer in layers:
        if not isinstance(layer, SUPPORTED):
            names = ", ".join(t.__name__ for t in SUPPORTED)
            raise RobustCertError(
                f"certified training cannot bound layer {type(layer).__name__}; supported: {names}"
            )
    if not layers or not isinstance(layers[-1], nn.Linear):
        raise RobustCertError("certified training needs a model that ends with a Linear layer")
    return layers


def _affine(
    layer: nn.Module, center: torch.Tensor, radius: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(center, radius) of an affine layer's output: W·c + b and |W|·r."""
    if isinstance(layer, nn.Linear):
        return F.linear(center, layer.weight, layer.bias), F.linear(radius, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise RobustCertError(
                f"certified training supports zero padding only, got {layer.padding_mode!r}"
            )
        s, p, d, g = layer.stride, layer.padding, layer.dilation, layer.groups
        return (
            F.conv2d(center, layer.weight, layer.bias, s, p, d, g),  # type: ignore[arg-type]
            F.conv2d(radius, layer.weight.abs(), None, s, p, d, g),  # type: ignore[arg-type]
        )
    assert isinstance(layer, Normalize)
    std = layer.std.view(-1) if center.ndim == 2 else layer.std
    mean = layer.mean.view(-1) if center.ndim == 2 else layer.mean
    return (center - mean) / std, radius / std


def interval_trace(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> IntervalTrace:
    """Propagate the box ``[lo, hi]`` ([B, *input_shape], lo <= hi) through every layer but the last.

    Differentiable with respect to the parameters and the box; computed in ``lo``'s dtype.
    RobustCertError for a model this module cannot bound (see the module docstring).
    """
    layers = _layers(model)
    center, radius = (hi + lo) / 2, (hi - lo) / 2
    pre_relu: list[tuple[torch.Tensor, torch.Tensor]] = []
    first_in: tuple[torch.Tensor, torch.Tensor] | None = None
    for layer in layers[:-1]:
        if first_in is None and isinstance(layer, (nn.Linear, nn.Conv2d)):
            first_in = (center - radius, center + radius)
        if isinstance(layer, nn.ReLU):
            low, up = center - radius, center + radius
            pre_relu.append((low, up))
            low, up = low.clamp(min=0), up.clamp(min=0)
            center, radius = (up + low) / 2, (up - low) / 2
        elif isinstance(layer, nn.Flatten):
            center, radius = layer(center), layer(radius)
        elif isinstance(layer, nn.Identity):
            continue
        else:
            center, radius = _affine(layer, center, radius)
    last = layers[-1]
    assert isinstance(last, nn.Linear)
    last_in = (center - radius, center + radius)
    return IntervalTrace(last_in if first_in is None else first_in, pre_relu, last_in, last)


def margin_from_trace(trace: IntervalTrace, y: torch.Tensor) -> torch.Tensor:
    """Lower bounds of ``f_y − f_j`` ([B, K]; column y is exactly 0) from the interval entering the last
    layer, with that layer merged into the margin rows ``w_y − w_j``."""
    low, up = trace.last_in
    center, radius = (up + low) / 2, (up - low) / 2
    w, b = trace.last.weight, trace.last.bias
    rows = w[y].unsqueeze(1) - w.unsqueeze(0)  # [B, K, H]
    m = torch.einsum("bkh,bh->bk", rows, center) - torch.einsum("bkh,bh->bk", rows.abs(), radius)
    if b is not None:
        m = m + (b[y].unsqueeze(1) - b.unsqueeze(0))
    return m


def ibp_margin_lower(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IBP lower bounds of the margins ``f_y − f_j`` over the box ``[lo, hi]`` ([B, K], column y = 0),
    differentiable; ``F.cross_entropy(-m, y)`` is the IBP robust loss."""
    return margin_from_trace(interval_trace(model, lo, hi), y)
