"""Confidence bounds and tests on a binomial proportion, as used by randomized smoothing.

Cohen, Rosenfeld & Kolter (2019) certify with a one-sided Clopper–Pearson lower bound on the probability
pA that the base classifier returns the top class under noise, and predict with a two-sided binomial test
of the top two counts. Every function validates its inputs and raises :class:`RobustCertError` on bad ones.
"""

from __future__ import annotations

import math
import numbers

from scipy import stats as _st

from robustcert.errors import RobustCertError


def _as_count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RobustCertError(f"{name} must be an integer count, got {value!r}")
    return int(value)


def _check_kn(k: object, n: object) -> tuple[int, int]:
    k_i = _as_count(k, "k")
    n_i = _as_count(n, "n")
    if n_i < 1:
        raise RobustCertError(f"n (number of trials) must be >= 1, got {n_i}")
    if not 0 <= k_i <= n_i:
        raise RobustCertError(f"k (number of successes) must be in [0, n] = [0, {n_i}], got {k_i}")
    return k_i, n_i


def check_level(alpha: object) -> float:
    """``alpha`` as a float when it is a number in (0, 1); else RobustCertError."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise RobustCertError(f"alpha must be a number in (0, 1), got {alpha!r}")
    a = float(alpha)
    if not (math.isfinite(a) and 0.0 < a < 1.0):
        raise RobustCertError(f"alpha must be in (0, 1) (e.g. 0.001), got {alpha!r}")
    return a


def _check_prob(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise RobustCertError(f"p must be a probability in [0, 1], got {p!r}")
    q = float(p)
    if not (math.isfinite(q) and 0.0 <= q <= 1.0):
        raise RobustCertError(f"p must be a probability in [0, 1], got {p!r}")
    return q


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson lower confidence bound on a binomial proportion.

    Given k successes in n independent trials with success probability p, returns L(k) with
    P_p[L(k) ≤ p] ≥ 1 − alpha for every p: the alpha quantile of Beta(k, n − k + 1), and 0 when k = 0.
    """
    k_i, n_i = _check_kn(k, n)
    a = check_level(alpha)
    if k_i == 0:
        return 0.0
    return float(_st.beta.ppf(a, k_i, n_i - k_i + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 − alpha) Clopper–Pearson upper confidence bound: P_p[U(k) ≥ p] ≥ 1 − alpha.

    The (1 − alpha) quantile of Beta(k + 1, n − k), and 1 when k = n.
    """
    k_i, n_i = _check_kn(k, n)
    a = check_level(alpha)
    if k_i == n_i:
        return 1.0
    return float(_st.beta.ppf(1.0 - a, k_i + 1, n_i - k_i))


def clopper_pearson_interval(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided (1 − alpha) Clopper–Pearson interval: each one-sided bound at level alpha / 2.

    P_p[lower ≤ p ≤ upper] ≥ 1 − alpha for every p. (For certification use the one-sided
    :func:`clopper_pearson_lower` at level alpha; this interval is alpha/2-conservative on each side.)
    """
    a = check_level(alpha)
    return clopper_pearson_lower(k, n, a / 2.0), clopper_pearson_upper(k, n, a / 2.0)


def binomial_test_two_sided(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test p-value of k successes in n trials against success probability p.

    The p-value is the probability under Binomial(n, p) of every outcome no more likely than k, so
    rejecting when it is ≤ alpha has type-I error ≤ alpha.
    """
    k_i, n_i = _check_kn(k, n)
    q = _check_prob(p)
    return float(_st.binomtest(k_i, n_i, q, alternative="two-sided").pvalue)
