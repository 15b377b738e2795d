"""Exact verification of small ReLU networks by mixed-integer linear programming (Tjeng et al., 2019).

For one example with label ``y`` and an input region ``D`` we solve, for every class ``j ≠ y``, the MILP

    minimise  f_y(x') − f_j(x')   over x' ∈ D,

where the network is encoded exactly: affine nodes as affine expressions (their maps are read off the graph
IR by evaluating each op on the zero vector and on the basis vectors, in float64), and every ReLU
``a = max(z, 0)`` with pre-activation bounds ``l < 0 < u`` by the big-M constraints

    a ≥ z,  a ≥ 0,  a ≤ u·δ,  a ≤ z − l·(1 − δ),  δ ∈ {0, 1};

ReLUs with ``u ≤ 0`` (stably inactive) become 0 and those with ``l ≥ 0`` (stably active) pass ``z`` through,
without a binary. Any valid bounds keep the MILP exact; tighter ones only make it smaller (fewer binaries)
and its relaxation stronger.

The input region
----------------
``D = B_inf(x, eps) ∩ domain``, where ``domain`` is the model's :class:`~robustcert.domain.InputDomain`
(per-channel ``[lo_c, hi_c]``; None means ``[0, 1]``), or an explicit ``box=(lo, hi)`` (intersected with
``domain`` when one is given, used as given otherwise). ``x`` must lie in the domain (else a one-line
RobustCertError), so ``D`` is never empty. ``x ± eps`` is rarely a float64, so ``D`` is rounded twice, each
bound with its exact rounding error (TwoSum): *outward* for the MILP's variable bounds — the MILP's box
contains ``D``, so its minimum is ≤ the minimum over ``D`` — and *inward* for counterexamples — a float
inside the inward box lies in ``D`` exactly.

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
lower bound of each class's margin (``lbs`` in the code) comes the same way (interval arithmetic ∩
CROWN's certified margin bound, widened by ``w``): it is sound without any solver, and exact (up to
``w``) when the MILP has no binaries, since the margin is then affine on the box.

How this method stays sound
---------------------------
**"robust"** needs, for every class ``j ≠ y``, a lower bound ``L_j > 0`` on ``min_D (f_y − f_j)``, where
``L_j`` is the larger of the solver-free bound above and ``dual_j + const_j − slack_j``: HiGHS' proven dual
bound ``dual_j`` (``res.mip_dual_bound``, never the primal value), the objective's constant, minus a
slack (``ExactResult.tolerance`` reports the largest) made of

* **the MIP gap** ``dual_j − min(dual_j, t(primal_j))`` with ``t(u) = u − max(τ, abs_gap, rel_gap · |u|)``.
  HiGHS prunes every node whose LP bound is at least ``t(ub)`` (its "optimality limit"; ``ub`` the
  incumbent's objective value, ``τ`` the MIP feasibility tolerance) and reports as dual bound the least
  bound of the nodes still open — ``ub`` itself once none is left, which may exceed the true minimum by
  up to that gap. ``t`` increases with ``ub`` and ``ub`` only decreases, so every node pruned during the
  solve had a bound ≥ ``t(primal_j)``, ``primal_j`` the final incumbent: the minimum is at least
  ``min(dual_j, t(primal_j))``. Solved to optimality (``dual_j = primal_j``) that is the dual bound minus the
  largest of the absolute gap, the relative gap and ``τ``; stopped with the gap open, the open nodes'
  bound stands. Without an incumbent we still subtract ``max(τ, abs_gap)``. The tolerances are passed to
  HiGHS explicitly (``_HIGHS_TOLERANCES``, ``mip_rel_gap``), so these are the values in force.
* **the LP accuracy** ``τ · (Σ_columns (ub − lb) + Σ_rows activity range)``. A node's bound is the objective
  of a simplex basis HiGHS accepts as optimal with unscaled primal and dual infeasibilities ≤ ``τ``.
  Primal infeasibility (LP points and incumbents violating rows, bounds or integrality by ≤ ``τ``) only
  enlarges the feasible set: node bounds and incumbent values can only come out *lower*, the safe side
  for a lower bound (a lower incumbent only prunes less). A dual infeasibility ≤ ``τ`` on a
  column's or row's reduced cost can make that objective exceed a valid bound by ≤ ``τ`` times the
  range of that column or row activity (Neumaier & Shcherbina 2004); all columns of this MILP are
  boxed, so the sum over the model's columns and rows is finite and covers it.
* **rounding** ``1e-9 · (|dual_j| + |const_j| + |primal_j|) + 1e-12`` for this arithmetic in float64.

What stays trusted is that HiGHS' presolve, cuts and propagation are relaxations within the same ``τ``
(they are designed as such; a branch-and-bound tree cannot be re-checked from outside). A class without a
usable dual bound — solve error, "infeasible" (impossible for a non-empty box: numerical trouble), a
tolerance HiGHS refused, or no ``mip_dual_bound`` in the scipy in use — keeps only its solver-free bound,
so it is "unknown" unless that bound proves it. The MILP is exact for the network in real arithmetic
with the model's weights read in float64: "robust" is about that network, and does not model the
float32 rounding inside the torch forward pass (margins within a few float32 ulps of 0 may differ).

**"counterexample"** needs a confirmed point. Each solve's point is clipped into the inward-rounded
``D``, rounded to the model's dtype (float32 for a float32 model; a float64 model gets a float64 point)
without leaving it, and run through the model itself (the torch module, or the graph when ``model`` is
one) at batch size 1; only ``f_y − max_{j≠y} f_j ≤ 0`` there (a tie counts: it is not robust) makes a
counterexample. The MILP's own objective at its point never decides: the point may violate the MILP by
``τ`` and is computed in float64. A point the forward pass does not confirm leaves the status "unknown"
unless the dual bounds prove "robust"; its class's ``solver_status`` says so. A confirmed counterexample
wins over a "robust" bound, which is about the real-valued network (the two can only disagree within
float32 rounding of a zero margin).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, OptimizeWarning, milp
from torch import nn

from robustcert.bounds.api import box_bounds
from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.exact._solver_output import solver_output
from robustcert.graph.dense import affine_map, float64_graph
from robustcert.models.modes import eval_mode
from robustcert.validation import check_eps

_WIDEN_REL = 1e-9
_WIDEN_ABS = 1e-12
# Passed to HiGHS explicitly, so the slack subtracted from its dual bounds uses the values in force; they
# are HiGHS' defaults, so a scipy that silently dropped them would still solve with these values.
# ``mip_feasibility_tolerance`` is the τ of the module docstring (HiGHS' LP solves inside the MIP use it for
# primal and τ/10 for dual feasibility, and accept bases within τ).
_HIGHS_TOLERANCES = {"mip_abs_gap": 1e-6, "mip_feasibility_tolerance": 1e-6}
_OK_SOLVER_STATUS = (0, 1)  # scipy milp: 0 optimal, 1 iteration/time limit; others have no trusted bound

Interval = tuple[np.ndarray, np.ndarray]  # lower and upper bounds of a flat value


@dataclass
class ExactResult:
    """Outcome of :func:`exact_margin` for one example (see the module docstring for the guarantees).

    * ``status``: ``"robust"`` (``lower_bound > 0``: every ``f_y − f_j > 0`` on D is proven, the solver's
      tolerances subtracted), ``"counterexample"`` (``counterexample`` lies in D and the model itself,
      evaluated in its dtype, has margin ≤ 0 there) or ``"unknown"``.
    * ``min_margin``: the minimum of ``min_j (f_y − f_j)`` over D, as ``lower_bound``, given only when the
      solver closed the gap (``upper_bound − lower_bound ≤ 2·tolerance + mip_rel_gap·|upper_bound|``), else
      ``None`` (time-out / gap).
    * ``lower_bound``: a sound lower bound on that minimum (−inf if none); ``upper_bound``: the best MILP
      objective value found (+inf if none; the MILP's float64 value, confirmed only through ``argmin``).
    * ``class_lower`` / ``class_upper``: the same per class, length K, ``+inf`` at ``y``.
    * ``argmin``: the solver's best point that passed the forward check's snapping (in D, the model's
      dtype), shape of ``x``; ``argmin_margin`` the model's margin there.
    * ``tolerance``: the largest slack subtracted from a dual bound (MIP gap + LP accuracy + rounding).
    * ``solver_status``: per class, HiGHS' message or why no solve / no dual bound was used.
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
        graph64 = float64_graph(graph)
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
        jacs, offset = affine_map(ops[node.op], node, [shapes[i] for i in node.inputs])
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
# The input region
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
    if bool(torch.isinf(v).any()):
        raise RobustCertError(f"{name} contains inf values; pass finite inputs")
    return v


def _directed_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest float64 ≤ ``a + b`` and the smallest float64 ≥ ``a + b`` (the real sum), elementwise,
    from the rounded sum and its exact error (Knuth's TwoSum; finite inputs, no overflow)."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)  # a + b = s + err exactly
    return np.where(err < 0, np.nextafter(s, -np.inf), s), np.where(err > 0, np.nextafter(s, np.inf), s)


@dataclass(frozen=True)
class _Region:
    """The input region D, flat. ``lo, hi`` contain D (the MILP's variable bounds); ``inner_lo, inner_hi``
    are contained in D (a number between them lies in D). ``shape`` is the model input's, [1, ...]."""

    lo: np.ndarray
    hi: np.ndarray
    inner_lo: np.ndarray
    inner_hi: np.ndarray
    shape: tuple[int, ...]


def _domain_bounds(domain: InputDomain, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The domain's per-value bounds for an input of ``shape`` ([1, ...]), flat float64."""
    domain.check_channels(shape[1:], "input domain")
    ref = torch.zeros(shape, dtype=torch.float64)
    dlo, dhi = domain.tensors(ref)
    return dlo.expand(shape).flatten().numpy().copy(), dhi.expand(shape).flatten().numpy().copy()


def _region(
    x: torch.Tensor | None, eps: float | None, box: tuple[Any, Any] | None, domain: InputDomain | None
) -> _Region:
    """D = ``B_inf(x, eps) ∩ domain`` (None: [0, 1]) or ``box`` (∩ ``domain`` when one is given), rounded
    outward and inward as the module docstring says. RobustCertError for bad or inconsistent arguments,
    ``x`` outside the domain, or a box that misses the domain."""
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
        if lo_t.ndim < 2 or lo_t.shape[0] != 1:
            raise RobustCertError(f"box tensors must have shape [1, *input_shape], got {tuple(lo_t.shape)}")
        lo, hi = lo_t.double().numpy().ravel().copy(), hi_t.double().numpy().ravel().copy()
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise RobustCertError("box bounds must be finite")
        if (lo > hi).any():
            raise RobustCertError("box lo must be <= hi everywhere")
        shape = tuple(int(s) for s in lo_t.shape)
        if domain is not None:
            dlo, dhi = _domain_bounds(domain, shape)
            lo, hi = np.maximum(lo, dlo), np.minimum(hi, dhi)
            if (lo > hi).any():
                raise RobustCertError(f"the box lies outside the input domain {domain}; pass a box that meets it")
        return _Region(lo, hi, lo, hi, shape)
    if x is None:
        raise RobustCertError("pass x with eps, or box=(lo, hi)")
    if eps is None:
        raise RobustCertError("eps is required when no box is given")
    e = check_eps(eps)
    dom = domain if domain is not None else InputDomain.unit()
    shape = tuple(int(s) for s in x.shape)
    dlo, dhi = _domain_bounds(dom, shape)
    dom.check_data(x, "x")
    x64 = x.double().numpy().ravel()
    minus_down, minus_up = _directed_sum(x64, np.full_like(x64, -e))
    plus_down, plus_up = _directed_sum(x64, np.full_like(x64, e))
    return _Region(
        lo=np.maximum(minus_down, dlo),
        hi=np.minimum(plus_up, dhi),
        inner_lo=np.maximum(minus_up, dlo),
        inner_hi=np.minimum(plus_down, dhi),
        shape=shape,
    )


def _snap(point: np.ndarray, region: _Region, dtype: torch.dtype) -> torch.Tensor | None:
    """The solver's point as a ``dtype`` tensor of the input's shape that lies in D: clipped into the inward
    bounds, rounded to nearest, and moved one ulp back where the rounding left them (one step suffices
    whenever some ``dtype`` value lies between the bounds). None if a coordinate has no such value."""
    lo_t, hi_t = torch.from_numpy(region.inner_lo), torch.from_numpy(region.inner_hi)
    p = torch.from_numpy(np.clip(np.asarray(point, dtype=np.float64), region.inner_lo, region.inner_hi))
    out = p.to(dtype)
    out = torch.where(out.double() > hi_t, torch.nextafter(out, torch.full_like(out, -math.inf)), out)
    out = torch.where(out.double() < lo_t, torch.nextafter(out, torch.full_like(out, math.inf)), out)
    if not bool(((out.double() >= lo_t) & (out.double() <= hi_t)).all()):
        return None
    return out.reshape(region.shape)


def _compute_dtype(model: Any) -> torch.dtype:
    """The dtype counterexamples are checked in: float64 for a module with float64 weights, else float32."""
    if isinstance(model, nn.Module):
        for t in [*model.parameters(), *model.buffers()]:
            if torch.is_floating_point(t):
                return torch.float64 if t.dtype == torch.float64 else torch.float32
    return torch.float32


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------


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
    *,
    domain: InputDomain | None = None,
    graph: Any = None,
) -> ExactResult:
    """Exact minimum of ``f_y − max_{j≠y} f_j`` over ``D = B_inf(x, eps) ∩ domain`` (``domain`` None: [0, 1];
    or over ``box``, intersected with ``domain`` if one is given) for a ReLU network, by one MILP per class
    ``j ≠ y`` (HiGHS via ``scipy.optimize.milp``).

    ``model`` is a ``torch.nn.Module`` or a ``robustcert.graph.Graph``; ``x`` is one example with a batch
    dimension (``[1, *input_shape]``) and must lie in ``domain``; ``box=(lo, hi)`` replaces ``eps`` (then
    ``x`` may be None). ``graph`` is the model's graph (``robustcert.graph.to_graph``) when the caller
    has converted it already; counterexamples are still checked on ``model`` itself.
    ``time_limit`` (seconds) is shared by all classes; classes whose solve is cut short keep their dual
    bound. With ``decision_only`` the solve stops at the first counterexample and skips classes already
    proven by interval bounds: faster as a complete verifier, but ``min_margin`` is then often None.
    ``tighten_bounds`` (default) intersects the interval big-M bounds with the certified CROWN bounds of
    :mod:`robustcert.bounds`, which shrinks the MILP a lot on deeper nets; False gives the plain interval
    encoding (same answer, slower).
    Solver output never reaches stdout: HiGHS writes to file descriptor 1 from C, so fd 1 is redirected
    around each solve; with ``log_path`` HiGHS' log (and one header line per class) is appended to that
    file, without it the output is discarded.
    Guarantees (module docstring, "How this method stays sound"): ``"robust"`` only if every class's
    lower bound — HiGHS' dual bound minus its gap and feasibility tolerances, or the solver-free interval
    bound — is > 0; ``"counterexample"`` only if the model, run in its own dtype (float32 for a float32
    model) on ``counterexample``, which lies in D, has margin ≤ 0 there; otherwise ``"unknown"``.
    Raises RobustCertError on bad input (x outside the domain included) or an op other than affine/ReLU.
    """
    from robustcert.graph import to_graph  # late import: graph depends on nothing here
    from robustcert.graph.ops import OPS

    start = time.monotonic()
    if not (isinstance(time_limit, int | float) and time_limit > 0 and not math.isnan(time_limit)):
        raise RobustCertError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
    if not (0 <= mip_rel_gap < 1):
        raise RobustCertError(f"mip_rel_gap must be in [0, 1), got {mip_rel_gap!r}")
    dom = None if domain is None else InputDomain.coerce(domain, "domain")
    if x is not None:
        x = _as_tensor(x, "x")
        if x.ndim < 2 or x.shape[0] != 1:
            raise RobustCertError(
                f"exact_margin verifies one example: pass x of shape [1, *input_shape], got {tuple(x.shape)} "
                "(use exact_margins for a batch)"
            )
    region = _region(x, eps, box, dom)
    input_shape = region.shape[1:]
    dtype = _compute_dtype(model)

    is_module = isinstance(model, nn.Module)
    with eval_mode(model) if is_module else contextlib.nullcontext():
        graph = to_graph(model if graph is None else graph, input_shape)

        def forward(t: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(t) if is_module else graph.forward(t)

        try:
            logits0 = forward(torch.as_tensor(((region.lo + region.hi) / 2).reshape(region.shape), dtype=dtype))
        except RuntimeError as exc:
            raise RobustCertError(
                f"model failed on an input of shape {input_shape}: {str(exc).splitlines()[0]}"
            ) from None
        if logits0.ndim != 2:
            raise RobustCertError(f"model must return logits [B, K], got shape {tuple(logits0.shape)}")
        num_classes = int(logits0.shape[1])
        yi = _label(y, num_classes)
        _check_relu_network(graph, OPS)
        lo, hi = region.lo, region.hi
        pre, margins = _certified(graph, lo, hi, yi, num_classes) if tighten_bounds else ({}, {})
        enc, out = _encode(graph, OPS, lo, hi, pre)
        check = _Check(region, dtype, forward)
        settings = _Settings(start, time_limit, mip_rel_gap, decision_only, log_path)
        return _solve(enc, out, yi, num_classes, margins, check, settings)


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
    """``f_y − max_{j≠y} f_j`` of one forward pass; its sign is that of the model's own logits (the
    float64 difference of two floats of lower precision has the sign of their exact difference)."""
    logits = forward(point)[0].double()
    others = torch.cat([logits[:y], logits[y + 1 :]])
    return float(logits[y] - others.max())


@dataclass(frozen=True)
class _Check:
    """What a counterexample is checked against: the region, the dtype points are rounded to, the model."""

    region: _Region
    dtype: torch.dtype
    forward: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Settings:
    start: float
    time_limit: float
    mip_rel_gap: float
    decision_only: bool
    log_path: Path | None


def _run_milp(
    c: np.ndarray, problem: dict[str, Any], budget: float, settings: _Settings, what: str
) -> tuple[Any, bool]:
    """One HiGHS solve with its output kept off stdout (to ``settings.log_path``, or discarded). Returns the
    result and whether HiGHS took every tolerance of ``_HIGHS_TOLERANCES`` (scipy warns when it does not)."""
    options: dict[str, Any] = {
        "time_limit": max(budget, 1e-3),
        "mip_rel_gap": settings.mip_rel_gap,
        "presolve": True,
        "disp": settings.log_path is not None,
        **_HIGHS_TOLERANCES,
    }
    with solver_output(settings.log_path), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if settings.log_path is not None:
            os.write(1, f"[robustcert.exact] {what}, time budget {budget:.3g} s\n".encode())
        res = milp(c, **problem, options=options)
    taken = True
    for w in caught:
        if issubclass(w.category, OptimizeWarning):  # HiGHS refused an option: its tolerances are unknown
            taken = False
        elif not (issubclass(w.category, RuntimeWarning) and "Unrecognized options" in str(w.message)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return res, taken


def _lp_allowance(enc: _Encoder, constraints: LinearConstraint | None) -> float:
    """``τ · (Σ_columns (ub − lb) + Σ_rows activity range)``: the most by which HiGHS' node LP bounds may
    exceed valid bounds through dual infeasibilities ≤ τ (module docstring)."""
    ranges = np.asarray(enc.ub) - np.asarray(enc.lb)
    total = float(ranges.sum())
    if constraints is not None:
        total += float((abs(sparse.csr_array(constraints.A)) @ ranges).sum())
    return _HIGHS_TOLERANCES["mip_feasibility_tolerance"] * total


def _solver_bound(
    res: Any, const: float, allowance: float, mip_rel_gap: float, taken: bool
) -> tuple[float | None, float, str]:
    """A sound lower bound on one class's margin from HiGHS' dual bound, ``dual + const − slack`` (module
    docstring: MIP gap, LP accuracy ``allowance``, rounding), and the slack; or None and why no dual bound
    can be used."""
    if not taken:
        return None, 0.0, "dual bound not used: HiGHS refused a tolerance option"
    if res.status not in _OK_SOLVER_STATUS:
        return None, 0.0, "no trusted dual bound"
    dual = getattr(res, "mip_dual_bound", None)
    if dual is None or not math.isfinite(float(dual)):
        return None, 0.0, "no dual bound"
    dual = float(dual)
    primal = float(res.fun) if res.fun is not None and math.isfinite(float(res.fun)) else None
    gap = max(_HIGHS_TOLERANCES["mip_feasibility_tolerance"], _HIGHS_TOLERANCES["mip_abs_gap"])
    if primal is None:
        pruned_gap = gap
    else:
        pruned_gap = dual - min(dual, primal - max(gap, mip_rel_gap * abs(primal)))
    slack = pruned_gap + allowance + _WIDEN_REL * (abs(dual) + abs(const) + abs(primal or 0.0)) + _WIDEN_ABS
    return dual + const - slack, slack, ""


def _solve(
    enc: _Encoder,
    out: _Expr,
    y: int,
    num_classes: int,
    margins: dict[int, Interval],
    check: _Check,
    settings: _Settings,
) -> ExactResult:
    A = enc.pad(out.A)
    constraints = enc.constraints()
    problem = {
        "integrality": np.asarray(enc.integer),
        "bounds": Bounds(np.asarray(enc.lb), np.asarray(enc.ub)),
        "constraints": constraints,
    }
    allowance = _lp_allowance(enc, constraints)
    diffs = {j: (A[y] - A[j], float(out.c[y] - out.c[j])) for j in range(num_classes) if j != y}
    lbs = {}  # solver-free sound lower bounds of each class's margin
    for j, (row, const) in diffs.items():
        lj, _ = enc.bounds(_Expr(row[None, :], np.array([const])), margins.get(j))
        lbs[j] = float(lj[0])

    # classes most likely to be violated first (smallest interval lower bound)
    order = sorted(diffs, key=lambda j: lbs[j])
    n_in = check.region.lo.size
    class_lower = [math.inf] * num_classes
    class_upper = [math.inf] * num_classes
    statuses: dict[int, str] = {}
    tolerance = 0.0
    best_point: torch.Tensor | None = None
    best_point_margin = math.inf
    counterexample: torch.Tensor | None = None
    for i, j in enumerate(order):
        row, const = diffs[j]
        class_lower[j] = lbs[j]
        if settings.decision_only and lbs[j] > 0:  # the certified bounds alone prove this class
            statuses[j] = "interval bound"
            continue
        remaining = settings.time_limit - (time.monotonic() - settings.start)
        if remaining <= 0 or (settings.decision_only and counterexample is not None):
            statuses[j] = "not solved (time limit)" if remaining <= 0 else "not solved (counterexample found)"
            continue
        what = f"class {j} vs label {y}: {enc.num_binaries} binaries"
        # the time left is shared by this class and the later ones still to solve (in decision mode
        # the classes the interval bounds prove are skipped, so they take no share)
        todo = sum(not (settings.decision_only and lbs[k] > 0) for k in order[i:])
        res, taken = _run_milp(row, problem, remaining / todo, settings, what)
        notes = [str(res.message)]
        if res.status == 2:  # infeasible: cannot happen for a non-empty box unless numerics failed
            notes = ["infeasible (numerical trouble)"]
        bound, slack, why = _solver_bound(res, const, allowance, settings.mip_rel_gap, taken)
        if bound is None:
            notes.append("no binaries: the interval bound is exact" if enc.num_binaries == 0 else why)
        else:
            class_lower[j] = max(bound, lbs[j])
            tolerance = max(tolerance, slack)
        if res.x is not None and res.fun is not None:
            class_upper[j] = float(res.fun) + const
            point = _snap(np.asarray(res.x[:n_in]), check.region, check.dtype)
            if point is None:
                notes.append(f"solver point not checked: no {check.dtype} value of it lies in the region")
            else:
                m = _margin_of(check.forward, point, y)
                if best_point is None or m < best_point_margin:
                    best_point, best_point_margin = point, m
                if m <= 0:
                    counterexample = point if counterexample is None else counterexample
                elif class_upper[j] <= 0:
                    notes.append(f"solver point not confirmed: the model's margin there is {m:.6g} > 0")
        statuses[j] = "; ".join(notes)

    others = [j for j in range(num_classes) if j != y]
    lower = min(class_lower[j] for j in others)
    upper = min(class_upper[j] for j in others)
    closed = math.isfinite(lower) and math.isfinite(upper)
    closed = closed and upper - lower <= 2 * tolerance + settings.mip_rel_gap * abs(upper) + _gap_eps(upper)
    if counterexample is not None:
        status = "counterexample"
    elif lower > 0:
        status = "robust"
    else:
        status = "unknown"
    return ExactResult(
        status=status,
        min_margin=lower if closed else None,
        lower_bound=lower,
        upper_bound=upper,
        class_lower=class_lower,
        class_upper=class_upper,
        counterexample=counterexample,
        argmin=best_point,
        argmin_margin=best_point_margin if best_point is not None else None,
        tolerance=tolerance,
        seconds=time.monotonic() - settings.start,
        num_binaries=enc.num_binaries,
        solver_status=statuses,
    )


def _gap_eps(value: float) -> float:
    """Float64 slack when comparing a bound with a value of magnitude ``value`` (widening of the bounds)."""
    return 2 * (_WIDEN_REL * (1.0 + abs(value)) + _WIDEN_ABS)


def exact_margins(
    model: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    time_limit: float = 60.0,
    mip_rel_gap: float = 1e-6,
    log_path: Path | None = None,
    *,
    domain: InputDomain | None = None,
) -> list[ExactResult]:
    """:func:`exact_margin` for each example of a batch ``x`` ([B, ...]) over ``B_inf(x_i, eps) ∩ domain``
    (None: [0, 1]); ``time_limit`` is per example; solver output goes to ``log_path`` (appended) or
    nowhere, never to stdout. The model is converted to a graph once."""
    from robustcert.graph import to_graph

    x = _as_tensor(x, "x")
    y = torch.as_tensor(y).reshape(-1)
    if x.ndim < 2:
        raise RobustCertError(f"x must be a batch [B, *input_shape], got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise RobustCertError(
            f"x has {x.shape[0]} examples but y has {y.shape[0]} labels; pass one label per example"
        )
    with eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
        graph = to_graph(model, tuple(int(s) for s in x.shape[1:]))
    return [
        exact_margin(
            model, x[i : i + 1], y[i], eps, time_limit=time_limit, mip_rel_gap=mip_rel_gap, log_path=log_path,
            domain=domain, graph=graph,
        )
        for i in range(x.shape[0])
    ]
