"""Certified-training schedules: every ramp exact at its breakpoints, monotone, and a ramp that ends before
it starts refused with one line."""

from __future__ import annotations

import pytest

from robustcert.errors import RobustCertError
from robustcert.train.factory import make_loss
from robustcert.train.schedules import (
    SMOOTH_MID,
    SMOOTH_POWER,
    CertifiedSchedule,
    beta_ramp,
    check_ramp,
    eps_ramp,
    kappa_ramp,
    linear_ramp,
    smooth_ramp,
)

# awkward floats on purpose: (end - start) and the interpolation do not round trip exactly
RAMPS = [(0.0, 1.0), (0.1, 0.5), (0.1, 0.7), (0.025, 0.4), (0.3, 0.3000001), (1 / 3, 2 / 3)]
VALUES = [(0.0, 0.1), (0.0, 0.3), (1.0, 0.5), (1.0, 0.0), (0.0, 0.11)]


@pytest.mark.parametrize(("start", "end"), RAMPS)
@pytest.mark.parametrize(("v0", "v1"), VALUES)
@pytest.mark.parametrize("ramp", [linear_ramp, smooth_ramp])
def test_ramps_are_exact_at_their_breakpoints(ramp, start: float, end: float, v0: float, v1: float) -> None:  # type: ignore[no-untyped-def]
    for p in (0.0, start / 2, start):
        assert ramp(p, start, end, v0, v1) == v0
    for p in (end, (end + 1) / 2, 1.0):
        assert ramp(p, start, end, v0, v1) == v1
    # strictly inside: between the two values, and monotone
    ps = [start + (end - start) * k / 50 for k in range(1, 50)]
    vs = [ramp(p, start, end, v0, v1) for p in ps]
    lo, hi = min(v0, v1), max(v0, v1)
    assert all(lo <= v <= hi for v in vs)
    pairs = list(zip(vs, vs[1:], strict=False))
    assert all(b >= a for a, b in pairs) if v1 >= v0 else all(b <= a for a, b in pairs)


@pytest.mark.parametrize(("start", "end"), RAMPS)
def test_linear_ramp_is_linear(start: float, end: float) -> None:
    mid = start + (end - start) / 2
    assert linear_ramp(mid, start, end, 0.0, 0.2) == pytest.approx(0.1, rel=1e-6)  # (end - start) may be 1e-7


@pytest.mark.parametrize(("start", "end"), [(0.0, 1.0), (0.1, 0.5), (0.025, 0.4)])
def test_smooth_ramp_is_exact_at_its_mid_point_and_joins_with_equal_slopes(start: float, end: float) -> None:
    m, k = SMOOTH_MID, SMOOTH_POWER
    a = 1.0 / ((1.0 - m) * k * m ** (k - 1.0) + m**k)
    p_mid = start + m * (end - start)
    assert smooth_ramp(p_mid, start, end, 0.0, 0.3) == 0.3 * (a * m**k)
    # the two pieces have the same slope at the mid point (C1): one-sided difference quotients agree
    h = (end - start) * 1e-6
    left = (smooth_ramp(p_mid, start, end) - smooth_ramp(p_mid - h, start, end)) / h
    right = (smooth_ramp(p_mid + h, start, end) - smooth_ramp(p_mid, start, end)) / h
    assert left == pytest.approx(right, rel=1e-4)
    # the power piece: s^4 growth (a quarter of the way to the mid point: (1/4)^4 of the mid value)
    s = m / 4
    assert smooth_ramp(start + s * (end - start), start, end) == pytest.approx(a * m**k / 256, rel=1e-9)


def test_a_ramp_of_zero_length_is_a_step() -> None:
    assert linear_ramp(0.29, 0.3, 0.3, 0.0, 1.0) == 0.0
    assert linear_ramp(0.3, 0.3, 0.3, 0.0, 1.0) == 1.0
    assert smooth_ramp(0.3, 0.3, 0.3, 0.0, 1.0) == 1.0


def test_named_schedules_go_where_their_papers_say() -> None:
    # eps 0 -> eps (either shape); kappa 1 -> kappa_end (Gowal et al.); beta 1 -> 0 (Zhang et al.)
    for shape in ("linear", "smooth"):
        assert eps_ramp(0.1, 0.3, 0.1, 0.5, shape) == 0.0
        assert eps_ramp(0.5, 0.3, 0.1, 0.5, shape) == 0.3
    assert kappa_ramp(0.1, 0.1, 0.5, 0.5) == 1.0
    assert kappa_ramp(0.5, 0.1, 0.5, 0.5) == 0.5
    assert kappa_ramp(0.3, 0.1, 0.5, 0.5) == pytest.approx(0.75)
    assert beta_ramp(0.1, 0.1, 0.5) == 1.0
    assert beta_ramp(0.5, 0.1, 0.5) == 0.0
    assert beta_ramp(0.3, 0.1, 0.5) == pytest.approx(0.5)
    assert eps_ramp(0.3, 0.2, 0.1, 0.5, "smooth") < eps_ramp(0.3, 0.2, 0.1, 0.5, "linear")


def test_certified_schedule_bundles_the_ramps() -> None:
    sched = CertifiedSchedule(0.11, start=0.025, end=0.5, shape="smooth", kappa_end=0.0)
    assert tuple(sched.at(0.0)) == (0.0, 1.0, 1.0)
    assert tuple(sched.at(0.025)) == (0.0, 1.0, 1.0)
    assert tuple(sched.at(0.5)) == (0.11, 0.0, 0.0)
    assert tuple(sched.at(1.0)) == (0.11, 0.0, 0.0)
    assert sched.params() == {"schedule": "smooth", "ramp_start": 0.025, "ramp_end": 0.5, "kappa_end": 0.0}


@pytest.mark.parametrize(
    ("start", "end", "pattern"),
    [
        (
            0.5,
            0.2,
            r"ends \(--ramp-end 0.2\) before it starts \(--ramp-start 0.5\); give --ramp-end >= --ramp-start",
        ),
        (-0.1, 0.5, r"--ramp-start must be a fraction of training in \[0, 1\]"),
        (0.1, 1.5, r"--ramp-end must be a fraction of training in \[0, 1\]"),
        (float("nan"), 0.5, "--ramp-start must be"),
        (True, 0.5, "--ramp-start must be"),
    ],
)
def test_a_bad_ramp_is_one_line_error(start: float, end: float, pattern: str) -> None:
    for call in (
        lambda: check_ramp(start, end),
        lambda: linear_ramp(0.3, start, end),
        lambda: smooth_ramp(0.3, start, end),
        lambda: CertifiedSchedule(0.1, start, end),
        lambda: make_loss("ibp", ramp_start=start, ramp_end=end),
        lambda: make_loss("sabr", ramp_start=start, ramp_end=end),
    ):
        with pytest.raises(RobustCertError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"schedule": "cosine"}, "unknown --schedule 'cosine'; choose one of: linear, smooth"),
        ({"kappa_end": 1.5}, r"--kappa-end must be a number in \[0, 1\]"),
        ({"shi_tol": 0.0}, r"--shi-tol must be a number in \(0, 1\]"),
        ({"shi_reg": -1.0}, "--shi-reg must be a finite number >= 0"),
        ({"sabr_lambda": 0.0}, r"--sabr-lambda must be a number in \(0, 1\]"),
        ({"mtl_alpha": 1.1}, r"--mtl-alpha must be a number in \[0, 1\]"),
        ({"ibp_init": "yes"}, "--ibp-init is a switch"),
        (
            {"eps": -0.1},
            r"--eps-train / --eps \(training budget; may exceed the certified eps\) must be a finite number >= 0",
        ),
    ],
)
def test_bad_schedule_parameters_are_one_line_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(RobustCertError, match=pattern) as info:
        make_loss("ibp", **kwargs)
    assert "\n" not in str(info.value)


def test_smooth_ramp_refuses_a_bad_shape() -> None:
    with pytest.raises(RobustCertError, match="mid point"):
        smooth_ramp(0.3, 0.0, 1.0, mid=1.0)
    with pytest.raises(RobustCertError, match="power"):
        smooth_ramp(0.3, 0.0, 1.0, power=0.5)
