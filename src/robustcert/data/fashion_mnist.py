"""Fashion-MNIST from the IDX gz files of Debian's ``dataset-fashion-mnist`` package."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from robustcert.data.base import Dataset
from robustcert.errors import RobustCertError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Training-split statistics of Fashion-MNIST (pixel/255), fixed so that models do not depend on load order.
MEAN, STD = (0.2860,), (0.3530,)
INSTALL_HINT = "install it with: sudo apt-get install -y dataset-fashion-mnist (or pass --data-dir / set ROBUSTCERT_DATA)"


def _find_file(directory: Path, name: str) -> Path:
    for candidate in (directory / name, directory / name.removesuffix(".gz")):
        if candidate.exists():
            return candidate
    raise RobustCertError(f"Fashion-MNIST file {name} not found in {directory}; {INSTALL_HINT}")


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic != expected_magic:
        raise RobustCertError(
            f"{path} is not an IDX file of the expected kind (magic {magic:#x}); re-install the data set"
        )
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(dims)):
        raise RobustCertError(
            f"{path} is truncated ({array.size} of {int(np.prod(dims))} values); re-install the data set"
        )
    return array.reshape(dims)


def load_fashion_mnist(split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Fashion-MNIST as 1×28×28 floats in [0, 1]; ``data_dir`` overrides ROBUSTCERT_DATA and the Debian path."""
    if split not in FILES:
        raise RobustCertError(f"fashion-mnist has splits 'train' and 'test', not {split!r}")
    directory = Path(data_dir or os.environ.get("ROBUSTCERT_DATA") or DEFAULT_DIR)
    if not directory.is_dir():
        raise RobustCertError(f"Fashion-MNIST directory {directory} does not exist; {INSTALL_HINT}")
    images_name, labels_name = FILES[split]
    images = _read_idx(_find_file(directory, images_name), 0x00000803)
    labels = _read_idx(_find_file(directory, labels_name), 0x00000801)
    if images.shape[0] != labels.shape[0]:
        raise RobustCertError(f"Fashion-MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset("fashion-mnist", split, x, y, 10, MEAN, STD)
