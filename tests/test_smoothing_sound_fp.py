"""Tests of robustcert.smoothing.sound_fp: randomized smoothing sound for the float model as run
(Voráček & Hein 2023): inputs on a grid q·ℤ, the Gaussian rounded to the grid, Cohen's radius at a pA
lowered by the sampler's total-variation bound."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.smoothing import Certificate, SmoothedClassifier
from robustcert.smoothing.sound_fp import (
    GUARANTEE_REAL,
    NUMERIC_SLACK,
    Grid,
    SoundCertificate,
    SoundSmoothedClassifier,
    certified_pa_lower,
    certify_sound,
    check_on_grid,
    coordinate_tv,
    rounded_gaussian,
    sample_noise,
    sound_pa,
    sound_radius,
)

torch.set_num_threads(1)

SIGMA = 0.25


class Threshold(nn.Module):
    """Two classes on the first input value z: class 0 iff z < t (logits (t − z, z − t))."""

    def __init__(self, t: float, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(t, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, 0]
        return torch.stack([self.t - z, z - self.t], dim=1)


class Recorder(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.inner(x)


def _nearest_float32(value: Fraction) -> float:
    """The float32 nearest to a rational, ties to even: an independent reference for Grid.values."""
    c = np.float32(float(value))
    cands = [np.nextafter(c, np.float32(-np.inf)), c, np.nextafter(c, np.float32(np.inf))]
    best = min(cands, key=lambda f: (abs(Fraction(float(f)) - value), int(np.float32(f).view(np.int32)) & 1))
    return float(best)


# ------------------------------------------------------------------------------------------------- grid


def test_grid_parse_forms_and_text() -> None:
    assert Grid.parse("1/255") == Grid(1, 255)
    assert Grid.parse(1 / 255) == Grid(1, 255)
    assert Grid.parse(0.0625) == Grid(1, 16)
    assert Grid.parse(Fraction(2, 510)) == Grid(1, 255)
    assert Grid.parse(1) == Grid(1, 1)
    assert Grid.parse(" 3/7 ").text == "3/7"
    assert Grid(1, 16).dyadic and not Grid(1, 255).dyadic


@pytest.mark.parametrize("bad", ["0", "-1/255", "abc", "1/0", float("nan"), True, None, 1e-9, 2048])
def test_grid_parse_refuses_bad_values(bad: object) -> None:
    with pytest.raises(RobustCertError) as err:
        Grid.parse(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("grid", ["1/255", "3/7", "1/16", "7/1000", "2", "1/1048576"])
def test_values_are_the_nearest_float(grid: str) -> None:
    g = Grid.parse(grid)
    gen = torch.Generator().manual_seed(1)
    top = g.max_index(torch.float32)
    idx = torch.cat([torch.arange(-300, 301), torch.randint(-top, top + 1, (700,), generator=gen)])
    v32 = g.values(idx, torch.float32)
    v64 = g.values(idx, torch.float64)
    for i, a, b in zip(idx.tolist(), v32.tolist(), v64.tolist(), strict=True):
        exact = Fraction(i) * g.q
        assert a == _nearest_float32(exact), (i, grid)
        assert b == float(exact)  # Fraction → float is correctly rounded
    assert torch.equal(g.index(v32), idx) and torch.equal(g.index(v64), idx)


def test_off_grid_inputs_are_refused_with_the_value_and_the_grid() -> None:
    g = Grid.parse("1/255")
    x = torch.round(torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 255) / 255
    assert torch.equal(g.values(g.index(x)), x)
    as_loaded = torch.from_numpy(
        np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0
    )  # fashion-mnist's way
    assert torch.equal(g.index(as_loaded), torch.arange(256))
    bad = x.clone()
    bad[1, 0, 2, 1] = torch.nextafter(bad[1, 0, 2, 1], torch.tensor(2.0))  # one float32 ulp off
    with pytest.raises(RobustCertError) as err:
        g.index(bad)
    msg = str(err.value)
    assert (
        "\n" not in msg and "x[1, 0, 2, 1]" in msg and "1/255" in msg and "torch.round(x * 255) / 255" in msg
    )
    assert repr(float(bad[1, 0, 2, 1])) in msg
    with pytest.raises(RobustCertError, match=r"0\.5 is not on the grid q = 1/255"):
        check_on_grid(torch.full((1, 2, 2), 0.5), "1/255")
    with pytest.raises(RobustCertError, match="NaN"):
        check_on_grid(torch.tensor([float("nan")]), "1/255")
    with pytest.raises(RobustCertError, match="float tensor"):
        check_on_grid(torch.tensor([1, 2]), "1/255")
    with pytest.raises(RobustCertError, match="float32 and float64"):
        check_on_grid(torch.tensor([0.5], dtype=torch.float16), "1/2")


def test_inputs_beyond_the_exact_range_are_refused() -> None:
    g = Grid.parse("1/16")
    top = g.max_index(torch.float32)
    edge = torch.tensor([top / 16.0])
    assert int(g.index(edge)[0]) == top
    with pytest.raises(RobustCertError, match=r"\|k\| must be <= 4194303"):
        g.index(torch.tensor([(top + 1) / 16.0]))
    reach = rounded_gaussian(SIGMA, g).reach
    with pytest.raises(RobustCertError, match="noise reaches"):
        check_on_grid(edge, g, sigma=SIGMA)
    assert int(check_on_grid(torch.tensor([(top - reach) / 16.0]), g, sigma=SIGMA)[0]) == top - reach


def test_certify_refuses_off_grid_input_before_sampling() -> None:
    model = Recorder(Threshold(0.5))
    smoothed = SoundSmoothedClassifier(model, sigma=SIGMA, num_classes=2, grid="1/255")
    with pytest.raises(RobustCertError, match="not on the grid q = 1/255"):
        smoothed.certify(torch.full((1, 1, 1), 0.5), n0=10, n=10)
    # float64 data a hair off 128/255 would land on the float32 grid after a cast: refused on its own dtype
    off64 = torch.full((1, 1, 1), 128 / 255 + 1e-12, dtype=torch.float64)
    with pytest.raises(RobustCertError, match="not on the grid"):
        smoothed.certify(off64, n0=10, n=10)
    assert model.inputs == []
    on64 = torch.full((1, 1, 1), 128 / 255, dtype=torch.float64)
    assert smoothed.certify(on64, n0=10, n=10).n == 10


# ------------------------------------------------------------------------------------------------- noise


def test_model_sees_exact_grid_points_dyadic_grid() -> None:
    """q = 1/16: the model's input equals x + J·q exactly, in float64 and as a float32 sum."""
    q = Fraction(1, 16)
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-40, 60, (3, 2, 2), generator=gen).float() / 16
    SoundSmoothedClassifier(model, sigma=0.7, num_classes=3, grid=q).sample_counts(x, 500, batch_size=200)
    seen = torch.cat(model.inputs)
    assert seen.dtype == torch.float32 and seen.shape == (500, 3, 2, 2)
    j = torch.round((seen.double() - x.double()) * 16)
    reach = rounded_gaussian(0.7, q).reach
    assert j.abs().max() <= reach and j.abs().max() > 0
    assert torch.equal(seen.double(), x.double() + j / 16)  # float32 input == exact real sum
    assert torch.equal(seen, x + (j / 16).float())  # and == the float32 sum


def test_model_sees_exact_grid_points_grid_255() -> None:
    """q = 1/255: the model's input is the float32 nearest to (k + J)/255 — not the float32 sum of x and
    the noise, which differs from it for about a quarter of the values."""
    g = Grid.parse("1/255")
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    gen = torch.Generator().manual_seed(4)
    k = torch.randint(0, 256, (1, 4, 4), generator=gen)
    x = k.float() / 255
    SoundSmoothedClassifier(model, sigma=0.1, num_classes=2, grid=g).sample_counts(x, 300, batch_size=300)
    seen = torch.cat(model.inputs)
    total = g.index(seen)  # every input value is on the grid
    j = total - k
    assert j.abs().max() <= rounded_gaussian(0.1, g).reach
    for t, v in list(zip(total.flatten().tolist(), seen.flatten().tolist(), strict=True))[:600]:
        assert v == _nearest_float32(Fraction(t, 255))
    float_sum = x + g.values(j)
    assert (float_sum != seen).float().mean() > 0.05


def test_float64_model_sees_float64_grid_points() -> None:
    model = Recorder(Threshold(0.3, torch.float64))
    x = torch.full((1, 1, 1), 51 / 255)
    SoundSmoothedClassifier(model, sigma=SIGMA, num_classes=2, grid="1/255").sample_counts(x, 50)
    seen = model.inputs[0]
    assert seen.dtype == torch.float64
    idx = Grid(1, 255).index(seen)
    assert all(v == float(Fraction(int(i), 255)) for i, v in zip(idx.flatten(), seen.flatten(), strict=True))
    cert = SoundSmoothedClassifier(Threshold(0.3, torch.float64), SIGMA, 2, "1/255").certify(x, n0=10, n=50)
    assert cert.float_model == "float64" and cert.to_row()["float_model"] == "float64"


def test_sampler_pmf_is_within_tv_of_the_exact_pmf() -> None:
    noise = rounded_gaussian(SIGMA, "1/16")
    js = np.arange(-noise.reach, noise.reach + 1)
    exact = noise.pmf(js)
    sampled = noise.sampler_pmf()
    assert sum(sampled.values()) == 1
    diff = np.array([float(sampled[int(j)]) for j in js]) - exact
    assert np.abs(diff).max() <= 2.0**-61
    outside = 1.0 - exact.sum()
    assert 0.5 * (np.abs(diff).sum() + outside) <= noise.tv
    assert noise.tv == coordinate_tv(SIGMA, "1/16") and noise.tv < 1e-16
    assert exact[noise.reach] == pytest.approx(stats.norm.cdf(0.5 / 4) - stats.norm.cdf(-0.5 / 4), rel=1e-12)


def _chi_square_pvalue(draws: torch.Tensor, noise_pmf: dict[int, float], n: int) -> float:
    values, counts = np.unique(draws.numpy(), return_counts=True)
    observed = dict(zip(values.tolist(), counts.tolist(), strict=True))
    keys = sorted(noise_pmf)
    obs, exp, acc_o, acc_e = [], [], 0, 0.0
    for j in keys:  # pool bins until each expects ≥ 20
        acc_o += observed.pop(j, 0)
        acc_e += n * noise_pmf[j]
        if acc_e >= 20:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o, acc_e = 0, 0.0
    obs[-1] += acc_o
    exp[-1] += acc_e
    assert not observed  # nothing outside the support
    return float(stats.chisquare(obs, np.asarray(exp) * (sum(obs) / sum(exp))).pvalue)


@pytest.mark.parametrize(("sigma", "grid"), [(0.25, "1/16"), (0.02, "1/255"), (0.5, "1/2")])
def test_noise_empirical_distribution_matches_exact_pmf(sigma: float, grid: str) -> None:
    noise = rounded_gaussian(sigma, grid)
    n = 200_000
    draws = sample_noise(n, (), sigma, grid, torch.Generator().manual_seed(11))
    js = np.arange(-noise.reach, noise.reach + 1)
    exact = dict(zip(js.tolist(), noise.pmf(js).tolist(), strict=True))
    assert _chi_square_pvalue(draws, exact, n) > 1e-3
    # power: the same test rejects the rounded Gaussian with sigma 3% larger
    wrong = rounded_gaussian(sigma * 1.03, grid)
    wjs = np.arange(-wrong.reach, wrong.reach + 1)
    assert _chi_square_pvalue(draws, dict(zip(wjs.tolist(), wrong.pmf(wjs).tolist(), strict=True)), n) < 1e-6
    ks = stats.kstest(draws.numpy() * float(Fraction(grid)), stats.norm(scale=sigma).cdf)
    assert ks.statistic < float(Fraction(grid)) / sigma * 0.5 + 0.01  # only the rounding separates them


def test_noise_is_seeded() -> None:
    a = sample_noise(100, (3,), SIGMA, "1/255", torch.Generator().manual_seed(5))
    b = sample_noise(100, (3,), SIGMA, "1/255", torch.Generator().manual_seed(5))
    c = sample_noise(100, (3,), SIGMA, "1/255", torch.Generator().manual_seed(6))
    assert a.dtype == torch.int64 and torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------------------------- radius


def test_sound_radius_is_below_and_close_to_cohen() -> None:
    for pa in (0.51, 0.6, 0.9, 0.999, 0.999999):
        cohen = SIGMA * stats.norm.ppf(pa)
        for dim, grid in ((1, "1/16"), (784, "1/255"), (150_528, "1/255")):
            r = sound_radius(pa, SIGMA, grid, dim=dim)
            assert r < cohen
            assert pa - stats.norm.cdf(r / SIGMA) < 1e-8  # pA lowered by < 1e-8
            if pa <= 0.999:
                assert cohen - r < 1e-8
    assert sound_radius(0.5, SIGMA, "1/255", dim=1) == 0.0
    assert sound_radius(0.5 + 1e-12, SIGMA, "1/255", dim=1) == 0.0  # eaten by the numeric slack
    assert sound_pa(0.9, SIGMA, "1/255", dim=784) == pytest.approx(
        0.9 - 784 * coordinate_tv(SIGMA, "1/255") - NUMERIC_SLACK
    )
    with pytest.raises(RobustCertError, match="dim"):
        sound_radius(0.9, SIGMA, "1/255", dim=0)
    with pytest.raises(RobustCertError, match="probability"):
        sound_radius(1.5, SIGMA, "1/255", dim=1)


def _shifted_pmf(shift: float, sigma: float, q: float, lo: int, hi: int) -> np.ndarray:
    """P[ρ(shift + ε) = m] for m = lo … hi (ε ~ N(0, σ²)), accurate in both tails."""
    edges = ((np.arange(lo, hi + 2) - 0.5) * q - shift) / sigma
    upper = edges[1:]
    lower = edges[:-1]
    left = stats.norm.cdf(upper) - stats.norm.cdf(lower)
    right = stats.norm.sf(lower) - stats.norm.sf(upper)
    return np.where(lower > 0, right, left)


def _np_worst_case(p0: np.ndarray, p1: np.ndarray, target: float) -> float:
    """min p1(A) over (fractional) sets A of lattice points with p0(A) ≥ target: the Neyman–Pearson worst
    case, a lower bound on every deterministic base classifier's probability at the shifted point."""
    ratio = np.where(p0 > 0, p1 / np.maximum(p0, 1e-300), np.inf)
    order = np.argsort(ratio, kind="stable")
    cum = np.cumsum(p0[order])
    i = int(np.searchsorted(cum, target))
    if i >= len(order):
        return float(p1.sum())
    before = cum[i - 1] if i > 0 else 0.0
    return float(p1[order[:i]].sum() + (target - before) / p0[order[i]] * p1[order[i]])


@pytest.mark.parametrize("grid", ["1/16", "1/64", "1/4"])
@pytest.mark.parametrize("pa", [0.55, 0.7, 0.9, 0.99])
def test_sound_radius_within_lattice_neyman_pearson_1d(grid: str, pa: float) -> None:
    q = float(Fraction(grid))
    r = sound_radius(pa, SIGMA, grid, dim=1)
    reach = math.ceil(12 * SIGMA / q)
    shifts = [m * q for m in range(int(r / q) + 1) if m * q < r] + list(np.linspace(0.0, r * 0.999, 17))
    for d in shifts:
        lo, hi = -reach, reach + math.ceil(d / q)
        p0 = _shifted_pmf(0.0, SIGMA, q, lo, hi)
        p1 = _shifted_pmf(d, SIGMA, q, lo, hi)
        worst = _np_worst_case(p0, p1, pa - (1.0 - p0.sum()))  # mass outside the window: free for A
        assert worst > 0.5, (grid, pa, d, r, worst)
    # and nearly tight: two grid steps beyond the radius the lattice worst case is below 1/2
    d = (math.floor(r / q) + 2) * q
    lo, hi = -reach, reach + math.ceil(d / q)
    p0, p1 = _shifted_pmf(0.0, SIGMA, q, lo, hi), _shifted_pmf(d, SIGMA, q, lo, hi)
    assert _np_worst_case(p0, p1, pa) < 0.5


def test_sound_radius_within_lattice_neyman_pearson_2d() -> None:
    grid, q, pa = "1/8", 1 / 8, 0.9
    r = sound_radius(pa, SIGMA, grid, dim=2)
    reach = math.ceil(8 * SIGMA / q) + math.ceil(r / q) + 1
    lo, hi = -reach, reach
    base = _shifted_pmf(0.0, SIGMA, q, lo, hi)
    p0 = np.outer(base, base).ravel()
    shifts = [(a * q, b * q) for a in range(-3, 4) for b in range(-3, 4) if math.hypot(a * q, b * q) < r]
    shifts += [(0.999 * r * math.cos(t), 0.999 * r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 9)]
    assert len(shifts) > 20
    for dx, dy in shifts:
        p1 = np.outer(_shifted_pmf(dx, SIGMA, q, lo, hi), _shifted_pmf(dy, SIGMA, q, lo, hi)).ravel()
        worst = _np_worst_case(p0, p1, pa - (1.0 - p0.sum()))
        assert worst > 0.5, (dx, dy, r, worst)


# ------------------------------------------------------------------------------------------------- certify


def test_wrong_certificate_rate_is_at_most_alpha() -> None:
    """1-D threshold classifier: class 0 iff the grid index ≤ m. Its smoothed classifier's boundary is at
    (m + ½)q, so the true radius at x = 0 is R* = (m + ½)q and pA = Φ(R*/σ) exactly. Over 2000 certificates
    at alpha = 0.1 the rate of radius > R* (or a wrong class) is ≤ alpha within a binomial bound; a
    point-estimate radius fails the same check (the test has power)."""
    q, m, alpha, reps, n = Fraction(1, 16), 3, 0.1, 2000, 200
    r_true = float((m + Fraction(1, 2)) * q)
    smoothed = SoundSmoothedClassifier(Threshold(r_true), sigma=SIGMA, num_classes=2, grid=q)
    x = torch.zeros(1, 1, 1)
    wrong = unsound = 0
    for seed in range(reps):
        cert = smoothed.certify(x, n0=10, n=n, alpha=alpha, batch_size=n, seed=seed)
        if cert.prediction != -1 and (cert.prediction != 0 or cert.radius > r_true):
            wrong += 1
        if cert.candidate == 0 and SIGMA * stats.norm.ppf(min(cert.count / n, 1 - 1e-12)) > r_true:
            unsound += 1
    assert wrong <= stats.binom.ppf(0.999, reps, alpha)
    assert wrong >= 0.02 * reps  # the bound is close to tight: the check can fail
    assert unsound > 0.3 * reps


def test_certificate_fields_seeding_and_row() -> None:
    model = Threshold(float(Fraction(7, 32)))
    x = torch.zeros(1, 1, 1)
    a = certify_sound(
        model, x, n0=20, n=500, alpha=0.01, batch_size=128, seed=7, sigma=SIGMA, num_classes=2, grid="1/16"
    )
    b = SoundSmoothedClassifier(model, SIGMA, 2, "1/16").certify(
        x, n0=20, n=500, alpha=0.01, batch_size=500, seed=7
    )
    c = certify_sound(model, x, n0=20, n=500, alpha=0.01, seed=8, sigma=SIGMA, num_classes=2, grid="1/16")
    assert isinstance(a, SoundCertificate) and isinstance(a, Certificate)
    assert a == b  # batch size does not change the draw
    assert a.counts_estimation != c.counts_estimation
    assert a.prediction == 0 and sum(a.counts_estimation) == 500 and sum(a.counts_selection) == 20
    assert a.pA_lower == sound_pa(a.pA_lower_sampled, SIGMA, "1/16", dim=1)
    assert a.radius == pytest.approx(SIGMA * stats.norm.ppf(a.pA_lower), rel=1e-15)
    row = a.to_row()
    assert row["grid"] == "1/16" and row["float_model"] == "float32" and a.guarantee.startswith("sound-fp:")
    assert set(row) == set(Certificate.to_row(a)) - {"pA_lower_sampled", "tv_bound"}
    assert GUARANTEE_REAL.startswith("real:") and "float32" in a.guarantee and "1/16" in a.guarantee
    sound = SoundSmoothedClassifier(model, SIGMA, 2, "1/16")
    assert certified_pa_lower(sound, 0.9, 1) == sound_pa(0.9, SIGMA, "1/16", dim=1) < 0.9
    assert certified_pa_lower(SmoothedClassifier(model, SIGMA, 2), 0.9, 1) == 0.9
    far = certify_sound(
        model, torch.full((1, 1, 1), 0.25), n0=20, n=200, sigma=SIGMA, num_classes=2, grid="1/16"
    )
    assert far.prediction == -1 and far.radius == 0.0


def test_predict_and_sample_counts_use_the_rounded_noise() -> None:
    model = Recorder(Threshold(0.5))
    smoothed = SoundSmoothedClassifier(model, sigma=SIGMA, num_classes=2, grid="1/255")
    assert isinstance(smoothed, SmoothedClassifier)
    counts = smoothed.sample_counts(torch.zeros(1, 1, 1), 300, batch_size=64)
    assert sum(counts) == 300 and counts[0] > counts[1]
    assert smoothed.predict(torch.zeros(1, 1, 1), n=400, alpha=0.01) == 0
    assert all(torch.equal(Grid(1, 255).values(Grid(1, 255).index(t)), t) for t in model.inputs)
    assert max(t.shape[0] for t in model.inputs) <= 400


def test_zoo_model_on_digits_grid() -> None:
    from robustcert.data import load_dataset
    from robustcert.models.zoo import build_model

    torch.manual_seed(0)
    data = load_dataset("digits", "test")
    model = build_model("mlp-2x64", input_shape=(1, 8, 8), num_classes=10)
    cert = certify_sound(model, data.x[0], n0=20, n=500, alpha=0.01, sigma=SIGMA, num_classes=10, grid="1/16")
    assert sum(cert.counts_estimation) == 500 and cert.grid == "1/16"
    with pytest.raises(RobustCertError, match="1/255"):
        certify_sound(model, data.x[0] + 1 / 32, n0=5, n=5, sigma=SIGMA, num_classes=10, grid="1/255")


def test_sound_fp_through_the_cli_records_its_guarantee(digits_standard_model, tmp_path, capsys) -> None:
    """`certify smoothing --sound-fp` takes the digits grid (1/16) from the model's data set, and its rows
    say the radius is about the float32 model on that grid; Cohen's rows say "real". --grid without
    --sound-fp, and data off the grid, are one-line errors (exit 2)."""
    import json

    from robustcert.cli import main
    from robustcert.rows import SmoothingRow
    from robustcert.runs import read_rows

    common = ["certify", "smoothing", "--model", str(digits_standard_model), "--sigma", "0.25", "--n", "500",
              "--limit", "3"]
    assert main([*common, "--sound-fp", "--out", str(tmp_path / "s")]) == 0
    rows = read_rows(tmp_path / "s" / "results.jsonl", SmoothingRow)
    assert len(rows) == 3 and {(r.float_model, r.grid) for r in rows} == {("float32", "1/16")}
    assert json.loads((tmp_path / "s" / "run.json").read_text())["params"]["grid"] == "1/16"
    assert main([*common, "--out", str(tmp_path / "c")]) == 0
    assert {(r.float_model, r.grid) for r in read_rows(tmp_path / "c" / "results.jsonl", SmoothingRow)} == {
        ("real", None)
    }
    for extra, message in (
        (["--grid", "1/16"], "add --sound-fp"),
        (["--sound-fp", "--grid", "1/255"], "not on the grid q = 1/255"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*common, *extra, "--out", str(tmp_path / "e"), "--force"])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and message in err and "\n" not in err, err
