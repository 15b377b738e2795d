"""The command line: bad input gives one clear line on stderr and exit status 2; good input works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import one_error_line as _fail


def _certify(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "certify",
        "smoothing",
        "--model",
        str(model),
        "--limit",
        "2",
        "--n",
        "200",
        "--n0",
        "20",
        "--out",
        str(out),
        *extra,
    ]


def test_smoothing_bad_parameters(
    digits_gaussian_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "sigma must be > 0" in _fail(
        _certify(digits_gaussian_model, tmp_path / "a", "--sigma", "0"), capsys
    )
    assert "sigma must be > 0" in _fail(
        _certify(digits_gaussian_model, tmp_path / "a", "--sigma", "-1"), capsys
    )
    assert "--n0 must be >= 1" in _fail(_certify(digits_gaussian_model, tmp_path / "b", "--n0", "0"), capsys)
    assert "--n must be >= 1" in _fail(_certify(digits_gaussian_model, tmp_path / "b", "--n", "-5"), capsys)
    assert "--alpha must be < 1" in _fail(
        _certify(digits_gaussian_model, tmp_path / "c", "--alpha", "1.5"), capsys
    )
    assert "--alpha must be > 0" in _fail(
        _certify(digits_gaussian_model, tmp_path / "c", "--alpha", "0"), capsys
    )
    assert "invalid choice: 'magic'" in _fail(["certify", "magic", "--model", str(digits_gaussian_model)], capsys)


def test_shape_mismatch_and_nan_data(
    digits_gaussian_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "small.npz", x=np.random.rand(4, 1, 4, 4).astype(np.float32), y=np.arange(4) % 10)
    err = _fail(
        _certify(digits_gaussian_model, tmp_path / "a", "--dataset", f"npz:{tmp_path / 'small.npz'}"), capsys
    )
    assert "[1, 4, 4]" in err and "[1, 8, 8]" in err
    x = np.random.rand(4, 1, 8, 8).astype(np.float32)
    x[1, 0, 2, 2] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(4))
    assert "NaN" in _fail(
        _certify(digits_gaussian_model, tmp_path / "b", "--dataset", f"npz:{tmp_path / 'nan.npz'}"), capsys
    )


def test_missing_data_and_unknown_arch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fail(
        ["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m")],
        capsys,
    )
    assert "apt-get install -y dataset-fashion-mnist" in err
    err = _fail(["train", "--arch", "vgg16", "--epochs", "1", "--out", str(tmp_path / "m2")], capsys)
    assert "unknown architecture 'vgg16'" in err and "cnn-small" in err
    assert "not a model directory" in _fail(_certify(tmp_path, tmp_path / "x"), capsys)


def test_cli_train_certify_report_round_trip(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "robustcert"]
    subprocess.run(
        [
            *run,
            "train",
            "--method",
            "gaussian",
            "--sigma",
            "0.25",
            "--arch",
            "mlp-2x64",
            "--epochs",
            "2",
            "--out",
            str(tmp_path / "m"),
        ],
        check=True,
        capture_output=True,
    )
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["train"]["method"] == "gaussian" and meta["train"]["sigma"] == 0.25
    done = subprocess.run(
        [*run, *_certify(tmp_path / "m", tmp_path / "r")], check=True, capture_output=True, text=True
    )
    assert "certified accuracy" in done.stdout and "1 - alpha" in done.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    (tmp_path / "r" / "summary.json").unlink()
    (tmp_path / "r" / "curve.png").unlink()
    subprocess.run([*run, "report", str(tmp_path / "r")], check=True, capture_output=True)
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
    assert (tmp_path / "r" / "curve.png").stat().st_size > 1000
