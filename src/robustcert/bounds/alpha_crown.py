"""alpha-CROWN (Xu et al., 2021): CROWN with the free slopes of unstable ReLU / LeakyReLU neurons
optimised by gradient ascent on the bound.

Relaxations. For ReLU, alpha is the slope of the lower line ``alpha x <= relu(x)``; for LeakyReLU with
slope a it picks the line ``s x`` through the origin with ``s = min(a, 1) + alpha |1 - a|`` — below f
when a <= 1, above f when a > 1 (see :func:`.crown.leaky_relu_relax`). Any alpha in [0, 1] gives a
valid relaxation on [lb, ub] with lb < 0 < ub, so every choice of alphas gives a sound bound as long as
the intervals it is built on are valid. Other ops (sigmoid, tanh, GELU, max pool) keep CROWN's
relaxation. The table ``RULES`` is CROWN's with the ReLU and LeakyReLU rules replaced.

Parameters. One alpha per (specification row, neuron) of every ReLU / LeakyReLU that has an unstable
neuron (lb < 0 < ub) in the intervals ``ctx.bounds`` computed beforehand (CROWN's or IBP's); all such
layers are optimised, each starting from CROWN's adaptive slope (1 where ub >= -lb).

Two modes.

* ``optimize_intermediate=False`` (default): the intermediate intervals stay fixed; only the output
  specification is re-propagated. Cost per step: one backward pass of the S specification rows.
* ``optimize_intermediate=True`` (CROWN-Optimized in auto_LiRPA's terms): every node that CROWN
  tightened (:func:`.crown.refine_targets`), that lies after an activation and that feeds only ReLU /
  LeakyReLU gets its own alphas: one per (bound row, neuron) of every ReLU / LeakyReLU before it, for a
  lower-bound row and an upper-bound row (the latter as the lower bound of ``-z``) of each of its
  neurons that the fixed intervals leave unstable (only those matter to a relaxation). Two phases:
  the first ``steps - intermediate_steps`` steps are the default mode's search; the last
  ``intermediate_steps`` (``INTERMEDIATE_STEPS`` = 6) steps, warm-started from its final-bound alphas,
  optimise every alpha jointly at ``JOINT_LR_SCALE`` (3) times the learning rate. Each joint step
  recomputes the intervals in topological order with their alphas, intersects each with the fixed
  interval (never looser), uses them for the later nodes and the final bound, and ascends the sum of
  the final row bounds only; gradients flow through the intermediate intervals into the later
  relaxations. In the search the intersection takes the value of ``max``/``min`` but passes the
  gradient of the recomputed bound (straight-through): the float32 recomputation starts a hair looser
  than the fixed interval, and a plain ``max`` would pass no gradient at all. Rows of a conv feature
  map keep their coefficients in their receptive field (:class:`.crown_window.Patches`, the alphas laid
  out as windows too), other rows are dense (a linear layer's rows gathered, :class:`.crown.UnitRows`).
  The batch is split into chunks whose estimated search memory fits ``INTERMEDIATE_BUDGET_BYTES`` (a
  node whose rows alone would not fit for one example keeps its fixed interval). Cost per joint step:
  one backward pass per optimised node for twice its unstable neurons as rows, on top of the final one.
  Why two phases: the joint steps cost 10-40x a default step, and most of the final alphas' gain comes
  cheaply first. Measured (one core, the issue-14 models, 8 examples, eps 0.03, 20 steps at lr 0.1,
  mean gain over CROWN): 784-256-256-10 MLP +0.0338 (20 joint steps at lr 0.1: +0.0350; default mode
  +0.0243), conv net (2 conv + 1 linear hidden) +0.0092 (+0.0096; +0.0040), 6x256 MLP +5.24 (+5.60;
  +1.61) in 0.8 s, 5.4 s and 6.8 s (2.6 s, 17.6 s and 27.2 s with 20 joint steps; default 0.2 s,
  1.0 s, 0.6 s). Six joint steps at 3x the rate keep 96-97% of the 20-step gain; 4-5 steps lose the
  conv net's margin over auto_LiRPA's +0.0090.

Optimiser (both modes): projected Adam (Kingma & Ba; alphas clamped to [0, 1] after each step) with the
learning rate multiplied by ``LR_DECAY`` = 0.98 per step, as auto_LiRPA does. The iterate with the best
bound is kept: per specification row in the default mode, per example in the intermediate mode (rows of
an example share the intermediate alphas, so only a whole example's alphas are coherent). Early stop:
when the objective (the sum of the selected row bounds) has not improved by a relative ``EARLY_STOP_REL``
= 1e-4 (plus ``1e-12`` absolute) for ``EARLY_STOP_PATIENCE`` = 5 consecutive steps. Measured on the
MNIST-sized MLPs (default mode): at 20 steps and lr 0.1 the decay costs at most 0.3% of the gain over
CROWN (6x256 MLP 1.620 -> 1.615), at lr 0.5 or 100 steps it helps (1.643 -> 1.648, 1.653 -> 1.663);
the early stop never fired at 20 steps there (it cuts long runs once converged).

Soundness. The search runs in ``search_dtype`` (float32) and only *proposes* alphas: its values are
never returned. The proposal is re-evaluated in the dtype of ``inset`` under the caller's rounding scope
(so :func:`._common.backward` and :func:`._common.concretize` add their rounding slack), without
gradients: every alpha is first clamped to [0, 1]; in the intermediate mode the intervals are recomputed
in topological order by ``backward`` + ``concretize`` (as CROWN does) and each is intersected with the
interval in ``ctx.bounds`` (a copy: the caller's dict is never changed); then the final bound is
computed over those intervals. Given valid earlier intervals, any alpha in [0, 1] gives valid
relaxations, so by induction every recomputed interval and the final bound are valid whatever the
proposal. The result is the elementwise maximum of that and plain CROWN on ``ctx.bounds``, hence never
looser than CROWN with the same intervals; in the intermediate mode also of the default mode's result
(its first phase, certified on its own), so per row never looser than the default mode's first phase.

The search runs in exact-arithmetic mode (no rounding slack terms, :func:`._common.rounding_scope`
``None``; its values are discarded, and the slack terms cost a third of its time). Certification
recomputes everything in the dtype of ``inset`` (float64 from :func:`.api.margin_lower`), the
intermediate intervals too: float32's slack would eat 40% of their gain (see :func:`_evaluate`).

Caveat: the recomputed intervals carry the active rounding model's slack but not the legacy
``mags`` widening of :func:`.crown.intermediate_bounds` (``rounding="legacy"``, a comparison mode):
do not combine ``optimize_intermediate`` with that mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from robustcert.bounds import crown_window
from robustcert.bounds._common import (
    Affine,
    Bounds,
    Coeffs,
    Ctx,
    InputSet,
    Relax,
    backward,
    concretize,
    rounding_scope,
)
from robustcert.bounds.crown import RULES as CROWN_RULES
from robustcert.bounds.crown import (
    UnitRows,
    crown_lower,
    leaky_relu_relax,
    nonlinear_ancestry,
    refine_targets,
    relu_relax,
)
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import numel

LR_DECAY = 0.98
EARLY_STOP_REL = 1e-4
EARLY_STOP_PATIENCE = 5
# Memory for the intermediate mode's search: coefficients of every optimised node's rows on every node
# they cross, times _SAVED for autograd's copies (estimate). The batch is split into chunks that fit.
INTERMEDIATE_BUDGET_BYTES = 1024 * 2**20
_SAVED = 4
_ALPHA_OPS = ("relu", "leaky_relu")
# the intermediate mode: the last INTERMEDIATE_STEPS steps optimise every alpha, at JOINT_LR_SCALE x lr
INTERMEDIATE_STEPS = 6
JOINT_LR_SCALE = 3.0
# beta-CROWN's multipliers step at this fraction of the slopes' rate (they live on the scale of the
# coefficients, not in [0, 1]): 0.5 x 0.1 = 0.05 as Wang et al.; 0.3 oscillates on 8-32-32-3 nets
BETA_LR_SCALE = 0.5


def _laid_out(node: Node, unstable: Tensor, alpha: Tensor, base: Tensor, ctx: Ctx) -> Tensor:
    """``alpha`` where the neuron is unstable, ``base`` elsewhere, per row: dense ``[B, S, *shape]``,
    or already in window layout ``[B, R, C, kh, kw]`` when ``ctx.state['win']`` holds the rows' window
    geometry (intermediate rows of a conv map, see :class:`_RowPatches`)."""
    win = ctx.state.get("win")
    if win is None:
        return torch.where(unstable.unsqueeze(1), alpha, base.unsqueeze(1))
    geos, oi, oj, hw = win
    geo = geos[node.name]
    u = crown_window.windows(unstable.to(base.dtype), geo, oi, oj, hw) > 0
    return torch.where(u, alpha, crown_window.windows(base, geo, oi, oj, hw))


def relu_alpha_relax(
    node: Node, lb: Tensor, ub: Tensor, ctx: Ctx
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """ReLU relaxation whose lower slope on unstable neurons is ``ctx.state['alpha'][node]`` [B, S, *shape]."""
    aL, bL, aU, bU = relu_relax(node, lb, ub, ctx)
    alpha = ctx.state.get("alpha", {}).get(node.name)
    if alpha is None:
        return aL, bL, aU, bU
    unstable = (lb < 0) & (ub > 0)
    return _laid_out(node, unstable, alpha, aL, ctx), bL, aU, bU


def leaky_relu_alpha_relax(
    node: Node, lb: Tensor, ub: Tensor, ctx: Ctx
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """LeakyReLU relaxation whose line through the origin on unstable neurons has slope
    ``min(a, 1) + alpha |1 - a|`` with ``alpha = ctx.state['alpha'][node]`` [B, S, *shape] in [0, 1]: the
    lower line when a <= 1 (f convex), the upper line when a > 1 (f concave); the chord is kept."""
    aL, bL, aU, bU = leaky_relu_relax(node, lb, ub, ctx)
    alpha = ctx.state.get("alpha", {}).get(node.name)
    if alpha is None:
        return aL, bL, aU, bU
    a = float(node.params["negative_slope"])
    slope = min(a, 1.0) + alpha * abs(1.0 - a)
    unstable = (lb < 0) & (ub > 0)
    if a <= 1.0:
        return _laid_out(node, unstable, slope, aL, ctx), bL, aU, bU
    return aL, bL, _laid_out(node, unstable, slope, aU, ctx), bU


def _relu_start(node: Node, lb: Tensor, ub: Tensor) -> Tensor | None:
    """CROWN's adaptive ReLU slope as the starting alpha (1 where ub >= -lb)."""
    return (ub >= -lb).to(lb.dtype)


def _leaky_start(node: Node, lb: Tensor, ub: Tensor) -> Tensor | None:
    """CROWN's adaptive LeakyReLU line (s = 1 where ub >= -lb, else a) as alpha; None when a = 1 (linear)."""
    a = float(node.params["negative_slope"])
    if a == 1.0:
        return None
    one = (ub >= -lb).to(lb.dtype)
    return one if a < 1.0 else 1.0 - one


# op -> the starting alpha of its unstable neurons (lb < 0 < ub), or None when nothing is free
ALPHA_START: dict[str, Callable[[Node, Tensor, Tensor], Tensor | None]] = {
    "relu": _relu_start,
    "leaky_relu": _leaky_start,
}

RULES: dict[str, Affine | Relax] = {
    **CROWN_RULES,
    "relu": Relax(relu_alpha_relax),
    "leaky_relu": Relax(leaky_relu_alpha_relax),
}


class _RowPatches(crown_window.Patches):
    """Window coefficients whose per-row slopes may already be laid out as windows: a 5-d tensor
    ``[B, R, C, kh, kw]`` passed to :meth:`local` is taken as is (per-neuron maps are 4-d)."""

    def local(self, t: Tensor) -> Tensor:
        return t if t.ndim == 5 else super().local(t)

    def like(self, data: Tensor) -> Coeffs:
        return _RowPatches(data, self.at, self.geos, self.oi, self.oj, self.out_hw)

    def through(self, node: Node, rule: Affine, ctx: Ctx) -> tuple[list[Coeffs], Tensor | None]:
        ins, bias = super().through(node, rule, ctx)
        p = ins[0]
        assert isinstance(p, crown_window.Patches)
        return [_RowPatches(p.data, p.at, p.geos, p.oi, p.oj, p.out_hw)], bias


@dataclass
class _Target:
    """An intermediate node whose interval is optimised: ``idx`` [B, R] the flat indices of its rows
    (the neurons left unstable; ``valid`` [B, R] marks real rows, the rest pad), ``geos`` the window
    plan (None: dense rows). Its 2R specification rows are ``e_i`` (lower) then ``-e_i`` (upper)."""

    name: str
    shape: tuple[int, ...]
    idx: Tensor
    valid: Tensor
    geos: dict[str, crown_window.Geo] | None
    cost: int = 0  # estimated bytes per example of the search (coefficients and autograd's copies)

    def spec(self, dtype: torch.dtype) -> Coeffs:
        B, R = self.idx.shape
        if self.geos is not None:
            p = crown_window.Patches.rows(self.idx, self.shape, self.name, self.geos, dtype)
            two = (torch.cat([p.oi, p.oi], 1), torch.cat([p.oj, p.oj], 1))
            return _RowPatches(torch.cat([p.data, -p.data], 1), self.name, self.geos, *two, p.out_hw)
        n = numel(self.shape)
        dense = torch.zeros((B, R, n), dtype=dtype).scatter_(2, self.idx.unsqueeze(-1), 1.0)
        sign = torch.cat([torch.ones((B, R), dtype=dtype), -torch.ones((B, R), dtype=dtype)], 1)
        data = torch.cat([dense, -dense], 1).reshape((B, 2 * R) + self.shape)
        return UnitRows(data, torch.cat([self.idx, self.idx], 1), sign)  # a linear layer: rows gathered

    def window(self) -> tuple | None:
        if self.geos is None:
            return None
        p = crown_window.Patches.rows(self.idx, self.shape, self.name, self.geos, torch.float32)
        return self.geos, torch.cat([p.oi, p.oi], 1), torch.cat([p.oj, p.oj], 1), p.out_hw

    def start(self, node: Node, t0: Tensor) -> Tensor:
        """The starting alphas of the activation ``node`` for this target's rows, from the map ``t0``."""
        win = self.window()
        if win is None:
            B, R = self.idx.shape
            return t0.unsqueeze(1).expand((B, 2 * R) + tuple(t0.shape[1:])).clone()
        geos, oi, oj, hw = win
        return crown_window.windows(t0, geos[node.name], oi, oj, hw).clone()


def _activation_ancestors(graph: Graph, name: str, bounds: dict[str, Bounds]) -> list[Node]:
    """ReLU / LeakyReLU nodes before ``name`` with an unstable neuron and a free slope."""
    anc = graph.ancestors(name)
    out = []
    for node in graph.nodes:
        if node.name == name or node.name not in anc or node.op not in ALPHA_START:
            continue
        lb, ub = bounds[node.inputs[0]]
        if bool(((lb < 0) & (ub > 0)).any()) and ALPHA_START[node.op](node, lb, ub) is not None:
            out.append(node)
    return out


def _targets(graph: Graph, ctx: Ctx, itemsize: int = 4) -> list[_Target]:
    """The intermediate nodes to optimise, in topological order (see the module docstring); ``itemsize``
    of the search dtype, for the memory estimate."""
    nonlin = nonlinear_ancestry(graph)
    by_name = {n.name: n for n in graph.nodes}
    consumers: dict[str, set[str]] = {}
    for node in graph.nodes:
        for i in node.inputs:
            consumers.setdefault(i, set()).add(node.op)
    out = []
    for name, ops in refine_targets(graph).items():
        if not nonlin[name] or not all(op in _ALPHA_OPS for op in ops) or name not in ctx.bounds:
            continue
        if not consumers.get(name, set()) & set(_ALPHA_OPS) or by_name[name].op in _ALPHA_OPS:
            continue
        lo, hi = ctx.bounds[name]
        rows = ((lo < 0) & (hi > 0)).flatten(1)
        counts = rows.sum(1)
        B = rows.shape[0]
        r = int(counts.max()) if B else 0
        if r == 0 or not _activation_ancestors(graph, name, ctx.bounds):
            continue
        order = torch.argsort(rows.to(torch.int8), dim=1, descending=True, stable=True)[:, :r]
        valid = torch.arange(r).unsqueeze(0) < counts.unsqueeze(1)
        shape = ctx.shapes[name]
        geos = crown_window.plan(graph, name, ctx)
        if geos is None:
            per_row = sum(numel(ctx.shapes[n]) for n in graph.ancestors(name))
        else:
            per_row = sum(ctx.shapes[n][0] * g.kh * g.kw for n, g in geos.items())
        cost = 2 * r * per_row * itemsize * _SAVED
        if cost > INTERMEDIATE_BUDGET_BYTES:  # even one example would not fit: keep the interval fixed
            continue
        out.append(_Target(name, shape, order, valid, geos, cost))
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    return sorted(out, key=lambda t: index[t.name])


def _target_interval(
    graph: Graph,
    t: _Target,
    inset: InputSet,
    ctx: Ctx,
    alphas: dict[str, Tensor],
    fixed: Bounds,
) -> Bounds:
    """The interval of ``t`` with the given alphas over ``ctx.bounds``, intersected with ``fixed``."""
    ctx.state["alpha"], ctx.state["win"] = alphas, t.window()
    try:
        leaves, bias, _, _ = backward(
            graph, t.name, t.spec(inset.lo.dtype), RULES, ctx, lower=True, upper=False
        )
        val = concretize(leaves, bias, graph, inset, ctx)
    finally:
        ctx.state["win"] = None
    B, R = t.idx.shape
    val = val.expand(B, 2 * R)
    lo0, hi0 = fixed
    lo_f, hi_f = lo0.flatten(1), hi0.flatten(1)
    cur_lo, cur_hi = lo_f.gather(1, t.idx), hi_f.gather(1, t.idx)
    raw_lo, raw_hi = val[:, :R], -val[:, R:]
    new_lo, new_hi = torch.fmax(cur_lo, raw_lo), torch.fmin(cur_hi, raw_hi)  # a NaN bound is ignored
    if val.requires_grad:  # search: the intersection's value, the recomputed bound's gradient
        new_lo = raw_lo + (new_lo - raw_lo).detach()
        new_hi = raw_hi + (new_hi - raw_hi).detach()
    new_lo, new_hi = torch.where(t.valid, new_lo, cur_lo), torch.where(t.valid, new_hi, cur_hi)
    return lo_f.scatter(1, t.idx, new_lo).reshape(lo0.shape), hi_f.scatter(1, t.idx, new_hi).reshape(
        hi0.shape
    )


def _final_alphas(graph: Graph, bounds: dict[str, Bounds], S: int, dtype: torch.dtype) -> dict[str, Tensor]:
    alphas: dict[str, Tensor] = {}
    for node in graph.nodes:
        if node.op not in ALPHA_START:
            continue
        lb, ub = bounds[node.inputs[0]]
        if not bool(((lb < 0) & (ub > 0)).any()):
            continue
        t0 = ALPHA_START[node.op](node, lb, ub)
        if t0 is None:
            continue
        start = t0.to(dtype).unsqueeze(1).expand((lb.shape[0], S) + tuple(lb.shape[1:]))
        alphas[node.name] = start.clone()
    return alphas


def _target_alphas(
    graph: Graph, t: _Target, bounds: dict[str, Bounds], dtype: torch.dtype
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for node in _activation_ancestors(graph, t.name, bounds):
        lb, ub = bounds[node.inputs[0]]
        t0 = ALPHA_START[node.op](node, lb, ub)
        assert t0 is not None
        out[node.name] = t.start(node, t0.to(dtype))
    return out


def _evaluate(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    targets: list[_Target],
    final: dict[str, Tensor],
    inter: dict[str, dict[str, Tensor]],
    beta: dict[str, Tensor] | None = None,
    splits: dict[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Bounds]]:
    """The bound of ``C`` with the given alphas: intermediate intervals of ``targets`` recomputed in
    topological order (each intersected with the one in ``ctx.bounds``), then the final bound. Runs in
    the dtype of the tensors given; differentiable. Returns the bound and the intervals used.

    Certification recomputes the intervals in the dtype of ``inset`` (float64), unlike CROWN's own
    intermediate passes (float32 by default): the float32 rounding slack (about ``n u |A||x|``) is of
    the size of the alphas' gain on an interval (measured on the MNIST MLP: 40% of it)."""
    bounds = dict(ctx.bounds)
    state = dict(ctx.state)
    state["lagrange"] = None
    actx = Ctx(ctx.shapes, bounds, state)
    for t in targets:
        bounds[t.name] = _target_interval(graph, t, inset, actx, inter[t.name], ctx.bounds[t.name])
    state["alpha"], state["win"] = final, None
    if beta:
        assert splits is not None
        state["lagrange"] = {n: _lagrange_term(b, splits[n]) for n, b in beta.items()}
    return crown_lower(graph, C, inset, actx, RULES), bounds


def _lagrange_term(beta: Tensor, signs: Tensor) -> Tensor:
    """``-beta * s`` ([B, S, *shape]) for the split signs ``s`` ([B, *shape] in {-1, 0, 1}): exact in
    floating point (a sign flip), and ``<= 0`` times the node's value wherever ``s * value >= 0``."""
    return -(beta * signs.to(beta.dtype).unsqueeze(1))


class _Adam:
    """Projected Adam on tensors in [0, 1] with the learning rate decayed by ``LR_DECAY`` per step.
    Written out: torch.optim's first step imports torch._dynamo (seconds)."""

    def __init__(
        self,
        params: list[Tensor],
        lr: float,
        upper: list[float] | None = None,
        scale: list[float] | None = None,
    ) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.upper = [1.0] * len(params) if upper is None else upper
        self.scale = [1.0] * len(params) if scale is None else scale
        self.m1 = [torch.zeros_like(p) for p in params]
        self.m2 = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: tuple[Tensor | None, ...]) -> None:
        self.t += 1
        beta1, beta2, tiny = 0.9, 0.999, 1e-8
        lr = self.lr * LR_DECAY ** (self.t - 1)
        c1, c2 = 1 - beta1**self.t, 1 - beta2**self.t
        for p, g, a, b, top, k in zip(
            self.params, grads, self.m1, self.m2, self.upper, self.scale, strict=True
        ):
            if g is None:
                continue
            a.mul_(beta1).add_(g, alpha=1 - beta1)
            b.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = b.sqrt().div_(math.sqrt(c2)).add_(tiny)  # one temporary per tensor and step
            p.addcdiv_(a, denom, value=-k * lr / c1).clamp_(0.0, top)


class _Stopper:
    """Early stop: True once the objective has not improved by ``EARLY_STOP_REL`` (relative) for
    ``EARLY_STOP_PATIENCE`` consecutive steps."""

    def __init__(self) -> None:
        self.best, self.stale = -math.inf, 0

    def done(self, value: float) -> bool:
        if value > self.best + EARLY_STOP_REL * abs(self.best) + 1e-12 or not math.isfinite(self.best):
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.stale >= EARLY_STOP_PATIENCE


@dataclass
class Proposal:
    """Alphas proposed by the search: final-bound alphas (relu name -> [B, S, *shape]) and, per
    optimised intermediate node, its alphas (relu name -> [B, 2R, ...]). Any values: they are clamped
    to [0, 1] before use."""

    final: dict[str, Tensor]
    inter: dict[str, dict[str, Tensor]]
    beta: dict[str, Tensor] = field(default_factory=dict)  # split node -> [B, S, *shape], clamped >= 0


def _search(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    targets: list[_Target],
    mask: Tensor,
    steps: int,
    lr: float,
    dtype: torch.dtype,
    warm: Proposal | None = None,
    splits: dict[str, Tensor] | None = None,
) -> Proposal:
    """Projected Adam on the alphas in ``dtype``; returns the best alphas seen (per row when there are
    no intermediate targets, else per example). ``warm``: starting final-bound alphas and betas (e.g. the
    default mode's result) instead of CROWN's slopes and zeros. ``splits``: split signs per node ([B,
    *shape] in {-1, 0, 1}) whose Lagrange multipliers (betas, >= 0) are optimised too (beta-CROWN)."""
    s_bounds = {k: (v[0].to(dtype), v[1].to(dtype)) for k, v in ctx.bounds.items()}
    s_ctx = Ctx(ctx.shapes, s_bounds, dict(ctx.state))
    s_inset, s_C = inset.to(dtype), C.to(dtype)
    start = _final_alphas(graph, s_bounds, C.shape[1], dtype)
    if warm is not None:
        start = {
            k: warm.final[k].detach().clamp(0.0, 1.0).to(dtype).clone() if k in warm.final else v
            for k, v in start.items()
        }
    final = {k: v.requires_grad_(True) for k, v in start.items()}
    inter = {
        t.name: {k: v.requires_grad_(True) for k, v in _target_alphas(graph, t, s_bounds, dtype).items()}
        for t in targets
    }
    beta = {
        n: torch.zeros((s_inset.batch, C.shape[1]) + tuple(sg.shape[1:]), dtype=dtype)
        for n, sg in (splits or {}).items()
    }
    if warm is not None:
        beta = {
            n: warm.beta[n].detach().to(dtype).clamp_min(0.0).clone() if n in warm.beta else b
            for n, b in beta.items()
        }
    beta = {n: b.requires_grad_(True) for n, b in beta.items()}
    params = list(final.values()) + [a for d in inter.values() for a in d.values()]
    upper = [1.0] * len(params) + [math.inf] * len(beta)
    scale = [1.0] * len(params) + [BETA_LR_SCALE] * len(beta)
    params += list(beta.values())
    best = Proposal({k: v.detach().clone() for k, v in final.items()}, {})
    best.inter = {n: {k: v.detach().clone() for k, v in d.items()} for n, d in inter.items()}
    best.beta = {k: v.detach().clone() for k, v in beta.items()}
    if not params:
        return best
    per_row = not targets
    best_val = torch.full(C.shape[:2] if per_row else C.shape[:1], -torch.inf, dtype=dtype)
    opt, stop = _Adam(params, lr, upper, scale), _Stopper()
    with torch.enable_grad(), rounding_scope(None):  # a proposal only: no rounding slack terms
        for _ in range(steps):
            lb, _ = _evaluate(graph, s_C, s_inset, s_ctx, targets, final, inter, beta, splits)
            masked = torch.where(mask, lb, torch.zeros_like(lb))
            with torch.no_grad():
                val = masked.detach() if per_row else masked.detach().sum(1)
                better = val > best_val
                best_val = torch.where(better, val, best_val)
                pairs = [(final, best.final), (beta, best.beta)] + [(inter[n], best.inter[n]) for n in inter]
                for d, bd in pairs:
                    for k, a in d.items():
                        sel = better.view(better.shape + (1,) * (a.ndim - better.ndim))
                        bd[k] = torch.where(sel, a.detach(), bd[k])
            loss = -masked.sum()
            if stop.done(-float(loss.detach())):
                break
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            opt.step(grads)
    return best


def _certify(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    targets: list[_Target],
    proposal: Proposal,
    splits: dict[str, Tensor] | None = None,
) -> Tensor:
    """The bound of the proposal in the dtype of ``inset`` (alphas clamped to [0, 1], betas to
    [0, inf)), without gradients."""
    dtype = inset.lo.dtype

    def clamp(d: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.detach().clamp(0.0, 1.0).to(dtype) for k, v in d.items()}

    inter = {t.name: clamp(proposal.inter.get(t.name, {})) for t in targets}
    beta = {k: v.detach().to(dtype).clamp_min(0.0) for k, v in proposal.beta.items()}
    with torch.no_grad():
        lb, _ = _evaluate(graph, C.to(dtype), inset, ctx, targets, clamp(proposal.final), inter, beta, splits)
    return lb


def certified_intervals(
    graph: Graph, inset: InputSet, ctx: Ctx, proposal: Proposal, targets: list[_Target]
) -> dict[str, Bounds]:
    """The intervals the certified evaluation of ``proposal`` uses (for tests)."""
    dtype = inset.lo.dtype
    inter = {
        t.name: {k: v.detach().clamp(0.0, 1.0).to(dtype) for k, v in proposal.inter.get(t.name, {}).items()}
        for t in targets
    }
    bounds = dict(ctx.bounds)
    actx = Ctx(ctx.shapes, bounds, dict(ctx.state))
    with torch.no_grad():
        for t in targets:
            bounds[t.name] = _target_interval(graph, t, inset, actx, inter[t.name], ctx.bounds[t.name])
    return bounds


def _all_rows(C: Tensor, inset: InputSet, row_mask: Tensor | None) -> Tensor:
    return torch.ones((inset.batch, C.shape[1]), dtype=torch.bool) if row_mask is None else row_mask


def _searched(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    floor: Tensor,
    targets: list[_Target],
    mask: Tensor,
    steps: int,
    lr: float,
    dtype: torch.dtype,
    warm: Proposal | None,
    splits: dict[str, Tensor] | None,
    certify: bool = True,
) -> tuple[Tensor, Proposal]:
    """One search (``_search``) and, when ``certify`` and it has anything to propose, its certified bound
    (``_certify``) folded into ``floor`` by ``fmax`` (a NaN bound is ignored); returns both."""
    proposal = _search(graph, C, inset, ctx, targets, mask, steps, lr, dtype, warm, splits)
    if certify and (proposal.final or proposal.beta or proposal.inter):
        lb = _certify(graph, C, inset, ctx, targets, proposal, splits)
        floor = torch.fmax(floor, lb.expand(floor.shape))
    return floor, proposal


def alpha_crown_search(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    *,
    steps: int = 20,
    lr: float = 0.1,
    row_mask: Tensor | None = None,
    splits: dict[str, Tensor] | None = None,
    warm: Proposal | None = None,
    search_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Proposal]:
    """The default mode of :func:`alpha_crown_lower` (with ``splits``: beta-CROWN) started from ``warm``
    (alphas [B, S, *shape] per activation, betas [B, S, *shape] per split node; missing ones start
    from CROWN's slopes and zeros), returning the certified bound (never below CROWN; same guarantee) and
    the best proposal, e.g. to warm-start the children of a branch-and-bound domain."""
    with torch.no_grad():
        best = crown_lower(graph, C, inset, ctx, CROWN_RULES)
    mask = _all_rows(C, inset, row_mask)
    best = best.expand(inset.batch, C.shape[1])
    best, proposal = _searched(
        graph, C, inset, ctx, best, [], mask, max(0, int(steps)), lr, search_dtype, warm, splits
    )
    return best.detach(), proposal


def optimized_intervals(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    *,
    steps: int = 20,
    lr: float = 0.1,
    row_mask: Tensor | None = None,
    search_dtype: torch.dtype = torch.float32,
) -> dict[str, Bounds]:
    """Every node's interval, those of the intermediate mode's targets tightened: the two-phase search
    of ``alpha_crown_lower(optimize_intermediate=True)`` for the objective ``C`` (``steps`` in all, the
    last ``INTERMEDIATE_STEPS`` joint), then the targets' intervals recomputed with the proposal in the
    dtype of ``inset`` under the active rounding scope and intersected with ``ctx.bounds`` (valid for
    any alphas in [0, 1], see the module docstring). The other nodes keep ``ctx.bounds``. For a root of
    branch and bound (:func:`.subdomains.tighten_root`)."""
    mask = _all_rows(C, inset, row_mask)
    itemsize = torch.empty((), dtype=search_dtype).element_size()
    targets = _targets(graph, ctx, itemsize)
    if not targets or steps <= 0:
        return dict(ctx.bounds)
    joint_steps = min(steps, INTERMEDIATE_STEPS)
    warm = _search(graph, C, inset, ctx, [], mask, steps - joint_steps, lr, search_dtype)
    proposal = _search(
        graph,
        C,
        inset,
        ctx,
        targets,
        mask,
        joint_steps,
        lr * JOINT_LR_SCALE,
        search_dtype,
        warm if steps > joint_steps else None,
    )
    return certified_intervals(graph, inset, ctx, proposal, targets)


def alpha_crown_lower(
    graph: Graph,
    C: Tensor,
    inset: InputSet,
    ctx: Ctx,
    *,
    steps: int = 20,
    lr: float = 0.1,
    row_mask: Tensor | None = None,
    search_dtype: torch.dtype = torch.float32,
    optimize_intermediate: bool = False,
    intermediate_steps: int = INTERMEDIATE_STEPS,
    splits: dict[str, Tensor] | None = None,
) -> Tensor:
    """Lower bound of ``C · output`` ([B, S]) after at most ``steps`` projected-Adam steps on the slopes.

    ``ctx.bounds`` must hold valid intervals of every node (CROWN's or IBP's); they are not changed.
    ``row_mask`` [B, S] selects the rows that enter the objective (e.g. excludes the zero row j = y of a
    margin specification). ``optimize_intermediate`` also optimises the intervals of the intermediate
    nodes (tighter, costlier; see the module docstring).

    The search runs in ``search_dtype`` and only proposes alphas; the returned bound is the elementwise
    maximum of plain CROWN and the proposal re-evaluated in the dtype of ``inset`` under the active
    rounding scope with every alpha clamped to [0, 1] (valid for any alphas, see the module docstring).
    Never below CROWN. No safety margin is applied here; the result is detached.

    ``splits`` (beta-CROWN, Wang et al. 2021): ``{ReLU input node: int8 [B, *shape] in {-1, 0, 1}}``,
    sign constraints ``s * z >= 0`` that hold on the set being bounded (a branch-and-bound domain; its
    intervals in ``ctx.bounds`` already clamped to them). One multiplier ``beta >= 0`` per (row, split
    neuron) adds ``-beta * s * z`` to the final pass's coefficients on ``z`` (:func:`._common.backward`);
    on the domain that term is <= 0, so for ANY beta >= 0 the result bounds ``C · output`` there: the
    search proposes betas, certification clamps them to [0, inf). Without splits the bound holds on the
    whole input set.
    """
    with torch.no_grad():  # the plain CROWN bound: the result is never below it, bit for bit
        best = crown_lower(graph, C, inset, ctx, CROWN_RULES)
    if steps <= 0:
        return best.detach()
    B = inset.batch
    mask = _all_rows(C, inset, row_mask)
    itemsize = torch.empty((), dtype=search_dtype).element_size()
    joint_steps = min(steps, max(0, int(intermediate_steps))) if optimize_intermediate else 0
    chunk = B
    if joint_steps:
        cost = sum(t.cost for t in _targets(graph, ctx, itemsize))
        chunk = max(1, min(B, INTERMEDIATE_BUDGET_BYTES // max(1, cost)))
    parts = []
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        sub_ctx, sub_C, sub_inset, sub_mask = _slice(ctx, C, inset, mask, b0, b1)
        part = best[b0:b1]
        targets = _targets(graph, sub_ctx, itemsize) if joint_steps else []
        # phase 1, the final bound's alphas alone; phase 2 (the last joint_steps steps), all of them
        plain_steps = steps - joint_steps if targets else steps
        sub_splits = None if splits is None else {k: _cut(v, B, b0, b1) for k, v in splits.items()}
        part, proposal = _searched(
            graph,
            sub_C,
            sub_inset,
            sub_ctx,
            part,
            [],
            sub_mask,
            plain_steps,
            lr,
            search_dtype,
            None,
            sub_splits,
            certify=plain_steps > 0,
        )
        if targets:
            part, _ = _searched(
                graph,
                sub_C,
                sub_inset,
                sub_ctx,
                part,
                targets,
                sub_mask,
                joint_steps,
                lr * JOINT_LR_SCALE,
                search_dtype,
                proposal if plain_steps else None,
                sub_splits,
            )
        parts.append(part)
    return torch.cat(parts).detach()


def _cut(t: Tensor, B: int, b0: int, b1: int) -> Tensor:
    return t[b0:b1] if t.shape[0] == B else t


def _slice(
    ctx: Ctx, C: Tensor, inset: InputSet, mask: Tensor, b0: int, b1: int
) -> tuple[Ctx, Tensor, InputSet, Tensor]:
    """Examples ``b0:b1`` of the problem (tensors with a batch of 1 are shared)."""
    B = inset.batch
    if (b0, b1) == (0, B):
        return ctx, C, inset, mask

    def cut(t: Tensor) -> Tensor:
        return t[b0:b1] if t.shape[0] == B else t

    bounds = {k: (cut(v[0]), cut(v[1])) for k, v in ctx.bounds.items()}
    center = None if inset.center is None else cut(inset.center)
    sub = InputSet(cut(inset.lo), cut(inset.hi), center, inset.eps)
    return Ctx(ctx.shapes, bounds, dict(ctx.state)), cut(C), sub, cut(mask)
