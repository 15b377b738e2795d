"""User arrays from an ``.npz`` file (``--dataset npz:PATH``), checked so that nothing is silently wrong.

Format (``np.savez(PATH, x_train=..., y_train=..., x_test=..., y_test=..., num_classes=10)``):

- ``x_train``, ``y_train`` and/or ``x_test``, ``y_test``: one pair per split the file provides.
  ``x_*`` is a floating-point array of shape N×C×H×W of finite values (no NaN or inf) inside the
  model's input domain (``--input-range``, default [0, 1]; checked when a run starts);
  ``y_*`` is an integer array of shape (N,) with labels 0..K−1. Both splits must have the same C×H×W.
- ``num_classes`` (optional): an integer scalar K ≥ 2. When absent, K is the largest label over all the
  splits in the file plus one, and then every class 0..K−1 must occur in some split — a gap means K was
  probably wrong (e.g. classes missing from a small test file), so store ``num_classes`` to say so.
- Legacy layout: a file holding only ``x``, ``y`` is read as the **test** split only (such a file cannot
  say which examples were trained on, so asking it for ``train`` is an error).

Asking for a split the file lacks is an error naming the keys present and the keys needed; so are an
empty split, mismatched lengths, wrong shapes or dtypes, out-of-range values, negative labels and labels
≥ ``num_classes``. The file is read with ``allow_pickle=False``: object arrays are refused, no code runs.

``mean``/``std`` of the returned Dataset are the training split's per-channel statistics when the file has
one, else those of the split returned (they are only used to build a model's Normalize layer in training).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustcert.data.base import Dataset, channel_stats
from robustcert.errors import RobustCertError

SPLITS = ("train", "test")
LEGACY_KEYS = ("x", "y")


def _split_keys(split: str) -> tuple[str, str]:
    return f"x_{split}", f"y_{split}"


def _layout(path: Path, keys: set[str]) -> dict[str, tuple[str, str]]:
    """The splits the file provides: split name → (x key, y key). RobustCertError for half pairs or a mix."""
    splits: dict[str, tuple[str, str]] = {}
    for split in SPLITS:
        x_key, y_key = _split_keys(split)
        if (x_key in keys) != (y_key in keys):
            have, lack = (x_key, y_key) if x_key in keys else (y_key, x_key)
            raise RobustCertError(
                f"{path} has {have!r} but not {lack!r}; store both arrays of the {split} split"
            )
        if x_key in keys:
            splits[split] = (x_key, y_key)
    legacy = [k for k in LEGACY_KEYS if k in keys]
    if legacy and splits:
        raise RobustCertError(
            f"{path} mixes the legacy keys {legacy} with {sorted(k for pair in splits.values() for k in pair)}; "
            "keep only x_train/y_train, x_test/y_test"
        )
    if legacy:
        if len(legacy) != 2:
            lack = "y" if "x" in keys else "x"
            raise RobustCertError(f"{path} has {legacy[0]!r} but not {lack!r}; store both (or x_test/y_test)")
        splits["test"] = LEGACY_KEYS
    return splits


def _check_x(path: Path, key: str, x: np.ndarray) -> np.ndarray:
    if x.dtype == object or not np.issubdtype(x.dtype, np.floating):
        raise RobustCertError(
            f"{path}: {key} must be floating point, got dtype {x.dtype}; e.g. divide 8-bit images by 255.0"
        )
    if x.ndim != 4:
        hint = " (add the channel axis: x[:, None])" if x.ndim == 3 else ""
        raise RobustCertError(f"{path}: {key} must have shape N×C×H×W, got {x.shape}{hint}")
    if x.shape[0] == 0:
        raise RobustCertError(f"{path}: {key} is empty (0 examples); store at least one example per split")
    if min(x.shape[1:]) == 0:
        raise RobustCertError(f"{path}: {key} has an empty C×H×W {x.shape[1:]}; every example needs pixels")
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.reshape(x.shape[0], -1).all(axis=1))[0])
        raise RobustCertError(
            f"{path}: {key} contains NaN or inf (first at example {bad}); clean the data first"
        )
    return x  # the range is checked against the model's input domain (--input-range) when a run starts


def _check_y(path: Path, key: str, y: np.ndarray, n: int, x_key: str) -> np.ndarray:
    if y.dtype == object or not np.issubdtype(y.dtype, np.integer):
        raise RobustCertError(
            f"{path}: {key} must hold integer labels, got dtype {y.dtype}; store y.astype(np.int64)"
        )
    if y.ndim != 1:
        raise RobustCertError(f"{path}: {key} must have shape (N,), one label per example, got {y.shape}")
    if y.shape[0] != n:
        raise RobustCertError(
            f"{path}: {x_key} has {n} examples but {key} has {y.shape[0]} labels; store one label per example"
        )
    if int(y.min()) < 0:
        raise RobustCertError(
            f"{path}: {key} has negative labels (min {int(y.min())}); labels must be 0..K-1"
        )
    return y


def _read(path: Path, arrays: Any, key: str) -> np.ndarray:
    """Array ``key`` of the archive; RobustCertError for an object array (pickled data) or a corrupt member."""
    try:
        return np.asarray(arrays[key])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RobustCertError(
            f"cannot read array {key!r} of {path}: it is corrupt, or an object array (pickled data is refused); "
            "store plain numeric arrays with numpy.savez"
        ) from exc


def _first_gaps(classes: np.ndarray, k: int, limit: int = 10) -> list[int]:
    """Up to ``limit`` integers of 0..k-1 missing from the sorted unique array ``classes``."""
    gaps: list[int] = []
    expected = 0
    for c in [*classes.tolist(), k]:
        while expected < c and len(gaps) < limit:
            gaps.append(expected)
            expected += 1
        expected = c + 1
        if len(gaps) >= limit:
            break
    return gaps


def _num_classes(
    path: Path, value: np.ndarray | None, labels: dict[str, np.ndarray], override: int | None
) -> int:
    top = max(int(y.max()) for y in labels.values())
    stored: int | None = None
    if value is not None:
        if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
            raise RobustCertError(
                f"{path}: num_classes must be an integer scalar (e.g. num_classes=10), got {value.dtype} of shape {value.shape}"
            )
        stored = int(value)
    if override is not None and stored is not None and override != stored:
        raise RobustCertError(
            f"{path} says num_classes={stored} but {override} was asked for; drop one of them"
        )
    given = override if override is not None else stored
    if given is not None:
        if given < 2:
            raise RobustCertError(f"{path}: num_classes must be >= 2, got {given}")
        if top >= given:
            raise RobustCertError(
                f"{path}: labels must be in 0..{given - 1} (num_classes={given}), found label {top}"
            )
        return given
    k = top + 1
    classes = np.unique(np.concatenate([y.astype(np.int64) for y in labels.values()]))
    if len(classes) < k:
        missing = _first_gaps(classes, k)
        shown = ", ".join(map(str, missing)) + (", ..." if k - len(classes) > len(missing) else "")
        raise RobustCertError(
            f"{path}: without num_classes the classes are 0..{top} (largest label + 1), but no example has class "
            f"{shown}; store num_classes=K in the file (np.savez(..., num_classes=K)) if the data set has K classes"
        )
    if k < 2:
        raise RobustCertError(
            f"{path}: every label is 0, so there is only one class; a classifier needs >= 2 (store num_classes=K)"
        )
    return k


def load_npz(path: str | os.PathLike[str], num_classes: int | None = None, split: str = "test") -> Dataset:
    """The ``split`` ("train" or "test") of the npz file at ``path``, validated as the module docstring says.

    ``num_classes``, when given, overrides an absent ``num_classes`` key (and must agree with a present one).
    Every split in the file is checked, not only the one returned, so the class count and the statistics
    are the same whichever split is loaded. Raises RobustCertError for every problem listed there.
    """
    path = Path(path)
    if split not in SPLITS:
        raise RobustCertError(f"npz data sets have splits 'train' and 'test', not {split!r}")
    if not path.is_file():
        raise RobustCertError(
            f"npz file {path} does not exist; pass npz:PATH with the path of an existing .npz file"
        )
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise RobustCertError(
            f"cannot read {path} as .npz: it is not a numpy .npz archive, or is truncated or corrupt "
            f"({type(exc).__name__}); write it with numpy.savez"
        ) from exc
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise RobustCertError(
            f"{path} holds a single array, not an .npz archive of named arrays; write it with numpy.savez"
        )
    with arrays:
        keys = set(arrays.files)
        splits = _layout(path, keys)
        if split not in splits:
            present = ", ".join(sorted(keys)) or "none"
            needed = "/".join(_split_keys(split))
            extra = (
                " (the legacy x/y layout is the test split only)"
                if "test" in splits and splits["test"] == LEGACY_KEYS
                else ""
            )
            raise RobustCertError(
                f"{path} has no {split} split: it needs the arrays {needed}, and has: {present}{extra}"
            )
        xs: dict[str, np.ndarray] = {}
        ys: dict[str, np.ndarray] = {}
        for name, (x_key, y_key) in splits.items():
            xs[name] = _check_x(path, x_key, _read(path, arrays, x_key))
            ys[name] = _check_y(path, y_key, _read(path, arrays, y_key), xs[name].shape[0], x_key)
        stored = _read(path, arrays, "num_classes") if "num_classes" in keys else None
    k = _num_classes(path, stored, ys, num_classes)
    shapes = {name: x.shape[1:] for name, x in xs.items()}
    if len(set(shapes.values())) > 1:
        raise RobustCertError(
            f"{path}: the splits have different example shapes {shapes}; every split needs the same C×H×W"
        )
    x = torch.from_numpy(np.ascontiguousarray(xs[split], dtype=np.float32))
    y = torch.from_numpy(ys[split].astype(np.int64))
    stats_x = (
        x if "train" not in xs or split == "train" else torch.from_numpy(np.asarray(xs["train"], np.float32))
    )
    mean, std = channel_stats(stats_x)
    return Dataset(f"npz:{path}", split, x, y, k, mean, std)
