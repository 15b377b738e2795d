"""Cost of IBP, CROWN and alpha-CROWN relative to one forward pass, and their peak memory.

    .venv/bin/python bench/bounds.py [--batch 128] [--eps 0.01] [--repeats 5] [--threads 2]

For each architecture (mlp-2x256, cnn-small; random weights, 1x28x28 inputs, batch 128) and method,
every measurement runs in a fresh subprocess: it builds the model and inputs, warms up once, records
``ru_maxrss`` (peak resident set size, from ``resource.getrusage``), then times the method (median of
``--repeats`` runs; 1 run for the slow ones) and reports the growth of ``ru_maxrss`` over that
baseline, i.e. the extra peak memory the method needed. The forward pass is the float32 model.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

ARCHS = ["mlp-2x256", "cnn-small"]
METHODS = [
    ("forward (float32 model)", "forward"),
    ("IBP float32 (training path)", "ibp32"),
    ("torch.fx conversion to the graph IR", "convert"),
    ("IBP float64 certified margins", "ibp"),
    ("  same, on a prebuilt Graph", "ibp-graph"),
    ("CROWN-IBP (crown, intermediate=ibp)", "crown-ibp"),
    ("CROWN", "crown"),
    ("alpha-CROWN (20 steps)", "alpha-crown"),
]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def run_one(arch: str, method: str, batch: int, eps: float, repeats: int, threads: int) -> dict:
    import torch

    from robustcert.bounds import ibp_bounds, margin_lower
    from robustcert.graph import graph_from_module
    from robustcert.models.zoo import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(arch, (1, 28, 28), 10, [0.1307], [0.3081]).eval()
    x = torch.rand(batch, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    graph = graph_from_module(model, (1, 28, 28))

    def call() -> None:
        if method == "forward":
            with torch.no_grad():
                model(x)
        elif method == "ibp32":
            with torch.no_grad():
                ibp_bounds(model, lo, hi)
        elif method == "convert":
            graph_from_module(model, (1, 28, 28))
        elif method == "ibp-graph":
            margin_lower(graph, x, y, eps=eps, method="ibp")
        elif method == "crown-ibp":
            margin_lower(model, x, y, eps=eps, method="crown", intermediate="ibp")
        else:
            margin_lower(model, x, y, eps=eps, method=method, alpha_steps=20)

    # warm-up on a small batch (imports, first-call overheads) without raising the memory baseline much
    if method != "forward":
        small_x, small_y = x[:2], y[:2]
        margin_lower(model, small_x, small_y, eps=eps, method="ibp")
    with torch.no_grad():
        model(x)
    base = _maxrss_mb()
    times = []
    slow = method in ("crown", "alpha-crown", "crown-ibp")
    for _ in range(1 if slow else repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "peak_mb": _maxrss_mb() - base, "runs": len(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--one", nargs=2, metavar=("ARCH", "METHOD"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], a.one[1], a.batch, a.eps, a.repeats, a.threads)))
        return
    print(f"batch {a.batch}, 1x28x28, eps {a.eps} (linf), torch threads {a.threads}; times: median of runs;")
    print(
        "memory: growth of peak RSS (resource.getrusage ru_maxrss) over a warmed-up baseline, fresh process each\n"
    )
    header = f"{'arch':<10} {'method':<38} {'seconds':>9} {'x forward':>10} {'peak MB':>9} {'runs':>5}"
    print(header)
    print("-" * len(header))
    for arch in a.archs.split(","):
        fwd = None
        for label, method in METHODS:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                arch,
                method,
                "--batch",
                str(a.batch),
                "--eps",
                str(a.eps),
                "--repeats",
                str(a.repeats),
                "--threads",
                str(a.threads),
            ]
            res = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            if method == "forward":
                fwd = res["seconds"]
            ratio = res["seconds"] / fwd if fwd else float("nan")
            print(
                f"{arch:<10} {label:<38} {res['seconds']:>9.3f} {ratio:>10.1f} {res['peak_mb']:>9.1f} {res['runs']:>5}",
                flush=True,
            )


if __name__ == "__main__":
    main()
