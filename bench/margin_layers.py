"""Which layers' rounding margins cost verified examples: the float32 margin switched on one node at a time.

    .venv/bin/python bench/margin_layers.py --model mlp-9x200:pgd --method ibp --eps 2.4e-05 [--limit 1000]
    .venv/bin/python bench/margin_layers.py --model mlp-9x200:pgd --method ibp --eps 0 --sweep 1e-5,3e-5,1e-4

For one deep model of ``bench/deep_models.py`` (trained or loaded from the cache), one method and one
eps, counts the examples verified (correct for the float32 model, every margin bound > 0) with

* no rounding margin (``none``), the full sound margin (``float32``) and the real-valued one (``real``);
* the float32 margin restricted to ONE node (its forward widening, its back-substitution weight
  ``|A| . w`` or its relaxation weight), all others exact — one row per node that has a margin; plus a
  row ``input`` (the rounding of the input point and of the box concretisation) and ``merges`` (the
  additions of coefficient sets and interval concretisations);
* the float32 margin everywhere EXCEPT the float32 terms of affine layers (the ``gamma_k(u) a_v`` of
  section 1 of ``robustcert.bounds._soundness``), i.e. only the float64 computation's own rounding
  there — to separate what the float32 evaluation model costs from what the float64 bookkeeping costs.

With ``--sweep``, only the ``none``/``float32``/``real`` counts at each of several eps. For each row it
prints the count and the median, over the examples ``none`` verifies, of the lowering of the
worst-class margin bound relative to ``none``. The restricted models are subclasses of
``robustcert.bounds._soundness.Rounding`` patched into ``robustcert.bounds.api`` for the call only: a
diagnostic, never a sound bound.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import deep_models as dm
import torch

from robustcert.bounds import _soundness, api

MERGES = "merges"
INPUT = "input"


class _Masked(_soundness.Rounding):
    """The float32 rounding model with its terms kept only at the nodes (and pseudo-nodes) in KEEP; with
    NO_AFFINE32 the float32 error of affine ops is dropped everywhere (their float64 terms kept)."""

    KEEP: frozenset[str] | None = None  # None: every node
    NO_AFFINE32 = False

    def _on(self, name: str) -> bool:
        return self.KEEP is None or name in self.KEEP

    def forward(self, node, b, ins):
        on = self._on(INPUT if node.op == "input" else node.name)
        return super().forward(node, b, ins) if on else b

    def node_weight(self, node, ctx):
        return super().node_weight(node, ctx) if self._on(node.name) else None

    def relax_weight(self, node, lb, ub, layout, lines):
        w = super().relax_weight(node, lb, ub, layout, lines)
        return w if self._on(node.name) else w * 0

    def merge_weight(self, bounds):
        w = super().merge_weight(bounds)
        return w if self._on(MERGES) else w * 0

    def interval_weight(self, bounds, n):
        w = super().interval_weight(bounds, n)
        return w if self._on(MERGES) else w * 0

    def box_weight(self, inset, n):
        w = super().box_weight(inset, n)
        return w if self._on(INPUT) else w * 0

    def _affine_error(self, node, ins):
        if not self.NO_AFFINE32:
            return super()._affine_error(node, ins)
        f32, self.float32 = self.float32, False
        try:
            return super()._affine_error(node, ins)
        finally:
            self.float32 = f32


@contextlib.contextmanager
def _patched(keep: frozenset[str] | None, no_affine32: bool = False) -> Iterator[None]:
    cls = type("Masked", (_Masked,), {"KEEP": keep, "NO_AFFINE32": no_affine32})
    old = api.Rounding
    api.Rounding = cls  # type: ignore[misc]
    try:
        yield
    finally:
        api.Rounding = old  # type: ignore[misc]


def _nodes_with_margin(graph: Any) -> list[tuple[str, str]]:
    return [
        (n.name, n.op)
        for n in graph.nodes
        if not _soundness._is_exact(n) and (n.op in _soundness.AFFINE or n.op in _soundness.ACTIVATIONS)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="arch:method, e.g. mlp-9x200:pgd")
    p.add_argument("--method", default="crown", choices=("ibp", "crown", "alpha-crown"))
    p.add_argument("--eps", type=float, required=True)
    p.add_argument(
        "--sweep", default="", help="comma-separated eps: only the none/float32/real counts at each"
    )
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--pgd-epochs", type=int, default=5)
    p.add_argument("--pgd-eps", type=float, default=0.05)
    p.add_argument("--resnet-epochs", type=int, default=5)
    p.add_argument("--work", default=str(dm.DEFAULT_WORK))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from robustcert.graph import to_graph

    arch, tmethod = a.model.split(":")
    ((_, _, model, acc),) = dm.models(
        Path(a.work), a.epochs, a.pgd_epochs, a.pgd_eps, a.resnet_epochs, [(arch, tmethod)]
    )
    _, _, test = dm.data()
    xs, ys = test.x[: a.limit], test.y[: a.limit]
    graph = to_graph(model, tuple(xs.shape[1:]))
    with torch.no_grad():
        correct = model(xs).argmax(1) == ys

    def run(rounding: str, eps: float = a.eps) -> torch.Tensor:
        return dm.worst(graph, xs, ys, eps, rounding, method=a.method, batch=a.batch)

    t0 = time.perf_counter()
    if a.sweep:
        print(f"{arch} {tmethod}, {a.method}, first {len(ys)} test examples ({int(correct.sum())} correct)")
        print(f"{'eps':>9} {'none':>6} {'float32':>8} {'real':>6} {'float32 ÷ none':>15}")
        for eps in (float(e) for e in a.sweep.split(",")):
            n = {r: int(((run(r, eps) > 0) & correct).sum()) for r in ("none", "float32", "real")}
            ratio = f"{n['float32'] / n['none']:.2%}" if n["none"] else "-"
            print(f"{eps:>9g} {n['none']:>6} {n['float32']:>8} {n['real']:>6} {ratio:>15}", flush=True)
        return
    base = run("none")
    ref = (base > 0) & correct

    def report(label: str, w: torch.Tensor) -> None:
        n = int(((w > 0) & correct).sum())
        lowered = ((base - w)[ref] / base[ref]).tolist()
        med = f"{statistics.median(lowered):.2e}" if lowered else "-"
        mx = f"{max(lowered):.2e}" if lowered else "-"
        print(f"{label:<34} {n:>9} {n / max(int(ref.sum()), 1):>8.2%} {med:>12} {mx:>12}", flush=True)

    print(
        f"{arch} {tmethod} (clean accuracy {acc}), {a.method}, eps {a.eps:g}, first {len(ys)} test examples "
        f"({int(correct.sum())} correct)"
    )
    print(f"{'rounding margins':<34} {'verified':>9} {'÷ none':>8} {'median loss':>12} {'max loss':>12}")
    report("none", base)
    for r in ("real", "float32"):
        report(r, run(r))
    with _patched(None, no_affine32=True):
        report("float32 minus affine float32 terms", run("float32"))
    for name, op in [(INPUT, "input"), (MERGES, "sums"), *_nodes_with_margin(graph)]:
        with _patched(frozenset({name})):
            report(f"only {name} ({op})", run("float32"))
    print(f"({time.perf_counter() - t0:.0f} s; loss: (margin bound none - with the margin) / (none))")


if __name__ == "__main__":
    main()
