"""Randomized smoothing (Cohen, Rosenfeld & Kolter, 2019): an L2 certificate that holds with
probability ≥ 1 − alpha over the sampling, not a deterministic one."""

from robustcert.smoothing.smoothed import ABSTAIN, Certificate, SmoothedClassifier
from robustcert.smoothing.stats import (
    binomial_test_two_sided,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
)

__all__ = [
    "ABSTAIN",
    "Certificate",
    "SmoothedClassifier",
    "binomial_test_two_sided",
    "clopper_pearson_interval",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
]
