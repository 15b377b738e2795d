"""``Normalize``: per-channel (x - mean) / std as the first layer of every zoo model.

Keeping normalisation inside the model means every budget (eps, sigma, radius) is in [0, 1] pixel units
and noise or perturbations are applied before it, in training and certification alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """Channel-wise affine normalisation ``(x - mean) / std`` for NCHW (or N×C) inputs."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.ndim != 1:
            raise ValueError("Normalize: mean and std must be 1-D and of the same length (one per channel)")
        if bool((std_t <= 0).any()):
            raise ValueError("Normalize: every std must be > 0")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:
            return (x - self.mean.view(1, -1)) / self.std.view(1, -1)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
