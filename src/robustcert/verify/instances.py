"""``robustcert verify --instances instances.csv``: many instances, one durable row each in results.csv.

``instances.csv`` has rows ``onnx,vnnlib,timeout`` (VNN-COMP's layout; paths relative to the csv's
directory). The output directory holds ``verify.json`` (the instances file, its sha256 and the seed:
``--resume`` refuses a directory made for other instances), ``results.csv`` with the header
``instance,onnx,vnnlib,answer,seconds`` (``instance`` = 0-based row of instances.csv) and
``counterexamples/<instance>.txt`` (the result file of every ``sat`` instance).

Durability follows :mod:`robustcert.runs.store`: each row is written with one ``write``, flushed and
fsync'ed, so a kill leaves at most one torn last line; on ``--resume`` that line is dropped with a warning
(the instance is recomputed), the file is rewritten atomically with the complete rows, and only the
instances without a row run. A bad line elsewhere, or a duplicated instance, is an error.

On Ray (``ray_address`` / ``workers``, i.e. ``--ray-address`` / ``--workers``) each pending instance is one
task of :func:`robustcert.runs.ray_backend.ray_executor` (shard size 1: one CPU, one torch thread); the
task only computes (:func:`verify_instance`) and this process writes each row, counterexample and warning
as the task's result arrives, so rows are in the order instances finish and durability and ``--resume``
are exactly as serially. Each instance has the seed ``example_seed(seed, index)`` either way, so the
answers equal a serial run's. Paths are sent resolved: on a cluster the files must exist at the same
paths on every node. An exception other than RobustCertError in a task is re-raised in this process as
the task's own exception (the serial behaviour); the rows written until then stay.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from robustcert.errors import RobustCertError
from robustcert.seeding import example_seed
from robustcert.verify import pipeline

HEADER = ("instance", "onnx", "vnnlib", "answer", "seconds")
RUN_FILES = ("verify.json", "results.csv", "results.csv.tmp")


@dataclass(frozen=True)
class Instance:
    """One row of instances.csv: its 0-based row number, the paths as written and resolved, the timeout."""

    index: int
    onnx: str
    vnnlib: str
    onnx_path: Path
    vnnlib_path: Path
    timeout: float


def read_instances(path: Path) -> list[Instance]:
    """The instances of ``path``; RobustCertError naming the row for a bad timeout, a wrong field count or
    a missing file (checked before anything runs)."""
    if not path.is_file():
        raise RobustCertError(f"instances file {path} does not exist; check the path")
    base = path.parent
    out: list[Instance] = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f)]
    for number, row in enumerate(rows, start=1):
        fields = [c.strip() for c in row]
        if not any(fields):
            continue
        if len(fields) != 3:
            raise RobustCertError(
                f"{path} row {number}: expected onnx,vnnlib,timeout, got {len(fields)} fields"
            )
        onnx, vnnlib, text = fields
        try:
            timeout = float(text)
        except ValueError:
            raise RobustCertError(
                f"{path} row {number}: timeout {text!r} is not a number of seconds"
            ) from None
        if not (timeout > 0 and math.isfinite(timeout)):
            raise RobustCertError(f"{path} row {number}: timeout must be > 0 seconds, got {text}")
        inst = Instance(len(out), onnx, vnnlib, base / onnx, base / vnnlib, timeout)
        for p in (inst.onnx_path, inst.vnnlib_path):
            if not p.is_file():
                raise RobustCertError(
                    f"{path} row {number}: {p} does not exist; paths are relative to {base}"
                )
        out.append(inst)
    if not out:
        raise RobustCertError(f"{path} lists no instances; write rows onnx,vnnlib,timeout")
    return out


def _line(values: tuple[object, ...]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_results(path: Path, n: int) -> list[list[str]]:
    """The complete rows of ``results.csv`` (a torn last line dropped with a warning)."""
    if not path.exists():
        return []
    data = path.read_text(encoding="utf-8")
    lines = data.split("\n")
    tail = lines.pop()  # "" after a final newline; anything else is a torn write
    if tail:
        _warn(f"{path} line {len(lines) + 1} is incomplete (a kill during a write?); it is recomputed")
    if not lines:
        return []
    if tuple(next(csv.reader([lines[0]]))) != HEADER:
        raise RobustCertError(f"{path} line 1 is not the header {','.join(HEADER)}; rerun with --force")
    rows: list[list[str]] = []
    seen: set[int] = set()
    for number, text in enumerate(lines[1:], start=2):
        row = next(csv.reader([text]), [])
        ok = len(row) == len(HEADER) and row[0].isdigit() and row[3] in pipeline.ANSWERS
        if not ok:
            raise RobustCertError(
                f"{path} line {number} is not a result row; delete it and rerun with --resume"
            )
        index = int(row[0])
        if index in seen or index >= n:
            raise RobustCertError(
                f"{path} line {number}: instance {index} is repeated or unknown; rerun with --force"
            )
        seen.add(index)
        rows.append(row)
    return rows


def _fingerprint(instances_csv: Path, seed: int) -> dict[str, object]:
    digest = hashlib.sha256(instances_csv.read_bytes()).hexdigest()
    return {"instances": str(instances_csv.resolve()), "instances_sha256": digest, "seed": seed}


def _prepare(out: Path, meta: dict[str, object], resume: bool, force: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "verify.json"
    exists = meta_path.exists() or (out / "results.csv").exists()
    if exists and force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        exists = False
    if exists and not resume:
        raise RobustCertError(
            f"{out} already holds a verify run; add --resume to continue it or --force to replace it"
        )
    if exists:
        old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if old.get("instances_sha256") != meta["instances_sha256"] or old.get("seed") != meta["seed"]:
            raise RobustCertError(
                f"{out} was made for other instances or another seed; use another --out or --force"
            )
    else:
        meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Outcome:
    """What verifying one instance gave: the answer, its wall seconds, the VNN-COMP result text of a ``sat``
    answer (else ""), and for ``error`` the RobustCertError message (else "")."""

    index: int
    answer: str
    seconds: float
    result: str = ""
    warning: str = ""


def verify_instance(inst: Instance, seed: int, verify: Callable[..., pipeline.Verdict]) -> Outcome:
    """Verify one instance with ``verify`` (``pipeline.verify_files``) and its own seed
    ``example_seed(seed, inst.index)``; bad input (RobustCertError) becomes the answer ``error``, anything
    else propagates. Runs in the driver or in a Ray task; writes nothing."""
    start = time.monotonic()
    try:
        verdict = verify(inst.onnx_path, inst.vnnlib_path, inst.timeout, example_seed(seed, inst.index))
    except RobustCertError as exc:
        return Outcome(inst.index, "error", time.monotonic() - start, warning=str(exc))
    text = pipeline.result_text(verdict) if verdict.answer == "sat" else ""
    return Outcome(inst.index, verdict.answer, time.monotonic() - start, result=text)


def _ray_job(
    by_index: dict[int, Instance], seed: int, verify: Callable[..., pipeline.Verdict], chunk: tuple[int, ...]
) -> list[list[Any]]:
    """The Ray task's job (see ``runs.ray_backend``): the outcome of each instance of ``chunk``."""
    return [[verify_instance(by_index[i], seed, verify)] for i in chunk]


def _on_ray(
    pending: list[Instance],
    seed: int,
    verify: Callable[..., pipeline.Verdict],
    ray_address: str | None,
    workers: int | None,
) -> Iterator[Outcome]:
    """The outcomes of ``pending`` as their Ray tasks finish (one instance per task, 1 CPU and one torch
    thread each). An exception other than RobustCertError in a task is re-raised here as itself."""
    from robustcert.runs.ray_backend import ray_executor

    execute = ray_executor(ray_address, workers, shard_size=1)
    # absolute paths: a worker's working directory need not be the driver's
    by_index = {
        inst.index: replace(inst, onnx_path=inst.onnx_path.resolve(), vnnlib_path=inst.vnnlib_path.resolve())
        for inst in pending
    }
    job = functools.partial(_ray_job, by_index, seed, verify)
    try:
        for per_instance in execute([(inst.index,) for inst in pending], job):
            for rows in per_instance:
                outcome = rows[0]
                assert isinstance(outcome, Outcome)
                yield outcome
    except Exception as exc:
        cause = _task_cause(exc)
        if cause is None:
            raise
        raise cause from exc  # --debug shows the task's traceback too


def _task_cause(exc: BaseException) -> BaseException | None:
    """The task's own exception if ``exc`` is Ray's wrapper of an exception raised in a task, else None."""
    try:
        from ray.exceptions import RayTaskError
    except ImportError:  # pragma: no cover - ray is an optional extra
        return None
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    return cause if isinstance(cause, BaseException) else None


def run_instances(
    instances_csv: Path,
    out: Path,
    *,
    seed: int = 0,
    resume: bool = False,
    force: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
) -> list[list[str]]:
    """Verify every instance not yet in ``out/results.csv`` (see the module docstring); returns all rows
    in instance order. An instance whose files do not fit together gets the answer ``error`` (with a
    warning naming why); the run goes on. Any other exception stops the run (rows already written stay).

    With ``ray_address`` ("auto" or HOST:PORT) or ``workers`` (a local Ray with N CPUs) the instances run
    as Ray tasks, one instance each; rows are written as they finish and have the same answers as a serial
    run's (same per-instance seeds)."""
    instances = read_instances(instances_csv)
    _prepare(out, _fingerprint(instances_csv, seed), resume, force)
    results = out / "results.csv"
    rows = read_results(results, len(instances))
    tmp = out / "results.csv.tmp"
    with open(tmp, "w", encoding="utf-8") as f:  # atomically: the header and the complete rows only
        f.write(_line(HEADER) + "".join(_line(tuple(r)) for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, results)
    done = {int(r[0]) for r in rows}
    pending = [inst for inst in instances if inst.index not in done]
    by_index = {inst.index: inst for inst in pending}
    verify = pipeline.verify_files  # looked up per run, for serial and Ray alike
    outcomes: Iterable[Outcome]
    if ray_address or workers:
        outcomes = _on_ray(pending, seed, verify, ray_address, workers) if pending else ()
    else:
        outcomes = (verify_instance(inst, seed, verify) for inst in pending)
    with open(results, "a", encoding="utf-8") as f:
        for outcome in outcomes:  # in the order they finish; only this process writes
            inst = by_index.pop(outcome.index)
            if outcome.warning:
                _warn(f"instance {inst.index} ({inst.onnx}, {inst.vnnlib}): {outcome.warning}")
            if outcome.answer == "sat":
                cex = out / "counterexamples"
                cex.mkdir(exist_ok=True)
                (cex / f"{inst.index}.txt").write_text(outcome.result)
            row = (inst.index, inst.onnx, inst.vnnlib, outcome.answer, f"{outcome.seconds:.3f}")
            f.write(_line(row))
            f.flush()
            os.fsync(f.fileno())
            rows.append([str(v) for v in row])
            print(f"{inst.index}: {outcome.answer} ({row[4]} s) {inst.onnx} {inst.vnnlib}", flush=True)
    return sorted(rows, key=lambda r: int(r[0]))
