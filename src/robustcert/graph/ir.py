"""The graph IR: a topologically ordered list of :class:`Node` s over the ops of :data:`OPS`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from robustcert.errors import RobustCertError
from robustcert.graph.ops import OPS


@dataclass(frozen=True)
class Node:
    """One op application. ``inputs`` name producer nodes; ``params`` hold tensors (float64) and attributes."""

    name: str
    op: str
    inputs: tuple[str, ...]
    params: dict[str, Any] = field(default_factory=dict)


# Ops a front end may strip from the end of a model: a monotone map of each example's logits that keeps
# their argmax (and the sign of every margin f_y - f_j), so certifying the logits certifies the model.
STRIPPABLE = ("softmax", "log_softmax")


@dataclass
class Graph:
    """A feed-forward DAG with one input node (``nodes[0]``, op ``input``) and one output node.

    ``input_shape`` is the per-example input shape (no batch dimension). ``forward`` evaluates the
    graph exactly as its ops define it, batched, in the dtype of ``x``.

    ``stripped`` names an op the front end removed from the end of the source model (``"softmax"`` or
    ``"log_softmax"`` over the classes, or None): the graph's output, and so every bound computed on
    it, is the logits before that op, which have the same argmax; :meth:`model_forward` re-applies it
    to reproduce the source model. ``notes`` are human-readable remarks about the conversion (such as
    that stripping) for a report to show.
    """

    nodes: list[Node]
    output: str
    input_shape: tuple[int, ...]
    stripped: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(s) for s in self.input_shape)
        self.validate()

    def validate(self) -> None:
        """Check the structural invariants (unique names, topological order, known ops, one input)."""
        if not self.nodes or self.nodes[0].op != "input":
            raise RobustCertError("graph: nodes[0] must be the input node (op 'input')")
        seen: set[str] = set()
        for node in self.nodes:
            if node.op not in OPS:
                raise RobustCertError(
                    f"graph: node {node.name!r} has unknown op {node.op!r}; known: {', '.join(sorted(OPS))}"
                )
            if node.name in seen:
                raise RobustCertError(f"graph: node name {node.name!r} is used twice")
            if node.op == "input" and node is not self.nodes[0]:
                raise RobustCertError(f"graph: node {node.name!r} is a second input; only one is supported")
            for inp in node.inputs:
                if inp not in seen:
                    raise RobustCertError(
                        f"graph: node {node.name!r} reads {inp!r}, which is not an earlier node"
                    )
            seen.add(node.name)
        if self.output not in seen:
            raise RobustCertError(f"graph: output {self.output!r} is not a node")
        if self.stripped is not None and self.stripped not in STRIPPABLE:
            raise RobustCertError(
                f"graph: stripped op {self.stripped!r} is not one of {', '.join(STRIPPABLE)}"
            )

    @property
    def input_name(self) -> str:
        return self.nodes[0].name

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.input_shape or x.ndim < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise RobustCertError(
                f"input has shape {shape}, the model takes [batch, {', '.join(map(str, self.input_shape))}]; "
                "pass a batch of inputs of the model's input shape"
            )

    def forward_all(self, x: Tensor) -> dict[str, Tensor]:
        """Every node's value for the batch ``x`` (shape [B, *input_shape])."""
        self._check_input(x)
        values: dict[str, Tensor] = {}
        for node in self.nodes:
            if node.op == "input":
                values[node.name] = x
            else:
                values[node.name] = OPS[node.op].forward(node, *(values[i] for i in node.inputs))
        return values

    def forward(self, x: Tensor) -> Tensor:
        """The output for the batch ``x``, computed in ``x``'s dtype; intermediate values are freed."""
        self._check_input(x)
        last_use: dict[str, int] = {}
        for idx, node in enumerate(self.nodes):
            for inp in node.inputs:
                last_use[inp] = idx
        values: dict[str, Tensor] = {}
        for idx, node in enumerate(self.nodes):
            if node.op == "input":
                values[node.name] = x
            else:
                values[node.name] = OPS[node.op].forward(node, *(values[i] for i in node.inputs))
            for inp in node.inputs:
                if last_use.get(inp) == idx and inp != self.output:
                    values.pop(inp, None)
        return values[self.output]

    __call__ = forward

    def model_forward(self, x: Tensor) -> Tensor:
        """The source model's output: :meth:`forward` followed by the stripped op (if any) over dim 1."""
        out = self.forward(x)
        if self.stripped == "softmax":
            return torch.softmax(out, dim=1)
        if self.stripped == "log_softmax":
            return torch.log_softmax(out, dim=1)
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-example shape of every node (evaluated on one zero input in float64)."""
        with torch.no_grad():
            values = self.forward_all(torch.zeros((1,) + self.input_shape, dtype=torch.float64))
        return {name: tuple(v.shape[1:]) for name, v in values.items()}

    def consumers(self) -> dict[str, list[str]]:
        """For each node, the names of the nodes that read it (in topological order)."""
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for inp in node.inputs:
                out[inp].append(node.name)
        return out

    def ancestors(self, name: str) -> set[str]:
        """Names of the nodes ``name`` depends on, including itself."""
        by_name = {n.name: n for n in self.nodes}
        todo, seen = [name], {name}
        while todo:
            for inp in by_name[todo.pop()].inputs:
                if inp not in seen:
                    seen.add(inp)
                    todo.append(inp)
        return seen

    def __repr__(self) -> str:
        head = f", stripped={self.stripped!r}" if self.stripped else ""
        lines = [f"Graph(input_shape={self.input_shape}, output={self.output!r}{head})"]
        for n in self.nodes:
            attrs = {k: v for k, v in n.params.items() if not isinstance(v, Tensor)}
            tensors = {k: tuple(v.shape) for k, v in n.params.items() if isinstance(v, Tensor)}
            lines.append(f"  {n.name} = {n.op}({', '.join(n.inputs)}) {attrs or ''}{tensors or ''}")
        return "\n".join(lines)


class GraphNet(nn.Module):
    """A ``torch.nn.Module`` that runs a :class:`Graph` (what :func:`load_onnx` returns).

    It has no trainable parameters; ``forward`` evaluates the graph in the input's dtype (with the
    stripped last op re-applied, so it reproduces the source model), so gradients with respect to the
    input work (attacks) and every robustcert method accepts it. Bound methods use ``self.ir``.
    """

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.ir = graph

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.ir.input_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.ir.model_forward(x)

    def extra_repr(self) -> str:
        return f"input_shape={self.ir.input_shape}, nodes={len(self.ir.nodes)}"
