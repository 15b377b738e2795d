"""The run engine: picks examples, runs a per-example certifier on them, stores rows, resumes.

Methods plug in through one callable, ``certify_example(x, y, index, seed) -> list[row]``: the engine
never knows what a method does. A certifier that is faster on batches (bound propagation) may also
offer ``certify_batch(xs, ys, indices, seeds) -> list[list[row]]`` and a ``batch_size``; the engine then
hands it chunks of examples, and still writes each example's rows as one durable unit. Each example's
randomness must depend only on (run seed, index) — ``example_seed`` gives that seed — so rows do not
depend on order, sharding or resumption (batched bound computations are per example too; only float
rounding in the last bits can depend on the chunk).
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
from robustcert.progress import progress
from robustcert.runs.store import Row, RowWriter, read_complete_rows, rewrite_rows
from robustcert.seeding import example_seed

CertifyExample = Callable[[torch.Tensor, int, int, int], list[Row]]


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
    """Parse ``--indices`` text such as ``"0,5,7"`` or ``"0-9,20"``."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            else:
                out.append(int(part))
    except ValueError as exc:
        raise RobustCertError(f"--indices must look like '0,5,7' or '0-9,20', got {text!r}") from exc
    return out


def prepare_run_dir(
    out_dir: Path, run_info: dict[str, Any], resume: bool, rows_per_example: int
) -> list[Row]:
    """Create ``out_dir`` with ``run.json``, or on resume check it matches and return the finished rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path, results_path = out_dir / "run.json", out_dir / "results.jsonl"
    info = {**run_info, "robustcert_version": robustcert.__version__}
    if run_path.exists() or results_path.exists():
        if not resume:
            raise RobustCertError(
                f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        if run_path.exists():
            old = json.loads(run_path.read_text())
            diffs = sorted(
                k for k in set(old) | set(info) if k != "robustcert_version" and old.get(k) != info.get(k)
            )
            if diffs:
                raise RobustCertError(
                    f"cannot resume {out_dir}: run.json differs in {diffs}; use the same arguments or another --out"
                )
        done = read_complete_rows(results_path, rows_per_example)
        rewrite_rows(results_path, done)  # drop a torn line or a half-written example
    else:
        done = []
    tmp = run_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, run_path)
    return done


def run_examples(
    out_dir: str | os.PathLike[str],
    run_info: dict[str, Any],
    data: Dataset,
    indices: Sequence[int],
    certify_example: CertifyExample,
    *,
    seed: int,
    resume: bool = False,
    rows_per_example: int = 1,
    show_progress: bool = True,
    executor: Callable[
        [list[tuple[int, ...]], Callable[[tuple[int, ...]], list[list[Row]]]], Iterable[list[list[Row]]]
    ]
    | None = None,
) -> list[Row]:
    """Certify ``data.x[indices]`` (indices are positions in the split) into ``out_dir`` and return all rows in ``indices`` order.

    Rows are appended to ``results.jsonl`` and flushed as each example finishes. With ``resume``, examples
    that already have all their rows are skipped; a half-written example is redone. ``executor`` maps the
    job over chunks of pending indices and yields each chunk's rows (in process by default; see
    ``runs.ray_backend``).
    """
    out = Path(out_dir)
    info = {**run_info, "indices": list(indices), "seed": seed}
    done = prepare_run_dir(out, info, resume, rows_per_example)
    done_indices = {int(r["index"]) for r in done}
    pending = [i for i in indices if i not in done_indices]
    position = {int(i): k for k, i in enumerate(indices)}

    batched = getattr(certify_example, "certify_batch", None)
    chunk_size = int(getattr(certify_example, "batch_size", 1)) if batched else 1

    def job(chunk: tuple[int, ...]) -> list[list[Row]]:
        start = time.perf_counter()
        seeds = [example_seed(seed, i) for i in chunk]
        if batched is not None:
            idx = torch.as_tensor(chunk, dtype=torch.long)
            per_example = batched(data.x[idx], [int(v) for v in data.y[idx]], list(chunk), seeds)
        else:
            per_example = [
                certify_example(data.x[i], int(data.y[i]), i, s) for i, s in zip(chunk, seeds, strict=True)
            ]
        seconds = (time.perf_counter() - start) / len(chunk)  # amortised over the chunk
        for rows in per_example:
            for row in rows:
                row.setdefault("seconds", seconds / len(rows))
        return per_example

    # Chunks partition the whole index list, so a resumed run recomputes exactly the chunks an
    # uninterrupted run would have (same batch composition, same float rounding); finished examples of a
    # half-written chunk are recomputed but not written again.
    chunks = [tuple(indices[k : k + chunk_size]) for k in range(0, len(indices), chunk_size)]
    chunks = [c for c in chunks if any(i not in done_indices for i in c)]
    new_rows: list[Row] = []
    runner = executor or (lambda items, fn: (fn(c) for c in items))
    label = f"certify {run_info.get('method', '')}"
    with progress(label, len(pending), show_progress) as bar, RowWriter(out / "results.jsonl") as writer:
        for per_example in runner(chunks, job):
            fresh = [rows for rows in per_example if int(rows[0]["index"]) not in done_indices]
            for rows in fresh:
                writer.write(rows)
                new_rows.extend(rows)
            bar.advance(len(fresh))
    all_rows = done + new_rows
    all_rows.sort(key=lambda r: (position[int(r["index"])], float(r.get("eps", 0.0))))
    return all_rows
