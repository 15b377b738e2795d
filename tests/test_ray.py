"""Ray backend against real local clusters on 127.0.0.1 that the tests start and stop themselves.

Same rows as serial (on a `ray start --head` cluster and on a local `--workers` one); a killed worker
loses and duplicates nothing; connecting to a dead or wrong address fails within the time-out.

Hermetic: every Ray process gets its own temp dir and an environment without RAY_ADDRESS/RAY_AUTH_MODE,
with a test-private auth token (RAY_AUTH_TOKEN_PATH) or a private HOME, so neither ~/.ray nor another
cluster on the machine matters. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray keep 127.0.0.1 as the node
address instead of replacing it by the machine's network address. Clusters are stopped by killing their
own process session, never with `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from robustcert.errors import RobustCertError
from robustcert.rows import SmoothingRow
from robustcert.runs import read_rows
from robustcert.runs.ray_backend import connect, parse_address

pytestmark = pytest.mark.ray
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **extra)
    return env


@pytest.fixture(scope="module")
def token_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """RAY_AUTH_MODE unset and a token available: `ray start --head` then runs in token mode (the case
    where a driver given HOST:PORT used to be refused with InvalidAuthToken)."""
    token = tmp_path_factory.mktemp("ray_token") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return _ray_env(RAY_AUTH_TOKEN_PATH=str(token))


@pytest.fixture(scope="module")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, token_env: dict[str, str]
) -> Iterator[tuple[str, int]]:
    """(address, session id) of a `ray start --head --block` cluster with 2 CPUs, in a session of its own."""
    if not RAY.exists():
        pytest.fail("the ray CLI is missing from the venv: install robustcert[ray] (make test does)")
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    log = temp / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port),
                "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
                "--disable-usage-stats", "--temp-dir", str(temp / "t"),
            ],
            env=token_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"`ray start --head` did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        assert "Token authentication is enabled" in log.read_text(errors="replace")
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        # children of the session may outlive its leader for a moment
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rows(path: Path) -> list[dict]:
    rows = [{k: v for k, v in r.to_json().items() if k != "seconds"} for r in read_rows(path, SmoothingRow)]
    return sorted(rows, key=lambda r: (r["index"], r.get("eps", 0.0)))


def _certify(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "robustcert", "certify", "smoothing", "--model", str(model),
        "--n0", "50", "--batch", "200", "--out", str(out), *extra,
    ]  # fmt: skip


def _run(cmd: list[str], env: dict[str, str], timeout: float = 600) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd[3:5]} exited {done.returncode}:\n{done.stderr[-3000:]}"


def test_ray_rows_equal_serial_rows(
    ray_cluster: tuple[str, int], token_env: dict[str, str], digits_gaussian_model: Path, tmp_path: Path
) -> None:
    address, _ = ray_cluster
    args = ("--limit", "16", "--n", "1000")
    _run(_certify(digits_gaussian_model, tmp_path / "serial", *args), token_env)
    _run(_certify(digits_gaussian_model, tmp_path / "ray", *args, "--ray-address", address), token_env)
    serial, distributed = (
        _rows(tmp_path / "serial" / "results.jsonl"),
        _rows(tmp_path / "ray" / "results.jsonl"),
    )
    assert len(serial) == 16
    assert serial == distributed
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["method"] == "smoothing"


def test_local_ray_start_on_a_fresh_home(digits_gaussian_model: Path, tmp_path: Path) -> None:
    """`--workers 2` starts a local Ray (token auth by default in Ray 2.60) with no token anywhere yet."""
    home = tmp_path / "home"
    home.mkdir()
    env = _ray_env(HOME=str(home))
    args = ("--limit", "6", "--n", "500")
    _run(_certify(digits_gaussian_model, tmp_path / "serial", *args), env)
    _run(_certify(digits_gaussian_model, tmp_path / "local", *args, "--workers", "2"), env)
    assert _rows(tmp_path / "local" / "results.jsonl") == _rows(tmp_path / "serial" / "results.jsonl")


def test_killed_worker_loses_no_row_and_duplicates_none(
    ray_cluster: tuple[str, int], token_env: dict[str, str], digits_gaussian_model: Path, tmp_path: Path
) -> None:
    address, session = ray_cluster
    args = ("--limit", "30", "--n", "20000")
    proc = subprocess.Popen(
        _certify(digits_gaussian_model, tmp_path / "ray", *args, "--ray-address", address),
        env=token_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killed = False
    deadline = time.time() + 400
    results = tmp_path / "ray" / "results.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            # only workers of this test's cluster: they run in its session
            found = subprocess.run(
                ["pgrep", "-s", str(session), "-f", "ray::_run_shard"], capture_output=True, text=True
            ).stdout.split()
            if found:
                os.kill(int(found[0]), signal.SIGKILL)
                killed = True
                break
        time.sleep(0.1)
    assert killed, "no running worker task was found to kill"
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err.decode()[-2000:]
    rows = _rows(results)
    assert [r["index"] for r in rows] == list(range(30))  # complete and unique
    _run(_certify(digits_gaussian_model, tmp_path / "serial", *args), token_env)
    assert rows == _rows(tmp_path / "serial" / "results.jsonl")


def test_nothing_listening_fails_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(RobustCertError) as info:
        connect("127.0.0.1:1", connect_timeout=5)
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert message.startswith(
        "cannot reach a Ray cluster at 127.0.0.1:1 within 5 s; start one with `ray start --head` or check the address"
    )
    assert "\n" not in message


def test_open_port_that_is_not_ray_fails_within_the_timeout_and_the_process_exits(tmp_path: Path) -> None:
    """A listener that accepts and never answers: the ray.init watchdog fires, and nothing keeps the
    process alive afterwards (the CLI exits with status 2 right after such an error)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        script = (
            "import sys, time\n"
            "from robustcert.errors import RobustCertError\n"
            "from robustcert.runs.ray_backend import connect\n"
            "t = time.monotonic()\n"
            "try:\n"
            f"    connect({address!r}, connect_timeout=3)\n"
            "except RobustCertError as e:\n"
            "    print(f'{time.monotonic() - t:.2f}'); print(e); sys.exit(2)\n"
        )
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=_ray_env(HOME=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        wall = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    seconds, message = done.stdout.splitlines()[:2]
    assert 2.9 < float(seconds) < 4.5  # the connect itself honoured its 3 s budget (+ thread scheduling)
    assert wall < 40  # and the abandoned attempt did not hold the process (imports take a few s)
    assert message.startswith(f"cannot reach a Ray cluster at {address} within 3 s")
    assert "no Ray cluster answered" in message


@pytest.mark.parametrize(
    ("address", "pattern"),
    [
        ("localhost", "HOST:PORT"),
        ("127.0.0.1:", "HOST:PORT"),
        (":6379", "HOST:PORT"),
        ("127.0.0.1:http", "HOST:PORT"),
        ("127.0.0.1:70000", "1..65535"),
        ("127.0.0.1:0", "1..65535"),
    ],
)
def test_bad_addresses_are_refused_before_any_connection(address: str, pattern: str) -> None:
    with pytest.raises(RobustCertError, match=pattern):
        connect(address, connect_timeout=5)


def test_address_forms() -> None:
    assert parse_address("auto") is None
    assert parse_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address("ray://head:10001") == ("head", 10001)


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_connect_timeout(timeout: float) -> None:
    with pytest.raises(RobustCertError, match="connect timeout must be a finite number"):
        connect("127.0.0.1:1", connect_timeout=timeout)


def test_zero_workers_refused() -> None:
    with pytest.raises(RobustCertError, match="--workers must be >= 1"):
        connect(None, workers=0)


def test_workers_with_an_address_is_refused() -> None:
    with pytest.raises(RobustCertError, match="pass only one of them"):
        connect("127.0.0.1:1", workers=2)
