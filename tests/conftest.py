"""Shared fixtures: small trained models on digits, made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1) if torch.get_num_threads() > 2 else None


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module's tests (timing-free, deterministic reductions); restored after.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def digits_gaussian_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mlp-2x64 trained 3 epochs on digits with Gaussian noise sigma=0.25 (a model directory)."""
    from robustcert.data import load_dataset
    from robustcert.train import GaussianLoss, train_model

    out = tmp_path_factory.mktemp("gaussian_model")
    train_model(
        arch="mlp-2x64",
        train_data=load_dataset("digits", "train"),
        test_data=load_dataset("digits", "test"),
        loss=GaussianLoss(0.25),
        method="gaussian",
        method_params={"sigma": 0.25},
        out_dir=out,
        epochs=3,
        seed=0,
        show_progress=False,
    )
    return out


@pytest.fixture(scope="session")
def digits_standard_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mlp-2x64 trained 5 epochs on clean digits (a model directory)."""
    from robustcert.data import load_dataset
    from robustcert.train import StandardLoss, train_model

    out = tmp_path_factory.mktemp("standard_model")
    train_model(
        arch="mlp-2x64",
        train_data=load_dataset("digits", "train"),
        test_data=load_dataset("digits", "test"),
        loss=StandardLoss(),
        method="standard",
        method_params={},
        out_dir=out,
        epochs=5,
        seed=0,
        show_progress=False,
    )
    return out
