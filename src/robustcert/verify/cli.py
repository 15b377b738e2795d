"""The ``robustcert verify`` sub-command: its options and what it runs (hooked into :mod:`robustcert.cli`).

``--instances CSV`` with ``--workers N`` (a local Ray with N CPUs) or ``--ray-address auto|HOST:PORT``
runs the instances as Ray tasks, one each, through :mod:`robustcert.runs.ray_backend` as certify does; the
rows (written by this process as they finish) have the same answers as a serial run's.

Exit status: 0 for a decided answer (sat / unsat) and after an ``--instances`` run; 4 when one instance
ends ``unknown`` or ``timeout``; 2 (one ``error:`` line, and ``error`` in ``--out``) for bad input.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from robustcert.cli import _int_at_least
from robustcert.errors import RobustCertError

EXIT_UNDECIDED = 4
_positive_int = _int_at_least(1)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def add_verify_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add ``verify`` to the sub-command group ``commands``."""
    about = "complete verification of an ONNX model against a VNN-LIB spec (VNN-COMP result file)"
    p = commands.add_parser("verify", parents=[common], help=about, description=about)
    p.add_argument("model", nargs="?", metavar="MODEL.onnx", help="the network (ONNX)")
    p.add_argument("spec", nargs="?", metavar="SPEC.vnnlib", help="the property (VNN-LIB 1.0, or .vnnlib.gz)")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=300.0,
        help="seconds for MODEL SPEC (with --instances each row gives its own)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="result file (one instance; default: print only) or output directory (--instances; "
        "default runs/verify)",
    )
    p.add_argument(
        "--instances", type=Path, metavar="CSV", help="rows onnx,vnnlib,timeout, relative to the csv"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the falsification's random search")
    p.add_argument("--ray-address", help="--instances: run them on a Ray cluster: 'auto' or HOST:PORT")
    p.add_argument("--workers", type=_positive_int, help="--instances: start a local Ray with N worker CPUs")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="--instances: continue the run in --out")
    mode.add_argument("--force", action="store_true", help="--instances: replace the run in --out")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_verify(ns: argparse.Namespace) -> int:
    """Run the parsed ``verify`` command; returns the exit status."""
    from robustcert.verify import instances, pipeline

    if ns.seed < 0:
        raise RobustCertError(f"--seed must be >= 0, got {ns.seed}")
    if ns.instances is not None:
        if ns.model is not None or ns.spec is not None:
            raise RobustCertError("give either MODEL.onnx SPEC.vnnlib or --instances CSV, not both")
        out = ns.out if ns.out is not None else Path("runs/verify")
        rows = instances.run_instances(
            ns.instances,
            out,
            seed=ns.seed,
            resume=ns.resume,
            force=ns.force,
            ray_address=ns.ray_address,
            workers=ns.workers,
        )
        counts: dict[str, int] = {}
        for r in rows:
            counts[r[3]] = counts.get(r[3], 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{len(rows)} instances: {summary} -> {out / 'results.csv'}")
        return 0
    if ns.model is None or ns.spec is None:
        raise RobustCertError(
            "give MODEL.onnx SPEC.vnnlib (or --instances CSV); see `robustcert verify --help`"
        )
    if ns.resume or ns.force:
        raise RobustCertError("--resume and --force are for --instances runs")
    if ns.workers is not None or ns.ray_address is not None:
        raise RobustCertError(
            "--workers and --ray-address are for --instances runs; MODEL.onnx SPEC.vnnlib runs in this process"
        )
    try:
        verdict = pipeline.verify_files(ns.model, ns.spec, ns.timeout, ns.seed)
    except Exception:  # bad input (exit 2) or an internal error (exit 1): the result file says "error"
        if ns.out is not None:
            try:
                _write(ns.out, "error\n")
            except OSError:
                pass  # the original error is the one to report
        raise
    text = pipeline.result_text(verdict)
    if ns.out is not None:
        _write(ns.out, text)
    stage = f" by {verdict.stage}" if verdict.stage else ""
    print(f"{verdict.answer}{stage} in {verdict.seconds:.2f} s", flush=True)
    return 0 if verdict.answer in ("sat", "unsat") else EXIT_UNDECIDED
