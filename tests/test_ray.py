"""Ray backend against a real local cluster on 127.0.0.1: same rows as serial; a killed worker loses nothing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustcert.runs import read_rows

pytestmark = pytest.mark.ray
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not RAY.exists():
        pytest.fail("the ray CLI is missing from the venv: install robustcert[ray]")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    temp = tmp_path_factory.mktemp("ray")
    subprocess.run(
        [
            str(RAY),
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            str(temp),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _rows(path: Path) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in read_rows(path)]
    return sorted(rows, key=lambda r: (r["index"], r.get("eps", 0.0)))


def _certify(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "robustcert",
        "certify",
        "smoothing",
        "--model",
        str(model),
        "--n0",
        "50",
        "--batch",
        "200",
        "--out",
        str(out),
        *extra,
    ]


def test_ray_rows_equal_serial_rows(ray_cluster: str, digits_gaussian_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        _certify(digits_gaussian_model, tmp_path / "serial", "--limit", "16", "--n", "1000"),
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        _certify(
            digits_gaussian_model,
            tmp_path / "ray",
            "--limit",
            "16",
            "--n",
            "1000",
            "--ray-address",
            ray_cluster,
        ),
        check=True,
        env=env,
        capture_output=True,
    )
    serial, distributed = (
        _rows(tmp_path / "serial" / "results.jsonl"),
        _rows(tmp_path / "ray" / "results.jsonl"),
    )
    assert len(serial) == 16
    assert serial == distributed


def test_killed_worker_loses_no_row_and_duplicates_none(
    ray_cluster: str, digits_gaussian_model: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    args = ("--limit", "30", "--n", "20000")
    proc = subprocess.Popen(
        _certify(digits_gaussian_model, tmp_path / "ray", *args, "--ray-address", ray_cluster),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killed = False
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        results = tmp_path / "ray" / "results.jsonl"
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            found = subprocess.run(
                ["pgrep", "-f", "ray::_run_shard"], capture_output=True, text=True
            ).stdout.split()
            if found:
                os.kill(int(found[0]), 9)
                killed = True
                break
        time.sleep(0.1)
    assert killed, "no running worker task was found to kill"
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    rows = _rows(tmp_path / "ray" / "results.jsonl")
    assert [r["index"] for r in rows] == list(range(30))  # complete and unique
    subprocess.run(
        _certify(digits_gaussian_model, tmp_path / "serial", *args), check=True, env=env, capture_output=True
    )
    assert rows == _rows(tmp_path / "serial" / "results.jsonl")
