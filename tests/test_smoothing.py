"""Tests of robustcert.smoothing.SmoothedClassifier (Cohen, Rosenfeld & Kolter, 2019).

Most tests use a linear two-class base classifier with logits (z, −z), z = w·x + b. Under Gaussian noise
z(x + ε) ~ N(z(x), σ²‖w‖²), so the smoothed classifier equals the base classifier, the probability of
the top class is exactly pA = Φ(|z(x)| / (σ‖w‖)), and the true L2 robustness radius is |z(x)| / ‖w‖.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.models.zoo import build_model
from robustcert.smoothing import Certificate, SmoothedClassifier, clopper_pearson_lower
from robustcert.smoothing import smoothed as smoothed_module

SHAPE = (1, 4, 4)
SIGMA = 0.25


class LinearTwo(nn.Module):
    """Two-class linear classifier: logits (w·x + b, −(w·x + b))."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone().float())
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([z, -z], dim=1)


class Recorder(nn.Module):
    """Wraps a model and records every batch it is given."""

    def __init__(self, inner: nn.Module, keep_inputs: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.keep_inputs = keep_inputs
        self.sizes: list[int] = []
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        if self.keep_inputs:
            self.inputs.append(x.clone())
        return self.inner(x)


def _weights(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64)


def _point_with_pa(w: torch.Tensor, pa: float, seed: int, sign: int = 1) -> tuple[torch.Tensor, float]:
    """A random x in [0, 1] and the bias b such that class (0 if sign > 0 else 1) has probability pa."""
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.rand(SHAPE, generator=g, dtype=torch.float64)
    target = sign * stats.norm.ppf(pa) * SIGMA * float(w.norm())
    b = target - float((w * x).sum())
    return x.float(), b


def _true(w: torch.Tensor, b: float, x: torch.Tensor) -> tuple[int, float, float]:
    """Exact (class, pA, radius) of the smoothed linear classifier at x."""
    z = float((w * x.double()).sum()) + b
    wn = float(w.norm())
    return (0 if z > 0 else 1), float(stats.norm.cdf(abs(z) / (SIGMA * wn))), abs(z) / wn


# ---------------------------------------------------------------- soundness against the exact answer


@pytest.mark.parametrize(("alpha", "n", "seeds"), [(0.001, 2000, 4), (0.1, 200, 6)])
def test_certified_radius_sound_for_linear_classifier(alpha: float, n: int, seeds: int) -> None:
    """radius ≤ true radius and the prediction is right, except with probability ≤ alpha per certificate."""
    w = _weights()
    rng = np.random.default_rng(1)
    trials = violations = wrong = certified = 0
    for point in range(50):
        pa = float(rng.uniform(0.3, 0.9995))
        x, b = _point_with_pa(w, pa, point, sign=1 if point % 2 else -1)
        label, _, true_radius = _true(w, b, x)
        smoothed = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2)
        for seed in range(seeds):
            cert = smoothed.certify(x, n0=100, n=n, alpha=alpha, batch_size=1000, seed=seed)
            trials += 1
            if cert.prediction == -1:
                assert cert.radius == 0.0 and cert.pA_lower <= 0.5
                continue
            certified += 1
            wrong += cert.prediction != label
            violations += cert.radius > true_radius or cert.prediction != label
    tolerance = stats.binom.ppf(1 - 1e-6, trials, alpha)
    assert violations <= tolerance, f"{violations} unsound certificates of {trials} at alpha={alpha}"
    if alpha <= 0.001:
        assert wrong == 0
    assert certified > trials // 3  # the test is not vacuous


@pytest.mark.parametrize("pa", [0.7, 0.8, 0.9, 0.97, 0.995])
def test_radius_close_to_expected_at_large_n(pa: float) -> None:
    """With n = 100,000 the radius is within a few percent of σ·Φ⁻¹(CP_lower(n·pA)) and just below the truth."""
    n, alpha = 100_000, 0.001
    w = _weights()
    x, b = _point_with_pa(w, pa, seed=7)
    label, pa_true, true_radius = _true(w, b, x)
    cert = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2).certify(
        x, n0=100, n=n, alpha=alpha, batch_size=10_000
    )
    expected = SIGMA * stats.norm.ppf(clopper_pearson_lower(round(n * pa_true), n, alpha))
    assert cert.prediction == label
    assert cert.radius == pytest.approx(expected, rel=0.05)
    assert cert.radius <= true_radius
    assert cert.radius >= 0.8 * true_radius
    assert cert.radius == pytest.approx(SIGMA * stats.norm.ppf(cert.pA_lower), rel=1e-12)
    assert cert.pA_lower == pytest.approx(clopper_pearson_lower(cert.count, n, alpha), rel=1e-12)


def test_count_follows_binomial_distribution() -> None:
    """Estimation counts over seeds ~ Binomial(n, pA); selection counts ~ Binomial(n0, pA); uncorrelated."""
    pa, n, n0, reps = 0.8, 200, 50, 400
    w = _weights()
    x, b = _point_with_pa(w, pa, seed=3)
    _, pa_true, _ = _true(w, b, x)
    smoothed = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2)
    est = np.empty(reps)
    sel = np.empty(reps)
    for seed in range(reps):
        cert = smoothed.certify(x, n0=n0, n=n, alpha=0.001, batch_size=64, seed=seed)
        assert sum(cert.counts_estimation) == n and sum(cert.counts_selection) == n0
        est[seed] = cert.counts_estimation[0]
        sel[seed] = cert.counts_selection[0]

    for counts, size in ((est, n), (sel, n0)):
        mean, var = size * pa_true, size * pa_true * (1 - pa_true)
        z = (counts.mean() - mean) / math.sqrt(var / reps)
        assert abs(z) < 5, f"mean {counts.mean():.2f} vs {mean:.2f}"
        ratio = counts.var(ddof=1) / var  # (reps − 1)·ratio ~ chi²(reps − 1)
        lo, hi = stats.chi2.ppf([1e-6, 1 - 1e-6], reps - 1) / (reps - 1)
        assert lo < ratio < hi, f"variance ratio {ratio:.3f}"

    # Chi-square goodness of fit of the estimation counts, bins merged to expected >= 5.
    ks = np.arange(n + 1)
    expected = stats.binom.pmf(ks, n, pa_true) * reps
    observed = np.bincount(est.astype(int), minlength=n + 1).astype(float)
    edges, obs_bins, exp_bins, acc_o, acc_e = [], [], [], 0.0, 0.0
    for k in ks:
        acc_o += observed[k]
        acc_e += expected[k]
        if acc_e >= 5:
            edges.append(k)
            obs_bins.append(acc_o)
            exp_bins.append(acc_e)
            acc_o = acc_e = 0.0
    obs_bins[-1] += acc_o
    exp_bins[-1] += acc_e
    exp_arr = np.array(exp_bins) * reps / sum(exp_bins)
    assert stats.chisquare(obs_bins, exp_arr).pvalue > 1e-4

    # Selection and estimation use independent streams: their counts are uncorrelated.
    corr = np.corrcoef(est, sel)[0, 1]
    assert abs(corr) < 5 / math.sqrt(reps), f"selection/estimation correlation {corr:.3f}"


def test_candidate_is_chosen_without_looking_at_the_estimation_samples() -> None:
    """At pA = 1/2 the candidate's estimation count must be Binomial(n, 1/2), with no upward selection bias.

    Choosing the class from the estimation counts themselves (instead of the independent n0 samples)
    makes the count the larger of two halves, about 0.4·√n above n/2, and certifies far too often.
    """
    n, n0, alpha, reps = 400, 11, 0.1, 400
    w = _weights()
    x, b = _point_with_pa(w, 0.5, seed=5)
    smoothed = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2)
    counts = np.empty(reps)
    certified = 0
    for seed in range(reps):
        cert = smoothed.certify(x, n0=n0, n=n, alpha=alpha, batch_size=n, seed=seed)
        assert cert.candidate == int(np.argmax(cert.counts_selection))
        counts[seed] = cert.count
        certified += cert.prediction != -1
    z = (counts.mean() - n / 2) / math.sqrt(n / 4 / reps)
    assert abs(z) < 5, f"candidate count mean {counts.mean():.1f}, expected {n / 2} (z = {z:.1f})"
    assert certified <= stats.binom.ppf(1 - 1e-6, reps, alpha), f"certified {certified} of {reps} at pA = 1/2"


# ---------------------------------------------------------------- randomness: seeds and streams


def test_same_seed_same_certificate_and_different_seeds_differ() -> None:
    w = _weights()
    x, b = _point_with_pa(w, 0.8, seed=1)
    smoothed = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2)
    first = smoothed.certify(x, n0=100, n=1000, alpha=0.001, batch_size=300, seed=5)
    torch.manual_seed(123)  # the global RNG must not matter
    again = smoothed.certify(x, n0=100, n=1000, alpha=0.001, batch_size=300, seed=5)
    assert isinstance(first, Certificate)
    assert first == again
    others = {smoothed.certify(x, n0=100, n=1000, batch_size=300, seed=s).counts_estimation for s in range(6)}
    assert len(others) >= 4
    assert smoothed.predict(x, n=500, seed=9) == smoothed.predict(x, n=500, seed=9)
    # A numpy array is accepted and gives the same result as the tensor.
    assert smoothed.certify(x.numpy(), n0=100, n=1000, batch_size=300, seed=5) == first


def test_selection_and_estimation_noise_are_distinct_streams() -> None:
    w = _weights()
    x, b = _point_with_pa(w, 0.8, seed=1)
    model = Recorder(LinearTwo(w, b), keep_inputs=True)
    SmoothedClassifier(model, SIGMA, 2).certify(x, n0=64, n=64, batch_size=64, seed=0)
    assert model.sizes == [64, 64]
    selection, estimation = (inp - x for inp in model.inputs)
    # Not the same noise, and no selection noise vector reappears among the estimation ones.
    distances = torch.cdist(selection.flatten(1), estimation.flatten(1))
    assert float(distances.min()) > 0.1

    # The estimation stream does not depend on how many selection samples were drawn.
    smoothed = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2)
    a = smoothed.certify(x, n0=10, n=2000, batch_size=500, seed=3)
    c = smoothed.certify(x, n0=700, n=2000, batch_size=500, seed=3)
    assert a.counts_estimation == c.counts_estimation


def test_noise_is_gaussian_in_pixel_units_unclipped_and_before_the_model() -> None:
    w = _weights()
    x, b = _point_with_pa(w, 0.8, seed=2)
    inner = nn.Sequential(_normalize_layer(), LinearTwo(w, b))
    model = Recorder(inner, keep_inputs=True)
    SmoothedClassifier(model, SIGMA, 2).certify(x, n0=10, n=20_000, batch_size=5000, seed=0)
    noisy = torch.cat(model.inputs[1:])
    noise = (noisy - x).flatten()
    assert noisy.min() < 0 and noisy.max() > 1  # not clipped to [0, 1]
    assert float(noise.mean()) == pytest.approx(0.0, abs=5 * SIGMA / math.sqrt(noise.numel()))
    assert float(noise.std()) == pytest.approx(SIGMA, rel=0.01)  # σ in pixel units, before Normalize
    assert stats.kstest(noise.numpy()[:50_000] / SIGMA, "norm").pvalue > 1e-4


def _normalize_layer() -> nn.Module:
    from robustcert.models.normalize import Normalize

    return Normalize([0.3], [0.2])


# ---------------------------------------------------------------- batching and memory


def test_batches_never_exceed_batch_size_and_totals_are_exact() -> None:
    w = _weights()
    x, b = _point_with_pa(w, 0.9, seed=4)
    model = Recorder(LinearTwo(w, b))
    cert = SmoothedClassifier(model, SIGMA, 2).certify(x, n0=30, n=1050, batch_size=100, seed=0)
    assert model.sizes == [30] + [100] * 10 + [50]
    assert sum(cert.counts_selection) == 30 and sum(cert.counts_estimation) == 1050
    assert cert.n0 == 30 and cert.n == 1050

    model.sizes.clear()
    cert = SmoothedClassifier(model, SIGMA, 2).certify(x, n0=100, n=100_000, batch_size=1000, seed=1)
    assert max(model.sizes) <= 1000 and sum(model.sizes) == 100_100
    assert sum(cert.counts_estimation) == 100_000

    model.sizes.clear()
    SmoothedClassifier(model, SIGMA, 2).predict(x, n=999, batch_size=250, seed=0)
    assert model.sizes == [250, 250, 250, 249]


# ---------------------------------------------------------------- predict


def test_predict_on_decision_boundary_rarely_returns_a_class() -> None:
    """At pA = 1/2 every returned class is a mistake; PREDICT makes one with probability ≤ alpha."""
    alpha, reps = 0.05, 300
    w = _weights()
    x, b = _point_with_pa(w, 0.5, seed=5)
    assert abs(_true(w, b, x)[1] - 0.5) < 1e-6
    smoothed = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2)
    answered = sum(smoothed.predict(x, n=100, alpha=alpha, batch_size=100, seed=s) != -1 for s in range(reps))
    assert answered <= stats.binom.ppf(1 - 1e-6, reps, alpha), f"answered {answered} of {reps}"
    assert answered < reps // 4


@pytest.mark.parametrize("sign", [1, -1])
def test_predict_far_from_boundary_returns_the_class(sign: int) -> None:
    w = _weights()
    x, b = _point_with_pa(w, 0.9987, seed=6, sign=sign)  # |z| = 3σ‖w‖
    label = _true(w, b, x)[0]
    smoothed = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2)
    assert [smoothed.predict(x, n=1000, alpha=0.001, seed=s) for s in range(20)] == [label] * 20


def test_multiclass_zoo_model_end_to_end() -> None:
    torch.manual_seed(0)
    model = build_model("cnn-small", (1, 8, 8), 10, [0.5], [0.25])
    x = torch.rand(1, 8, 8)
    smoothed = SmoothedClassifier(model, 0.1, 10)
    cert = smoothed.certify(x, n0=50, n=2000, alpha=0.001, batch_size=512, seed=0)
    assert len(cert.counts_estimation) == 10 and sum(cert.counts_estimation) == 2000
    assert cert.count == cert.counts_estimation[cert.candidate]
    assert cert.candidate == max(range(10), key=lambda c: (cert.counts_selection[c], -c))
    assert cert.radius >= 0.0 and (cert.prediction == -1) == (cert.pA_lower <= 0.5)
    row = cert.to_row()
    assert {"prediction", "radius", "sigma", "n0", "n", "count", "pA_lower", "alpha"} <= set(row)
    assert isinstance(smoothed.predict(x, n=500, seed=0), int)
    assert sum(smoothed.sample_counts(x, 777, batch_size=100, seed=0)) == 777


# ---------------------------------------------------------------- eval mode


def test_dropout_in_train_mode_is_disabled_and_mode_restored() -> None:
    w = _weights()
    x, b = _point_with_pa(w, 0.8, seed=1)
    plain = SmoothedClassifier(LinearTwo(w, b), SIGMA, 2).certify(x, n0=100, n=2000, seed=2)
    model = nn.Sequential(nn.Dropout(0.5), LinearTwo(w, b))
    model.train()
    model[1].eval()  # mixed modes must come back exactly as they were
    smoothed = SmoothedClassifier(model, SIGMA, 2)
    certs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        certs.append(smoothed.certify(x, n0=100, n=2000, seed=2))
    assert certs[0] == certs[1] == plain  # dropout inactive: identical to the model without it
    assert model.training and model[0].training and not model[1].training
    smoothed.predict(x, n=100, seed=0)
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(RobustCertError):
        smoothed.certify(torch.rand(1, 3, 3))
    assert model.training and model[0].training and not model[1].training


def test_runs_under_inference_mode() -> None:
    seen: list[bool] = []

    class Probe(LinearTwo):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_inference_mode_enabled() and not self.training)
            return super().forward(x)

    w = _weights()
    x, b = _point_with_pa(w, 0.8, seed=1)
    SmoothedClassifier(Probe(w, b), SIGMA, 2).certify(x, n0=10, n=100, batch_size=50)
    assert seen and all(seen)


# ---------------------------------------------------------------- bad input


def _linear() -> tuple[nn.Module, torch.Tensor]:
    w = _weights()
    x, b = _point_with_pa(w, 0.8, seed=1)
    return LinearTwo(w, b), x


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"sigma": -0.5}, "sigma must be > 0"),
        ({"sigma": float("nan")}, "sigma must be a finite number"),
        ({"sigma": float("inf")}, "sigma must be a finite number"),
        ({"sigma": "0.25"}, "sigma must be a finite number"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"num_classes": 2.0}, "num_classes must be an integer >= 2"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, fragment: str) -> None:
    model, _ = _linear()
    args = {"sigma": SIGMA, "num_classes": 2} | kwargs
    with pytest.raises(RobustCertError) as info:
        SmoothedClassifier(model, **args)
    assert fragment in str(info.value)
    with pytest.raises(RobustCertError, match="base_model must be a torch.nn.Module"):
        SmoothedClassifier(lambda t: t, SIGMA, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n0": 0}, "n0 must be a positive integer"),
        ({"n": 0}, "n must be a positive integer"),
        ({"n": -5}, "n must be a positive integer"),
        ({"n": 1000.0}, "n must be a positive integer"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"alpha": 0.0}, "alpha must be in (0, 1)"),
        ({"alpha": 1.0}, "alpha must be in (0, 1)"),
        ({"alpha": 1.5}, "alpha must be in (0, 1)"),
        ({"alpha": float("nan")}, "alpha must be in (0, 1)"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_sampling_arguments(kwargs: dict, fragment: str) -> None:
    model, x = _linear()
    smoothed = SmoothedClassifier(model, SIGMA, 2)
    args = {"n0": 10, "n": 100, "alpha": 0.001, "batch_size": 50, "seed": 0} | kwargs
    with pytest.raises(RobustCertError) as info:
        smoothed.certify(x, **args)
    assert fragment in str(info.value)
    if "n0" not in kwargs:
        args.pop("n0")
        with pytest.raises(RobustCertError) as info:
            smoothed.predict(x, **args)
        assert fragment in str(info.value)


def test_bad_inputs_x() -> None:
    model, x = _linear()
    smoothed = SmoothedClassifier(model, SIGMA, 2)
    bad = x.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(RobustCertError, match="NaN or infinite"):
        smoothed.certify(bad, n=10)
    bad[0, 1, 2] = float("inf")
    with pytest.raises(RobustCertError, match="NaN or infinite"):
        smoothed.predict(bad, n=10)
    with pytest.raises(RobustCertError) as info:
        smoothed.certify(x.unsqueeze(0), n=10)
    assert "batch of 1 inputs" in str(info.value) and "one input C×H×W" in str(info.value)
    with pytest.raises(RobustCertError, match="shape C×H×W, got shape \\(16,\\)"):
        smoothed.certify(x.flatten(), n=10)
    with pytest.raises(RobustCertError, match="floating-point"):
        smoothed.certify((x * 255).to(torch.uint8), n=10)
    with pytest.raises(RobustCertError, match="must be a torch.Tensor"):
        smoothed.certify([[[0.5]]], n=10)


def test_wrong_shape_for_model_names_the_expected_shape() -> None:
    mlp = build_model("mlp-2x64", (1, 8, 8), 10)
    with pytest.raises(RobustCertError) as info:
        SmoothedClassifier(mlp, SIGMA, 10).certify(torch.rand(1, 9, 9), n0=5, n=10)
    message = str(info.value)
    assert "(1, 9, 9)" in message and "C*H*W = 64" in message and "\n" not in message

    cnn = build_model("cnn-small", (1, 8, 8), 10)
    with pytest.raises(RobustCertError) as info:
        SmoothedClassifier(cnn, SIGMA, 10).predict(torch.rand(3, 8, 8), n=10)
    assert "(3, 8, 8)" in str(info.value) and "1 input channel" in str(info.value)

    with pytest.raises(RobustCertError) as info:
        SmoothedClassifier(mlp, SIGMA, 5).certify(torch.rand(1, 8, 8), n0=5, n=10)
    assert "got (5, 10)" in str(info.value) and "num_classes" in str(info.value)


def test_model_without_parameters_and_float64_input() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = x.flatten(1).sum(1) - 8.0
            return torch.stack([z, -z], 1)

    x = torch.full(SHAPE, 0.9, dtype=torch.float64)
    cert = SmoothedClassifier(Fixed(), SIGMA, 2).certify(x, n0=20, n=500, seed=0)
    assert cert.prediction == 0 and cert.radius > 0


def test_smoothed_module_exports() -> None:
    assert smoothed_module.ABSTAIN == -1


# The speed target (certify <= 1.15x bare forward passes) is measured by bench/smoothing.py, not a timed test.
