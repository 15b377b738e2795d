"""Run engine: rows match the summary, runs are deterministic, a killed run resumes exactly, and
results.jsonl is read strictly (torn last line dropped with a warning, corrupt middle line an error)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from robustcert.errors import RobustCertError
from robustcert.jobs import certify_run
from robustcert.methods import get_method
from robustcert.report.summary import summarize
from robustcert.rows import BoundRow, SmoothingRow
from robustcert.runs import parse_indices, read_rows, select_indices
from robustcert.runs.store import read_complete_rows

SMOOTHING = {"n0": 50, "n": 500, "batch": 200}


def _rows_without_time(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_json().items() if k != "seconds"} for r in read_rows(path, SmoothingRow)]


def _run(model: Path, out: Path, resume: bool = False, limit: int | None = 12, seed: int = 0,
         indices: list[int] | None = None, force: bool = False) -> dict[str, Any]:
    method = get_method("smoothing")
    return certify_run(
        method=method, params=method.make_params(SMOOTHING), model_dir=model, limit=limit, indices=indices,
        seed=seed, resume=resume, force=force, out=out, show_progress=False, quiet=True,
    )


def test_run_files_and_summary_agree_with_rows(digits_gaussian_model: Path, tmp_path: Path) -> None:
    summary = _run(digits_gaussian_model, tmp_path)
    for name in ("run.json", "results.jsonl", "summary.json", "curve.png"):
        assert (tmp_path / name).exists(), name
    rows = read_rows(tmp_path / "results.jsonl", SmoothingRow)
    assert [r.index for r in rows] == list(range(12))
    for row in rows:
        assert isinstance(row, SmoothingRow)
        assert row.sigma == 0.25  # taken from the model's training metadata
        assert row.correct == (row.prediction == row.label)
        assert row.seconds > 0
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["n_examples"] == 12
    for radius, acc in on_disk["certified_accuracy"].items():
        expected = sum(r.correct and r.radius >= float(radius) for r in rows) / 12
        assert acc == pytest.approx(expected)
    assert "0.0" in on_disk["certified_accuracy"] and "0.25" in on_disk["certified_accuracy"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["indices"] == list(range(12)) and len(run["model_sha256"]) == 64 and run["seed"] == 0
    assert run["params"]["sigma"] == 0.25 and run["params"]["n"] == 500


def test_same_seed_same_rows(digits_gaussian_model: Path, tmp_path: Path) -> None:
    _run(digits_gaussian_model, tmp_path / "a", limit=6)
    _run(digits_gaussian_model, tmp_path / "b", limit=6)
    _run(digits_gaussian_model, tmp_path / "c", limit=6, seed=1)
    a, b, c = (_rows_without_time(tmp_path / d / "results.jsonl") for d in "abc")
    assert a == b
    assert [r["count"] for r in a] != [r["count"] for r in c]


def test_example_rows_do_not_depend_on_which_examples_run(digits_gaussian_model: Path, tmp_path: Path) -> None:
    _run(digits_gaussian_model, tmp_path / "all", limit=8)
    _run(digits_gaussian_model, tmp_path / "some", limit=None, indices=[5, 2])
    full = {r["index"]: r for r in _rows_without_time(tmp_path / "all" / "results.jsonl")}
    for row in _rows_without_time(tmp_path / "some" / "results.jsonl"):
        assert row == full[row["index"]]


def _bound_row(index: int, eps: float) -> BoundRow:
    return BoundRow(index=index, label=1, method="crown", prediction=1, correct=True, certified=True,
                    norm="linf", eps=eps, margin_lower=0.5)


def _write(path: Path, rows: list[BoundRow], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows) + tail)


def test_torn_last_line_is_dropped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.jsonl"
    rows = [_bound_row(0, 0.1), _bound_row(0, 0.2), _bound_row(1, 0.1)]
    _write(path, rows, tail='{"index": 1, "ep')
    assert read_rows(path, BoundRow) == rows
    assert "line 4 is incomplete" in capsys.readouterr().err
    assert read_complete_rows(path, BoundRow, rows_per_example=2) == rows[:2]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    rows = [_bound_row(0, 0.1), _bound_row(1, 0.1), _bound_row(2, 0.1)]
    text = "".join(json.dumps(r.to_json()) + "\n" for r in rows)
    lines = text.splitlines(keepends=True)
    path.write_text(lines[0] + '{"index": 1, garbage\n' + lines[2])
    with pytest.raises(RobustCertError, match="line 2 is not valid JSON"):
        read_rows(path, BoundRow)
    bad_field = json.dumps({**rows[1].to_json(), "eps": "wide"})
    path.write_text(lines[0] + bad_field + "\n" + lines[2])
    with pytest.raises(RobustCertError, match=r"line 2: field 'eps' should be float"):
        read_rows(path, BoundRow)
    unknown = json.dumps({**rows[1].to_json(), "epz": 1})
    path.write_text(lines[0] + unknown + "\n" + lines[2])
    with pytest.raises(RobustCertError, match="unknown field"):
        read_rows(path, BoundRow)


def test_existing_run_needs_resume_or_force(digits_gaussian_model: Path, tmp_path: Path) -> None:
    _run(digits_gaussian_model, tmp_path, limit=2)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RobustCertError, match="--resume.*--force"):
        _run(digits_gaussian_model, tmp_path, limit=2)
    with pytest.raises(RobustCertError, match="differs"):
        _run(digits_gaussian_model, tmp_path, limit=3, resume=True)
    summary = _run(digits_gaussian_model, tmp_path, limit=3, force=True)
    assert summary["n_examples"] == 3
    assert len(read_rows(tmp_path / "results.jsonl", SmoothingRow)) == 3
    assert (tmp_path / "notes.txt").read_text() == "mine"  # --force removes only the run's own files


def test_select_and_parse_indices_errors() -> None:
    assert select_indices(10, limit=3) == [0, 1, 2]
    assert parse_indices("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(RobustCertError, match="outside"):
        select_indices(10, indices=[3, 10])
    with pytest.raises(RobustCertError, match="either"):
        select_indices(10, limit=2, indices=[1])
    with pytest.raises(RobustCertError, match="twice"):
        select_indices(10, indices=[1, 1])
    with pytest.raises(RobustCertError, match="backwards"):
        parse_indices("5-2")
    with pytest.raises(RobustCertError, match="must look like"):
        parse_indices("a-b")
    with pytest.raises(RobustCertError, match="no example"):
        select_indices(10, indices=parse_indices(","))


def test_kill_9_with_a_torn_line_then_resume_equals_an_uninterrupted_run(
    digits_gaussian_model: Path, tmp_path: Path
) -> None:
    args = [sys.executable, "-m", "robustcert", "certify", "smoothing", "--model", str(digits_gaussian_model),
            "--limit", "40", "--n0", "50", "--n", "3000", "--batch", "100"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    subprocess.run([*args, "--out", str(reference)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    results = killed / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # A kill during a write leaves a torn last line: make sure this run has one.
    text = results.read_text()
    results.write_text(text + text.splitlines(keepends=True)[-1][:37])
    partial = read_rows(results, SmoothingRow)
    assert 5 <= len(partial) < 40, "the run must be killed mid-way"
    done = subprocess.run([*args, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = _rows_without_time(results)
    assert sorted(r["index"] for r in resumed) == list(range(40))  # none lost, none duplicated
    assert sorted(resumed, key=lambda r: r["index"]) == _rows_without_time(reference / "results.jsonl")
    assert summarize(read_rows(results, SmoothingRow), "smoothing")["n_examples"] == 40
