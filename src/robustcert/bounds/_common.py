"""Shared machinery of the bound methods: the input set, the two graph traversals, concretisation.

* :func:`forward_pass` walks the graph in topological order applying one rule per op (IBP, and the
  magnitude pass of :mod:`._soundness`); a ``refine`` hook lets CROWN tighten chosen nodes on the way.
* :func:`backward` walks it in reverse from a target node, carrying linear coefficients ``A`` (shape
  ``[B or 1, S, *node_shape]``, S = specification rows) for a lower and/or an upper bound; a rule is
  either :class:`Affine` (a transpose) or :class:`Relax` (linear bounds of an activation from its input
  interval). ``A`` keeps batch size 1 until a per-example relaxation is crossed, so purely affine
  prefixes are computed once for the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from robustcert.graph.ir import Graph, Node

Bounds = tuple[Tensor, Tensor]

# Bytes the CROWN coefficient tensors of one chunk of specification rows may take (float64 estimate).
MEMORY_BUDGET_BYTES = 256 * 2**20


@dataclass
class InputSet:
    """The perturbation set: the box ``[lo, hi]`` (already intersected with the domain), and for L2
    also the ball centre and radius. The set is ``box`` (linf / explicit box) or ``ball ∩ box`` (l2)."""

    lo: Tensor
    hi: Tensor
    center: Tensor | None = None
    eps: float = 0.0

    @property
    def is_l2(self) -> bool:
        return self.center is not None

    @property
    def batch(self) -> int:
        return int(self.lo.shape[0])

    def to(self, dtype: torch.dtype) -> InputSet:
        c = None if self.center is None else self.center.to(dtype)
        return InputSet(self.lo.to(dtype), self.hi.to(dtype), c, self.eps)


class Affine(NamedTuple):
    """Backward rule of an affine op: ``back(node, A, ctx) -> ([A for each input], bias [B', S] or None)``."""

    back: Callable[[Node, Tensor, Ctx], tuple[list[Tensor], Tensor | None]]


class Relax(NamedTuple):
    """Linear relaxation of an activation over its input interval [lb, ub]:
    ``relax(node, lb, ub, ctx) -> (aL, bL, aU, bU)`` with ``aL x + bL <= act(x) <= aU x + bU`` on [lb, ub].
    Each is shaped like ``lb`` ([B, *shape]) or, per specification row, [B, S, *shape]; an intercept may
    be None for zero."""

    relax: Callable[[Node, Tensor, Tensor, Ctx], tuple[Tensor, Tensor | None, Tensor, Tensor | None]]


@dataclass
class Ctx:
    """What backward rules may read: node shapes, interval bounds of nodes, method state (e.g. alphas)."""

    shapes: dict[str, tuple[int, ...]]
    bounds: dict[str, Bounds] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def dot(A: Tensor, t: Tensor) -> Tensor:
    """Sum over the per-example dims of ``A * t``: [B', S, *shape] x broadcastable -> [B', S].

    Uses a matrix product (no temporary of A's size) when ``t`` is shared by all rows (``t`` broadcasts
    to ``[1, 1, *shape]`` or ``[B, 1, *shape]``)."""
    nd = A.ndim - 2
    if t.ndim <= nd or (t.ndim == nd + 1 and t.shape[0] == 1):
        if t.ndim == nd + 1:
            t = t[0]
        vec = t.expand(A.shape[2:]).reshape(-1, 1)
        return (A.flatten(2) @ vec).squeeze(-1)
    if t.ndim == nd + 2 and t.shape[1] == 1:
        mat = t.expand((t.shape[0], 1) + tuple(A.shape[2:])).flatten(2).transpose(1, 2)
        return (A.flatten(2) @ mat).squeeze(-1)
    return (A * t).flatten(2).sum(-1)


def forward_pass(
    graph: Graph,
    rules: dict[str, Callable[..., Bounds]],
    input_bounds: Bounds,
    refine: Callable[[Node, Bounds, dict[str, Bounds]], Bounds] | None = None,
) -> dict[str, Bounds]:
    """Interval-style forward traversal: ``out[node] = rules[op](node, *in_bounds)`` then ``refine``."""
    out: dict[str, Bounds] = {}
    for node in graph.nodes:
        if node.op == "input":
            b = input_bounds
        else:
            b = rules[node.op](node, *(out[i] for i in node.inputs))
        if refine is not None:
            b = refine(node, b, out)
        out[node.name] = b
    return out


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _relax_apply(A: Tensor, a_pos: Tensor, b_pos: Tensor | None, a_neg: Tensor, b_neg: Tensor | None):
    """Coefficients ``A+ a_pos + A- a_neg`` and constant ``A+ · b_pos + A- · b_neg`` (None = zero)."""
    pos = A.clamp(min=0)
    new = A * a_neg + pos * (a_pos - a_neg)
    bias: Tensor | float = 0.0
    if b_pos is not None:
        bias = bias + dot(pos, b_pos)
    if b_neg is not None:
        bias = bias + dot(A - pos, b_neg)
    return [new], bias


def backward(
    graph: Graph,
    target: str,
    A0: Tensor,
    table: dict[str, Affine | Relax],
    ctx: Ctx,
    *,
    lower: bool = True,
    upper: bool = True,
    stop: frozenset[str] = frozenset(),
) -> tuple[dict[str, Tensor], Tensor | float, dict[str, Tensor], Tensor | float]:
    """Propagate ``A0`` ([B', S, *shape(target)]) from ``target`` back to the input.

    Returns ``(leaves_lo, bias_lo, leaves_up, bias_up)``: for the lower bound,
    ``A0 · v_target >= sum_leaf A_leaf · v_leaf + bias_lo`` for every input in the set, given that the
    relaxations in ``table`` are valid on the intervals in ``ctx.bounds``; leaves are the input node and
    any node of ``stop`` reached (upper bound likewise with ``<=``).
    """
    anc = graph.ancestors(target)
    A_lo: dict[str, Tensor | None] = {target: A0 if lower else None}
    A_up: dict[str, Tensor | None] = {target: A0 if upper else None}
    bias_lo: Tensor | float = 0.0
    bias_up: Tensor | float = 0.0
    leaves_lo: dict[str, Tensor] = {}
    leaves_up: dict[str, Tensor] = {}
    idx = next(i for i, n in enumerate(graph.nodes) if n.name == target)
    for node in reversed(graph.nodes[: idx + 1]):
        if node.name not in anc or node.name not in A_lo:
            continue
        al, au = A_lo.pop(node.name), A_up.pop(node.name)
        if node.op == "input" or node.name in stop:
            if al is not None:
                leaves_lo[node.name] = al
            if au is not None:
                leaves_up[node.name] = au
            continue
        rule = table[node.op]
        if isinstance(rule, Affine):
            if al is not None and al is au:
                ins, b = rule.back(node, al, ctx)
                ins_l, ins_u = ins, ins
                if b is not None:
                    bias_lo = bias_lo + b
                    bias_up = bias_up + b
            else:
                ins_l, ins_u = [None] * len(node.inputs), [None] * len(node.inputs)
                if al is not None:
                    ins_l, b = rule.back(node, al, ctx)
                    bias_lo = bias_lo if b is None else bias_lo + b
                if au is not None:
                    ins_u, b = rule.back(node, au, ctx)
                    bias_up = bias_up if b is None else bias_up + b
        else:
            lb, ub = ctx.bounds[node.inputs[0]]
            aL, bL, aU, bU = rule.relax(node, lb, ub, ctx)
            nd = len(ctx.shapes[node.name])
            aL, bL, aU, bU = (
                t if t is None or t.ndim == nd + 2 else t.unsqueeze(1) for t in (aL, bL, aU, bU)
            )
            ins_l, ins_u = [None], [None]
            if al is not None:
                ins_l, b = _relax_apply(al, aL, bL, aU, bU)
                bias_lo = bias_lo + b
            if au is not None:
                ins_u, b = _relax_apply(au, aU, bU, aL, bL)
                bias_up = bias_up + b
        for inp, nl, nu in zip(node.inputs, ins_l, ins_u, strict=True):
            ol, ou = A_lo.get(inp), A_up.get(inp)
            shared = (ol is ou) and (nl is nu)
            sl = _add(ol, nl)
            A_lo[inp] = sl
            A_up[inp] = sl if shared else _add(ou, nu)
    return leaves_lo, bias_lo, leaves_up, bias_up


def concretize_input(A: Tensor, inset: InputSet, upper: bool = False) -> Tensor:
    """Lower (or upper) bound of ``A · x`` over the input set: [B', S, *in] -> [B, S].

    Box: ``A·c ∓ |A|·r``. L2: the tighter of the ball bound ``A·x0 ∓ eps ||A||_2`` and the box bound —
    both bound ``A · x`` over ball ∩ box, so the tighter one does too.
    """
    Af = A.flatten(2)
    c = ((inset.lo + inset.hi) / 2).flatten(1).unsqueeze(-1)
    r = ((inset.hi - inset.lo) / 2).flatten(1).unsqueeze(-1)
    sign = 1.0 if upper else -1.0
    val = (Af @ c).squeeze(-1) + sign * (Af.abs() @ r).squeeze(-1)
    if inset.center is not None:
        x0 = inset.center.flatten(1).unsqueeze(-1)
        ball = (Af @ x0).squeeze(-1) + sign * inset.eps * torch.linalg.vector_norm(Af, dim=-1)
        val = torch.minimum(val, ball) if upper else torch.maximum(val, ball)
    return val


def concretize_interval(A: Tensor, bounds: Bounds, upper: bool = False) -> Tensor:
    """Lower (or upper) bound of ``A · v`` over the box ``v in [lb, ub]``: [B', S, *shape] -> [B, S]."""
    lb, ub = bounds
    pos = A.clamp(min=0)
    lo_t, hi_t = (ub, lb) if upper else (lb, ub)
    return dot(pos, lo_t.unsqueeze(1)) + dot(A - pos, hi_t.unsqueeze(1))


def concretize(
    leaves: dict[str, Tensor],
    bias: Tensor | float,
    graph: Graph,
    inset: InputSet,
    ctx: Ctx,
    upper: bool = False,
) -> Tensor:
    """Lower bound (or, for the leaves/bias of an upper bound, upper bound) of the linear form."""
    total: Tensor | float = bias
    for name, A in leaves.items():
        if name == graph.input_name:
            total = total + concretize_input(A, inset, upper)
        else:
            total = total + concretize_interval(A, ctx.bounds[name], upper)
    if not isinstance(total, Tensor):
        total = torch.full((inset.batch, 1), float(total), dtype=inset.lo.dtype)
    return total


def chunk_rows(n_rows: int, batch: int, max_numel: int, itemsize: int = 8) -> int:
    """How many specification rows fit the memory budget per chunk (at least 1)."""
    per_row = max(1, batch * max_numel * itemsize * 4)
    return max(1, min(n_rows, MEMORY_BUDGET_BYTES // per_row))
