"""Data sets as float tensors in [0, 1], NCHW, with labels."""

from __future__ import annotations

import os

from robustcert.data.base import Dataset, channel_stats, validate_examples
from robustcert.data.digits import load_digits
from robustcert.data.fashion_mnist import load_fashion_mnist
from robustcert.data.npz import load_npz
from robustcert.errors import RobustCertError

DATASETS = ("digits", "fashion-mnist", "npz:PATH")


def load_dataset(name: str, split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load a data set by name: ``digits``, ``fashion-mnist`` (alias ``fashion_mnist``) or ``npz:PATH``.

    ``npz:PATH`` (or a name ending in ``.npz``) is the format described in :mod:`robustcert.data.npz`.
    RobustCertError for an unknown name (listing the choices), a split the data set lacks, or bad data.
    """
    if name == "digits":
        return load_digits(split)
    if name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_fashion_mnist(split, data_dir)
    if name.startswith("npz:"):
        if not name[4:]:
            raise RobustCertError("npz: needs the file's path, e.g. npz:data/mine.npz")
        return load_npz(name[4:], split=split)
    if name.endswith(".npz"):
        return load_npz(name, split=split)
    raise RobustCertError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")


__all__ = [
    "Dataset",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_npz",
    "validate_examples",
    "channel_stats",
]
