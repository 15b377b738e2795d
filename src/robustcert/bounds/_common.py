"""Shared machinery of the bound methods: the input set, the two graph traversals, concretisation.

* :func:`forward_pass` walks the graph in topological order applying one rule per op (IBP, and the
  magnitude pass of :mod:`._soundness`); a ``refine`` hook lets CROWN tighten chosen nodes on the way.
* :func:`backward` is THE backward substitution of the package (CROWN, alpha-CROWN, CROWN's windowed
  intermediate bounds, IBP's elided last layers, and through them the MILP's pre-activation bounds). It
  walks the graph in reverse from a target node, carrying linear coefficients (:class:`Coeffs`) for a
  lower and/or an upper bound; a rule is either :class:`Affine` (a transpose) or :class:`Relax` (linear
  bounds of an activation from its input interval). How coefficients are stored is the representation's
  business: :class:`Dense` holds ``[B', S, *node_shape]`` (S = specification rows) and keeps batch size
  1 until a per-example relaxation is crossed, so purely affine prefixes are computed once for the whole
  batch; :class:`~robustcert.bounds.crown_window.Patches` holds each row's receptive field only. The
  traversal, the relaxation algebra and the concretisation are the same for every representation.
* Rounding: inside :func:`rounding_scope` (certification), both traversals consult the active
  :class:`RoundingModel` (:class:`robustcert.bounds._soundness.Rounding`): forward intervals are widened
  to hold every computed value, back substitution adds ``|A| . w`` slack at every node it crosses, bias
  sums use directed rounding, and concretisation covers its own rounding. The rule tables compute in
  exact-arithmetic terms and need not know. Outside a scope (training) nothing changes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from robustcert.graph.ir import Graph, Node

Bounds = tuple[Tensor, Tensor]

# Bytes the CROWN coefficient tensors of one chunk of specification rows may take (estimate).
MEMORY_BUDGET_BYTES = 128 * 2**20


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
        """The set in another dtype, rounded to nearest (for searches and training, not for bounds)."""
        c = None if self.center is None else self.center.to(dtype)
        return InputSet(self.lo.to(dtype), self.hi.to(dtype), c, self.eps)

    def outward(self, dtype: torch.dtype) -> InputSet:
        """The set in ``dtype``, containing this one: the box rounded outward (:func:`outward`), and for
        L2 the centre rounded to nearest with the radius grown by the largest distance (float64,
        rounded up) the rounding moved a centre."""
        if dtype == self.lo.dtype:
            return self
        lo, hi = outward((self.lo, self.hi), dtype)
        if self.center is None:
            return InputSet(lo, hi)
        c = self.center.to(dtype)
        moved = torch.linalg.vector_norm((self.center - c.to(self.center.dtype)).flatten(1), dim=1)
        grow = float(moved.max()) * (1 + 2.0**-40) if moved.numel() else 0.0
        eps = self.eps if grow == 0.0 else toward(self.eps + grow, upper=True)
        return InputSet(lo, hi, c, eps)


class Affine(NamedTuple):
    """Backward rule of an affine op on dense coefficients: ``back(node, A, ctx) -> ([A for each input],
    bias [B', S] or None)``; other representations transpose the op their own way (:meth:`Coeffs.through`)."""

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


class Coeffs(ABC):
    """Linear coefficients on one node's value for a batch of specification rows, in some layout.

    ``data`` holds the numbers, ``[B', S, ...]`` (B' = 1 or the batch); row ``(b, s)`` is the linear form
    ``sum(data[b, s] * local(v)[b, s])`` of the node's value ``v``. A representation defines how a
    per-neuron map of the node is laid out against ``data`` (:meth:`local`) and how an affine op is
    transposed (:meth:`through`); everything else is shared.
    """

    data: Tensor

    @abstractmethod
    def local(self, t: Tensor) -> Tensor:
        """A per-neuron map of the node (``[1 or B, *shape]``, or per row ``[B, S, *shape]``) laid out
        to broadcast against ``data``."""

    @abstractmethod
    def like(self, data: Tensor) -> Coeffs:
        """The same layout holding other numbers."""

    @abstractmethod
    def through(self, node: Node, rule: Affine, ctx: Ctx) -> tuple[list[Coeffs], Tensor | None]:
        """Coefficients on each input of the affine op ``node`` and the constant ``[B', S]`` (or None)."""

    @abstractmethod
    def plus(self, other: Coeffs) -> Coeffs:
        """The sum of two coefficient sets on the same node (a node read by two consumers)."""

    def dot(self, t: Tensor) -> Tensor:
        """``sum(data * local(t))`` per row: [B or B', S]."""
        return dot(self.data, self.local(t))


class Dense(Coeffs):
    """Coefficients on every neuron of the node: ``data`` is ``[B', S, *shape]``."""

    def __init__(self, data: Tensor) -> None:
        self.data = data

    def local(self, t: Tensor) -> Tensor:
        return t if t.ndim == self.data.ndim else t.unsqueeze(1)

    def like(self, data: Tensor) -> Coeffs:
        return Dense(data)

    def through(self, node: Node, rule: Affine, ctx: Ctx) -> tuple[list[Coeffs], Tensor | None]:
        ins, bias = rule.back(node, self.data, ctx)
        return [Dense(a) for a in ins], bias

    def plus(self, other: Coeffs) -> Coeffs:
        return Dense(self.data + other.data)


class RoundingModel(Protocol):
    """What the traversals ask about rounding; implemented by :class:`._soundness.Rounding`, where every
    weight is derived. A weight ``w`` (per neuron) means: the lower bound loses at most ``|A| . w``."""

    def inflate(self, dtype: torch.dtype) -> float: ...

    def floor(self, dtype: torch.dtype) -> float: ...

    def forward(self, node: Node, b: Bounds, ins: Sequence[Bounds]) -> Bounds: ...

    def node_weight(self, node: Node, ctx: Ctx) -> Tensor | None: ...

    def relax_weight(
        self,
        node: Node,
        lb: Tensor,
        ub: Tensor,
        n: int,
        lines: tuple[Tensor, Tensor | None, Tensor, Tensor | None],
        lay: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor: ...

    def merge_weight(self, bounds: Bounds) -> Tensor: ...

    def interval_weight(self, bounds: Bounds, n: int) -> Tensor: ...

    def box_weight(self, inset: InputSet, n: int) -> Tensor: ...

    def ball_weights(self, inset: InputSet, n: int) -> tuple[Tensor, float]: ...


_ROUNDING: ContextVar[RoundingModel | None] = ContextVar("robustcert_bounds_rounding", default=None)


@contextmanager
def rounding_scope(model: RoundingModel | None) -> Iterator[None]:
    """Make ``model`` the rounding model of the traversals run inside (None: exact-arithmetic terms).

    With a model, float32 products run at full precision (no TF32/bfloat16 matmul; NNPACK, whose
    convolutions may use Winograd or FFT transforms, off): the rounding analysis assumes every product
    and sum is a float operation of the computing dtype (Higham's model, any order)."""
    token = _ROUNDING.set(model)
    precision = torch.get_float32_matmul_precision()
    try:
        if model is None:
            yield
        else:
            torch.set_float32_matmul_precision("highest")
            with torch.backends.nnpack.flags(enabled=False):
                yield
    finally:
        torch.set_float32_matmul_precision(precision)
        _ROUNDING.reset(token)


def outward(b: Bounds, dtype: torch.dtype) -> Bounds:
    """The interval ``b`` in ``dtype``, containing it: each end converted to nearest, then stepped one
    ulp outward where the conversion moved it inward."""
    lo, hi = b
    if lo.dtype == dtype:
        return b
    lo2, hi2 = lo.to(dtype), hi.to(dtype)
    lo2 = torch.where(lo2.to(lo.dtype) > lo, toward(lo2, upper=False), lo2)
    hi2 = torch.where(hi2.to(hi.dtype) < hi, toward(hi2, upper=True), hi2)
    return lo2, hi2


def active_rounding() -> RoundingModel | None:
    """The rounding model of the enclosing :func:`rounding_scope`, if any."""
    return _ROUNDING.get()


def toward(t: Any, upper: bool) -> Any:
    """The next float above (``upper``) or below ``t``: at least the rounding error of the operation
    that produced ``t`` under round-to-nearest, so directed rounding by hand. Tensors or floats."""
    if isinstance(t, Tensor):
        return torch.nextafter(t, torch.full_like(t, math.inf if upper else -math.inf))
    return math.nextafter(float(t), math.inf if upper else -math.inf)


def _abs_dot(A: Coeffs, w: Tensor) -> Tensor:
    """``|A| . w`` per row, ``w`` a per-neuron map of A's node (laid out by ``A.local``)."""
    return dot(A.data.abs(), A.local(w))


def _weighted(absA: Tensor, w: Tensor) -> Tensor:
    """``sum |A| * w`` per row for a laid-out weight ``w`` that may be larger than A's node (a relaxation
    whose lines live on the activation's input, e.g. reduce_max's window entries): then broadcast."""
    if w.ndim == absA.ndim and torch.broadcast_shapes(w.shape[2:], absA.shape[2:]) != absA.shape[2:]:
        return (absA * w).flatten(2).sum(-1)
    return dot(absA, w)


def _rows_of(A: Coeffs) -> int:
    """Number of coefficients per row (terms of one row's dot product)."""
    return int(math.prod(A.data.shape[2:]))


def forward_pass(
    graph: Graph,
    rules: dict[str, Callable[..., Bounds]],
    input_bounds: Bounds,
    refine: Callable[[Node, Bounds, dict[str, Bounds]], Bounds] | None = None,
) -> dict[str, Bounds]:
    """Interval-style forward traversal: ``out[node] = rules[op](node, *in_bounds)``, widened by the
    active rounding model (if any) to hold every computed value, then ``refine``."""
    model = active_rounding()
    out: dict[str, Bounds] = {}
    for node in graph.nodes:
        ins = [out[i] for i in node.inputs]
        b = input_bounds if node.op == "input" else rules[node.op](node, *ins)
        if model is not None:
            b = model.forward(node, b, ins)
        if refine is not None:
            b = refine(node, b, out)
        out[node.name] = b
    return out


def _add(a: Coeffs | None, b: Coeffs | None) -> Coeffs | None:
    if a is None:
        return b
    if b is None:
        return a
    return a.plus(b)


def _relax_apply(
    A: Coeffs, a_pos: Tensor, b_pos: Tensor | None, a_neg: Tensor, b_neg: Tensor | None
) -> tuple[list[Coeffs | None], Tensor | float]:
    """Coefficients ``A+ a_pos + A- a_neg`` and constant ``A+ · b_pos + A- · b_neg`` (None = zero); the
    slopes and intercepts are already laid out by ``A.local``."""
    pos = A.data.clamp(min=0)
    new = torch.addcmul(A.data * a_neg, pos, a_pos - a_neg)  # one pass fewer than mul + add
    bias: Tensor | float = 0.0
    if b_pos is not None:
        bias = bias + dot(pos, b_pos)
    if b_neg is not None:
        bias = bias + dot(A.data - pos, b_neg)
    return [A.like(new)], bias


def _affine_step(
    node: Node, rule: Affine, al: Coeffs | None, au: Coeffs | None, ctx: Ctx
) -> tuple[list[Coeffs | None], Tensor | None, list[Coeffs | None], Tensor | None]:
    """Transpose an affine op for the lower and upper coefficients (once while they are shared)."""
    none: list[Coeffs | None] = [None] * len(node.inputs)
    if al is not None and al is au:
        ins, b = al.through(node, rule, ctx)
        return list(ins), b, list(ins), b
    ins_l, b_l, ins_u, b_u = none, None, none, None
    if al is not None:
        ins, b_l = al.through(node, rule, ctx)
        ins_l = list(ins)
    if au is not None:
        ins, b_u = au.through(node, rule, ctx)
        ins_u = list(ins)
    return ins_l, b_l, ins_u, b_u


def _relax_step(
    node: Node, rule: Relax, al: Coeffs | None, au: Coeffs | None, ctx: Ctx, model: RoundingModel | None
) -> tuple[
    list[Coeffs | None], Tensor | float, list[Coeffs | None], Tensor | float, Tensor | float, Tensor | float
]:
    """Replace an activation by its linear bounds: the lower one where a lower bound's coefficient is
    positive (an upper bound's is negative), and the other one elsewhere. Also returns the rounding
    slack of the lower and upper bound (0 without a rounding model)."""
    lb, ub = ctx.bounds[node.inputs[0]]
    layout = al if al is not None else au
    assert layout is not None
    raw = rule.relax(node, lb, ub, ctx)
    aL, bL, aU, bU = (None if t is None else layout.local(t) for t in raw)
    assert aL is not None and aU is not None
    ins_l: list[Coeffs | None] = [None]
    ins_u: list[Coeffs | None] = [None]
    bias_l: Tensor | float = 0.0
    bias_u: Tensor | float = 0.0
    slack_l: Tensor | float = 0.0
    slack_u: Tensor | float = 0.0
    w = None
    if model is not None:
        n = _rows_of(layout)
        if all(t is None or t.ndim == lb.ndim for t in raw):  # per-neuron lines: weigh, then lay out once
            w = layout.local(model.relax_weight(node, lb, ub, n, raw))
        else:
            w = model.relax_weight(node, lb, ub, n, (aL, bL, aU, bU), layout.local)
    if al is not None:
        ins_l, bias_l = _relax_apply(al, aL, bL, aU, bU)
        if w is not None:
            slack_l = _weighted(al.data.abs(), w)
    if au is not None:
        ins_u, bias_u = _relax_apply(au, aU, bU, aL, bL)
        if w is not None:
            slack_u = slack_l if au is al else _weighted(au.data.abs(), w)
    return ins_l, bias_l, ins_u, bias_u, slack_l, slack_u


def _plus_bias(
    total: Tensor | float, b: Tensor | float | None, directed: bool = False, upper: bool = False
) -> Tensor | float:
    """``total + b``; with ``directed``, rounded away from the bound's side (down for a lower bound)."""
    if b is None or (not isinstance(b, Tensor) and b == 0.0):
        return total
    s = total + b
    return toward(s, upper) if directed else s


def _finish(bias: Tensor | float, slack: Tensor | float, infl: float, upper: bool) -> Tensor | float:
    """``bias - infl * slack`` (``+`` for an upper bound), rounded away from the bound's side."""
    if not isinstance(slack, Tensor) and slack == 0.0:
        return bias
    return toward(bias + slack * infl if upper else bias - slack * infl, upper)


def backward(
    graph: Graph,
    target: str,
    A0: Coeffs | Tensor,
    table: Mapping[str, Affine | Relax],
    ctx: Ctx,
    *,
    lower: bool = True,
    upper: bool = True,
    stop: frozenset[str] = frozenset(),
) -> tuple[dict[str, Coeffs], Tensor | float, dict[str, Coeffs], Tensor | float]:
    """Propagate ``A0`` (a :class:`Coeffs`, or a dense tensor ``[B', S, *shape(target)]``) from
    ``target`` back to the input.

    Returns ``(leaves_lo, bias_lo, leaves_up, bias_up)``: for the lower bound,
    ``A0 · v_target >= sum_leaf A_leaf · v_leaf + bias_lo`` for every input in the set, given that the
    relaxations in ``table`` are valid on the intervals in ``ctx.bounds``; leaves are the input node and
    any node of ``stop`` reached (upper bound likewise with ``<=``).

    Lagrange terms (beta-CROWN): ``ctx.state["lagrange"]``, if set, maps nodes to tensors ``t``
    ([1 or B, S, *shape]) added to the lower bound's coefficients on that node when the traversal
    reaches it. The lower bound then holds for ``A0 · v_target + sum_node t · v_node`` instead; with
    ``t = -beta * s`` (``beta >= 0``) on a domain where ``s * v_node >= 0`` the added part is <= 0, so
    it bounds ``A0 · v_target`` there too (see :mod:`.subdomains`). Dense coefficients only.

    Without a rounding model this is the exact-arithmetic statement. Inside :func:`rounding_scope` it
    holds for the computed leaves and bias as they are (the float32 error of every node crossed and the
    float64 residual of every step are in the bias, see :mod:`._soundness`); the leaves' concretisation
    (:func:`concretize`) covers its own rounding. ``ctx.bounds`` must then hold the interval of every
    node crossed and of its inputs.
    """
    model = active_rounding()
    directed = model is not None
    slack_lo: Tensor | float = 0.0
    slack_up: Tensor | float = 0.0
    start = A0 if isinstance(A0, Coeffs) else Dense(A0)
    lagrange = ctx.state.get("lagrange") if lower else None
    anc = graph.ancestors(target)
    A_lo: dict[str, Coeffs | None] = {target: start if lower else None}
    A_up: dict[str, Coeffs | None] = {target: start if upper else None}
    bias_lo: Tensor | float = 0.0
    bias_up: Tensor | float = 0.0
    leaves_lo: dict[str, Coeffs] = {}
    leaves_up: dict[str, Coeffs] = {}
    idx = next(i for i, n in enumerate(graph.nodes) if n.name == target)
    for node in reversed(graph.nodes[: idx + 1]):
        if node.name not in anc or node.name not in A_lo:
            continue
        al, au = A_lo.pop(node.name), A_up.pop(node.name)
        if lagrange and node.name in lagrange and al is not None:
            al, s_l = _plus_lagrange(al, lagrange[node.name], ctx, node.name, model)
            slack_lo = slack_lo + s_l
        if node.op == "input" or node.name in stop:
            if al is not None:
                leaves_lo[node.name] = al
            if au is not None:
                leaves_up[node.name] = au
            continue
        rule = table[node.op]
        ins_l: list[Coeffs | None]
        ins_u: list[Coeffs | None]
        b_l: Tensor | float | None
        b_u: Tensor | float | None
        if isinstance(rule, Affine):
            if model is not None:
                w = model.node_weight(node, ctx)
                if w is not None:
                    s_l = 0.0 if al is None else _abs_dot(al, w)
                    s_u = s_l if au is al else (0.0 if au is None else _abs_dot(au, w))
                    slack_lo, slack_up = slack_lo + s_l, slack_up + s_u
            ins_l, b_l, ins_u, b_u = _affine_step(node, rule, al, au, ctx)
        else:
            ins_l, b_l, ins_u, b_u, s_l, s_u = _relax_step(node, rule, al, au, ctx, model)
            slack_lo, slack_up = slack_lo + s_l, slack_up + s_u
        bias_lo = _plus_bias(bias_lo, b_l, directed, upper=False)
        bias_up = _plus_bias(bias_up, b_u, directed, upper=True)
        for inp, nl, nu in zip(node.inputs, ins_l, ins_u, strict=True):
            ol, ou = A_lo.get(inp), A_up.get(inp)
            shared = (ol is ou) and (nl is nu)
            sl = _add(ol, nl)
            su = sl if shared else _add(ou, nu)
            A_lo[inp], A_up[inp] = sl, su
            if model is not None and (ol is not None and nl is not None or ou is not None and nu is not None):
                # one rounded addition of two coefficient sets: |error| <= gamma_1 |sum|
                w = model.merge_weight(_bounds_of_node(ctx, inp))
                m_l = 0.0 if sl is None or ol is None or nl is None else _abs_dot(sl, w)
                m_u = m_l if shared else (0.0 if su is None or ou is None or nu is None else _abs_dot(su, w))
                slack_lo, slack_up = slack_lo + m_l, slack_up + m_u
    if model is not None:
        infl, floor = model.inflate(start.data.dtype), model.floor(start.data.dtype)
        bias_lo = _finish(bias_lo, slack_lo + floor, infl, upper=False)
        bias_up = _finish(bias_up, slack_up + floor, infl, upper=True)
    return leaves_lo, bias_lo, leaves_up, bias_up


def _plus_lagrange(
    A: Coeffs, term: Tensor, ctx: Ctx, name: str, model: RoundingModel | None
) -> tuple[Coeffs, Tensor | float]:
    """``A + term`` on node ``name`` and the rounding slack of that one addition (``gamma_1 |sum| ·
    |v|``, as any merge of two coefficient sets)."""
    if not isinstance(A, Dense):
        raise AssertionError(f"Lagrange terms need dense coefficients on {name!r}")
    out = Dense(A.data + term)
    if model is None:
        return out, 0.0
    return out, _abs_dot(out, model.merge_weight(_bounds_of_node(ctx, name)))


def _bounds_of_node(ctx: Ctx, name: str) -> Bounds:
    if name not in ctx.bounds:
        raise AssertionError(f"rounding needs the interval of node {name!r} in ctx.bounds")
    return ctx.bounds[name]


class _BoxBound(torch.autograd.Function):
    """``dot(A, c) + sign * dot(|A|, r)`` with a fused backward: ``g * (c + sign * sgn(A) * r)`` in one
    tensor of A's size, instead of autograd's outer products through the two matrix-vector products
    and the abs (measured: 3x the forward's cost). Exact arithmetic only (the search of alpha-CROWN)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, c: Tensor, r: Tensor, sign: float) -> Tensor:
        ctx.save_for_backward(a, c, r)
        ctx.sign = sign
        return dot(a, c) + sign * dot(a.abs(), r)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
        a, c, r = ctx.saved_tensors
        grad = torch.sgn(a).mul_(r)
        grad = grad.mul_(ctx.sign).add_(c) if grad.shape == a.shape else (grad * ctx.sign + c).expand_as(a)
        return grad.mul_(g.reshape(g.shape + (1,) * (a.ndim - g.ndim))), None, None, None


_VERTICES: ContextVar[list[Tensor] | None] = ContextVar("robustcert_bounds_vertices", default=None)


@contextmanager
def capture_vertices() -> Iterator[list[Tensor]]:
    """Inside, every lower-bound concretization of dense coefficients over a box appends the box vertex
    that minimises its linear bound, per example and row (``[B, S, *input_shape]``, float64): where
    the network is lowest according to that relaxation, so a candidate counterexample for branch and
    bound. A heuristic output only: no bound reads it."""
    found: list[Tensor] = []
    token = _VERTICES.set(found)
    try:
        yield found
    finally:
        _VERTICES.reset(token)


def concretize_input(A: Coeffs, inset: InputSet, upper: bool = False, consume: bool = False) -> Tensor:
    """Lower (or upper) bound of ``A · x`` over the input set: [B, S].

    Box: ``A·c ∓ |A|·r``. L2: the tighter of the ball bound ``A·x0 ∓ eps ||A||_2`` and the box bound —
    both bound ``A · x`` over ball ∩ box, so the tighter one does too (``||A||_2`` of the stored numbers:
    a representation stores zeros, or nothing, for the coefficients it leaves out).

    ``consume``: ``A`` is not used afterwards (by anyone), so ``|A|`` may overwrite it (box only): one
    allocation of A's size fewer.
    """
    found = _VERTICES.get()
    if found is not None and not upper and isinstance(A, Dense) and inset.center is None:
        found.append(torch.where(A.data.detach() > 0, A.local(inset.lo), A.local(inset.hi)))
    model = active_rounding()
    c = (inset.lo + inset.hi) / 2
    r = (inset.hi - inset.lo) / 2
    sign = 1.0 if upper else -1.0
    if model is None and inset.center is None and A.data.requires_grad:
        return _BoxBound.apply(A.data, A.local(c), A.local(r), sign)
    ac = A.dot(c)
    absA = A.data.abs_() if consume and inset.center is None else A.data.abs()
    n = _rows_of(A)
    if model is None:
        val = ac + sign * dot(absA, A.local(r))
    else:
        # one pass over |A|: the radius and the inflated rounding weight summed (rounded up) per input;
        # the sum's own rounding is a relative error of the slack part, inside the inflation
        infl, floor = model.inflate(A.data.dtype), model.floor(A.data.dtype)
        t = toward(r + infl * model.box_weight(inset, n), upper=True)
        val = toward(ac + sign * dot(absA, A.local(t)) + sign * floor, upper)
    if inset.center is not None:
        norm = torch.linalg.vector_norm(A.data.flatten(2), dim=-1)
        ball = A.dot(inset.center) + sign * inset.eps * norm
        if model is not None:
            w, g = model.ball_weights(inset, n)
            slack = dot(absA, A.local(w)) + g * inset.eps * norm
            ball = toward(ball + sign * (infl * slack + floor), upper)
        val = torch.minimum(val, ball) if upper else torch.maximum(val, ball)
    return val


def concretize_interval(A: Coeffs, bounds: Bounds, upper: bool = False) -> Tensor:
    """Lower (or upper) bound of ``A · v`` over the box ``v in [lb, ub]``: [B, S]."""
    lb, ub = bounds
    pos = A.data.clamp(min=0)
    lo_t, hi_t = (ub, lb) if upper else (lb, ub)
    val = dot(pos, A.local(lo_t)) + dot(A.data - pos, A.local(hi_t))
    model = active_rounding()
    if model is not None:
        slack = _abs_dot(A, model.interval_weight(bounds, _rows_of(A))) * model.inflate(A.data.dtype)
        slack = slack + model.floor(A.data.dtype)
        val = toward(val + slack if upper else val - slack, upper)
    return val


def concretize(
    leaves: dict[str, Coeffs],
    bias: Tensor | float,
    graph: Graph,
    inset: InputSet,
    ctx: Ctx,
    upper: bool = False,
    consume: bool = False,
) -> Tensor:
    """Lower bound (or, for the leaves/bias of an upper bound, upper bound) of the linear form.
    ``consume``: the input leaf's coefficients are not used afterwards (see :func:`concretize_input`)."""
    directed = active_rounding() is not None
    total: Tensor | float = bias
    for name, A in leaves.items():
        if name == graph.input_name:
            term = concretize_input(A, inset, upper, consume)
        else:
            term = concretize_interval(A, ctx.bounds[name], upper)
        total = _plus_bias(total, term, directed, upper)
    if not isinstance(total, Tensor):
        total = torch.full((inset.batch, 1), float(total), dtype=inset.lo.dtype)
    return total


def chunk_rows(n_rows: int, batch: int, max_numel: int, itemsize: int = 8) -> int:
    """How many specification rows fit the memory budget per chunk (at least 1)."""
    per_row = max(1, batch * max_numel * itemsize * 4)
    return max(1, min(n_rows, MEMORY_BUDGET_BYTES // per_row))
