"""Robust training losses: PGD adversarial training (Madry et al. 2018), IBP (Gowal et al. 2018) and
CROWN-IBP (Zhang et al. 2020). Each is a loss for the shared loop in ``train.loop``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.train.losses import LossContext
from robustcert.validation import check_eps, check_norm


class PGDLoss:
    """Cross-entropy on PGD points inside the ball (Madry et al.): the empirical robustness baseline.

    The attack uses one random start from the epoch's seeded generator, ``steps`` steps of size
    2.5·eps/steps, and runs with the model in eval mode (its mode is restored).
    """

    name = "pgd"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10) -> None:
        check_norm(norm)
        if steps <= 0:
            raise RobustCertError(f"--pgd-steps must be >= 1, got {steps}")
        self.eps, self.norm, self.steps = check_eps(eps, "training eps"), norm, int(steps)

    def params(self) -> dict[str, float | str | int]:
        return {"eps": self.eps, "norm": self.norm, "pgd_steps": self.steps}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        from robustcert.attacks import perturb_for_training

        x_adv = perturb_for_training(
            model, x, y, eps=self.eps, norm=self.norm, steps=self.steps, generator=ctx.generator
        )
        return F.cross_entropy(model(x_adv), y)


class BoundLoss:
    """Certified training on L∞ balls: cross-entropy of the worst-case logits implied by margin bounds.

    Schedule over the fraction of training done (``ctx.progress``): the first 10% is clean training, eps
    ramps linearly to its target by 50%, and the weight of the clean loss κ goes from 1 to 0.5 during the
    ramp (Gowal et al.). ``crown-ibp`` mixes CROWN-IBP and IBP bounds with β going from 1 to 0 over the ramp
    (Zhang et al.). Bounds come from ``robustcert.bounds`` in float32, differentiable (training only: no
    soundness claim is made here; certification recomputes bounds in float64).
    """

    def __init__(self, method: str, eps: float, warmup: float = 0.1, ramp_end: float = 0.5) -> None:
        if method not in ("ibp", "crown-ibp"):
            raise RobustCertError(f"unknown certified training method {method!r}")
        self.name, self.eps = method, check_eps(eps, "training eps")
        self.warmup, self.ramp_end = warmup, ramp_end

    def params(self) -> dict[str, float | str]:
        return {"eps": self.eps, "norm": "linf"}

    def schedule(self, progress: float) -> tuple[float, float, float]:
        """(eps now, κ clean weight, β CROWN-IBP weight) at ``progress`` ∈ [0, 1]."""
        ramp = min(max((progress - self.warmup) / (self.ramp_end - self.warmup), 0.0), 1.0)
        return self.eps * ramp, 1.0 - 0.5 * ramp, 1.0 - ramp

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        from robustcert.bounds import crown_margin_lower, ibp_margin_lower

        eps, kappa, beta = self.schedule(ctx.progress)
        clean = F.cross_entropy(model(x), y)
        if eps == 0:
            return clean
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        m = ibp_margin_lower(model, lo, hi, y)
        if self.name == "crown-ibp" and beta > 0:
            m = beta * crown_margin_lower(model, lo, hi, y, intermediate="ibp") + (1 - beta) * m
        robust = F.cross_entropy(-m, y)
        return kappa * clean + (1 - kappa) * robust
