"""Tests of robustcert.smoothing.stats: Clopper–Pearson bounds and the binomial test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from robustcert.errors import RobustCertError
from robustcert.smoothing.stats import (
    binomial_test_two_sided,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
)

ALPHA = 0.05
SIM_NS = (10, 50, 200, 1000)
SIM_PS = (0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99)


def _lower_table(n: int, alpha: float) -> np.ndarray:
    """clopper_pearson_lower(k, n, alpha) for every k = 0..n."""
    return np.array([clopper_pearson_lower(k, n, alpha) for k in range(n + 1)])


@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 0.01, 0.05, 0.3])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1000, 100_000])
def test_lower_equals_beta_quantile(n: int, alpha: float) -> None:
    ks = sorted({0, 1, n // 3, n // 2, n - 1, n} | {k for k in (2, 5, 17) if k <= n})
    for k in ks:
        got = clopper_pearson_lower(k, n, alpha)
        want = 0.0 if k == 0 else stats.beta.ppf(alpha, k, n - k + 1)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300), (k, n, alpha)
        assert 0.0 <= got <= k / n


@pytest.mark.parametrize("n", [1, 10, 1000, 100_000])
def test_lower_closed_form_at_all_successes(n: int) -> None:
    # P[X = n] = p^n, so the one-sided bound at k = n solves p^n = alpha.
    assert clopper_pearson_lower(n, n, 0.001) == pytest.approx(0.001 ** (1.0 / n), rel=1e-12)
    assert clopper_pearson_lower(0, n, 0.001) == 0.0


def test_lower_defining_equation_and_monotonicity() -> None:
    # L(k) is the p with P_p[X >= k] = alpha (the defining tail equation of the exact bound).
    n, alpha = 500, 0.001
    lows = _lower_table(n, alpha)
    for k in (1, 10, 250, 499, 500):
        assert stats.binom.sf(k - 1, n, lows[k]) == pytest.approx(alpha, rel=1e-8)
    assert np.all(np.diff(lows) > 0)  # strictly increasing in k
    # Smaller alpha (higher confidence) gives a smaller bound.
    assert clopper_pearson_lower(300, 500, 1e-4) < clopper_pearson_lower(300, 500, 1e-2)


def test_upper_and_interval() -> None:
    n = 200
    for k in (0, 1, 57, 199, 200):
        up = clopper_pearson_upper(k, n, ALPHA)
        assert up == (1.0 if k == n else pytest.approx(stats.beta.ppf(1 - ALPHA, k + 1, n - k), rel=1e-12))
        # Symmetry: the upper bound of k successes is 1 − the lower bound of n − k successes.
        assert up == pytest.approx(1.0 - clopper_pearson_lower(n - k, n, ALPHA), abs=1e-12)
        lo, hi = clopper_pearson_interval(k, n, ALPHA)
        assert lo == pytest.approx(clopper_pearson_lower(k, n, ALPHA / 2), rel=1e-12, abs=0)
        assert hi == pytest.approx(clopper_pearson_upper(k, n, ALPHA / 2), rel=1e-12)
        assert lo <= k / n <= hi


def test_lower_coverage_exact() -> None:
    """P_p[L(X) <= p] >= 1 − alpha, computed exactly from the binomial pmf (no Monte Carlo)."""
    for n in SIM_NS:
        lows = _lower_table(n, ALPHA)
        ks = np.arange(n + 1)
        for p in (*SIM_PS, 0.001, 0.5 + 1e-9, 0.999):
            miss = stats.binom.pmf(ks, n, p)[lows > p].sum()
            assert miss <= ALPHA + 1e-12, (n, p, miss)


def test_lower_coverage_by_simulation() -> None:
    """Monte-Carlo coverage over (n, p) pairs, with a binomial tolerance on the miss count.

    For each pair the number of misses (bound > p) among D draws is Binomial(D, q) with q <= alpha; we
    allow up to its 1 − 1e-7 quantile (a Bonferroni-safe tolerance over all pairs). At n = 1000 the bound
    must not be absurdly conservative: its average miss rate must exceed 0.6·alpha (a bound at level
    alpha/2, e.g. a two-sided interval used by mistake, misses about 0.4·alpha of the time).
    """
    rng = np.random.default_rng(20240611)
    draws = 20_000
    tolerance = stats.binom.ppf(1 - 1e-7, draws, ALPHA)
    miss_rates: dict[int, list[float]] = {}
    for n in SIM_NS:
        lows = _lower_table(n, ALPHA)
        for p in SIM_PS:
            k = rng.binomial(n, p, size=draws)
            misses = int(np.count_nonzero(lows[k] > p))
            assert misses <= tolerance, f"n={n} p={p}: {misses} misses of {draws} (alpha={ALPHA})"
            miss_rates.setdefault(n, []).append(misses / draws)
    mean_miss_large_n = float(np.mean(miss_rates[1000]))
    assert mean_miss_large_n > 0.6 * ALPHA, f"bound too conservative: miss rate {mean_miss_large_n:.4f}"
    assert mean_miss_large_n <= ALPHA


def test_lower_close_to_normal_approximation_at_large_n() -> None:
    # At large n the exact bound approaches p̂ − z·sqrt(p̂(1 − p̂)/n): not loose by more than a little.
    n, alpha = 100_000, 0.001
    z = stats.norm.ppf(1 - alpha)
    for k in (30_000, 50_000, 90_000, 99_000):
        phat = k / n
        wald = phat - z * math.sqrt(phat * (1 - phat) / n)
        low = clopper_pearson_lower(k, n, alpha)
        assert abs(low - wald) < 0.1 * (phat - wald), (k, low, wald)


def test_binomial_test_matches_definition() -> None:
    """p-value = total probability of outcomes no more likely than the observed one."""
    for n in (1, 5, 20, 101):
        for p in (0.5, 0.3):
            pmf = stats.binom.pmf(np.arange(n + 1), n, p)
            for k in range(n + 1):
                want = min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-7)].sum())
                assert binomial_test_two_sided(k, n, p) == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert binomial_test_two_sided(50, 100) == pytest.approx(1.0)
    assert binomial_test_two_sided(30, 100) == pytest.approx(binomial_test_two_sided(70, 100))


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_binomial_test_type_one_error(n: int) -> None:
    alpha = 0.01
    ks = np.arange(n + 1)
    reject = np.array([binomial_test_two_sided(int(k), n, 0.5) <= alpha for k in ks])
    level = stats.binom.pmf(ks, n, 0.5)[reject].sum()
    assert level <= alpha
    if n == 1000:
        assert level > 0.5 * alpha  # not trivially conservative


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: clopper_pearson_lower(11, 10, 0.05), "k (number of successes) must be in [0, n]"),
        (lambda: clopper_pearson_lower(-1, 10, 0.05), "must be in [0, n]"),
        (lambda: clopper_pearson_lower(0, 0, 0.05), "n (number of trials) must be >= 1"),
        (lambda: clopper_pearson_lower(2.5, 10, 0.05), "k must be an integer"),
        (lambda: clopper_pearson_lower(True, 10, 0.05), "k must be an integer"),
        (lambda: clopper_pearson_lower(5, 10.0, 0.05), "n must be an integer"),
        (lambda: clopper_pearson_lower(5, 10, 0.0), "alpha must be in (0, 1)"),
        (lambda: clopper_pearson_lower(5, 10, 1.0), "alpha must be in (0, 1)"),
        (lambda: clopper_pearson_lower(5, 10, float("nan")), "alpha must be in (0, 1)"),
        (lambda: clopper_pearson_lower(5, 10, "0.05"), "alpha must be a number"),
        (lambda: clopper_pearson_upper(5, 10, -0.1), "alpha must be in (0, 1)"),
        (lambda: clopper_pearson_interval(5, 10, 2.0), "alpha must be in (0, 1)"),
        (lambda: binomial_test_two_sided(5, 10, 1.5), "p must be a probability in [0, 1]"),
        (lambda: binomial_test_two_sided(5, 3), "must be in [0, n]"),
    ],
)
def test_validation(call, fragment: str) -> None:
    with pytest.raises(RobustCertError, match=None) as info:
        call()
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_numpy_integers_accepted() -> None:
    assert clopper_pearson_lower(np.int64(5), np.int32(10), np.float64(0.05)) == pytest.approx(
        stats.beta.ppf(0.05, 5, 6)
    )
