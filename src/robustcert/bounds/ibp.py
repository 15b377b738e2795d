"""Interval bound propagation (IBP): one small rule per op and one table over the shared forward pass.

Each rule maps the interval(s) ``[lo, hi]`` of its input(s) to an interval containing every value the op
can take on them. Affine ops use the centre/radius form ``L c ± |L| r`` (exact for one affine map over a
box); monotone ops are applied to both ends. The rules are differentiable and dtype-agnostic (params
are cast to the bounds' dtype), so the same table serves certification (float64) and training (float32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

from robustcert.bounds._affine import AFFINE_BACK
from robustcert.bounds._common import Bounds, Ctx, InputSet, backward, concretize, forward_pass
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import OPS, batchnorm_scale_shift, channel_view, param


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
