"""A model -> a small graph IR of ops (from PyTorch via torch.fx, from ONNX via the ``onnx`` package,
from ``torch.export`` programs and TorchScript files via their ATen graphs).

``OPS`` (in :mod:`robustcert.graph.ops`) is the one registry of supported ops. Front ends raise
:class:`~robustcert.errors.RobustCertError` naming the node, its type and the supported ops for anything
else.
"""

from robustcert.graph.convert import to_graph
from robustcert.graph.export_frontend import (
    graph_from_exported_program,
    graph_from_torchscript,
    load_exported,
)
from robustcert.graph.fx_frontend import graph_from_module
from robustcert.graph.ir import Graph, GraphNet, Node
from robustcert.graph.onnx_frontend import graph_from_onnx, load_onnx
from robustcert.graph.ops import OPS, OpSpec

__all__ = [
    "OPS",
    "Graph",
    "GraphNet",
    "Node",
    "OpSpec",
    "graph_from_exported_program",
    "graph_from_module",
    "graph_from_onnx",
    "graph_from_torchscript",
    "load_exported",
    "load_onnx",
    "to_graph",
]
