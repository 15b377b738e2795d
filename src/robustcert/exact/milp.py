"""Exact verification of small ReLU networks by mixed-integer linear programming (Tjeng et al., 2019).

For one example with label ``y`` and an input box ``D`` (``B_inf(x, eps) ∩ [0, 1]^d``, or an explicit box),
we solve, for every class ``j ≠ y``, the MILP

    minimise  f_y(x') − f_j(x')   over x' ∈ D,

where the network is encoded exactly: affine nodes as affine expressions (their maps are read off the graph
IR by evaluating each op on the zero vector and on the basis vectors, in float64), and every ReLU
``a = max(z, 0)`` with pre-activation bounds ``l < 0 < u`` by the big-M constraints

    a ≥ z,  a ≥ 0,  a ≤ u·δ,  a ≤ z − l·(1 − δ),  δ ∈ {0, 1};

ReLUs with ``u ≤ 0`` (stably inactive) become 0 and those with ``l ≥ 0`` (stably active) pass ``z`` through,
without a binary. Any valid bounds keep the MILP exact; tighter ones only make it smaller (fewer binaries)
and its relaxation stronger.

Where the big-M bounds come from, and why they are valid
--------------------------------------------------------
The MILP holds ``z`` as an affine expression ``A v + c`` over its variables (the input box and the
outputs of earlier unstable ReLUs, each with its own bounds), composed in float64. ``l, u`` are the
intersection of two bounds, each valid for every value ``z`` takes on D:

1. interval arithmetic over that expression and the variables' bounds;
2. (``tighten_bounds``, the default) the certified CROWN interval of the same graph node from
   :func:`robustcert.bounds.api.box_bounds` — the package's one backward substitution over the same
   float64 graph and box, which holds for the real-valued network including the rounding of its own
   computation (the ``SAFETY_REL`` margin of :mod:`robustcert.bounds._soundness`).

Both are then widened by ``w = 1e-9 · (|A| |v|_max + |c|) + 1e-12``, a relative 1e-9 of the magnitudes
involved. ``w`` covers the float64 rounding of the interval arithmetic in (1), and, for (2), the
difference between the real value of ``z`` and the MILP's expression of it (composed in float64: a few
ulps of the same magnitudes, about 1e-16 relative). Each widened bound therefore contains the MILP's
own ``z`` on D, so their intersection does, and the big-M constraints cut off no feasible point. The
lower/upper bounds of each class's margin used for ``decision_only`` and for ``tolerance`` below come
the same way (interval arithmetic ∩ CROWN's certified margin bounds, widened by ``w``).

How a verdict is kept sound
---------------------------
* HiGHS works in float64 with tolerances (primal feasibility 1e-7, integrality 1e-6). Tolerance violations
  *enlarge* the feasible set, which can only lower the optimum, i.e. err on the safe side.
* For every class we keep HiGHS' **dual bound** (``res.mip_dual_bound``), a lower bound on the optimum even
  when the solve stopped with a gap or at the time limit — never the primal value.
* ``"robust"`` needs every class's lower bound to exceed ``tolerance = 1e-6 · (1 + scale)``, where ``scale`` is
  the largest absolute interval bound of the margins over D; that covers residual LP round-off in the dual
  bound. Margins proven only in ``(0, tolerance]`` give ``"unknown"``.
* ``"counterexample"`` is only reported after the candidate input (snapped into D in the model's dtype) is
  run through the real torch model and its margin really is ``< 0``.
* The MILP is exact for the network in real arithmetic with the model's (float32) weights read in float64;
  it does not model float32 rounding inside the torch forward pass.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from robustcert.bounds.api import box_bounds
from robustcert.errors import RobustCertError
from robustcert.exact._solver_output import solver_output
from robustcert.models.modes import eval_mode
from robustcert.validation import check_eps

_WIDEN_REL = 1e-9
_WIDEN_ABS = 1e-12
_ROBUST_TOL_REL = 1e-6

Interval = tuple[np.ndarray, np.ndarray]  # lower and upper bounds of a flat value


@dataclass
class ExactResult:
    """Outcome of :func:`exact_margin` for one example.

    * ``status``: ``"robust"`` (every ``f_y − f_j > 0`` on D is proven, see the module docstring),
      ``"counterexample"`` (``counterexample`` is in D and the torch model misclassifies it) or ``"unknown"``.
    * ``min_margin``: the proven minimum of ``min_j (f_y − f_j)`` over D — the solver's lower bound, taken
      only when the lower and upper bounds agree within the gap tolerance — or ``None`` (time-out / gap).
    * ``lower_bound`` / ``upper_bound``: a valid lower bound on that minimum (−inf if none) and the best
      objective value found by the solver (+inf if none).
    * ``class_lower`` / ``class_upper``: the same per class, length K, ``+inf`` at ``y``.
    * ``argmin``: the solver's best input (snapped into D), shape of ``x``; ``argmin_margin`` its margin by
      a torch forward pass.
    """

    status: str
    min_margin: float | None
    lower_bound: float
    upper_bound: float
    class_lower: list[float]
    class_upper: list[float]
    counterexample: torch.Tensor | None
    argmin: torch.Tensor | None
    argmin_margin: float | None
    tolerance: float
    seconds: float
    num_binaries: int
    solver_status: dict[int, str] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.status == "robust"


# --------------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Expr:
    """A flat node value ``A @ v + c`` over the MILP variables (A has as many columns as existed then)."""

    A: np.ndarray  # [n, nv_at_creation]
    c: np.ndarray  # [n]


class _Encoder:
    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lb: list[float] = list(lo)
        self.ub: list[float] = list(hi)
        self.integer: list[int] = [0] * len(lo)
        self.rows: list[np.ndarray] = []  # dense rows, padded at assembly
        self.row_lb: list[float] = []
        self.row_ub: list[float] = []
        self.num_binaries = 0

    @property
    def nv(self) -> int:
        return len(self.lb)

    def pad(self, A: np.ndarray) -> np.ndarray:
        if A.shape[1] == self.nv:
            return A
        out = np.zeros((A.shape[0], self.nv))
        out[:, : A.shape[1]] = A
        return out

    def bounds(self, e: _Expr, given: Interval | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Valid bounds of an expression over the variable box: interval arithmetic, intersected with the
        certified interval ``given`` of the same value (if any); both widened against float64 rounding by
        a relative ``_WIDEN_REL`` of the magnitudes involved plus ``_WIDEN_ABS`` (module docstring)."""
        lb = np.asarray(self.lb[: e.A.shape[1]])
        ub = np.asarray(self.ub[: e.A.shape[1]])
        mid, rad = (lb + ub) / 2, (ub - lb) / 2
        absA = np.abs(e.A)
        centre = e.A @ mid + e.c
        radius = absA @ rad
        widen = _WIDEN_REL * (absA @ np.abs(mid) + radius + np.abs(e.c)) + _WIDEN_ABS
        low, up = centre - radius - widen, centre + radius + widen
        if given is not None:
            low, up = np.maximum(low, given[0] - widen), np.minimum(up, given[1] + widen)
        return low, up

    def new_var(self, lo: float, hi: float, integer: bool = False) -> int:
        self.lb.append(lo)
        self.ub.append(hi)
        self.integer.append(1 if integer else 0)
        return self.nv - 1

    def add_row(self, coeffs: np.ndarray, lo: float, hi: float) -> None:
        self.rows.append(coeffs)
        self.row_lb.append(lo)
        self.row_ub.append(hi)

    def relu(self, e: _Expr, given: Interval | None) -> _Expr:
        """Encode ``max(e, 0)`` (big-M with a binary where its bounds straddle 0) and return its value."""
        low, up = self.bounds(e, given)
        n = e.A.shape[0]
        rows_A: list[np.ndarray] = []
        rows_c = np.zeros(n)
        for k in range(n):
            if up[k] <= 0:  # stably inactive
                rows_A.append(np.zeros(0))
            elif low[k] >= 0:  # stably active
                rows_A.append(e.A[k])
                rows_c[k] = e.c[k]
            else:
                a = self.new_var(0.0, float(up[k]))
                d = self.new_var(0.0, 1.0, integer=True)
                self.num_binaries += 1
                z = e.A[k]
                # a - z >= c
                r = np.zeros(self.nv)
                r[: z.size] = -z
                r[a] = 1.0
                self.add_row(r, float(e.c[k]), math.inf)
                # a - z - l*d <= c - l
                r = np.zeros(self.nv)
                r[: z.size] = -z
                r[a] = 1.0
                r[d] = -float(low[k])
                self.add_row(r, -math.inf, float(e.c[k] - low[k]))
                # a - u*d <= 0
                r = np.zeros(self.nv)
                r[a] = 1.0
                r[d] = -float(up[k])
                self.add_row(r, -math.inf, 0.0)
                unit = np.zeros(self.nv)
                unit[a] = 1.0
                rows_A.append(unit)
        A = np.zeros((n, self.nv))
        for k, row in enumerate(rows_A):
            A[k, : row.size] = row
        return _Expr(A, rows_c)

    def constraints(self) -> LinearConstraint | None:
        if not self.rows:
            return None
        mat = np.zeros((len(self.rows), self.nv))
        for i, r in enumerate(self.rows):
            mat[i, : r.size] = r
        return LinearConstraint(sparse.csr_array(mat), np.asarray(self.row_lb), np.asarray(self.row_ub))


def _node_float64(node: Any) -> Any:
    """A copy of ``node`` whose floating tensor params are float64 (so basis evaluations are exact)."""
    params = {
        k: (v.detach().double() if isinstance(v, torch.Tensor) and torch.is_floating_point(v) else v)
        for k, v in dict(node.params).items()
    }
    return type(node)(node.name, node.op, tuple(node.inputs), params)


def _affine_map(
    spec: Any, node: Any, in_shapes: list[tuple[int, ...]]
) -> tuple[list[np.ndarray], np.ndarray]:
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


def _check_relu_network(graph: Any, ops: dict[str, Any]) -> None:
    for node in graph.nodes:
        spec = ops.get(node.op)
        if node.op != "relu" and (spec is None or not spec.is_affine):
            raise RobustCertError(
                f"exact MILP supports ReLU networks only; node {node.name} has op {node.op}"
            )


def _encode(
    graph: Any, ops: dict[str, Any], lo: np.ndarray, hi: np.ndarray, given: dict[str, Interval]
) -> tuple[_Encoder, _Expr]:
    """The MILP of the graph over the box [lo, hi]; ``given`` holds certified intervals of (some) ReLU
    inputs, intersected with the encoder's own interval bounds for the big-M constants."""
    enc = _Encoder(lo, hi)
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.no_grad():
        probe = torch.as_tensor(((lo + hi) / 2).reshape(1, *graph.input_shape), dtype=torch.float64)
        graph64 = type(graph)([_node_float64(n) for n in graph.nodes], graph.output, graph.input_shape)
        values = graph64.forward_all(probe)
    for name, v in values.items():
        shapes[name] = tuple(v.shape[1:])
    exprs: dict[str, _Expr] = {}
    for node in graph64.nodes:
        if node.op == "input":
            exprs[node.name] = _Expr(np.eye(lo.size), np.zeros(lo.size))
            continue
        if node.op == "relu":
            exprs[node.name] = enc.relu(exprs[node.inputs[0]], given.get(node.inputs[0]))
            continue
        jacs, offset = _affine_map(ops[node.op], node, [shapes[i] for i in node.inputs])
        A = np.zeros((offset.size, enc.nv))
        c = offset.copy()
        for J, inp in zip(jacs, node.inputs, strict=True):
            e = exprs[inp]
            A[:, : e.A.shape[1]] += J @ e.A
            c += J @ e.c
        exprs[node.name] = _Expr(A, c)
    return enc, exprs[graph.output]


def _margin_spec(y: int, num_classes: int) -> torch.Tensor:
    """Rows ``e_y - e_j`` then ``e_j - e_y`` for the classes j != y, in order: [1, 2(K-1), K]."""
    eye = torch.eye(num_classes, dtype=torch.float64)
    rows = eye[y] - eye[[j for j in range(num_classes) if j != y]]
    return torch.cat([rows, -rows]).unsqueeze(0)


def _certified(
    graph: Any, lo: np.ndarray, hi: np.ndarray, y: int, num_classes: int
) -> tuple[dict[str, Interval], dict[int, Interval]]:
    """CROWN bounds of robustcert.bounds over the box: the ReLU inputs' intervals (flat, by node) and
    each class's margin interval; valid for the real-valued network, rounding included."""
    box = [torch.as_tensor(b.reshape(1, *graph.input_shape), dtype=torch.float64) for b in (lo, hi)]
    res = box_bounds(graph, box[0], box[1], _margin_spec(y, num_classes))
    pre = {
        name: (b_lo[0].flatten().numpy(), b_hi[0].flatten().numpy())
        for name, (b_lo, b_hi) in res.activation_inputs.items()
    }
    others = [j for j in range(num_classes) if j != y]
    spec = res.spec_lower[0].numpy()
    margins = {
        j: (spec[i : i + 1], -spec[len(others) + i : len(others) + i + 1]) for i, j in enumerate(others)
    }
    return pre, margins


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


def _as_tensor(v: Any, name: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        try:
            v = torch.as_tensor(v)
        except (TypeError, ValueError, RuntimeError):
            raise RobustCertError(f"{name} must be a tensor") from None
    if not torch.is_floating_point(v):
        v = v.double()
    if bool(torch.isnan(v).any()):
        raise RobustCertError(f"{name} contains NaN values; pass finite inputs")
    return v


def _domain(
    x: torch.Tensor | None, eps: float | None, box: tuple[Any, Any] | None
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """Return (lo, hi) in float64 and a reference tensor giving the shape/dtype of the model input."""
    if box is not None:
        if eps is not None:
            raise RobustCertError("give either eps (a ball around x) or box=(lo, hi), not both")
        try:
            lo_t, hi_t = box
        except (TypeError, ValueError):
            raise RobustCertError("box must be a pair (lo, hi) of tensors shaped like x") from None
        lo_t, hi_t = _as_tensor(lo_t, "box lo"), _as_tensor(hi_t, "box hi")
        if lo_t.shape != hi_t.shape:
            raise RobustCertError(f"box lo and hi shapes differ: {tuple(lo_t.shape)} vs {tuple(hi_t.shape)}")
        if x is not None and tuple(x.shape) != tuple(lo_t.shape):
            raise RobustCertError(f"box shape {tuple(lo_t.shape)} does not match x shape {tuple(x.shape)}")
        lo, hi = lo_t.double().numpy().ravel(), hi_t.double().numpy().ravel()
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise RobustCertError("box bounds must be finite")
        if (lo > hi).any():
            raise RobustCertError("box lo must be <= hi everywhere")
        ref = x if x is not None else lo_t.float()
        return lo, hi, ref
    if x is None:
        raise RobustCertError("pass x with eps, or box=(lo, hi)")
    if eps is None:
        raise RobustCertError("eps is required when no box is given")
    e = check_eps(eps)
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise RobustCertError("x has values outside [0, 1]; inputs must be in [0, 1]")
    x64 = x.double().numpy().ravel()
    return np.clip(x64 - e, 0.0, 1.0), np.clip(x64 + e, 0.0, 1.0), x


def _snap(point: np.ndarray, lo: np.ndarray, hi: np.ndarray, ref: torch.Tensor) -> torch.Tensor:
    """The solver's point clipped into [lo, hi] and rounded to ``ref``'s dtype without leaving the box."""
    p = torch.as_tensor(np.clip(point, lo, hi).reshape(ref.shape))
    lo_t = torch.as_tensor(lo.reshape(ref.shape))
    hi_t = torch.as_tensor(hi.reshape(ref.shape))
    out = p.to(ref.dtype)
    out = torch.where(out.double() > hi_t, torch.nextafter(out, torch.full_like(out, -math.inf)), out)
    out = torch.where(out.double() < lo_t, torch.nextafter(out, torch.full_like(out, math.inf)), out)
    return out


def exact_margin(
    model: Any,
    x: torch.Tensor | None,
    y: int | torch.Tensor,
    eps: float | None = None,
    time_limit: float = 60.0,
    box: tuple[Any, Any] | None = None,
    mip_rel_gap: float = 1e-6,
    decision_only: bool = False,
    tighten_bounds: bool = True,
    log_path: Path | None = None,
) -> ExactResult:
    """Exact minimum of ``f_y − max_{j≠y} f_j`` over ``B_inf(x, eps) ∩ [0, 1]`` (or over ``box``, used as
    given) for a ReLU network, by one MILP per class ``j ≠ y`` (HiGHS via ``scipy.optimize.milp``).

    ``model`` is a ``torch.nn.Module`` or a ``robustcert.graph.Graph``; ``x`` is one example with a batch
    dimension (``[1, *input_shape]``); ``box=(lo, hi)`` replaces ``eps`` (then ``x`` may be None).
    ``time_limit`` (seconds) is shared by all classes; classes whose solve is cut short keep their dual
    bound. With ``decision_only`` the solve stops at the first counterexample and skips classes already
    proven by interval bounds: faster as a complete verifier, but ``min_margin`` is then often None.
    ``tighten_bounds`` (default) intersects the interval big-M bounds with the certified CROWN bounds of
    :mod:`robustcert.bounds`, which shrinks the MILP a lot on deeper nets; False gives the plain interval
    encoding (same answer, slower).
    Solver output never reaches stdout: HiGHS writes to file descriptor 1 from C, so fd 1 is redirected
    around each solve; with ``log_path`` HiGHS' log (and one header line per class) is appended to that
    file, without it the output is discarded.
    Guarantees (see the module docstring): ``"robust"`` only if every class's proven lower bound
    exceeds ``tolerance``; ``"counterexample"`` only if the torch model misclassifies ``counterexample``,
    which lies in the input domain. Raises RobustCertError on bad input or an op other than affine/ReLU.
    """
    from robustcert.graph import to_graph  # late import: graph depends on nothing here
    from robustcert.graph.ops import OPS

    start = time.monotonic()
    if not (isinstance(time_limit, int | float) and time_limit > 0 and not math.isnan(time_limit)):
        raise RobustCertError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
    if not (0 <= mip_rel_gap < 1):
        raise RobustCertError(f"mip_rel_gap must be in [0, 1), got {mip_rel_gap!r}")
    if x is not None:
        x = _as_tensor(x, "x")
        if x.ndim < 2 or x.shape[0] != 1:
            raise RobustCertError(
                f"exact_margin verifies one example: pass x of shape [1, *input_shape], got {tuple(x.shape)} "
                "(use exact_margins for a batch)"
            )
    lo, hi, ref = _domain(x, eps, box)
    if ref.ndim < 2 or ref.shape[0] != 1:
        raise RobustCertError(f"box tensors must have shape [1, *input_shape], got {tuple(ref.shape)}")
    input_shape = tuple(int(s) for s in ref.shape[1:])

    is_module = isinstance(model, nn.Module)
    if is_module:
        param = next(iter(model.parameters()), None)
        if param is not None and torch.is_floating_point(param):
            ref = ref.to(param.dtype)
    with eval_mode(model) if is_module else contextlib.nullcontext():
        graph = to_graph(model, input_shape)

        def forward(t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(t) if is_module else graph.forward(t)

        try:
            logits0 = forward(torch.as_tensor(((lo + hi) / 2).reshape(ref.shape), dtype=ref.dtype))
        except RuntimeError as exc:
            raise RobustCertError(
                f"model failed on an input of shape {input_shape}: {str(exc).splitlines()[0]}"
            ) from None
        if logits0.ndim != 2:
            raise RobustCertError(f"model must return logits [B, K], got shape {tuple(logits0.shape)}")
        num_classes = int(logits0.shape[1])
        yi = _label(y, num_classes)
        _check_relu_network(graph, OPS)
        pre, margins = _certified(graph, lo, hi, yi, num_classes) if tighten_bounds else ({}, {})
        enc, out = _encode(graph, OPS, lo, hi, pre)
        dom = _Domain(lo, hi, ref, forward)
        settings = _Settings(start, time_limit, mip_rel_gap, decision_only, log_path)
        return _solve(enc, out, yi, num_classes, margins, dom, settings)


def _label(y: int | torch.Tensor, num_classes: int) -> int:
    value: Any = y
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise RobustCertError(f"y must be one label for one example, got {value.numel()} values")
        value = value.reshape(-1)[0].item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise RobustCertError(f"y must be an integer label, got {y!r}")
    if not 0 <= int(value) < num_classes:
        raise RobustCertError(
            f"label y must be in [0, {num_classes - 1}] for this {num_classes}-class model, got {value}"
        )
    return int(value)


def _margin_of(forward: Any, point: torch.Tensor, y: int) -> float:
    logits = forward(point)[0].double()
    others = torch.cat([logits[:y], logits[y + 1 :]])
    return float(logits[y] - others.max())


@dataclass(frozen=True)
class _Domain:
    """The input box (flat float64), a tensor giving the model input's shape and dtype, the model."""

    lo: np.ndarray
    hi: np.ndarray
    ref: torch.Tensor
    forward: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Settings:
    start: float
    time_limit: float
    mip_rel_gap: float
    decision_only: bool
    log_path: Path | None


def _run_milp(c: np.ndarray, problem: dict[str, Any], budget: float, settings: _Settings, what: str) -> Any:
    """One HiGHS solve with its output kept off stdout (to ``settings.log_path``, or discarded)."""
    options = {
        "time_limit": max(budget, 1e-3),
        "mip_rel_gap": settings.mip_rel_gap,
        "presolve": True,
        "disp": settings.log_path is not None,
    }
    with solver_output(settings.log_path):
        if settings.log_path is not None:
            os.write(1, f"[robustcert.exact] {what}, time budget {budget:.3g} s\n".encode())
        return milp(c, **problem, options=options)


def _solve(
    enc: _Encoder,
    out: _Expr,
    y: int,
    num_classes: int,
    margins: dict[int, Interval],
    dom: _Domain,
    settings: _Settings,
) -> ExactResult:
    A = enc.pad(out.A)
    problem = {
        "integrality": np.asarray(enc.integer),
        "bounds": Bounds(np.asarray(enc.lb), np.asarray(enc.ub)),
        "constraints": enc.constraints(),
    }
    diffs = {j: (A[y] - A[j], float(out.c[y] - out.c[j])) for j in range(num_classes) if j != y}
    lbs, ubs = {}, {}
    for j, (row, const) in diffs.items():
        lj, uj = enc.bounds(_Expr(row[None, :], np.array([const])), margins.get(j))
        lbs[j], ubs[j] = float(lj[0]), float(uj[0])
    scale = max(max(abs(v) for v in lbs.values()), max(abs(v) for v in ubs.values()))
    tol = _ROBUST_TOL_REL * (1.0 + scale)

    # classes most likely to be violated first (smallest interval lower bound)
    order = sorted(diffs, key=lambda j: lbs[j])
    class_lower = [math.inf] * num_classes
    class_upper = [math.inf] * num_classes
    statuses: dict[int, str] = {}
    best_point: torch.Tensor | None = None
    best_point_margin = math.inf
    counterexample: torch.Tensor | None = None
    for i, j in enumerate(order):
        row, const = diffs[j]
        class_lower[j] = -math.inf
        if settings.decision_only and lbs[j] > tol:  # the certified bounds alone prove this class
            class_lower[j] = lbs[j]
            statuses[j] = "interval bound"
            continue
        remaining = settings.time_limit - (time.monotonic() - settings.start)
        if remaining <= 0 or (settings.decision_only and counterexample is not None):
            statuses[j] = "not solved (time limit)" if remaining <= 0 else "not solved (counterexample found)"
            continue
        what = f"class {j} vs label {y}: {enc.num_binaries} binaries"
        res = _run_milp(row, problem, remaining / (len(order) - i), settings, what)
        statuses[j] = str(res.message)
        dual = getattr(res, "mip_dual_bound", None)
        if res.status == 2:  # infeasible: cannot happen for a non-empty box unless numerics failed
            statuses[j] = "infeasible (numerical trouble)"
            continue
        if dual is not None and np.isfinite(dual):
            class_lower[j] = max(float(dual) + const, lbs[j])
        elif res.status == 0 and res.fun is not None:  # pure LP (no binaries): the optimum is a bound
            class_lower[j] = max(float(res.fun) + const, lbs[j])
        if res.x is not None and res.fun is not None:
            class_upper[j] = float(res.fun) + const
            point = _snap(np.asarray(res.x[: dom.lo.size]), dom.lo, dom.hi, dom.ref)
            m = _margin_of(dom.forward, point, y)
            if m < best_point_margin:
                best_point, best_point_margin = point, m
            if m < 0 and counterexample is None:
                counterexample = point

    others = [j for j in range(num_classes) if j != y]
    lower = min(class_lower[j] for j in others)
    upper = min(class_upper[j] for j in others)
    gap_tol = tol + settings.mip_rel_gap * abs(upper) if math.isfinite(upper) else math.inf
    min_margin = lower if math.isfinite(lower) and math.isfinite(upper) and upper - lower <= gap_tol else None
    if counterexample is not None:
        status = "counterexample"
    elif lower > tol:
        status = "robust"
    else:
        status = "unknown"
    return ExactResult(
        status=status,
        min_margin=min_margin,
        lower_bound=lower,
        upper_bound=upper,
        class_lower=class_lower,
        class_upper=class_upper,
        counterexample=counterexample,
        argmin=best_point,
        argmin_margin=best_point_margin if best_point is not None else None,
        tolerance=tol,
        seconds=time.monotonic() - settings.start,
        num_binaries=enc.num_binaries,
        solver_status=statuses,
    )


def exact_margins(
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    time_limit: float = 60.0,
    mip_rel_gap: float = 1e-6,
    log_path: Path | None = None,
) -> list[ExactResult]:
    """:func:`exact_margin` for each example of a batch ``x`` ([B, ...]); ``time_limit`` is per example;
    solver output goes to ``log_path`` (appended) or nowhere, never to stdout."""
    y = torch.as_tensor(y).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise RobustCertError(
            f"x has {x.shape[0]} examples but y has {y.shape[0]} labels; pass one label per example"
        )
    return [
        exact_margin(
            model, x[i : i + 1], y[i], eps, time_limit=time_limit, mip_rel_gap=mip_rel_gap, log_path=log_path
        )
        for i in range(x.shape[0])
    ]
