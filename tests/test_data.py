"""Data loaders: shapes, ranges, the fixed digits split, IDX parsing, and errors on bad input."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robustcert.data import load_dataset, load_fashion_mnist, load_npz
from robustcert.errors import RobustCertError


def test_digits_split_is_fixed_stratified_and_in_range() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert len(test) == 360
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == torch.float32
    assert float(train.x.min()) >= 0 and float(train.x.max()) <= 1
    # stratified: every class has about 20% of its examples in test
    for k in range(10):
        n_test, n_train = int((test.y == k).sum()), int((train.y == k).sum())
        assert abs(n_test / (n_test + n_train) - 0.2) < 0.02
    again = load_dataset("digits", "test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    # train and test do not overlap
    train_rows = {tuple(r) for r in train.x.flatten(1).tolist()}
    overlap = sum(tuple(r) in train_rows for r in test.x.flatten(1).tolist())
    assert overlap < 5  # digits holds a handful of exact duplicate images; the split itself is disjoint


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28))
    labels = rng.integers(0, 10, size=7)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, 0x803)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 0x801)
    data = load_fashion_mnist("test", tmp_path)
    assert data.x.shape == (7, 1, 28, 28)
    assert torch.allclose(data.x[:, 0], torch.from_numpy(images / 255.0).float())
    assert data.y.tolist() == labels.tolist()


def test_fashion_mnist_missing_files_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(RobustCertError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path)
    with pytest.raises(RobustCertError, match="apt-get install"):
        load_fashion_mnist("test", tmp_path / "nowhere")


def test_fashion_mnist_truncated_file_is_reported(tmp_path: Path) -> None:
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)), 0x803)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, 5) + b"\x01\x02")
    with pytest.raises(RobustCertError, match="truncated"):
        load_fashion_mnist("test", tmp_path)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (make fashion-mnist)",
)
def test_fashion_mnist_real_files() -> None:
    data = load_dataset("fashion-mnist", "test")
    assert data.x.shape == (10000, 1, 28, 28) and sorted(set(data.y.tolist())) == list(range(10))


def test_npz_round_trip_and_validation(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((5, 1, 4, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    data = load_npz(tmp_path / "ok.npz")
    assert data.num_classes == 3 and data.x.shape == (5, 1, 4, 4)

    bad_nan = x.copy()
    bad_nan[2, 0, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad_nan, y=y)
    with pytest.raises(RobustCertError, match="NaN"):
        load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "range.npz", x=x * 255, y=y)
    with pytest.raises(RobustCertError, match=r"\[0, 1\]"):
        load_npz(tmp_path / "range.npz")
    np.savez(tmp_path / "len.npz", x=x, y=y[:3])
    with pytest.raises(RobustCertError, match="one label per example"):
        load_npz(tmp_path / "len.npz")
    np.savez(tmp_path / "neg.npz", x=x, y=np.array([0, -1, 2, 1, 0]))
    with pytest.raises(RobustCertError, match="labels must be in"):
        load_npz(tmp_path / "neg.npz")
    np.savez(tmp_path / "shape.npz", x=x.reshape(5, 16), y=y)
    with pytest.raises(RobustCertError, match="shape"):
        load_npz(tmp_path / "shape.npz")
    np.savez(tmp_path / "nokeys.npz", a=x)
    with pytest.raises(RobustCertError, match="'x' and 'y'"):
        load_npz(tmp_path / "nokeys.npz")


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(RobustCertError, match="digits"):
        load_dataset("cifar10")
    with pytest.raises(RobustCertError, match="splits"):
        load_dataset("digits", "validation")
