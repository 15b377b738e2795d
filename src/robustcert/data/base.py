"""The in-memory data set type shared by every loader, and its validation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustcert.errors import RobustCertError


@dataclass(frozen=True)
class Dataset:
    """Examples ``x`` (float32, N×C×H×W, finite) with labels ``y`` (int64, 0..K−1). The built-in data sets
    are in [0, 1]; whether the data lie in a model's input domain is checked when a run starts.

    ``mean`` / ``std`` are per-channel statistics of the training split, used by the zoo's Normalize
    layer; ``name`` and ``split`` say where the data came from.
    """

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        validate_examples(self.x, self.y, self.num_classes, what=f"{self.name}/{self.split}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x.shape[1:]
        return (int(c), int(h), int(w))

    def subset(self, indices: list[int]) -> Dataset:
        """The examples at ``indices`` (positions in this split), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Dataset(self.name, self.split, self.x[idx], self.y[idx], self.num_classes, self.mean, self.std)


def validate_examples(x: torch.Tensor, y: torch.Tensor, num_classes: int, what: str = "data") -> None:
    """Raise RobustCertError unless x is float N×C×H×W without NaN or inf and y are labels 0..K−1."""
    if not torch.is_floating_point(x):
        raise RobustCertError(f"{what}: x must be floating point, got dtype {x.dtype}")
    if x.ndim != 4:
        raise RobustCertError(f"{what}: x must have shape N×C×H×W, got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise RobustCertError(
            f"{what}: y must be a vector with one label per example: x has {x.shape[0]} examples, y has shape {tuple(y.shape)}"
        )
    if torch.isnan(x).any() or torch.isinf(x).any():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0])
        raise RobustCertError(f"{what}: x contains NaN or inf (first at example {bad}); clean the data first")
    if y.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise RobustCertError(f"{what}: labels y must be integers, got dtype {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise RobustCertError(
            f"{what}: labels must be in 0..{num_classes - 1}, found [{int(y.min())}, {int(y.max())}]"
        )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of x (N×C×H×W); std is floored at 1e-3 so Normalize stays finite.

    A channel with a single value in all (undefined sample std) gets std 1."""
    mean = x.mean(dim=(0, 2, 3))
    std = torch.nan_to_num(x.std(dim=(0, 2, 3)), nan=1.0).clamp_min(1e-3)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
