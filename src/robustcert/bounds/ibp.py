"""Interval bound propagation (IBP): one small rule per op and one table over the shared forward pass.

Each rule maps the interval(s) ``[lo, hi]`` of its input(s) to an interval containing every value the op
can take on them. Affine ops use the centre/radius form ``L c ± |L| r`` (exact for one affine map over a
box); monotone ops are applied to both ends (gather, slice, permute, pad, max pool's ``reduce_max`` —
each output is an input entry, a constant or a maximum of entries; LeakyReLU with a >= 0); concat joins
the intervals; LeakyReLU with a < 0 and GELU are not monotone and use their extreme points. The rules
are differentiable and dtype-agnostic (params are cast to the bounds' dtype), so the same table serves
certification (float64) and training (float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustcert.bounds._affine import AFFINE_BACK
from robustcert.bounds._common import Bounds, Ctx, InputSet, backward, concretize, forward_pass
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import OPS, batchnorm_scale_shift, channel_view, gelu_divisor, param

# GELU(t) = t Phi(t) has its minimum at t* = -0.75179152469356445... where it is
# -0.16997120747990366...; the constant below is that minimum rounded DOWN (a valid lower bound).
GELU_ARGMIN = -0.7517915246935645
GELU_MIN_LOWER = -0.16997120747990370


def _center_radius(b: Bounds) -> tuple[Tensor, Tensor]:
    lo, hi = b
    return (lo + hi) / 2, (hi - lo) / 2


def _monotone(node: Node, b: Bounds) -> Bounds:
    """Any non-decreasing op: apply it to both ends."""
    f = OPS[node.op].forward
    return f(node, b[0]), f(node, b[1])


def ibp_linear(node: Node, b: Bounds) -> Bounds:
    c, r = _center_radius(b)
    bias = node.params.get("bias")
    W = param(node, "weight", c)
    mid = F.linear(c, W, None if bias is None else param(node, "bias", c))
    rad = F.linear(r, W.abs())
    return mid - rad, mid + rad


def ibp_conv2d(node: Node, b: Bounds) -> Bounds:
    c, r = _center_radius(b)
    p = node.params
    W = param(node, "weight", c)
    bias = None if p.get("bias") is None else param(node, "bias", c)
    mid = F.conv2d(c, W, bias, p["stride"], p["padding"], p["dilation"], p["groups"])
    rad = F.conv2d(r, W.abs(), None, p["stride"], p["padding"], p["dilation"], p["groups"])
    return mid - rad, mid + rad


def ibp_batchnorm(node: Node, b: Bounds) -> Bounds:
    c, r = _center_radius(b)
    nd = c.ndim - 1
    scale, shift = batchnorm_scale_shift(node, c)
    mid = c * channel_view(scale, nd) + channel_view(shift, nd)
    rad = r * channel_view(scale.abs(), nd)
    return mid - rad, mid + rad


def ibp_sub_const(node: Node, b: Bounds) -> Bounds:
    v = param(node, "value", b[0])
    if node.params.get("reverse", False):
        return v - b[1], v - b[0]
    return b[0] - v, b[1] - v


def ibp_mul_const(node: Node, b: Bounds) -> Bounds:
    c, r = _center_radius(b)
    v = param(node, "value", c)
    return c * v - r * v.abs(), c * v + r * v.abs()


def ibp_div_const(node: Node, b: Bounds) -> Bounds:
    c, r = _center_radius(b)
    v = param(node, "value", c)
    return c / v - r / v.abs(), c / v + r / v.abs()


def ibp_add(node: Node, a: Bounds, b: Bounds) -> Bounds:
    return a[0] + b[0], a[1] + b[1]


def ibp_leaky_relu(node: Node, b: Bounds) -> Bounds:
    """Piecewise linear with one kink at 0: its extremes over [lo, hi] are at lo, hi, or 0 when lo < 0 < hi
    (this covers negative slopes, where the op is not monotone)."""
    f = OPS[node.op].forward
    fl, fh = f(node, b[0]), f(node, b[1])
    lo, hi = torch.minimum(fl, fh), torch.maximum(fl, fh)
    straddle = (b[0] < 0) & (b[1] > 0)
    zero = torch.zeros_like(lo)
    return torch.where(straddle, torch.minimum(lo, zero), lo), torch.where(
        straddle, torch.maximum(hi, zero), hi
    )


def ibp_gelu(node: Node, b: Bounds) -> Bounds:
    """``f(x) = 0.5 x (1 + erf(x / c)) = (c / sqrt 2) GELU(x sqrt 2 / c)`` decreases up to
    ``x* = t* c / sqrt 2`` and increases after it: the maximum over [lo, hi] is at an end; the minimum
    is at an end unless lo < x* < hi, where it is the global minimum (c / sqrt 2) GELU(t*), used here
    rounded down."""
    f = OPS[node.op].forward
    fl, fh = f(node, b[0]), f(node, b[1])
    k = gelu_divisor(node) / math.sqrt(2.0)
    x_star = GELU_ARGMIN * k
    inner = (b[0] < x_star) & (b[1] > x_star)
    lo = torch.where(inner, torch.full_like(fl, GELU_MIN_LOWER * k * (1 + 1e-12)), torch.minimum(fl, fh))
    return lo, torch.maximum(fl, fh)


def ibp_concat(node: Node, *bs: Bounds) -> Bounds:
    d = int(node.params["dim"]) + 1
    return torch.cat([b[0] for b in bs], dim=d), torch.cat([b[1] for b in bs], dim=d)


RULES: dict[str, Callable[..., Bounds]] = {
    "linear": ibp_linear,
    "conv2d": ibp_conv2d,
    "relu": _monotone,
    "sigmoid": _monotone,
    "tanh": _monotone,
    "flatten": _monotone,
    "reshape": _monotone,
    "identity": _monotone,
    "batchnorm": ibp_batchnorm,
    "avgpool2d": _monotone,  # non-negative weights
    "normalize": _monotone,  # std > 0
    "add_const": _monotone,
    "sub_const": ibp_sub_const,
    "mul_const": ibp_mul_const,
    "div_const": ibp_div_const,
    "add": ibp_add,
    "leaky_relu": ibp_leaky_relu,
    "gelu": ibp_gelu,
    "gather": _monotone,  # copies entries
    "reduce_max": _monotone,  # max is non-decreasing in every argument
    "pad": _monotone,  # entries or the constant
    "concat": ibp_concat,
    "permute": _monotone,
    "slice": _monotone,
}

assert set(RULES) == set(OPS) - {"input"}


def interval_bounds(graph: Graph, lo: Tensor, hi: Tensor) -> dict[str, Bounds]:
    """IBP bounds of every node for inputs in the box ``[lo, hi]`` (batched, differentiable, no safety
    margin). Guarantee (in exact arithmetic): every node value lies in its interval for every input in
    the box."""
    return forward_pass(graph, RULES, (lo, hi))


def ibp_bounds_graph(graph: Graph, lo: Tensor, hi: Tensor) -> Bounds:
    """IBP bounds of the graph output over the box ``[lo, hi]``; differentiable, no safety margin."""
    return interval_bounds(graph, lo, hi)[graph.output]


def spec_lower(graph: Graph, C: Tensor, inset: InputSet, ctx: Ctx) -> Tensor:
    """IBP lower bound of ``C · output`` ([B, S]) with the trailing affine layers elided.

    ``C`` is pushed back through the affine ops after the last activations (e.g. the final linear
    layer: ``C W``) and concretised on the IBP intervals of those activations (``ctx.bounds``) and, where
    the tail reaches the input, on the input set itself. This is never looser than subtracting output
    intervals, and is the usual form of IBP for margin specifications. No safety margin here.
    """
    stop = frozenset(n.name for n in graph.nodes if not OPS[n.op].is_affine)
    leaves, bias, _, _ = backward(
        graph, graph.output, C, AFFINE_BACK, ctx, lower=True, upper=False, stop=stop
    )
    return concretize(leaves, bias, graph, inset, ctx).expand(inset.batch, C.shape[1])
