"""Run engine: rows match the summary, runs are deterministic, and a killed run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustcert.errors import RobustCertError
from robustcert.report.summary import summarize
from robustcert.runs import read_rows, select_indices
from robustcert.runs.store import read_complete_rows
from robustcert.workflows import certify_run

SMOOTHING = {"sigma": None, "n0": 50, "n": 500, "alpha": 0.001, "batch": 200}


def _rows_without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_rows(path)]


def _run(model: Path, out: Path, resume: bool = False, limit: int = 12, seed: int = 0) -> dict:
    return certify_run(
        method="smoothing",
        model_dir=model,
        dataset=None,
        split="test",
        data_dir=None,
        params=dict(SMOOTHING),
        limit=limit,
        indices=None,
        seed=seed,
        resume=resume,
        out=out,
        show_progress=False,
        quiet=True,
    )


def test_run_files_and_summary_agree_with_rows(digits_gaussian_model: Path, tmp_path: Path) -> None:
    summary = _run(digits_gaussian_model, tmp_path)
    for name in ("run.json", "results.jsonl", "summary.json", "curve.png"):
        assert (tmp_path / name).exists(), name
    rows = read_rows(tmp_path / "results.jsonl")
    assert [r["index"] for r in rows] == list(range(12))
    for row in rows:
        for field in (
            "index",
            "label",
            "prediction",
            "correct",
            "certified",
            "seconds",
            "method",
            "radius",
            "sigma",
            "n0",
            "n",
            "count",
            "pA_lower",
            "alpha",
        ):
            assert field in row
        assert row["sigma"] == 0.25  # taken from the model's training metadata
        assert row["correct"] == (row["prediction"] == row["label"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["n_examples"] == 12
    for radius, acc in on_disk["certified_accuracy"].items():
        expected = sum(r["correct"] and r["radius"] >= float(radius) for r in rows) / 12
        assert acc == pytest.approx(expected)
    assert "0.0" in on_disk["certified_accuracy"] and "0.25" in on_disk["certified_accuracy"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["indices"] == list(range(12)) and len(run["model_sha256"]) == 64 and run["seed"] == 0


def test_same_seed_same_rows(digits_gaussian_model: Path, tmp_path: Path) -> None:
    _run(digits_gaussian_model, tmp_path / "a", limit=6)
    _run(digits_gaussian_model, tmp_path / "b", limit=6)
    _run(digits_gaussian_model, tmp_path / "c", limit=6, seed=1)
    a, b, c = (_rows_without_time(tmp_path / d / "results.jsonl") for d in "abc")
    assert a == b
    assert [r["count"] for r in a] != [r["count"] for r in c]


def test_example_rows_do_not_depend_on_which_examples_run(
    digits_gaussian_model: Path, tmp_path: Path
) -> None:
    _run(digits_gaussian_model, tmp_path / "all", limit=8)
    certify_run(
        method="smoothing",
        model_dir=digits_gaussian_model,
        dataset=None,
        split="test",
        data_dir=None,
        params=dict(SMOOTHING),
        limit=None,
        indices="5,2",
        seed=0,
        resume=False,
        out=tmp_path / "some",
        show_progress=False,
        quiet=True,
    )
    full = {r["index"]: r for r in _rows_without_time(tmp_path / "all" / "results.jsonl")}
    for row in _rows_without_time(tmp_path / "some" / "results.jsonl"):
        assert row == full[row["index"]]


def test_torn_last_line_and_partial_example_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    rows = [{"index": 0, "eps": 0.1}, {"index": 0, "eps": 0.2}, {"index": 1, "eps": 0.1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"index": 1, "ep')
    assert read_complete_rows(path, rows_per_example=2) == rows[:2]


def test_existing_run_needs_resume(digits_gaussian_model: Path, tmp_path: Path) -> None:
    _run(digits_gaussian_model, tmp_path, limit=2)
    with pytest.raises(RobustCertError, match="--resume"):
        _run(digits_gaussian_model, tmp_path, limit=2)
    with pytest.raises(RobustCertError, match="differs"):
        _run(digits_gaussian_model, tmp_path, limit=3, resume=True)


def test_select_indices_errors() -> None:
    assert select_indices(10, limit=3) == [0, 1, 2]
    with pytest.raises(RobustCertError, match="outside"):
        select_indices(10, indices=[3, 10])
    with pytest.raises(RobustCertError, match="either"):
        select_indices(10, limit=2, indices=[1])
    with pytest.raises(RobustCertError, match="twice"):
        select_indices(10, indices=[1, 1])


def test_killed_subprocess_resumes_without_loss_or_duplicates(
    digits_gaussian_model: Path, tmp_path: Path
) -> None:
    args = [
        sys.executable,
        "-m",
        "robustcert",
        "certify",
        "smoothing",
        "--model",
        str(digits_gaussian_model),
        "--limit",
        "40",
        "--n0",
        "50",
        "--n",
        "3000",
        "--batch",
        "100",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    subprocess.run([*args, "--out", str(reference)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*args, "--out", str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    results = killed / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_rows(results)
    assert 5 <= len(partial) < 40, "the run must be killed mid-way"
    subprocess.run([*args, "--out", str(killed), "--resume"], check=True, env=env, capture_output=True)
    resumed = _rows_without_time(results)
    assert sorted(r["index"] for r in resumed) == list(range(40))  # none lost, none duplicated
    assert sorted(resumed, key=lambda r: r["index"]) == _rows_without_time(reference / "results.jsonl")
    assert summarize(read_rows(results))["n_examples"] == 40
