"""Model zoo, Normalize and model directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustcert.errors import RobustCertError
from robustcert.models import ARCHITECTURES, Normalize, build_model, load_model, read_model_meta, save_model


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


def _model_dir(tmp_path: Path) -> Path:
    model = build_model("mlp-2x64", (1, 8, 8), 10, [0.3], [0.4])
    meta = {
        "arch": "mlp-2x64",
        "dataset": "digits",
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "normalize": {"mean": [0.3], "std": [0.4]},
    }
    return save_model(tmp_path / "m", model, meta)


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "flipped_byte"])
def test_corrupt_model_pt_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    directory = _model_dir(tmp_path)
    weights = directory / "model.pt"
    blob = weights.read_bytes()
    damaged = {
        "truncate": blob[: len(blob) // 2],
        "empty": b"",
        "garbage": b"\x00\x01garbage" * 64,
        "flipped_byte": blob[:100] + bytes([blob[100] ^ 0xFF]) + blob[101:],
    }[damage]
    weights.write_bytes(damaged)
    with pytest.raises(RobustCertError) as info:
        load_model(directory)
    message = str(info.value)
    assert str(weights) in message and "retrain the model" in message and "restore" in message
    assert "\n" not in message and "weights_only=False" not in message


def test_tampered_model_pt_is_refused_without_running_code(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path)
    state = torch.load(directory / "model.pt", weights_only=True)
    state["evil"] = _WritesMarker(tmp_path / "pwned")
    torch.save(state, directory / "model.pt")
    with pytest.raises(RobustCertError, match="refused: loading them could run code"):
        load_model(directory)
    assert not (tmp_path / "pwned").exists()
    torch.save([torch.zeros(2)], directory / "model.pt")  # loadable, but not a state dict
    with pytest.raises(RobustCertError, match="does not hold a state dict"):
        load_model(directory)


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path)
    torch.save(build_model("mlp-2x256", (1, 8, 8), 10).state_dict(), directory / "model.pt")
    with pytest.raises(RobustCertError, match="does not match architecture mlp-2x64 in model.json"):
        load_model(directory)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{not json", r"model.json is not valid JSON \(line 1"),
        ("", "model.json is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, not a list"),
        (
            '{"arch": "mlp-2x64"}',
            r"lacks the fields \['dataset', 'input_shape', 'num_classes', 'normalize'\]",
        ),
    ],
)
def test_broken_model_json(tmp_path: Path, text: str, pattern: str) -> None:
    directory = _model_dir(tmp_path)
    (directory / "model.json").write_text(text)
    for load in (read_model_meta, load_model):
        with pytest.raises(RobustCertError, match=pattern) as info:
            load(directory)
        assert str(directory / "model.json") in str(info.value) and "retrain" in str(info.value)
    (directory / "model.json").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(RobustCertError, match="not UTF-8"):
        read_model_meta(directory)


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("arch", 3, "'arch' must be an architecture name"),
        ("arch", "resnet", "describes no buildable model: unknown architecture 'resnet'; choose one of"),
        ("input_shape", [8, 8], "'input_shape' must be a list of 3 positive integers"),
        ("input_shape", [1, 8, 0], "'input_shape' must be a list of 3 positive integers"),
        ("num_classes", 1, "'num_classes' must be an integer >= 2"),
        ("num_classes", "10", "'num_classes' must be an integer >= 2"),
        ("normalize", [0.3], "'normalize' must be an object"),
        ("normalize", {"mean": [0.3]}, "'normalize.std' must be a list of 1 finite numbers"),
        ("normalize", {"mean": [0.3, 0.1], "std": [0.4]}, "'normalize.mean' must be a list of 1"),
        ("normalize", {"mean": [0.3], "std": [0.0]}, "'normalize.std' must be a list of numbers > 0"),
    ],
)
def test_mistyped_model_json_fields(tmp_path: Path, field: str, value: object, pattern: str) -> None:
    directory = _model_dir(tmp_path)
    meta = json.loads((directory / "model.json").read_text())
    meta[field] = value
    (directory / "model.json").write_text(json.dumps(meta))
    with pytest.raises(RobustCertError, match=pattern):
        load_model(directory)


def test_missing_files_are_named(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path)
    (directory / "model.pt").unlink()
    with pytest.raises(RobustCertError, match=r"model.pt is missing.*retrain the model"):
        load_model(directory)
    directory = _model_dir(tmp_path / "b")
    (directory / "model.json").unlink()
    with pytest.raises(RobustCertError, match=r"model.json is missing"):
        read_model_meta(directory)
    with pytest.raises(RobustCertError, match="does not exist"):
        load_model(tmp_path / "nowhere")
