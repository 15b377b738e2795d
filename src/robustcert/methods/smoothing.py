"""Randomized smoothing (Cohen et al. 2019): CERTIFY on the Gaussian-smoothed classifier.

Each row holds with probability ≥ 1 − alpha over the sampling: the smoothed classifier predicts
``prediction`` everywhere in the L2 ball of radius ``radius`` (−1 = abstain).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.methods.base import Method, ModelInfo, Params, param
from robustcert.rows import Row, SmoothingRow


@dataclass(frozen=True, kw_only=True)
class SmoothingParams(Params):
    sigma: float | None = param(
        None, help="noise std in input units (default: the model's training sigma)", min=0.0, exclusive_min=True
    )
    n0: int = param(100, help="selection samples", min=1)
    n: int = param(10_000, help="estimation samples", min=1)
    alpha: float = param(
        0.001, help="failure probability of each certificate", min=0.0, max=1.0, exclusive_min=True, exclusive_max=True
    )
    batch: int = param(1000, help="noisy samples per forward pass", min=1)


def resolve(params: SmoothingParams, info: ModelInfo) -> SmoothingParams:
    """Take sigma from the model's training metadata when it is not given."""
    if params.sigma is not None:
        return params
    sigma = (info.meta.get("train") or {}).get("sigma")
    if sigma is None:
        raise RobustCertError("smoothing needs --sigma: the model was not trained with Gaussian noise")
    return replace(params, sigma=float(sigma))


class SmoothingCertifier:
    """Cohen et al.'s CERTIFY per example (one row each), seeded by the example's seed."""

    batch_size = 1
    rows_per_example = 1

    def __init__(self, model: nn.Module, info: ModelInfo, params: SmoothingParams) -> None:
        from robustcert.smoothing import SmoothedClassifier

        assert params.sigma is not None
        self.model, self.params = model, params
        self.smoothed = SmoothedClassifier(model, sigma=params.sigma, num_classes=info.num_classes)

    def certify_batch(
        self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]
    ) -> list[list[Row]]:
        p = self.params
        with torch.inference_mode():
            base = self.model(xs).argmax(1).tolist()
        out: list[list[Row]] = []
        for x, y, index, seed, base_pred in zip(xs, ys, indices, seeds, base, strict=True):
            cert = self.smoothed.certify(x, n0=p.n0, n=p.n, alpha=p.alpha, batch_size=p.batch, seed=seed)
            prediction = int(cert.prediction)
            out.append(
                [
                    SmoothingRow(
                        index=index,
                        label=y,
                        method="smoothing",
                        prediction=prediction,
                        correct=prediction == y,
                        certified=prediction != -1,
                        radius=float(cert.radius),
                        sigma=float(p.sigma or 0.0),
                        n0=p.n0,
                        n=p.n,
                        count=int(cert.count),
                        pA_lower=float(cert.pA_lower),
                        alpha=p.alpha,
                        base_correct=base_pred == y,
                    )
                ]
            )
        return out


def build(model: nn.Module, info: ModelInfo, params: SmoothingParams, log_path: Path | None) -> SmoothingCertifier:
    return SmoothingCertifier(model, info, params)


SMOOTHING = Method(
    name="smoothing",
    family="smoothing",
    params=SmoothingParams,
    build=build,
    resolve=resolve,
    norms=("l2",),
    label="smoothing",
    summary="randomized smoothing, Cohen et al.'s CERTIFY: an L2 radius that holds with probability >= 1 - alpha",
    reference="Cohen, Rosenfeld & Kolter 2019, Certified Adversarial Robustness via Randomized Smoothing",
)
