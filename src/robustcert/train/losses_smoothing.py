"""Training losses for randomized smoothing that aim at larger certified radii than Gaussian training.

* :class:`ConsistencyLoss` — consistency regularisation (Jeong & Shin, NeurIPS 2020): cross-entropy on
  ``m`` noisy copies of each input, plus ``λ`` times the mean KL divergence from the copies' average
  softmax to each copy's softmax, plus ``η`` times the entropy of the average softmax.
* :class:`SmoothAdvLoss` — SmoothAdv (Salman et al., NeurIPS 2019), PGD variant with multiple noise
  samples: an L2 PGD attack on the *soft* smoothed classifier, estimated with ``m`` fixed noise samples,
  then cross-entropy on the ``m`` noisy copies of the adversarial input (the paper's "multi-noise"
  training), with the attack radius ramped up over the first part of training (the paper's warm-up).

Both follow the loss interface of :mod:`robustcert.train.losses` (``loss(model, x, y, ctx)``), add noise
in [0, 1] pixel units before the model's Normalize layer (where certification adds it, unclipped), and
draw every random number from ``ctx.generator``: a run is a function of its seed and resumes exactly.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.models.modes import eval_mode
from robustcert.train.losses import LossContext

# Probabilities are clamped to this before a log, as in the papers' reference implementations.
_PROB_FLOOR = 1e-20


def _is_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))


def check_positive_float(value: Any, what: str) -> float:
    """``value`` as a float; RobustCertError ("<what> must be a finite number > 0, got …") otherwise."""
    if not (_is_real(value) and float(value) > 0):
        raise RobustCertError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonneg_float(value: Any, what: str) -> float:
    """``value`` as a float; RobustCertError ("<what> must be a finite number >= 0, got …") otherwise."""
    if not (_is_real(value) and float(value) >= 0):
        raise RobustCertError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(value: Any, what: str, minimum: int) -> int:
    """``value`` as an int; RobustCertError ("<what> must be an integer >= minimum, got …") otherwise
    (booleans and non-integral numbers such as 2.5 are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise RobustCertError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _noisy_copies(x: torch.Tensor, m: int, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """``m`` noise tensors N(0, σ²) shaped like ``x``, stacked: shape [m, *x.shape]."""
    return torch.randn((m, *x.shape), generator=generator, dtype=x.dtype) * sigma


def consistency_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two regularisers of Jeong & Shin for logits of ``m`` noisy copies, shape [m, B, K].

    Returns per-example tensors (shape [B]): ``kl`` = (1/m) Σᵢ KL(p̄ ‖ pᵢ) with pᵢ = softmax of copy i and
    p̄ = (1/m) Σᵢ pᵢ, and ``entropy`` = H(p̄). Both are ≥ 0 (up to rounding), differentiable, and ``kl`` is
    0 exactly when every copy has the same softmax. Gradients flow through p̄ as well (as in the paper).
    """
    log_p = F.log_softmax(logits, dim=-1)
    p_bar = log_p.exp().mean(0)
    log_p_bar = p_bar.clamp(min=_PROB_FLOOR).log()
    kl = (p_bar.unsqueeze(0) * (log_p_bar.unsqueeze(0) - log_p)).sum(-1).mean(0)
    entropy = -(p_bar * log_p_bar).sum(-1)
    return kl, entropy


class ConsistencyLoss:
    """Consistency regularisation (Jeong & Shin 2020) for Gaussian randomized smoothing.

    For a batch (x, y) and ``m`` = ``noise_samples`` independent noise draws δ₁..δ_m ~ N(0, σ² I):

        loss = mean_{i,b} CE(f(x_b + δ_i), y_b) + mean_b [ λ · (1/m) Σᵢ KL(p̄_b ‖ p_{i,b}) + η · H(p̄_b) ]

    with p_{i,b} = softmax f(x_b + δ_i) and p̄_b their average over i. Every example gets all ``m``
    copies, so a step costs ``m`` forward/backward passes of the batch. Paper defaults: m = 2, λ = 10
    (MNIST/CIFAR-10 at σ = 0.25 and 0.5; λ = 20 is also used), η = 0.5.
    """

    name = "consistency"

    def __init__(self, sigma: float, noise_samples: int = 2, lam: float = 10.0, eta: float = 0.5) -> None:
        self.sigma = check_positive_float(sigma, "--sigma")
        self.noise_samples = check_int(noise_samples, "--noise-samples", 2)
        self.lam = check_nonneg_float(lam, "--consistency-lambda")
        self.eta = check_nonneg_float(eta, "--consistency-eta")

    def params(self) -> dict[str, float | int]:
        """The parameters recorded in model.json's ``train`` section (sigma: what ``certify`` reads)."""
        return {
            "sigma": self.sigma,
            "noise_samples": self.noise_samples,
            "consistency_lambda": self.lam,
            "consistency_eta": self.eta,
        }

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        m, batch = self.noise_samples, x.shape[0]
        noise = _noisy_copies(x, m, self.sigma, ctx.generator)
        logits = model((x.unsqueeze(0) + noise).flatten(0, 1))  # copy-major: row i*B + b
        ce = F.cross_entropy(logits, y.repeat(m))
        kl, entropy = consistency_terms(logits.view(m, batch, -1))
        return ce + (self.lam * kl + self.eta * entropy).mean()


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm of ``t`` ([B, ...]), shaped [B, 1, ..., 1] for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def soft_smoothed_nll(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Per-example −log of the soft smoothed classifier's probability of ``y`` at ``x`` ([B]).

    The soft smoothed classifier is estimated with the given noise samples ``noise`` ([m, *x.shape]):
    G(x)_c ≈ (1/m) Σᵢ softmax(f(x + noiseᵢ))_c. Differentiable in ``x`` (and the model's parameters).
    """
    m, batch = noise.shape[0], x.shape[0]
    logits = model((x.unsqueeze(0) + noise).flatten(0, 1)).view(m, batch, -1)
    p_bar = F.softmax(logits, dim=-1).mean(0)
    return F.nll_loss(p_bar.clamp(min=_PROB_FLOOR).log(), y, reduction="none")


def smoothadv_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, eps: float, steps: int
) -> torch.Tensor:
    """SmoothAdv's L2 PGD on the soft smoothed classifier (Salman et al. 2019), for training.

    Starts at ``x`` and takes ``steps`` normalised-gradient ascent steps of size 2·eps/steps on
    :func:`soft_smoothed_nll` with the fixed noise samples ``noise``, each followed by a clip to [0, 1]
    and a projection onto the L2 ball of radius ``eps`` around ``x`` (an example whose gradient is 0 does
    not move). Guarantees: the result is detached, lies in [0, 1] (when ``x`` does) and within L2
    distance ``eps`` (up to float rounding) of ``x``; the model runs in eval mode and every module's mode
    is restored; no parameter gradients are accumulated (only the input gradient is computed).
    """
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    alpha = 2.0 * eps / steps
    delta = torch.zeros_like(x)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            objective = soft_smoothed_nll(model, x + delta, y, noise).sum()
            (grad,) = torch.autograd.grad(objective, delta)
            step = grad / _flat_norm(grad).clamp(min=1e-12)
            delta = delta.detach() + alpha * step
            delta = (x + delta).clamp(0.0, 1.0) - x
            # scaling towards 0 keeps x + delta between x and a point of [0, 1]: still inside the box
            delta = delta * (eps / _flat_norm(delta).clamp(min=1e-12)).clamp(max=1.0)
    return (x + delta).detach()


class SmoothAdvLoss:
    """SmoothAdv (Salman et al. 2019): adversarial training of the smoothed classifier, PGD, multi-noise.

    Per batch: draw ``m`` = ``noise_samples`` noise tensors δ₁..δ_m ~ N(0, σ² I) per example; find
    x' = :func:`smoothadv_attack` (x, δ, eps_t, ``steps``) — an L2 attack of radius eps_t on the soft
    smoothed classifier estimated with those δᵢ —; return the mean cross-entropy of f(x' + δᵢ) over
    i and the batch (the same noise is used for the attack and the update, as in the paper). eps_t ramps
    linearly from 0 to ``eps`` over the first ``warmup`` fraction of training steps (the paper's warm-up,
    there counted in epochs), then stays at ``eps``. A step costs about (steps + 1)·m forward/backward
    passes of the batch. Paper settings include eps ∈ {0.25, 0.5, 1, 2}, steps ∈ {1, 2, 4, 8, 10} and
    m ∈ {1, 2, 4, 8}; the defaults here (eps = 0.5, steps = 1, m = 2) keep it affordable on a CPU.
    """

    name = "smoothadv"

    def __init__(
        self, sigma: float, eps: float = 0.5, steps: int = 1, noise_samples: int = 2, warmup: float = 0.1
    ) -> None:
        self.sigma = check_positive_float(sigma, "--sigma")
        self.eps = check_nonneg_float(eps, "--smoothadv-eps")
        self.steps = check_int(steps, "--smoothadv-steps", 1)
        self.noise_samples = check_int(noise_samples, "--noise-samples", 1)
        if not (_is_real(warmup) and 0 <= float(warmup) <= 1):
            raise RobustCertError(f"SmoothAdv warm-up must be a fraction in [0, 1], got {warmup!r}")
        self.warmup = float(warmup)

    def params(self) -> dict[str, float | int]:
        """The parameters recorded in model.json's ``train`` section (sigma: what ``certify`` reads)."""
        return {
            "sigma": self.sigma,
            "noise_samples": self.noise_samples,
            "smoothadv_eps": self.eps,
            "smoothadv_steps": self.steps,
        }

    def eps_at(self, progress: float) -> float:
        """The attack radius after ``progress`` ∈ [0, 1] of training: eps·min(1, progress / warmup)."""
        if self.warmup == 0:
            return self.eps
        return self.eps * min(max(progress / self.warmup, 0.0), 1.0)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        m = self.noise_samples
        noise = _noisy_copies(x, m, self.sigma, ctx.generator)
        x_adv = smoothadv_attack(model, x, y, noise, self.eps_at(ctx.progress), self.steps)
        logits = model((x_adv.unsqueeze(0) + noise).flatten(0, 1))
        return F.cross_entropy(logits, y.repeat(m))
