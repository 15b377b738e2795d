"""Tests of adaptive, anytime-valid smoothing certification (robustcert.smoothing.adaptive).

Validity is measured, not assumed: the base classifier is linear with two classes, logits (z, −z),
z = w·x + b. Under Gaussian noise z(x + ε) ~ N(z(x), σ²‖w‖²), so the top class has probability exactly
pA = Φ(|z(x)| / (σ‖w‖)), the smoothed classifier equals the base classifier and its true L2 robustness
radius is |z(x)| / ‖w‖ = σ·Φ⁻¹(pA). A certificate is *wrong* when it names another class or claims a
radius above the true one. Thousands of seeded repetitions at pA just below / above the threshold
Φ(R/σ) estimate the rate of wrong certificates, and the assertion is one-sided: the 99.9% Clopper–Pearson
lower bound on that rate must not exceed alpha (so a procedure whose true rate exceeds alpha by a
little more than the binomial noise fails). alpha = 0.1 gives the test power; a negative control (CP
at level alpha at every look, no union bound) fails the same assertion.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_error_line as _fail
from scipy import stats
from torch import nn

from robustcert.cli import main
from robustcert.errors import RobustCertError
from robustcert.methods import get_method
from robustcert.rows import SmoothingRow
from robustcert.smoothing import SmoothedClassifier, clopper_pearson_lower
from robustcert.smoothing.adaptive import (
    STOP_BELOW_TARGET,
    STOP_BUDGET,
    STOP_CERTIFIED,
    STOP_CONVERGED,
    STOP_UNREACHABLE,
    UnionBoundCS,
    certify_adaptive,
    look_levels,
    look_schedule,
    sequential_decide,
)

SHAPE = (1, 2, 2)  # small inputs: the linear classifier's pA is exact in any dimension
SIGMA = 0.25
R = 0.25  # target radius: threshold pA* = Φ(R/σ) = Φ(1) ≈ 0.8413
THRESHOLD = float(stats.norm.cdf(R / SIGMA))
ALPHA = 0.1  # large, so that 2000 repetitions can see an excess over alpha
REPS = 2000
CHECK_LEVEL = 1e-3  # the one-sided binomial bound of the assertions


class LinearTwo(nn.Module):
    """Two-class linear classifier in float64: logits (w·x + b, −(w·x + b))."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone().double())
        self.b = nn.Parameter(torch.tensor(float(b), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([z, -z], dim=1)


class Counter(nn.Module):
    """Wraps a model and counts the inputs it evaluates."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.evaluated = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.evaluated += int(x.shape[0])
        return self.inner(x)


def _setup(pa: float, seed: int = 0) -> tuple[SmoothedClassifier, torch.Tensor, int, float]:
    """(smoothed linear classifier, x, true class, true radius) with class 0 of probability exactly pa."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    x = torch.rand(SHAPE, generator=g, dtype=torch.float64)
    b = float(stats.norm.ppf(pa)) * SIGMA * float(w.norm()) - float((w * x).sum())
    z = float((w * x).sum()) + b
    true_class = 0 if z > 0 else 1
    true_radius = abs(z) / float(w.norm())
    assert float(stats.norm.cdf(abs(z) / (SIGMA * float(w.norm())))) == pytest.approx(max(pa, 1 - pa), abs=1e-12)
    return SmoothedClassifier(LinearTwo(w, b), SIGMA, 2), x, true_class, true_radius


def _wrong(prediction: int, radius: float, true_class: int, true_radius: float) -> bool:
    """A certificate is wrong when it names another class or claims more than the true radius."""
    return prediction != -1 and (prediction != true_class or radius > true_radius)


def _assert_rate_at_most(wrong: int, reps: int, level: float, what: str) -> None:
    bound = clopper_pearson_lower(wrong, reps, CHECK_LEVEL)
    print(f"{what}: {wrong}/{reps} = {wrong / reps:.4f} (99.9% lower bound {bound:.4f}, alpha {level})")
    assert bound <= level, f"{what}: {wrong}/{reps} wrong (rate ≥ {bound:.4f} at 99.9%) > {level}"


# ---------------------------------------------------------------- the confidence sequence itself


def test_look_schedule() -> None:
    assert look_schedule(100, 100_000) == (100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 100_000)
    assert look_schedule(100, 100) == (100,)
    assert look_schedule(100, 150) == (100, 150)
    with pytest.raises(RobustCertError, match="smaller than the first batch"):
        look_schedule(100, 99)


def test_confidence_sequence_is_wider_than_one_fixed_bound() -> None:
    cs = UnionBoundCS(look_schedule(100, 3200), 0.01, 0.01)
    assert cs.levels == pytest.approx([0.001] * 5 + [0.005]) and sum(cs.levels) == pytest.approx(0.01)
    assert look_levels(0.01, 1) == (0.01,)
    for j, n in enumerate(cs.looks):
        k = int(0.8 * n)
        assert cs.lower(k, j) < clopper_pearson_lower(k, n, 0.01) < k / n < cs.upper(k, j)


class PeekingCS(UnionBoundCS):
    """The negative control: Clopper–Pearson at the full level alpha at every look (no union bound)."""

    @property
    def levels(self) -> tuple[float, ...]:  # type: ignore[override]
        return (self.alpha,) * len(self.looks)


def _binomial_draw(p: float, rng: np.random.Generator) -> Callable[[int, int], int]:
    """A Bernoulli(p) stream for :func:`sequential_decide`: the successes among m fresh trials."""
    return lambda look, m: int(rng.binomial(m, p))


@pytest.mark.parametrize("gap", [-0.001, -0.01])
def test_union_bound_sequence_is_anytime_valid_and_peeking_is_not(gap: float) -> None:
    """20,000 Bernoulli streams just below the threshold: stopping as soon as L > p* certifies wrongly at a
    rate ≤ alpha with the union bound; checking CP at level alpha at every look (no union bound) does not."""
    looks = look_schedule(100, 3200)
    p = THRESHOLD + gap
    reps = 20_000
    rng = np.random.default_rng(5)
    valid = UnionBoundCS(looks, ALPHA, ALPHA)
    naive = PeekingCS(looks, ALPHA, ALPHA)
    wrong_valid = sum(
        sequential_decide(_binomial_draw(p, rng), valid, threshold=THRESHOLD).stop == STOP_CERTIFIED
        for _ in range(reps)
    )
    wrong_naive = sum(
        sequential_decide(_binomial_draw(p, rng), naive, threshold=THRESHOLD).stop == STOP_CERTIFIED
        for _ in range(reps)
    )
    _assert_rate_at_most(wrong_valid, reps, ALPHA, "union-bound sequence")
    if gap == -0.001:  # next to the threshold the assertion has the power to catch peeking
        with pytest.raises(AssertionError):
            _assert_rate_at_most(wrong_naive, reps, ALPHA, "peeking")


# ---------------------------------------------------------------- validity on the real code path


@pytest.mark.parametrize("gap", [-0.0005, 0.0005])
def test_cohen_fixed_n_wrong_certificate_rate_at_most_alpha(gap: float) -> None:
    """Cohen's CERTIFY, pA just below and just above the threshold: wrong certificates ≤ alpha."""
    smoothed, x, true_class, true_radius = _setup(THRESHOLD + gap)
    wrong = 0
    for seed in range(REPS):
        cert = smoothed.certify(x, n0=20, n=3200, alpha=ALPHA, batch_size=3200, seed=seed)
        wrong += _wrong(cert.prediction, cert.radius, true_class, true_radius)
    _assert_rate_at_most(wrong, REPS, ALPHA, f"Cohen at pA = threshold {gap:+}")
    assert wrong >= REPS * ALPHA / 4  # next to the boundary: the test can see an excess


def test_adaptive_target_wrong_certificate_rate_at_most_alpha() -> None:
    """Target mode at pA just below Φ(R/σ): certifying R (or any radius above the truth) ≤ alpha."""
    smoothed, x, true_class, true_radius = _setup(THRESHOLD - 0.0005)
    wrong = certified = 0
    for seed in range(REPS):
        cert = certify_adaptive(
            smoothed, x, n0=20, max_n=3200, first_batch=100, alpha=ALPHA, target_radius=R, batch_size=3200, seed=seed
        )
        wrong += _wrong(cert.prediction, cert.radius, true_class, true_radius)
        certified += cert.certified
        assert cert.samples == 20 + cert.n <= 20 + 3200
    assert certified <= wrong  # every certificate at R is wrong here
    _assert_rate_at_most(wrong, REPS, ALPHA, "adaptive target mode")


def test_adaptive_target_gives_up_wrongly_at_most_alpha() -> None:
    """Target mode at pA just above Φ(R/σ): every certificate is right, and "cannot certify R" (the upper
    sequence's decision) is wrong at a rate ≤ alpha."""
    smoothed, x, true_class, true_radius = _setup(THRESHOLD + 0.0005)
    wrong = futile = certified = 0
    for seed in range(REPS):
        cert = certify_adaptive(
            smoothed, x, n0=20, max_n=3200, first_batch=100, alpha=ALPHA, target_radius=R, batch_size=3200, seed=seed
        )
        wrong += _wrong(cert.prediction, cert.radius, true_class, true_radius)
        futile += cert.stop == STOP_BELOW_TARGET
        certified += cert.certified
    assert wrong == 0  # L ≤ pA < the threshold is needed for a wrong radius, and then R is not claimed
    _assert_rate_at_most(futile, REPS, ALPHA, "giving up on a certifiable R")
    assert certified > 0


def test_adaptive_budget_wrong_certificate_rate_at_most_alpha() -> None:
    """Budget mode: the radius from the lower sequence at the stopping look exceeds the truth ≤ alpha."""
    smoothed, x, true_class, true_radius = _setup(0.9)
    wrong = 0
    for seed in range(REPS):
        cert = certify_adaptive(
            smoothed, x, n0=20, max_n=3200, first_batch=100, alpha=ALPHA, radius_tol=0.005, batch_size=3200, seed=seed
        )
        wrong += _wrong(cert.prediction, cert.radius, true_class, true_radius)
    _assert_rate_at_most(wrong, REPS, ALPHA, "adaptive budget mode")


# ---------------------------------------------------------------- efficiency and bookkeeping


@pytest.mark.parametrize("pa", [0.995, 0.6])
def test_stops_early_far_from_the_threshold(pa: float) -> None:
    smoothed, x, true_class, _ = _setup(pa)
    samples = []
    for seed in range(20):
        cert = certify_adaptive(smoothed, x, n0=100, max_n=100_000, alpha=0.001, target_radius=R, seed=seed)
        samples.append(cert.samples)
        if pa > THRESHOLD:
            assert cert.stop == STOP_CERTIFIED and cert.radius == R and cert.prediction == true_class
        else:
            assert cert.stop in (STOP_BELOW_TARGET, STOP_UNREACHABLE) and not cert.certified
    assert np.mean(samples) <= (100 + 100_000) / 50, samples


def test_budget_mode_stops_when_the_radius_cannot_grow() -> None:
    smoothed, x, true_class, true_radius = _setup(0.3)  # class 1 has 0.7: a radius, not the top of the scale
    cert = certify_adaptive(smoothed, x, n0=100, max_n=100_000, alpha=0.001, radius_tol=0.01, seed=1)
    assert cert.stop == STOP_CONVERGED and cert.samples < 100 + 100_000
    assert cert.prediction == true_class and true_radius - 0.02 < cert.radius <= true_radius
    smoothed, x, _, _ = _setup(0.5)  # a tie: nothing to certify; stop once U rules out a radius > radius_tol
    cert = certify_adaptive(smoothed, x, n0=100, max_n=100_000, alpha=0.001, seed=1)
    assert cert.stop == STOP_CONVERGED and cert.prediction == -1 and cert.radius == 0.0 and cert.samples <= 6500


def test_near_the_threshold_uses_the_budget() -> None:
    smoothed, x, _, _ = _setup(THRESHOLD + 0.001)
    cert = certify_adaptive(smoothed, x, n0=100, max_n=20_000, alpha=0.001, target_radius=R, seed=0)
    assert cert.stop == STOP_BUDGET and cert.n == 20_000 and cert.samples == 20_100


def test_samples_count_every_model_evaluation_and_the_seed_fixes_the_result() -> None:
    smoothed, x, _, _ = _setup(0.97)
    counter = Counter(smoothed.base_model)
    counted = SmoothedClassifier(counter, SIGMA, 2)
    first = certify_adaptive(counted, x, n0=50, max_n=10_000, alpha=0.01, target_radius=0.4, batch_size=300, seed=9)
    assert counter.evaluated == first.samples == 50 + first.n
    assert first == certify_adaptive(counted, x, n0=50, max_n=10_000, alpha=0.01, target_radius=0.4, batch_size=300, seed=9)
    others = {
        certify_adaptive(counted, x, n0=50, max_n=10_000, alpha=0.01, target_radius=0.4, batch_size=300, seed=s).count
        for s in range(10, 20)
    }
    assert len(others) > 1


@pytest.mark.parametrize("batch", [1000, 700])
def test_estimation_samples_are_a_prefix_of_cohens(batch: int) -> None:
    """Common random numbers: run to the full budget, the adaptive count equals Cohen's with n = budget."""
    smoothed, x, _, _ = _setup(THRESHOLD + 0.0002)
    for seed in range(3):
        adaptive = certify_adaptive(
            smoothed, x, n0=30, max_n=5000, first_batch=150, alpha=0.001, radius_tol=0.0, batch_size=batch, seed=seed
        )
        cohen = smoothed.certify(x, n0=30, n=5000, alpha=0.001, batch_size=batch, seed=seed)
        assert adaptive.n == 5000 and adaptive.count == cohen.count and adaptive.candidate == cohen.candidate


def test_candidate_is_cohens_selection() -> None:
    smoothed, x, _, _ = _setup(0.55)  # a close call: the selection differs between seeds
    for seed in range(10):
        cohen = smoothed.certify(x, n0=15, n=100, alpha=0.01, seed=seed)
        adaptive = certify_adaptive(smoothed, x, n0=15, max_n=400, alpha=0.01, target_radius=0.0, seed=seed)
        assert adaptive.candidate == cohen.candidate


# ---------------------------------------------------------------- parameters, rows, CLI


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"target_radius": "-0.5"}, "--target-radius must be >= 0"),
        ({"sigma": "0"}, "--sigma must be > 0"),
        ({"sigma": "-1", "target_radius": "0.5"}, "--sigma must be > 0"),
        ({"max_n": "50"}, "--max-n = 50 is smaller than the first batch --first-batch = 100"),
        ({"target_radius": "0.25", "n": "60"}, "--n (the budget when --max-n is not given) = 60 is smaller"),
        ({"max_n": "500", "first_batch": "1000"}, "smaller than the first batch"),
        ({"target_radius": "3", "sigma": "0.25", "max_n": "1000"}, "--target-radius 3 cannot be certified"),
        ({"max_n": "1000", "target_radius": "0.5", "radius_tol": "-1"}, "--radius-tol must be >= 0"),
    ],
)
def test_bad_parameters_are_one_line_errors(values: dict[str, str], message: str) -> None:
    with pytest.raises(RobustCertError) as info:
        get_method("smoothing").make_params(values, cli=True)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_parameters_select_the_procedure() -> None:
    from robustcert.methods.smoothing import SmoothingParams

    method = get_method("smoothing")
    cohen, target, budget = (
        method.make_params(values, cli=True)
        for values in ({}, {"target_radius": "0.5", "n": "100000"}, {"max_n": "20000"})
    )
    assert isinstance(cohen, SmoothingParams) and isinstance(target, SmoothingParams)
    assert isinstance(budget, SmoothingParams)
    assert not cohen.adaptive and target.adaptive and budget.adaptive
    assert target.budget == 100_000 and budget.budget == 20_000


def test_rows_old_and_new() -> None:
    old = {
        "index": 0, "label": 1, "method": "smoothing", "prediction": 1, "correct": True, "certified": True,
        "radius": 0.3, "sigma": 0.25, "n0": 100, "n": 10_000, "count": 9000, "pA_lower": 0.89, "alpha": 0.001,
        "base_correct": True,
    }  # fmt: skip
    row = SmoothingRow.from_json(old)
    assert row.procedure == "cohen" and row.samples == 10_100 and row.target_radius is None
    new = {**old, "procedure": "adaptive", "samples": 500, "target_radius": 0.25, "radius": 0.25}
    assert SmoothingRow.from_json(json.loads(json.dumps(SmoothingRow.from_json(new).to_json()))).samples == 500
    with pytest.raises(RobustCertError, match="procedure"):
        SmoothingRow.from_json({**old, "procedure": "magic"})


def test_api_rows_record_the_procedure_and_samples() -> None:
    import robustcert

    smoothed, x, true_class, _ = _setup(0.995)
    model = smoothed.base_model.float()
    xs = x.float().unsqueeze(0).repeat(2, 1, 1, 1)
    rows = robustcert.certify(
        model, xs, [true_class] * 2, "smoothing", sigma=SIGMA, target_radius=R, max_n=50_000, n0=50, seed=3
    )
    for row in rows:
        assert isinstance(row, SmoothingRow)
        assert row.procedure == "adaptive" and row.certified and row.radius == R and row.target_radius == R
        assert row.n == 50_000 and 50 < row.samples <= 50 + 1600
    cohen = robustcert.certify(model, xs[:1], [true_class], "smoothing", sigma=SIGMA, n=2000, n0=50)
    assert isinstance(cohen[0], SmoothingRow)
    assert cohen[0].procedure == "cohen" and cohen[0].samples == 2050




def test_cli_adaptive_errors_and_run(
    digits_gaussian_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["certify", "smoothing", "--model", str(digits_gaussian_model), "--limit", "3", "--n0", "20"]
    assert "--target-radius must be >= 0" in _fail([*base, "--target-radius", "-1", "--out", str(tmp_path / "a")], capsys)
    assert "--sigma must be > 0" in _fail([*base, "--sigma", "0", "--out", str(tmp_path / "a")], capsys)
    assert "smaller than the first batch" in _fail(
        [*base, "--target-radius", "0.25", "--max-n", "10", "--out", str(tmp_path / "a")], capsys
    )
    # sigma comes from the model (0.25): an unreachable target is refused once it is known
    assert "cannot be certified with sigma = 0.25" in _fail(
        [*base, "--target-radius", "5", "--max-n", "1000", "--out", str(tmp_path / "a")], capsys
    )
    out = tmp_path / "run"
    assert main([*base, "--target-radius", "0.25", "--max-n", "4000", "--out", str(out)]) in (0, None)
    rows = [SmoothingRow.from_json(json.loads(line)) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row.procedure == "adaptive" and row.target_radius == 0.25 and row.n == 4000
        assert 20 + 100 <= row.samples <= 20 + 4000
        assert row.certified == (row.radius == 0.25)
    assert json.loads((out / "summary.json").read_text())["n_examples"] == 3
