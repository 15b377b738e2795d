"""Receptive-field ("patches") coefficients for CROWN's intermediate bounds of conv feature maps.

A neuron ``(c, i, j)`` of a conv feature map depends only on a window of each earlier feature map, so its
backward coefficients can be stored as ``[B, R, C, kh, kw]`` (R rows) plus one window geometry shared by
all rows (size ``kh x kw``, stride, offset: the row at output position ``(i, j)`` covers rows
``i*sh - ph ... i*sh - ph + kh - 1`` of the map) instead of a dense ``[B, R, C, H, W]``. This makes
CROWN's intermediate bounds of conv nets an order of magnitude cheaper.

:class:`Patches` is only a coefficient *representation*: the traversal, the relaxations and the
concretisation are those of :func:`robustcert.bounds._common.backward` (the one backward substitution of
the package). Patches lays per-neuron maps out as windows (:meth:`Patches.local`) and transposes the ops
a window supports (convolutions and plain average pools as transposed convolutions of the window,
element-wise affine ops); :func:`plan` checks beforehand that the chain from a target to the input has
only such ops and activations, and gives each node's window geometry. Coefficients at window positions
outside a feature map are zeroed after every transposed convolution (the only step that can create
them), so they never leak into valid positions, and the window holds exactly the nonzero part of the
dense coefficients: the result equals the dense CROWN bound up to float rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustcert.bounds._common import Affine, Coeffs, Ctx
from robustcert.graph.ir import Graph, Node
from robustcert.graph.ops import OPS

ELEMENTWISE = ("normalize", "batchnorm", "add_const", "sub_const", "mul_const", "div_const", "identity")
# Activations whose relaxation is per neuron (slopes shaped like the node): windows lay them out as they
# lay out any per-neuron map. A max pool (gather + reduce_max) is not one: plan() falls back to dense.
ELEMENTWISE_ACTIVATIONS = ("relu", "sigmoid", "tanh", "leaky_relu", "gelu")


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


def plan(graph: Graph, target: str, ctx: Ctx) -> dict[str, Geo] | None:
    """The window geometry of every node on the chain from ``target`` back to the input, or None when
    the chain leaves what windows support (a branch, a reshape, a linear layer, a grouped or
    padded-count pooling...)."""
    by_name = {n.name: n for n in graph.nodes}
    geo = Geo(1, 1, 1, 1, 0, 0)
    geos: dict[str, Geo] = {}
    cur = by_name[target]
    while True:
        if len(ctx.shapes[cur.name]) != 3:
            return None
        geos[cur.name] = geo
        if cur.op == "input":
            return geos
        if cur.op in ("conv2d", "avgpool2d"):
            try:
                weight, _, a = _conv_spec(cur, ctx, torch.float64)
            except _Unsupported:
                return None
            kernel = (int(weight.shape[2]), int(weight.shape[3]))
            geo = _conv_geo(geo, kernel, a["stride"], a["padding"], a["dilation"])
        elif cur.op not in ELEMENTWISE and cur.op not in ELEMENTWISE_ACTIVATIONS:
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
    u = padded.unfold(2, geo.kh, geo.sh).unfold(3, geo.kw, geo.sw)  # [B1, C, Lh, Lw, kh, kw]
    b1, c, lh, lw = u.shape[:4]
    # one contiguous [C * kh * kw] block per position, then whole blocks gathered per row
    u = u.permute(0, 2, 3, 1, 4, 5).reshape(b1, lh * lw, c * geo.kh * geo.kw)
    pos = oi * lw + oj
    out = u[0][pos] if b1 == 1 else u[torch.arange(B).unsqueeze(1), pos]
    return out.reshape(B, oi.shape[1], c, geo.kh, geo.kw)


def _transpose_conv(Wn: Tensor, weight: Tensor, attrs: dict[str, Any], new: Geo) -> Tensor:
    """Window coefficients through a convolution (transposed): [N, Co, kh, kw] -> [N, Ci, kh', kw'].

    Each window position's kernel-sized contribution (one batched product) is added at its offset in
    the new window: kh * kw strided slice additions over all rows at once (``F.fold`` loops over the
    rows one by one). The same sums as the transposed convolution, in another order."""
    n, co, kh, kw = Wn.shape
    g = attrs["groups"]
    ci_g, k1, k2 = weight.shape[1:]
    w = weight.reshape(g, co // g, ci_g * k1 * k2)
    cols = torch.einsum("ngol,goq->nlgq", Wn.reshape(n, g, co // g, kh * kw), w)
    cols = cols.reshape(n, kh, kw, g * ci_g, k1, k2)
    (s1, s2), (d1, d2) = attrs["stride"], attrs["dilation"]
    if kh == 1 and kw == 1:
        if d1 == 1 and d2 == 1:
            return cols[:, 0, 0]
    out = torch.zeros((n, g * ci_g, new.kh, new.kw), dtype=Wn.dtype, device=Wn.device)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * s1, i * s1 + d1 * (k1 - 1) + 1, d1)
            col = slice(j * s2, j * s2 + d2 * (k2 - 1) + 1, d2)
            out[:, :, rows, col] += cols[:, i, j]
    return out


class Patches(Coeffs):
    """Coefficients of R rows per example, each on its window of the node: ``data`` is
    ``[B, R, C, kh, kw]``; ``at`` is the node, ``geos`` the geometry of every node of the planned chain,
    ``oi, oj`` ([B, R]) each row's output position in the target map of size ``out_hw``."""

    def __init__(
        self,
        data: Tensor,
        at: str,
        geos: dict[str, Geo],
        oi: Tensor,
        oj: Tensor,
        out_hw: tuple[int, int],
    ) -> None:
        self.data, self.at, self.geos = data, at, geos
        self.oi, self.oj, self.out_hw = oi, oj, out_hw

    @staticmethod
    def rows(
        idx: Tensor, shape: tuple[int, ...], at: str, geos: dict[str, Geo], dtype: torch.dtype
    ) -> Patches:
        """The identity specification of the neurons ``idx`` ([B, R] flat indices into a [C, H, W] map)."""
        B, R = idx.shape
        co_n, ho, wo = shape
        co, rem = idx // (ho * wo), idx % (ho * wo)
        data = torch.zeros((B, R, co_n, 1, 1), dtype=dtype)
        data.scatter_(2, co.view(B, R, 1, 1, 1), 1.0)
        return Patches(data, at, geos, rem // wo, rem % wo, (ho, wo))

    def _win(self, maps: Tensor, at: str) -> Tensor:
        return windows(maps, self.geos[at], self.oi, self.oj, self.out_hw)

    def local(self, t: Tensor) -> Tensor:
        if t.ndim != 4:
            raise ValueError("patches take per-neuron maps [1 or B, C, H, W], not per-row ones")
        return self._win(t, self.at)

    def like(self, data: Tensor) -> Coeffs:
        return Patches(data, self.at, self.geos, self.oi, self.oj, self.out_hw)

    def plus(self, other: Coeffs) -> Coeffs:
        raise AssertionError("patches follow a chain (plan() refuses branches)")

    def through(self, node: Node, rule: Affine, ctx: Ctx) -> tuple[list[Coeffs], Tensor | None]:
        inp = node.inputs[0]
        if node.op in ("conv2d", "avgpool2d"):
            data, bias = self._through_conv(node, ctx, inp)
        elif node.op in ELEMENTWISE:
            data, bias = self._through_elementwise(node, ctx)
        else:  # plan() admits no other affine op; never guess a transpose
            raise AssertionError(f"patches cannot cross a {node.op} node")
        return [Patches(data, inp, self.geos, self.oi, self.oj, self.out_hw)], bias

    def _through_conv(self, node: Node, ctx: Ctx, inp: str) -> tuple[Tensor, Tensor | None]:
        """Convolution or plain average pool: transpose the window into the input's geometry, zero what
        falls outside the input map, and add ``sum A · bias``."""
        A = self.data
        weight, b, attrs = _conv_spec(node, ctx, A.dtype)
        bias = None if b is None else (A.sum(dim=(-2, -1)) * b).sum(-1)
        B, R = A.shape[:2]
        out = _transpose_conv(A.reshape((B * R,) + tuple(A.shape[2:])), weight, attrs, self.geos[inp])
        inside = self._win(torch.ones((1, 1) + ctx.shapes[inp][1:], dtype=A.dtype), inp)
        return out.reshape((B, R) + tuple(out.shape[1:])) * inside, bias

    def _through_elementwise(self, node: Node, ctx: Ctx) -> tuple[Tensor, Tensor]:
        """Element-wise affine op ``s * x + t``: scale the window by ``s``, add ``sum A · t``."""
        zero = torch.zeros((1,) + ctx.shapes[node.name], dtype=self.data.dtype)
        t = OPS[node.op].forward(node, zero)
        s = OPS[node.op].forward(node, zero + 1) - t
        return self.data * self.local(s), self.dot(t)


def max_window_numel(geos: dict[str, Geo], ctx: Ctx) -> int:
    """The largest number of coefficients one row holds on any node of the plan."""
    return max(ctx.shapes[name][0] * g.kh * g.kw for name, g in geos.items())
