"""scikit-learn's bundled 8×8 digits: the embedded default data set (no download)."""

from __future__ import annotations

import numpy as np
import torch

from robustcert.data.base import Dataset, channel_stats
from robustcert.errors import RobustCertError

SPLIT_SEED = 20190101  # the fixed split; changing it changes every published digits number


def load_digits(split: str = "test") -> Dataset:
    """Digits as 1×8×8 floats in [0, 1] (pixel / 16), a fixed seeded stratified 80/20 train/test split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise RobustCertError(f"digits has splits 'train' and 'test', not {split!r}")
    bunch = sk_load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, random_state=SPLIT_SEED, stratify=y)
    train_idx.sort()
    test_idx.sort()
    mean, std = channel_stats(torch.from_numpy(x[train_idx]))
    chosen = train_idx if split == "train" else test_idx
    return Dataset("digits", split, torch.from_numpy(x[chosen]), torch.from_numpy(y[chosen]), 10, mean, std)
