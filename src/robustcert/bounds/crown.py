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
* LeakyReLU (slope a): exact when stable; unstable, the chord on the convex side (upper for a <= 1,
  lower for a > 1) and a line ``s x`` through the origin with s between a and 1 on the other
  (:func:`leaky_relu_relax`).
* GELU: any slope with the exact extreme intercept over [lb, ub], which the three monotone pieces of
  GELU' let us compute rigorously; the best of five slopes (:func:`gelu_relax`).
* max pool (``reduce_max`` over gathered windows): below by the entry with the largest lower bound,
  above by the chord of ``max(z_j1, u_2)`` (:func:`reduce_max_relax`).

Intermediate bounds (the intervals of activation inputs) are computed in topological order by CROWN
itself (default) — with the specification being each neuron that the IBP interval leaves unstable
(ReLU, LeakyReLU inputs) or every neuron (other activations) — or by IBP only (``intermediate="ibp"``,
i.e. CROWN-IBP); a max pool's windows are tightened at their source map (:func:`refine_targets`).
Every intermediate CROWN interval is intersected with the IBP one. Nodes that are an affine function
of the input use one batch-shared identity specification (and are skipped for a box when IBP is
already exact there). Neurons of conv feature maps keep their coefficients in their receptive field
(:class:`.crown_window.Patches`, a coefficient representation of the one backward substitution
:func:`._common.backward`); convolutions are always propagated in convolution form, never as dense
matrices. Large specifications are processed in chunks of rows within ``MEMORY_BUDGET_BYTES``.
"""

from __future__ import annotations

import math
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
    outward,
)
from robustcert.bounds._soundness import widen
from robustcert.bounds.ibp import RULES as IBP_RULES
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import OPS, gelu_divisor, numel

ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "gelu", "reduce_max")
# Activations that are exact (linear) on a neuron whose interval does not contain 0 in its interior.
_PIECEWISE_AT_ZERO = ("relu", "leaky_relu")
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


def leaky_relu_relax(
    node: Node, lb: Tensor, ub: Tensor, ctx: Ctx
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """LeakyReLU ``f(x) = x`` (x >= 0), ``a x`` (x < 0) on [lb, ub].

    Stable neurons are exact: slope 1 when lb >= 0, slope a when ub <= 0. For lb < 0 < ub:

    * a <= 1: f = max(x, a x) is convex, so the chord through (lb, a lb) and (ub, ub) is above f on
      [lb, ub]; and for any s in [a, 1], s x <= x when x >= 0 (s <= 1) and s x <= a x when x < 0
      (s >= a), so ``s x`` is below f everywhere. CROWN's adaptive choice s = 1 if ub >= -lb else a
      minimises the area between the line and f, ``(1 - s) ub^2 / 2 + (s - a) lb^2 / 2``.
    * a > 1: the mirror image: f = min(x, a x) is concave, the chord is below and ``s x`` with s in
      [1, a] is above (s x >= x for x >= 0, s x >= a x for x < 0); same adaptive rule.

    The intercept of the line through the origin is 0 (returned as None).
    """
    a = float(node.params["negative_slope"])
    unstable = (lb < 0) & (ub > 0)
    stable = torch.where(lb >= 0, torch.ones_like(lb), torch.full_like(lb, a))
    width = torch.where(unstable, ub - lb, torch.ones_like(ub))
    chord = (ub - a * lb) / width
    chord_a = torch.where(unstable, chord, stable)
    chord_b = torch.where(unstable, lb * (a - chord), torch.zeros_like(lb))
    line = torch.where(unstable, torch.where(ub >= -lb, torch.ones_like(lb), torch.full_like(lb, a)), stable)
    if a <= 1.0:
        return line, None, chord_a, chord_b
    return chord_a, chord_b, line, None


_GELU_ITERS = 50
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


def _gelu_fns(c: float) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``f(x) = 0.5 x (1 + erf(x / c))`` and ``f'(x) = 0.5 (1 + erf(x / c)) + (x / c) exp(-(x / c)^2) / sqrt(pi)``
    (written with erfc, accurate for very negative x)."""

    def f(x: Tensor) -> Tensor:
        return 0.5 * x * torch.special.erfc(-x / c)

    def df(x: Tensor) -> Tensor:
        z = x / c
        return 0.5 * torch.special.erfc(-z) + z * _INV_SQRT_PI * torch.exp(-z * z)

    return f, df


def _line_extremes(
    f: Callable[[Tensor], Tensor],
    df: Callable[[Tensor], Tensor],
    a: Tensor,
    lb: Tensor,
    ub: Tensor,
    c: float,
    iters: int = _GELU_ITERS,
) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds of ``min`` and ``max`` of ``g(x) = f(x) - a x`` over [lb, ub] (any slope a),
    for f with f' non-increasing on (-inf, -c], non-decreasing on [-c, c], non-increasing on [c, inf).

    On each of the three pieces (cut to [lb, ub]) g' = f' - a is monotone, so g has an interior extremum
    there only if g' changes sign between the ends of the piece, at the unique sign change. Hence the
    extremes of g are among: g at lb, ub, -c, c (clipped), and, where g' changes sign on a piece, g at the
    sign change r. Bisection keeps a bracket [p, q] of r (g'(p), g'(q) of opposite signs); for x in
    [p, q], |g(x) - g(p)| <= (q - p) max(|g'(p)|, |g'(q)|) since |g'| is largest at an end of the
    bracket (g' is monotone there), so ``max(g(p), g(q)) + (q - p) L`` bounds g(r) from above (and the
    mirror expression from below). The bracket is located without gradients; the values carry them.
    """

    def g(x: Tensor) -> Tensor:
        return f(x) - a * x

    ends = [lb, ub, torch.clamp(torch.full_like(lb, -c), lb, ub), torch.clamp(torch.full_like(lb, c), lb, ub)]
    vals = [g(e) for e in ends]
    g_min = torch.minimum(torch.minimum(vals[0], vals[1]), torch.minimum(vals[2], vals[3]))
    g_max = torch.maximum(torch.maximum(vals[0], vals[1]), torch.maximum(vals[2], vals[3]))
    cuts = [lb, ends[2], ends[3], ub]
    for p0, q0 in zip(cuts[:-1], cuts[1:], strict=True):
        with torch.no_grad():
            a0 = a.detach()
            d_p, d_q = df(p0) - a0, df(q0) - a0
            has_root = (p0 < q0) & ((d_p > 0) != (d_q > 0))
            if not bool(has_root.any()):
                continue
            p, q, up = p0.detach(), q0.detach(), d_p > 0
            for _ in range(iters):
                m = (p + q) / 2
                same = (df(m) - a0 > 0) == up
                p, q = torch.where(same, m, p), torch.where(same, q, m)
            slope_bound = torch.maximum((df(p) - a0).abs(), (df(q) - a0).abs())
            slack = (q - p) * slope_bound
        gp, gq = g(p), g(q)
        g_max = torch.where(has_root, torch.maximum(g_max, torch.maximum(gp, gq) + slack), g_max)
        g_min = torch.where(has_root, torch.minimum(g_min, torch.minimum(gp, gq) - slack), g_min)
    return g_min, g_max


def gelu_relax(node: Node, lb: Tensor, ub: Tensor, ctx: Ctx) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """GELU ``f(x) = 0.5 x (1 + erf(x / c))`` (c = sqrt 2 for torch's GELU) on [lb, ub].

    f'' = (2 / (c sqrt pi)) exp(-x^2 / c^2) (1 - x^2 / c^2): f is convex on [-c, c] and concave outside,
    so it is neither convex nor concave and the tangent/chord rules of sigmoid do not apply. Instead,
    for ANY slope a, ``a x + min_[lb,ub] (f - a x) <= f(x) <= a x + max_[lb,ub] (f - a x)`` on [lb, ub] by
    definition of min and max; :func:`_line_extremes` bounds that min from below and max from above
    rigorously (so both lines stay valid). The slope only affects tightness: each bound takes the best
    (largest lower, smallest upper line at the midpoint, i.e. the least area between line and f) of
    the slopes {chord, f'(lb), f'(ub), f'(mid), 0}. On a convex piece this reproduces the chord above
    (the max of f - chord x is at the ends, where it is the chord's intercept) and a tangent below; on
    an interval straddling an inflection point, 0 gives the constant (IBP-style) bound when it is best.
    Results are cached per node and interval in ``ctx.state`` (the same intervals are relaxed once per
    backward pass through the node).
    """
    cache = ctx.state.setdefault("gelu_relax", {})
    hit = cache.get(node.name)
    if hit is not None and hit[0] is lb and hit[1] is ub:
        return hit[2]
    c = gelu_divisor(node)
    f, df = _gelu_fns(c)
    fl, fu, mid = f(lb), f(ub), (lb + ub) / 2
    width = ub - lb
    wide = width > 1e-12
    chord = torch.where(wide, (fu - fl) / torch.where(wide, width, torch.ones_like(width)), df(lb))
    slopes = torch.stack([chord, df(lb), df(ub), df(mid), torch.zeros_like(lb)])
    n = slopes.shape[0]
    L, U = lb.expand((n,) + tuple(lb.shape)), ub.expand((n,) + tuple(ub.shape))
    g_min, g_max = _line_extremes(f, df, slopes, L, U, c)
    lower_at_mid, upper_at_mid = slopes * mid + g_min, slopes * mid + g_max
    i_lo = lower_at_mid.argmax(dim=0, keepdim=True)
    i_up = upper_at_mid.argmin(dim=0, keepdim=True)
    out = (
        slopes.gather(0, i_lo)[0],
        g_min.gather(0, i_lo)[0],
        slopes.gather(0, i_up)[0],
        g_max.gather(0, i_up)[0],
    )
    cache[node.name] = (lb, ub, out)
    return out


def reduce_max_relax(node: Node, lb: Tensor, ub: Tensor, ctx: Ctx) -> tuple[Tensor, None, Tensor, Tensor]:
    """``y = max_j z_j`` over dim 1 of ``z`` ([B, k, *rest], the gathered windows of a max pool; entries
    masked out by ``valid`` are ignored) with intervals [l_j, u_j].

    * Lower: ``y >= z_{j*}`` for any j, here j* = argmax_j l_j (the entry guaranteed largest at worst).
    * Upper: let j1 = argmax_j u_j and u_2 the second-largest upper bound (-inf if there is none). For
      every z in the box, ``max_j z_j <= max(z_j1, u_2) = h(z_j1)``, and h(t) = max(t, u_2) is convex,
      so on [l_j1, u_j1] it lies below its chord through (l_j1, h(l_j1)) and (u_j1, u_j1): slope
      ``(u_j1 - h(l_j1)) / (u_j1 - l_j1)`` in [0, 1], intercept ``h(l_j1) - slope * l_j1``. When
      l_j1 >= u_2 this is ``y = z_j1`` (exact); the chord is never above the constant bound u_j1; for
      u_j1 = l_j1 it is that constant.

    Slopes are shaped like the input ([B, k, *rest]: one coefficient per window entry); the upper
    intercept like the output ([B, 1, *rest]), so the backward step sums over the window.
    """
    valid = node.params.get("valid")
    lo_m, up_m = lb, ub
    if valid is not None:
        keep = valid.to(lb.device)
        lo_m, up_m = lb.masked_fill(~keep, -math.inf), ub.masked_fill(~keep, -math.inf)
    j_low = lo_m.argmax(dim=1, keepdim=True)
    aL = torch.zeros_like(lb).scatter(1, j_low, 1.0)
    top = up_m.topk(min(2, int(lb.shape[1])), dim=1)
    u1, j1 = top.values[:, :1], top.indices[:, :1]
    u2 = top.values[:, 1:2] if lb.shape[1] > 1 else torch.full_like(u1, -math.inf)
    l1 = lb.gather(1, j1)
    h = torch.maximum(l1, u2)
    width = u1 - l1
    pos = width > 0
    slope = torch.where(
        pos, (u1 - h) / torch.where(pos, width, torch.ones_like(width)), torch.zeros_like(width)
    )
    aU = torch.zeros_like(lb).scatter(1, j1, slope)
    return aL, None, aU, h - slope * l1


RULES: dict[str, Affine | Relax] = {
    **AFFINE_BACK,
    "relu": Relax(relu_relax),
    "sigmoid": Relax(sigmoid_relax),
    "tanh": Relax(tanh_relax),
    "leaky_relu": Relax(leaky_relu_relax),
    "gelu": Relax(gelu_relax),
    "reduce_max": Relax(reduce_max_relax),
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


def refine_targets(graph: Graph) -> dict[str, list[str]]:
    """Nodes whose interval CROWN tightens -> the activation ops that benefit.

    Every activation input, except the windows (``gather``) of a max pool: CROWN's bound of a copied
    entry is its bound at the source, so the source map is tightened instead (once per neuron, not once
    per window it falls in) and the windows' IBP interval copies it. A source that is itself an
    activation's output is left to IBP: for act(z) with z's interval already tightened to [l, u], CROWN's
    bound is a relaxation line minimised (maximised) over [l, u], which is never better than act's range
    on [l, u], i.e. IBP's interval.
    """
    by_name = {n.name: n for n in graph.nodes}
    out: dict[str, list[str]] = {}
    for name, ops in activation_inputs(graph).items():
        node = by_name[name]
        if node.op == "gather" and all(op == "reduce_max" for op in ops):
            src = by_name[node.inputs[0]]
            if src.op not in ACTIVATIONS:
                out.setdefault(src.name, []).extend(ops)
            continue
        out.setdefault(name, []).extend(ops)
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
        merge = node.op in ("add", "concat")
        if node.op in ACTIVATIONS or merge or not all(exact[i] for i in node.inputs):
            mixing[node.name], exact[node.name] = 99, False
            continue
        m = mixing[node.inputs[0]] + (node.op in ("linear", "conv2d", "avgpool2d", "gather"))
        mixing[node.name], exact[node.name] = m, m <= 1
    return exact


class UnitRows(Dense):
    """The identity specification of chosen neurons (``data`` one-hot, ``idx`` [B, S] their flat
    indices): through a linear layer its transpose is the layer's rows ``W[idx]`` and biases ``b[idx]``,
    gathered (exact copies) instead of multiplied. ``sign`` [B, S] of +-1 (optional): rows ``sign * e_idx``
    (negated copies, exact too)."""

    def __init__(self, data: Tensor, idx: Tensor, sign: Tensor | None = None) -> None:
        super().__init__(data)
        self.idx, self.sign = idx, sign

    def through(self, node: Node, rule: Affine, ctx: Ctx) -> tuple[list[Coeffs], Tensor | None]:
        if node.op != "linear" or len(ctx.shapes[node.name]) != 1:
            return super().through(node, rule, ctx)
        weight = node.params["weight"].to(self.data.dtype)[self.idx]
        bias = node.params.get("bias")
        b = None if bias is None else bias.to(self.data.dtype)[self.idx]
        if self.sign is not None:
            weight = weight * self.sign.unsqueeze(-1)
            b = None if b is None else b * self.sign
        return [Dense(weight)], b


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
        step = chunk_rows(n, 1, big, dtype.itemsize)
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
    step = chunk_rows(s_max, B, big, dtype.itemsize)
    for r0 in range(0, s_max, step):
        r1 = min(s_max, r0 + step)
        idx = order[:, r0:r1]
        start: Coeffs
        if geos is not None:
            start = crown_window.Patches.rows(idx, shape, target, geos, dtype)
        else:
            dense = torch.zeros((B, r1 - r0, n), dtype=dtype)
            dense.scatter_(2, idx.unsqueeze(-1), 1.0)
            start = UnitRows(dense.reshape((B, r1 - r0) + shape), idx)
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
    # the coefficients were made here (A0 is the caller's fresh start, used once): the input leaf may be
    # overwritten by its last user, i.e. the lower pass unless the upper one shares it
    inp = graph.input_name
    shared = inp in ll and inp in lu and ll[inp] is lu[inp]
    lo = concretize(ll, bl, graph, inset, ctx, consume=not shared)
    up = concretize(lu, bu, graph, inset, ctx, upper=True, consume=True)
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
    refine_dtype: torch.dtype | None = None,
) -> dict[str, Bounds]:
    """Intervals of every node: IBP everywhere, tightened at activation inputs by CROWN (``mode="crown"``)
    or IBP only (``mode="ibp"``). With ``mags`` (certification), the intervals of activation inputs
    are widened by the rounding safety margin, so every relaxation built from them is valid.

    With an L2 set, nodes that are affine in the input also get the exact ball bound (backward identity),
    intersected with the box bound, in both modes. The nodes tightened are those of
    :func:`refine_targets`; every node a relaxation reads (and every tightened node) is widened.
    """
    needs = activation_inputs(graph)
    targets = refine_targets(graph)
    nonlin = nonlinear_ancestry(graph)
    exact = ibp_is_exact(graph)
    ctx = Ctx(shapes)
    dtype = inset.lo.dtype
    if refine_dtype is not None and refine_dtype != dtype:
        # CROWN passes in refine_dtype on outward-rounded copies of the set and the intervals (each
        # converted once); their results are exact in dtype and are intersected with the IBP interval
        cinset, converted = inset.outward(refine_dtype), {}

        def crown_bounds(name: str, rows: Tensor | None, done: dict[str, Bounds]) -> Bounds:
            for k, v in done.items():
                if k not in converted:
                    converted[k] = outward(v, refine_dtype)
            ctx.bounds = converted
            cl, cu = crown_node_bounds(graph, name, cinset, ctx, rows, table, use_windows)
            return cl.to(dtype), cu.to(dtype)
    else:

        def crown_bounds(name: str, rows: Tensor | None, done: dict[str, Bounds]) -> Bounds:
            ctx.bounds = done
            return crown_node_bounds(graph, name, inset, ctx, rows, table, use_windows)

    def refine(node: Node, b: Bounds, done: dict[str, Bounds]) -> Bounds:
        if node.op == "input" or (node.name not in needs and node.name not in targets):
            return b
        lo, hi = b
        if node.name not in targets:
            pass
        elif not nonlin[node.name]:
            if inset.is_l2 or (mode == "crown" and not exact[node.name]):
                cl, cu = crown_bounds(node.name, None, done)
                lo, hi = torch.maximum(lo, cl), torch.minimum(hi, cu)
        elif mode == "crown":
            if all(op in _PIECEWISE_AT_ZERO for op in targets[node.name]):
                want = ((lo < 0) & (hi > 0)).flatten(1)
            else:
                want = torch.ones(lo.shape[0], lo[0].numel(), dtype=torch.bool)
            cl, cu = crown_bounds(node.name, want, done)
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
