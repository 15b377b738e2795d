"""The one registry of ops the graph IR supports: ``OPS[name] -> OpSpec``.

Every node of a :class:`~robustcert.graph.ir.Graph` has ``op`` equal to a key of :data:`OPS`. An op's
``forward(node, *inputs)`` evaluates it on batched tensors (first dimension = batch) in the inputs' dtype;
tensor parameters are stored in ``node.params`` (float64 for certification graphs) and cast to the
input's dtype on use. Shapes in ``params`` are per example (no batch dimension).

Ops and their params:

========== ====================================================================================
op         params
========== ====================================================================================
input      (none) — the graph input, always ``nodes[0]``
linear     ``weight`` [out, in], ``bias`` [out] or None — ``x @ weight.T + bias`` on the last dim
conv2d     ``weight`` [Co, Ci/groups, kh, kw], ``bias`` [Co] or None, ``stride``, ``padding``,
           ``dilation`` (int pairs), ``groups`` (int); zero padding
relu       (none)
sigmoid    (none)
tanh       (none)
flatten    (none) — all per-example dims to one: [B, ...] -> [B, prod(...)]
reshape    ``shape`` — per-example target shape
batchnorm  ``weight``, ``bias``, ``running_mean``, ``running_var`` [C], ``eps`` (float); eval
           statistics, channel dim 1: ``(x - mean) / sqrt(var + eps) * weight + bias``
avgpool2d  ``kernel_size``, ``stride``, ``padding`` (int pairs), ``ceil_mode``, ``count_include_pad``
           (bool), ``divisor_override`` (int or None) — as ``torch.nn.functional.avg_pool2d``
normalize  ``mean``, ``std`` [C] — ``(x - mean) / std`` per channel (dim 1)
add_const  ``value`` — ``x + value``
sub_const  ``value``, ``reverse`` (bool) — ``x - value`` (or ``value - x`` when reverse)
mul_const  ``value`` — ``x * value``
div_const  ``value`` — ``x / value``
add        (none) — sum of two same-shape inputs (e.g. a residual connection)
identity   (none) — also Dropout in eval mode
leaky_relu ``negative_slope`` (float a) — ``x`` for x >= 0, ``a x`` for x < 0
gelu       ``divisor`` (float c, or None for sqrt(2)) — ``0.5 x (1 + erf(x / c))``; None is exactly
           ``torch.nn.functional.gelu`` (c = sqrt 2); a float keeps an exporter's stored constant
gather     ``index`` (int64 tensor, the per-example output shape) — ``out[i] = x.flatten()[index[i]]``
           per example (the windows of a max pool)
reduce_max ``valid`` (bool tensor broadcasting to the per-example input shape, or None) — the maximum
           over per-example dim 0 of the entries where ``valid``, keeping that dim: [k, *r] -> [1, *r]
pad        ``pads`` (one (before, after) int pair per per-example dim), ``value`` (float) — constant
           padding as ``torch.nn.functional.pad`` (negative amounts crop)
concat     ``dim`` (per-example dim) — ``torch.cat`` of all inputs along it (n >= 1 inputs)
permute    ``perm`` (a permutation of the per-example dims) — ``x.permute(0, *(p + 1 for p in perm))``
slice      ``slices`` (one (start, stop, step) per per-example dim, 0 <= start <= stop <= size, step
           >= 1) — basic slicing ``x[:, start:stop:step, ...]``
========== ====================================================================================

A max pool is ``gather`` (each output's window, as dim 0) -> ``reduce_max`` (over the window; the
``valid`` mask drops padded positions) -> ``reshape``: its CROWN relaxation then only needs the
per-example intervals of the gathered windows (see :mod:`robustcert.bounds.crown`).

``value`` of the ``*_const`` ops is a tensor with ``1 + len(per-example shape)`` dims whose first dim is
1 and which broadcasts to ``[1, *shape]`` without growing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustcert.errors import RobustCertError

if TYPE_CHECKING:
    from robustcert.graph.ir import Node


@dataclass(frozen=True)
class OpSpec:
    """One supported op: its name, how to evaluate it (batched), and whether it is affine."""

    name: str
    forward: Callable[..., Tensor]
    is_affine: bool


def param(node: Node, key: str, like: Tensor) -> Any:
    """``node.params[key]``, cast to ``like``'s dtype and device when it is a tensor."""
    value = node.params[key]
    if isinstance(value, Tensor):
        return value.to(dtype=like.dtype, device=like.device)
    return value


def channel_view(vec: Tensor, ndim_per_example: int) -> Tensor:
    """A per-channel vector [C] shaped to broadcast against [..., C, *spatial] (channel first)."""
    return vec.reshape((-1,) + (1,) * (ndim_per_example - 1))


def batchnorm_scale_shift(node: Node, like: Tensor) -> tuple[Tensor, Tensor]:
    """BatchNorm in eval mode as ``x * scale + shift`` per channel (vectors of length C)."""
    scale = param(node, "weight", like) / torch.sqrt(param(node, "running_var", like) + node.params["eps"])
    shift = param(node, "bias", like) - param(node, "running_mean", like) * scale
    return scale, shift


def _input(node: Node, x: Tensor) -> Tensor:
    return x


def _linear(node: Node, x: Tensor) -> Tensor:
    bias = node.params.get("bias")
    return F.linear(x, param(node, "weight", x), None if bias is None else param(node, "bias", x))


def _conv2d(node: Node, x: Tensor) -> Tensor:
    bias = node.params.get("bias")
    return F.conv2d(
        x,
        param(node, "weight", x),
        None if bias is None else param(node, "bias", x),
        stride=node.params["stride"],
        padding=node.params["padding"],
        dilation=node.params["dilation"],
        groups=node.params["groups"],
    )


def _relu(node: Node, x: Tensor) -> Tensor:
    return torch.relu(x)


def _sigmoid(node: Node, x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def _tanh(node: Node, x: Tensor) -> Tensor:
    return torch.tanh(x)


def _flatten(node: Node, x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _reshape(node: Node, x: Tensor) -> Tensor:
    return x.reshape((x.shape[0],) + tuple(node.params["shape"]))


def _batchnorm(node: Node, x: Tensor) -> Tensor:
    return F.batch_norm(
        x,
        param(node, "running_mean", x),
        param(node, "running_var", x),
        param(node, "weight", x),
        param(node, "bias", x),
        training=False,
        eps=node.params["eps"],
    )


def _avgpool2d(node: Node, x: Tensor) -> Tensor:
    p = node.params
    return F.avg_pool2d(
        x,
        p["kernel_size"],
        stride=p["stride"],
        padding=p["padding"],
        ceil_mode=p["ceil_mode"],
        count_include_pad=p["count_include_pad"],
        divisor_override=p["divisor_override"],
    )


def _normalize(node: Node, x: Tensor) -> Tensor:
    nd = x.ndim - 1
    return (x - channel_view(param(node, "mean", x), nd)) / channel_view(param(node, "std", x), nd)


def _add_const(node: Node, x: Tensor) -> Tensor:
    return x + param(node, "value", x)


def _sub_const(node: Node, x: Tensor) -> Tensor:
    value = param(node, "value", x)
    return value - x if node.params.get("reverse", False) else x - value


def _mul_const(node: Node, x: Tensor) -> Tensor:
    return x * param(node, "value", x)


def _div_const(node: Node, x: Tensor) -> Tensor:
    return x / param(node, "value", x)


def _add(node: Node, x: Tensor, y: Tensor) -> Tensor:
    return x + y


def _identity(node: Node, x: Tensor) -> Tensor:
    return x


def _leaky_relu(node: Node, x: Tensor) -> Tensor:
    return F.leaky_relu(x, float(node.params["negative_slope"]))


def gelu_divisor(node: Node) -> float:
    """The constant ``c`` of a gelu node, ``0.5 x (1 + erf(x / c))`` (sqrt(2) when the node stores None).

    Raises RobustCertError unless c is finite and > 0 (the bound rules rely on the shape of GELU:
    convex on [-c, c], concave outside)."""
    c = node.params.get("divisor")
    value = math.sqrt(2.0) if c is None else float(c)
    if not (math.isfinite(value) and value > 0):
        raise RobustCertError(f"gelu node {node.name!r}: divisor {c!r} must be a finite number > 0")
    return value


def _gelu(node: Node, x: Tensor) -> Tensor:
    if node.params.get("divisor") is None:
        return F.gelu(x)
    return 0.5 * x * (1.0 + torch.erf(x / gelu_divisor(node)))


def _gather(node: Node, x: Tensor) -> Tensor:
    index: Tensor = node.params["index"]
    flat = x.reshape(x.shape[0], -1)[:, index.reshape(-1).to(x.device)]
    return flat.reshape((x.shape[0],) + tuple(index.shape))


def _reduce_max(node: Node, x: Tensor) -> Tensor:
    valid = node.params.get("valid")
    if valid is not None:
        x = x.masked_fill(~valid.to(x.device), -math.inf)
    return x.amax(dim=1, keepdim=True)


def pad_amounts(node: Node) -> list[int]:
    """The ``pads`` of a pad node in ``torch.nn.functional.pad`` order (last dim first)."""
    return [int(a) for pair in reversed(node.params["pads"]) for a in pair]


def _pad(node: Node, x: Tensor) -> Tensor:
    return F.pad(x, pad_amounts(node), mode="constant", value=float(node.params["value"]))


def _concat(node: Node, *xs: Tensor) -> Tensor:
    return torch.cat(xs, dim=int(node.params["dim"]) + 1)


def _permute(node: Node, x: Tensor) -> Tensor:
    return x.permute((0,) + tuple(int(p) + 1 for p in node.params["perm"]))


def slice_index(node: Node) -> tuple[slice, ...]:
    """The per-example slicing of a slice node (no batch dim)."""
    return tuple(slice(int(a), int(b), int(c)) for a, b, c in node.params["slices"])


def _slice(node: Node, x: Tensor) -> Tensor:
    return x[(slice(None),) + slice_index(node)]


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in [
        OpSpec("input", _input, True),
        OpSpec("linear", _linear, True),
        OpSpec("conv2d", _conv2d, True),
        OpSpec("relu", _relu, False),
        OpSpec("sigmoid", _sigmoid, False),
        OpSpec("tanh", _tanh, False),
        OpSpec("flatten", _flatten, True),
        OpSpec("reshape", _reshape, True),
        OpSpec("batchnorm", _batchnorm, True),
        OpSpec("avgpool2d", _avgpool2d, True),
        OpSpec("normalize", _normalize, True),
        OpSpec("add_const", _add_const, True),
        OpSpec("sub_const", _sub_const, True),
        OpSpec("mul_const", _mul_const, True),
        OpSpec("div_const", _div_const, True),
        OpSpec("add", _add, True),
        OpSpec("identity", _identity, True),
        OpSpec("leaky_relu", _leaky_relu, False),
        OpSpec("gelu", _gelu, False),
        OpSpec("gather", _gather, True),
        OpSpec("reduce_max", _reduce_max, False),
        OpSpec("pad", _pad, True),
        OpSpec("concat", _concat, True),
        OpSpec("permute", _permute, True),
        OpSpec("slice", _slice, True),
    ]
}

# Source-level ops each front end maps onto OPS (used in "unsupported op" messages).
TORCH_SUPPORTED = (
    "nn.Linear, nn.Conv2d (zero padding), nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU "
    "(approximate='none'), nn.Flatten, nn.Unflatten, view/reshape/flatten, permute/transpose, slicing "
    "x[:, a:b] and narrow on non-batch dims, torch.cat on a non-batch dim, nn.BatchNorm1d/2d (eval), "
    "nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d/AdaptiveMaxPool2d (when the output size divides "
    "the input), nn.ZeroPad2d/ConstantPad1d/2d/3d and F.pad (mode='constant'), robustcert Normalize, "
    "nn.Identity, nn.Dropout (eval), +,-,*,/ by constants, x + y of two branches, nn.Softmax/"
    "nn.LogSoftmax over the classes as the last op (stripped: bounds are on the logits before it), "
    "and the functional forms F.linear, F.conv2d, F.relu, F.leaky_relu, F.gelu, F.avg_pool2d, "
    "F.max_pool2d, F.softmax, F.log_softmax"
)
ONNX_SUPPORTED = (
    "Gemm, MatMul, Conv (2-D, symmetric pads), Relu, LeakyRelu, Sigmoid, Tanh, Gelu "
    "(approximate='none', also as the Div/Erf/Add/Mul pattern of older opsets), Flatten, Reshape, "
    "Squeeze/Unsqueeze, Transpose, Slice and Gather (constant indices) on non-batch axes, Concat on a "
    "non-batch axis, Pad "
    "(mode=constant), BatchNormalization (inference), AveragePool, GlobalAveragePool, MaxPool (2-D), "
    "GlobalMaxPool, Add, Sub, Mul, Div, Neg, Identity, Dropout (inference), Softmax/LogSoftmax over the "
    "classes as the last op (stripped), and Constant/Shape/Gather/Unsqueeze/Squeeze/Concat/Cast on "
    "constants"
)


def supported_ops_text(frontend: str) -> str:
    """The human-readable list of supported ops for an error message (``frontend``: torch or onnx)."""
    source = TORCH_SUPPORTED if frontend == "torch" else ONNX_SUPPORTED
    return f"supported ops: {source} (graph IR ops: {', '.join(sorted(OPS))})"


def numel(shape: tuple[int, ...]) -> int:
    """Number of elements of a per-example shape."""
    return math.prod(shape)
