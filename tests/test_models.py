"""Model zoo, Normalize and model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustcert.errors import RobustCertError
from robustcert.models import ARCHITECTURES, Normalize, build_model, load_model, save_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 16, 16)])
def test_every_arch_builds_for_every_shape_and_starts_with_normalize(
    arch: str, shape: tuple[int, int, int]
) -> None:
    model = build_model(arch, shape, 10, [0.5] * shape[0], [0.25] * shape[0])
    assert isinstance(model[0], Normalize)
    assert model(torch.rand(3, *shape)).shape == (3, 10)


def test_normalize_is_per_channel_affine() -> None:
    norm = Normalize([0.5, 0.25], [0.5, 2.0])
    x = torch.rand(2, 2, 3, 3)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0], 1)
    assert torch.allclose(norm(x), expected)


def test_unknown_arch_and_bad_shapes() -> None:
    with pytest.raises(RobustCertError, match="unknown architecture 'resnet'.*cnn-small"):
        build_model("resnet", (1, 8, 8), 10)
    with pytest.raises(RobustCertError, match="input_shape"):
        build_model("mlp-2x64", (8, 8), 10)
    with pytest.raises(RobustCertError, match="at least 4x4"):
        build_model("cnn-small", (1, 2, 2), 10)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model("cnn-small", (1, 8, 8), 10, [0.3], [0.4])
    meta = {
        "arch": "cnn-small",
        "dataset": "digits",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "normalize": {"mean": [0.3], "std": [0.4]},
        "train": {"method": "standard"},
        "seed": 0,
        "clean_accuracy": 0.5,
    }
    save_model(tmp_path, model, meta)
    loaded, loaded_meta = load_model(tmp_path)
    assert not loaded.training
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    on_disk = json.loads((tmp_path / "model.json").read_text())
    for field in (
        "arch",
        "dataset",
        "input_shape",
        "num_classes",
        "normalize",
        "train",
        "seed",
        "clean_accuracy",
        "robustcert_version",
    ):
        assert field in on_disk
    assert loaded_meta["normalize"]["mean"] == [0.3]


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(RobustCertError, match="not a model directory"):
        load_model(tmp_path)
