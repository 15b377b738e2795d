"""Which torch thread count to use by default: a batch of small certifications with ``--threads 1`` and
``--threads 2``, on a quiet machine and while two other processes keep both cores busy.

    .venv/bin/python bench/threads.py [--examples 129] [--repeats 3] [--out runs/bench-threads]

Each measurement is one whole ``robustcert certify`` command (CROWN, L∞ eps 0.02, ``--batch 1`` so that
every example is its own small computation, as in per-example work; and smoothing with n = 2,000 at
batch 1,000, the large-batch case) on an mlp-2x64 trained for 3 epochs on digits. The load is two
busy-looping Python processes. Prints the median wall time of ``--repeats`` runs per cell and the
slowdown of each setting relative to 1 thread on a quiet machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _burn(stop: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) % 2147483648


def _time_command(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=129)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-threads"))
    args = parser.parse_args()
    cli = [sys.executable, "-m", "robustcert"]
    model = args.out / "model"
    if not (model / "model.json").exists():
        subprocess.run([*cli, "train", "--arch", "mlp-2x64", "--epochs", "3", "--out", str(model), "--force"],
                       check=True, capture_output=True)
    workloads = {
        "crown, per example": ["certify", "crown", "--eps", "0.02", "--batch", "1"],
        "smoothing, batch 1000": ["certify", "smoothing", "--sigma", "0.25", "--n", "2000", "--batch", "1000"],
    }
    results: dict[tuple[str, str, int], float] = {}
    for load in ("quiet", "2 busy processes"):
        stop = mp.Event()
        burners = [mp.Process(target=_burn, args=(stop,)) for _ in range(2 if load != "quiet" else 0)]
        for p in burners:
            p.start()
        try:
            for name, work in workloads.items():
                for threads in (1, 2):
                    times = []
                    for r in range(args.repeats):
                        out = args.out / "runs" / f"{r}"
                        shutil.rmtree(out, ignore_errors=True)
                        times.append(_time_command([*cli, "--threads", str(threads), *work, "--model", str(model),
                                                    "--limit", str(args.examples), "--out", str(out)]))
                    results[(name, load, threads)] = statistics.median(times)
                    print(f"{name:24s} {load:18s} threads={threads}: {results[(name, load, threads)]:.1f} s "
                          f"(runs: {', '.join(f'{t:.1f}' for t in times)})", flush=True)
        finally:
            stop.set()
            for p in burners:
                p.join()
    print("\n| workload | load | 1 thread | 2 threads |\n|---|---|---|---|")
    for name in workloads:
        base = results[(name, "quiet", 1)]
        for load in ("quiet", "2 busy processes"):
            one, two = results[(name, load, 1)], results[(name, load, 2)]
            print(f"| {name} | {load} | {one:.1f} s ({one / base:.2f}x) | {two:.1f} s ({two / base:.2f}x) |")


if __name__ == "__main__":
    main()
