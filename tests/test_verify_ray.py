"""``robustcert verify --instances`` on Ray: the rows (instance, onnx, vnnlib, answer) and counterexamples
equal a serial run's; a killed run resumed on Ray (last rows gone, a torn last line) ends with every
instance exactly once; a non-input error in a task stops the run as serially (rows written stay);
``--workers`` / ``--ray-address`` without ``--instances`` and an unreachable address are one-line errors.

One local Ray (2 CPUs) is started in this process for the module and reused by every ``--workers 2`` run
(``connect`` reuses an initialised Ray). Hermetic as tests/test_ray.py: no RAY_* variable of the caller's
environment and a test-private auth token (RAY_AUTH_TOKEN_PATH).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import one_error_line
from test_verify_cli import CENTER, _export, _label, _mlp, _robustness_spec, _rows

from robustcert.cli import main
from robustcert.errors import RobustCertError
from robustcert.runs.ray_backend import connect
from robustcert.verify import pipeline

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]

EPS = [0.002, 0.4, 0.01, 0.2, 0.03]  # unsat, sat, unsat, sat, unsat; then one `error` instance
ANSWERS = ["unsat", "sat", "unsat", "sat", "unsat", "error"]
KEY = ("instance", "onnx", "vnnlib", "answer")


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray with 2 CPUs in this process for the module, shut down after it."""
    token = tmp_path_factory.mktemp("ray_token") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    with pytest.MonkeyPatch.context() as mp:
        for name in [k for k in os.environ if k.startswith("RAY_")]:
            mp.delenv(name)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        ray = connect(None, workers=2)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def instances_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """instances.csv over one tiny classifier: five robustness specs (sat and unsat) and one spec that
    declares the wrong number of inputs (answer ``error``)."""
    root = tmp_path_factory.mktemp("verify_ray")
    net = _mlp(0, [4, 16, 16, 3])
    _export(net, root / "cls.onnx", 4)
    (root / "specs").mkdir()
    label = _label(net, CENTER)
    rows = []
    for k, eps in enumerate(EPS):
        _robustness_spec(root / "specs" / f"s{k}.vnnlib", CENTER, eps, label, 3)
        rows.append(f"cls.onnx,specs/s{k}.vnnlib,30")
    _robustness_spec(root / "specs" / "wrong.vnnlib", [0.5] * 5, 0.01, 0, 3)
    rows.append("cls.onnx,specs/wrong.vnnlib,30")
    (root / "instances.csv").write_text("\n".join(rows) + "\n")
    return root / "instances.csv"


def _key(path: Path) -> list[tuple[str, ...]]:
    """The rows of results.csv without the seconds, in instance order; asserts each instance once."""
    rows = sorted((tuple(r[k] for k in KEY) for r in _rows(path)), key=lambda r: int(r[0]))
    assert len({r[0] for r in rows}) == len(rows), rows
    return rows


def _cex(out: Path) -> dict[str, str]:
    folder = out / "counterexamples"
    return {p.name: p.read_text() for p in sorted(folder.iterdir())} if folder.exists() else {}


@pytest.fixture(scope="module")
def serial_out(instances_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    assert main(["verify", "--instances", str(instances_csv), "--out", str(out), "--seed", "3"]) == 0
    assert [r[3] for r in _key(out / "results.csv")] == ANSWERS
    return out


@pytest.fixture(scope="module")
def ray_out(ray_session: None, instances_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "out"
    argv = ["verify", "--instances", str(instances_csv), "--out", str(out), "--seed", "3", "--workers", "2"]
    assert main(argv) == 0
    return out


def test_unreachable_address_is_the_one_line_error_of_certify(
    instances_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # an initialised Ray (this module's session) would be reused; the address must be tried as by a new driver
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    with pytest.raises(RobustCertError) as expected:  # what certify / evaluate report (same connect)
        connect(address)
    argv = [
        "verify",
        "--instances",
        str(instances_csv),
        "--out",
        str(tmp_path / "o"),
        "--ray-address",
        address,
    ]
    assert one_error_line(argv, capsys) == f"error: {expected.value}"
    assert "cannot reach a Ray cluster" in str(expected.value)


@pytest.mark.parametrize("option", [["--workers", "2"], ["--ray-address", "auto"]])
def test_ray_options_need_instances(
    instances_csv: Path, option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    root = instances_csv.parent
    argv = ["verify", str(root / "cls.onnx"), str(root / "specs" / "s0.vnnlib"), *option]
    assert "are for --instances runs" in one_error_line(argv, capsys)


def test_ray_rows_equal_serial(serial_out: Path, ray_out: Path) -> None:
    assert _key(ray_out / "results.csv") == _key(serial_out / "results.csv")
    assert [r[3] for r in _key(ray_out / "results.csv")] == ANSWERS
    assert _cex(ray_out) == _cex(serial_out)
    assert set(_cex(ray_out)) == {"1.txt", "3.txt"}


def test_ray_resume_after_a_kill_loses_and_repeats_nothing(
    serial_out: Path, ray_out: Path, instances_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(ray_out, out)
    shutil.rmtree(out / "counterexamples")
    header, *rows = (out / "results.csv").read_text().splitlines(keepends=True)
    rows.sort(key=lambda line: int(line.split(",")[0]))  # Ray wrote them as they finished
    # instances 0-2 survive the "kill"; 3 (sat), 4 and 5 (error) are lost, the write of 3 torn halfway
    kept, lost = [header, *rows[:3]], rows[3:]
    (out / "results.csv").write_text("".join(kept) + lost[0][: len(lost[0]) // 2])
    kept_instances = {line.split(",")[0] for line in kept[1:]}
    capsys.readouterr()
    argv = ["verify", "--instances", str(instances_csv), "--out", str(out), "--seed", "3", "--workers", "2"]
    assert main([*argv, "--resume"]) == 0
    captured = capsys.readouterr()
    assert "incomplete" in captured.err
    ran = sorted(line.split(":")[0] for line in captured.out.splitlines() if ": " in line and " s) " in line)
    assert ran == sorted({str(i) for i in range(len(ANSWERS))} - kept_instances)  # only the missing ones
    assert _key(out / "results.csv") == _key(serial_out / "results.csv")
    # the counterexample of the sat instance that ran again is written again, identical
    assert _cex(out) == {"3.txt": _cex(serial_out)["3.txt"]}


def test_internal_error_in_a_task_stops_the_run_rows_written_stay(
    serial_out: Path,
    ray_session: None,
    instances_csv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = pipeline.verify_files

    def breaks_on_s2(onnx, vnnlib, timeout, seed=0):  # pickled by value into the Ray tasks
        if Path(vnnlib).name == "s2.vnnlib":
            raise RuntimeError("broken")
        return real(onnx, vnnlib, timeout, seed)

    monkeypatch.setattr(pipeline, "verify_files", breaks_on_s2)
    out = tmp_path / "out"
    argv = ["verify", "--instances", str(instances_csv), "--out", str(out), "--seed", "3", "--workers", "2"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 1  # as serially: the task's own exception, one line, status 1
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "error: internal error (RuntimeError: broken); rerun with --debug for the traceback and report it"
    )
    written = _key(out / "results.csv")
    assert "2" not in {r[0] for r in written}
    assert set(written) <= set(_key(serial_out / "results.csv"))
    monkeypatch.setattr(pipeline, "verify_files", real)
    assert main([*argv, "--resume"]) == 0
    assert _key(out / "results.csv") == _key(serial_out / "results.csv")
