"""The training loop: it learns, it is seeded, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustcert.data import Dataset, load_dataset
from robustcert.errors import RobustCertError
from robustcert.train import GaussianLoss, StandardLoss, train_model
from robustcert.train.factory import make_loss


def _train(out: Path, epochs: int, resume: bool = False, loss=None):  # type: ignore[no-untyped-def]
    return train_model(
        arch="mlp-2x64",
        train_data=load_dataset("digits", "train"),
        test_data=load_dataset("digits", "test"),
        loss=loss or GaussianLoss(0.25),
        method="gaussian",
        method_params={"sigma": 0.25},
        out_dir=out,
        epochs=epochs,
        seed=3,
        resume=resume,
        show_progress=False,
    )


def test_training_learns_and_writes_a_model_directory(tmp_path: Path) -> None:
    _, meta = train_model(
        arch="mlp-2x64",
        train_data=load_dataset("digits", "train"),
        test_data=load_dataset("digits", "test"),
        loss=StandardLoss(),
        method="standard",
        method_params={},
        out_dir=tmp_path,
        epochs=6,
        lr=3e-3,
        seed=0,
        show_progress=False,
    )
    assert meta["clean_accuracy"] > 0.85
    assert (tmp_path / "model.pt").exists() and (tmp_path / "model.json").exists()
    assert meta["history"][-1]["loss"] < meta["history"][0]["loss"]


def test_resume_continues_exactly(tmp_path: Path) -> None:
    full, _ = _train(tmp_path / "full", epochs=3)
    # an interrupted run: 3 epochs requested, stopped after 2 (simulated by running a 2-epoch schedule is
    # not the same schedule), so we interrupt by raising inside the loss at epoch 3.
    calls = {"n": 0}
    steps_per_epoch = (len(load_dataset("digits", "train")) + 63) // 64
    inner = GaussianLoss(0.25)

    def crashing(model, x, y, ctx):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch:
            raise KeyboardInterrupt
        return inner(model, x, y, ctx)

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", epochs=3, loss=crashing)
    resumed, meta = _train(tmp_path / "cut", epochs=3, resume=True)
    assert meta["epochs_done"] == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_existing_run_needs_resume_and_same_arguments(tmp_path: Path) -> None:
    _train(tmp_path, epochs=1)
    with pytest.raises(RobustCertError, match="--resume"):
        _train(tmp_path, epochs=1)
    with pytest.raises(RobustCertError, match="different arguments"):
        _train(tmp_path, epochs=2, resume=True)


class _WritesMarker:
    """Unpickling this runs code (creates a file) — what weights_only=True must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_resume_refuses_a_tampered_train_state_without_running_it(tmp_path: Path) -> None:
    _train(tmp_path / "run", epochs=2)
    state_path = tmp_path / "run" / "train_state.pt"
    state = torch.load(state_path, weights_only=True)  # what robustcert writes loads without pickle code
    assert isinstance(state["torch_rng"], torch.Tensor)
    state["history"] = _WritesMarker(tmp_path / "pwned")
    torch.save(state, state_path)
    with pytest.raises(RobustCertError, match=r"train_state.pt cannot be loaded.*delete train_state.pt"):
        _train(tmp_path / "run", epochs=2, resume=True)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "not_a_dict", "missing_key"])
def test_resume_from_a_damaged_train_state_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    _train(tmp_path, epochs=1)
    state_path = tmp_path / "train_state.pt"
    blob = state_path.read_bytes()
    if damage == "truncate":
        state_path.write_bytes(blob[: len(blob) // 2])
    elif damage == "empty":
        state_path.write_bytes(b"")
    elif damage == "garbage":
        state_path.write_bytes(b"\x00garbage" * 50)
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], state_path)
    else:
        state = torch.load(state_path, weights_only=True)
        del state["optimizer"]
        torch.save(state, state_path)
    with pytest.raises(
        RobustCertError, match=r"train_state.pt.*delete train_state.pt to train from scratch"
    ) as info:
        _train(tmp_path, epochs=1, resume=True)
    assert "\n" not in str(info.value)


class _GlobalNoiseLoss:
    """Cross-entropy on inputs with noise from torch's *global* generator (not the epoch's)."""

    def __call__(self, model, x, y, ctx):  # type: ignore[no-untyped-def]
        return torch.nn.functional.cross_entropy(model(x + 0.1 * torch.randn(x.shape)), y)


def test_resume_is_exact_for_a_loss_that_draws_from_the_global_rng(tmp_path: Path) -> None:
    kwargs = dict(
        arch="mlp-2x64",
        train_data=load_dataset("digits", "train"),
        test_data=None,
        method="custom",
        method_params={},
        epochs=2,
        seed=5,
        show_progress=False,
    )
    full, _ = train_model(loss=_GlobalNoiseLoss(), out_dir=tmp_path / "full", **kwargs)  # type: ignore[arg-type]
    steps = (len(kwargs["train_data"]) + 63) // 64  # type: ignore[arg-type]
    calls = {"n": 0}
    inner = _GlobalNoiseLoss()

    def crashing(model, x, y, ctx):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt
        return inner(model, x, y, ctx)

    with pytest.raises(KeyboardInterrupt):
        train_model(loss=crashing, out_dir=tmp_path / "cut", **kwargs)  # type: ignore[arg-type]
    torch.manual_seed(12345)  # whatever the caller's global RNG holds must not matter
    resumed, _ = train_model(loss=_GlobalNoiseLoss(), out_dir=tmp_path / "cut", resume=True, **kwargs)  # type: ignore[arg-type]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("method", "kwargs", "pattern"),
    [
        (
            "mixup",
            {},
            "unknown training method 'mixup'; choose one of: standard, gaussian, pgd, ibp, crown-ibp",
        ),
        ("ibp", {"norm": "l2"}, "--method ibp trains against L∞ balls only, not l2"),
        ("crown-ibp", {"norm": "l2"}, "--method crown-ibp trains against L∞ balls only"),
        ("pgd", {"norm": "l1"}, "unknown norm 'l1'"),
        ("gaussian", {"sigma": 0.0}, "--sigma must be a finite number > 0"),
        ("gaussian", {"sigma": -0.25}, "--sigma must be a finite number > 0"),
        ("gaussian", {"sigma": float("nan")}, "--sigma must be a finite number > 0"),
        ("gaussian", {"sigma": float("inf")}, "--sigma must be a finite number > 0"),
        ("standard", {"sigma": -1.0}, "--sigma must be"),
        ("pgd", {"eps": -0.1}, "--eps .* must be a finite number >= 0"),
        ("ibp", {"eps": float("nan")}, "must be a finite number >= 0"),
        ("ibp", {"eps": float("inf")}, "must be a finite number >= 0"),
        ("pgd", {"pgd_steps": 0}, "--pgd-steps must be an integer >= 1"),
        ("pgd", {"pgd_steps": 2.5}, "--pgd-steps must be an integer >= 1"),
        ("pgd", {"pgd_steps": True}, "--pgd-steps must be an integer >= 1"),
    ],
)
def test_bad_loss_arguments(method: str, kwargs: dict, pattern: str) -> None:
    with pytest.raises(RobustCertError, match=pattern):
        make_loss(method, **kwargs)


def test_valid_losses_record_their_parameters() -> None:
    assert make_loss("pgd", eps=0.2, norm="l2", pgd_steps=3)[1] == {"eps": 0.2, "norm": "l2", "pgd_steps": 3}
    assert make_loss("ibp", eps=0.0)[1] == {
        "eps": 0.0,
        "norm": "linf",
        "schedule": "linear",
        "ramp_start": 0.1,
        "ramp_end": 0.5,
        "kappa_end": 0.5,
        "ibp_init": False,
        "shi_reg": 0.0,
        "shi_tol": 0.5,
    }
    assert make_loss("gaussian", sigma=1)[1] == {"sigma": 1.0}
    assert make_loss("standard")[1] == {}


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"epochs": 0}, "--epochs must be an integer >= 1, got 0"),
        ({"epochs": 1.5}, "--epochs must be an integer >= 1"),
        ({"epochs": True}, "--epochs must be an integer >= 1"),
        ({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
        ({"lr": 0.0}, "--lr must be a finite number > 0"),
        ({"lr": -1e-3}, "--lr must be a finite number > 0"),
        ({"lr": float("nan")}, "--lr must be a finite number > 0"),
        ({"lr": float("inf")}, "--lr must be a finite number > 0"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
        (
            {"arch": "resnet"},
            "unknown architecture 'resnet'; choose one of: cnn-medium, cnn-small, mlp-2x100, mlp-2x256, mlp-2x32, "
            "mlp-2x50, mlp-2x64, mlp-4x100",
        ),
        ({"train_data": "empty"}, "is empty"),
        ({"test_data": "other_shape"}, "does not match the training data"),
    ],
)
def test_bad_training_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, overrides: dict, pattern: str
) -> None:
    train = load_dataset("digits", "train")
    if overrides.get("train_data") == "empty":
        overrides["train_data"] = train.subset([])
    if overrides.get("test_data") == "other_shape":
        x = torch.rand(4, 1, 5, 5)
        overrides["test_data"] = Dataset(
            "other", "test", x, torch.zeros(4, dtype=torch.long), 10, (0.5,), (0.2,)
        )
    kwargs = dict(
        arch="mlp-2x64",
        train_data=train,
        test_data=None,
        loss=StandardLoss(),
        method="standard",
        method_params={},
        out_dir=tmp_path / "out",
        epochs=1,
        show_progress=False,
    )
    kwargs.update(overrides)
    with pytest.raises(RobustCertError, match=pattern):
        train_model(**kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
