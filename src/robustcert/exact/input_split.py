"""Input splitting: complete search over the input box for networks with few inputs (control nets).

Branch and bound on ReLU neurons (:mod:`robustcert.exact.bab`) splits the network's activations; with
few inputs (≤ 10, e.g. a 5-input controller) splitting the *input box* is the better search: CROWN's
relaxations tighten as the box shrinks (each unstable neuron's interval shrinks, and a neuron whose
interval no longer contains 0 becomes linear), and on a small enough box the bound approaches the
network's true minimum there. Same question and answers as :func:`robustcert.exact.bab.branch_and_bound`:
``o(x) = min_i v_i(x)`` (``require="all"``) or ``max_i v_i(x)`` (``"any"``) of ``v = C f(x) - d``, and the
property holds iff ``o > 0`` on the box.

How. (1) PGD falsification on the whole box (:func:`robustcert.exact.bab.attack`). (2) A heap of open
boxes, lowest certified bound first; each step pops up to ``batch`` of them and halves each along one
input dimension at its float64 midpoint ``m`` (children ``[lo_i, m]`` and ``[m, hi_i]``: together exactly
the parent, since both use the same ``m``). (3) The children are bounded in one call of
:func:`robustcert.bounds.box_bounds` (``float_model="float32"``: every float32 evaluation on the child's
box, float64 rounding of the computation included), floored by their parent's row bounds (a child's box
lies in its parent's). A child whose bound is > 0 is closed. (4) Each open child's centre (rounded to a
float32 point inside it) is evaluated by the float32 network: a value ``<= 0`` is a counterexample. So
the open boxes are searched on a refining grid as they shrink, at the cost of one batched forward pass.
(5) Which dimension: the one whose width the bound is most sensitive to — ``(|dB/dlo_i| + |dB/dhi_i|) ·
(hi_i - lo_i)`` from the gradient of a float32 CROWN bound of the parent (a heuristic pass, no rounding
terms; it chooses, it never proves), the widest dimension breaking ties; ``branching="widest"`` takes the
widest dimension always (for comparisons).

Soundness: ``verified`` only when every leaf of the tree (the leaves cover the box, by (2)) has a
certified lower bound > 0 (by (3); offsets subtracted with the result rounded down, as in bab);
``falsified`` only with a float32 point inside the box whose float32 forward pass has ``o <= 0``.
A box whose every side is at float64 resolution cannot be halved: the search ends ``unknown`` there.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from robustcert.bounds import crown
from robustcert.bounds._common import Ctx, InputSet, rounding_scope
from robustcert.bounds.api import box_bounds
from robustcert.errors import RobustCertError
from robustcert.exact.bab import (
    BabResult,
    _check,
    _lower,
    _spec_values,
    _with_sum_row,
    attack,
    inner_float32,
    objective,
)
from robustcert.graph import to_graph
from robustcert.graph.ir import Graph

MAX_INPUTS = 10  # the pipeline uses input splitting for models with at most this many inputs
BRANCHING = ("gradient", "widest")


@dataclass(order=True)
class _Box:
    bound: float
    order: int
    lo: Tensor = field(compare=False)  # [*input_shape] float64
    hi: Tensor = field(compare=False)
    rows: Tensor = field(compare=False)  # [S] certified lower bounds of C f (before d)
    depth: int = field(compare=False, default=0)


def _split_scores(graph: Graph, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor, require: str) -> Tensor:
    """[D, n] heuristic scores of the input dimensions of the boxes ``lo``/``hi`` ([D, *shape]): the
    gradient of a float32 CROWN bound of the objective w.r.t. each side, times the side's width."""
    shapes = graph.shapes()
    lo32 = lo.float().requires_grad_(True)
    hi32 = hi.float().requires_grad_(True)
    Cb = C.float().unsqueeze(0).expand(lo.shape[0], -1, -1)
    with torch.enable_grad(), rounding_scope(None):
        inset = InputSet(lo32, hi32)
        bounds = crown.intermediate_bounds(graph, inset, shapes)
        lb = crown.crown_lower(graph, Cb, inset, Ctx(shapes, bounds))
        obj = objective(lb - d.float(), require)
        g_lo, g_hi = torch.autograd.grad(obj.sum(), [lo32, hi32], allow_unused=True)
    width = (hi - lo).flatten(1)
    score = torch.zeros_like(width)
    for g in (g_lo, g_hi):
        if g is not None:
            score = score + g.double().flatten(1).abs().nan_to_num(0.0)
    return score * width


def _pick_dims(
    graph: Graph, boxes: list[_Box], C: Tensor, d: Tensor, require: str, branching: str
) -> list[int]:
    """The dimension to halve for each box (-1: none can be halved)."""
    lo = torch.stack([b.lo for b in boxes])
    hi = torch.stack([b.hi for b in boxes])
    width = (hi - lo).flatten(1)
    mid = lo.flatten(1) + width / 2
    splittable = (mid > lo.flatten(1)) & (mid < hi.flatten(1))
    key = width.clone()
    if branching == "gradient":
        score = _split_scores(graph, lo, hi, C, d, require)
        # the score decides; the width (scaled below any positive score difference) breaks ties
        key = score + width * 1e-12 * (1 + score.max(1, keepdim=True).values)
    key = torch.where(splittable, key, torch.full_like(key, -1.0))
    best = key.argmax(1)
    return [int(j) if bool(splittable[i, j]) else -1 for i, j in enumerate(best.tolist())]


def _centres(lo: Tensor, hi: Tensor) -> Tensor | None:
    """Float32 points inside each box ([D, *shape]): the centre, clamped into the inner float32 box;
    None when some box holds no float32 point."""
    lo32, hi32 = inner_float32(lo, hi)
    if bool((lo32 > hi32).any()):
        return None
    return torch.minimum(torch.maximum(((lo + hi) / 2).float(), lo32), hi32)


def input_split(
    model: nn.Module | Graph,
    lo: Tensor,
    hi: Tensor,
    C: Tensor,
    d: Tensor | None = None,
    *,
    require: str = "all",
    timeout: float = 60.0,
    batch: int = 256,
    method: str = "crown",
    branching: str = "gradient",
    max_domains: int = 10_000_000,
    attack_restarts: int = 10,
    attack_steps: int = 50,
    seed: int = 0,
) -> BabResult:
    """Decide whether ``o(x) > 0`` on the box ``[lo, hi]`` ([1, *input_shape]) for the float32 network
    by splitting the input box (module docstring). ``C`` [S, K], ``d`` [S] (default 0); ``require``
    ``"all"`` or ``"any"``; ``timeout`` seconds and ``max_domains`` bound the search (then
    ``"timeout"``); ``batch`` boxes are halved per step (2 x batch children bounded in one call);
    ``method``: ``"crown"`` or ``"alpha-crown"`` for the children's bounds; ``branching``:
    ``"gradient"`` or ``"widest"``; ``attack_*`` / ``seed``: the PGD falsification first.

    Returns a :class:`robustcert.exact.bab.BabResult` (``stage`` ``"attack"``, ``"root"``,
    ``"input-split"``); ``verified`` only when every leaf's certified bound is > 0, ``falsified`` only
    with a checked float32 counterexample in the box. Bad input raises :class:`RobustCertError`."""
    t0 = time.perf_counter()
    lo, hi, C, d0 = _check(lo, hi, C, torch.zeros(len(C)) if d is None else d, require)
    if branching not in BRANCHING:
        raise RobustCertError(f"branching must be one of {', '.join(BRANCHING)}, got {branching!r}")
    if method not in ("crown", "alpha-crown"):
        raise RobustCertError(f"method must be 'crown' or 'alpha-crown', got {method!r}")
    if not (timeout > 0):
        raise RobustCertError(f"timeout must be > 0 seconds, got {timeout}")
    graph = model if isinstance(model, Graph) else to_graph(model, tuple(lo.shape[1:]))
    x_adv, v_adv = attack(
        graph, lo, hi, C, d0, require, restarts=attack_restarts, steps=attack_steps, seed=seed
    )
    if x_adv is not None and v_adv <= 0:
        return BabResult("falsified", math.nan, x_adv, v_adv, 0, 0, time.perf_counter() - t0, "attack")
    Cx, dx = _with_sum_row(C, d0) if require == "any" else (C, d0)
    Cb = Cx.unsqueeze(0)

    def bound(blo: Tensor, bhi: Tensor) -> Tensor:
        return box_bounds(graph, blo, bhi, Cb, float_model="float32", method=method).spec_lower

    rows = bound(lo, hi)[0]
    root_bound = float(_lower(rows, dx, require))
    if root_bound > 0:
        return BabResult("verified", root_bound, domains=1, seconds=time.perf_counter() - t0, stage="root")
    counter = itertools.count()
    heap = [_Box(root_bound, next(counter), lo[0], hi[0], rows)]
    stuck: list[_Box] = []
    closed_min = math.inf
    domains, depth = 1, 0
    history: list[tuple[float, int, float]] = []
    while heap:
        if time.perf_counter() - t0 > timeout or domains >= max_domains:
            return BabResult(
                "timeout",
                min(b.bound for b in heap + stuck),
                domains=domains,
                depth=depth,
                seconds=time.perf_counter() - t0,
                open_domains=len(heap) + len(stuck),
                history=history,
            )
        parents = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
        dims = _pick_dims(graph, parents, Cx, dx, require, branching)
        stuck += [p for p, j in zip(parents, dims, strict=True) if j < 0]
        halves = [(p, j) for p, j in zip(parents, dims, strict=True) if j >= 0]
        if not halves:
            continue
        los, his = [], []
        for side in (0, 1):
            for p, j in halves:
                clo, chi = p.lo.clone(), p.hi.clone()
                m = float(p.lo.reshape(-1)[j] + (p.hi.reshape(-1)[j] - p.lo.reshape(-1)[j]) / 2)
                (chi if side == 0 else clo).view(-1)[j] = m
                los.append(clo)
                his.append(chi)
        clo_t, chi_t = torch.stack(los), torch.stack(his)
        floor = torch.stack([p.rows for p, _ in halves] * 2)
        child_rows = torch.fmax(bound(clo_t, chi_t), floor)
        domains += len(los)
        child_obj = _lower(child_rows, dx, require)
        closed = child_obj[child_obj > 0]
        if closed.numel():
            closed_min = min(closed_min, float(closed.min()))
        keep = (child_obj <= 0).nonzero().flatten()
        if keep.numel():
            x = _centres(clo_t.index_select(0, keep), chi_t.index_select(0, keep))
            if x is not None:
                with torch.no_grad():
                    values = objective(_spec_values(graph, x, C, d0), require)
                i = int(values.argmin())
                if float(values[i]) <= 0:
                    return BabResult(
                        "falsified",
                        min([b.bound for b in heap + stuck] + child_obj.tolist()),
                        x[i : i + 1].clone(),
                        float(values[i]),
                        domains,
                        depth + 1,
                        time.perf_counter() - t0,
                        "input-split",
                        history=history,
                    )
            for c in keep.tolist():
                parent = halves[c % len(halves)][0]
                box = _Box(
                    float(child_obj[c]), next(counter), los[c], his[c], child_rows[c], parent.depth + 1
                )
                depth = max(depth, box.depth)
                heapq.heappush(heap, box)
        history.append(
            (time.perf_counter() - t0, domains, min([b.bound for b in heap + stuck], default=math.inf))
        )
    seconds = time.perf_counter() - t0
    if stuck:
        return BabResult(
            "unknown",
            min(b.bound for b in stuck),
            domains=domains,
            depth=depth,
            seconds=seconds,
            stage="input-split",
            open_domains=len(stuck),
            history=history,
        )
    return BabResult(
        "verified",
        closed_min,
        domains=domains,
        depth=depth,
        seconds=seconds,
        stage="input-split",
        history=history,
    )


__all__ = ["BRANCHING", "MAX_INPUTS", "input_split"]
