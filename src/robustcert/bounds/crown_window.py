"""CROWN for intermediate neurons of convolutional layers, with coefficients kept in their receptive field.

A neuron ``(c, i, j)`` of a conv feature map depends only on a window of each earlier feature map, so its
backward coefficients are stored as ``[B, R, C, kh, kw]`` (R rows) plus one window geometry shared by all
rows (size ``kh x kw``, stride, offset: the row at output position ``(i, j)`` covers rows
``i*sh - ph ... i*sh - ph + kh - 1`` of the map) instead of a dense ``[B, R, C, H, W]``. This is the
"patches" idea; it makes CROWN's intermediate bounds of conv nets an order of magnitude cheaper.

The traversal follows a chain of ops from the target back to the input, one small rule per op in
``WINDOW_RULES`` (convolutions and plain average pools as transposed convolutions of the window,
element-wise affine ops, and the activations with the very relaxations of :mod:`.crown`). Anything else
(a branch merge, a reshape, a linear layer, a grouped or padded-count pooling...) returns None and the
caller uses the dense traversal. Coefficients at window positions outside the feature map are zeroed at
every node, so they never leak into valid positions. The result equals the dense CROWN bound up to
float rounding (tested).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robustcert.bounds._common import Ctx, InputSet, Relax
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import OPS

ELEMENTWISE = ("normalize", "batchnorm", "add_const", "sub_const", "mul_const", "div_const", "identity")


@dataclass(frozen=True)
class Geo:
    """Window geometry: size (kh, kw), stride (sh, sw) and offset (ph, pw) in the current map."""

    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int


class _Unsupported(Exception):
    pass


def _conv_geo(
    geo: Geo, kernel: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int], dil: tuple[int, int]
) -> Geo:
    return Geo(
        (geo.kh - 1) * stride[0] + dil[0] * (kernel[0] - 1) + 1,
        (geo.kw - 1) * stride[1] + dil[1] * (kernel[1] - 1) + 1,
        geo.sh * stride[0],
        geo.sw * stride[1],
        geo.ph * stride[0] + pad[0],
        geo.pw * stride[1] + pad[1],
    )


def _pool_as_conv(node: Node, channels: int, dtype: torch.dtype) -> tuple[Tensor, dict]:
    p = node.params
    if p["ceil_mode"] or not (p["count_include_pad"] or tuple(p["padding"]) == (0, 0)):
        raise _Unsupported
    kh, kw = p["kernel_size"]
    div = p["divisor_override"] or kh * kw
    weight = torch.full((channels, 1, kh, kw), 1.0 / div, dtype=dtype)
    return weight, {
        "stride": tuple(p["stride"]),
        "padding": tuple(p["padding"]),
        "dilation": (1, 1),
        "groups": channels,
    }


def _conv_spec(node: Node, ctx: Ctx, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, dict]:
    if node.op == "conv2d":
        p = node.params
        bias = None if p.get("bias") is None else p["bias"].to(dtype)
        return p["weight"].to(dtype), bias, {k: p[k] for k in ("stride", "padding", "dilation", "groups")}
    weight, attrs = _pool_as_conv(node, ctx.shapes[node.inputs[0]][0], dtype)
    return weight, None, attrs


def plan(graph: Graph, target: str, ctx: Ctx) -> tuple[list[Node], list[Geo]] | None:
    """The chain of nodes from ``target`` back to the input and the window geometry at each, or None
    when the chain leaves what windows support."""
    by_name = {n.name: n for n in graph.nodes}
    geo = Geo(1, 1, 1, 1, 0, 0)
    chain, geos = [], []
    cur = by_name[target]
    while True:
        if len(ctx.shapes[cur.name]) != 3:
            return None
        chain.append(cur)
        geos.append(geo)
        if cur.op == "input":
            return chain, geos
        if cur.op in ("conv2d", "avgpool2d"):
            try:
                weight, _, a = _conv_spec(cur, ctx, torch.float64)
            except _Unsupported:
                return None
            geo = _conv_geo(geo, tuple(weight.shape[2:]), a["stride"], a["padding"], a["dilation"])
        elif cur.op not in ELEMENTWISE and cur.op not in ("relu", "sigmoid", "tanh"):
            return None
        if len(cur.inputs) != 1:
            return None
        cur = by_name[cur.inputs[0]]


def windows(maps: Tensor, geo: Geo, oi: Tensor, oj: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """The window of ``maps`` ([1 or B, C, H, W], zero outside) at each row position: [B, R, C, kh, kw]."""
    B = oi.shape[0]
    H, W = maps.shape[-2:]
    far_h = max(0, (out_hw[0] - 1) * geo.sh - geo.ph + geo.kh - H)
    far_w = max(0, (out_hw[1] - 1) * geo.sw - geo.pw + geo.kw - W)
    padded = F.pad(maps, (geo.pw, far_w, geo.ph, far_h))
    ub = padded.unfold(2, geo.kh, geo.sh).unfold(3, geo.kw, geo.sw)  # [B1, C, Lh, Lw, kh, kw]
    ub = ub.expand((B,) + tuple(ub.shape[1:]))
    b_idx = torch.arange(B).unsqueeze(1)
    return ub[b_idx, :, oi, oj]


def _transpose_conv(Wn: Tensor, weight: Tensor, attrs: dict, new: Geo) -> Tensor:
    """Window coefficients through a convolution (transposed): [N, Co, kh, kw] -> [N, Ci, kh', kw']."""
    n, co, kh, kw = Wn.shape
    g = attrs["groups"]
    ci_g, k1, k2 = weight.shape[1:]
    w = weight.reshape(g, co // g, ci_g * k1 * k2)
    cols = torch.einsum("ngol,goq->ngql", Wn.reshape(n, g, co // g, kh * kw), w)
    cols = cols.reshape(n, g * ci_g * k1 * k2, kh * kw)
    return F.fold(cols, (new.kh, new.kw), (k1, k2), dilation=attrs["dilation"], stride=attrs["stride"])


def _sum_win(Wc: Tensor, t: Tensor) -> Tensor:
    return (Wc * t).flatten(2).sum(-1)


@dataclass
class _State:
    """Coefficients on the current node (lower / upper bound; ``up is None`` while they are shared)."""

    lo: Tensor
    up: Tensor | None
    bias_lo: Tensor | float
    bias_up: Tensor | float
    geo: Geo  # geometry on the current node
    new: Geo  # geometry on its input
    oi: Tensor
    oj: Tensor
    out_hw: tuple[int, int]
    ctx: Ctx
    table: dict

    def win(self, maps: Tensor) -> Tensor:
        return windows(maps, self.geo, self.oi, self.oj, self.out_hw)

    def both(self, fn: Callable[[Tensor], tuple[Tensor, Tensor | float]]) -> None:
        """Apply the same affine map to both coefficient sets (once while they are shared)."""
        lo, b = fn(self.lo)
        self.bias_lo = self.bias_lo + b
        if self.up is None:
            self.bias_up = self.bias_up + b
        else:
            self.up, b2 = fn(self.up)
            self.bias_up = self.bias_up + b2
        self.lo = lo


def win_conv(node: Node, st: _State) -> None:
    """Convolution or plain average pool: transpose the window, add ``sum A · bias``."""
    weight, b, attrs = _conv_spec(node, st.ctx, st.lo.dtype)

    def fn(A: Tensor) -> tuple[Tensor, Tensor | float]:
        bterm = 0.0 if b is None else (A.sum(dim=(-2, -1)) * b).sum(-1)
        B, R = A.shape[:2]
        out = _transpose_conv(A.reshape((B * R,) + tuple(A.shape[2:])), weight, attrs, st.new)
        return out.reshape((B, R) + tuple(out.shape[1:])), bterm

    st.both(fn)


def win_elementwise(node: Node, st: _State) -> None:
    """Element-wise affine op ``s * x + t``: scale the window by ``s``, add ``sum A · t``."""
    shape = st.ctx.shapes[node.name]
    zero = torch.zeros((1,) + shape, dtype=st.lo.dtype)
    t = OPS[node.op].forward(node, zero)
    s_w, t_w = st.win(OPS[node.op].forward(node, zero + 1) - t), st.win(t)
    st.both(lambda A: (A * s_w, _sum_win(A, t_w)))


def win_relax(node: Node, st: _State) -> None:
    """Activation: the relaxation of ``table`` (CROWN's), its slope and intercept maps windowed."""
    rule = st.table[node.op]
    assert isinstance(rule, Relax)
    lb, ub = st.ctx.bounds[node.inputs[0]]
    aL, bL, aU, bU = rule.relax(node, lb, ub, st.ctx)
    aL, aU = st.win(aL), st.win(aU)
    bL = None if bL is None else st.win(bL)
    bU = None if bU is None else st.win(bU)
    up = st.lo if st.up is None else st.up
    st.lo, b_lo = _relax(st.lo, aL, bL, aU, bU)
    st.up, b_up = _relax(up, aU, bU, aL, bL)
    st.bias_lo, st.bias_up = st.bias_lo + b_lo, st.bias_up + b_up


WINDOW_RULES: dict[str, Callable[[Node, _State], None]] = {
    **{op: win_elementwise for op in ELEMENTWISE},
    "conv2d": win_conv,
    "avgpool2d": win_conv,
    "relu": win_relax,
    "sigmoid": win_relax,
    "tanh": win_relax,
}


def crown_window_bounds(
    graph: Graph,
    target: str,
    inset: InputSet,
    ctx: Ctx,
    idx: Tensor,
    table: dict,
    planned: tuple[list[Node], list[Geo]],
) -> tuple[Tensor, Tensor]:
    """CROWN lower/upper bounds ([B, R] each) of the neurons ``idx`` ([B, R] flat indices into
    ``target``), with the relaxations of ``table`` on the intervals of ``ctx.bounds``; no margin."""
    chain, geos = planned
    dtype = inset.lo.dtype
    B, R = idx.shape
    co_n, ho, wo = ctx.shapes[target]
    co, rem = idx // (ho * wo), idx % (ho * wo)
    oi, oj = rem // wo, rem % wo
    A = torch.zeros((B, R, co_n, 1, 1), dtype=dtype)
    A.scatter_(2, co.view(B, R, 1, 1, 1), 1.0)
    st = _State(A, None, 0.0, 0.0, geos[0], geos[0], oi, oj, (ho, wo), ctx, table)
    for pos, node in enumerate(chain):
        st.geo = geos[pos]
        if pos > 0:  # zero the coefficients that fall outside this map
            mask = st.win(torch.ones((1, 1) + ctx.shapes[node.name][1:], dtype=dtype))
            st.both(lambda A, m=mask: (A * m, 0.0))
        if node.op == "input":
            up = st.lo if st.up is None else st.up
            return (
                _concretize(st.lo, st.bias_lo, inset, st, False),
                _concretize(up, st.bias_up, inset, st, True),
            )
        st.new = geos[pos + 1]
        WINDOW_RULES[node.op](node, st)
    raise AssertionError("the chain ends at the input")


def _relax(A: Tensor, a_pos: Tensor, b_pos: Tensor | None, a_neg: Tensor, b_neg: Tensor | None):
    pos = A.clamp(min=0)
    new = A * a_neg + pos * (a_pos - a_neg)
    bias: Tensor | float = 0.0
    if b_pos is not None:
        bias = bias + _sum_win(pos, b_pos)
    if b_neg is not None:
        bias = bias + _sum_win(A - pos, b_neg)
    return new, bias


def _concretize(A: Tensor, bias: Tensor | float, inset: InputSet, st: _State, upper: bool) -> Tensor:
    c = st.win((inset.lo + inset.hi) / 2)
    r = st.win((inset.hi - inset.lo) / 2)
    sign = 1.0 if upper else -1.0
    val = _sum_win(A, c) + sign * _sum_win(A.abs(), r)
    if inset.center is not None:
        ball = _sum_win(A, st.win(inset.center)) + sign * inset.eps * torch.linalg.vector_norm(
            A.flatten(2), dim=-1
        )
        val = torch.minimum(val, ball) if upper else torch.maximum(val, ball)
    return val + bias


def max_window_numel(planned: tuple[list[Node], list[Geo]], ctx: Ctx) -> int:
    chain, geos = planned
    return max(ctx.shapes[n.name][0] * g.kh * g.kw for n, g in zip(chain, geos, strict=True))
