"""Verified counts of CROWN on deep MLPs with each rounding treatment, and the size of the margins.

    .venv/bin/python bench/float_margins.py [--epochs 30] [--pgd-epochs 15] [--limit 360] [--threads 2]

Trains (once; cached under ``--work``, resumed if present) MLPs of 6x256 and 9x200 on digits (8x8; on
Fashion-MNIST when /usr/share/datasets/fashion-mnist exists), normally and with PGD (L-inf), using
``robustcert.train.train_model`` and ``make_loss``. For each model it walks an eps grid with plain
CROWN (no margin) on the first ``--pick-examples`` test examples and keeps the eps at which about 50%
and about 25% of the correct ones verify ("a good share"), then counts, on the whole test set, the
examples that are correctly classified by the float32 model and verified by CROWN at that eps, with

  (i)   no rounding margin at all (unsound; the reference),
  (ii)  the legacy margin 2^-30 (1 + M) (M: forward pass of absolute values, 2m + 1 per activation),
  (iii) the new margin, float_model="float32" (the default: every float32 evaluation is covered),
  (iv)  the new margin, float_model="real" (the real-valued network).

It prints the counts, (iii)/(i), and the median over examples (all, and those (i) verifies) of how much
each treatment lowers the worst-class margin bound relative to (i). The 6x256/9x200 MLPs are registered
in the zoo's table for this script only (they are not zoo architectures).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

FASHION = Path("/usr/share/datasets/fashion-mnist")
ARCHS = {"mlp-6x256": [256] * 6, "mlp-9x200": [200] * 9}
EPS_GRID = (
    0.002,
    0.003,
    0.004,
    0.005,
    0.0065,
    0.008,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.025,
    0.03,
    0.035,
    0.04,
    0.045,
    0.05,
    0.055,
    0.065,
)
VARIANTS = (
    ("none", "(i) no margin"),
    ("legacy", "(ii) legacy"),
    ("float32", "(iii) float32"),
    ("real", "(iv) real"),
)


def _register_archs() -> None:
    from robustcert.models import zoo

    for name, widths in ARCHS.items():
        zoo.ARCHITECTURES.setdefault(name, zoo._mlp(widths))


def _data() -> tuple[str, Any, Any]:
    from robustcert.data import load_dataset

    if FASHION.exists():
        return (
            "fashion-mnist",
            load_dataset("fashion-mnist", "train", FASHION),
            load_dataset("fashion-mnist", "test", FASHION),
        )
    return "digits", load_dataset("digits", "train"), load_dataset("digits", "test")


def _train(
    arch: str, method: str, train: Any, test: Any, work: Path, epochs: int, pgd_eps: float
) -> torch.nn.Module:
    from robustcert.train import train_model
    from robustcert.train.factory import make_loss

    loss, params = make_loss(method, eps=pgd_eps, norm="linf", pgd_steps=7)
    out = work / f"{train.name}-{arch}-{method}"
    model, meta = train_model(
        arch=arch,
        train_data=train,
        test_data=test,
        loss=loss,
        method=method,
        method_params=params,
        out_dir=out,
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        seed=0,
        resume=(out / "train_state.pt").exists(),
        show_progress=False,
    )
    print(f"  {arch} {method}: clean accuracy {meta.get('clean_accuracy')}", flush=True)
    return model.eval()


def _worst(
    graph: Any, xs: torch.Tensor, ys: torch.Tensor, eps: float, rounding: str, batch: int = 60
) -> torch.Tensor:
    """min over j != y of the CROWN margin bound, per example."""
    from robustcert.bounds import api

    out = []
    for s in range(0, len(ys), batch):
        m = api._margins(
            graph,
            xs[s : s + batch],
            ys[s : s + batch],
            eps,
            "linf",
            "crown",
            None,
            "crown",
            20,
            0.1,
            rounding,
        )
        out.append(m.min(dim=1).values)
    return torch.cat(out)


def _pick_eps(graph: Any, xs: torch.Tensor, ys: torch.Tensor, correct: torch.Tensor, n: int) -> list[float]:
    """Grid eps at which plain CROWN verifies about 50% and about 25% of the correct examples among the
    first ``n`` (the grid is walked upward until fewer than 15% verify)."""
    sub = torch.arange(min(n, len(ys)))
    n_ok = max(int(correct[sub].sum()), 1)
    share: dict[float, float] = {}
    for eps in EPS_GRID:
        v = int(((_worst(graph, xs[sub], ys[sub], eps, "none") > 0) & correct[sub]).sum())
        share[eps] = v / n_ok
        if share[eps] < 0.15:
            break
    picked = []
    for target in (0.5, 0.25):
        eps = min(share, key=lambda e: abs(share[e] - target))
        if eps not in picked:
            picked.append(eps)
    return picked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="epochs of standard training")
    p.add_argument("--pgd-epochs", type=int, default=15, help="epochs of PGD training")
    p.add_argument("--pgd-eps", type=float, default=0.05, help="L-inf budget of PGD training")
    p.add_argument("--limit", type=int, default=360, help="test examples (digits has 360)")
    p.add_argument("--eps", type=float, default=None, help="certify at this eps instead of the picked ones")
    p.add_argument("--pick-examples", type=int, default=100, help="examples used to pick the eps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp") + "/robustcert-bench-float-margins")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from robustcert.graph import to_graph

    _register_archs()
    name, train, test = _data()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    xs, ys = test.x[: a.limit], test.y[: a.limit]
    print(f"data {name}, {len(ys)} test examples, CROWN (intermediate CROWN), L-inf; models cached in {work}")
    rows = []
    for arch in ARCHS:
        for method, epochs in (("standard", a.epochs), ("pgd", a.pgd_epochs)):
            model = _train(arch, method, train, test, work, epochs, a.pgd_eps)
            graph = to_graph(model, tuple(xs.shape[1:]))
            with torch.no_grad():
                correct = model(xs).argmax(1) == ys  # the float32 model's prediction
            picked = [a.eps] if a.eps is not None else _pick_eps(graph, xs, ys, correct, a.pick_examples)
            for eps in picked:
                worst, seconds = {}, {}
                for variant, _ in VARIANTS:
                    t0 = time.perf_counter()
                    worst[variant] = _worst(graph, xs, ys, eps, variant)
                    seconds[variant] = time.perf_counter() - t0
                counts = {v: int(((worst[v] > 0) & correct).sum()) for v, _ in VARIANTS}
                ref = (worst["none"] > 0) & correct  # the examples (i) verifies
                lowered = {
                    v: (
                        statistics.median((worst["none"] - worst[v]).tolist()),
                        statistics.median((worst["none"] - worst[v])[ref].tolist())
                        if ref.any()
                        else math.nan,
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
