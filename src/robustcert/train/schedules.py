"""Named schedules for certified training: how ε, κ and β move over the course of training.

Every schedule is a pure function of ``progress`` ∈ [0, 1], the fraction of all optimisation steps done
(what the training loop passes in ``LossContext.progress``), and of a ramp ``[start, end]`` given in the
same units. Guarantees, for every schedule here:

* **exact at its breakpoints**: at ``progress <= start`` it returns its start value and at
  ``progress >= end`` its end value, both bit for bit (no interpolation rounding there); the smooth ramp
  is also exact at its mid point (``start + mid·(end − start)``, where it switches to linear);
* **monotone** between the two values, and continuous (the smooth ramp is also continuously
  differentiable);
* ``end == start`` is a step (start value before it, end value from it on);
* a ramp that ends before it starts, or lies outside [0, 1], is refused with a one-line
  :class:`RobustCertError` (:func:`check_ramp`).

The schedules:

* :func:`linear_ramp` — v0 → v1 linearly (Gowal et al. 2018's ε ramp);
* :func:`smooth_ramp` — v0 → v1 with a power curve ``s^power`` up to the mid point, then linear, the
  two pieces joined with the same slope (the "smoothed" ε schedule of auto_LiRPA (Xu et al. 2020) used
  by Shi et al. 2021 for short warm-ups; default mid = 0.25, power = 4);
* :func:`eps_ramp` — 0 → ε with either shape;
* :func:`kappa_ramp` — the clean-loss weight κ: 1 → κ_end, linear (Gowal et al. 2018: κ_end = 0.5);
* :func:`beta_ramp` — CROWN-IBP's weight β of the CROWN-IBP bound against the IBP bound: 1 → 0,
  linear (Zhang et al. 2020).

:class:`CertifiedSchedule` bundles them for a certified-training loss and records its parameters.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NamedTuple

from robustcert.errors import RobustCertError

SHAPES = ("linear", "smooth")
SMOOTH_MID = 0.25
SMOOTH_POWER = 4.0


def _real(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        return None
    return float(value)


def check_ramp(start: Any, end: Any, what: str = "the ramp") -> tuple[float, float]:
    """``(start, end)`` as floats when both are fractions of training in [0, 1] and ``end >= start``.

    Otherwise one-line RobustCertError naming the flags (``--ramp-start`` / ``--ramp-end``).
    """
    s, e = _real(start), _real(end)
    if s is None or not 0 <= s <= 1:
        raise RobustCertError(
            f"--ramp-start must be a fraction of training in [0, 1], got {start!r} ({what})"
        )
    if e is None or not 0 <= e <= 1:
        raise RobustCertError(f"--ramp-end must be a fraction of training in [0, 1], got {end!r} ({what})")
    if e < s:
        raise RobustCertError(
            f"{what} ends (--ramp-end {e:g}) before it starts (--ramp-start {s:g}); "
            f"give --ramp-end >= --ramp-start"
        )
    return s, e


def _check_progress(progress: Any) -> float:
    p = _real(progress)
    if p is None:
        raise RobustCertError(
            f"progress must be a finite number (fraction of training done), got {progress!r}"
        )
    return p


def linear_ramp(progress: float, start: float, end: float, v0: float = 0.0, v1: float = 1.0) -> float:
    """``v0`` until ``start``, ``v1`` from ``end`` on, linear in between (exactly v0 / v1 at the ends)."""
    start, end = check_ramp(start, end)
    p = _check_progress(progress)
    if p >= end:  # checked first, so a step (end == start) jumps to v1 at its start
        return float(v1)
    if p <= start:
        return float(v0)
    return float(v0) + (float(v1) - float(v0)) * (p - start) / (end - start)


def _smooth_fraction(s: float, mid: float, power: float) -> float:
    """The smooth ramp's fraction done at ``s`` ∈ (0, 1): ``a·s^power`` up to ``mid``, then linear to 1,
    with ``a`` chosen so that both pieces have the same slope at ``mid``."""
    a = 1.0 / ((1.0 - mid) * power * mid ** (power - 1.0) + mid**power)
    at_mid = a * mid**power
    if s < mid:
        return a * s**power
    if s == mid:
        return at_mid
    return at_mid + (1.0 - at_mid) * (s - mid) / (1.0 - mid)


def smooth_ramp(
    progress: float,
    start: float,
    end: float,
    v0: float = 0.0,
    v1: float = 1.0,
    mid: float = SMOOTH_MID,
    power: float = SMOOTH_POWER,
) -> float:
    """``v0`` until ``start``, ``v1`` from ``end`` on; in between a power curve ``s^power`` (s = the
    fraction of the ramp done) up to ``start + mid·(end − start)``, then linear, joined with equal slopes
    (Xu et al. 2020's smoothed schedule, used by Shi et al. 2021). Exactly v0 / v1 at the ends; at the
    mid point exactly ``v0 + (v1 − v0)·a·mid^power`` with ``a = 1 / ((1 − mid)·power·mid^(power−1) + mid^power)``.

    RobustCertError unless 0 < mid < 1 and power >= 1 (and the ramp is valid: :func:`check_ramp`).
    """
    start, end = check_ramp(start, end)
    m, k = _real(mid), _real(power)
    if m is None or not 0 < m < 1:
        raise RobustCertError(f"the smooth ramp's mid point must lie strictly between 0 and 1, got {mid!r}")
    if k is None or k < 1:
        raise RobustCertError(f"the smooth ramp's power must be a number >= 1, got {power!r}")
    p = _check_progress(progress)
    if p >= end:
        return float(v1)
    if p <= start:
        return float(v0)
    # the mid point as a caller computes it, start + mid·(end − start), maps exactly to s = mid
    s = m if p == start + m * (end - start) else (p - start) / (end - start)
    return float(v0) + (float(v1) - float(v0)) * _smooth_fraction(s, m, k)


def eps_ramp(progress: float, eps: float, start: float, end: float, shape: str = "linear") -> float:
    """The training budget at ``progress``: 0 → ``eps`` over [start, end], ``shape`` linear or smooth."""
    if shape == "linear":
        return linear_ramp(progress, start, end, 0.0, eps)
    if shape == "smooth":
        return smooth_ramp(progress, start, end, 0.0, eps)
    raise RobustCertError(f"unknown --schedule {shape!r}; choose one of: {', '.join(SHAPES)}")


def kappa_ramp(progress: float, start: float, end: float, kappa_end: float) -> float:
    """κ, the weight of the clean loss (1 − κ weighs the robust loss): 1 → ``kappa_end``, linear over
    [start, end] (Gowal et al. 2018)."""
    return linear_ramp(progress, start, end, 1.0, kappa_end)


def beta_ramp(progress: float, start: float, end: float) -> float:
    """β, CROWN-IBP's weight of the CROWN-IBP bound (1 − β weighs the IBP bound): 1 → 0, linear over
    [start, end] (Zhang et al. 2020)."""
    return linear_ramp(progress, start, end, 1.0, 0.0)


class ScheduleValues(NamedTuple):
    """The values of a :class:`CertifiedSchedule` at one point of training."""

    eps: float  # the training budget now
    kappa: float  # weight of the clean loss
    beta: float  # weight of the CROWN-IBP bound (crown-ibp only)


@dataclass(frozen=True)
class CertifiedSchedule:
    """ε, κ and β over training for certified training on ``eps``: before ``start`` the loss is clean
    (ε = 0, κ = 1, β = 1); over [start, end] ε ramps (``shape``), κ goes 1 → ``kappa_end`` and β 1 → 0;
    after ``end``: ε = eps, κ = kappa_end, β = 0. Construction validates everything (one-line
    RobustCertError)."""

    eps: float
    start: float = 0.1
    end: float = 0.5
    shape: str = "linear"
    kappa_end: float = 0.5

    def __post_init__(self) -> None:
        eps = _real(self.eps)
        if eps is None or eps < 0:
            raise RobustCertError(
                f"--eps-train (training budget) must be a finite number >= 0, got {self.eps!r}"
            )
        start, end = check_ramp(self.start, self.end, "the eps ramp")
        if self.shape not in SHAPES:
            raise RobustCertError(f"unknown --schedule {self.shape!r}; choose one of: {', '.join(SHAPES)}")
        kappa = _real(self.kappa_end)
        if kappa is None or not 0 <= kappa <= 1:
            raise RobustCertError(f"--kappa-end must be a number in [0, 1], got {self.kappa_end!r}")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "kappa_end", kappa)

    def at(self, progress: float) -> ScheduleValues:
        """(ε, κ, β) after ``progress`` ∈ [0, 1] of training."""
        return ScheduleValues(
            eps_ramp(progress, self.eps, self.start, self.end, self.shape),
            kappa_ramp(progress, self.start, self.end, self.kappa_end),
            beta_ramp(progress, self.start, self.end),
        )

    def params(self) -> dict[str, float | str]:
        """The parameters recorded in model.json (names as the make_loss keywords)."""
        return {
            "schedule": self.shape,
            "ramp_start": self.start,
            "ramp_end": self.end,
            "kappa_end": self.kappa_end,
        }
