"""Training losses, one per method; the training loop is shared (``train.loop``).

A loss is a callable ``loss(model, x, y, ctx) -> scalar tensor``; ``ctx`` gives the epoch's seeded
generator and the fraction of training done (for schedules such as an eps ramp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustcert.errors import RobustCertError


@dataclass
class LossContext:
    generator: torch.Generator
    progress: float  # fraction of all training steps done, in [0, 1]


class StandardLoss:
    """Cross-entropy on clean inputs."""

    name = "standard"

    def params(self) -> dict[str, float]:
        return {}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        return F.cross_entropy(model(x), y)


class GaussianLoss:
    """Cross-entropy on x + N(0, sigma²): noise drawn fresh every batch, in [0, 1] pixel units, before
    the model's Normalize layer — the same place certification adds it, so sigma means the same thing."""

    name = "gaussian"

    def __init__(self, sigma: float) -> None:
        if not (sigma > 0 and math.isfinite(sigma)):
            raise RobustCertError(f"sigma must be > 0 for Gaussian training, got {sigma}")
        self.sigma = float(sigma)

    def params(self) -> dict[str, float]:
        return {"sigma": self.sigma}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: LossContext) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=ctx.generator, dtype=x.dtype) * self.sigma
        return F.cross_entropy(model(x + noise), y)
