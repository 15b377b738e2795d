"""Checks of threat-model arguments shared by every entry point, with one wording of each error."""

from __future__ import annotations

import math
from typing import Any

from robustcert.errors import RobustCertError

NORMS = ("linf", "l2")


def check_eps(eps: Any, what: str = "eps") -> float:
    """``eps`` as a float; RobustCertError unless it is a finite number ≥ 0."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise RobustCertError(f"{what} must be a finite number >= 0, got {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise RobustCertError(f"{what} must be a finite number >= 0, got {eps!r}")
    return value


def check_norm(norm: Any) -> str:
    """``norm`` itself; RobustCertError unless it is "linf" or "l2"."""
    if not isinstance(norm, str) or norm not in NORMS:
        raise RobustCertError(f"unknown norm {norm!r}; use one of: {', '.join(NORMS)}")
    return norm
