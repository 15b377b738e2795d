"""Bad input through the real command line (issue 8): each case runs ``python -m robustcert …`` in a
subprocess and must exit with status 2, print exactly one line on stderr starting ``error: `` that
contains the expected words, and show no ``Traceback`` on either stream.

Every case gets its own working directory (the subprocess's cwd), prepared by the case's ``prep``
function; ``{model}`` in an argument is the path of a small model trained on digits (the session fixture
``digits_standard_model``). The subprocesses of all selected cases are started together, a few at a time,
by one module fixture (each one imports torch, so one after another they would take minutes); each test
then checks its own case's outcome. Rows marked ``slow`` (beyond the cases issue 8 names) run only with
``pytest -m ""`` (``make test-all``), so that the default run stays near two minutes on 2 cores.

A known bug in a file outside the CLI is an ``xfail(strict=True)`` row naming the function at fault, so
the row turns into a failure ("XPASS(strict)") once the bug is fixed and the mark can go.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TIMEOUT = 180  # seconds for one subprocess; generous, for a loaded 2-core machine
RAY_LIMIT = 60  # an unreachable Ray address must fail within this many seconds

Prep = Callable[[Path, Path, Path], None]  # (case dir, model dir, finished run dir)


# ---------------------------------------------------------------------------------------------------------
# What a case prepares in its working directory
# ---------------------------------------------------------------------------------------------------------


def _nothing(d: Path, model: Path, run: Path) -> None:
    pass


def _npz(name: str = "data.npz", **arrays: Any) -> Prep:
    def prep(d: Path, model: Path, run: Path) -> None:
        np.savez(d / name, **arrays)

    return prep


def _file(name: str, content: str | bytes) -> Prep:
    def prep(d: Path, model: Path, run: Path) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return prep


def _dir(name: str) -> Prep:
    def prep(d: Path, model: Path, run: Path) -> None:
        (d / name).mkdir()

    return prep


def _both(*preps: Prep) -> Prep:
    def prep(d: Path, model: Path, run: Path) -> None:
        for one in preps:
            one(d, model, run)

    return prep


def _model_copy(change: Callable[[Path], None]) -> Prep:
    """A copy of the model directory as ``./model``, then ``change(./model)``."""

    def prep(d: Path, model: Path, run: Path) -> None:
        shutil.copytree(model, d / "model")
        change(d / "model")

    return prep


def _run_copy(change: Callable[[Path], None] = lambda r: None) -> Prep:
    """A copy of a finished crown run (--limit 2 --eps 0.01,0.02: 4 rows) as ``./run``, then ``change``."""

    def prep(d: Path, model: Path, run: Path) -> None:
        shutil.copytree(run, d / "run")
        change(d / "run")

    return prep


def _corrupt_line(number: int) -> Callable[[Path], None]:
    def change(run_dir: Path) -> None:
        path = run_dir / "results.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        lines[number - 1] = lines[number - 1][:25] + "\n"  # cut in the middle of the JSON, newline kept
        path.write_text("".join(lines))

    return change


def _config(**replace: str) -> str:
    """A small valid evaluate config with some lines replaced (old text → new text)."""
    text = (
        '[data]\ndataset = "digits"\nlimit = 2\n\n'
        '[[model]]\nname = "m"\ntrain = { arch = "mlp-2x64", method = "standard", epochs = 1 }\n\n'
        "[threat.linf]\neps = [0.0, 0.01]\ntarget = 0.01\n\n"
        "[methods]\nibp = {}\n"
    )
    for old, new in replace.items():
        old = {"epochs": "epochs = 1", "methods": "[methods]", "ibp": "ibp = {}", "target": "target = 0.01"}[
            old
        ]
        assert old in text, old
        text = text.replace(old, new)
    return text


def _images(n: int, side: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, side, side)).astype(np.float32)


def _with_nan() -> np.ndarray:
    x = _images(6)
    x[2, 0, 3, 3] = np.nan
    return x


LABELS = np.arange(6) % 10
FILE = _file("some_file", "not a directory\n")  # a path under a regular FILE cannot be created, even by root


# ---------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: tuple[str, ...]  # every one must occur in the error line
    prep: Prep = _nothing
    marks: tuple[Any, ...] = ()
    max_seconds: float | None = None


def case(
    id: str,
    argv: str | list[str],
    *expect: str,
    prep: Prep = _nothing,
    marks: tuple[Any, ...] = (),
    max_seconds: float | None = None,
    slow: bool = False,
) -> Case:
    """One row; ``slow``: beyond the cases issue 8 names, run by ``pytest -m ""`` / ``make test-all`` only
    (each row is a subprocess that imports torch, ~3 s of CPU; the default rows fit in ~2 minutes)."""
    args = tuple(argv.split()) if isinstance(argv, str) else tuple(argv)
    return Case(id, args, expect, prep, marks + ((pytest.mark.slow,) if slow else ()), max_seconds)


def known_bug(where: str, what: str) -> tuple[Any, ...]:
    return (pytest.mark.xfail(strict=True, reason=f"bug in {where}: {what}"),)


CERTIFY = "certify crown --model {model} --out out"
SMOOTHING = "certify smoothing --model {model} --sigma 0.25 --out out"
RUN = "certify crown --model {model} --limit 2 --eps 0.01,0.02 --out run"  # the arguments of the finished run

# fmt: off
CASES = [
    # --- usage errors: argparse, one line with a pointer to the right --help --------------------------------
    case("misspelt-option", f"{CERTIFY} --epss 0.1", "unrecognized arguments: --epss", "did you mean --eps?",
         "robustcert certify crown --help"),
    case("misspelt-global-option", "--debugg certify crown --model {model}",
         "unrecognized arguments: --debugg", slow=True),
    case("stray-positional", f"{CERTIFY} extra", "unrecognized arguments: extra", slow=True),
    case("missing-required-option", "certify crown --out out", "required: --model"),
    case("missing-option-value", f"{CERTIFY} --eps", "argument --eps: expected one argument", slow=True),
    case("missing-command", [], "required: COMMAND", slow=True),
    case("missing-method", "certify", "required: METHOD", "robustcert certify --help", slow=True),
    case("misspelt-command", "certifiy crown --model {model}", "invalid choice: 'certifiy'", "certify"),
    case("misspelt-method", "certify crwn --model {model}", "invalid choice: 'crwn'", "crown"),
    case("report-without-dir", "report", "required: DIR", slow=True),
    case("resume-and-force", f"{RUN} --resume --force", "--force: not allowed with argument --resume",
         prep=_run_copy()),
    # --- bad values -----------------------------------------------------------------------------------------
    case("indices-backwards", f"{CERTIFY} --indices 5-2", "'5-2' runs backwards", "2-5"),
    case("indices-not-numbers", f"{CERTIFY} --indices abc", "--indices must look like", slow=True),
    case("indices-outside-split", f"{CERTIFY} --indices 0-99999", "outside the split", "0..359", slow=True),
    case("indices-and-limit", f"{CERTIFY} --indices 1 --limit 3", "either --limit or --indices", slow=True),
    case("indices-open-range", f"{CERTIFY} --indices 0-", "--indices"),
    case("steps-zero", "attack pgd --model {model} --steps 0 --out out", "--steps must be >= 1"),
    case("eps-negative", f"{CERTIFY} --eps -1", "--eps must be >= 0"),
    case("eps-not-a-number", f"{CERTIFY} --eps abc", "--eps must be a number", "'abc'", slow=True),
    case("eps-nan", f"{CERTIFY} --eps nan", "--eps must be a finite number", slow=True),
    case("eps-twice", f"{CERTIFY} --eps 0.1,0.1", "budget twice", slow=True),
    case("sigma-zero", "certify smoothing --model {model} --sigma 0 --out out", "--sigma must be > 0"),
    case("alpha-above-one", f"{SMOOTHING} --alpha 1.5", "--alpha must be < 1"),
    case("n0-zero", f"{SMOOTHING} --n0 0", "--n0 must be >= 1"),
    case("n-not-whole", f"{SMOOTHING} --n 1.5", "--n must be a whole number", slow=True),
    case("smoothing-without-sigma", "certify smoothing --model {model} --out out", "needs --sigma",
         "not trained with Gaussian noise"),
    case("limit-zero", f"{CERTIFY} --limit 0", "--limit", "whole number >= 1", "'0'"),
    case("norm-l3", f"{CERTIFY} --norm l3", "--norm must be one of linf, l2", "'l3'"),
    case("threads-zero", f"{CERTIFY} --threads 0", "--threads", "whole number >= 1"),
    case("workers-zero", f"{CERTIFY} --workers 0", "--workers", "whole number >= 1", slow=True),
    case("seed-negative", f"{CERTIFY} --seed -1", "--seed", "whole number >= 0", slow=True),
    case("split-unknown", f"{CERTIFY} --split val", "invalid choice: 'val'", slow=True),
    case("exact-l2", "certify exact --model {model} --norm l2 --out out", "exact supports --norm linf only"),
    case("time-limit-zero", "certify exact --model {model} --time-limit 0 --out out",
         "--time-limit must be > 0", slow=True),
    case("ray-address-malformed", f"{CERTIFY} --limit 2 --ray-address nowhere", "Ray address must be",
         "HOST:PORT", slow=True),
    case("ray-unreachable", f"{CERTIFY} --limit 2 --ray-address 127.0.0.1:1", "127.0.0.1:1", "ray start",
         marks=(pytest.mark.ray,), max_seconds=RAY_LIMIT),
    # --- train ----------------------------------------------------------------------------------------------
    case("train-ibp-l2", "train --arch mlp-2x64 --method ibp --norm l2 --epochs 1 --out m",
         "ibp trains against L∞ balls only", "--norm linf"),
    case("train-unknown-method", "train --method fgsm --out m", "unknown training method 'fgsm'", "crown-ibp",
         slow=True),
    case("train-unknown-arch", "train --arch resnet9000 --epochs 1 --out m",
         "unknown architecture 'resnet9000'", "cnn-small"),
    case("train-epochs-zero", "train --arch mlp-2x64 --epochs 0 --out m", "--epochs must be an integer >= 1",
         slow=True),
    case("train-sigma-zero", "train --method gaussian --sigma 0 --out m",
         "--sigma must be a finite number > 0", slow=True),
    case("train-existing-run", "train --arch mlp-2x64 --epochs 1 --out model", "already holds a training run",
         "--resume", prep=_model_copy(lambda m: None), slow=True),
    case("train-out-under-file", "train --arch mlp-2x64 --epochs 1 --out some_file/sub",
         "some_file is a file", "choose another --out", prep=FILE),
    # --- data -----------------------------------------------------------------------------------------------
    case("dataset-unknown", f"{CERTIFY} --dataset mnist", "unknown data set 'mnist'", "npz:PATH", slow=True),
    case("npz-missing-split", f"{CERTIFY} --dataset npz:data.npz --split train", "has no train split",
         "x_train/y_train", "x_test", prep=_npz(x_test=_images(6), y_test=LABELS, num_classes=10)),
    case("train-npz-missing-split", "train --arch mlp-2x64 --epochs 1 --dataset npz:data.npz --out m",
         "has no train split", prep=_npz(x_test=_images(6), y_test=LABELS, num_classes=10), slow=True),
    case("npz-empty-archive", f"{CERTIFY} --dataset npz:data.npz", "has no test split", "has: none",
         prep=_npz()),
    case("npz-zero-examples", f"{CERTIFY} --dataset npz:data.npz", "x_test is empty",
         prep=_npz(x_test=np.zeros((0, 1, 8, 8), np.float32), y_test=np.zeros(0, np.int64), num_classes=10),
         slow=True),
    case("npz-not-npz", f"{CERTIFY} --dataset npz:data.npz", "cannot read", "numpy.savez",
         prep=_file("data.npz", "hello, not a zip\n"), slow=True),
    case("npz-missing-file", f"{CERTIFY} --dataset npz:nowhere.npz", "nowhere.npz does not exist", slow=True),
    case("npz-wrong-shape", f"{CERTIFY} --dataset npz:data.npz", "[1, 4, 4]", "[1, 8, 8]",
         prep=_npz(x_test=_images(6, side=4), y_test=LABELS, num_classes=10)),
    case("npz-nan", f"{CERTIFY} --dataset npz:data.npz", "NaN", "example 2",
         prep=_npz(x_test=_with_nan(), y_test=LABELS, num_classes=10)),
    case("npz-label-out-of-range", f"{CERTIFY} --dataset npz:data.npz", "labels must be in 0..9", "12",
         prep=_npz(x_test=_images(6), y_test=np.array([0, 1, 2, 3, 4, 12]), num_classes=10)),
    case("npz-not-unit-range", f"{CERTIFY} --dataset npz:data.npz", "input domain excludes the data", "by 255",
         prep=_npz(x_test=_images(6) * 255, y_test=LABELS, num_classes=10), slow=True),
    case("npz-class-count", f"{CERTIFY} --dataset npz:data.npz", "3 classes", "the model has 10",
         prep=_npz(x_test=_images(6), y_test=np.arange(6) % 3), slow=True),
    case("fashion-mnist-missing", f"{CERTIFY} --dataset fashion-mnist --data-dir empty",
         "apt-get install -y dataset-fashion-mnist", prep=_dir("empty")),
    case("train-fashion-mnist-missing", "train --dataset fashion-mnist --data-dir nowhere --out m",
         "apt-get install -y dataset-fashion-mnist", slow=True),
    # --- model directories ----------------------------------------------------------------------------------
    case("model-dir-missing", "certify crown --model nowhere --out out",
         "model directory nowhere does not exist", "robustcert train"),
    case("model-pt-random-bytes", "certify crown --model model --out out", "model.pt cannot be loaded",
         prep=_model_copy(lambda m: (m / "model.pt").write_bytes(os.urandom(4096)))),
    case("model-pt-missing", "certify crown --model model --out out", "model.pt is missing",
         prep=_model_copy(lambda m: (m / "model.pt").unlink()), slow=True),
    case("model-json-not-json", "certify crown --model model --out out", "model.json is not valid JSON",
         prep=_model_copy(lambda m: (m / "model.json").write_text("{not json"))),
    case("model-json-no-fields", "certify crown --model model --out out", "model.json lacks the fields",
         prep=_model_copy(lambda m: (m / "model.json").write_text("{}")), slow=True),
    case("model-is-a-file", "certify crown --model {model}/model.pt --out out", "model.pt is a file", "give its directory"),
    # --- output and run directories -------------------------------------------------------------------------
    case("out-under-file", f"{CERTIFY} --limit 2 --out some_file/sub", "some_file/sub",
         "choose another --out", prep=FILE),
    case("existing-run", RUN, "already holds a run", "--resume", "--force", prep=_run_copy()),
    case("resume-other-arguments", f"{RUN.replace('0.02', '0.05')} --resume", "cannot resume run",
         "differs in ['params']", prep=_run_copy()),
    case("resume-corrupt-middle-line", f"{RUN} --resume", "line 2 is not valid JSON",
         prep=_run_copy(_corrupt_line(2)), slow=True),
    case("resume-run-json-not-object", f"{RUN} --resume", "run.json",
         prep=_run_copy(lambda r: (r / "run.json").write_text("[1]\n"))),
    # --- report ---------------------------------------------------------------------------------------------
    case("report-corrupt-middle-line", "report run", "results.jsonl line 2 is not valid JSON",
         prep=_run_copy(_corrupt_line(2))),
    case("report-not-a-run", "report empty", "neither a run directory", prep=_dir("empty")),
    case("report-run-json-not-json", "report run", "run.json is not valid JSON",
         prep=_run_copy(lambda r: (r / "run.json").write_text("{")), slow=True),
    case("report-run-json-not-object", "report run", "run.json",
         prep=_run_copy(lambda r: (r / "run.json").write_text("[1]\n"))),
    # --- evaluate -------------------------------------------------------------------------------------------
    case("config-missing", "evaluate --config missing.toml --out out", "missing.toml does not exist"),
    case("config-not-toml", "evaluate --config card.toml --out out", "card.toml is not valid TOML",
         prep=_file("card.toml", "this is [not toml = \n")),
    case("config-misspelt-key", "evaluate --config card.toml --out out", "unknown key 'epoch'",
         "did you mean 'epochs'?", prep=_file("card.toml", _config(epochs="epoch = 3"))),
    case("config-misspelt-section", "evaluate --config card.toml --out out", "unknown key 'method'",
         "did you mean 'methods'?", prep=_file("card.toml", _config(methods="[method]"))),
    case("config-misspelt-method", "evaluate --config card.toml --out out", "unknown key 'ibbp'",
         "did you mean 'ibp'?", prep=_file("card.toml", _config(ibp="ibbp = {}")), slow=True),
    case("config-target-not-budget", "evaluate --config card.toml --out out", "target 0.3",
         "one of its eps values", prep=_file("card.toml", _config(target="target = 0.3")), slow=True),
    case("config-is-a-directory", "evaluate --config conf --out out", "conf", "directory", prep=_dir("conf")),
    case("evaluate-out-under-file", "evaluate --config card.toml --out some_file/sub", "choose another --out",
         prep=_both(FILE, _file("card.toml", _config())), slow=True),
]
# fmt: on

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# ---------------------------------------------------------------------------------------------------------
# Running the selected cases
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    argv: list[str]
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    failure: str | None = None  # the subprocess did not finish in time


def _env() -> dict[str, str]:
    """This environment without what could point the commands elsewhere (a Ray cluster, a data directory)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "ROBUSTCERT_"))}


def run_cli(argv: list[str], cwd: Path, timeout: float = TIMEOUT) -> Outcome:
    out = Outcome(argv=[sys.executable, "-m", "robustcert", *argv])
    start = time.monotonic()
    try:
        done = subprocess.run(
            out.argv,
            cwd=cwd,
            env=_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out.failure = f"no exit within {timeout} s"
        out.stdout = exc.stdout if isinstance(exc.stdout, str) else ""
        out.stderr = exc.stderr if isinstance(exc.stderr, str) else ""
    else:
        out.returncode, out.stdout, out.stderr = done.returncode, done.stdout, done.stderr
    out.seconds = time.monotonic() - start
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, digits_standard_model: Path) -> Path:
    """A finished ``certify crown --limit 2 --eps 0.01,0.02`` run of the model (4 rows), made by the CLI
    itself (so that a resumed run, also made by the CLI, computes its rows the same way)."""
    base = tmp_path_factory.mktemp("finished_run")
    o = run_cli([a.replace("{model}", str(digits_standard_model)) for a in RUN.split()], base)
    assert o.returncode == 0, _shown(o)
    assert len((base / "run" / "results.jsonl").read_text().splitlines()) == 4
    return base / "run"


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    digits_standard_model: Path,
    finished_run: Path,
) -> dict[str, Outcome]:
    """Prepare and run every case selected in this session, a few subprocesses at a time."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if getattr(item, "module", None) is request.module
        and "case" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    base = tmp_path_factory.mktemp("bad_input")
    jobs: list[tuple[Case, list[str], Path]] = []
    for c in selected:
        d = base / c.id
        d.mkdir()
        c.prep(d, digits_standard_model, finished_run)
        argv = [a.replace("{model}", str(digits_standard_model)) for a in c.argv]
        jobs.append((c, argv, d))
    workers = max(2, min(4, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: run_cli(job[1], job[2]), jobs))
    return {c.id: r for (c, _, _), r in zip(jobs, results, strict=True)}


def _shown(o: Outcome) -> str:
    return (
        f"\n$ {' '.join(o.argv[1:])}\nexit {o.returncode} after {o.seconds:.1f} s"
        f"\n--- stderr ---\n{o.stderr[-3000:]}\n--- stdout ---\n{o.stdout[-1500:]}"
    )


def assert_one_error_line(o: Outcome, expect: tuple[str, ...] = ()) -> str:
    """Exit 2, stderr is exactly one line ``error: …`` holding every ``expect``, no traceback anywhere."""
    assert o.failure is None, o.failure + _shown(o)
    assert "Traceback" not in o.stderr and "Traceback" not in o.stdout, _shown(o)
    assert o.returncode == 2, _shown(o)
    lines = o.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), _shown(o)
    for words in expect:
        assert words in lines[0], f"{words!r} not in the error line" + _shown(o)
    return lines[0]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_error_line(case: Case, outcomes: dict[str, Outcome]) -> None:
    o = outcomes[case.id]
    assert_one_error_line(o, case.expect)
    if case.max_seconds is not None:
        assert o.seconds < case.max_seconds, f"took {o.seconds:.1f} s, limit {case.max_seconds} s" + _shown(o)


def test_table_is_big_enough() -> None:
    assert sum(pytest.mark.slow not in c.marks for c in CASES) >= 30  # rows of the default run


# ---------------------------------------------------------------------------------------------------------
# Not errors, or errors shown in full
# ---------------------------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path: Path, digits_standard_model: Path) -> None:
    (tmp_path / "some_file").write_text("x")
    o = run_cli(
        ["certify", "crown", "--model", str(digits_standard_model), "--out", "some_file/sub", "--debug"],
        tmp_path,
    )
    assert o.returncode not in (0, None), _shown(o)
    assert "Traceback" in o.stderr and "RobustCertError" in o.stderr, _shown(o)
    assert "choose another --out" in o.stderr, _shown(o)


def test_version(tmp_path: Path) -> None:
    import robustcert

    o = run_cli(["--version"], tmp_path)
    assert o.returncode == 0, _shown(o)
    assert o.stdout.strip() == f"robustcert {robustcert.__version__}", _shown(o)
    assert o.stderr == "", _shown(o)


def _rows(run_dir: Path) -> dict[tuple[int, float], dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    keyed = {(r["index"], r["eps"]): r for r in rows}
    assert len(keyed) == len(rows), "a row is duplicated"
    return keyed


def test_torn_last_line_is_a_warning_and_resume_completes(
    tmp_path: Path, digits_standard_model: Path, finished_run: Path
) -> None:
    """A torn last line of results.jsonl (a crash mid-write) is not an error: ``report`` drops it with a
    warning (exit 0) and ``--resume`` recomputes that example, with no row lost or duplicated."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _rows(run)
    results = run / "results.jsonl"
    results.write_bytes(results.read_bytes()[:-40])  # the last line loses its end and its newline

    o = run_cli(["report", "run"], tmp_path)
    assert o.returncode == 0, _shown(o)
    assert "Traceback" not in o.stderr + o.stdout, _shown(o)
    lines = o.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: "), _shown(o)
    assert "line 4 is incomplete" in lines[0], _shown(o)
    assert "certified accuracy" in o.stdout, _shown(o)

    o = run_cli(
        [
            "certify",
            "crown",
            "--model",
            str(digits_standard_model),
            "--limit",
            "2",
            "--eps",
            "0.01,0.02",
            "--out",
            "run",
            "--resume",
        ],
        tmp_path,
    )
    assert o.returncode == 0, _shown(o)
    assert "Traceback" not in o.stderr + o.stdout and "error:" not in o.stderr, _shown(o)
    after = _rows(run)
    assert after.keys() == before.keys()
    strip = ("seconds",)
    assert {k: {f: v for f, v in r.items() if f not in strip} for k, r in after.items()} == {
        k: {f: v for f, v in r.items() if f not in strip} for k, r in before.items()
    }
