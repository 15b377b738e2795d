"""User arrays from an .npz file holding ``x`` (N×C×H×W or N×H×W, in [0, 1]) and ``y`` (labels 0..K−1)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from robustcert.data.base import Dataset, channel_stats
from robustcert.errors import RobustCertError


def load_npz(path: str | os.PathLike[str], num_classes: int | None = None, split: str = "test") -> Dataset:
    """Load and validate a user's arrays. Keys ``x``/``y`` or ``x_train``/``y_train``, ``x_test``/``y_test``."""
    path = Path(path)
    if not path.exists():
        raise RobustCertError(f"npz file {path} does not exist")
    try:
        arrays = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad file
        raise RobustCertError(f"cannot read {path} as .npz: {exc}") from exc
    keys = (f"x_{split}", f"y_{split}") if f"x_{split}" in arrays else ("x", "y")
    if keys[0] not in arrays or keys[1] not in arrays:
        raise RobustCertError(
            f"{path} must hold arrays 'x' and 'y' (or 'x_{split}'/'y_{split}'); it has {sorted(arrays)}"
        )
    x_np, y_np = arrays[keys[0]], arrays[keys[1]]
    if not np.issubdtype(x_np.dtype, np.floating):
        raise RobustCertError(
            f"{path}: x must be floating point in [0, 1], got dtype {x_np.dtype}; divide 8-bit images by 255"
        )
    if not np.issubdtype(y_np.dtype, np.integer):
        raise RobustCertError(f"{path}: y must hold integer labels, got dtype {y_np.dtype}")
    if x_np.ndim == 3:
        x_np = x_np[:, None]
    if x_np.ndim != 4:
        raise RobustCertError(f"{path}: x must have shape N×C×H×W or N×H×W, got {x_np.shape}")
    x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
    y = torch.from_numpy(y_np.astype(np.int64).reshape(-1))
    k = num_classes if num_classes is not None else (int(y.max()) + 1 if y.numel() else 2)
    mean, std = (
        channel_stats(x)
        if x.numel() and torch.isfinite(x).all()
        else ((0.0,) * x.shape[1], (1.0,) * x.shape[1])
    )
    return Dataset(f"npz:{path}", split, x, y, max(k, 2), mean, std)
