"""Shared helper of the front ends: collects IR nodes with unique names and converts parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from robustcert.errors import RobustCertError
from robustcert.graph.ir import Node


class Builder:
    def __init__(self, model: Any, live: bool) -> None:
        self.model = model
        self.live = live
        self.nodes: list[Node] = []
        self.names: set[str] = set()

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
