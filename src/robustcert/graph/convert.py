"""``to_graph``: the one entry point every bound method uses to get a :class:`Graph` from its argument."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from torch import nn

from robustcert.errors import RobustCertError
from robustcert.graph.fx_frontend import graph_from_module
from robustcert.graph.ir import Graph, GraphNet

# live (training) graphs are cached per module: tracing every training step would be wasteful.
_LIVE_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, Graph]] = weakref.WeakKeyDictionary()


def to_graph(
    model_or_graph: nn.Module | Graph, input_shape: Sequence[int] | None = None, *, live: bool = False
) -> Graph:
    """Return the :class:`Graph` of a module, a :class:`GraphNet` (from ``load_onnx``) or a Graph.

    ``input_shape`` (per example, no batch dim) is required for a plain module and checked against a
    graph's own. ``live=True`` gives a graph whose params are the module's own tensors (differentiable,
    for certified training); such graphs are cached per module and rebuilt when the module's tensors
    or mode change. Raises RobustCertError for anything else.
    """
    if isinstance(model_or_graph, GraphNet):
        model_or_graph = model_or_graph.ir
    if isinstance(model_or_graph, Graph):
        if input_shape is not None and tuple(int(s) for s in input_shape) != model_or_graph.input_shape:
            raise RobustCertError(
                f"input of per-example shape {tuple(input_shape)} does not match the model's input shape "
                f"{model_or_graph.input_shape}; pass inputs shaped [batch, {', '.join(map(str, model_or_graph.input_shape))}]"
            )
        return model_or_graph
    if not isinstance(model_or_graph, nn.Module):
        raise RobustCertError(
            f"expected a torch.nn.Module or a robustcert Graph, got {type(model_or_graph).__name__}"
        )
    if input_shape is None:
        raise RobustCertError("input_shape is needed to convert a torch module into a graph")
    shape = tuple(int(s) for s in input_shape)
    if not live:
        return graph_from_module(model_or_graph, shape)
    key = (
        shape,
        tuple((id(t), t.dtype, tuple(t.shape)) for t in model_or_graph.state_dict(keep_vars=True).values()),
        tuple(m.training for m in model_or_graph.modules()),
    )
    hit = _LIVE_CACHE.get(model_or_graph)
    if hit is not None and hit[0] == key:
        return hit[1]
    graph = graph_from_module(model_or_graph, shape, live=True)
    _LIVE_CACHE[model_or_graph] = (key, graph)
    return graph
