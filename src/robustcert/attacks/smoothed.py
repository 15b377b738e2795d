"""An L2 attack on a *smoothed* classifier (SmoothAdv, Salman et al. 2019), used to test smoothing
certificates: it searches the certified ball for a point where the smoothed prediction changes.

The objective is the smoothed soft classifier's log-probability of the certified class,
log E_δ[softmax(f(x' + δ))_c], estimated with ``m`` fresh Gaussian draws per step; PGD descends it with
normalised-gradient L2 steps, projected onto the ball of radius ``radius`` ∩ [0, 1]. A point is reported
as breaking the certificate only if PREDICT (n fresh samples, two-sided binomial test at ``alpha``)
returns a class other than the certified one — the same standard of evidence the certificate itself
uses, so a report is wrong with probability at most about ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.models.modes import eval_mode
from robustcert.seeding import derived_seed, torch_generator

_NOISE_DOMAIN = 0x536D4164  # the attack's own noise stream, apart from PREDICT's


@dataclass(frozen=True)
class SmoothedAttackResult:
    x_adv: torch.Tensor  # one input, C×H×W, inside the L2 ball ∩ [0, 1]
    distance: float  # ‖x_adv − x‖₂ (float64), ≤ radius
    prediction: int  # the smoothed PREDICT at x_adv (−1 = abstain)
    broken: bool  # prediction is a class other than the certified one


def attack_smoothed(
    model: nn.Module,
    x: torch.Tensor,
    certified_class: int,
    radius: float,
    sigma: float,
    num_classes: int,
    *,
    steps: int = 20,
    m: int = 32,
    n_predict: int = 2000,
    alpha: float = 0.001,
    seed: int = 0,
    domain: Any = None,
) -> SmoothedAttackResult:
    """Try to change the smoothed prediction inside the L2 ball of ``radius`` around ``x`` (one input),
    searching the ball ∩ the input ``domain`` (default [0, 1]; ``x`` must lie in it).

    ``seed`` is any non-negative integer (every bit counts, see :mod:`robustcert.seeding`): the attack's
    noise and the final PREDICT draw from two independent streams derived from it. The model runs in
    eval mode; every submodule's mode is restored afterwards."""
    from robustcert.smoothing import SmoothedClassifier

    if not radius >= 0:
        raise RobustCertError(f"radius must be >= 0, got {radius}")
    if x.ndim != 3:
        raise RobustCertError(f"attack_smoothed takes one input C×H×W, got shape {tuple(x.shape)}")
    box = InputDomain.coerce(domain)
    box.check_data(x.detach().unsqueeze(0), "x")
    gen = torch_generator(derived_seed(_NOISE_DOMAIN, seed))
    x = x.detach().float()
    inner = radius * (1 - 1e-5)
    adv = x.clone()
    step = 2.5 * inner / max(steps, 1)
    with eval_mode(model):
        for _ in range(steps if inner > 0 else 0):
            adv.requires_grad_(True)
            noise = torch.randn((m, *x.shape), generator=gen) * sigma
            probs = torch.softmax(model(adv.unsqueeze(0) + noise), dim=1).mean(0)
            objective = torch.log(probs[certified_class].clamp_min(1e-12))
            (grad,) = torch.autograd.grad(objective, adv)
            with torch.no_grad():
                adv = adv - step * grad / grad.norm().clamp_min(1e-12)
                delta = adv - x
                delta = delta * min(1.0, inner / max(float(delta.norm()), 1e-30))
                adv = box.clip((x + delta).unsqueeze(0))[0]  # x is in the box: clipping moves towards x
    adv = adv.detach()
    distance = float((adv.double() - x.double()).norm())
    if distance > radius:  # pragma: no cover - a bug, not a user error
        raise AssertionError("smoothed attack left the certified ball")
    smoothed = SmoothedClassifier(model, sigma=sigma, num_classes=num_classes)
    prediction = smoothed.predict(adv, n=n_predict, alpha=alpha, batch_size=min(n_predict, 1000), seed=seed)
    return SmoothedAttackResult(adv, distance, int(prediction), bool(prediction not in (-1, certified_class)))
