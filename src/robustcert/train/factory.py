"""Method name + CLI parameters → a training loss and the parameters recorded in model.json."""

from __future__ import annotations

from typing import Any

from robustcert.errors import RobustCertError
from robustcert.train.losses import GaussianLoss, StandardLoss


def make_loss(
    method: str, *, sigma: float = 0.25, eps: float = 0.1, norm: str = "linf", pgd_steps: int = 10
) -> tuple[Any, dict[str, Any]]:
    """The loss for ``method`` and its recorded parameters; RobustCertError for an unknown method."""
    if method == "standard":
        loss: Any = StandardLoss()
    elif method == "gaussian":
        loss = GaussianLoss(sigma)
    elif method == "pgd":
        from robustcert.train.losses_robust import PGDLoss

        loss = PGDLoss(eps=eps, norm=norm, steps=pgd_steps)
    elif method in ("ibp", "crown-ibp"):
        from robustcert.train.losses_robust import BoundLoss

        loss = BoundLoss(method=method, eps=eps)
    else:
        raise RobustCertError(
            f"unknown training method {method!r}; choose one of: standard, gaussian, pgd, ibp, crown-ibp"
        )
    return loss, loss.params()
