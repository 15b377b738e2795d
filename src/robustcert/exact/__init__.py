"""Exact verification of small ReLU networks by MILP (scipy's HiGHS) over ``B_inf(x, eps) ∩`` the model's
input domain: ground truth for tests and a complete verifier. See :mod:`robustcert.exact.milp` for the
encoding and how verdicts stay sound (dual bounds minus the solver's tolerances; counterexamples
re-checked by the model's own forward pass)."""

from robustcert.exact.milp import ExactResult, exact_margin, exact_margins

__all__ = ["ExactResult", "exact_margin", "exact_margins"]
