"""ONNX model -> graph IR, with the ``onnx`` package only (no onnxruntime, no onnx2torch).

Nodes whose inputs are all constants (initializers, ``Constant``, ``Shape`` of a tensor of known shape,
``Gather``/``Unsqueeze``/``Concat``... as emitted for ``x.view(x.size(0), -1)``) are folded. Every node that
depends on the graph input must map to an op of :data:`robustcert.graph.ops.OPS`; any other op raises
:class:`RobustCertError` naming the ONNX node, its op type and the supported ops. Shapes are followed
on an example input so reshapes get their per-example target shape. The exact GELU written out as
``0.5 x (1 + erf(x / c))`` (what exporters emit below opset 20) becomes one gelu node keeping the stored
``c``; a Softmax/LogSoftmax over the classes that produces the model's output is stripped (recorded in
``Graph.stripped`` and ``Graph.notes``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import Tensor

from robustcert.errors import RobustCertError
from robustcert.graph._builder import Builder
from robustcert.graph.ir import Graph, GraphNet
from robustcert.graph.ops import OPS, supported_ops_text
from robustcert.seeding import torch_generator


def load_onnx(path: str | os.PathLike[str] | onnx.ModelProto) -> GraphNet:
    """Load an ONNX file as a ``torch.nn.Module`` that runs its graph; every robustcert method accepts it.

    Raises RobustCertError for a missing/invalid file or an unsupported op (naming the node and type).
    """
    return GraphNet(graph_from_onnx(path))


def _load(path_or_proto: Any) -> onnx.ModelProto:
    if isinstance(path_or_proto, onnx.ModelProto):
        return path_or_proto
    if isinstance(path_or_proto, (str, os.PathLike)):
        if not os.path.isfile(path_or_proto):
            raise RobustCertError(f"ONNX file {os.fspath(path_or_proto)!r} does not exist; check the path")
        try:
            return onnx.load(os.fspath(path_or_proto))
        except Exception as exc:
            raise RobustCertError(f"could not read ONNX file {os.fspath(path_or_proto)!r}: {exc}") from exc
    raise RobustCertError(
        f"expected an ONNX file path or onnx.ModelProto, got {type(path_or_proto).__name__}"
    )


def _to_tensor(a: Any) -> Tensor:
    arr = np.asarray(a)
    if arr.dtype.kind == "f":
        return torch.from_numpy(arr.astype(np.float64, copy=True))
    if arr.dtype.kind in "iub":
        return torch.from_numpy(arr.astype(np.int64, copy=True))
    raise RobustCertError(f"ONNX constant of dtype {arr.dtype} is not supported")


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else "?")


def _unsupported(node: onnx.NodeProto, why: str = "") -> RobustCertError:
    extra = f" ({why})" if why else ""
    return RobustCertError(
        f"unsupported op at ONNX node {_node_label(node)!r} (type ONNX {node.op_type}){extra}; "
        f"{supported_ops_text('onnx')}"
    )


def _refuser(node: onnx.NodeProto) -> Callable[[str], RobustCertError]:
    """``why -> the unsupported-op error of node`` (for checks made by shared helpers)."""
    return lambda why: _unsupported(node, why)


def _int_list(v: Tensor | Sequence[int]) -> list[int]:
    if isinstance(v, Tensor):
        return [int(i) for i in v.flatten().tolist()]
    return [int(i) for i in v]


def _arg(node: onnx.NodeProto, ins: Sequence[Tensor | None], i: int) -> Tensor:
    """Input ``i`` of a node, which must be given."""
    t = ins[i] if i < len(ins) else None
    if t is None:
        raise _unsupported(node, f"input {i} is missing")
    return t


_BINARY: dict[str, Callable[..., Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
}


def _fold(node: onnx.NodeProto, ins: list[Tensor | None], at: dict[str, Any]) -> list[Tensor]:
    """Evaluate a node whose inputs are all constants."""
    op = node.op_type
    if op == "Constant":
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in at:
                return [_to_tensor(at[key])]
        raise _unsupported(node, "Constant without a numeric value")
    if op == "Concat":
        return [torch.cat([t.reshape(t.shape or (1,)) for t in ins if t is not None], dim=int(at["axis"]))]
    x = _arg(node, ins, 0)
    if op in {"Identity", "Dropout"}:
        return [x]
    if op == "Cast":
        np_dtype = helper.tensor_dtype_to_np_dtype(at["to"])
        return [_to_tensor(x.numpy().astype(np_dtype))]
    if op == "Shape":
        return [torch.tensor(list(x.shape), dtype=torch.int64)]
    if op == "Gather":
        axis = int(at.get("axis", 0))
        idx = _arg(node, ins, 1)
        axis = axis % x.ndim
        out = torch.index_select(x, axis, (idx.flatten() % x.shape[axis]).long())
        return [out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])]
    if op in {"Unsqueeze", "Squeeze"}:
        axes = _int_list(ins[1]) if len(ins) > 1 and ins[1] is not None else list(at.get("axes", []))
        if op == "Unsqueeze":
            ndim = x.ndim + len(axes)
            for a in sorted(a % ndim for a in axes):
                x = x.unsqueeze(a)
            return [x]
        if not axes:
            return [x.squeeze()]
        for a in sorted((a % x.ndim for a in axes), reverse=True):
            x = x.squeeze(a)
        return [x]
    if op == "Reshape":
        return [
            x.reshape(_reshape_target(x.shape, _int_list(_arg(node, ins, 1)), bool(at.get("allowzero", 0))))
        ]
    if op in _BINARY:
        a, b = x, _arg(node, ins, 1)
        if op == "Div" and not (a.is_floating_point() or b.is_floating_point()):
            return [torch.div(a, b, rounding_mode="trunc")]
        return [_BINARY[op](a, b)]
    if op == "Neg":
        return [-x]
    if op == "Sqrt":
        return [torch.sqrt(x)]
    if op == "Reciprocal":
        return [1.0 / x]
    if op == "Transpose":
        perm = list(at.get("perm", reversed(range(x.ndim))))
        return [x.permute(perm)]
    if op == "ConstantOfShape":
        value = _to_tensor(at.get("value", np.zeros(1, dtype=np.float32))).flatten()[0]
        return [torch.full(_int_list(x), value.item(), dtype=value.dtype)]
    if op == "Slice":
        starts, ends = _int_list(_arg(node, ins, 1)), _int_list(_arg(node, ins, 2))
        axes = _int_list(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
        steps = _int_list(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            if st == 0:
                raise _unsupported(node, "slice step 0")
            # ONNX clamps like Python's slice.indices (for either step sign): take those positions
            ax = a % x.ndim
            keep = torch.tensor(list(range(*slice(s, e, st).indices(x.shape[ax]))), dtype=torch.int64)
            x = torch.index_select(x, ax, keep)
        return [x]
    raise _unsupported(node, "not supported on constants")


def _static_values(g: onnx.GraphProto, consts: dict[str, Tensor]) -> dict[str, Tensor]:
    """Initializers and the values of ``Constant`` nodes (known before the main pass)."""
    out = dict(consts)
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            try:
                out[node.output[0]] = _fold(node, [], _attrs(node))[0]
            except RobustCertError:
                continue
    return out


def _gelu_patterns(
    g: onnx.GraphProto, static: dict[str, Tensor]
) -> dict[int, tuple[str, float, frozenset[int]]]:
    """Find ``0.5 * x * (1 + erf(x / c))`` written out with Div (or Mul by 1/c), Erf, Add and two Muls,
    in any of the usual orders, whose intermediate values have no other reader.

    Returns ``{index of the last node: (x, c, indices of the other nodes of the pattern)}``; c > 0."""
    nodes = list(g.node)
    producer: dict[str, int] = {o: i for i, nd in enumerate(nodes) for o in nd.output if o}
    readers: dict[str, list[int]] = {}
    for i, nd in enumerate(nodes):
        for name in nd.input:
            readers.setdefault(name, []).append(i)
    for out in g.output:
        readers.setdefault(out.name, []).append(-1)

    def scalar(name: str) -> float | None:
        t = static.get(name)
        return float(t.flatten()[0]) if t is not None and t.numel() == 1 else None

    def only(value: str, op_type: str) -> int | None:
        r = readers.get(value, [])
        return r[0] if len(r) == 1 and r[0] >= 0 and nodes[r[0]].op_type == op_type else None

    def other(i: int, value: str) -> str | None:
        ins = list(nodes[i].input)
        if len(ins) != 2 or ins.count(value) != 1:
            return None
        return ins[1 - ins.index(value)]

    found: dict[int, tuple[str, float, frozenset[int]]] = {}
    for ei, erf in enumerate(nodes):
        if erf.op_type != "Erf" or len(erf.input) != 1 or erf.input[0] not in producer:
            continue
        pi = producer[erf.input[0]]
        pre = nodes[pi]
        if only(erf.input[0], "Erf") != ei or len(pre.input) != 2:
            continue
        c: float | None = None
        x = ""
        if pre.op_type == "Div" and scalar(pre.input[1]) is not None:
            x, c = pre.input[0], scalar(pre.input[1])
        elif pre.op_type == "Mul":
            for k in (0, 1):
                m = scalar(pre.input[k])
                if m is not None and m != 0.0:
                    x, c = pre.input[1 - k], 1.0 / m
                    break
        if c is None or not c > 0 or not np.isfinite(c):
            continue
        ai = only(erf.output[0], "Add")
        if ai is None or scalar(other(ai, erf.output[0]) or "") != 1.0:
            continue
        a_out = nodes[ai].output[0]
        mi = only(a_out, "Mul")
        if mi is None:
            continue
        o = other(mi, a_out)
        if o is None:
            continue
        m_out = nodes[mi].output[0]
        if o == x:  # (x * (1 + erf)) * 0.5
            hi = only(m_out, "Mul")
            if hi is not None and scalar(other(hi, m_out) or "") == 0.5:
                found[hi] = (x, c, frozenset({pi, ei, ai, mi}))
        elif scalar(o) == 0.5:  # ((1 + erf) * 0.5) * x
            hi = only(m_out, "Mul")
            if hi is not None and other(hi, m_out) == x:
                found[hi] = (x, c, frozenset({pi, ei, ai, mi}))
        elif o in producer:  # (x * 0.5) * (1 + erf)
            hi = producer[o]
            if only(o, "Mul") == mi and nodes[hi].op_type == "Mul" and scalar(other(hi, x) or "") == 0.5:
                found[mi] = (x, c, frozenset({pi, ei, ai, hi}))
    return found


def _reshape_target(shape: Sequence[int], target: list[int], allowzero: bool) -> list[int]:
    out = [int(shape[i]) if (t == 0 and not allowzero) else t for i, t in enumerate(target)]
    return out


def _symmetric_pads(node: onnx.NodeProto, pads: Sequence[int]) -> tuple[int, int]:
    pads = list(pads) or [0, 0, 0, 0]
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise _unsupported(node, f"pads {pads} are not symmetric 2-D pads")
    return int(pads[0]), int(pads[1])


def _auto_pad(
    node: onnx.NodeProto, at: dict[str, Any], kernel: Sequence[int], dil: Sequence[int]
) -> list[int] | None:
    mode = at.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        return None
    if mode == "VALID":
        return [0, 0, 0, 0]
    strides = list(at.get("strides", [1, 1]))
    total = [d * (k - 1) for d, k in zip(dil, kernel, strict=True)]
    if all(s == 1 for s in strides) and all(t % 2 == 0 for t in total):
        return [total[0] // 2, total[1] // 2, total[0] // 2, total[1] // 2]
    raise _unsupported(node, f"auto_pad={mode} gives asymmetric padding here")


def graph_from_onnx(
    path_or_proto: str | os.PathLike[str] | onnx.ModelProto, input_shape: Sequence[int] | None = None
) -> Graph:
    """Convert an ONNX model (file path or ``ModelProto``) into a :class:`Graph` with float64 weights.

    The model must have one input whose first dimension is the batch; its per-example shape is read
    from the model (or given as ``input_shape`` when the model leaves it symbolic). Raises
    RobustCertError for an unsupported op (naming the node and its ONNX type) or a malformed model.
    """
    proto = _load(path_or_proto)
    g = proto.graph
    consts: dict[str, Tensor] = {init.name: _to_tensor(numpy_helper.to_array(init)) for init in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise RobustCertError(f"the ONNX model must have exactly one input, it has {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 0
    if input_shape is None:
        if len(dims) < 2 or not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims[1:]):
            raise RobustCertError(
                "the ONNX input's per-example shape is not fixed in the model; pass input_shape=(C, H, W)"
            )
        shape = tuple(int(d.dim_value) for d in dims[1:])
    else:
        shape = tuple(int(s) for s in input_shape)
    ex_batch = int(batch) if batch > 0 else 2
    example = torch.rand((ex_batch,) + shape, generator=torch_generator(0), dtype=torch.float64)
    b = Builder(proto, live=False)
    dyn: dict[str, str] = {inputs[0].name: b.add(_safe(inputs[0].name), "input", ())}
    ex: dict[str, Tensor] = {dyn[inputs[0].name]: example}  # example value of every IR node
    val: dict[str, Tensor] = {inputs[0].name: example}  # example value of every dynamic ONNX value
    used = {n for node in g.node for n in node.input} | {o.name for o in g.output}
    gelus = _gelu_patterns(g, _static_values(g, consts))
    in_gelu = {i: end for end, (_, _, parts) in gelus.items() for i in parts}
    for index, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx"):
            raise _unsupported(node, f"custom domain {node.domain!r}")
        at = _attrs(node)
        names = list(node.input)
        if index in in_gelu and gelus[in_gelu[index]][0] in dyn:
            continue  # inside a GELU pattern on an input-dependent x: emitted at its last node
        if index in gelus and gelus[index][0] in dyn:
            x_name, divisor, _ = gelus[index]
            b.use(x_name, _node_label(node), _refuser(node))
            ir = b.add(_safe(node.name or node.output[0]), "gelu", [dyn[x_name]], divisor=divisor)
            ex[ir] = OPS["gelu"].forward(b.nodes[-1], ex[dyn[x_name]])
            dyn[node.output[0]], val[node.output[0]] = ir, ex[ir]
            continue
        if not any(n in dyn for n in names):
            missing = [n for n in names if n and n not in consts]
            if missing:
                raise RobustCertError(f"ONNX node {_node_label(node)!r} reads unknown value {missing[0]!r}")
            outs = _fold(node, [consts[n] if n else None for n in names], at)
            for name, v in zip(node.output, outs, strict=False):
                consts[name] = v
            continue
        if node.op_type == "Shape":
            consts[node.output[0]] = torch.tensor(list(val[names[0]].shape), dtype=torch.int64)
            continue
        for name in names:
            if name in dyn:
                b.use(name, _node_label(node), _refuser(node))
        if node.op_type in ("Softmax", "LogSoftmax"):
            _softmax_head(b, node, at, names, dyn, val)
            continue
        n_before = len(b.nodes)
        ir_name = _convert(b, node, at, names, dyn, val, consts)
        for new in b.nodes[n_before:]:
            ex[new.name] = OPS[new.op].forward(new, *(ex[i] for i in new.inputs))
        dyn[node.output[0]] = ir_name
        val[node.output[0]] = ex[ir_name]
        for extra in node.output[1:]:
            if extra and extra in used:
                raise _unsupported(node, f"its output {extra!r} is used")
    if len(g.output) != 1:
        raise RobustCertError(f"the ONNX model must have exactly one output, it has {len(g.output)}")
    out_name = g.output[0].name
    if out_name not in dyn:
        raise RobustCertError("the ONNX model's output does not depend on its input")
    stripped, notes = b.strip(out_name)
    return Graph(b.nodes, dyn[out_name], shape, stripped, notes)


def _softmax_head(
    b: Builder,
    node: onnx.NodeProto,
    at: dict[str, Any],
    names: list[str],
    dyn: dict[str, str],
    val: dict[str, Tensor],
) -> None:
    """Softmax / LogSoftmax over the classes of [batch, classes] logits: an alias of its input, recorded
    as a head that is stripped if it is the model's output (and refused anywhere else)."""
    if not names or names[0] not in dyn:
        raise _unsupported(node, "its input must be the input-dependent tensor")
    v = val[names[0]]
    axis = int(at.get("axis", -1))
    if v.ndim != 2 or axis % 2 != 1:
        raise _unsupported(
            node, f"axis {axis} of a {v.ndim}-D tensor; only over the classes of [batch, classes]"
        )
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    b.head(node.output[0], op, _node_label(node))
    dyn[node.output[0]], val[node.output[0]] = dyn[names[0]], v


def _safe(name: str) -> str:
    return name or "input"


def _convert(
    b: Builder,
    node: onnx.NodeProto,
    at: dict[str, Any],
    names: list[str],
    dyn: dict[str, str],
    val: dict[str, Tensor],
    consts: dict[str, Tensor],
) -> str:
    op = node.op_type
    label = _safe(node.name or node.output[0])

    def const(i: int) -> Tensor | None:
        if i >= len(names) or not names[i]:
            return None
        if names[i] in dyn:
            raise _unsupported(node, f"input {i} ({names[i]!r}) must be a constant")
        return consts[names[i]]

    def need(i: int) -> Tensor:
        t = const(i)
        if t is None:
            raise _unsupported(node, f"input {i} is missing")
        return t

    def first_dyn() -> str:
        if names[0] not in dyn:
            raise _unsupported(node, "its first input must be the input-dependent tensor")
        return dyn[names[0]]

    if op in {"Relu", "Sigmoid", "Tanh"}:
        return b.add(label, op.lower(), [first_dyn()])
    if op == "LeakyRelu":
        return b.add(label, "leaky_relu", [first_dyn()], negative_slope=float(at.get("alpha", 0.01)))
    if op == "Gelu":
        if at.get("approximate", "none") != "none":
            raise _unsupported(
                node, f"approximate={at['approximate']!r}; only the exact (erf) GELU is supported"
            )
        return b.add(label, "gelu", [first_dyn()], divisor=None)
    if op == "Erf":
        raise _unsupported(node, "Erf is supported only inside the GELU pattern 0.5 * x * (1 + erf(x / c))")
    if op in {"MaxPool", "GlobalMaxPool"}:
        return _maxpool(b, node, label, at, first_dyn(), tuple(val[names[0]].shape[1:]))
    if op == "Pad":
        return _pad(b, node, label, at, first_dyn(), val[names[0]].ndim, const)
    if op == "Concat":
        if not all(n in dyn for n in names if n):
            raise _unsupported(node, "every input must depend on the graph input (no constant parts)")
        rank = val[names[0]].ndim
        axis = int(at["axis"]) % rank
        if axis == 0:
            raise _unsupported(node, "concatenation along the batch axis")
        return b.add(label, "concat", [dyn[n] for n in names if n], dim=axis - 1)
    if op == "Transpose":
        x = first_dyn()
        rank = val[names[0]].ndim
        perm = [int(p) % rank for p in at.get("perm", list(reversed(range(rank))))]
        if sorted(perm) != list(range(rank)) or perm[0] != 0:
            raise _unsupported(node, f"perm {perm} moves the batch axis")
        if perm == list(range(rank)):
            return x
        return b.add(label, "permute", [x], perm=tuple(p - 1 for p in perm[1:]))
    if op == "Slice":
        return _slice(b, node, label, at, first_dyn(), tuple(val[names[0]].shape), const, need)
    if op == "Gather":
        # constant indices on a non-batch axis: the same Gather applied to the map of flat positions
        x = first_dyn()
        rank = val[names[0]].ndim
        if int(at.get("axis", 0)) % rank == 0:
            raise _unsupported(node, "gathering along the batch axis")
        per = tuple(val[names[0]].shape[1:])
        positions = torch.arange(int(np.prod(per)), dtype=torch.int64).reshape((1,) + per)
        index = _fold(node, [positions, need(1)], at)[0][0]
        return b.add(label, "gather", [x], index=index.contiguous())
    if op in {"Identity"}:
        return first_dyn()
    if op == "Dropout":
        mode = const(2)
        if mode is not None and bool(mode.flatten()[0]):
            raise _unsupported(node, "training_mode=True")
        return first_dyn()
    if op == "Gemm":
        x = first_dyn()
        if int(at.get("transA", 0)):
            raise _unsupported(node, "transA=1")
        w = need(1)
        w = w if int(at.get("transB", 0)) else w.T
        w = w * float(at.get("alpha", 1.0))
        c = const(2)
        bias: Tensor | None = None
        if c is not None:
            bias = (torch.broadcast_to(c, (w.shape[0],)) if c.ndim <= 1 else c.reshape(-1)) * float(
                at.get("beta", 1.0)
            )
            if bias.shape != (w.shape[0],):
                raise _unsupported(node, f"bias of shape {tuple(c.shape)}")
        return b.add(label, "linear", [x], weight=b.tensor(w.contiguous()), bias=b.tensor(bias))
    if op == "MatMul":
        x = first_dyn()
        mat = const(1)
        if mat is None or mat.ndim != 2:
            raise _unsupported(node, "the second operand must be a constant matrix")
        return b.add(label, "linear", [x], weight=b.tensor(mat.T.contiguous()), bias=None)
    if op in {"Add", "Sub", "Mul", "Div"}:
        return _arith(b, node, label, op, names, dyn, val, consts)
    if op == "Neg":
        shape = tuple(val[names[0]].shape[1:])
        return b.add(label, "mul_const", [first_dyn()], value=b.const_value(-1.0, shape, label))
    if op == "Conv":
        x = first_dyn()
        kernel_w = const(1)
        if kernel_w is None or kernel_w.ndim != 4:
            raise _unsupported(node, "only 2-D convolutions are supported")
        dil = list(at.get("dilations", [1, 1]))
        auto_pads = _auto_pad(node, at, list(kernel_w.shape[2:]), dil)
        conv_pads = auto_pads if auto_pads is not None else list(at.get("pads", [0, 0, 0, 0]))
        return b.add(
            label,
            "conv2d",
            [x],
            weight=b.tensor(kernel_w),
            bias=b.tensor(const(2)),
            stride=tuple(int(s) for s in at.get("strides", [1, 1])),
            padding=_symmetric_pads(node, conv_pads),
            dilation=(int(dil[0]), int(dil[1])),
            groups=int(at.get("group", 1)),
        )
    if op == "BatchNormalization":
        x = first_dyn()
        if int(at.get("training_mode", 0)):
            raise _unsupported(node, "training_mode=1; export the model in eval mode")
        return b.add(
            label,
            "batchnorm",
            [x],
            weight=b.tensor(const(1)),
            bias=b.tensor(const(2)),
            running_mean=b.tensor(const(3)),
            running_var=b.tensor(const(4)),
            eps=float(at.get("epsilon", 1e-5)),
        )
    if op in {"AveragePool", "GlobalAveragePool"}:
        x = first_dyn()
        kernel: tuple[int, ...]
        strides: tuple[int, ...]
        pads: tuple[int, int]
        if op == "GlobalAveragePool":
            kernel = tuple(int(s) for s in val[names[0]].shape[2:])
            if len(kernel) != 2:
                raise _unsupported(node, "only 2-D pooling is supported")
            pads, strides, cip, ceil = (0, 0), kernel, True, False
        else:
            kernel = tuple(int(k) for k in at["kernel_shape"])
            if len(kernel) != 2:
                raise _unsupported(node, "only 2-D pooling is supported")
            if at.get("dilations") and any(int(d) != 1 for d in at["dilations"]):
                raise _unsupported(node, "dilated pooling")
            auto = _auto_pad(node, at, kernel, [1, 1])
            pads = _symmetric_pads(node, auto if auto is not None else at.get("pads", [0, 0, 0, 0]))
            strides = tuple(int(s) for s in at.get("strides", [1, 1]))
            cip, ceil = bool(at.get("count_include_pad", 0)), bool(at.get("ceil_mode", 0))
        return b.add(
            label,
            "avgpool2d",
            [x],
            kernel_size=kernel,
            stride=strides,
            padding=pads,
            ceil_mode=ceil,
            count_include_pad=cip,
            divisor_override=None,
        )
    if op in {"Flatten", "Reshape", "Squeeze", "Unsqueeze"}:
        x = first_dyn()
        before = val[names[0]]
        if op == "Flatten":
            axis = int(at.get("axis", 1)) % max(before.ndim, 1)
            after_shape = [int(np.prod(before.shape[:axis]))] + [int(np.prod(before.shape[axis:]))]
        elif op == "Reshape":
            after_shape = list(
                before.reshape(
                    _reshape_target(before.shape, _int_list(need(1)), bool(at.get("allowzero", 0)))
                ).shape
            )
        else:
            ins = [before] + [consts.get(n) if n else None for n in names[1:]]
            after_shape = list(_fold(node, ins, at)[0].shape)
        if not after_shape or after_shape[0] != before.shape[0]:
            raise _unsupported(node, "the reshape mixes the batch dimension with the others")
        per = tuple(after_shape[1:])
        if per == tuple(before.shape[1:]):
            return x
        if per == (int(np.prod(before.shape[1:])),):
            return b.add(label, "flatten", [x])
        return b.add(label, "reshape", [x], shape=per)
    raise _unsupported(node)


def _arith(
    b: Builder,
    node: onnx.NodeProto,
    label: str,
    op: str,
    names: list[str],
    dyn: dict[str, str],
    val: dict[str, Tensor],
    consts: dict[str, Tensor],
) -> str:
    a_dyn, c_dyn = names[0] in dyn, names[1] in dyn
    if a_dyn and c_dyn:
        if op not in {"Add", "Sub"}:
            raise _unsupported(node, "product or quotient of two input-dependent tensors is not affine")
        if val[names[0]].shape != val[names[1]].shape:
            raise _unsupported(node, "both operands must have the same shape")
        rhs = dyn[names[1]]
        if op == "Sub":
            shape = tuple(val[names[1]].shape[1:])
            rhs = b.add(f"{label}_neg", "mul_const", [rhs], value=b.const_value(-1.0, shape, label))
        return b.add(label, "add", [dyn[names[0]], rhs])
    src = names[0] if a_dyn else names[1]
    c = consts[names[1] if a_dyn else names[0]].to(torch.float64)
    before = val[src]
    try:
        grown = torch.broadcast_shapes(tuple(before.shape), tuple(c.shape)) != tuple(before.shape)
    except RuntimeError:
        grown = True
    if grown:
        raise _unsupported(
            node, f"broadcasting the constant {tuple(c.shape)} changes the shape {tuple(before.shape)}"
        )
    shape = tuple(before.shape[1:])
    value = b.const_value(c, shape, label)
    x = dyn[src]
    if op == "Add":
        return b.add(label, "add_const", [x], value=value)
    if op == "Sub":
        return b.add(label, "sub_const", [x], value=value, reverse=not a_dyn)
    if op == "Mul":
        return b.add(label, "mul_const", [x], value=value)
    if not a_dyn:
        raise _unsupported(node, "division by an input-dependent tensor is not affine")
    return b.add(label, "div_const", [x], value=value)


def _maxpool(
    b: Builder, node: onnx.NodeProto, label: str, at: dict[str, Any], x: str, in_shape: tuple[int, ...]
) -> str:
    if len(in_shape) != 3:
        raise _unsupported(node, "only 2-D pooling is supported")
    size = in_shape[1:]
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dil: tuple[int, ...]
    pads: tuple[int, ...]
    if node.op_type == "GlobalMaxPool":
        kernel, strides, dil, pads, ceil = size, size, (1, 1), (0, 0, 0, 0), False
    else:
        kernel = tuple(int(k) for k in at["kernel_shape"])
        if len(kernel) != 2:
            raise _unsupported(node, "only 2-D pooling is supported")
        strides = tuple(int(s) for s in at.get("strides", [1, 1]))
        dil = tuple(int(d) for d in at.get("dilations", [1, 1]))
        ceil = bool(at.get("ceil_mode", 0))
        mode = at.get("auto_pad", "NOTSET")
        if mode in ("NOTSET", ""):
            pads = tuple(int(p) for p in at.get("pads", [0, 0, 0, 0]))
        elif mode == "VALID":
            pads = (0, 0, 0, 0)
        elif mode in ("SAME_UPPER", "SAME_LOWER"):
            before, after = [], []
            for n, k, s, d in zip(size, kernel, strides, dil, strict=True):
                total = max(0, (-(-n // s) - 1) * s + d * (k - 1) + 1 - n)
                small = total // 2
                before.append(small if mode == "SAME_UPPER" else total - small)
                after.append(total - before[-1])
            pads = (before[0], before[1], after[0], after[1])
            ceil = False
        else:
            raise _unsupported(node, f"auto_pad={mode}")
        if len(pads) != 4:
            raise _unsupported(node, f"pads {pads}")
    return b.maxpool(
        label,
        x,
        in_shape,
        (int(kernel[0]), int(kernel[1])),
        (int(strides[0]), int(strides[1])),
        (pads[0], pads[1], pads[2], pads[3]),
        (int(dil[0]), int(dil[1])),
        ceil,
        lambda why: _unsupported(node, why),
    )


def _pad(
    b: Builder,
    node: onnx.NodeProto,
    label: str,
    at: dict[str, Any],
    x: str,
    rank: int,
    const: Callable[[int], Tensor | None],
) -> str:
    mode = at.get("mode", "constant")
    if mode != "constant":
        raise _unsupported(node, f"mode={mode!r}; only constant padding is supported")
    if "pads" in at:  # opset < 11: attributes
        amounts, value = [int(p) for p in at["pads"]], float(at.get("value", 0.0))
        axes = list(range(rank))
    else:
        given = const(1)
        if given is None:
            raise _unsupported(node, "the pads input is missing")
        amounts = _int_list(given)
        cv = const(2)
        value = float(cv.flatten()[0]) if cv is not None and cv.numel() else 0.0
        ax = const(3)
        axes = [int(a) % rank for a in _int_list(ax)] if ax is not None else list(range(rank))
    if len(amounts) != 2 * len(axes):
        raise _unsupported(node, f"{len(amounts)} pads for {len(axes)} axes")
    full = [(0, 0)] * rank
    for i, a in enumerate(axes):
        full[a] = (amounts[i], amounts[i + len(axes)])
    if full[0] != (0, 0):
        raise _unsupported(node, "padding the batch axis")
    if all(p == (0, 0) for p in full):
        return x
    return b.add(label, "pad", [x], pads=tuple(full[1:]), value=value)


def _slice(
    b: Builder,
    node: onnx.NodeProto,
    label: str,
    at: dict[str, Any],
    x: str,
    shape: tuple[int, ...],
    const: Callable[[int], Tensor | None],
    need: Callable[[int], Tensor],
) -> str:
    rank = len(shape)
    if "starts" in at:  # opset < 10: attributes
        starts, ends = [int(v) for v in at["starts"]], [int(v) for v in at["ends"]]
        axes = [int(v) for v in at.get("axes", range(len(starts)))]
        steps = [1] * len(starts)
    else:
        starts, ends = _int_list(need(1)), _int_list(need(2))
        ax, st = const(3), const(4)
        axes = _int_list(ax) if ax is not None else list(range(len(starts)))
        steps = _int_list(st) if st is not None else [1] * len(starts)
    slices = [(0, size, 1) for size in shape[1:]]
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        a = axis % rank
        if a == 0:
            raise _unsupported(node, "slicing the batch axis")
        if step <= 0:
            raise _unsupported(node, "slices need a positive step")
        lo, hi, _ = slice(start, end, step).indices(shape[a])
        if hi <= lo:
            raise _unsupported(node, "the slice is empty")
        slices[a - 1] = (lo, hi, step)
    if all(s == (0, size, 1) for s, size in zip(slices, shape[1:], strict=True)):
        return x
    return b.add(label, "slice", [x], slices=tuple(slices))
