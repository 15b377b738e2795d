"""ONNX model -> graph IR, with the ``onnx`` package only (no onnxruntime, no onnx2torch).

Nodes whose inputs are all constants (initializers, ``Constant``, ``Shape`` of a tensor of known shape,
``Gather``/``Unsqueeze``/``Concat``... as emitted for ``x.view(x.size(0), -1)``) are folded. Every node that
depends on the graph input must map to an op of :data:`robustcert.graph.ops.OPS`; any other op raises
:class:`RobustCertError` naming the ONNX node, its op type and the supported ops. Shapes are followed
on an example input so reshapes get their per-example target shape.
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
        index: list[Any] = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
            if st <= 0:
                raise _unsupported(node, "negative slice steps on constants")
            index[a % x.ndim] = slice(s, e, st)
        return [x[tuple(index)]]
    raise _unsupported(node, "not supported on constants")


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
    for node in g.node:
        if node.domain not in ("", "ai.onnx"):
            raise _unsupported(node, f"custom domain {node.domain!r}")
        at = _attrs(node)
        names = list(node.input)
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
    return Graph(b.nodes, dyn[out_name], shape)


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
