"""``torch.export`` programs (``.pt2``) and TorchScript files -> graph IR.

Formats. A file is recognised by its contents, not its name: both formats are zip archives, and the list
of member names (read without unpickling anything) tells them apart — a ``torch.export.save`` archive
holds ``archive_format`` / ``serialized_exported_program.json`` / ``models/*.json``, a ``torch.jit.save``
archive holds ``code/`` and ``constants.pkl``. A plain ``torch.save`` pickle (``data.pkl`` only) is refused
with a hint; anything else (ONNX, truncated files, random bytes) is refused as not such a file.

Trust. Loading either format runs code stored in the file (``torch.jit.load`` runs the archive's
TorchScript, ``torch.export.load`` unpickles parts of it), so :func:`load_exported` refuses to load
anything unless ``trust=True`` (the CLI's ``--trust-model-file``); without it the error says so and
suggests exporting the model to ONNX, which robustcert reads without running code.

Conversion. An ``ExportedProgram``'s graph (ATen ops, whether as ``torch.export.export`` produces it or
after ``run_decompositions()``) is walked once with an example input, like the torch.fx front end:
parameters, buffers and constants come from ``state_dict`` / ``constants`` (``graph_signature`` says
which placeholder is which), nodes that do not depend on the input are folded, and every input-dependent
node maps onto ops of :data:`robustcert.graph.ops.OPS` with the same ops and params the torch.fx front
end emits for the equivalent ``nn.Module`` (the helpers of :mod:`robustcert.graph.fx_frontend` build
them). A program with in-place ops is first functionalised (``run_decompositions({})``, which keeps the
ops). The batch dimension may be static (e.g. exported with batch 1) or dynamic; the per-example shape
is what the graph keeps, and an op that mixes the batch dimension into the others (a reshape that
changes it, a permutation that moves it, slicing or concatenating along it) is refused. Anything else
raises :class:`RobustCertError` naming the node, its ATen target and the supported ops. A
softmax/log-softmax over the classes as the last op is stripped (``Graph.stripped``, ``Graph.notes``).

A TorchScript module does not record its input shape, so it needs ``input_shape``; it is converted to an
``ExportedProgram`` with ``torch._export.converter.TS2EPConverter`` (a private torch API: a failure is
reported as such, with the advice to use ``torch.export`` or ONNX) and then follows the path above.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from robustcert.errors import RobustCertError
from robustcert.graph._builder import Builder
from robustcert.graph.fx_frontend import (
    _arith,
    _avgpool_node,
    _bn_node,
    _concat,
    _conv_node,
    _conv_padding,
    _gelu,
    _leaky,
    _maxpool_node,
    _narrow,
    _pad_node,
    _pair,
    _permute,
    _reshape,
    _slices_node,
    _softmax,
    _transpose,
)
from robustcert.graph.ir import Graph, GraphNet
from robustcert.graph.ops import OPS, supported_ops_text
from robustcert.seeding import torch_generator

EXPORT = "torch.export program"
TORCHSCRIPT = "TorchScript module"

# Example batch for a program whose batch dimension is dynamic (a static one is used as exported).
_EXAMPLE_BATCH = 2

EXPORT_SUPPORTED = (
    "aten linear, addmm/mm/matmul by a constant matrix, conv2d/convolution/_convolution (2-D, not "
    "transposed), relu, leaky_relu, sigmoid, tanh, gelu (approximate='none'), view/reshape/_unsafe_view/"
    "flatten/unflatten/squeeze/unsqueeze (keeping the batch dim), permute/transpose, slice/narrow/select "
    "on non-batch dims, cat on a non-batch dim, constant_pad_nd/pad (mode='constant'), batch_norm/"
    "native_batch_norm/_native_batch_norm_legit_no_training (inference), avg_pool2d, adaptive_avg_pool2d "
    "and adaptive_max_pool2d (when the output size divides the input), mean over H and W of [batch, C, H, "
    "W], max_pool2d and "
    "max_pool2d_with_indices (values only), add/sub/rsub/mul/div by constants, neg, add/sub of two "
    "tensors, dropout (inference), clone/detach/alias/contiguous/_to_copy (floating), _softmax/softmax/"
    "_log_softmax/log_softmax over the classes as the last op (stripped), and any op on constants only"
)


def export_supported_text() -> str:
    """The supported-ops sentence of this front end's "unsupported op" messages."""
    return f"supported ops: {EXPORT_SUPPORTED} (graph IR ops: {', '.join(sorted(OPS))})"


# ----------------------------------------------------------------------------------------- loading


def load_exported(
    path: str | os.PathLike[str], *, trust: bool, input_shape: Sequence[int] | None = None
) -> GraphNet:
    """Load a ``torch.export`` program (``.pt2``) or a TorchScript file as a :class:`GraphNet`.

    Guarantees: nothing in the file is unpickled or executed unless ``trust`` is True (only the zip
    directory is read to name the format); the returned graph reproduces the stored model's output on
    an example input (checked) with float64 copies of its weights; every failure — missing, truncated,
    corrupt or wrong kind of file, unsupported op, batch-mixing op — is a one-line
    :class:`RobustCertError` naming the file or node. ``input_shape`` (per example, no batch dim) is
    required for TorchScript and for programs whose non-batch dims are dynamic and that stored no
    example inputs; otherwise it is checked against the program's own.
    """
    file = _existing_file(path)
    kind = sniff_format(file)
    if not trust:
        raise untrusted_error(file, kind)
    if kind == EXPORT:
        return GraphNet(graph_from_exported_program(_load_program(file), input_shape))
    return GraphNet(graph_from_torchscript(_load_script(file), input_shape))


def untrusted_error(file: str, kind: str) -> RobustCertError:
    """The refusal for a file loaded without trust: why, and the two ways forward."""
    return RobustCertError(
        f"{file!r} is a {kind}: this file format can run code when it is loaded, so robustcert loads it "
        "only when told to trust it; pass --trust-model-file (trust=True) if the file comes from a "
        "trusted source, or export the model to ONNX (torch.onnx.export) and load that instead"
    )


def _existing_file(path: str | os.PathLike[str]) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise RobustCertError(f"expected a model file path, got {type(path).__name__}")
    file = os.fspath(path)
    if os.path.isdir(file):
        raise RobustCertError(f"model file {file!r} is a directory; give the .pt2 or TorchScript file")
    if not os.path.isfile(file):
        raise RobustCertError(f"model file {file!r} does not exist; check the path")
    return file


def sniff_format(file: str) -> str:
    """:data:`EXPORT` or :data:`TORCHSCRIPT`, from the zip member names only (nothing is unpickled).

    Raises RobustCertError for anything else (not a zip archive, truncated, a ``torch.save`` pickle)."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise RobustCertError(
            f"{file!r} is not a torch.export (.pt2) or TorchScript file: it is not a complete zip archive "
            f"({_one_line(exc)}); it may be truncated or another format — save the model with "
            "torch.export.save or torch.jit.save, or pass an ONNX file to load_onnx"
        ) from None
    tails = {name.split("/", 1)[-1] for name in names}
    if tails & {"archive_format", "serialized_exported_program.json"} or any(
        t.startswith("models/") and t.endswith(".json") for t in tails
    ):
        return EXPORT
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return TORCHSCRIPT
    if "data.pkl" in tails:
        raise RobustCertError(
            f"{file!r} was written by torch.save (a pickled model or state_dict), which robustcert does not "
            "load; save the model with torch.export.save or torch.jit.save, or export it to ONNX"
        )
    raise RobustCertError(
        f"{file!r} is a zip archive but not a torch.export (.pt2) or TorchScript file; save the model "
        "with torch.export.save or torch.jit.save, or export it to ONNX"
    )


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Python warnings and torch's loggers for the duration (restored afterwards): torch logs
    tracebacks of the failures it recovers from, which must not reach the user as if they were ours."""
    loggers = [
        lg
        for name, lg in list(logging.root.manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and (name == "torch" or name.startswith("torch."))
    ]
    disabled = [lg.disabled for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.disabled = True
        try:
            yield
        finally:
            for lg, was in zip(loggers, disabled, strict=True):
                lg.disabled = was


def _load_program(file: str) -> Any:
    try:
        with _quiet():
            program = torch.export.load(file)
    except Exception as exc:  # torch raises many types for a damaged archive
        raise RobustCertError(
            f"could not load the torch.export program {file!r} ({_one_line(exc)}); the file may be "
            "truncated or corrupt, or written by another torch version — save it again with torch.export.save"
        ) from None
    if not isinstance(program, torch.export.ExportedProgram):
        raise RobustCertError(
            f"{file!r} did not load as a torch.export program; save it with torch.export.save"
        )
    return program


def _load_script(file: str) -> torch.jit.ScriptModule:
    try:
        with _quiet():
            module = torch.jit.load(file, map_location="cpu")
    except Exception as exc:  # torch raises many types for a damaged archive
        raise RobustCertError(
            f"could not load the TorchScript file {file!r} ({_one_line(exc)}); the file may be truncated "
            "or corrupt — save it again with torch.jit.save"
        ) from None
    return module


# ------------------------------------------------------------------------------------- TorchScript


def graph_from_torchscript(module: torch.jit.ScriptModule, input_shape: Sequence[int] | None) -> Graph:
    """Convert a TorchScript module into a :class:`Graph` (in eval mode) via an ``ExportedProgram``.

    ``input_shape`` (per example) is required: TorchScript does not record it. Guarantees as for
    :func:`graph_from_exported_program`; a module the TorchScript converter cannot handle raises
    RobustCertError."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise RobustCertError(f"expected a TorchScript module, got {type(module).__name__}")
    if input_shape is None:
        raise RobustCertError(
            "a TorchScript file does not record its input shape; pass input_shape (the per-example "
            "shape, e.g. (1, 28, 28))"
        )
    shape = _shape_tuple(input_shape)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        program = _script_program(module, shape)
    finally:
        for m, mode in modes:
            m.training = mode
    return graph_from_exported_program(program, shape, normalize_paths_of_script(module))


def _script_program(module: torch.jit.ScriptModule, shape: tuple[int, ...]) -> Any:
    """The module as an ExportedProgram, traced on an example batch of 2 (or of 1, for a module that
    only runs on one example)."""
    from torch._export.converter import TS2EPConverter

    dtype = _first_float([*module.parameters(), *module.buffers()])
    failure: Exception | None = None
    for batch in (_EXAMPLE_BATCH, 1):
        try:
            with _quiet():
                return TS2EPConverter(module, (_example(dtype, batch, shape),)).convert()
        except Exception as exc:  # the converter raises many types for unsupported TorchScript
            failure = failure or exc
    assert failure is not None
    raise RobustCertError(
        f"could not convert the TorchScript module on an input of shape [batch, "
        f"{', '.join(map(str, shape))}] ({_one_line(failure)}); check input_shape, or save the model with "
        "torch.export.save (or export it to ONNX) instead"
    )


# ---------------------------------------------------------------------------------- ExportedProgram


def graph_from_exported_program(
    program: Any, input_shape: Sequence[int] | None = None, normalize_paths: set[str] | None = None
) -> Graph:
    """Convert a ``torch.export.ExportedProgram`` into a :class:`Graph` with float64 params.

    Guarantees: the graph has the ops and params the torch.fx front end emits for the equivalent
    module; it reproduces the program's output on an example input (checked); an unsupported or
    batch-mixing op, a program in training mode (mutating buffers, batch norm with training=True), or
    a program with other than one tensor input and one tensor output raises RobustCertError naming
    the node, its ATen target and the supported ops.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise RobustCertError(f"expected a torch.export.ExportedProgram, got {type(program).__name__}")
    program = _functional(program)
    _check_outputs(program)
    consts, targets, user = _inputs(program)
    ph = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user)
    batch, shape = _input_dims(ph, program, input_shape)
    fake = ph.meta.get("val")
    dtype = fake.dtype if isinstance(fake, Tensor) and fake.is_floating_point() else None
    example = _example(dtype or _first_float(list(consts.values())), batch, shape)
    paths = normalize_paths_of_program(program) if normalize_paths is None else normalize_paths
    walk = _Walk(Builder(None, False), consts, program.graph_module, targets=targets, normalize_paths=paths)
    return walk.run(program.graph, example)


def _functional(program: Any) -> Any:
    """The program itself, or — when it has in-place ops — its functionalised form (same ops)."""
    if not any(_is_mutable(n) for n in program.graph.nodes):
        return program
    try:
        with _quiet():
            program = program.run_decompositions({})
    except Exception as exc:  # retracing raises many types
        raise RobustCertError(
            f"the program has in-place ops and could not be functionalised ({_one_line(exc)}); export the "
            "model without in-place ops (e.g. nn.ReLU(inplace=False)) or to ONNX"
        ) from None
    left = next((n for n in program.graph.nodes if _is_mutable(n)), None)
    if left is not None:
        raise _unsupported(left, "an in-place op that functionalisation did not remove")
    return program


def _is_mutable(n: fx.Node) -> bool:
    schema = getattr(n.target, "_schema", None)
    return n.op == "call_function" and schema is not None and bool(schema.is_mutable)


def _check_outputs(program: Any) -> None:
    from torch.export.graph_signature import OutputKind

    specs = program.graph_signature.output_specs
    mutated = [s.target for s in specs if s.kind == OutputKind.BUFFER_MUTATION]
    if mutated:
        raise RobustCertError(
            f"the program updates buffer {mutated[0]!r} when it runs (it was exported in training mode); "
            "call model.eval() before torch.export.export"
        )
    other = [s.kind.name for s in specs if s.kind != OutputKind.USER_OUTPUT]
    users = [s for s in specs if s.kind == OutputKind.USER_OUTPUT]
    if other or len(users) != 1:
        raise RobustCertError(
            f"the program must return exactly one tensor (it has {len(users)} outputs"
            f"{' and ' + ', '.join(other) if other else ''}); multiple outputs are not supported"
        )


def _inputs(program: Any) -> tuple[dict[str, Any], dict[str, str], str]:
    """Placeholder name -> value and -> state key of every parameter/buffer/constant, and the one user
    input's name."""
    from torch.export.graph_signature import InputKind, TensorArgument

    consts: dict[str, Any] = {}
    targets: dict[str, str] = {}
    users: list[str] = []
    for spec in program.graph_signature.input_specs:
        name = getattr(spec.arg, "name", "?")
        if spec.kind == InputKind.USER_INPUT:
            if not isinstance(spec.arg, TensorArgument):
                raise RobustCertError(f"the program's input {name!r} is not a tensor; not supported")
            users.append(name)
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            consts[name] = _state(program, spec.target, name)
            targets[name] = str(spec.target)
        else:
            raise RobustCertError(f"the program's input {name!r} is a {spec.kind.name}; not supported")
    if len(users) != 1:
        raise RobustCertError(f"the program must take exactly one tensor input, it takes {len(users)}")
    return consts, targets, users[0]


def _state(program: Any, target: str | None, name: str) -> Any:
    for table in (program.state_dict, program.constants):
        if target in table:
            value = table[target]
            return value.detach() if isinstance(value, Tensor) else value
    raise RobustCertError(
        f"the program's input {name!r} ({target!r}) has no stored value; the file is incomplete"
    )


def _shape_tuple(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise RobustCertError(f"input_shape must be a sequence of positive ints, got {shape!r}") from None
    if not out or min(out) <= 0:
        raise RobustCertError(f"input_shape must be a sequence of positive ints, got {tuple(shape)}")
    return out


def _input_dims(ph: fx.Node, program: Any, input_shape: Sequence[int] | None) -> tuple[int, tuple[int, ...]]:
    """(example batch size, per-example shape) of the user input.

    A static batch is used as exported; a dynamic one gets :data:`_EXAMPLE_BATCH`. Each non-batch dim
    is the program's static size, else ``input_shape``'s, else the stored example input's."""
    fake = ph.meta.get("val")
    dims: list[Any] = list(fake.shape) if isinstance(fake, Tensor) else []
    given = None if input_shape is None else _shape_tuple(input_shape)
    stored = _stored_example_shape(program)
    ndim = len(dims) if dims else (len(given) + 1 if given else len(stored or ()))
    if ndim < 2:
        raise RobustCertError(
            f"the program's input {ph.name!r} has {ndim} dims; it needs a batch dim and at least one more"
        )
    if given is not None and len(given) != ndim - 1:
        raise RobustCertError(
            f"input_shape {given} has {len(given)} dims, the program's input has {ndim - 1}"
        )
    batch = dims[0] if dims and isinstance(dims[0], int) else _EXAMPLE_BATCH
    shape: list[int] = []
    for i in range(1, ndim):
        static = dims[i] if dims and isinstance(dims[i], int) else None
        size = static if static is not None else (given[i - 1] if given else stored[i] if stored else None)
        if size is None:
            raise RobustCertError(
                f"dim {i} of the program's input {ph.name!r} is dynamic and no example input is stored; "
                "pass input_shape (the per-example shape)"
            )
        if given is not None and given[i - 1] != size:
            raise RobustCertError(
                f"input_shape {given} does not match the program's input shape (dim {i} is {size})"
            )
        shape.append(int(size))
    return int(batch), tuple(shape)


def _stored_example_shape(program: Any) -> tuple[int, ...] | None:
    example: Any = getattr(program, "example_inputs", None)
    try:
        args: Any = example[0] if example else ()
        if len(args) == 1 and isinstance(args[0], Tensor):
            return tuple(int(s) for s in args[0].shape)
    except (TypeError, IndexError, KeyError):
        pass
    return None


def _first_float(tensors: Sequence[Any]) -> torch.dtype:
    ref = next((t for t in tensors if isinstance(t, Tensor) and t.is_floating_point()), None)
    return ref.dtype if ref is not None else torch.float32


def _example(dtype: torch.dtype, batch: int, shape: tuple[int, ...]) -> Tensor:
    return torch.rand((batch,) + shape, generator=torch_generator(0)).to(dtype)


# --------------------------------------------------------------------------------------- the walk

_KIND = "aten op"

# Ops that only query shapes or assert: evaluated (or skipped) but never input-dependent values.
_SHAPE_QUERIES = {"sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "size", "dim", "numel"}
_ASSERTS = {
    "_assert_scalar",
    "_assert_async",
    "_assert_tensor_metadata",
    "sym_constrain_range",
    "sym_constrain_range_for_size",
    "_functional_assert_async",
    "_functional_sym_constrain_range",
    "_functional_sym_constrain_range_for_size",
}


def _aten_name(n: fx.Node) -> str:
    """``aten.relu.default`` style name of a node's target (or the function's name)."""
    target = n.target
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    mod = getattr(target, "__module__", "") or ""
    mod = "operator" if mod == "_operator" else mod
    name = getattr(target, "__name__", repr(target))
    return f"{mod}.{name}" if mod else str(name)


def _packet(n: fx.Node) -> str | None:
    """The ATen op name (``relu`` for ``aten.relu.default``), or None for a non-ATen target."""
    target = n.target
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        return str(target._schema.name).split("::", 1)[1]
    return None


def _unsupported(n: fx.Node, why: str = "") -> RobustCertError:
    extra = f" ({why})" if why else ""
    return RobustCertError(
        f"unsupported op at node {n.name!r} (target {_aten_name(n)!r}, type {_KIND}){extra}; "
        f"{export_supported_text()}"
    )


def _as_export_error(exc: RobustCertError) -> RobustCertError:
    """A refusal raised by a shared torch.fx helper, re-worded for this front end (same node and
    reason, this front end's target names and supported-op list)."""
    text = str(exc).replace(supported_ops_text("torch"), export_supported_text())
    return RobustCertError(text.replace("'torch._ops.aten.", "'aten."))


def _bind(n: fx.Node, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of an ATen call by schema name (defaults filled in)."""
    out: dict[str, Any] = {}
    schema = n.target._schema  # type: ignore[union-attr]
    positional = [a for a in schema.arguments if not a.kwarg_only]
    for i, arg in enumerate(schema.arguments):
        if not arg.kwarg_only and i < len(args) and i < len(positional):
            out[arg.name] = args[i]
        elif arg.name in kwargs:
            out[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
    return out


@dataclass
class _Call:
    """One input-dependent ATen node being converted: concrete (``a``) and raw (``raw``) arguments."""

    n: fx.Node
    op: str
    a: dict[str, Any]
    raw: dict[str, Any]


@dataclass
class _Walk:
    """Walks an ExportedProgram's graph with an example input and builds the IR (see the module doc)."""

    b: Builder
    consts: dict[str, Any]
    owner: Any
    val: dict[fx.Node, Any] = field(default_factory=dict)
    dyn: dict[fx.Node, str] = field(default_factory=dict)
    # Row-folded values: the program holds [B * prod(lead), k] (batch merged into rows, as decomposed
    # linear layers do), the IR holds [B, *lead, k]; node -> (B, *lead). Only mm/addmm and a reshape
    # restoring the batch may read them.
    folded: dict[fx.Node, tuple[int, ...]] = field(default_factory=dict)
    # placeholder name -> state_dict/constants key, and the module paths of Normalize layers
    targets: dict[str, str] = field(default_factory=dict)
    normalize_paths: set[str] = field(default_factory=set)
    # sub nodes of a robustcert Normalize module deferred into the following div: node -> mean
    normalize_mean: dict[fx.Node, Tensor] = field(default_factory=dict)

    def run(self, graph: fx.Graph, example: Tensor) -> Graph:
        output: tuple[str, fx.Node] | None = None
        with torch.no_grad():
            for n in graph.nodes:
                if n.op == "placeholder":
                    self.placeholder(n, example)
                elif n.op == "get_attr":
                    self.val[n] = _get_attr(self.owner, str(n.target))
                elif n.op == "output":
                    output = self.output(n)
                else:
                    self.call(n)
        assert output is not None
        name, out = output
        stripped, notes = self.b.strip(out.name)
        result = Graph(self.b.nodes, name, tuple(example.shape[1:]), stripped, notes)
        _check_matches(result, example, self.val[out])
        return result

    def placeholder(self, n: fx.Node, example: Tensor) -> None:
        if n.name in self.consts:
            self.val[n] = self.consts[n.name]
        else:
            self.val[n] = example
            self.dyn[n] = self.b.add(n.name, "input", ())

    def output(self, n: fx.Node) -> tuple[str, fx.Node]:
        outs = n.args[0] if isinstance(n.args[0], (tuple, list)) else (n.args[0],)
        out = outs[0] if len(outs) == 1 else None
        if not isinstance(out, fx.Node) or out not in self.dyn or not isinstance(self.val[out], Tensor):
            raise RobustCertError(
                "the program must return one tensor that depends on its input; multiple outputs are not supported"
            )
        if out in self.folded:
            raise _unsupported(out, "its output mixes the batch dimension with the others")
        return self.dyn[out], out

    def call(self, n: fx.Node) -> None:
        if n.op != "call_function":
            raise _unsupported(n, f"{n.op} nodes are not supported")
        op = _packet(n)
        if op in _ASSERTS:
            self.val[n] = None
            return
        args = fx.node.map_arg(n.args, lambda a: self.val[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: self.val[a])
        if op in _BATCHNORMS and _bind(n, args, kwargs).get("training", False):
            raise _batchnorm_training(n)  # before running it: it would update the running statistics
        dyn_inputs: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs), lambda a: dyn_inputs.append(a) if a in self.dyn else None)
        self.val[n] = self.evaluate(n, args, kwargs)
        if not dyn_inputs or op in _SHAPE_QUERIES:
            return  # folded: a constant, or a shape of the input
        if not isinstance(self.val[n], (Tensor, tuple, list)):
            raise _unsupported(n, "it turns an input-dependent tensor into a Python number")
        if not n.users:
            return  # dead: never read
        for d in dyn_inputs:
            self.b.use(d.name, n.name, lambda why: _unsupported(n, why))
            if d in self.folded and op not in _FOLD_READERS:
                raise _unsupported(n, f"it reads {d.name!r}, whose rows merge the batch dimension")
        try:
            name = self.convert(n, op, args, kwargs)
        except RobustCertError as exc:
            raise _as_export_error(exc) from None
        if name is not None:
            self.dyn[n] = name

    def evaluate(self, n: fx.Node, args: Any, kwargs: Any) -> Any:
        try:
            return n.target(*args, **kwargs)  # type: ignore[operator]
        except Exception as exc:  # any op can fail on a wrong shape
            shape = next((tuple(v.shape) for k, v in self.val.items() if k in self.dyn), ())
            raise RobustCertError(
                f"the program failed on an input of shape {list(shape)} at node {n.name!r} "
                f"({_aten_name(n)}: {_one_line(exc)}); check the input shape"
            ) from None

    def convert(self, n: fx.Node, op: str | None, args: Any, kwargs: Any) -> str | None:
        if n.target is operator.getitem:
            return self.getitem(n)
        handler = _HANDLERS.get(op) if op is not None else None
        if handler is None:
            raise _unsupported(n)
        call = _Call(n, op or "", _bind(n, args, kwargs), _bind(n, n.args, dict(n.kwargs)))
        return handler(self, call)

    def getitem(self, n: fx.Node) -> str:
        """Element 0 of a multi-output op (batch norm, max pool with indices, dropout): its values."""
        src, index = n.args[0], n.args[1]
        if (
            not isinstance(src, fx.Node)
            or src not in self.dyn
            or not isinstance(self.val[src], (tuple, list))
        ):
            raise _unsupported(n)
        if index != 0:
            raise _unsupported(
                n, f"it reads output {index} of {src.name!r} (indices/statistics), not its values"
            )
        return self.dyn[src]

    # helpers for handlers
    def first(self, c: _Call) -> str:
        """The IR name of the call's first argument, which must depend on the input (all other
        arguments must be constants)."""
        schema = c.n.target._schema  # type: ignore[union-attr]
        lead = schema.arguments[0].name
        for name, raw in c.raw.items():
            if name != lead and _mentions(raw, self.dyn):
                raise _unsupported(c.n, f"its argument {name!r} depends on the input")
        src = c.raw[lead]
        if not isinstance(src, fx.Node) or src not in self.dyn:
            raise _unsupported(c.n, f"only its argument {lead!r} may depend on the input")
        return self.dyn[src]

    def lead(self, c: _Call) -> Any:
        """The raw (fx) first argument of the call."""
        return c.raw[c.n.target._schema.arguments[0].name]  # type: ignore[union-attr]


def _mentions(raw: Any, dyn: dict[fx.Node, str]) -> bool:
    found: list[fx.Node] = []
    fx.node.map_arg(raw, lambda a: found.append(a) if a in dyn else None)
    return bool(found)


def _get_attr(owner: Any, target: str) -> Any:
    obj = owner
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _check_matches(graph: Graph, example: Tensor, ref: Any) -> None:
    with torch.no_grad():
        got = graph.model_forward(example.to(torch.float64))
    if not isinstance(ref, Tensor) or ref.shape != got.shape:
        raise RobustCertError("internal: the converted graph's output shape differs from the program's")
    scale = 1.0 + float(ref.abs().max())
    if not torch.allclose(got.to(ref.dtype), ref, rtol=1e-3, atol=1e-4 * scale):
        raise RobustCertError(
            "the converted graph does not reproduce the program's output (an op with hidden semantics?); "
            "please report this model, or export it to ONNX and use load_onnx"
        )


# ------------------------------------------------------------------------------------ op handlers

Handler = Callable[[_Walk, _Call], "str | None"]


def _h_unary(w: _Walk, c: _Call) -> str:
    op = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}[c.op]
    return w.b.add(c.n.name, op, [w.first(c)])


def _h_leaky(w: _Walk, c: _Call) -> str:
    return _leaky(w.b, c.n, w.first(c), c.a.get("negative_slope", 0.01))


def _h_gelu(w: _Walk, c: _Call) -> str:
    return _gelu(w.b, c.n, w.first(c), c.a.get("approximate", "none"), _KIND)


def _h_identity(w: _Walk, c: _Call) -> str:
    """Ops that return their input's values: clone, detach, alias, contiguous, dropout in inference,
    a floating-point ``_to_copy`` / ``to``."""
    x = w.first(c)
    if c.a.get("train", False):
        raise _unsupported(c.n, "dropout with train=True; export the model in eval mode")
    out = w.val[c.n]
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not (isinstance(out, Tensor) and out.dtype in (torch.float32, torch.float64)):
        raise _unsupported(c.n, f"it converts the tensor to {getattr(out, 'dtype', '?')}; only float32/64")
    if tuple(out.shape) != tuple(w.val[w.lead(c)].shape):
        raise _unsupported(c.n, "it changes the shape")
    return x


def _h_reshape(w: _Walk, c: _Call) -> str | None:
    x = w.first(c)
    src = w.lead(c)
    if src in w.folded:
        return _unfold(w, c, x, w.folded[src])
    if _folds_rows(w, c):
        return x
    return _reshape(w.b, c.n, src, w.val, w.dyn, _KIND)


_FOLD_READERS = {"mm", "addmm", "view", "_unsafe_view", "reshape"}


def _folds_rows(w: _Walk, c: _Call) -> bool:
    """Whether this reshape merges the batch into the rows ([B, *lead, k] -> [B * prod(lead), k]) for
    row-wise matrix products only (a decomposed linear layer on a >2-D input); if so it is recorded as
    folded and the IR keeps [B, *lead, k]."""
    before, after = w.val[w.lead(c)], w.val[c.n]
    if (
        before.ndim < 3
        or after.ndim != 2
        or after.shape[0] == before.shape[0]
        or tuple(after.shape) != (before.shape[:-1].numel(), before.shape[-1])
    ):
        return False
    for user in c.n.users:
        op = _packet(user)
        mat1 = user.args[1] if op == "addmm" and len(user.args) > 1 else user.args[0] if op == "mm" else None
        if mat1 is not c.n:
            return False
    w.folded[c.n] = tuple(int(s) for s in before.shape[:-1])
    return True


def _unfold(w: _Walk, c: _Call, x: str, lead: tuple[int, ...]) -> str:
    """A reshape of a row-folded value: it must restore the batch dimension."""
    before, after = w.val[w.lead(c)], w.val[c.n]
    if after.ndim < 2 or after.shape[0] != lead[0]:
        raise _unsupported(c.n, "the reshape mixes the batch dimension with the others")
    have, per = lead[1:] + (int(before.shape[-1]),), tuple(int(s) for s in after.shape[1:])
    if per == have:
        return x
    if per == (math.prod(have),):
        return w.b.add(c.n.name, "flatten", [x])
    return w.b.add(c.n.name, "reshape", [x], shape=per)


def _h_permute(w: _Walk, c: _Call) -> str:
    w.first(c)
    return _permute(w.b, c.n, w.lead(c), list(c.a["dims"]), w.val, w.dyn, _KIND)


def _h_transpose(w: _Walk, c: _Call) -> str:
    w.first(c)
    if c.op == "t":
        return _transpose(w.b, c.n, w.lead(c), 0, 1, w.val, w.dyn, _KIND)
    return _transpose(w.b, c.n, w.lead(c), c.a["dim0"], c.a["dim1"], w.val, w.dyn, _KIND)


def _h_slice(w: _Walk, c: _Call) -> str:
    """``x[..., start:end:step, ...]`` on one dim; on the batch dim only the whole range (a no-op)."""
    x = w.first(c)
    shape = tuple(w.val[w.lead(c)].shape)
    d = int(c.a.get("dim", 0)) % len(shape)
    start, stop, step = slice(c.a.get("start"), c.a.get("end"), c.a.get("step", 1)).indices(shape[d])
    if step <= 0:
        raise _unsupported(c.n, "slices need a positive step")
    if d == 0:
        if (start, stop, step) == (0, shape[0], 1):
            return x
        raise _unsupported(c.n, "slicing the batch dimension")
    slices = [(0, size, 1) for size in shape[1:]]
    slices[d - 1] = (start, max(stop, start), step)
    return _slices_node(w.b, c.n, x, shape[1:], slices, _KIND)


def _h_narrow(w: _Walk, c: _Call) -> str:
    w.first(c)
    return _narrow(w.b, c.n, w.lead(c), c.a["dim"], c.a["start"], c.a["length"], w.val, w.dyn, _KIND)


def _h_select(w: _Walk, c: _Call) -> str:
    """``x[:, ..., i, ...]``: a one-element slice, then a reshape dropping that dim."""
    x = w.first(c)
    shape = tuple(w.val[w.lead(c)].shape)
    d = int(c.a["dim"]) % len(shape)
    if d == 0:
        raise _unsupported(c.n, "selecting along the batch dimension")
    i = int(c.a["index"]) % shape[d]
    slices = [(0, size, 1) for size in shape[1:]]
    slices[d - 1] = (i, i + 1, 1)
    name = _slices_node(w.b, c.n, x, shape[1:], slices, _KIND)
    per = tuple(w.val[c.n].shape[1:])
    return w.b.add(f"{c.n.name}.shape" if name != x else c.n.name, "reshape", [name], shape=per)


def _h_cat(w: _Walk, c: _Call) -> str:
    return _concat(w.b, c.n, c.raw["tensors"], c.a.get("dim", 0), w.val, w.dyn, _KIND)


def _h_pad(w: _Walk, c: _Call) -> str:
    x = w.first(c)
    if c.a.get("mode", "constant") != "constant":
        raise _unsupported(c.n, f"mode={c.a.get('mode')!r}; only constant padding is supported")
    return _pad_node(w.b, c.n, x, w.val[w.lead(c)], c.a["pad"], c.a.get("value"), _KIND)


def _h_linear(w: _Walk, c: _Call) -> str:
    x = w.first(c)
    return w.b.add(
        c.n.name, "linear", [x], weight=w.b.tensor(c.a["weight"]), bias=w.b.tensor(c.a.get("bias"))
    )


def _h_matmul(w: _Walk, c: _Call) -> str:
    """``x @ M`` (mm, matmul) and ``beta * bias + alpha * (x @ M)`` (addmm) with a constant 2-D ``M``:
    a linear node with weight ``M.T``."""
    mat1 = "mat1" if c.op == "addmm" else "self"
    mat2 = "mat2" if c.op in ("addmm", "mm") else "other"
    src = c.raw[mat1]
    if not isinstance(src, fx.Node) or src not in w.dyn or _mentions(c.raw[mat2], w.dyn):
        raise _unsupported(c.n, "only the left matrix may depend on the input (x @ constant)")
    if c.op == "addmm" and _mentions(c.raw["self"], w.dyn):
        raise _unsupported(c.n, "the added term depends on the input")
    m, x_val = c.a[mat2], w.val[src]
    if not isinstance(m, Tensor) or m.ndim != 2 or x_val.ndim < 2 or (c.op != "matmul" and x_val.ndim != 2):
        raise _unsupported(c.n, "only a batch of vectors times a constant matrix is supported")
    if src in w.folded:
        w.folded[c.n] = w.folded[src]
    weight = w.b.tensor(m.t().contiguous())
    alpha, beta = c.a.get("alpha", 1), c.a.get("beta", 1)
    if alpha != 1:
        weight = weight * float(alpha)
    bias = _addmm_bias(c, m.shape[1], float(beta)) if c.op == "addmm" else None
    return w.b.add(
        c.n.name, "linear", [w.dyn[src]], weight=weight, bias=None if bias is None else w.b.tensor(bias)
    )


def _addmm_bias(c: _Call, out: int, beta: float) -> Tensor:
    bias = torch.as_tensor(c.a["self"])
    while bias.ndim > 1 and bias.shape[0] == 1:
        bias = bias[0]
    if bias.ndim > 1 or (bias.ndim == 1 and bias.shape[0] not in (1, out)):
        raise _unsupported(
            c.n, f"the added term of shape {tuple(c.a['self'].shape)} is not a bias per output"
        )
    bias = bias.expand(out)
    return bias if beta == 1 else bias.to(torch.float64) * beta


def _h_conv(w: _Walk, c: _Call) -> str:
    x = w.first(c)
    weight = c.a["weight"]
    if c.a.get("transposed", False):
        raise _unsupported(c.n, "transposed convolution")
    if not isinstance(weight, Tensor) or weight.ndim != 4 or w.val[w.lead(c)].ndim != 4:
        raise _unsupported(c.n, "only 2-D convolution of [batch, C, H, W] inputs is supported")
    if c.op == "convolution" or c.op == "_convolution":
        if any(int(p) for p in c.a.get("output_padding", [])):
            raise _unsupported(c.n, "output_padding")
    dilation = _pair(c.a.get("dilation", 1))
    padding = _conv_padding(c.n, c.a.get("padding", 0), tuple(weight.shape[2:]), dilation, _KIND)
    return _conv_node(
        w.b,
        c.n.name,
        x,
        weight,
        c.a.get("bias"),
        c.a.get("stride", 1),
        padding,
        dilation,
        c.a.get("groups", 1),
    )


_BATCHNORMS = (
    "batch_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_batch_norm_no_update",
    "_native_batch_norm_legit_no_training",
)


def _batchnorm_training(n: fx.Node) -> RobustCertError:
    return RobustCertError(
        f"node {n.name!r} ({_aten_name(n)}) runs batch norm in training mode; call model.eval() before "
        "exporting the model"
    )


def _h_batchnorm(w: _Walk, c: _Call) -> str:
    x = w.first(c)
    if c.a.get("training", False):
        raise _batchnorm_training(c.n)
    return _bn_node(
        w.b,
        c.n.name,
        x,
        c.a.get("running_mean"),
        c.a.get("running_var"),
        c.a.get("weight"),
        c.a.get("bias"),
        c.a.get("eps", 1e-5),
    )


def _h_avgpool(w: _Walk, c: _Call) -> str:
    return _avgpool_node(
        w.b,
        c.n.name,
        w.first(c),
        c.a["kernel_size"],
        c.a.get("stride"),
        c.a.get("padding", 0),
        c.a.get("ceil_mode", False),
        c.a.get("count_include_pad", True),
        c.a.get("divisor_override"),
    )


def _adaptive_kernel(w: _Walk, c: _Call) -> tuple[int, int]:
    src = w.val[w.lead(c)]
    h, wd = src.shape[-2:]
    size = list(c.a["output_size"])
    oh, ow = (h if size[0] is None else int(size[0])), (wd if size[-1] is None else int(size[-1]))
    if src.ndim == 4 and oh and ow and h % oh == 0 and wd % ow == 0:
        return h // oh, wd // ow
    raise _unsupported(c.n, f"output size {(oh, ow)} does not divide the input size {(h, wd)}")


def _h_adaptive_avgpool(w: _Walk, c: _Call) -> str:
    x = w.first(c)
    k = _adaptive_kernel(w, c)
    return _avgpool_node(w.b, c.n.name, x, k, k, 0, False, True, None)


def _h_mean(w: _Walk, c: _Call) -> str:
    """The mean over H and W of [batch, C, H, W] (a global average pool, as decompositions write
    AdaptiveAvgPool2d(1)): an avgpool2d over the whole map, reshaped to [C] unless keepdim."""
    x = w.first(c)
    src = w.val[w.lead(c)]
    dims = sorted(int(d) % src.ndim for d in (c.a.get("dim") or []))
    if src.ndim != 4 or dims != [2, 3] or c.a.get("dtype") is not None:
        raise _unsupported(c.n, "only the mean over the two spatial dims of [batch, C, H, W] is supported")
    k = (int(src.shape[2]), int(src.shape[3]))
    if c.a.get("keepdim", False):
        return _avgpool_node(w.b, c.n.name, x, k, k, 0, False, True, None)
    pool = _avgpool_node(w.b, f"{c.n.name}.pool", x, k, k, 0, False, True, None)
    return w.b.add(c.n.name, "reshape", [pool], shape=(int(src.shape[1]),))


def _h_maxpool(w: _Walk, c: _Call) -> str:
    x = w.first(c)
    in_shape = tuple(w.val[w.lead(c)].shape[1:])
    if c.op == "adaptive_max_pool2d":
        k = _adaptive_kernel(w, c)
        return _maxpool_node(w.b, c.n, x, in_shape, k, k, 0, 1, False, _KIND)
    return _maxpool_node(
        w.b,
        c.n,
        x,
        in_shape,
        c.a["kernel_size"],
        c.a.get("stride"),
        c.a.get("padding", 0),
        c.a.get("dilation", 1),
        c.a.get("ceil_mode", False),
        _KIND,
    )


_ARITH = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}


def _h_arith(w: _Walk, c: _Call) -> str:
    """x+c, x-c, c-x, x*c, x/c, -x and x+y, x-y of two input-dependent tensors (via the fx helper)."""
    if c.op == "neg":
        return _arith(w.b, c.n, "neg", (c.raw["self"],), {}, w.val, w.dyn, _KIND)
    if c.a.get("rounding_mode") is not None:
        raise _unsupported(c.n, "rounding division is not affine")
    alpha = c.a.get("alpha", 1)
    if c.op == "rsub":  # other - alpha * self
        if alpha != 1:
            raise _unsupported(c.n, "rsub with alpha != 1")
        return _arith(w.b, c.n, "sub", (c.raw["other"], c.raw["self"]), {}, w.val, w.dyn, _KIND)
    normalize = _normalize(w, c)
    if normalize is not None:
        return normalize
    kwargs = {"alpha": alpha} if c.op in ("add", "sub") else {}
    return _arith(w.b, c.n, _ARITH[c.op], (c.raw["self"], c.raw["other"]), kwargs, w.val, w.dyn, _KIND)


_NORMALIZE = "robustcert.models.normalize.Normalize"
_NORMALIZE_TS = re.compile(r"__torch__\.robustcert\.models\.normalize\.(___torch_mangle_\d+\.)?Normalize")


def normalize_paths_of_program(program: Any) -> set[str]:
    """Module paths of robustcert ``Normalize`` layers, from the ``nn_module_stack`` of the nodes."""
    paths: set[str] = set()
    for n in program.graph.nodes:
        for path, cls in (n.meta.get("nn_module_stack") or {}).values():
            name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
            if name == _NORMALIZE:
                paths.add(str(path))
    return paths


def normalize_paths_of_script(module: torch.jit.ScriptModule) -> set[str]:
    """Module paths of robustcert ``Normalize`` layers in a TorchScript module (by TorchScript type)."""
    return {
        name
        for name, sub in module.named_modules()
        if _NORMALIZE_TS.fullmatch(str(sub._c._type().qualified_name()))
    }


def _normalize(w: _Walk, c: _Call) -> str | None:
    """robustcert's Normalize, exported as ``div(sub(x, mean), std)`` of its ``mean``/``std`` buffers,
    as the one normalize node the torch.fx front end emits for it: the sub is deferred (aliased to x)
    and the div emits it. None when the call is not part of that pattern. The node's params are the
    values the program uses, so the graph computes the same either way."""
    n = c.n
    if not w.normalize_paths or w.val[n].ndim < 2:
        return None
    numerator = c.raw.get("self")
    if c.op == "div" and numerator in w.normalize_mean:
        std = _channel_vector(w, n, c.a["other"])
        if std is None:  # checked when the sub was deferred
            raise RobustCertError(f"internal: node {n.name!r} lost its per-channel divisor")
        return w.b.add(n.name, "normalize", [w.dyn[numerator]], mean=w.normalize_mean[numerator], std=std)
    users = list(n.users)
    if c.op != "sub" or c.a.get("alpha", 1) != 1 or len(users) != 1 or _packet(users[0]) != "div":
        return None
    div = users[0]
    divisor = div.args[1] if len(div.args) == 2 else None
    if div.args[0] is not n or div.kwargs or not isinstance(divisor, fx.Node) or divisor not in w.val:
        return None
    path = _buffer_path(w, c.raw["other"], "mean")
    if path is None or _buffer_path(w, divisor, "std") != path or divisor in w.dyn:
        return None
    mean = _channel_vector(w, n, c.a["other"])
    if not isinstance(numerator, fx.Node) or numerator not in w.dyn or mean is None:
        return None
    if _channel_vector(w, n, w.val[divisor]) is None:
        return None
    w.normalize_mean[n] = mean
    return w.dyn[numerator]


def _buffer_path(w: _Walk, raw: Any, leaf: str) -> str | None:
    """The Normalize module path P when ``raw`` is the buffer ``P.<leaf>`` of a Normalize layer, or a
    constant computed from it alone (a view); else None."""
    while isinstance(raw, fx.Node) and raw.op == "call_function" and raw not in w.dyn:
        inputs = raw.all_input_nodes
        if len(inputs) != 1:
            return None
        raw = inputs[0]
    if not isinstance(raw, fx.Node) or raw.op != "placeholder":
        return None
    target = w.targets.get(raw.name, "")
    path = target[: -len(leaf) - 1] if target.endswith("." + leaf) else "" if target == leaf else None
    return path if path in w.normalize_paths else None


def _channel_vector(w: _Walk, n: fx.Node, value: Any) -> Tensor | None:
    """``value`` as a float64 vector [C] when it is a per-channel constant for node n's tensor
    (shape [1, C, 1, ...] against [B, C, ...]), else None."""
    out = w.val[n]
    if not isinstance(value, Tensor) or not value.is_floating_point():
        return None
    per = (1, int(out.shape[1])) + (1,) * (out.ndim - 2)
    t = value
    while t.ndim > len(per) and t.shape[0] == 1:
        t = t[0]
    t = t.reshape((1,) * (len(per) - t.ndim) + tuple(t.shape)) if t.ndim <= len(per) else t
    if tuple(t.shape) != per:
        return None
    return w.b.tensor(t.flatten())


def _h_softmax(w: _Walk, c: _Call) -> str:
    w.first(c)
    op = "log_softmax" if "log" in c.op else "softmax"
    return _softmax(w.b, c.n, op, w.lead(c), c.a["dim"], w.val, w.dyn, _KIND)


def _h_expand(w: _Walk, c: _Call) -> str:
    x = w.first(c)
    if tuple(w.val[c.n].shape) != tuple(w.val[w.lead(c)].shape):
        raise _unsupported(c.n, "expand that grows the tensor")
    return x


def _register() -> dict[str, Handler]:
    groups: list[tuple[tuple[str, ...], Handler]] = [
        (("relu", "sigmoid", "tanh"), _h_unary),
        (("leaky_relu",), _h_leaky),
        (("gelu",), _h_gelu),
        (
            ("clone", "detach", "alias", "contiguous", "lift_fresh_copy", "_to_copy", "to", "dropout")
            + ("native_dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"),
            _h_identity,
        ),
        (
            ("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze")
            + ("view_as", "reshape_as"),
            _h_reshape,
        ),
        (("permute",), _h_permute),
        (("transpose", "t", "swapaxes", "swapdims"), _h_transpose),
        (("slice",), _h_slice),
        (("narrow",), _h_narrow),
        (("select",), _h_select),
        (("cat", "concat", "concatenate"), _h_cat),
        (("constant_pad_nd", "pad"), _h_pad),
        (("linear",), _h_linear),
        (("addmm", "mm", "matmul"), _h_matmul),
        (("conv2d", "convolution", "_convolution"), _h_conv),
        (_BATCHNORMS, _h_batchnorm),
        (("avg_pool2d",), _h_avgpool),
        (("adaptive_avg_pool2d", "_adaptive_avg_pool2d"), _h_adaptive_avgpool),
        (("mean",), _h_mean),
        (("max_pool2d", "max_pool2d_with_indices", "adaptive_max_pool2d"), _h_maxpool),
        (("add", "sub", "rsub", "mul", "div", "neg"), _h_arith),
        (("_softmax", "softmax", "_log_softmax", "log_softmax"), _h_softmax),
        (("expand",), _h_expand),
    ]
    return {op: handler for ops, handler in groups for op in ops}


_HANDLERS: dict[str, Handler] = _register()

__all__ = [
    "EXPORT",
    "EXPORT_SUPPORTED",
    "TORCHSCRIPT",
    "export_supported_text",
    "graph_from_exported_program",
    "graph_from_torchscript",
    "load_exported",
    "sniff_format",
    "untrusted_error",
]
