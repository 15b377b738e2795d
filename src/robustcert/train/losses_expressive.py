"""Expressive certified-training losses: between adversarial training and IBP, with a coefficient that
moves between them.

* :class:`SABRLoss` — SABR (Müller et al., ICLR 2023): IBP on a *small* box of radius τ = λ·ε_t around an
  adversarial point inside the ε_t-ball. The point comes from PGD on the cross-entropy in the ball; the
  box centre is that point projected onto ``[x − ε_t + τ, x + ε_t − τ]`` so the box lies inside the
  ball (:func:`sabr_box`), then the box is intersected with the input domain [0, 1]. λ = 1 is IBP on
  the whole ball, λ → 0 adversarial training.
* :class:`MTLIBPLoss` — MTL-IBP (De Palma et al., ICLR 2024): the convex combination
  ``α·CE(−m_IBP, y) + (1 − α)·CE(f(x_adv), y)`` of the IBP loss over the ε_t-ball and the cross-entropy
  at a PGD point of the ball (:func:`mtl_ibp_combination`). α = 1 is IBP, α = 0 adversarial training.

Both use :class:`~robustcert.train.losses_robust.BoundLoss`'s schedule (ε ramp, κ clean weight), the
IBP initialisation and warm-up regularisers of Shi et al. as options, and draw PGD's random start from
the epoch's seeded generator (runs repeat and resume exactly). PGD runs on the model in eval mode
(:func:`robustcert.attacks.perturb_for_training`, ``pgd_steps`` steps of 2.5·ε_t/steps).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.train.interval import IntervalTrace, interval_trace, margin_from_trace
from robustcert.train.losses import LossContext
from robustcert.train.losses_robust import BoundLoss


def sabr_box(
    x: torch.Tensor, x_adv: torch.Tensor, eps: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SABR's propagation box: radius τ = lam·eps around ``x_adv`` projected onto ``[x − eps + τ,
    x + eps − τ]`` (so the box lies in the ball B∞(x, eps)), intersected with [0, 1]. Returns (lo, hi)."""
    tau = lam * eps
    center = torch.maximum(torch.minimum(x_adv, x + (eps - tau)), x - (eps - tau))
    return (center - tau).clamp(0, 1), (center + tau).clamp(0, 1)


def mtl_ibp_combination(ibp_loss: torch.Tensor, adv_loss: torch.Tensor, alpha: float) -> torch.Tensor:
    """MTL-IBP's loss: ``alpha·ibp_loss + (1 − alpha)·adv_loss``."""
    return alpha * ibp_loss + (1 - alpha) * adv_loss


def _check_fraction(value: Any, flag: str, open_low: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
    low_ok = ok and (float(value) > 0 if open_low else float(value) >= 0)
    if not (low_ok and float(value) <= 1):
        bound = "(0, 1]" if open_low else "[0, 1]"
        raise RobustCertError(f"{flag} must be a number in {bound}, got {value!r}")
    return float(value)


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise RobustCertError(f"--pgd-steps must be an integer >= 1, got {steps!r}")
    return steps


def _attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, ctx: LossContext
) -> torch.Tensor:
    from robustcert.attacks import perturb_for_training

    return perturb_for_training(model, x, y, eps=eps, norm="linf", steps=steps, generator=ctx.generator)


class SABRLoss(BoundLoss):
    """SABR (Müller et al. 2023): the robust term is ``CE(−m, y)`` with m the IBP margin bounds over
    :func:`sabr_box` around a PGD point (see the module docstring). ``sabr_lambda`` = λ ∈ (0, 1] (the
    paper tunes it per data set and budget). κ ends at 0 unless ``kappa_end`` says otherwise."""

    METHODS = ("sabr",)

    def __init__(self, eps: float, *, sabr_lambda: float = 0.4, pgd_steps: int = 8, **schedule: Any) -> None:
        schedule.setdefault("kappa_end", 0.0)
        super().__init__("sabr", eps, **schedule)
        self.lam = _check_fraction(sabr_lambda, "--sabr-lambda", open_low=True)
        self.steps = _check_steps(pgd_steps)

    def params(self) -> dict[str, float | str | bool]:
        return {**super().params(), "sabr_lambda": self.lam, "pgd_steps": self.steps}

    def robust_term(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float, ctx: LossContext
    ) -> tuple[torch.Tensor, IntervalTrace]:
        x_adv = _attack(model, x, y, eps, self.steps, ctx)
        lo, hi = sabr_box(x, x_adv, eps, self.lam)
        trace = interval_trace(model, lo, hi)
        return F.cross_entropy(-margin_from_trace(trace, y), y), trace


class MTLIBPLoss(BoundLoss):
    """MTL-IBP (De Palma et al. 2024): the robust term is ``α·CE(−m_IBP, y) + (1 − α)·CE(f(x_adv), y)``
    over the ε_t-ball (see the module docstring); ``mtl_alpha`` = α ∈ [0, 1] (the paper tunes it per data
    set and budget). κ ends at 0 unless ``kappa_end`` says otherwise."""

    METHODS = ("mtl-ibp",)

    def __init__(self, eps: float, *, mtl_alpha: float = 0.5, pgd_steps: int = 8, **schedule: Any) -> None:
        schedule.setdefault("kappa_end", 0.0)
        super().__init__("mtl-ibp", eps, **schedule)
        self.alpha = _check_fraction(mtl_alpha, "--mtl-alpha", open_low=False)
        self.steps = _check_steps(pgd_steps)

    def params(self) -> dict[str, float | str | bool]:
        return {**super().params(), "mtl_alpha": self.alpha, "pgd_steps": self.steps}

    def robust_term(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float, ctx: LossContext
    ) -> tuple[torch.Tensor, IntervalTrace]:
        x_adv = _attack(model, x, y, eps, self.steps, ctx)
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        trace = interval_trace(model, lo, hi)
        ibp = F.cross_entropy(-margin_from_trace(trace, y), y)
        adv = F.cross_entropy(model(x_adv), y)
        return mtl_ibp_combination(ibp, adv, self.alpha), trace
