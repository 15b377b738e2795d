"""Branch-and-bound bounding throughput: sub-domains of one input bounded per second.

Run::

    OMP_NUM_THREADS=1 .venv/bin/python bench/bab_throughput.py            # full table (a few minutes)
    OMP_NUM_THREADS=1 .venv/bin/python bench/bab_throughput.py --quick    # D = 32 only, one repeat
    OMP_NUM_THREADS=1 .venv/bin/python bench/bab_throughput.py --precision float64  # float64 compute

Models (issue 14, untrained, ``torch.manual_seed(0)``): ``mlp`` 784-256-256-10, ``deep`` 784 + 6x256 +
10 and ``cnn-small`` (Conv 1->16 k4 s2, ReLU, Conv 16->32 k4 s2, ReLU, Linear 1568->100, ReLU,
Linear 100->10). One input (``torch.manual_seed(1); torch.rand(1, 1, 28, 28)``), L-inf eps 0.03 and
0.01, margin specification of the model's own prediction, ``float_model="float32"`` (the certified
default). ``root_bounds`` is computed once per (model, eps) and not timed. The D sub-domains split the
k = log2 D unstable neurons with the largest chord intercept ``-lb ub / (ub - lb)`` into all 2^k sign
patterns; ``bound_subdomains`` bounds them in one batch (CROWN). Reported per D: domains per second
(median of the repeats), with ``refine`` (CROWN on the later activation inputs, batched) and without
(root intervals after the split nodes); the share of time in the intermediate intervals vs the final
bound; where the split neurons are (layer index per neuron); the worst-domain bound against the
root's. Writes bench/results/bab_throughput.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from robustcert.bounds import margin_spec
from robustcert.bounds.subdomains import (
    Root,
    bound_subdomains,
    final_bounds,
    root_bounds,
    sign_patterns,
    subdomain_intervals,
    top_unstable,
)

OUT = Path(__file__).resolve().parent / "results" / "bab_throughput.md"


def models() -> dict[str, nn.Module]:
    """The issue's three models, each built right after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    width = 784
    for _ in range(6):
        layers += [nn.Linear(width, 256), nn.ReLU()]
        width = 256
    deep = nn.Sequential(*layers, nn.Linear(256, 10))
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(1568, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    return {"mlp": mlp.eval(), "deep": deep.eval(), "cnn-small": cnn.eval()}


def timed(root: Root, C: torch.Tensor, splits: dict, refine: bool) -> tuple[float, float, torch.Tensor]:
    """(intermediate seconds, final seconds, bounds) of one ``bound_subdomains`` call, split in its two
    phases (``subdomain_intervals`` then ``final_bounds``: the same computation)."""
    t0 = time.perf_counter()
    iv = subdomain_intervals(root, splits, refine=refine)
    t1 = time.perf_counter()
    lb = final_bounds(root, C, iv)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, lb


def throughput(
    root: Root, C: torch.Tensor, splits: dict, refine: bool, repeats: int
) -> tuple[float, float, float, float, torch.Tensor]:
    """Domains per second (median and best over ``repeats`` runs), median intermediate and final
    seconds, and the bounds of the last run."""
    D = next(iter(splits.values())).shape[0]
    runs = [timed(root, C, splits, refine) for _ in range(repeats)]
    totals = [a + b for a, b, _ in runs]
    return (
        D / statistics.median(totals),
        D / min(totals),
        statistics.median(a for a, _, _ in runs),
        statistics.median(b for _, b, _ in runs),
        runs[-1][2],
    )


def sequential(root: Root, C: torch.Tensor, splits: dict, refine: bool, n: int) -> float:
    """Domains per second when the first ``n`` domains are bounded one call each (D = 1): the
    baseline that batching improves on."""
    t0 = time.perf_counter()
    for d in range(n):
        bound_subdomains(root, C, {k: v[d : d + 1] for k, v in splits.items()}, refine=refine)
    return n / (time.perf_counter() - t0)


def first_layer(root: Root, k: int) -> list[tuple[str, int]]:
    """The ``k`` best-scored unstable neurons of the FIRST ReLU layer: every later activation input
    then changes, the most expensive case for ``refine=True``."""
    return [p for p in top_unstable(root, 10**9) if p[0] == root.split_nodes[0]][:k]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="D = 32 only, one repeat (smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="32,128,512", help="D for the best-scored splits")
    ap.add_argument("--first-sizes", default="32,128", help="D for first-layer splits")
    ap.add_argument("--eps", default="0.03,0.01")
    ap.add_argument("--precision", default=None, help="float32 / float64 (default: margin_lower's)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    kw = {} if args.precision is None else {"precision": args.precision}
    torch.set_num_threads(1)
    sizes = [32] if args.quick else [int(s) for s in args.sizes.split(",")]
    first_sizes = [32] if args.quick else [int(s) for s in args.first_sizes.split(",") if s]
    repeats = 1 if args.quick else args.repeats
    epss = [float(e) for e in args.eps.split(",")]
    torch.manual_seed(1)
    x = torch.rand(1, 1, 28, 28)
    roots = ["| model | eps | unstable neurons per ReLU layer | root_bounds time | root CROWN worst margin |"]
    roots.append("|---|---|---|---|---|")
    lines = [
        "| model | eps | splits | D | refine | domains/s (median) | best | intermediate | final | "
        "worst domain vs root |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    dtype = rdtype = None
    for mname, model in models().items():
        with torch.no_grad():
            y = model(x).argmax(1)
        for eps in epss:
            t0 = time.perf_counter()
            root = root_bounds(model, x, eps, **kw)
            t_root = time.perf_counter() - t0
            dtype, rdtype = root.dtype, root.refine_dtype
            C = margin_spec(y, 10, root.dtype)
            C = C[:, C[0].abs().sum(-1) > 0]  # the 9 margins j != y (row y is zero)
            base = bound_subdomains(root, C, {})[0]
            per_layer = [int(m.sum()) for m in root.unstable().values()]
            roots.append(f"| {mname} | {eps} | {per_layer} | {t_root:.2f} s | {float(base.min()):+.3f} |")
            print(roots[-1], flush=True)
            policies = [("best-scored", top_unstable, sizes), ("first layer", first_layer, first_sizes)]
            for policy, pick, ds in policies:
                for D in ds:
                    k = D.bit_length() - 1
                    picks = pick(root, k)
                    if len(picks) < k:
                        print(f"  {policy} D={D}: only {len(picks)} unstable neurons, skipped", flush=True)
                        continue
                    splits = sign_patterns(root, picks)
                    where = Counter(root.split_nodes.index(n) + 1 for n, _ in picks)
                    layers = f"{policy}: " + " ".join(f"L{i}x{c}" for i, c in sorted(where.items()))
                    for refine in (True, False):
                        if D == ds[0]:
                            n = min(D, 16)
                            seq = sequential(root, C, splits, refine, n)
                            lines.append(
                                f"| {mname} | {eps} | {layers} | 1 (x{n} calls) | {refine} | {seq:,.0f} | | | | |"
                            )
                            print(lines[-1], flush=True)
                        dps, best, ti, tf, lb = throughput(root, C, splits, refine, repeats)
                        gain = float((lb.min(0).values - base).min())
                        share = ti / (ti + tf)
                        lines.append(
                            f"| {mname} | {eps} | {layers} | {D} | {refine} | {dps:,.0f} | {best:,.0f} | "
                            f"{share:.0%} ({ti * 1e3:.0f} ms) | {1 - share:.0%} ({tf * 1e3:.0f} ms) | "
                            f"{gain:+.4f} |"
                        )
                        print(lines[-1], flush=True)
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python bench/" + " ".join([Path(__file__).name, *sys.argv[1:]])
    text = "\n".join(
        [
            "# Branch-and-bound bounding throughput",
            "",
            f"Command: `{cmd}` (torch {torch.__version__}, 1 thread, `float_model=float32`; bounds",
            f"computed in {dtype}, intermediate CROWN passes in {rdtype or dtype}, as margin_lower does).",
            "Set-up in the module docstring of bench/bab_throughput.py. Root intervals (computed once per",
            "model and eps, not timed below):",
            "",
            *roots,
            "",
            "`splits`: how the k = log2 D split neurons were picked (`best-scored`: largest chord intercept",
            "over all layers; `first layer`: the same score in the first ReLU layer only) and their ReLU layer",
            "(`L2x5`: five neurons of the second). `domains/s`: D over the median time of the repeats of one",
            "`bound_subdomains` call on all D domains (CROWN on the 9 margin rows), `best` over the fastest",
            "repeat (2 cores shared with other jobs: expect noise of up to 2x). Rows `1 (xN calls)`: the",
            "first N of those domains bounded one call each (D = 1), the unbatched baseline. `intermediate`",
            "/ `final`: share and median time of the per-domain intervals (`subdomain_intervals`) and of the",
            "final CROWN pass (`final_bounds`). `worst domain vs root`: min over the margins of (min over the",
            "D domains) - (root CROWN bound), without `floor` (negative: plain CROWN on the leaves is looser",
            "than on the root, see the notes of robustcert.bounds.subdomains).",
            "",
            *lines,
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
