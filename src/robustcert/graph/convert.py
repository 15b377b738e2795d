"""``to_graph``: the one entry point every bound method uses to get a :class:`Graph` from its argument."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from robustcert.errors import RobustCertError
from robustcert.graph.fx_frontend import graph_from_module
from robustcert.graph.ir import Graph, GraphNet


@dataclass
class _Held:
    """A tensor the module held when its live graph was built: its identity (weakly), storage, layout, and
    — when the graph does not share its storage (it holds a value derived from it, or does not use
    it) — its in-place version counter."""

    name: str
    ref: weakref.ref[Tensor]
    data_ptr: int
    layout: tuple[torch.dtype, tuple[int, ...], torch.device]
    version: int | None

    @staticmethod
    def of(name: str, t: Tensor, shared: set[int]) -> _Held:
        version = None if _storage(t) in shared else t._version
        return _Held(name, weakref.ref(t), t.data_ptr(), _layout(t), version)

    def still(self, name: str, t: Tensor) -> bool:
        return (
            name == self.name
            and self.ref() is t
            and t.data_ptr() == self.data_ptr
            and _layout(t) == self.layout
            and (self.version is None or t._version == self.version)
        )


@dataclass
class _LiveEntry:
    input_shape: tuple[int, ...]
    modes: tuple[bool, ...]
    held: list[_Held]
    graph: Graph

    def matches(self, input_shape: tuple[int, ...], model: nn.Module) -> bool:
        if input_shape != self.input_shape or _modes(model) != self.modes:
            return False
        current = _module_tensors(model)
        return len(current) == len(self.held) and all(
            h.still(name, t) for h, (name, t) in zip(self.held, current, strict=True)
        )


# Live (training) graphs are cached per module: tracing every training step would be wasteful. See
# to_graph for when an entry is reused; the module is held weakly, so the cache never keeps it alive.
_LIVE_CACHE: weakref.WeakKeyDictionary[nn.Module, _LiveEntry] = weakref.WeakKeyDictionary()


def _layout(t: Tensor) -> tuple[torch.dtype, tuple[int, ...], torch.device]:
    return t.dtype, tuple(t.shape), t.device


def _storage(t: Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def _modes(model: nn.Module) -> tuple[bool, ...]:
    return tuple(m.training for m in model.modules())


def _graph_tensors(graph: Graph, prefix: str) -> list[tuple[str, Tensor]]:
    return [
        (f"{prefix}:{node.name}.{k}", t)
        for node in graph.nodes
        for k, t in node.params.items()
        if isinstance(t, Tensor)
    ]


def _module_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """Every tensor a trace can read: parameters, buffers and tensor attributes of every module, and the
    params of an inlined GraphNet's graph."""
    out: list[tuple[str, Tensor]] = []
    for prefix, mod in model.named_modules(remove_duplicate=False):
        out.extend((f"{prefix}:p:{k}", t) for k, t in mod.named_parameters(recurse=False))
        out.extend((f"{prefix}:b:{k}", t) for k, t in mod.named_buffers(recurse=False))
        out.extend((f"{prefix}:a:{k}", t) for k, t in vars(mod).items() if isinstance(t, Tensor))
        if isinstance(mod, GraphNet):
            out.extend(_graph_tensors(mod.ir, f"{prefix}:ir"))
    return out


def _live_graph(model: nn.Module, shape: tuple[int, ...]) -> Graph:
    hit = _LIVE_CACHE.get(model)
    if hit is not None and hit.matches(shape, model):
        return hit.graph
    graph = graph_from_module(model, shape, live=True)
    shared = {_storage(t) for _, t in _graph_tensors(graph, "")}
    held = [_Held.of(name, t, shared) for name, t in _module_tensors(model)]
    _LIVE_CACHE[model] = _LiveEntry(shape, _modes(model), held, graph)
    return graph


def to_graph(
    model_or_graph: nn.Module | Graph, input_shape: Sequence[int] | None = None, *, live: bool = False
) -> Graph:
    """Return the :class:`Graph` of a module, a :class:`GraphNet` (from ``load_onnx``) or a Graph.

    ``input_shape`` (per example, no batch dim) is required for a plain module and checked against a
    graph's own. ``live=True`` gives a graph whose params are the module's own tensors (differentiable,
    for certified training); such graphs are cached per module. A cached graph is returned only if the
    input shape and every module's mode are unchanged and every parameter, buffer and tensor attribute
    of every submodule is the very same tensor object (checked through a weak reference, so a new
    tensor that Python happens to give a dead one's ``id`` is never mistaken for it) still on the same
    storage (``data_ptr``), dtype, shape and device. In-place updates (optimizer steps) keep the graph
    when it holds those tensors or views of their storage (it sees them); a tensor whose storage the
    graph does not share (it holds a value derived from it) must also keep its in-place version
    counter. Anything else rebuilds the graph. Raises RobustCertError for anything else.
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
    return _live_graph(model_or_graph, shape)
