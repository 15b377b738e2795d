"""Backward (transpose) rules of the affine ops, shared by CROWN, alpha-CROWN and IBP's last-layer elision.

For an affine op ``v = L(x) + c`` and coefficients ``A`` on ``v`` (shape [B', S, *shape(v)]), a rule
returns ``A L`` on each input (convolution form for convs — never a dense matrix of the layer) and the
constant ``A · c`` ([B', S]) or None when ``c = 0``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from robustcert.bounds._common import Affine, Ctx, dot
from robustcert.graph.ir import Node
from robustcert.graph.ops import OPS, batchnorm_scale_shift, channel_view, pad_amounts, param, slice_index

Back = tuple[list[Tensor], Tensor | None]


def _rows(A: Tensor) -> tuple[int, int]:
    return int(A.shape[0]), int(A.shape[1])


def linear_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    W = param(node, "weight", A)
    bias = node.params.get("bias")
    return [A @ W], None if bias is None else dot(A, param(node, "bias", A))


def conv2d_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    bp, s = _rows(A)
    out_shape, in_shape = tuple(A.shape[2:]), ctx.shapes[node.inputs[0]]
    W = param(node, "weight", A)
    st, pd, dl = node.params["stride"], node.params["padding"], node.params["dilation"]
    kh, kw = W.shape[2:]
    opad = tuple(
        in_shape[1 + i] - ((out_shape[1 + i] - 1) * st[i] - 2 * pd[i] + dl[i] * (k - 1) + 1)
        for i, k in enumerate((kh, kw))
    )
    a = A.reshape((bp * s,) + out_shape)
    groups = node.params["groups"]
    if a.dtype == torch.float32 and in_shape[0] >= 8:
        # oneDNN's channels-last kernels: several times faster on a CPU (the result stays channels-last;
        # splitting its batch dimension below is a view)
        x = F.conv_transpose2d(
            a.contiguous(memory_format=torch.channels_last), W, None, st, pd, opad, groups, dl
        )
    else:  # few output channels (e.g. the input image): the im2col kernel beats oneDNN's several times
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about TF32 on Intel GPUs when flags change
            with torch.backends.mkldnn.flags(enabled=False):
                x = F.conv_transpose2d(a, W, None, st, pd, opad, groups, dl)
    bias = node.params.get("bias")
    b = None if bias is None else (A.sum(dim=(-2, -1)) * param(node, "bias", A)).sum(-1)
    return [x.reshape((bp, s) + in_shape)], b


def avgpool2d_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    bp, s = _rows(A)
    out_shape, in_shape = tuple(A.shape[2:]), ctx.shapes[node.inputs[0]]
    p = node.params
    plain = not p["ceil_mode"] and (p["count_include_pad"] or tuple(p["padding"]) == (0, 0))
    if plain:
        kh, kw = p["kernel_size"]
        div = p["divisor_override"] or kh * kw
        c = in_shape[0]
        W = torch.full((c, 1, kh, kw), 1.0 / div, dtype=A.dtype, device=A.device)
        st, pd = p["stride"], p["padding"]
        opad = tuple(
            in_shape[1 + i] - ((out_shape[1 + i] - 1) * st[i] - 2 * pd[i] + k - 1 + 1)
            for i, k in enumerate((kh, kw))
        )
        x = F.conv_transpose2d(A.reshape((bp * s,) + out_shape), W, None, st, pd, opad, c)
        return [x.reshape((bp, s) + in_shape)], None
    # general case (ceil mode, padding excluded from the count): the exact vector-Jacobian product
    zero = torch.zeros((bp * s,) + in_shape, dtype=A.dtype, device=A.device)
    vjp = torch.func.vjp(lambda z: OPS["avgpool2d"].forward(node, z), zero)[1]
    (g,) = vjp(A.reshape((bp * s,) + out_shape))
    return [g.reshape((bp, s) + in_shape)], None


def reshape_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    return [A.reshape(A.shape[:2] + ctx.shapes[node.inputs[0]])], None


def identity_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    return [A], None


def batchnorm_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    nd = len(ctx.shapes[node.name])
    scale, shift = batchnorm_scale_shift(node, A)
    return [A * channel_view(scale, nd)], dot(A, channel_view(shift, nd))


def normalize_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    nd = len(ctx.shapes[node.name])
    mean, std = channel_view(param(node, "mean", A), nd), channel_view(param(node, "std", A), nd)
    return [A / std], -dot(A, mean / std)


def add_const_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    return [A], dot(A, param(node, "value", A))


def sub_const_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    b = dot(A, param(node, "value", A))
    if node.params.get("reverse", False):
        return [-A], b
    return [A], -b


def mul_const_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    return [A * param(node, "value", A)], None


def div_const_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    return [A / param(node, "value", A)], None


def add_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    return [A, A], None


def gather_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    """``out[i] = x[index[i]]``: each input neuron receives the sum of the coefficients of the outputs that
    copy it (scatter-add)."""
    bp, s = _rows(A)
    in_shape = ctx.shapes[node.inputs[0]]
    index = node.params["index"].reshape(-1).to(A.device)
    zero = torch.zeros((bp, s, math.prod(in_shape)), dtype=A.dtype, device=A.device)
    return [zero.index_add(2, index, A.reshape(bp, s, -1)).reshape((bp, s) + in_shape)], None


def pad_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    """Constant padding ``out = P x + value * (1 - P 1)``: crop the coefficients back to the input
    (negated amounts; cropped positions get zero) and add ``value`` times the coefficients on the padding."""
    x = F.pad(A, [-a for a in pad_amounts(node)])
    value = float(node.params["value"])
    if value == 0.0:
        return [x], None
    in_shape = ctx.shapes[node.inputs[0]]
    copied = F.pad(torch.ones((1,) + in_shape, dtype=A.dtype, device=A.device), pad_amounts(node), value=0.0)
    return [x], value * dot(A, 1.0 - copied)


def concat_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    """Split the coefficients along the concatenated dim, one part per input."""
    d = int(node.params["dim"])
    sizes = [ctx.shapes[i][d] for i in node.inputs]
    return list(A.split(sizes, dim=d + 2)), None


def permute_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    """Input dim ``i`` is output dim ``inv[i]`` with ``inv[perm[j]] = j``: permute the coefficients back."""
    perm = [int(p) for p in node.params["perm"]]
    inv = [perm.index(i) for i in range(len(perm))]
    return [A.permute((0, 1) + tuple(j + 2 for j in inv))], None


def slice_back(node: Node, A: Tensor, ctx: Ctx) -> Back:
    """Place the coefficients at the sliced positions of a zero tensor of the input's shape."""
    x = torch.zeros(A.shape[:2] + ctx.shapes[node.inputs[0]], dtype=A.dtype, device=A.device)
    x[(slice(None), slice(None)) + slice_index(node)] = A
    return [x], None


AFFINE_BACK: dict[str, Affine] = {
    "linear": Affine(linear_back),
    "conv2d": Affine(conv2d_back),
    "avgpool2d": Affine(avgpool2d_back),
    "flatten": Affine(reshape_back),
    "reshape": Affine(reshape_back),
    "identity": Affine(identity_back),
    "batchnorm": Affine(batchnorm_back),
    "normalize": Affine(normalize_back),
    "add_const": Affine(add_const_back),
    "sub_const": Affine(sub_const_back),
    "mul_const": Affine(mul_const_back),
    "div_const": Affine(div_const_back),
    "add": Affine(add_back),
    "gather": Affine(gather_back),
    "pad": Affine(pad_back),
    "concat": Affine(concat_back),
    "permute": Affine(permute_back),
    "slice": Affine(slice_back),
}

assert set(AFFINE_BACK) == {k for k, v in OPS.items() if v.is_affine and k != "input"}
