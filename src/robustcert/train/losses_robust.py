"""Robust training losses: PGD adversarial training (Madry et al. 2018), IBP (Gowal et al. 2018) and
CROWN-IBP (Zhang et al. 2020), with Shi et al. 2021's initialisation and warm-up regularisers as options.
Each is a loss for the shared loop in ``train.loop``; the expressive losses (SABR, MTL-IBP) build on
:class:`BoundLoss` in ``losses_expressive``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.train.interval import IntervalTrace, interval_trace, margin_from_trace
from robustcert.train.losses import LossContext
from robustcert.train.schedules import CertifiedSchedule
from robustcert.train.warmup import ibp_init as shi_ibp_init
from robustcert.train.warmup import relu_balance_loss, tightness_loss
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

    The schedule (:class:`~robustcert.train.schedules.CertifiedSchedule`, over the fraction of training
    done, ``ctx.progress``): clean training until ``ramp_start``; over [ramp_start, ramp_end] ε ramps from
    0 to ``eps`` (``schedule`` linear or smooth), the weight κ of the clean loss goes from 1 to
    ``kappa_end`` (Gowal et al.) and, for ``crown-ibp``, the weight β of the CROWN-IBP bound against the
    IBP bound from 1 to 0 (Zhang et al.). The loss is ``κ·CE(f(x), y) + (1 − κ)·R`` where R is the robust
    term (here ``CE(−m, y)`` with m the margin lower bounds over ``B∞(x, ε_t) ∩ [0, 1]``).

    Options (Shi et al. 2021): ``ibp_init`` re-draws the weights with the IBP initialisation before
    training (:func:`~robustcert.train.warmup.ibp_init`); ``shi_reg`` = λ > 0 adds
    ``λ·(1 − ε_t/ε)·(L_tightness + L_relu)`` (tolerance τ = ``shi_tol``) while ε ramps up.

    IBP bounds come from :mod:`robustcert.train.interval` (batched, float32, differentiable); CROWN-IBP's
    backward pass from :func:`robustcert.bounds.crown_margin_lower`, for the K margin rows ``e_y − e_j``
    only. Training bounds make no soundness claim: certification recomputes sound bounds.

    Guarantee (ibp, crown-ibp): the loss is never below the clean cross-entropy (in real arithmetic),
    since the box contains x, so every margin bound is at most the margin at x and CE(−m, y) is at least
    CE(f(x), y); the regulariser only adds. (SABR's box need not contain x: no such guarantee there.)
    """

    METHODS: tuple[str, ...] = ("ibp", "crown-ibp")

    def __init__(
        self,
        method: str,
        eps: float,
        *,
        schedule: str = "linear",
        ramp_start: float = 0.1,
        ramp_end: float = 0.5,
        kappa_end: float = 0.5,
        ibp_init: bool = False,
        shi_reg: float = 0.0,
        shi_tol: float = 0.5,
    ) -> None:
        if method not in self.METHODS:
            raise RobustCertError(f"unknown certified training method {method!r}")
        self.name = method
        self.schedule = CertifiedSchedule(
            check_eps(eps, "--eps-train (training budget)"), ramp_start, ramp_end, schedule, kappa_end
        )
        self.eps = self.schedule.eps
        if not isinstance(ibp_init, bool):
            raise RobustCertError(f"--ibp-init is a switch (true or false), got {ibp_init!r}")
        self.ibp_init = ibp_init
        self.shi_reg = check_eps(shi_reg, "--shi-reg (warm-up regulariser weight)")
        self.shi_tol = check_eps(shi_tol, "--shi-tol (warm-up regulariser tolerance)")
        if self.shi_tol == 0:
            raise RobustCertError("--shi-tol (warm-up regulariser tolerance) must be > 0, got 0")

    def params(self) -> dict[str, float | str | bool]:
        """The parameters recorded in model.json's ``train`` section (named as make_loss's keywords)."""
        return {
            "eps": self.eps,
            "norm": "linf",
            **self.schedule.params(),
            "ibp_init": self.ibp_init,
            "shi_reg": self.shi_reg,
            "shi_tol": self.shi_tol,
        }

    def initialize(self, model: nn.Module) -> None:
        """Called by the training loop on the freshly built model (under its seeded RNG): applies the IBP
        initialisation when asked; otherwise leaves the model (and the RNG) untouched."""
        if self.ibp_init:
            shi_ibp_init(model)

    def robust_term(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, beta: float, ctx: LossContext
    ) -> tuple[torch.Tensor, IntervalTrace]:
        """R and the IBP propagation it used, at budget ``eps`` > 0."""
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        trace = interval_trace(model, lo, hi)
        m = margin_from_trace(trace, y)
        if self.name == "crown-ibp" and beta > 0:
            from robustcert.bounds import crown_margin_lower

            m = beta * crown_margin_lower(model, lo, hi, y, intermediate="ibp") + (1 - beta) * m
        return F.cross_entropy(-m, y), trace

    def regulariser(self, trace: IntervalTrace, eps: float) -> torch.Tensor | None:
        """Shi et al.'s warm-up term λ·(1 − ε_t/ε)·(L_tightness + L_relu), or None when it is 0."""
        weight = self.shi_reg * (1.0 - eps / self.eps) if self.eps > 0 else 0.0
        if weight <= 0:
            return None
        return weight * (tightness_loss(trace, self.shi_tol) + relu_balance_loss(trace, self.shi_tol))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        eps, kappa, beta = self.schedule.at(ctx.progress)
        clean = F.cross_entropy(model(x), y)
        if eps == 0:
            return clean
        robust, trace = self.robust_term(model, x, y, eps, beta, ctx)
        loss = kappa * clean + (1 - kappa) * robust
        reg = self.regulariser(trace, eps)
        return loss if reg is None else loss + reg
