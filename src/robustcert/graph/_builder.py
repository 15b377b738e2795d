"""Shared helper of the front ends: collects IR nodes with unique names and converts parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from robustcert.errors import RobustCertError
from robustcert.graph.ir import Node

_HEAD_LABEL = {"softmax": "Softmax", "log_softmax": "LogSoftmax"}


class Builder:
    def __init__(self, model: Any, live: bool) -> None:
        self.model = model
        self.live = live
        self.nodes: list[Node] = []
        self.names: set[str] = set()
        # source-level values that are a stripped Softmax/LogSoftmax of their input -> (op, note)
        self.heads: dict[str, tuple[str, str]] = {}

    def tensor(self, t: Any) -> Any:
        """A parameter for the IR: the live tensor (training graphs) or a float64 copy."""
        if t is None:
            return None
        if not isinstance(t, Tensor):
            t = torch.as_tensor(t, dtype=torch.float64)
        if self.live:
            return t
        return t.detach().to(device="cpu", dtype=torch.float64).clone()

    def add(self, name: str, op: str, inputs: Sequence[str], **params: Any) -> str:
        base, k = name, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        self.nodes.append(Node(name, op, tuple(inputs), dict(params)))
        return name

    def const_value(self, c: Any, shape: tuple[int, ...], where: str) -> Tensor:
        """A constant operand as a tensor of 1 + len(shape) dims, leading dim 1, not growing ``shape``."""
        t = c if isinstance(c, Tensor) else torch.as_tensor(c, dtype=torch.float64)
        while t.ndim > len(shape) + 1 and t.shape[0] == 1:
            t = t[0]
        if t.ndim > len(shape) + 1:
            raise RobustCertError(f"node {where!r}: constant of shape {tuple(t.shape)} has too many dims")
        t = t.reshape((1,) * (len(shape) + 1 - t.ndim) + tuple(t.shape))
        try:
            grown = torch.broadcast_shapes(tuple(t.shape), (1,) + shape) != (1,) + shape
        except RuntimeError:
            grown = True
        if grown:
            raise RobustCertError(
                f"node {where!r}: constant of shape {tuple(t.shape)} does not broadcast to the tensor's "
                f"per-example shape {shape} without growing it; not supported"
            )
        return self.tensor(t)

    def maxpool(
        self,
        name: str,
        x: str,
        in_shape: tuple[int, ...],
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pads: tuple[int, int, int, int],
        dilation: tuple[int, int],
        ceil_mode: bool,
        unsupported: Callable[[str], Exception],
    ) -> str:
        """A 2-D max pool over ``x`` (per-example shape [C, H, W]) as gather -> reduce_max -> reshape.

        ``pads`` are (top, left, bottom, right); padded positions never win (they are masked out, as
        torch's -inf padding). The output size follows torch (and ONNX): ``floor`` (or ``ceil``) of
        ``(H + top + bottom - dilation (k - 1) - 1) / stride + 1``, where in ceil mode a last window that
        starts in the bottom/right padding is dropped. Raises ``unsupported(why)`` for other shapes.
        """
        if len(in_shape) != 3:
            raise unsupported(f"max pooling of a per-example shape {in_shape}; only [C, H, W] is supported")
        c, size = in_shape[0], in_shape[1:]
        coords: list[Tensor] = []
        masks: list[Tensor] = []
        outs: list[int] = []
        for axis in range(2):
            n, k, s, d = size[axis], kernel[axis], stride[axis], dilation[axis]
            before, after = pads[axis], pads[axis + 2]
            if min(k, s, d) < 1 or min(before, after) < 0:
                raise unsupported(f"kernel {kernel}, stride {stride}, dilation {dilation}, pads {pads}")
            span = n + before + after - d * (k - 1) - 1
            if span < 0:
                raise unsupported(f"the pooling window is larger than the padded input ({n})")
            out = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (out - 1) * s >= n + before:
                out -= 1
            pos = (torch.arange(out) * s - before).unsqueeze(0) + (torch.arange(k) * d).unsqueeze(1)
            masks.append((pos >= 0) & (pos < n))  # [k, out]
            coords.append(pos.clamp(0, n - 1))
            outs.append(out)
        (kh, kw), (ho, wo) = kernel, outs
        h, w = coords
        h_w, w_w = size[1], 1
        index = (
            torch.arange(c).view(1, 1, c, 1, 1) * (size[0] * size[1])
            + (h * h_w).view(kh, 1, 1, ho, 1)
            + (w * w_w).view(1, kw, 1, 1, wo)
        ).reshape(kh * kw, c, ho, wo)
        valid = (masks[0].view(kh, 1, 1, ho, 1) & masks[1].view(1, kw, 1, 1, wo)).reshape(kh * kw, 1, ho, wo)
        if not bool(valid.any(0).all()):
            raise unsupported("a pooling window lies entirely in the padding")
        windows = self.add(f"{name}.windows", "gather", [x], index=index.to(torch.int64))
        top = self.add(
            f"{name}.max", "reduce_max", [windows], valid=None if bool(valid.all()) else valid.clone()
        )
        return self.add(name, "reshape", [top], shape=(c, ho, wo))

    def head(self, value: str, op: str, where: str) -> None:
        """Record that the source value ``value`` is ``op`` (softmax / log_softmax) of its input, which is
        stripped if ``value`` turns out to be the model's output (see :meth:`use`)."""
        label = _HEAD_LABEL[op]
        note = (
            f"{label} at node {where!r}, the model's last op, was stripped: bounds and certificates are on "
            f"the logits before it, which have the same argmax ({label} keeps the order of each example's "
            "logits, so every margin has the same sign)"
        )
        self.heads[value] = (op, note)

    def use(self, value: str, where: str, unsupported: Callable[[str], Exception]) -> None:
        """Refuse to read a stripped Softmax/LogSoftmax anywhere but as the model's output."""
        if value in self.heads:
            label = _HEAD_LABEL[self.heads[value][0]]
            raise unsupported(
                f"it reads the {label} output {value!r}; {label} is supported only as the last op"
            )

    def strip(self, output: str) -> tuple[str | None, list[str]]:
        """The stripped op and notes when the model's output value ``output`` is a recorded head."""
        if output in self.heads:
            op, note = self.heads[output]
            return op, [note]
        return None, []
