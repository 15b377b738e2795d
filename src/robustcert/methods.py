"""Adapters from each certification method to the run engine's one interface.

``make_certifier(method, model, params)`` returns ``certify_example(x, y, index, seed) -> rows`` with the
row fields of DESIGN.md's ``results.jsonl`` contract. This is the only place that knows every method;
the engine and the report see rows only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from robustcert.errors import RobustCertError

Row = dict[str, Any]
CertifyExample = Callable[[torch.Tensor, int, int, int], list[Row]]
BOUND_METHODS = ("ibp", "crown", "alpha-crown")
METHODS = ("smoothing", *BOUND_METHODS, "exact", "pgd")


def parse_eps_list(text: str | Sequence[float]) -> list[float]:
    """``"0.01,0.02"`` (or a list) → floats, each finite and ≥ 0."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip() != ""]
    except ValueError as exc:
        raise RobustCertError(f"--eps must be numbers separated by commas, got {text!r}") from exc
    if not values:
        raise RobustCertError("--eps needs at least one value")
    for v in values:
        if not math.isfinite(v) or v < 0:
            raise RobustCertError(f"eps must be finite and >= 0, got {v}")
    return values


@torch.no_grad()
def _clean_prediction(model: nn.Module, x: torch.Tensor) -> int:
    return int(model(x.unsqueeze(0)).argmax(1))


def smoothing_certifier(model: nn.Module, num_classes: int, sigma: float, n0: int, n: int, alpha: float,
                        batch_size: int) -> CertifyExample:
    """Rows of Cohen et al.'s CERTIFY; each holds with probability ≥ 1 − alpha over the sampling."""
    from robustcert.smoothing import SmoothedClassifier

    smoothed = SmoothedClassifier(model, sigma=sigma, num_classes=num_classes)

    def certify_example(x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        cert = smoothed.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed)
        return [{
            "index": index, "label": y, "method": "smoothing", "prediction": int(cert.prediction),
            "correct": int(cert.prediction) == y, "certified": int(cert.prediction) != -1,
            "radius": float(cert.radius), "sigma": sigma, "n0": n0, "n": n, "count": int(cert.count),
            "pA_lower": float(cert.pA_lower), "alpha": alpha,
            "base_correct": _clean_prediction(model, x) == y,
        }]

    return certify_example


def bound_certifier(model: nn.Module, method: str, norm: str, eps_list: Sequence[float], **options: Any) -> CertifyExample:
    """Rows of a deterministic bound method, one per eps: ``certified`` only if every margin bound is > 0."""
    from robustcert.bounds import margin_lower

    def certify_example(x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        rows = []
        pred = _clean_prediction(model, x)
        labels = torch.tensor([y])
        for eps in eps_list:
            m = margin_lower(model, x.unsqueeze(0), labels, eps=eps, norm=norm, method=method, **options)
            worst = float(m.min())
            rows.append({
                "index": index, "label": y, "method": method, "prediction": pred, "correct": pred == y,
                "certified": bool(pred == y and worst > 0), "norm": norm, "eps": float(eps), "margin_lower": worst,
            })
        return rows

    return certify_example


def exact_certifier(model: nn.Module, norm: str, eps_list: Sequence[float], time_limit: float) -> CertifyExample:
    """Rows of the exact MILP verifier: certified only when the MILP proves the minimum margin > 0."""
    from robustcert.exact import exact_margin

    if norm != "linf":
        raise RobustCertError("the exact MILP verifier supports --norm linf only")

    def certify_example(x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        rows = []
        pred = _clean_prediction(model, x)
        for eps in eps_list:
            res = exact_margin(model, x.unsqueeze(0), y, eps=eps, time_limit=time_limit)
            rows.append({
                "index": index, "label": y, "method": "exact", "prediction": pred, "correct": pred == y,
                "certified": bool(pred == y and res.status == "robust"), "norm": norm, "eps": float(eps),
                "margin_lower": None if res.min_margin is None else float(res.min_margin), "status": res.status,
            })
        return rows

    return certify_example


def pgd_certifier(model: nn.Module, norm: str, eps_list: Sequence[float], steps: int, restarts: int) -> CertifyExample:
    """Rows of a PGD attack per eps: ``attack_success`` when PGD finds a misclassified point in the ball."""
    from robustcert.attacks import pgd_attack

    def certify_example(x: torch.Tensor, y: int, index: int, seed: int) -> list[Row]:
        rows = []
        pred = _clean_prediction(model, x)
        for eps in eps_list:
            res = pgd_attack(model, x.unsqueeze(0), torch.tensor([y]), eps=eps, norm=norm, steps=steps,
                             restarts=restarts, seed=seed)
            adv_margin = float(res.adv_margin[0])
            rows.append({
                "index": index, "label": y, "method": "pgd", "prediction": pred, "correct": pred == y,
                "certified": False, "norm": norm, "eps": float(eps),
                "attack_success": bool(pred != y or adv_margin < 0), "adv_margin": adv_margin,
            })
        return rows

    return certify_example
