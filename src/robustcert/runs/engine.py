"""The run engine: picks examples, hands them to a certifier in chunks, stores rows, resumes.

Methods plug in through one interface, :class:`robustcert.methods.Certifier`:
``certify_batch(xs, ys, indices, seeds) -> rows per example``, with a ``batch_size`` (the chunk size) and
``rows_per_example``. The engine never knows what a method does. Each example's randomness depends only
on (run seed, index) — :func:`robustcert.seeding.example_seed` — so rows do not depend on order, sharding
or resumption (batched bound computations are per example too; only float rounding in the last bits can
depend on the chunk, and chunks partition the index list the same way on every run).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

import robustcert
from robustcert.data.base import Dataset
from robustcert.errors import RobustCertError
from robustcert.methods.base import Certifier
from robustcert.progress import progress
from robustcert.rows import DEFAULT_DOMAIN, Row
from robustcert.runs.store import RowWriter, read_complete_rows, rewrite_rows
from robustcert.seeding import SCHEME, example_seed

Chunk = tuple[int, ...]
Executor = Callable[[list[Chunk], Callable[[Chunk], list[list[Row]]]], Iterable[list[list[Row]]]]

#: The files a run directory holds; ``--force`` removes exactly these (never anything else in --out).
RUN_FILES = ("run.json", "results.jsonl", "results.jsonl.tmp", "summary.json", "curve.png", "log.txt")


def select_indices(
    n_total: int,
    limit: int | None = None,
    indices: Sequence[int] | None = None,
) -> list[int]:
    """The example indices of a run: ``indices`` as given (checked), else the first ``limit`` (or all)."""
    if indices is not None and limit is not None:
        raise RobustCertError("give either --limit or --indices, not both")
    if indices is not None:
        chosen = [int(i) for i in indices]
        if not chosen:
            raise RobustCertError("--indices selects no example; give e.g. --indices 0-99")
        bad = [i for i in chosen if not 0 <= i < n_total]
        if bad:
            raise RobustCertError(f"indices {bad[:5]} are outside the split (0..{n_total - 1})")
        if len(set(chosen)) != len(chosen):
            raise RobustCertError("--indices lists an index twice")
        return chosen
    if limit is not None and limit <= 0:
        raise RobustCertError(f"--limit must be >= 1, got {limit}")
    return list(range(n_total if limit is None else min(limit, n_total)))


def parse_indices(text: str | None) -> list[int] | None:
    """Parse ``--indices`` text such as ``"0,5,7"`` or ``"0-9,20"`` (ranges inclusive, low-high)."""
    if text is None:
        return None
    out: list[int] = []
    usage = f"--indices must look like '0,5,7' or '0-9,20' (whole numbers >= 0), got {text!r}"
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_text, dash, hi_text = part.partition("-")
        try:
            lo, hi = int(lo_text), int(hi_text if dash else lo_text)
        except ValueError:
            raise RobustCertError(usage) from None
        if lo < 0 or hi < 0:
            raise RobustCertError(usage)
        if hi < lo:
            raise RobustCertError(f"--indices range {part!r} runs backwards; write it as {hi}-{lo}")
        out.extend(range(lo, hi + 1))
    return out


def check_out_dir(out: Path) -> None:
    """RobustCertError unless ``out`` is, or can be created as, a writable directory (nothing is created)."""
    probe = Path(out)
    while not probe.exists() and probe.parent != probe:  # the nearest part of the path that exists
        probe = probe.parent
    if not probe.is_dir():
        raise RobustCertError(f"cannot use {out} as the output directory: {probe} is a file; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RobustCertError(f"the output directory {out} is not writable ({probe}); choose another --out")


def _writable_dir(out_dir: Path) -> None:
    check_out_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobustCertError(f"cannot create the output directory {out_dir}: {exc.strerror}; choose another --out") from None


def prepare_run_dir(
    out_dir: Path, run_info: dict[str, Any], row_type: type[Row], rows_per_example: int,
    *, resume: bool, force: bool = False,
) -> list[Row]:
    """Create ``out_dir`` with ``run.json`` and return the finished rows of a resumed run.

    An existing run is continued with ``resume`` (only if its run.json matches), replaced with ``force``
    (its run files are removed), and otherwise refused."""
    _writable_dir(out_dir)
    run_path, results_path = out_dir / "run.json", out_dir / "results.jsonl"
    info = {**run_info, "robustcert_version": robustcert.__version__}
    exists = run_path.exists() or results_path.exists()
    if exists and force:
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        exists = False
    done: list[Row] = []
    if exists:
        if not resume:
            raise RobustCertError(
                f"{out_dir} already holds a run; pass --resume to continue it, --force to overwrite it, "
                "or choose another --out"
            )
        if run_path.exists():
            try:
                old = json.loads(run_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RobustCertError(f"{run_path} is not valid JSON; rerun with --force to start over") from None
            if not isinstance(old, dict):
                raise RobustCertError(f"{run_path} is not a run.json object; rerun with --force to start over")
            old.setdefault("domain", DEFAULT_DOMAIN)  # runs written before the domain was recorded
            diffs = sorted(
                k for k in set(old) | set(info) if k != "robustcert_version" and old.get(k) != info.get(k)
            )
            if diffs:
                raise RobustCertError(
                    f"cannot resume {out_dir}: run.json differs in {diffs}; use the same arguments, "
                    "--force to overwrite, or another --out"
                )
        done = read_complete_rows(results_path, row_type, rows_per_example)
        rewrite_rows(results_path, done)  # drop a torn line or a half-written example
    tmp = run_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, run_path)
    return done


def run_examples(
    out_dir: str | os.PathLike[str],
    run_info: dict[str, Any],
    data: Dataset,
    indices: Sequence[int],
    certifier: Certifier,
    row_type: type[Row],
    *,
    seed: int,
    resume: bool = False,
    force: bool = False,
    show_progress: bool = True,
    executor: Executor | None = None,
) -> list[Row]:
    """Certify ``data.x[indices]`` into ``out_dir``; returns all rows in ``indices`` order.

    Rows are appended to ``results.jsonl`` and flushed as each example finishes. With ``resume``, examples
    that already have all their rows are skipped; a half-written example is redone. ``executor`` maps the
    job over chunks of indices and yields each chunk's rows (in process by default; see
    ``runs.ray_backend``)."""
    out = Path(out_dir)
    info = {**run_info, "indices": list(indices), "seed": seed, "seeding": SCHEME}
    info.setdefault("domain", DEFAULT_DOMAIN)
    domain = str(info["domain"])  # recorded in run.json and in every row
    rows_per_example = certifier.rows_per_example
    done = prepare_run_dir(out, info, row_type, rows_per_example, resume=resume, force=force)
    done_indices = {r.index for r in done}
    pending = [i for i in indices if i not in done_indices]
    position = {int(i): k for k, i in enumerate(indices)}
    chunk_size = max(1, int(certifier.batch_size))

    def job(chunk: Chunk) -> list[list[Row]]:
        start = time.perf_counter()
        seeds = [example_seed(seed, i) for i in chunk]
        idx = torch.as_tensor(chunk, dtype=torch.long)
        per_example = certifier.certify_batch(data.x[idx], [int(v) for v in data.y[idx]], list(chunk), seeds)
        if len(per_example) != len(chunk) or any(len(r) != rows_per_example for r in per_example):
            raise RuntimeError(  # a method bug, not bad input
                f"certifier returned {[len(r) for r in per_example]} rows for {len(chunk)} examples; "
                f"expected {rows_per_example} each"
            )
        seconds = (time.perf_counter() - start) / len(chunk)  # amortised over the chunk
        for rows in per_example:
            for row in rows:
                row.seconds = seconds / len(rows)
                row.domain = domain
        return per_example

    # Chunks partition the whole index list, so a resumed run recomputes exactly the chunks an
    # uninterrupted run would have (same batch composition, same float rounding); finished examples of a
    # half-written chunk are recomputed but not written again.
    chunks = [tuple(indices[k : k + chunk_size]) for k in range(0, len(indices), chunk_size)]
    chunks = [c for c in chunks if any(i not in done_indices for i in c)]
    new_rows: list[Row] = []

    def serial(items: list[Chunk], fn: Callable[[Chunk], list[list[Row]]]) -> Iterable[list[list[Row]]]:
        return (fn(c) for c in items)

    runner = executor or serial
    label = f"certify {run_info.get('method', '')}"
    with progress(label, len(pending), show_progress) as bar, RowWriter(out / "results.jsonl") as writer:
        for per_example in runner(chunks, job):
            fresh = [rows for rows in per_example if rows[0].index not in done_indices]
            for rows in fresh:
                writer.write(rows)
                new_rows.extend(rows)
                done_indices.add(rows[0].index)
            bar.advance(len(fresh))
    all_rows = done + new_rows
    all_rows.sort(key=lambda r: (position[r.index], float(getattr(r, "eps", 0.0))))
    return all_rows

