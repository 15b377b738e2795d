"""Attacks used to try to break certificates: PGD (L∞, L2) on a base model.

A successful attack is a real counterexample (its point is checked to lie in the threat set); a failed
attack proves nothing.
"""

from robustcert.attacks.pgd import AttackResult, margin, perturb_for_training, pgd, pgd_attack
from robustcert.models.modes import eval_mode

__all__ = ["AttackResult", "eval_mode", "margin", "perturb_for_training", "pgd", "pgd_attack"]
