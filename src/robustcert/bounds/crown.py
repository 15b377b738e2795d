"""CROWN (Zhang et al., 2018): backward propagation of linear bounds with per-neuron linear relaxations.

One table ``RULES`` maps each op to its backward rule: affine ops (from :mod:`._affine`) transpose the
coefficients; activations give linear lower/upper bounds valid on their input interval:

* ReLU, unstable (lb < 0 < ub): upper chord ``ub (x - lb) / (ub - lb)``; lower ``a x`` with the adaptive slope
  ``a = 1 if ub >= -lb else 0``. Stable neurons are exact (identity or zero).
* sigmoid / tanh (convex on x <= 0, concave on x >= 0): on a convex piece the chord is an upper and the
  tangent at the midpoint a lower bound (mirrored on a concave piece); across 0, the tangent at the
  point d >= 0 whose tangent passes above (lb, f(lb)) is an upper bound (found by bisection, keeping a
  point that satisfies the check), or the chord when even the tangent at ub does not; the lower bound
  mirrors this. Each case is a classical fact of convex functions (proofs in ``_s_shaped_relax``).

Intermediate bounds (the intervals of activation inputs) are computed in topological order by CROWN
itself (default) — with the specification being each neuron that the IBP interval leaves unstable — or
by IBP only (``intermediate="ibp"``, i.e. CROWN-IBP). Every intermediate CROWN interval is intersected
with the IBP one. Nodes that are an affine function of the input use one batch-shared identity
specification (and are skipped for a box when IBP is already exact there). Neurons of conv feature maps
keep their coefficients in their receptive field (:class:`.crown_window.Patches`, a coefficient
representation of the one backward substitution :func:`._common.backward`); convolutions are always
propagated in convolution form, never as dense matrices. Large specifications are processed in chunks of
rows within ``MEMORY_BUDGET_BYTES``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robustcert.bounds import crown_window
from robustcert.bounds._affine import AFFINE_BACK
from robustcert.bounds._common import (
    Affine,
    Bounds,
    Coeffs,
    Ctx,
    Dense,
    InputSet,
    Relax,
    backward,
    chunk_rows,
    concretize,
    forward_pass,
)
from robustcert.bounds._soundness import widen
from robustcert.bounds.ibp import RULES as IBP_RULES
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import OPS, numel

ACTIVATIONS = ("relu", "sigmoid", "tanh")
# Below this interval width, sigmoid/tanh use constant bounds f(lb) <= f(x) <= f(ub) (monotone).
_NARROW = 1e-9


def relu_relax(node: Node, lb: Tensor, ub: Tensor, ctx: Ctx) -> tuple[Tensor, None, Tensor, Tensor]:
    """ReLU on [lb, ub]: exact when stable; chord above and adaptive slope below when unstable (the lower
    intercept is 0, returned as None)."""
    active, unstable = lb >= 0, (lb < 0) & (ub > 0)
    width = torch.where(unstable, ub - lb, torch.ones_like(ub))
    slope = torch.where(unstable, ub / width, active.to(ub.dtype))
    aU, bU = slope, torch.where(unstable, -lb * slope, torch.zeros_like(ub))
    aL = torch.where(unstable, (ub >= -lb).to(ub.dtype), active.to(ub.dtype))
    return aL, None, aU, bU


def _sigmoid_d(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1 - s)


def _tanh_d(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return 1 - t * t


def _tangent(
    f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], d: Tensor
) -> tuple[Tensor, Tensor]:
    a = df(d)
    return a, f(d) - a * d


def _checked_tangent(
    f: Callable[[Tensor], Tensor],
    df: Callable[[Tensor], Tensor],
    ok: Callable[[Tensor], Tensor],
    end: Tensor,
    iters: int,
    chord_a: Tensor,
    chord_b: Tensor,
) -> tuple[Tensor, Tensor]:
    """The tangent at a point d between 0 and ``end`` that passes ``ok``, as close to 0 as ``iters``
    bisection steps get: where ``ok(end)`` fails, the chord instead. Only points that passed ``ok`` are
    ever kept, so the tangent returned always passed the check."""
    good, bad = end, torch.zeros_like(end)
    end_ok = ok(good)
    for _ in range(iters):
        m = (good + bad) / 2
        m_ok = ok(m)
        good, bad = torch.where(m_ok, m, good), torch.where(m_ok, bad, m)
    t_a, t_b = _tangent(f, df, good)
    return torch.where(end_ok, t_a, chord_a), torch.where(end_ok, t_b, chord_b)


def _s_shaped_relax(
    f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor], lb: Tensor, ub: Tensor, iters: int = 40
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Linear bounds of an increasing f, convex on (-inf, 0] and concave on [0, inf), over [lb, ub].

    * ub <= 0 (convex): chord >= f and tangent at the midpoint <= f on [lb, ub].
    * lb >= 0 (concave): chord <= f and tangent at the midpoint >= f.
    * lb < 0 < ub, upper: for d >= 0 the tangent t_d is >= f on [0, inf) (concavity), and t_d - f is
      concave on [lb, 0] with t_d(0) >= f(0), so t_d >= f on [lb, ub] iff t_d(lb) >= f(lb). If the tangent at
      ub passes this check we bisect for a small valid d in [0, ub] (always keeping a checked d).
      Otherwise f'(ub) > chord slope, so chord - f is convex and decreasing on [0, ub] with zero at ub
      (hence >= 0 there), and concave on [lb, 0] with non-negative ends: the chord is an upper bound.
    * lb < 0 < ub, lower: the mirror image (tangent at d <= 0 checked at ub, else the chord).
    * ub - lb < 1e-9: constants f(lb) and f(ub) (f is increasing).
    """
    fl, fu = f(lb), f(ub)
    width = ub - lb
    narrow = width < _NARROW
    safe_w = torch.where(narrow, torch.ones_like(width), width)
    chord_a = (fu - fl) / safe_w
    chord_b = fl - chord_a * lb
    mid_a, mid_b = _tangent(f, df, (lb + ub) / 2)

    # straddling, upper bound: tangent at d in [0, ub] valid if it is >= f(lb) at lb
    def upper_ok(d: Tensor) -> Tensor:
        a, b = _tangent(f, df, d)
        return a * lb + b >= fl

    # straddling, lower bound: tangent at d in [lb, 0] valid if it is <= f(ub) at ub
    def lower_ok(d: Tensor) -> Tensor:
        a, b = _tangent(f, df, d)
        return a * ub + b <= fu

    up_a_str, up_b_str = _checked_tangent(f, df, upper_ok, ub.clamp(min=0), iters, chord_a, chord_b)
    lo_a_str, lo_b_str = _checked_tangent(f, df, lower_ok, lb.clamp(max=0), iters, chord_a, chord_b)

    convex, concave = ub <= 0, lb >= 0
    aU = torch.where(convex, chord_a, torch.where(concave, mid_a, up_a_str))
    bU = torch.where(convex, chord_b, torch.where(concave, mid_b, up_b_str))
    aL = torch.where(convex, mid_a, torch.where(concave, chord_a, lo_a_str))
    bL = torch.where(convex, mid_b, torch.where(concave, chord_b, lo_b_str))
    zero = torch.zeros_like(lb)
    aU, bU = torch.where(narrow, zero, aU), torch.where(narrow, fu, bU)
    aL, bL = torch.where(narrow, zero, aL), torch.where(narrow, fl, bL)
    return aL, bL, aU, bU


def sigmoid_relax(node: Node, lb: Tensor, ub: Tensor, ctx: Ctx) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _s_shaped_relax(torch.sigmoid, _sigmoid_d, lb, ub)


def tanh_relax(node: Node, lb: Tensor, ub: Tensor, ctx: Ctx) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _s_shaped_relax(torch.tanh, _tanh_d, lb, ub)


RULES: dict[str, Affine | Relax] = {
    **AFFINE_BACK,
    "relu": Relax(relu_relax),
    "sigmoid": Relax(sigmoid_relax),
    "tanh": Relax(tanh_relax),
}

assert set(RULES) == set(OPS) - {"input"}


# --------------------------------------------------------------------------------------------------
# intermediate bounds
# --------------------------------------------------------------------------------------------------


def activation_inputs(graph: Graph) -> dict[str, list[str]]:
    """Nodes whose interval a relaxation needs -> the activation ops reading them."""
    out: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op in ACTIVATIONS:
            out.setdefault(node.inputs[0], []).append(node.op)
    return out


def nonlinear_ancestry(graph: Graph) -> dict[str, bool]:
    """For each node: does it depend on the input through an activation?"""
    out: dict[str, bool] = {}
    for node in graph.nodes:
        out[node.name] = node.op in ACTIVATIONS or any(out[i] for i in node.inputs)
    return out


def ibp_is_exact(graph: Graph) -> dict[str, bool]:
    """Nodes that are an affine function of the input with at most one mixing op (linear, conv, pool) and
    no branch merge: for them the IBP interval over a box is exactly the range, so CROWN cannot improve."""
    mixing: dict[str, int] = {}
    exact: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op == "input":
            mixing[node.name], exact[node.name] = 0, True
            continue
        if node.op in ACTIVATIONS or node.op == "add" or not all(exact[i] for i in node.inputs):
            mixing[node.name], exact[node.name] = 99, False
            continue
        m = mixing[node.inputs[0]] + (node.op in ("linear", "conv2d", "avgpool2d"))
        mixing[node.name], exact[node.name] = m, m <= 1
    return exact


def _max_numel(graph: Graph, target: str, shapes: dict[str, tuple[int, ...]]) -> int:
    return max(numel(shapes[n]) for n in graph.ancestors(target))


def crown_node_bounds(
    graph: Graph,
    target: str,
    inset: InputSet,
    ctx: Ctx,
    rows: Tensor | None,
    table: dict[str, Affine | Relax],
    use_windows: bool = True,
) -> Bounds:
    """CROWN lower/upper bounds of the neurons of ``target``.

    ``rows``: None = every neuron, with a batch-shared identity specification (only valid when no
    relaxation lies between the input and ``target``); or a bool mask [B, N] of the neurons wanted per
    example (the others get -inf / +inf), computed with receptive-field windows
    (:mod:`.crown_window`) when ``target`` is a conv feature map reached by a supported chain of ops.
    Processed in chunks of rows.
    """
    shape = ctx.shapes[target]
    n = numel(shape)
    B, dtype = inset.batch, inset.lo.dtype
    big = _max_numel(graph, target, ctx.shapes)
    los, ups = [], []
    if rows is None:
        step = chunk_rows(n, 1, big)
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            A0 = torch.zeros((1, r1 - r0, n), dtype=dtype)
            A0[0, torch.arange(r1 - r0), torch.arange(r0, r1)] = 1.0
            lo, up = _bounds_of(graph, target, A0.reshape((1, r1 - r0) + shape), inset, ctx, table)
            los.append(lo)
            ups.append(up)
        return torch.cat(los, 1).reshape((B,) + shape), torch.cat(ups, 1).reshape((B,) + shape)
    counts = rows.sum(1)
    s_max = int(counts.max()) if B else 0
    lo_full = torch.full((B, n), -torch.inf, dtype=dtype)
    up_full = torch.full((B, n), torch.inf, dtype=dtype)
    if s_max == 0:
        return lo_full.reshape((B,) + shape), up_full.reshape((B,) + shape)
    order = torch.argsort(rows.to(torch.int8), dim=1, descending=True, stable=True)[:, :s_max]
    valid = torch.arange(s_max).unsqueeze(0) < counts.unsqueeze(1)
    geos = crown_window.plan(graph, target, ctx) if use_windows else None
    if geos is not None:
        big = crown_window.max_window_numel(geos, ctx)
    step = chunk_rows(s_max, B, big)
    for r0 in range(0, s_max, step):
        r1 = min(s_max, r0 + step)
        idx = order[:, r0:r1]
        start: Coeffs
        if geos is not None:
            start = crown_window.Patches.rows(idx, shape, target, geos, dtype)
        else:
            dense = torch.zeros((B, r1 - r0, n), dtype=dtype)
            dense.scatter_(2, idx.unsqueeze(-1), 1.0)
            start = Dense(dense.reshape((B, r1 - r0) + shape))
        lo, up = _bounds_of(graph, target, start, inset, ctx, table)
        ok = valid[:, r0:r1]
        lo_full = lo_full.scatter_reduce(1, idx, torch.where(ok, lo, -torch.inf), reduce="amax")
        up_full = up_full.scatter_reduce(1, idx, torch.where(ok, up, torch.inf), reduce="amin")
    return lo_full.reshape((B,) + shape), up_full.reshape((B,) + shape)


def _bounds_of(
    graph: Graph,
    target: str,
    A0: Coeffs | Tensor,
    inset: InputSet,
    ctx: Ctx,
    table: dict[str, Affine | Relax],
) -> Bounds:
    ll, bl, lu, bu = backward(graph, target, A0, table, ctx, lower=True, upper=True)
    lo = concretize(ll, bl, graph, inset, ctx)
    up = concretize(lu, bu, graph, inset, ctx, upper=True)
    rows = (A0.data if isinstance(A0, Coeffs) else A0).shape[1]
    return lo.expand(inset.batch, rows), up.expand(inset.batch, rows)


def intermediate_bounds(
    graph: Graph,
    inset: InputSet,
    shapes: dict[str, tuple[int, ...]],
    *,
    mode: str = "crown",
    mags: dict[str, Tensor] | None = None,
    table: dict[str, Affine | Relax] = RULES,
    use_windows: bool = True,
) -> dict[str, Bounds]:
    """Intervals of every node: IBP everywhere, tightened at activation inputs by CROWN (``mode="crown"``)
    or IBP only (``mode="ibp"``). With ``mags`` (certification), the intervals of activation inputs
    are widened by the rounding safety margin, so every relaxation built from them is valid.

    With an L2 set, nodes that are affine in the input also get the exact ball bound (backward identity),
    intersected with the box bound, in both modes.
    """
    needs = activation_inputs(graph)
    nonlin = nonlinear_ancestry(graph)
    exact = ibp_is_exact(graph)
    ctx = Ctx(shapes)

    def refine(node: Node, b: Bounds, done: dict[str, Bounds]) -> Bounds:
        if node.op == "input" or node.name not in needs:
            return b
        ctx.bounds = done
        lo, hi = b
        if not nonlin[node.name]:
            if inset.is_l2 or (mode == "crown" and not exact[node.name]):
                cl, cu = crown_node_bounds(graph, node.name, inset, ctx, None, table)
                lo, hi = torch.maximum(lo, cl), torch.minimum(hi, cu)
        elif mode == "crown":
            if all(op == "relu" for op in needs[node.name]):
                want = ((lo < 0) & (hi > 0)).flatten(1)
            else:
                want = torch.ones(lo.shape[0], lo[0].numel(), dtype=torch.bool)
            cl, cu = crown_node_bounds(graph, node.name, inset, ctx, want, table, use_windows)
            lo, hi = torch.maximum(lo, cl), torch.minimum(hi, cu)
        if mags is not None:
            lo, hi = widen((lo, hi), mags[node.name])
        return lo, hi

    return forward_pass(graph, IBP_RULES, (inset.lo, inset.hi), refine)


def crown_lower(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    table: dict[str, Affine | Relax] = RULES,
) -> Tensor:
    """CROWN lower bound of ``C · output`` ([B, S]) given the intervals in ``ctx.bounds``; no margin."""
    ll, bl, _, _ = backward(graph, graph.output, C, table, ctx, lower=True, upper=False)
    return concretize(ll, bl, graph, inset, ctx).expand(inset.batch, C.shape[1])


def crown_output_bounds(
    graph: Graph, inset: InputSet, ctx: Ctx, table: dict[str, Affine | Relax] = RULES
) -> Bounds:
    """CROWN lower and upper bounds of every output ([B, K] each), given ``ctx.bounds``; no margin."""
    k = numel(ctx.shapes[graph.output])
    eye = torch.eye(k, dtype=inset.lo.dtype).reshape((1, k) + ctx.shapes[graph.output])
    return _bounds_of(graph, graph.output, eye, inset, ctx, table)
