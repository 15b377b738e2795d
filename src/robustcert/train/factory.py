"""Method name + CLI parameters → a training loss and the parameters recorded in model.json.

Guarantee: :func:`make_loss` returns only for a known method with valid parameters. Every parameter is
checked whether or not the method uses it (the CLI always passes all of them, with valid defaults), so a
bad value is reported rather than silently ignored; a norm the method cannot train (L2 with ``ibp`` or
``crown-ibp``, which bound L∞ balls only) is refused rather than trained as L∞.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from robustcert.errors import RobustCertError
from robustcert.train.losses import GaussianLoss, StandardLoss
from robustcert.validation import NORMS, check_eps, check_norm

TRAIN_METHODS = ("standard", "gaussian", "pgd", "ibp", "crown-ibp")
# The norms each method can train against; the others ignore the norm.
LINF_ONLY = ("ibp", "crown-ibp")


def _check_sigma(sigma: Any) -> float:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not (math.isfinite(float(sigma)) and float(sigma) > 0)
    ):
        raise RobustCertError(
            f"--sigma must be a finite number > 0 (noise std in [0, 1] pixel units), got {sigma!r}"
        )
    return float(sigma)


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise RobustCertError(f"--pgd-steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def make_loss(
    method: str, *, sigma: float = 0.25, eps: float = 0.1, norm: str = "linf", pgd_steps: int = 10
) -> tuple[Any, dict[str, Any]]:
    """The loss for ``method`` and its recorded parameters.

    RobustCertError for: an unknown method (listing the choices); sigma not finite > 0; eps not finite
    >= 0; a norm other than linf/l2; pgd_steps not an integer >= 1; ``norm="l2"`` with ibp or crown-ibp.
    """
    if method not in TRAIN_METHODS:
        raise RobustCertError(
            f"unknown training method {method!r}; choose one of: {', '.join(TRAIN_METHODS)}"
        )
    sigma = _check_sigma(sigma)
    eps = check_eps(eps, "--eps (training budget)")
    norm = check_norm(norm)
    pgd_steps = _check_steps(pgd_steps)
    if method in LINF_ONLY and norm != "linf":
        raise RobustCertError(
            f"--method {method} trains against L∞ balls only, not {norm}; use --norm linf, or --method pgd "
            f"for {norm} adversarial training (norms: {', '.join(NORMS)})"
        )
    if method == "standard":
        loss: Any = StandardLoss()
    elif method == "gaussian":
        loss = GaussianLoss(sigma)
    elif method == "pgd":
        from robustcert.train.losses_robust import PGDLoss

        loss = PGDLoss(eps=eps, norm=norm, steps=pgd_steps)
    else:
        from robustcert.train.losses_robust import BoundLoss

        loss = BoundLoss(method=method, eps=eps)
    return loss, loss.params()
