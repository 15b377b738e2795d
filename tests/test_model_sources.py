"""A user's own model through every command: ONNX files and module:function, with the same rows as the
model directory they came from, and one-line errors for what does not fit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robustcert.cli import main
from robustcert.models import load_model
from robustcert.rows import AttackRow, BoundRow
from robustcert.runs import read_rows


def _export(model: nn.Module, path: Path, dynamic_batch: bool) -> Path:
    axes = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(model, (torch.rand(1, 1, 8, 8),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_axes=axes, dynamo=False)
    return path


def _without_time(path: Path, row_type: type) -> list[dict]:
    rows = [r.to_json() for r in read_rows(path, row_type)]
    for r in rows:
        r.pop("seconds")
    return rows


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_onnx_file_gives_the_same_rows_as_its_model_directory(
    digits_standard_model: Path, tmp_path: Path, dynamic_batch: bool
) -> None:
    model, _ = load_model(digits_standard_model)
    onnx_path = _export(model, tmp_path / "net.onnx", dynamic_batch)
    args = ["--limit", "6", "--eps", "0.01,0.05"]
    assert main(["certify", "crown", "--model", str(digits_standard_model), *args, "--out", str(tmp_path / "a")]) == 0
    assert main(["certify", "crown", "--model", str(onnx_path), "--dataset", "digits", *args,
                 "--out", str(tmp_path / "b")]) == 0
    a = _without_time(tmp_path / "a" / "results.jsonl", BoundRow)
    b = _without_time(tmp_path / "b" / "results.jsonl", BoundRow)
    assert [(r["index"], r["eps"], r["certified"], r["prediction"]) for r in a] == [
        (r["index"], r["eps"], r["certified"], r["prediction"]) for r in b
    ]
    for ra, rb in zip(a, b, strict=True):
        assert ra["margin_lower"] == pytest.approx(rb["margin_lower"], abs=1e-5)
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["model_kind"] == "onnx" and len(run["model_sha256"]) == 64
    assert main(["attack", "pgd", "--model", str(onnx_path), "--dataset", "digits", "--limit", "4",
                 "--steps", "5", "--restarts", "1", "--out", str(tmp_path / "c")]) == 0
    assert len(read_rows(tmp_path / "c" / "results.jsonl", AttackRow)) == 8


def test_python_model_and_evaluate_config_path(digits_standard_model: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model(digits_standard_model)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "usernets.py").write_text(
        "import torch\n"
        "from robustcert.models.zoo import build_model\n"
        "from pathlib import Path\n"
        "def build():\n"
        f"    m = build_model('mlp-2x64', (1, 8, 8), 10, {list(model[0].mean.flatten().tolist())}, "
        f"{list(model[0].std.flatten().tolist())})\n"
        "    m.load_state_dict(torch.load(Path(__file__).parent / 'weights.pt', weights_only=True))\n"
        "    return m\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("usernets", None)
    assert main(["certify", "ibp", "--model", "usernets:build", "--dataset", "digits", "--limit", "3",
                 "--eps", "0.01", "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p" / "run.json").read_text())["model_kind"] == "python"
    onnx_path = _export(model, tmp_path / "net.onnx", True)
    config = tmp_path / "card.toml"
    config.write_text(f"""
[data]
dataset = "digits"
limit = 3
[[model]]
name = "onnx"
path = "{onnx_path.name}"
[[model]]
name = "python"
path = "usernets:build"
[threat.linf]
eps = [0.01]
[methods]
crown = {{}}
pgd = {{ steps = 5, restarts = 1 }}
""")
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "card")]) == 0
    report = json.loads((tmp_path / "card" / "report.json").read_text())
    assert set(report["models"]) == {"onnx", "python"}


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_model_files_that_do_not_fit_are_one_line_errors(
    digits_standard_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = load_model(digits_standard_model)
    onnx_path = _export(model, tmp_path / "net.onnx", True)
    out = ["--out", str(tmp_path / "x")]
    assert "add --dataset" in _fail(["certify", "crown", "--model", str(onnx_path), *out], capsys)
    # a net for 4x4 inputs against 8x8 data: both shapes in the message
    small = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    torch.onnx.export(small, (torch.rand(1, 1, 4, 4),), str(tmp_path / "small.onnx"), dynamo=False)
    err = _fail(["certify", "crown", "--model", str(tmp_path / "small.onnx"), "--dataset", "digits", *out], capsys)
    assert "[1, 8, 8]" in err and "[1, 4, 4]" in err
    # a model whose output is not a class vector
    (tmp_path / "badnets.py").write_text("import torch\ndef build():\n    return torch.nn.Flatten(0)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        err = _fail(["certify", "crown", "--model", "badnets:build", "--dataset", "digits", *out], capsys)
        assert "class scores of shape [1, K]" in err
        err = _fail(["certify", "crown", "--model", "badnets:nothing", "--dataset", "digits", *out], capsys)
        assert "no function 'nothing'" in err
    finally:
        sys.path.remove(str(tmp_path))
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    torch.onnx.export(three, (torch.rand(1, 1, 8, 8),), str(tmp_path / "three.onnx"), dynamo=False)
    err = _fail(["certify", "crown", "--model", str(tmp_path / "three.onnx"), "--dataset", "digits", *out], capsys)
    assert "10 classes" in err and "3 scores" in err
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx file")
    assert "ONNX" in _fail(["certify", "crown", "--model", str(tmp_path / "junk.onnx"), "--dataset", "digits",
                            *out], capsys)
    (tmp_path / "weights.bin").write_bytes(b"x")
    assert "unsupported model file" in _fail(
        ["certify", "crown", "--model", str(tmp_path / "weights.bin"), "--dataset", "digits", *out], capsys
    )
