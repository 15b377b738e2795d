"""Method name + CLI parameters → a training loss and the parameters recorded in model.json.

The training methods form one table, :data:`TRAIN_REGISTRY` (name → :class:`TrainMethod`: a one-line
summary, the parameters it uses, an optional extra check and its loss builder); :data:`TRAIN_METHODS` is
its tuple of names, in registration order.

Guarantee: :func:`make_loss` returns only for a known method with valid parameters. Every parameter is
checked whether or not the method uses it (the CLI always passes all of them, with valid defaults), so a
bad value is reported rather than silently ignored; a combination the method cannot train (L2 with
``ibp`` or ``crown-ibp``, which bound L∞ balls only; ``consistency`` with fewer than 2 noise samples) is
refused rather than trained as something else. Each error is one RobustCertError line that names the
flag and says what to pass.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from robustcert.errors import RobustCertError
from robustcert.train.losses import GaussianLoss, StandardLoss
from robustcert.train.losses_smoothing import (
    ConsistencyLoss,
    SmoothAdvLoss,
    check_int,
    check_nonneg_float,
)
from robustcert.validation import NORMS, check_eps, check_norm


@dataclass(frozen=True)
class TrainParams:
    """Every training parameter :func:`make_loss` takes, validated (types and ranges; see make_loss)."""

    sigma: float
    eps: float
    norm: str
    pgd_steps: int
    noise_samples: int
    consistency_lambda: float
    consistency_eta: float
    smoothadv_eps: float
    smoothadv_steps: int


@dataclass(frozen=True)
class TrainMethod:
    """One training method: ``build`` turns validated parameters into its loss (whose ``params()`` are
    recorded in model.json); ``check``, if set, refuses combinations the method cannot train (raising a
    one-line RobustCertError); ``uses`` names the make_loss parameters it reads (for help texts)."""

    name: str
    summary: str
    uses: tuple[str, ...]
    build: Callable[[TrainParams], Any]
    check: Callable[[TrainParams], None] | None = None


def _build_pgd(p: TrainParams) -> Any:
    from robustcert.train.losses_robust import PGDLoss

    return PGDLoss(eps=p.eps, norm=p.norm, steps=p.pgd_steps)


def _bound_method(name: str) -> TrainMethod:
    def build(p: TrainParams) -> Any:
        from robustcert.train.losses_robust import BoundLoss

        return BoundLoss(method=name, eps=p.eps)

    def check(p: TrainParams) -> None:
        if p.norm != "linf":
            raise RobustCertError(
                f"--method {name} trains against L∞ balls only, not {p.norm}; use --norm linf, or --method pgd "
                f"for {p.norm} adversarial training (norms: {', '.join(NORMS)})"
            )

    summary = "IBP certified training (Gowal et al.)" if name == "ibp" else "CROWN-IBP (Zhang et al.)"
    return TrainMethod(name, summary, ("eps", "norm"), build, check)


def _check_consistency(p: TrainParams) -> None:
    if p.noise_samples < 2:
        raise RobustCertError(
            f"--method consistency compares noisy copies of each input: --noise-samples must be >= 2, "
            f"got {p.noise_samples}"
        )


TRAIN_REGISTRY: dict[str, TrainMethod] = {
    m.name: m
    for m in (
        TrainMethod("standard", "cross-entropy on clean inputs", (), lambda p: StandardLoss()),
        TrainMethod(
            "gaussian",
            "cross-entropy under Gaussian noise (Cohen et al.)",
            ("sigma",),
            lambda p: GaussianLoss(p.sigma),
        ),
        TrainMethod(
            "pgd", "PGD adversarial training (Madry et al.)", ("eps", "norm", "pgd_steps"), _build_pgd
        ),
        _bound_method("ibp"),
        _bound_method("crown-ibp"),
        TrainMethod(
            "consistency",
            "Gaussian noise + consistency regularisation over noisy copies (Jeong & Shin)",
            ("sigma", "noise_samples", "consistency_lambda", "consistency_eta"),
            lambda p: ConsistencyLoss(
                p.sigma, noise_samples=p.noise_samples, lam=p.consistency_lambda, eta=p.consistency_eta
            ),
            _check_consistency,
        ),
        TrainMethod(
            "smoothadv",
            "adversarial training of the smoothed classifier, L2 PGD, multi-noise (Salman et al.)",
            ("sigma", "noise_samples", "smoothadv_eps", "smoothadv_steps"),
            lambda p: SmoothAdvLoss(
                p.sigma, eps=p.smoothadv_eps, steps=p.smoothadv_steps, noise_samples=p.noise_samples
            ),
        ),
    )
}
TRAIN_METHODS = tuple(TRAIN_REGISTRY)
# The norms each method can train against; the others ignore the norm.
LINF_ONLY = ("ibp", "crown-ibp")


def _check_sigma(sigma: Any) -> float:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not (math.isfinite(float(sigma)) and float(sigma) > 0)
    ):
        raise RobustCertError(
            f"--sigma must be a finite number > 0 (noise std in [0, 1] pixel units), got {sigma!r}"
        )
    return float(sigma)


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise RobustCertError(f"--pgd-steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def check_train_params(
    *,
    sigma: Any = 0.25,
    eps: Any = 0.1,
    norm: Any = "linf",
    pgd_steps: Any = 10,
    noise_samples: Any = 2,
    consistency_lambda: Any = 10.0,
    consistency_eta: Any = 0.5,
    smoothadv_eps: Any = 0.5,
    smoothadv_steps: Any = 1,
) -> TrainParams:
    """Every parameter validated, whichever method will use it (see :func:`make_loss` for the rules)."""
    return TrainParams(
        sigma=_check_sigma(sigma),
        eps=check_eps(eps, "--eps (training budget)"),
        norm=check_norm(norm),
        pgd_steps=_check_steps(pgd_steps),
        noise_samples=check_int(noise_samples, "--noise-samples", 1),
        consistency_lambda=check_nonneg_float(consistency_lambda, "--consistency-lambda"),
        consistency_eta=check_nonneg_float(consistency_eta, "--consistency-eta"),
        smoothadv_eps=check_nonneg_float(smoothadv_eps, "--smoothadv-eps (L2 attack radius)"),
        smoothadv_steps=check_int(smoothadv_steps, "--smoothadv-steps", 1),
    )


def make_loss(
    method: str,
    *,
    sigma: float = 0.25,
    eps: float = 0.1,
    norm: str = "linf",
    pgd_steps: int = 10,
    noise_samples: int = 2,
    consistency_lambda: float = 10.0,
    consistency_eta: float = 0.5,
    smoothadv_eps: float = 0.5,
    smoothadv_steps: int = 1,
) -> tuple[Any, dict[str, Any]]:
    """The loss for ``method`` and its recorded parameters (``loss.params()``, written to model.json).

    RobustCertError for: an unknown method (listing the choices); sigma not finite > 0; eps not finite
    >= 0; a norm other than linf/l2; pgd_steps not an integer >= 1; noise_samples not an integer >= 1;
    consistency_lambda, consistency_eta or smoothadv_eps not finite >= 0; smoothadv_steps not an integer
    >= 1; ``norm="l2"`` with ibp or crown-ibp; ``consistency`` with noise_samples < 2.

    The smoothing methods (gaussian, consistency, smoothadv) record ``sigma``, which ``certify
    smoothing`` takes as its default noise level.
    """
    if method not in TRAIN_REGISTRY:
        raise RobustCertError(
            f"unknown training method {method!r}; choose one of: {', '.join(TRAIN_METHODS)}"
        )
    params = check_train_params(
        sigma=sigma,
        eps=eps,
        norm=norm,
        pgd_steps=pgd_steps,
        noise_samples=noise_samples,
        consistency_lambda=consistency_lambda,
        consistency_eta=consistency_eta,
        smoothadv_eps=smoothadv_eps,
        smoothadv_steps=smoothadv_steps,
    )
    entry = TRAIN_REGISTRY[method]
    if entry.check is not None:
        entry.check(params)
    loss = entry.build(params)
    return loss, loss.params()
