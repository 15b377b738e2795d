"""Exact verification of small ReLU networks by MILP (scipy's HiGHS): ground truth for tests and a
complete verifier. See :mod:`robustcert.exact.milp` for the encoding and how verdicts are kept sound."""

from robustcert.exact.milp import ExactResult, exact_margin, exact_margins

__all__ = ["ExactResult", "exact_margin", "exact_margins"]
