"""Dense float64 views of a graph's affine ops, shared by the verifiers that encode a ReLU network as
explicit expressions (the exact MILP, the SDP relaxation).

An affine op's map is read off by evaluating it in float64 on the zero vector and on the basis vectors:
``J[:, i] = f(e_i) - f(0)``, ``c = f(0)``. For float32 parameters (exact in float64) each entry is exact
up to the two float64 roundings of ``f(e_i)`` and the subtraction, a relative 2^-52 of ``|J| + |c|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def float64_node(node: Any) -> Any:
    """A copy of ``node`` whose floating tensor params are float64 (so basis evaluations are exact)."""
    params = {
        k: (v.detach().double() if isinstance(v, torch.Tensor) and torch.is_floating_point(v) else v)
        for k, v in dict(node.params).items()
    }
    return type(node)(node.name, node.op, tuple(node.inputs), params)


def float64_graph(graph: Any) -> Any:
    """The graph with every node's floating params in float64 (same names, ops and output)."""
    return type(graph)([float64_node(n) for n in graph.nodes], graph.output, graph.input_shape)


def affine_map(spec: Any, node: Any, in_shapes: list[tuple[int, ...]]) -> tuple[list[np.ndarray], np.ndarray]:
    """Jacobians (one per input, [n_out, n_in]) and offset of an affine op, by evaluating it on 0 and e_i."""
    zeros = [torch.zeros((1, *s), dtype=torch.float64) for s in in_shapes]
    with torch.no_grad():
        f0 = spec.forward(node, *zeros).reshape(1, -1)
        jacs = []
        for i, s in enumerate(in_shapes):
            n = int(np.prod(s)) if s else 1
            args = [torch.zeros((n, *t), dtype=torch.float64) for t in in_shapes]
            args[i] = torch.eye(n, dtype=torch.float64).reshape(n, *s)
            out = spec.forward(node, *args).reshape(n, -1) - f0
            jacs.append(out.T.numpy().copy())
    return jacs, f0[0].numpy().copy()
