"""Shi et al. 2021 ("Fast Certified Robust Training with Short Warmup"): the IBP initialisation and the
two warm-up regularisers, written from the paper's definitions.

* :func:`ibp_init` — every Linear/Conv2d layer followed by a ReLU gets weights drawn from N(0, σ²) with
  σ = sqrt(2π) / fan_in, so that the expected interval width is preserved from layer to layer at
  initialisation (E|w| = σ·sqrt(2/π), and about half the ReLUs pass an interval on: fan_in·E|w|/2 = 1).
  Biases and the final classification layer (no ReLU after it, so the derivation does not apply; the
  authors' code leaves it too) keep their default initialisation.
* :func:`tightness_loss` — for each ReLU layer i, the tightness t_i = mean(δ_0) / mean(δ_i) (δ = interval
  half-widths; δ_0 those of the input box after the model's normalisation layer, i.e. in the units the
  paper's networks take); the loss is the mean over layers of ReLU(τ − t_i) / τ: zero once no layer's
  bounds are more than 1/τ times looser than the input box.
* :func:`relu_balance_loss` — for each ReLU layer, with c the interval centres, the ratio of the mean
  centre of the active neurons (l > 0) to that of the inactive ones (u < 0), and the ratio of their
  summed squared deviations from the layer's mean centre, each folded into (0, 1] (min(r, 1/r)); the loss
  is the mean over layers of (ReLU(τ − r_mean) + ReLU(τ − r_var)) / τ: zero when active and inactive
  neurons are balanced within a factor 1/τ. A ratio with exactly one side empty counts as 0 (a constant:
  no gradient); a layer with neither active nor inactive neurons adds 0 (undefined; the authors' code
  skips it too).

The paper weighs their sum by λ·(1 − ε_t/ε) during the ε ramp (the warm-up), so it vanishes at the
target ε; :class:`~robustcert.train.losses_robust.BoundLoss` applies it that way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.train.interval import IntervalTrace


@torch.no_grad()
def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> int:
    """Re-draw the weights of every Linear/Conv2d layer of ``model`` that is followed (at any distance,
    before the next affine layer) by a ReLU, from N(0, (sqrt(2π)/fan_in)²). Returns how many layers were
    re-drawn. Uses ``generator`` (or torch's global generator) for the draws."""
    modules = [m for m in model.modules() if not list(m.children())]
    count = 0
    for k, layer in enumerate(modules):
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        following = next(
            (m for m in modules[k + 1 :] if isinstance(m, (nn.Linear, nn.Conv2d, nn.ReLU))), None
        )
        if not isinstance(following, nn.ReLU):
            continue
        weight = layer.weight
        fan_in = weight[0].numel()  # in_features, or in_channels/groups · kernel area
        std = math.sqrt(2 * math.pi) / fan_in
        weight.copy_(torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * std)
        count += 1
    return count


def _half_width_mean(low: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return ((up - low) / 2).mean()


def tightness_loss(trace: IntervalTrace, tol: float) -> torch.Tensor:
    """Shi et al.'s L_tightness for one propagation (see the module docstring); a scalar in [0, 1]."""
    d0 = _half_width_mean(*trace.first_in)
    terms = [F.relu(tol - d0 / _half_width_mean(lo, up).clamp(min=1e-12)) / tol for lo, up in trace.pre_relu]
    if not terms:
        return d0.new_zeros(())
    return torch.stack(terms).mean()


def _folded_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor | None:
    """min(num/den, den/num) for num, den >= 0: in [0, 1]; None when both are 0 (undefined); a constant
    0 when exactly one is 0 (so no infinite or NaN gradient is ever formed)."""
    n_zero, d_zero = bool(num <= 0), bool(den <= 0)
    if n_zero and d_zero:
        return None
    if n_zero or d_zero:
        return num.new_zeros(())
    return torch.minimum(num / den, den / num)


def relu_balance_loss(trace: IntervalTrace, tol: float) -> torch.Tensor:
    """Shi et al.'s L_relu for one propagation (see the module docstring); a scalar in [0, 2]."""
    terms = []
    for low, up in trace.pre_relu:
        center = (up + low) / 2
        active, inactive = (low > 0).to(center.dtype), (up < 0).to(center.dtype)
        dev = (center - center.mean()) ** 2
        r_mean = _folded_ratio((center * active).mean(), -(center * inactive).mean())
        r_var = _folded_ratio((dev * active).sum(), (dev * inactive).sum())
        if r_mean is None or r_var is None:  # neither active nor inactive neurons: undefined, adds 0
            terms.append(center.new_zeros(()))
            continue
        terms.append((F.relu(tol - r_mean) + F.relu(tol - r_var)) / tol)
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).mean()
