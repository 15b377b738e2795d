"""The evaluate config's ``train = {...}`` takes every option of ``robustcert train``'s losses and loop:
the keys equal the loop's plus make_loss's keywords, a certified-training model (IBP on the smooth
schedule with gradient clipping) trains through it and records those options, and a wrongly typed
value is one error line."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from cli_helpers import one_error_line

from robustcert.cli import main
from robustcert.evaluation.config import TRAIN_KEYS, TRAIN_LOOP_KEYS
from robustcert.train.factory import make_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_keys_are_the_loop_and_every_loss_option():
    loss_keys = [p for p in inspect.signature(make_loss).parameters if p != "method"]
    assert set(TRAIN_KEYS) == set(TRAIN_LOOP_KEYS) | set(loss_keys)
    assert len(TRAIN_KEYS) == len(set(TRAIN_KEYS))


CONFIG = """
[data]
dataset = "digits"
limit = 3
[[model]]
name = "ibp"
train = {{ arch = "mlp-2x32", method = "ibp", eps = 0.05, schedule = "smooth", ramp_start = 0.0, ramp_end = 0.5, grad_clip = {clip}, epochs = 1 }}
[threat.linf]
eps = [0.02]
[methods]
ibp = {{}}
"""


def test_certified_training_options_reach_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "card.toml"
    config.write_text(CONFIG.format(clip="10"))
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "card")]) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "card" / "models" / "ibp" / "model.json").read_text())
    train = meta["train"]
    assert train["method"] == "ibp" and train["schedule"] == "smooth" and train["ramp_start"] == 0.0
    assert train["grad_clip"] == 10.0 and train["eps"] == 0.05


def test_wrong_types_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.format(clip='"a lot"'))
    line = one_error_line(["evaluate", "--config", str(config), "--out", str(tmp_path / "c")], capsys)
    assert "grad_clip" in line and "number" in line
    config.write_text(CONFIG.format(clip="10").replace('schedule = "smooth"', 'schedule = "steep"'))
    line = one_error_line(["evaluate", "--config", str(config), "--out", str(tmp_path / "d")], capsys)
    assert "schedule" in line
