"""alpha-CROWN (Xu et al., 2021): CROWN with the free slopes of unstable ReLU / LeakyReLU neurons
optimised per output row.

Intermediate intervals are computed ONCE (by CROWN, or IBP) and kept fixed; only the output
specification is re-propagated while the parameters ``alpha in [0, 1]`` (one per unstable neuron, per
specification row and example) are improved by projected Adam on the sum of the row lower bounds,
starting from CROWN's adaptive slopes. For ReLU, alpha is the slope of the lower line ``alpha x <=
relu(x)``; for LeakyReLU with slope a it picks the line ``s x`` through the origin with ``s = min(a, 1) +
alpha |1 - a|`` — below f when a <= 1, above f when a > 1 (see :func:`.crown.leaky_relu_relax`). Any
alpha in [0, 1] gives a valid relaxation on [lb, ub] with lb < 0 < ub, so every iterate is a sound
bound. Other ops (sigmoid, tanh, GELU, max pool) keep CROWN's relaxation. The search runs in float32;
the best slopes seen for each row (and the last ones) are then evaluated in float64, and the result is
the elementwise maximum of those and plain CROWN, hence never looser than CROWN with the same intervals.
The table is CROWN's with the ReLU and LeakyReLU rules replaced.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robustcert.bounds._common import Affine, Ctx, InputSet, Relax
from robustcert.bounds.crown import RULES as CROWN_RULES
from robustcert.bounds.crown import crown_lower, leaky_relu_relax, relu_relax
from robustcert.graph.ir import Graph, Node


def relu_alpha_relax(
    node: Node, lb: Tensor, ub: Tensor, ctx: Ctx
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """ReLU relaxation whose lower slope on unstable neurons is ``ctx.state['alpha'][node]`` [B, S, *shape]."""
    aL, bL, aU, bU = relu_relax(node, lb, ub, ctx)
    alpha = ctx.state["alpha"].get(node.name)
    if alpha is None:
        return aL, bL, aU, bU
    unstable = ((lb < 0) & (ub > 0)).unsqueeze(1)
    return torch.where(unstable, alpha, aL.unsqueeze(1)), bL, aU, bU


def leaky_relu_alpha_relax(
    node: Node, lb: Tensor, ub: Tensor, ctx: Ctx
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """LeakyReLU relaxation whose line through the origin on unstable neurons has slope
    ``min(a, 1) + alpha |1 - a|`` with ``alpha = ctx.state['alpha'][node]`` [B, S, *shape] in [0, 1]: the
    lower line when a <= 1 (f convex), the upper line when a > 1 (f concave); the chord is kept."""
    aL, bL, aU, bU = leaky_relu_relax(node, lb, ub, ctx)
    alpha = ctx.state["alpha"].get(node.name)
    if alpha is None:
        return aL, bL, aU, bU
    a = float(node.params["negative_slope"])
    slope = min(a, 1.0) + alpha * abs(1.0 - a)
    unstable = ((lb < 0) & (ub > 0)).unsqueeze(1)
    if a <= 1.0:
        return torch.where(unstable, slope, aL.unsqueeze(1)), bL, aU, bU
    return aL, bL, torch.where(unstable, slope, aU.unsqueeze(1)), bU


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
) -> Tensor:
    """Lower bound of ``C · output`` ([B, S]) after ``steps`` projected-Adam steps on the ReLU slopes.

    ``ctx.bounds`` must hold the (fixed) intermediate intervals. ``row_mask`` [B, S] selects the rows
    that enter the objective (e.g. excludes the zero row j = y of a margin specification).

    The search runs in ``search_dtype`` (float32 by default: it only proposes slopes); for every row the
    best iterate seen is kept, and the returned bound is the elementwise maximum of three evaluations in
    the dtype of ``inset`` (float64 for certification): plain CROWN, the per-row best slopes, and the
    last slopes. Each is a valid bound since every slope lies in [0, 1]; the result is never below
    CROWN. No safety margin is applied here; the result is detached.
    """
    S = C.shape[1]
    dtype = inset.lo.dtype
    with torch.no_grad():  # the plain CROWN bound: the result is never below it, bit for bit
        best = crown_lower(graph, C, inset, ctx, CROWN_RULES)
    alphas: dict[str, Tensor] = {}
    for node in graph.nodes:
        if node.op not in ALPHA_START:
            continue
        lb, ub = ctx.bounds[node.inputs[0]]
        if not bool(((lb < 0) & (ub > 0)).any()):
            continue
        t0 = ALPHA_START[node.op](node, lb, ub)
        if t0 is None:
            continue
        start = t0.to(search_dtype).unsqueeze(1).expand((lb.shape[0], S) + tuple(lb.shape[1:]))
        alphas[node.name] = start.clone().requires_grad_(True)
    if not alphas or steps <= 0:
        return best
    mask = torch.ones(C.shape[:2], dtype=torch.bool) if row_mask is None else row_mask
    # the search problem, in search_dtype
    s_bounds = {k: (v[0].to(search_dtype), v[1].to(search_dtype)) for k, v in ctx.bounds.items()}
    s_state: dict = dict(ctx.state)
    s_ctx = Ctx(ctx.shapes, s_bounds, s_state)
    s_inset, s_C = inset.to(search_dtype), C.to(search_dtype)
    params = list(alphas.values())
    best_alpha = {k: v.detach().clone() for k, v in alphas.items()}
    best_val = torch.full(C.shape[:2], -torch.inf, dtype=search_dtype)
    # Adam (Kingma & Ba) written out: torch.optim's first step imports torch._dynamo (seconds).
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    beta1, beta2, tiny = 0.9, 0.999, 1e-8
    with torch.enable_grad():
        for t in range(1, steps + 1):
            s_state["alpha"] = alphas
            lb = crown_lower(graph, s_C, s_inset, s_ctx, RULES)
            with torch.no_grad():
                better = lb.detach() > best_val
                best_val = torch.where(better, lb.detach(), best_val)
                for k, a in alphas.items():
                    sel = better.view(better.shape + (1,) * (a.ndim - 2))
                    best_alpha[k] = torch.where(sel, a.detach(), best_alpha[k])
            loss = -torch.where(mask, lb, torch.zeros_like(lb)).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            with torch.no_grad():
                for p, g, a, b in zip(params, grads, m1, m2, strict=True):
                    if g is None:
                        continue
                    a.mul_(beta1).add_(g, alpha=1 - beta1)
                    b.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    step = lr * (a / (1 - beta1**t)) / ((b / (1 - beta2**t)).sqrt() + tiny)
                    p.sub_(step).clamp_(0.0, 1.0)
    state = dict(ctx.state)
    actx = Ctx(ctx.shapes, ctx.bounds, state)
    with torch.no_grad():
        for candidate in (best_alpha, {k: v.detach() for k, v in alphas.items()}):
            state["alpha"] = {k: v.to(dtype) for k, v in candidate.items()}
            best = torch.maximum(best, crown_lower(graph, C, inset, actx, RULES))
    return best.detach()
