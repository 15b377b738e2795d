"""``robustcert certify sdp`` from the command line: rows of the SdpRow type with the solver's fields,
consistent with CROWN (never below it) and with PGD (never above an attacked margin), L2 included; the
SDP inside ``evaluate`` is not flagged unsound; bad input (a conv model, a negative budget, an unknown
solver) is one error line and exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import one_error_line as _one_error_line

from robustcert.cli import main
from robustcert.rows import SdpRow

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An mlp-2x32 trained 3 epochs on digits (~94% test accuracy), made by the CLI."""
    out = tmp_path_factory.mktemp("sdp_cli") / "mlp"
    assert main(["train", "--arch", "mlp-2x32", "--epochs", "3", "--lr", "0.01", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdp_cli") / "cnn"
    assert main(["train", "--arch", "cnn-small", "--epochs", "1", "--out", str(out)]) == 0
    return out


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed command in its own process (real exit status and stderr)."""
    exe = Path(sys.executable).with_name("robustcert")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "robustcert"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ROBUSTCERT_"))}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([*cmd, *argv], capture_output=True, text=True, env=env, timeout=300)


def _rows(run: Path) -> dict[tuple[int, float], dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return {(r["index"], r["eps"]): r for r in rows}


def _check_row_fields(row: dict[str, Any], solver: str, norm: str) -> None:
    SdpRow(**{k: v for k, v in row.items() if k != "family"})  # the row type accepts every field
    assert row["method"] == "sdp" and row["solver"] == solver and row["norm"] == norm
    assert isinstance(row["iterations"], int) and row["iterations"] >= 0
    assert row["certified"] == (row["correct"] and row["margin_lower"] > 0)
    if row["sdp_lower"] is None:  # CROWN proved every class: nothing solved
        assert row["iterations"] == 0 and row["gap"] is None and row["margin_lower"] > 0
    else:
        assert row["iterations"] > 0
        # margin_lower = min_j max(sdp_j, crown_j) over all classes; unsolved classes have crown_j > 0
        assert row["margin_lower"] >= min(row["sdp_lower"], 0.0)
    if solver == "first-order":
        assert row["gap"] is None  # it claims no optimum of its own


def test_certify_sdp_rows_crown_and_pgd(
    mlp_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eps = "0.02,0.1"
    argv = ["certify", "sdp", "--model", str(mlp_dir), "--indices", "0", "--eps", eps,
            "--solver", "clarabel", "--time-limit", "5", "--out", str(tmp_path / "sdp")]  # fmt: skip
    assert main(argv) == 0
    assert "certified accuracy" in capsys.readouterr().out
    sdp = _rows(tmp_path / "sdp")
    assert len(sdp) == 2
    for row in sdp.values():
        _check_row_fields(row, "clarabel", "linf")
    solved = [r for r in sdp.values() if r["sdp_lower"] is not None]
    assert solved and all(r["gap"] is not None for r in solved)  # clarabel claims an optimum
    assert any(r["correct"] and r["iterations"] > 0 for r in sdp.values())
    assert main(["certify", "crown", "--model", str(mlp_dir), "--indices", "0", "--eps", eps,
                 "--out", str(tmp_path / "crown")]) == 0  # fmt: skip
    assert main(["attack", "pgd", "--model", str(mlp_dir), "--indices", "0", "--eps", eps, "--steps", "40",
                 "--out", str(tmp_path / "pgd")]) == 0  # fmt: skip
    crown, pgd = _rows(tmp_path / "crown"), _rows(tmp_path / "pgd")
    assert crown.keys() == sdp.keys() == pgd.keys()
    for key, row in sdp.items():
        # per class the reported bound is the larger of the SDP's and CROWN's: never below CROWN
        c = crown[key]["margin_lower"]
        assert row["margin_lower"] >= c - 1e-6 * (1 + abs(c)), (key, row, crown[key])
        # and never above the margin of a point PGD found in the ball (float32 model, no allowance)
        assert row["margin_lower"] <= pgd[key]["adv_margin"], (key, row, pgd[key])
        assert not (row["certified"] and pgd[key]["attack_success"])


def test_certify_sdp_l2_first_order(mlp_dir: Path, tmp_path: Path) -> None:
    argv = ["certify", "sdp", "--model", str(mlp_dir), "--limit", "2", "--eps", "0.3,1.0", "--norm", "l2",
            "--solver", "first-order", "--time-limit", "1", "--out", str(tmp_path / "l2")]  # fmt: skip
    assert main(argv) == 0
    rows = _rows(tmp_path / "l2")
    assert len(rows) == 4
    for row in rows.values():
        _check_row_fields(row, "first-order", "l2")
    assert main(["attack", "pgd", "--model", str(mlp_dir), "--limit", "2", "--eps", "0.3,1.0", "--norm", "l2",
                 "--steps", "40", "--out", str(tmp_path / "pgd")]) == 0  # fmt: skip
    for key, row in _rows(tmp_path / "pgd").items():
        assert rows[key]["margin_lower"] <= row["adv_margin"], (key, rows[key], row)


def test_evaluate_with_sdp_is_not_flagged_unsound(mlp_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "card.toml"
    config.write_text(f"""
[data]
dataset = "digits"
limit = 4

[[model]]
name = "mlp"
path = "{mlp_dir}"

[threat.linf]
eps = [0.05]

[methods]
sdp = {{ solver = "first-order", time_limit = 1 }}
pgd = {{ steps = 30, restarts = 2 }}
""")
    out = tmp_path / "card"
    assert main(["evaluate", "--config", str(config), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["unsound"] == []
    rows = list((out / "runs").rglob("results.jsonl"))
    sdp_rows = [
        json.loads(line)
        for p in rows
        if p.parent.name.startswith("sdp")
        for line in p.read_text().splitlines()
    ]
    assert len(sdp_rows) == 4 and all(r["method"] == "sdp" and r["solver"] == "first-order" for r in sdp_rows)


def test_conv_model_is_refused_with_one_line(cnn_dir: Path, tmp_path: Path) -> None:
    done = _cli(
        "certify",
        "sdp",
        "--model",
        str(cnn_dir),
        "--limit",
        "1",
        "--eps",
        "0.01",
        "--out",
        str(tmp_path / "r"),
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "conv2d" in lines[0] and "'_1'" in lines[0]  # the node and its op
    assert "supported ops: input, linear, relu, flatten, reshape, identity, normalize" in lines[0]
    assert (
        not (tmp_path / "r" / "results.jsonl").exists() or not (tmp_path / "r" / "results.jsonl").read_text()
    )


def test_bad_budget_and_solver(mlp_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["certify", "sdp", "--model", str(mlp_dir), "--limit", "1"]
    assert "--eps must be >= 0, got -1" in _one_error_line(
        [*base, "--eps", "-1", "--out", str(tmp_path / "a")], capsys
    )
    err = _one_error_line([*base, "--solver", "foo", "--out", str(tmp_path / "b")], capsys)
    assert "foo" in err and "first-order" in err and "scs" in err and "clarabel" in err
    err = _one_error_line([*base, "--norm", "l1", "--out", str(tmp_path / "c")], capsys)
    assert "l1" in err
    err = _one_error_line([*base, "--time-limit", "0", "--out", str(tmp_path / "d")], capsys)
    assert "time" in err
