"""PyTorch module -> graph IR, through the public ``torch.fx`` symbolic tracer.

The traced fx graph is walked once together with an example input (batch 2), so every fx node has a
concrete value: nodes that do not depend on the input (``x.size(0)``, constant tensors, ...) are folded to
constants, and reshapes take their per-example shape from the example. Each input-dependent fx node
must map to an op of :data:`robustcert.graph.ops.OPS`; anything else raises :class:`RobustCertError`
naming the node, its type and the supported ops. A Softmax/LogSoftmax over the classes that is the
model's last op is stripped (recorded in ``Graph.stripped`` and ``Graph.notes``). The finished graph is
checked against the module on the example input.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from robustcert.errors import RobustCertError
from robustcert.graph._builder import Builder as _Builder
from robustcert.graph.ir import Graph, GraphNet
from robustcert.graph.ops import supported_ops_text
from robustcert.models.modes import eval_mode
from robustcert.models.normalize import Normalize
from robustcert.seeding import torch_generator

_EXAMPLE_BATCH = 2

_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide}
_NEG = {operator.neg, torch.neg}
_RELU = {torch.relu, F.relu}
_SIGMOID = {torch.sigmoid, F.sigmoid}
_TANH = {torch.tanh, F.tanh}
_RESHAPE = {torch.flatten, torch.reshape}
_IDENTITY = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, torch.clone}
_LEAKY = {F.leaky_relu, F.leaky_relu_}
_MAXPOOL = {F.max_pool2d, torch.max_pool2d}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_SOFTMAX = {F.softmax: "softmax", torch.softmax: "softmax", F.log_softmax: "log_softmax"}
_SOFTMAX |= {torch.log_softmax: "log_softmax"}
_TRANSPOSE = {torch.transpose, torch.swapaxes, torch.swapdims}
_METHOD_ARITH = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul"}
_METHOD_ARITH |= {"div": "div", "div_": "div", "neg": "neg"}
_METHOD_ACT = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_METHOD_RESHAPE = {"view", "reshape", "flatten"}
_METHOD_TRANSPOSE = {"transpose", "swapaxes", "swapdims"}
_METHOD_SOFTMAX = {"softmax": "softmax", "log_softmax": "log_softmax"}
_METHOD_IDENTITY = {"contiguous", "clone", "float", "double", "detach"}
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


class _Tracer(fx.Tracer):
    """Keeps robustcert's own modules (Normalize, GraphNet) as leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (Normalize, GraphNet)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _type_name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    if cls.__module__.startswith("torch.nn.modules"):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _function_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or ""
    mod = {"_operator": "operator", "torch._C._nn": "torch.nn.functional"}.get(mod, mod)
    name = getattr(fn, "__name__", repr(fn))
    return f"{mod}.{name}" if mod else name


def check_batchnorm_eval(model: nn.Module) -> None:
    """Raise RobustCertError when the model holds a BatchNorm layer in training mode."""
    for name, mod in model.named_modules():
        if isinstance(mod, _BatchNorm) and mod.training:
            raise RobustCertError(
                f"the model is in training mode and contains BatchNorm layer {name!r} "
                f"({_type_name(mod)}); call model.eval() before computing bounds"
            )


def _unsupported(fx_node: fx.Node, kind: str, why: str = "") -> RobustCertError:
    target = fx_node.target if isinstance(fx_node.target, str) else _function_name(fx_node.target)
    extra = f" ({why})" if why else ""
    return RobustCertError(
        f"unsupported op at node {fx_node.name!r} (target {target!r}, type {kind}){extra}; "
        f"{supported_ops_text('torch')}"
    )


def graph_from_module(model: nn.Module, input_shape: Sequence[int], *, live: bool = False) -> Graph:
    """Convert a PyTorch module into a :class:`Graph` via ``torch.fx``.

    ``input_shape`` is the per-example input shape (e.g. ``(1, 28, 28)``). With ``live=False`` (the
    default, used for certification) every weight is a detached float64 copy, so the graph computes the
    exact real-valued network of the stored weights up to float64 rounding. With ``live=True`` (certified
    training) the graph's params are the module's own tensors, so bounds are differentiable with respect
    to them. Raises RobustCertError for an unsupported op (naming the node and its type), for a model
    in training mode containing BatchNorm, or when the model cannot be run on ``input_shape``. Other
    modules are traced in eval mode and their modes are restored afterwards.
    """
    if isinstance(model, GraphNet):
        if tuple(input_shape) != model.ir.input_shape:
            raise RobustCertError(
                f"input shape {tuple(input_shape)} does not match the loaded graph's {model.ir.input_shape}"
            )
        return model.ir
    if not isinstance(model, nn.Module):
        raise RobustCertError(f"expected a torch.nn.Module, got {type(model).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) <= 0:
        raise RobustCertError(f"input_shape must be a tuple of positive sizes, got {tuple(input_shape)}")
    check_batchnorm_eval(model)
    with eval_mode(model):
        return _trace(model, shape, live)


def _example_input(model: nn.Module, shape: tuple[int, ...]) -> Tensor:
    ref = next((t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    gen = torch_generator(0)
    return torch.rand((_EXAMPLE_BATCH,) + shape, generator=gen).to(dtype=dtype, device=device)


def _trace(model: nn.Module, shape: tuple[int, ...], live: bool) -> Graph:
    try:
        fx_graph = _Tracer().trace(model)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, ...)
        raise RobustCertError(
            f"could not trace the model with torch.fx ({type(exc).__name__}: {exc}); models with "
            "input-dependent control flow are not supported — export to ONNX and use load_onnx instead"
        ) from exc
    example = _example_input(model, shape)
    b = _Builder(model, live)
    val: dict[fx.Node, Any] = {}
    dyn: dict[fx.Node, str] = {}
    output_name: str | None = None
    stripped: str | None = None
    notes: list[str] = []
    with torch.no_grad():
        for n in fx_graph.nodes:
            if n.op == "placeholder":
                if dyn:
                    raise RobustCertError(
                        f"the model takes more than one input (node {n.name!r}); not supported"
                    )
                val[n] = example
                dyn[n] = b.add(n.name, "input", ())
            elif n.op == "get_attr":
                val[n] = functools.reduce(getattr, str(n.target).split("."), model)
            elif n.op == "output":
                out = n.args[0]
                if not isinstance(out, fx.Node) or out not in dyn:
                    raise RobustCertError(
                        "the model must return one tensor that depends on its input "
                        f"(got {type(out).__name__}); multiple outputs are not supported"
                    )
                output_name = dyn[out]
                stripped, notes = b.strip(out.name)
            else:
                args = fx.node.map_arg(n.args, lambda a: val[a])
                kwargs = fx.node.map_arg(n.kwargs, lambda a: val[a])
                dyn_inputs = _dynamic_args(n, dyn)
                for d in dyn_inputs:
                    b.use(d.name, n.name, _refuser(n))
                try:
                    if n.op == "call_module":
                        val[n] = model.get_submodule(str(n.target))(*args, **kwargs)
                    elif n.op == "call_function":
                        val[n] = n.target(*args, **kwargs)  # type: ignore[operator]
                    else:
                        self_obj, *rest = args
                        val[n] = getattr(self_obj, str(n.target))(*rest, **kwargs)
                except Exception as exc:
                    raise RobustCertError(
                        f"the model failed on an input of shape [batch, {', '.join(map(str, shape))}] at node "
                        f"{n.name!r} ({type(exc).__name__}: {exc}); check the input shape"
                    ) from exc
                if not dyn_inputs:
                    continue  # a constant: folded
                name = _convert(b, n, args, kwargs, dyn_inputs, val, dyn)
                if name is not None:
                    dyn[n] = name
    assert output_name is not None
    graph = Graph(b.nodes, output_name, shape, stripped, notes)
    _check_matches(model, graph, example)
    return graph


def _refuser(n: fx.Node) -> Callable[[str], RobustCertError]:
    """``why -> the unsupported-op error of n`` (for checks made by shared helpers)."""
    return lambda why: _unsupported(n, _kind(n), why)


def _kind(n: fx.Node) -> str:
    """The type of an fx node for messages (module class, function or Tensor method)."""
    if n.op == "call_module" and n.graph.owning_module is not None:
        try:
            return _type_name(n.graph.owning_module.get_submodule(str(n.target)))
        except AttributeError:
            pass
    if n.op == "call_method":
        return f"Tensor.{n.target}"
    return _function_name(n.target)


def _dynamic_args(n: fx.Node, dyn: dict[fx.Node, str]) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((n.args, n.kwargs), lambda a: found.append(a) if a in dyn else None)
    return found


def _check_matches(model: nn.Module, graph: Graph, example: Tensor) -> None:
    with torch.no_grad():
        ref = model(example)
        got = graph.model_forward(example.to(torch.float64) if not graph_is_live(graph) else example)
    if not isinstance(ref, Tensor) or ref.shape != got.shape:
        raise RobustCertError("internal: the converted graph's output shape differs from the model's")
    scale = 1.0 + float(ref.abs().max())
    if not torch.allclose(got.to(ref.dtype), ref, rtol=1e-3, atol=1e-4 * scale):
        raise RobustCertError(
            "the converted graph does not reproduce the model's output (an op with hidden semantics?); "
            "please report this model, or export it to ONNX and use load_onnx"
        )


def graph_is_live(graph: Graph) -> bool:
    """True when the graph's params are not all float64 (a live training graph)."""
    return any(
        isinstance(p, Tensor) and p.is_floating_point() and p.dtype != torch.float64
        for n in graph.nodes
        for p in n.params.values()
    )


def _convert(
    b: _Builder,
    n: fx.Node,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dyn_inputs: list[fx.Node],
    val: dict[fx.Node, Any],
    dyn: dict[fx.Node, str],
) -> str | None:
    """Map one input-dependent fx node onto IR nodes; return the IR name holding its value."""
    out = val[n]
    if n.op == "call_module":
        mod = b.model.get_submodule(str(n.target))
        name = _convert_module(b, n, mod, args, dyn_inputs, val, dyn)
        if isinstance(mod, GraphNet) and mod.ir.stripped is not None:
            b.head(n.name, mod.ir.stripped, n.name)
        return name
    if n.op == "call_function":
        fn, kind = n.target, _function_name(n.target)
        first = n.args[0] if n.args else None
        if fn in _ADD | _SUB | _MUL | _DIV | _NEG:
            opname = (
                "add"
                if fn in _ADD
                else "sub"
                if fn in _SUB
                else "mul"
                if fn in _MUL
                else "div"
                if fn in _DIV
                else "neg"
            )
            return _arith(b, n, opname, n.args, kwargs, val, dyn, kind)
        if fn in _RELU | _SIGMOID | _TANH:
            op = "relu" if fn in _RELU else "sigmoid" if fn in _SIGMOID else "tanh"
            return _unary(b, n, op, first, dyn, kind)
        if fn in _RESHAPE:
            return _reshape(b, n, first, val, dyn, kind)
        if fn in _LEAKY:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            a = dict(zip(["input", "negative_slope"], args, strict=False)) | kwargs
            return _leaky(b, n, _alias(n, first, dyn, kind), a.get("negative_slope", 0.01))
        if fn is F.gelu:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            a = dict(zip(["input", "approximate"], args, strict=False)) | kwargs
            return _gelu(b, n, _alias(n, first, dyn, kind), a.get("approximate", "none"), kind)
        if fn in _MAXPOOL:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
            a = dict(zip(names, args, strict=False)) | kwargs
            if a.get("return_indices", False):
                raise _unsupported(n, kind, "return_indices=True")
            return _maxpool_node(
                b,
                n,
                _alias(n, first, dyn, kind),
                tuple(args[0].shape[1:]),
                a["kernel_size"],
                a.get("stride"),
                a.get("padding", 0),
                a.get("dilation", 1),
                a.get("ceil_mode", False),
                kind,
            )
        if fn is F.pad:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            a = dict(zip(["input", "pad", "mode", "value"], args, strict=False)) | kwargs
            if a.get("mode", "constant") != "constant":
                raise _unsupported(n, kind, f"mode={a.get('mode')!r}; only constant padding is supported")
            return _pad_node(b, n, _alias(n, first, dyn, kind), args[0], a["pad"], a.get("value"), kind)
        if fn in _CAT:
            a = dict(zip(["tensors", "dim"], args, strict=False)) | kwargs
            raw = n.args[0] if n.args else n.kwargs.get("tensors")
            return _concat(b, n, raw, a.get("dim", 0), val, dyn, kind)
        if fn in _SOFTMAX:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            a = dict(zip(["input", "dim"], args, strict=False)) | kwargs
            return _softmax(b, n, _SOFTMAX[fn], first, a.get("dim"), val, dyn, kind)
        if fn is torch.permute:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            a = dict(zip(["input", "dims"], args, strict=False)) | kwargs
            return _permute(b, n, first, list(a["dims"]), val, dyn, kind)
        if fn in _TRANSPOSE:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            a = _named(args, kwargs, ["input", "dim0", "dim1"], n, kind)
            return _transpose(b, n, first, a["dim0"], a["dim1"], val, dyn, kind)
        if fn is torch.narrow:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            a = _named(args, kwargs, ["input", "dim", "start", "length"], n, kind)
            return _narrow(b, n, first, a["dim"], a["start"], a["length"], val, dyn, kind)
        if fn is operator.getitem and isinstance(out, Tensor):
            _only_first_dynamic(n, dyn_inputs, first, kind)
            return _getitem(b, n, first, args[1], val, dyn, kind)
        if fn in _IDENTITY:
            default = fn not in (torch.clone, F.alpha_dropout)
            if kwargs.get("training", args[2] if len(args) > 2 else default):
                raise _unsupported(n, kind, "dropout with training=True")
            return _alias(n, first, dyn, kind)
        if fn is F.linear:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            _only_first_dynamic(n, dyn_inputs, first, kind)
            return b.add(
                n.name, "linear", [_alias(n, first, dyn, kind)], weight=b.tensor(w), bias=b.tensor(bias)
            )
        if fn is F.conv2d:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
            a = dict(zip(names, args, strict=False)) | kwargs
            w = a["weight"]
            padding = _conv_padding(
                n, a.get("padding", 0), tuple(w.shape[2:]), _pair(a.get("dilation", 1)), kind
            )
            return _conv_node(
                b,
                n.name,
                _alias(n, first, dyn, kind),
                w,
                a.get("bias"),
                a.get("stride", 1),
                padding,
                a.get("dilation", 1),
                a.get("groups", 1),
            )
        if fn is F.avg_pool2d:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            names = [
                "input",
                "kernel_size",
                "stride",
                "padding",
                "ceil_mode",
                "count_include_pad",
                "divisor_override",
            ]
            a = dict(zip(names, args, strict=False)) | kwargs
            return _avgpool_node(
                b,
                n.name,
                _alias(n, first, dyn, kind),
                a["kernel_size"],
                a.get("stride"),
                a.get("padding", 0),
                a.get("ceil_mode", False),
                a.get("count_include_pad", True),
                a.get("divisor_override"),
            )
        if fn is F.batch_norm:
            _only_first_dynamic(n, dyn_inputs, first, kind)
            names = ["input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"]
            a = dict(zip(names, args, strict=False)) | kwargs
            if a.get("training", False):
                raise RobustCertError(
                    f"node {n.name!r} calls batch_norm with training=True; call model.eval() before computing bounds"
                )
            return _bn_node(
                b,
                n.name,
                _alias(n, first, dyn, kind),
                a["running_mean"],
                a["running_var"],
                a.get("weight"),
                a.get("bias"),
                a.get("eps", 1e-5),
            )
        if fn is getattr and not isinstance(out, Tensor):
            return None  # x.shape and the like: constants already folded into val
        raise _unsupported(n, kind)
    # call_method
    method, kind = str(n.target), f"Tensor.{n.target}"
    self_node = n.args[0]
    if method in _METHOD_ARITH:
        return _arith(b, n, _METHOD_ARITH[method], n.args, kwargs, val, dyn, kind)
    if method in _METHOD_ACT:
        return _unary(b, n, _METHOD_ACT[method], self_node, dyn, kind)
    if method in _METHOD_RESHAPE:
        return _reshape(b, n, self_node, val, dyn, kind)
    if method in _METHOD_SOFTMAX:
        _only_first_dynamic(n, dyn_inputs, self_node, kind)
        a = dict(zip(["self", "dim"], args, strict=False)) | kwargs
        return _softmax(b, n, _METHOD_SOFTMAX[method], self_node, a.get("dim"), val, dyn, kind)
    if method == "permute":
        _only_first_dynamic(n, dyn_inputs, self_node, kind)
        rest = args[1:]
        dims = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else list(rest)
        return _permute(b, n, self_node, dims or list(kwargs.get("dims", [])), val, dyn, kind)
    if method in _METHOD_TRANSPOSE:
        _only_first_dynamic(n, dyn_inputs, self_node, kind)
        a = _named(args, kwargs, ["self", "dim0", "dim1"], n, kind)
        return _transpose(b, n, self_node, a["dim0"], a["dim1"], val, dyn, kind)
    if method == "narrow":
        _only_first_dynamic(n, dyn_inputs, self_node, kind)
        a = _named(args, kwargs, ["self", "dim", "start", "length"], n, kind)
        return _narrow(b, n, self_node, a["dim"], a["start"], a["length"], val, dyn, kind)
    if method in _METHOD_IDENTITY or (method == "to" and isinstance(out, Tensor) and out.is_floating_point()):
        return _alias(n, self_node, dyn, kind)
    if method in {"size", "dim"} and not isinstance(out, Tensor):
        return None
    raise _unsupported(n, kind)


def _named(
    args: tuple[Any, ...], kwargs: dict[str, Any], names: list[str], n: fx.Node, kind: str
) -> dict[str, Any]:
    """Positional and keyword arguments by name; every one of ``names`` must be given."""
    a = dict(zip(names, args, strict=False)) | kwargs
    missing = [k for k in names if k not in a]
    if missing:
        raise _unsupported(n, kind, f"argument {missing[0]!r} not given")
    return a


def _leaky(b: _Builder, n: fx.Node, x: str, slope: Any) -> str:
    return b.add(n.name, "leaky_relu", [x], negative_slope=float(slope))


def _gelu(b: _Builder, n: fx.Node, x: str, approximate: Any, kind: str) -> str:
    if approximate != "none":
        raise _unsupported(n, kind, f"approximate={approximate!r}; only the exact (erf) GELU is supported")
    return b.add(n.name, "gelu", [x], divisor=None)


def _maxpool_node(
    b: _Builder,
    n: fx.Node,
    x: str,
    in_shape: tuple[int, ...],
    kernel: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: Any,
    kind: str,
) -> str:
    k = _pair(kernel)
    st = k if stride is None or stride == [] or stride == () else _pair(stride)
    p = _pair(padding)
    return b.maxpool(
        n.name,
        x,
        in_shape,
        k,
        st,
        (p[0], p[1], p[0], p[1]),
        _pair(dilation),
        bool(ceil_mode),
        lambda why: _unsupported(n, kind, why),
    )


def _pad_node(b: _Builder, n: fx.Node, x: str, before: Tensor, pad: Any, value: Any, kind: str) -> str:
    amounts = [int(a) for a in pad]
    nd = before.ndim - 1
    if len(amounts) % 2 or len(amounts) // 2 > nd:
        raise _unsupported(n, kind, f"pad {tuple(amounts)} would pad the batch dimension")
    pads = [(0, 0)] * nd
    for i in range(len(amounts) // 2):
        pads[nd - 1 - i] = (amounts[2 * i], amounts[2 * i + 1])
    return b.add(n.name, "pad", [x], pads=tuple(pads), value=0.0 if value is None else float(value))


def _concat(
    b: _Builder, n: fx.Node, raw: Any, dim: Any, val: dict[fx.Node, Any], dyn: dict[fx.Node, str], kind: str
) -> str:
    parts = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    if not all(isinstance(p, fx.Node) and p in dyn for p in parts):
        raise _unsupported(n, kind, "every concatenated tensor must depend on the input (no constant parts)")
    ndim = val[n].ndim
    d = int(dim) % ndim
    if d == 0:
        raise _unsupported(n, kind, "concatenation along the batch dimension")
    return b.add(n.name, "concat", [dyn[p] for p in parts], dim=d - 1)


def _softmax(
    b: _Builder,
    n: fx.Node,
    op: str,
    src: Any,
    dim: Any,
    val: dict[fx.Node, Any],
    dyn: dict[fx.Node, str],
    kind: str,
) -> str:
    """Softmax / LogSoftmax over the classes of [batch, classes] logits: an alias of its input, recorded
    as a head that is stripped if it is the model's output (and refused anywhere else)."""
    x = _alias(n, src, dyn, kind)
    ndim = val[src].ndim
    if dim is None:  # torch's legacy implicit dim
        dim = 0 if ndim in (0, 1, 3) else 1
    if ndim != 2 or int(dim) % ndim != 1:
        raise _unsupported(
            n, kind, f"{op} over dim {dim} of a {ndim}-D tensor; only over the classes of [batch, classes]"
        )
    b.head(n.name, op, n.name)
    return x


def _permute(
    b: _Builder,
    n: fx.Node,
    src: Any,
    dims: list[Any],
    val: dict[fx.Node, Any],
    dyn: dict[fx.Node, str],
    kind: str,
) -> str:
    x = _alias(n, src, dyn, kind)
    ndim = val[src].ndim
    perm = [int(d) % ndim for d in dims]
    if sorted(perm) != list(range(ndim)) or perm[0] != 0:
        raise _unsupported(n, kind, f"permutation {tuple(dims)} moves the batch dimension")
    if perm == list(range(ndim)):
        return x
    return b.add(n.name, "permute", [x], perm=tuple(p - 1 for p in perm[1:]))


def _transpose(
    b: _Builder,
    n: fx.Node,
    src: Any,
    d0: Any,
    d1: Any,
    val: dict[fx.Node, Any],
    dyn: dict[fx.Node, str],
    kind: str,
) -> str:
    ndim = val[src].ndim
    perm = list(range(ndim))
    i, j = int(d0) % ndim, int(d1) % ndim
    perm[i], perm[j] = perm[j], perm[i]
    return _permute(b, n, src, perm, val, dyn, kind)


def _slices_node(
    b: _Builder, n: fx.Node, x: str, shape: tuple[int, ...], slices: list[tuple[int, int, int]], kind: str
) -> str:
    """A slice node for per-example ``slices`` (one (start, stop, step) per dim, already normalised),
    or ``x`` itself when nothing is cut."""
    if any(stop <= start for start, stop, _ in slices):
        raise _unsupported(n, kind, "the slice is empty")
    if all(s == (0, size, 1) for s, size in zip(slices, shape, strict=True)):
        return x
    return b.add(n.name, "slice", [x], slices=tuple(slices))


def _narrow(
    b: _Builder,
    n: fx.Node,
    src: Any,
    dim: Any,
    start: Any,
    length: Any,
    val: dict[fx.Node, Any],
    dyn: dict[fx.Node, str],
    kind: str,
) -> str:
    x = _alias(n, src, dyn, kind)
    shape = tuple(val[src].shape)
    d = int(dim) % len(shape)
    if d == 0:
        raise _unsupported(n, kind, "narrowing the batch dimension")
    s0 = int(start) % shape[d] if int(start) < 0 else int(start)
    slices = [(0, size, 1) for size in shape[1:]]
    slices[d - 1] = (s0, s0 + int(length), 1)
    return _slices_node(b, n, x, shape[1:], slices, kind)


def _getitem(
    b: _Builder, n: fx.Node, src: Any, index: Any, val: dict[fx.Node, Any], dyn: dict[fx.Node, str], kind: str
) -> str:
    """Basic indexing ``x[:, ...]`` with slices, ints, ``...`` and None on the non-batch dims: a slice
    node, then a reshape for the dims an int drops or a None adds."""
    x = _alias(n, src, dyn, kind)
    before, after = val[src], val[n]
    items = list(index) if isinstance(index, tuple) else [index]
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items):
        raise _unsupported(n, kind, "only basic indexing (slices, ints, ..., None) is supported")
    if any(
        isinstance(i, slice) and not all(isinstance(v, (int, type(None))) for v in (i.start, i.stop, i.step))
        for i in items
    ):
        raise _unsupported(n, kind, "slice bounds must be constant ints")
    used = sum(1 for i in items if i is not None and i is not Ellipsis)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        items[k : k + 1] = [slice(None)] * (before.ndim - used)
    items += [slice(None)] * (before.ndim - sum(1 for i in items if i is not None))
    if not items or items[0] != slice(None):
        raise _unsupported(n, kind, "the index touches the batch dimension")
    dims = [i for i in items if i is not None]
    slices: list[tuple[int, int, int]] = []
    for item, size in zip(dims[1:], before.shape[1:], strict=True):
        if isinstance(item, int):
            i = item + size if item < 0 else item
            slices.append((i, i + 1, 1))
        else:
            start, stop, step = item.indices(size)
            if step <= 0:
                raise _unsupported(n, kind, "slices need a positive step")
            slices.append((start, max(stop, start), step))
    name = _slices_node(b, n, x, tuple(before.shape[1:]), slices, kind)
    per = tuple(after.shape[1:])
    sliced = tuple(len(range(s, e, st)) for s, e, st in slices)
    if per == sliced:
        return name
    return b.add(f"{n.name}.shape" if name != x else n.name, "reshape", [name], shape=per)


def _only_first_dynamic(n: fx.Node, dyn_inputs: list[fx.Node], first: Any, kind: str) -> None:
    if any(d is not first for d in dyn_inputs):
        raise _unsupported(n, kind, "only its first argument may depend on the input")


def _alias(n: fx.Node, src: Any, dyn: dict[fx.Node, str], kind: str) -> str:
    if not isinstance(src, fx.Node) or src not in dyn:
        raise _unsupported(n, kind)
    return dyn[src]


def _unary(b: _Builder, n: fx.Node, op: str, src: Any, dyn: dict[fx.Node, str], kind: str) -> str:
    return b.add(n.name, op, [_alias(n, src, dyn, kind)])


def _reshape(
    b: _Builder, n: fx.Node, src: Any, val: dict[fx.Node, Any], dyn: dict[fx.Node, str], kind: str
) -> str:
    name = _alias(n, src, dyn, kind)
    before, after = val[src], val[n]
    if after.ndim == 0 or after.shape[0] != before.shape[0]:
        raise _unsupported(n, kind, "the reshape mixes the batch dimension with the others")
    per = tuple(after.shape[1:])
    if per == tuple(before.shape[1:]):
        return name
    if per == (math.prod(before.shape[1:]),):
        return b.add(n.name, "flatten", [name])
    return b.add(n.name, "reshape", [name], shape=per)


def _arith(
    b: _Builder,
    n: fx.Node,
    opname: str,
    raw_args: tuple[Any, ...],
    kwargs: dict[str, Any],
    val: dict[fx.Node, Any],
    dyn: dict[fx.Node, str],
    kind: str,
) -> str:
    """x+c, x-c, c-x, x*c, x/c, -x and x+y, x-y of two branches."""
    out = val[n]
    if opname == "neg":
        src = raw_args[0]
        shape = tuple(out.shape[1:])
        return b.add(
            n.name, "mul_const", [_alias(n, src, dyn, kind)], value=b.const_value(-1.0, shape, n.name)
        )
    a_raw = raw_args[0] if raw_args else kwargs.get("input")
    c_raw = raw_args[1] if len(raw_args) > 1 else kwargs.get("other")
    alpha = kwargs.get("alpha", 1)
    if opname == "div" and kwargs.get("rounding_mode") is not None:
        raise _unsupported(n, kind, "rounding division is not affine")
    a_node = a_raw if isinstance(a_raw, fx.Node) and a_raw in dyn else None
    c_node = c_raw if isinstance(c_raw, fx.Node) and c_raw in dyn else None
    a_dyn = a_node is not None
    a_val: Any = val[a_raw] if isinstance(a_raw, fx.Node) else a_raw
    c_val: Any = val[c_raw] if isinstance(c_raw, fx.Node) else c_raw
    if a_node is not None and c_node is not None:
        if opname not in {"add", "sub"}:
            raise _unsupported(n, kind, "product or quotient of two input-dependent tensors is not affine")
        if a_val.shape != c_val.shape or alpha != 1:
            raise _unsupported(n, kind, "both operands must have the same shape (and alpha=1)")
        rhs = dyn[c_node]
        if opname == "sub":
            shape = tuple(c_val.shape[1:])
            rhs = b.add(f"{n.name}_neg", "mul_const", [rhs], value=b.const_value(-1.0, shape, n.name))
        return b.add(n.name, "add", [dyn[a_node], rhs])
    src, const = (a_node, c_val) if a_node is not None else (c_node, a_val)
    if src is None:
        raise _unsupported(n, kind, "no operand depends on the input")
    src_val = val[src]
    if tuple(out.shape) != tuple(src_val.shape):
        raise _unsupported(
            n, kind, f"broadcasting changes the shape {tuple(src_val.shape)} -> {tuple(out.shape)}"
        )
    shape = tuple(src_val.shape[1:])
    if alpha != 1:
        if not a_dyn:
            raise _unsupported(n, kind, "alpha scales the input-dependent operand")
        const = const * alpha
    value = b.const_value(const, shape, n.name)
    x = dyn[src]
    if opname == "add":
        return b.add(n.name, "add_const", [x], value=value)
    if opname == "sub":
        return b.add(n.name, "sub_const", [x], value=value, reverse=not a_dyn)
    if opname == "mul":
        return b.add(n.name, "mul_const", [x], value=value)
    if not a_dyn:
        raise _unsupported(n, kind, "division by an input-dependent tensor is not affine")
    return b.add(n.name, "div_const", [x], value=value)


def _conv_padding(
    n: fx.Node, padding: Any, kernel: tuple[int, ...], dilation: tuple[int, int], kind: str
) -> tuple[int, int]:
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        if padding == "same" and all(t % 2 == 0 for t in total):
            return total[0] // 2, total[1] // 2
        raise _unsupported(n, kind, f"padding={padding!r} with an even kernel is asymmetric")
    return _pair(padding)


def _conv_node(
    b: _Builder, name: str, x: str, w: Any, bias: Any, stride: Any, padding: Any, dilation: Any, groups: Any
) -> str:
    return b.add(
        name,
        "conv2d",
        [x],
        weight=b.tensor(w),
        bias=b.tensor(bias),
        stride=_pair(stride),
        padding=_pair(padding),
        dilation=_pair(dilation),
        groups=int(groups),
    )


def _avgpool_node(
    b: _Builder,
    name: str,
    x: str,
    kernel: Any,
    stride: Any,
    padding: Any,
    ceil_mode: Any,
    count_include_pad: Any,
    divisor_override: Any,
) -> str:
    kernel = _pair(kernel)
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    return b.add(
        name,
        "avgpool2d",
        [x],
        kernel_size=kernel,
        stride=stride,
        padding=_pair(padding),
        ceil_mode=bool(ceil_mode),
        count_include_pad=bool(count_include_pad),
        divisor_override=None if divisor_override is None else int(divisor_override),
    )


def _bn_node(b: _Builder, name: str, x: str, mean: Any, var: Any, weight: Any, bias: Any, eps: float) -> str:
    if mean is None or var is None:
        raise RobustCertError(
            f"node {name!r}: BatchNorm without running statistics (track_running_stats=False) is not supported"
        )
    weight = torch.ones_like(mean) if weight is None else weight
    bias = torch.zeros_like(mean) if bias is None else bias
    return b.add(
        name,
        "batchnorm",
        [x],
        weight=b.tensor(weight),
        bias=b.tensor(bias),
        running_mean=b.tensor(mean),
        running_var=b.tensor(var),
        eps=float(eps),
    )


def _convert_module(
    b: _Builder,
    n: fx.Node,
    mod: nn.Module,
    args: tuple[Any, ...],
    dyn_inputs: list[fx.Node],
    val: dict[fx.Node, Any],
    dyn: dict[fx.Node, str],
) -> str:
    kind = _type_name(mod)
    src = n.args[0] if n.args else None
    _only_first_dynamic(n, dyn_inputs, src, kind)
    x = _alias(n, src, dyn, kind)
    assert isinstance(src, fx.Node)  # _alias checked it
    if isinstance(mod, nn.Linear):
        return b.add(n.name, "linear", [x], weight=b.tensor(mod.weight), bias=b.tensor(mod.bias))
    if isinstance(mod, nn.Conv2d) and type(mod) is nn.Conv2d:
        if mod.padding_mode != "zeros":
            raise _unsupported(n, kind, f"padding_mode={mod.padding_mode!r}; only zero padding is supported")
        padding = _conv_padding(n, mod.padding, tuple(mod.kernel_size), _pair(mod.dilation), kind)
        return _conv_node(b, n.name, x, mod.weight, mod.bias, mod.stride, padding, mod.dilation, mod.groups)
    if type(mod) in (nn.ReLU, nn.Sigmoid, nn.Tanh):
        return b.add(n.name, type(mod).__name__.lower(), [x])
    if type(mod) is nn.LeakyReLU:
        return _leaky(b, n, x, mod.negative_slope)
    if type(mod) is nn.GELU:
        return _gelu(b, n, x, mod.approximate, kind)
    if type(mod) is nn.MaxPool2d:
        if mod.return_indices:
            raise _unsupported(n, kind, "return_indices=True")
        return _maxpool_node(
            b,
            n,
            x,
            tuple(val[src].shape[1:]),
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            mod.ceil_mode,
            kind,
        )
    if type(mod) is nn.AdaptiveMaxPool2d:
        if mod.return_indices:
            raise _unsupported(n, kind, "return_indices=True")
        h, w = val[src].shape[-2:]
        size = mod.output_size if isinstance(mod.output_size, (tuple, list)) else (mod.output_size,) * 2
        oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
        if val[src].ndim == 4 and oh and ow and h % oh == 0 and w % ow == 0:
            k = (h // oh, w // ow)
            return _maxpool_node(b, n, x, tuple(val[src].shape[1:]), k, k, 0, 1, False, kind)
        raise _unsupported(n, kind, f"output size {(oh, ow)} does not divide the input size {(h, w)}")
    if isinstance(mod, nn.modules.padding._ConstantPadNd):
        return _pad_node(b, n, x, val[src], mod.padding, mod.value, kind)
    if type(mod) in (nn.Softmax, nn.LogSoftmax):
        op = "softmax" if type(mod) is nn.Softmax else "log_softmax"
        return _softmax(b, n, op, src, mod.dim, val, dyn, kind)
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return _reshape(b, n, src, val, dyn, kind)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _bn_node(b, n.name, x, mod.running_mean, mod.running_var, mod.weight, mod.bias, mod.eps)
    if type(mod) is nn.AvgPool2d:
        return _avgpool_node(
            b,
            n.name,
            x,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.ceil_mode,
            mod.count_include_pad,
            mod.divisor_override,
        )
    if type(mod) is nn.AdaptiveAvgPool2d:
        h, w = val[src].shape[-2:]
        oh, ow = _pair(mod.output_size if mod.output_size is not None else (h, w))
        if oh and ow and h % oh == 0 and w % ow == 0:
            k = (h // oh, w // ow)
            return _avgpool_node(b, n.name, x, k, k, 0, False, True, None)
        raise _unsupported(n, kind, f"output size {(oh, ow)} does not divide the input size {(h, w)}")
    if isinstance(mod, Normalize):
        mean, std = cast(Tensor, mod.mean), cast(Tensor, mod.std)
        return b.add(n.name, "normalize", [x], mean=b.tensor(mean.flatten()), std=b.tensor(std.flatten()))
    if isinstance(mod, _DROPOUT):
        return x
    if isinstance(mod, GraphNet):
        return _inline(b, n.name, x, mod.ir)
    raise _unsupported(n, kind)


def _inline(b: _Builder, prefix: str, x: str, graph: Graph) -> str:
    """Copy a GraphNet's nodes into the graph under construction (its input becomes ``x``); its stripped
    head, if any, is recorded by the caller."""
    rename = {graph.input_name: x}
    for node in graph.nodes[1:]:
        params = {
            k: (b.tensor(v) if isinstance(v, Tensor) and v.is_floating_point() else v)
            for k, v in node.params.items()
        }
        rename[node.name] = b.add(
            f"{prefix}.{node.name}", node.op, [rename[i] for i in node.inputs], **params
        )
    return rename[graph.output]
