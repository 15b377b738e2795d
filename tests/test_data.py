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


def _images(n: int, seed: int = 1, shape: tuple[int, int, int] = (1, 4, 4)) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def test_npz_train_and_test_splits_round_trip(tmp_path: Path) -> None:
    x_tr, y_tr = _images(6), np.array([0, 1, 2, 0, 1, 2])
    x_te, y_te = _images(3, seed=2), np.array([2, 1, 2])
    np.savez(tmp_path / "d.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    train, test = (
        load_dataset(f"npz:{tmp_path / 'd.npz'}", "train"),
        load_dataset(f"npz:{tmp_path / 'd.npz'}", "test"),
    )
    assert torch.equal(train.x, torch.from_numpy(x_tr)) and train.y.tolist() == y_tr.tolist()
    assert torch.equal(test.x, torch.from_numpy(x_te)) and test.y.tolist() == y_te.tolist()
    assert train.y.dtype == torch.int64 and train.x.dtype == torch.float32
    assert train.num_classes == test.num_classes == 3
    # the statistics are the training split's, whichever split is loaded
    assert train.mean == test.mean and train.std == test.std
    assert abs(train.mean[0] - float(x_tr.mean())) < 1e-6


def test_npz_num_classes_key_and_inference(tmp_path: Path) -> None:
    # classes 0..2 in train, 3 only in test: inferred over all splits, so both splits say 4
    np.savez(tmp_path / "a.npz", x_train=_images(3), y_train=[0, 1, 2], x_test=_images(2), y_test=[3, 0])
    assert load_npz(tmp_path / "a.npz", split="train").num_classes == 4
    assert load_npz(tmp_path / "a.npz", split="test").num_classes == 4
    # a gap in the labels: refused without num_classes, accepted with it
    np.savez(tmp_path / "gap.npz", x_test=_images(3), y_test=[0, 1, 9])
    with pytest.raises(RobustCertError, match=r"no example has class 2, 3, 4, 5, 6, 7, 8.*num_classes=K"):
        load_npz(tmp_path / "gap.npz")
    np.savez(tmp_path / "k.npz", x_test=_images(3), y_test=[0, 1, 9], num_classes=10)
    assert load_npz(tmp_path / "k.npz").num_classes == 10
    np.savez(tmp_path / "small_k.npz", x_test=_images(3), y_test=[0, 1, 9], num_classes=5)
    with pytest.raises(RobustCertError, match=r"labels must be in 0..4 \(num_classes=5\), found label 9"):
        load_npz(tmp_path / "small_k.npz")
    np.savez(tmp_path / "float_k.npz", x_test=_images(3), y_test=[0, 1, 1], num_classes=10.0)
    with pytest.raises(RobustCertError, match="num_classes must be an integer scalar"):
        load_npz(tmp_path / "float_k.npz")
    np.savez(tmp_path / "one.npz", x_test=_images(3), y_test=[0, 0, 0])
    with pytest.raises(RobustCertError, match="only one class"):
        load_npz(tmp_path / "one.npz")
    with pytest.raises(RobustCertError, match="says num_classes=10 but 12"):
        load_npz(tmp_path / "k.npz", num_classes=12)


def test_npz_missing_split_names_the_keys_present_and_needed(tmp_path: Path) -> None:
    np.savez(tmp_path / "t.npz", x_test=_images(2), y_test=[0, 1])
    with pytest.raises(
        RobustCertError, match=r"no train split: it needs the arrays x_train/y_train, and has: x_test, y_test"
    ):
        load_npz(tmp_path / "t.npz", split="train")
    np.savez(tmp_path / "half.npz", x_train=_images(2))
    with pytest.raises(RobustCertError, match=r"has 'x_train' but not 'y_train'"):
        load_npz(tmp_path / "half.npz", split="train")
    np.savez(tmp_path / "nokeys.npz", a=_images(2))
    with pytest.raises(RobustCertError, match=r"needs the arrays x_test/y_test, and has: a"):
        load_npz(tmp_path / "nokeys.npz")
    with pytest.raises(RobustCertError, match="splits 'train' and 'test'"):
        load_npz(tmp_path / "t.npz", split="validation")


def test_npz_legacy_x_y_is_the_test_split_only(tmp_path: Path) -> None:
    x, y = _images(5), np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "old.npz", x=x, y=y)
    data = load_npz(tmp_path / "old.npz")
    assert data.split == "test" and data.num_classes == 3 and torch.equal(data.x, torch.from_numpy(x))
    with pytest.raises(RobustCertError, match="no train split.*legacy x/y layout is the test split only"):
        load_npz(tmp_path / "old.npz", split="train")
    np.savez(tmp_path / "mixed.npz", x=x, y=y, x_train=x, y_train=y)
    with pytest.raises(RobustCertError, match="mixes the legacy keys"):
        load_npz(tmp_path / "mixed.npz")


@pytest.mark.parametrize(
    ("arrays", "pattern"),
    [
        ({"x_test": np.zeros((0, 1, 4, 4), np.float32), "y_test": np.zeros(0, np.int64)}, "empty"),
        ({"x_test": np.zeros((2, 1, 0, 4), np.float32), "y_test": [0, 1]}, "empty C×H×W"),
        ({"x_test": _images(5), "y_test": [0, 1, 2]}, "x_test has 5 examples but y_test has 3 labels"),
        ({"x_test": _images(3).reshape(3, 16), "y_test": [0, 1, 0]}, r"N×C×H×W, got \(3, 16\)$"),
        ({"x_test": _images(3)[:, 0], "y_test": [0, 1, 0]}, r"add the channel axis"),
        ({"x_test": _images(3)[None], "y_test": [0, 1, 0]}, "N×C×H×W"),
        ({"x_test": _images(3), "y_test": np.array([[0], [1], [0]])}, r"shape \(N,\)"),
        ({"x_test": (_images(3) * 255).astype(np.uint8), "y_test": [0, 1, 0]}, "floating point"),
        ({"x_test": _images(3), "y_test": [0.0, 1.0, 0.0]}, "integer labels"),
        ({"x_test": _images(3), "y_test": [True, False, True]}, "integer labels"),
        ({"x_test": _images(3), "y_test": [0, -1, 1]}, "negative labels"),
        ({"x_train": _images(3), "y_train": [0, 1, 0], "x_test": _images(2, shape=(1, 5, 5)), "y_test": [0, 1]},
         "different example shapes"),
    ],
)  # fmt: skip
def test_npz_refuses_bad_arrays(tmp_path: Path, arrays: dict, pattern: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(RobustCertError, match=pattern) as info:
        load_npz(tmp_path / "bad.npz")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_npz_refuses_non_finite_pixels_in_either_split(tmp_path: Path, value: float) -> None:
    bad = _images(4)
    bad[2, 0, 1, 1] = value
    np.savez(tmp_path / "nan.npz", x_train=bad, y_train=[0, 1, 0, 1], x_test=_images(2), y_test=[0, 1])
    # the bad split is checked even when the other split is asked for
    with pytest.raises(RobustCertError, match="x_train contains NaN or inf \\(first at example 2\\)"):
        load_npz(tmp_path / "nan.npz", split="test")


def test_npz_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RobustCertError, match="does not exist"):
        load_dataset(f"npz:{tmp_path / 'nowhere.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(RobustCertError, match="not a numpy .npz archive"):
        load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "good.npz", x_test=_images(3), y_test=[0, 1, 0])
    blob = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(RobustCertError, match="truncated or corrupt"):
        load_npz(tmp_path / "cut.npz")
    np.savez(tmp_path / "obj.npz", x_test=np.array([object()] * 3, dtype=object), y_test=[0, 1, 0])
    with pytest.raises(RobustCertError, match="pickled data is refused"):
        load_npz(tmp_path / "obj.npz")
    np.save(tmp_path / "single.npy", _images(3))
    with pytest.raises(RobustCertError, match="single array"):
        load_npz(tmp_path / "single.npy")


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(RobustCertError, match="digits"):
        load_dataset("cifar10")
    with pytest.raises(RobustCertError, match="splits"):
        load_dataset("digits", "validation")


def test_npz_data_in_any_finite_range_load_and_the_run_checks_the_domain(tmp_path: Path) -> None:
    """npz arrays outside [0, 1] load (a model may take any range); whether they fit the model is the
    input domain's question, asked when a run starts (jobs.load_run_model): refused for [0, 1], accepted
    for the right --input-range."""
    from robustcert.domain import InputDomain

    np.savez(tmp_path / "raw.npz", x_test=_images(3) * 16 - 0.5, y_test=[0, 1, 0], num_classes=2)
    data = load_dataset(f"npz:{tmp_path / 'raw.npz'}", "test")
    assert float(data.x.min()) < 0 and float(data.x.max()) > 1
    with pytest.raises(RobustCertError, match=r"excludes the data.*outside \[0, 1\]"):
        InputDomain.unit().check_data(data.x)
    InputDomain.parse("-0.5,15.5").check_data(data.x)
