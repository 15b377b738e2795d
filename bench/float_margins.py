"""Verified counts of CROWN on deep MLPs with each rounding treatment, and the size of the margins.

    .venv/bin/python bench/float_margins.py [--epochs 10] [--pgd-epochs 5] [--limit 360] [--threads 1]

The models come from ``bench/deep_models.py`` (shared with ``bench/bounds.py --deep``): MLPs of 6x256
and 9x200 on Fashion-MNIST (``make fashion-mnist``; scikit-learn's 8x8 digits when it is missing),
trained normally and with PGD (L-inf) by ``robustcert.train.train_model`` and ``make_loss``, trained once
and cached under ``--work`` (resumed if interrupted; the same cache as ``bench/bounds.py --deep`` with
the same epochs). For each model it bisects an eps grid with plain CROWN (no margin) on the first
``--pick-examples`` test examples and keeps the eps at which about 50% and about 25% of the correct ones
verify ("a good share"), then counts, on the first ``--limit`` test examples, the examples that are
correctly classified by the float32 model and verified by CROWN at that eps, with

  (i)   no rounding margin at all (unsound; the reference),
  (ii)  the legacy margin 2^-30 (1 + M) (M: forward pass of absolute values, 2m + 1 per activation),
  (iii) the new margin, float_model="float32" (the default: every float32 evaluation is covered),
  (iv)  the new margin, float_model="real" (the real-valued network).

It prints the counts, (iii)/(i), and the median over examples (all, and those (i) verifies) of how much
each treatment lowers the worst-class margin bound relative to (i). ``bench/bounds.py --deep`` gives the
same counts for IBP, CROWN and alpha-CROWN with their times, and ``bench/margin_layers.py`` the layers
whose margins cost verified examples.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import deep_models as dm
import torch

VARIANTS = (
    ("none", "(i) no margin"),
    ("legacy", "(ii) legacy"),
    ("float32", "(iii) float32"),
    ("real", "(iv) real"),
)
MLPS = [m for m in dm.MODELS if m[0] in dm.MLPS]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=10, help="epochs of standard training")
    p.add_argument("--pgd-epochs", type=int, default=5, help="epochs of PGD training")
    p.add_argument("--pgd-eps", type=float, default=0.05, help="L-inf budget of PGD training")
    p.add_argument("--limit", type=int, default=360, help="test examples (digits has 360)")
    p.add_argument("--eps", type=float, default=None, help="certify at this eps instead of the picked ones")
    p.add_argument("--pick-examples", type=int, default=100, help="examples used to pick the eps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(dm.DEFAULT_WORK), help="model cache (shared with bench/bounds.py)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from robustcert.graph import to_graph

    name, _, test = dm.data()
    work = Path(a.work)
    xs, ys = test.x[: a.limit], test.y[: a.limit]
    print(f"data {name}, {len(ys)} test examples, CROWN (intermediate CROWN), L-inf; models cached in {work}")
    rows = []
    for arch, method, model, acc in dm.models(work, a.epochs, a.pgd_epochs, a.pgd_eps, 0, MLPS):
        print(f"  {arch} {method}: clean accuracy {acc}", flush=True)
        graph = to_graph(model, tuple(xs.shape[1:]))
        with torch.no_grad():
            correct = model(xs).argmax(1) == ys  # the float32 model's prediction
        picked = [a.eps] if a.eps is not None else dm.pick_eps(graph, xs, ys, correct, a.pick_examples)[0]
        for eps in picked:
            worst, seconds = {}, {}
            for variant, _ in VARIANTS:
                t0 = time.perf_counter()
                worst[variant] = dm.worst(graph, xs, ys, eps, variant)
                seconds[variant] = time.perf_counter() - t0
            counts = {v: int(((worst[v] > 0) & correct).sum()) for v, _ in VARIANTS}
            ref = (worst["none"] > 0) & correct  # the examples (i) verifies
            lowered = {
                v: (
                    statistics.median((worst["none"] - worst[v]).tolist()),
                    statistics.median((worst["none"] - worst[v])[ref].tolist()) if ref.any() else math.nan,
                )
                for v, _ in VARIANTS
                if v != "none"
            }
            rows.append((arch, method, eps, int(correct.sum()), counts, lowered, seconds))
            print(f"    eps {eps:g}: verified {counts}", flush=True)
    print()
    head = f"{'model':<20} {'eps':>7} {'correct':>7} " + " ".join(f"{label:>14}" for _, label in VARIANTS)
    head += f" {'(iii)/(i)':>10}"
    print(head)
    print("-" * len(head))
    for arch, method, eps, n_ok, counts, _, _ in rows:
        ratio = counts["float32"] / counts["none"] if counts["none"] else float("nan")
        line = f"{arch + ' ' + method:<20} {eps:>7g} {n_ok:>7} " + " ".join(
            f"{counts[v]:>14}" for v, _ in VARIANTS
        )
        print(line + f" {ratio:>10.2%}")
    print("\nmedian over examples of (worst-class margin bound without margin) - (with it): all examples |")
    print("the examples (i) verifies; and seconds for the whole test set")
    print(
        f"{'model':<20} {'eps':>7} {'legacy':>21} {'float32':>21} {'real':>21}   none/legacy/float32/real s"
    )
    for arch, method, eps, _, _, lowered, seconds in rows:
        secs = "/".join(f"{seconds[v]:.0f}" for v, _ in VARIANTS)
        med = " ".join(
            f"{lowered[v][0]:>10.2e}|{lowered[v][1]:<10.2e}" for v in ("legacy", "float32", "real")
        )
        print(f"{arch + ' ' + method:<20} {eps:>7g} {med}   {secs}")


if __name__ == "__main__":
    main()
