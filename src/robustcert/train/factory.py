"""Method name + CLI parameters → a training loss and the parameters recorded in model.json.

The training methods form one table, :data:`TRAIN_REGISTRY` (name → :class:`TrainMethod`: a one-line
summary, the parameters it uses, an optional extra check and its loss builder); :data:`TRAIN_METHODS` is
its tuple of names, in registration order.

Guarantee: :func:`make_loss` returns only for a known method with valid parameters. Every parameter is
checked whether or not the method uses it (the CLI always passes all of them, with valid defaults), so a
bad value is reported rather than silently ignored; a combination the method cannot train (L2 with
``ibp``, ``crown-ibp``, ``sabr`` or ``mtl-ibp``, which bound L∞ balls only; ``consistency`` with fewer
than 2 noise samples) is refused rather than trained as something else; a schedule whose ramp ends before
it starts is refused. Each error is one RobustCertError line that names the flag and says what to pass.

The certified-training methods (``ibp``, ``crown-ibp``, ``sabr``, ``mtl-ibp``) share the schedule
parameters (``schedule``, ``ramp_start``, ``ramp_end``, ``kappa_end``; see :mod:`robustcert.train.schedules`)
and Shi et al.'s options (``ibp_init``, ``shi_reg``, ``shi_tol``); ``eps`` is the *training* budget
(``--eps-train``), which may exceed the budget the model is later certified at.
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
from robustcert.train.schedules import SHAPES, check_ramp
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
    schedule: str = "linear"
    ramp_start: float = 0.1
    ramp_end: float = 0.5
    kappa_end: float | None = None  # None: the method's default (0.5 for ibp / crown-ibp, 0 for the others)
    ibp_init: bool = False
    shi_reg: float = 0.0
    shi_tol: float = 0.5
    sabr_lambda: float = 0.4
    mtl_alpha: float = 0.5


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


# The parameters every certified-training method reads (schedule and Shi et al.'s options).
BOUND_USES = (
    "eps",
    "norm",
    "schedule",
    "ramp_start",
    "ramp_end",
    "kappa_end",
    "ibp_init",
    "shi_reg",
    "shi_tol",
)


def _schedule_kwargs(p: TrainParams, kappa_default: float) -> dict[str, Any]:
    return {
        "schedule": p.schedule,
        "ramp_start": p.ramp_start,
        "ramp_end": p.ramp_end,
        "kappa_end": kappa_default if p.kappa_end is None else p.kappa_end,
        "ibp_init": p.ibp_init,
        "shi_reg": p.shi_reg,
        "shi_tol": p.shi_tol,
    }


def _check_linf(name: str) -> Callable[[TrainParams], None]:
    def check(p: TrainParams) -> None:
        if p.norm != "linf":
            raise RobustCertError(
                f"--method {name} trains against L∞ balls only, not {p.norm}; use --norm linf, or --method pgd "
                f"for {p.norm} adversarial training (norms: {', '.join(NORMS)})"
            )

    return check


def _bound_method(name: str) -> TrainMethod:
    def build(p: TrainParams) -> Any:
        from robustcert.train.losses_robust import BoundLoss

        return BoundLoss(name, p.eps, **_schedule_kwargs(p, 0.5))

    summary = (
        "IBP certified training (Gowal et al.; Shi et al.'s init and warm-up regularisers as options)"
        if name == "ibp"
        else "CROWN-IBP (Zhang et al.): β·CROWN-IBP + (1 − β)·IBP bounds, β from 1 to 0"
    )
    return TrainMethod(name, summary, BOUND_USES, build, _check_linf(name))


def _build_sabr(p: TrainParams) -> Any:
    from robustcert.train.losses_expressive import SABRLoss

    return SABRLoss(p.eps, sabr_lambda=p.sabr_lambda, pgd_steps=p.pgd_steps, **_schedule_kwargs(p, 0.0))


def _build_mtl_ibp(p: TrainParams) -> Any:
    from robustcert.train.losses_expressive import MTLIBPLoss

    return MTLIBPLoss(p.eps, mtl_alpha=p.mtl_alpha, pgd_steps=p.pgd_steps, **_schedule_kwargs(p, 0.0))


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
        TrainMethod(
            "sabr",
            "SABR (Müller et al.): IBP on a small box (radius λ·ε) around a PGD point in the ball",
            (*BOUND_USES, "pgd_steps", "sabr_lambda"),
            _build_sabr,
            _check_linf("sabr"),
        ),
        TrainMethod(
            "mtl-ibp",
            "MTL-IBP (De Palma et al.): α·IBP loss + (1 − α)·PGD loss",
            (*BOUND_USES, "pgd_steps", "mtl_alpha"),
            _build_mtl_ibp,
            _check_linf("mtl-ibp"),
        ),
    )
}
TRAIN_METHODS = tuple(TRAIN_REGISTRY)
# The norms each method can train against; the others ignore the norm.
LINF_ONLY = ("ibp", "crown-ibp", "sabr", "mtl-ibp")


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
    schedule: Any = "linear",
    ramp_start: Any = 0.1,
    ramp_end: Any = 0.5,
    kappa_end: Any = None,
    ibp_init: Any = False,
    shi_reg: Any = 0.0,
    shi_tol: Any = 0.5,
    sabr_lambda: Any = 0.4,
    mtl_alpha: Any = 0.5,
) -> TrainParams:
    """Every parameter validated, whichever method will use it (see :func:`make_loss` for the rules)."""
    if schedule not in SHAPES:
        raise RobustCertError(f"unknown --schedule {schedule!r}; choose one of: {', '.join(SHAPES)}")
    start, end = check_ramp(ramp_start, ramp_end, "the eps ramp")
    if kappa_end is not None:
        kappa_end = _check_unit(kappa_end, "--kappa-end", open_low=False)
    if not isinstance(ibp_init, bool):
        raise RobustCertError(f"--ibp-init is a switch (true or false), got {ibp_init!r}")
    return TrainParams(
        sigma=_check_sigma(sigma),
        eps=check_eps(eps, "--eps-train / --eps (training budget; may exceed the certified eps)"),
        norm=check_norm(norm),
        pgd_steps=_check_steps(pgd_steps),
        noise_samples=check_int(noise_samples, "--noise-samples", 1),
        consistency_lambda=check_nonneg_float(consistency_lambda, "--consistency-lambda"),
        consistency_eta=check_nonneg_float(consistency_eta, "--consistency-eta"),
        smoothadv_eps=check_nonneg_float(smoothadv_eps, "--smoothadv-eps (L2 attack radius)"),
        smoothadv_steps=check_int(smoothadv_steps, "--smoothadv-steps", 1),
        schedule=schedule,
        ramp_start=start,
        ramp_end=end,
        kappa_end=kappa_end,
        ibp_init=ibp_init,
        shi_reg=check_nonneg_float(shi_reg, "--shi-reg"),
        shi_tol=_check_unit(shi_tol, "--shi-tol", open_low=True),
        sabr_lambda=_check_unit(sabr_lambda, "--sabr-lambda", open_low=True),
        mtl_alpha=_check_unit(mtl_alpha, "--mtl-alpha", open_low=False),
    )


def _check_unit(value: Any, flag: str, open_low: bool) -> float:
    """``value`` as a float in (0, 1] (``open_low``) or [0, 1]; one-line RobustCertError otherwise."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
    if not (ok and (float(value) > 0 if open_low else float(value) >= 0) and float(value) <= 1):
        raise RobustCertError(
            f"{flag} must be a number in {'(0, 1]' if open_low else '[0, 1]'}, got {value!r}"
        )
    return float(value)


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
    schedule: str = "linear",
    ramp_start: float = 0.1,
    ramp_end: float = 0.5,
    kappa_end: float | None = None,
    ibp_init: bool = False,
    shi_reg: float = 0.0,
    shi_tol: float = 0.5,
    sabr_lambda: float = 0.4,
    mtl_alpha: float = 0.5,
) -> tuple[Any, dict[str, Any]]:
    """The loss for ``method`` and its recorded parameters (``loss.params()``, written to model.json).

    RobustCertError for: an unknown method (listing the choices); sigma not finite > 0; eps not finite
    >= 0; a norm other than linf/l2; pgd_steps not an integer >= 1; noise_samples not an integer >= 1;
    consistency_lambda, consistency_eta or smoothadv_eps not finite >= 0; smoothadv_steps not an integer
    >= 1; ``norm="l2"`` with ibp, crown-ibp, sabr or mtl-ibp; ``consistency`` with noise_samples < 2;
    ``schedule`` not linear/smooth; ramp_start or ramp_end outside [0, 1], or ramp_end < ramp_start (a
    ramp that ends before it starts); kappa_end (when given) or mtl_alpha outside [0, 1]; shi_tol or
    sabr_lambda outside (0, 1]; shi_reg not finite >= 0; ibp_init not a bool.

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
        schedule=schedule,
        ramp_start=ramp_start,
        ramp_end=ramp_end,
        kappa_end=kappa_end,
        ibp_init=ibp_init,
        shi_reg=shi_reg,
        shi_tol=shi_tol,
        sabr_lambda=sabr_lambda,
        mtl_alpha=mtl_alpha,
    )
    entry = TRAIN_REGISTRY[method]
    if entry.check is not None:
        entry.check(params)
    loss = entry.build(params)
    return loss, loss.params()
