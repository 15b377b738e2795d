"""A ReLU network over one input region as the quadratic program the SDP relaxes.

Variables
---------
``v = [x; z]``: the ``d`` input values, then one variable per *unstable* ReLU (pre-activation interval
``[l, u]`` with ``l < 0 < u``), in graph order. Stable ReLUs are eliminated before anything else is
built (the step that makes the SDP small enough to solve: Raghunathan et al. 2018 and the measurements
in docs/design.md): a dead one (``u <= 0``) is the constant 0, an active one (``l >= 0``) is its
pre-activation, an affine expression of earlier variables. Every affine node is therefore an expression
``A v + c`` over the variables, composed in float64 (:mod:`robustcert.graph.dense`).

Constraints, each valid for every point of the network this program encodes (the *program network*,
below) over the input region
-------------------------------------------------------------------------------------------------
* boxes ``(v_k - lo_k)(v_k - hi_k) <= 0``: the input box, ``[0, u]`` for a ReLU output;
* per unstable ReLU ``z = max(s, 0)``, ``s = a.v + c``: ``z (z - s) = 0`` (quadratic), and the linear
  ``s - z <= 0``, the triangle ``(u - l) z - u (s - l) <= 0`` and ``l - s <= 0``;
* per active ReLU: ``l <= s <= u`` (linear);
* an L2 input ball ``|x - x0|^2 <= r^2`` when given.

The linear constraints make the relaxation at least as tight as the LP (triangle) relaxation over the
same intervals, hence as IBP over them.

Which network is certified, and how rounding is kept out of the verdict
---------------------------------------------------------------------
The expressions are float64 compositions, so the program network (each unstable ReLU applied to its
computed expression) differs from the real-valued network with the stored weights by the composition's
rounding; the deployed float32 network differs from the real one by its own rounding. Both are the real
network with one extra bounded perturbation per affine node (see :mod:`robustcert.bounds._soundness`,
section 1, for the float32 model), so both deviations are propagated forward as absolute bounds:

* program vs real (``K``): an affine node adds ``w = 1e-9 (|J| m_in + |c0|) + 1e-15 |c0| sum(m_in) +
  1e-12`` — a relative 1e-9 of the magnitudes involved, against float64 roundings of at most
  ``fan-in * 2^-53`` relative (the reading of the Jacobian included), as in the exact MILP;
* float32 vs real (``F``, ``float_model="float32"`` only): the input's rounding ``2^-24 |x| + 2^-120``;
  an affine node ``gamma_k(2^-24) (|J| m + |c0|) + 2^-120 (|J| 1 + k + 1)``, ``k`` = live fan-in + 4
  (the ``linear``/``normalize`` terms of the float32 model); exact copies (flatten, reshape, identity)
  add nothing;
* through a ReLU (1-Lipschitz) both pass unchanged, and become 0 on a dead neuron, whose interval
  holds all three networks' values (below).

Each node then satisfies ``|real - program| <= K`` and ``|float32 - real| <= F``. The interval of a ReLU
input used for stability and the constraints is the intersection of (a) the certified interval of
:func:`robustcert.bounds.api.region_bounds` for the target network (real, or float32 — which contains
the real values too) widened by ``K``, and (b) interval arithmetic over the program's own expression
(outward by a relative 1e-9) widened by ``K + F``; each contains the value of all three networks, so
every constraint above holds for the program network, and the target network's margin is at least the
program's minus ``out_err[y] + out_err[j]`` (:meth:`QuadraticProgram.margin_error`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robustcert.errors import RobustCertError

SUPPORTED_OPS = ("input", "linear", "relu", "flatten", "reshape", "identity", "normalize")
_U32 = 2.0**-24
_TINY = 2.0**-120
_REL = 1e-9
_ABS = 1e-12


def _gamma(k: np.ndarray | float, u: float) -> np.ndarray | float:
    return k * u / (1 - k * u)


@dataclass(frozen=True)
class _AffineStep:
    name: str
    inputs: tuple[str, ...]
    jacobians: tuple[np.ndarray, ...]
    offset: np.ndarray
    copy: bool  # an exact copy (one 1 per row, no offset): float32 evaluates it exactly


@dataclass(frozen=True)
class DenseNetwork:
    """A ReLU network as dense float64 maps, read once per model: one step per node in graph order
    (``relu`` steps carry no maps). ``input_size`` / ``output_size`` are flat sizes."""

    steps: tuple[tuple[str, str, Any], ...]  # (name, op, _AffineStep | input name)
    input_name: str
    output: str
    input_size: int
    output_size: int


def dense_network(graph: Any) -> DenseNetwork:
    """Read ``graph`` (a :class:`~robustcert.graph.ir.Graph`) as dense maps. RobustCertError naming the
    node and its op, and the supported ops, for anything else than a ReLU network of linear layers."""
    from robustcert.graph.dense import affine_map, float64_graph
    from robustcert.graph.ops import OPS

    for node in graph.nodes:
        if node.op not in SUPPORTED_OPS:
            raise RobustCertError(
                f"the SDP relaxation does not support node {node.name!r} (op {node.op}); it takes ReLU "
                f"networks of linear layers: supported ops: {', '.join(SUPPORTED_OPS)}. Use crown, "
                "alpha-crown or exact for this model"
            )
    g64 = float64_graph(graph)
    shapes = g64.shapes()
    steps: list[tuple[str, str, Any]] = []
    input_name = ""
    for node in g64.nodes:
        if node.op == "input":
            input_name = node.name
            steps.append((node.name, "input", None))
        elif node.op == "relu":
            steps.append((node.name, "relu", node.inputs[0]))
        else:
            jacs, offset = affine_map(OPS[node.op], node, [shapes[i] for i in node.inputs])
            copy = (
                len(jacs) == 1
                and not offset.any()
                and bool(np.isin(jacs[0], (0.0, 1.0)).all())
                and bool((jacs[0].sum(axis=1) == 1).all())
            )
            steps.append(
                (node.name, "affine", _AffineStep(node.name, tuple(node.inputs), tuple(jacs), offset, copy))
            )
    size = int(np.prod(graph.input_shape))
    out = int(np.prod(shapes[graph.output]))
    return DenseNetwork(tuple(steps), input_name, graph.output, size, out)


@dataclass
class QuadraticProgram:
    """The program of the module docstring for one input region. Variables ``v`` ([N]: ``n_in`` inputs
    then ``H`` ReLU outputs); ``lo, hi`` their boxes; ``pre_A`` [H, N], ``pre_c`` [H] the pre-activation
    of ReLU variable ``n_in + i`` (only earlier variables), ``pre_lo, pre_hi`` its interval; ``G`` [m, N],
    ``h`` [m] the linear constraints ``G v + h <= 0``; ``out_A`` [K, N], ``out_c`` [K] the outputs;
    ``out_err`` [K] the bound on |target network's output - program's|; ``center, radius`` the L2 ball."""

    n_in: int
    lo: np.ndarray
    hi: np.ndarray
    pre_A: np.ndarray
    pre_c: np.ndarray
    pre_lo: np.ndarray
    pre_hi: np.ndarray
    G: np.ndarray
    h: np.ndarray
    out_A: np.ndarray
    out_c: np.ndarray
    out_err: np.ndarray
    center: np.ndarray | None = None
    radius: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """N, the number of variables."""
        return int(self.lo.size)

    @property
    def hidden(self) -> int:
        """H, the number of unstable ReLUs."""
        return int(self.pre_c.size)

    def objective(self, y: int, j: int) -> tuple[np.ndarray, float]:
        """``(g, g0)`` with the program's margin ``f_y - f_j = g.v + g0``."""
        return self.out_A[y] - self.out_A[j], float(self.out_c[y] - self.out_c[j])

    def margin_error(self, y: int, j: int) -> float:
        """A bound on |target network's margin f_y - f_j - the program's ``g.v + g0``| over the region
        (the output deviations plus the float64 rounding of forming ``g``, ``g0``)."""
        vmax = np.maximum(np.abs(self.lo), np.abs(self.hi))
        mag = np.abs(self.out_A[[y, j]]) @ vmax + np.abs(self.out_c[[y, j]])
        return float(self.out_err[y] + self.out_err[j] + _REL * mag.sum() + _ABS)


@dataclass
class _Value:
    A: np.ndarray  # [n, nv at creation]
    c: np.ndarray
    K: np.ndarray  # |real - program|
    F: np.ndarray  # |float32 - real|
    M: np.ndarray  # |program value| <=


def _pad(A: np.ndarray, nv: int) -> np.ndarray:
    return A if A.shape[1] == nv else np.pad(A, ((0, 0), (0, nv - A.shape[1])))


def encode(
    net: DenseNetwork,
    lo: np.ndarray,
    hi: np.ndarray,
    intervals: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    float_model: str = "float32",
    center: np.ndarray | None = None,
    radius: float | None = None,
) -> QuadraticProgram:
    """The program over the input box ``[lo, hi]`` (flat float64; with ``center, radius`` also the L2 ball
    ``|x - center| <= radius``). ``intervals[name]`` (flat) must be certified intervals of the ReLU input
    ``name`` for the ``float_model`` network over that region (``region_bounds``' ``activation_inputs``)."""
    d = net.input_size
    f32 = float_model == "float32"
    vlo: list[np.ndarray] = [lo.astype(np.float64)]
    vhi: list[np.ndarray] = [hi.astype(np.float64)]
    nv = d
    vmax_in = np.maximum(np.abs(lo), np.abs(hi))
    values: dict[str, _Value] = {}
    pre_rows: list[np.ndarray] = []
    pre_c: list[np.ndarray] = []
    pre_lo: list[np.ndarray] = []
    pre_hi: list[np.ndarray] = []
    lin_rows: list[np.ndarray] = []
    lin_h: list[np.ndarray] = []
    counts = {"dead": 0, "active": 0, "unstable": 0}

    def vmax() -> np.ndarray:
        return np.concatenate([np.maximum(np.abs(a), np.abs(b)) for a, b in zip(vlo, vhi, strict=True)])

    for name, op, step in net.steps:
        if op == "input":
            zeros = np.zeros(d)
            F = _U32 * vmax_in + _TINY if f32 else zeros
            values[name] = _Value(np.eye(d), zeros.copy(), zeros.copy(), F, vmax_in.copy())
        elif op == "affine":
            ins = [values[i] for i in step.inputs]
            A = np.zeros((step.offset.size, nv))
            c = step.offset.copy()
            M_lin = np.zeros(step.offset.size)
            K = np.zeros(step.offset.size)
            F = np.zeros(step.offset.size)
            live = np.zeros(step.offset.size)
            abs_rowsum = np.zeros(step.offset.size)
            Mf_lin = np.zeros(step.offset.size)
            total_in = 0.0
            for J, v in zip(step.jacobians, ins, strict=True):
                aJ = np.abs(J)
                A += J @ _pad(v.A, nv)
                c += J @ v.c
                M_lin += aJ @ v.M
                K += aJ @ v.K
                F += aJ @ v.F
                Mf = v.M + v.K + v.F
                Mf_lin += aJ @ Mf
                live += (aJ > 0) @ (Mf > 0)
                abs_rowsum += aJ.sum(axis=1)
                total_in += float(v.M.sum())
            a0 = np.abs(step.offset)
            w = _REL * (M_lin + a0) + 1e-15 * a0 * total_in + _ABS
            K = K + w
            if f32 and not step.copy:
                k = live + 4
                F = F + _gamma(k, _U32) * (Mf_lin + a0) + _TINY * (abs_rowsum + k + 1)
            values[name] = _Value(A, c, K, F, M_lin + a0 + w)
        else:  # relu of node `step`
            s = values[step]
            A_s = _pad(s.A, nv)
            absA = np.abs(A_s)
            vm = vmax()
            mid = A_s @ np.concatenate([(a + b) / 2 for a, b in zip(vlo, vhi, strict=True)]) + s.c
            rad = absA @ np.concatenate([(b - a) / 2 for a, b in zip(vlo, vhi, strict=True)])
            round_w = _REL * (absA @ vm + np.abs(s.c)) + _ABS
            ia_lo = mid - rad - round_w - s.K - s.F
            ia_hi = mid + rad + round_w + s.K + s.F
            if step in intervals:
                c_lo, c_hi = (np.asarray(t, dtype=np.float64).reshape(-1) for t in intervals[step])
                L = np.maximum(ia_lo, c_lo - s.K)
                U = np.minimum(ia_hi, c_hi + s.K)
            else:
                L, U = ia_lo, ia_hi
            if bool((L > U).any()):  # two valid enclosures of the same values cannot be disjoint
                raise RuntimeError(f"SDP encoding: empty interval at {step}; a bound is wrong")
            dead, active = U <= 0, L >= 0
            unstable = ~(dead | active)
            idx = np.flatnonzero(unstable)
            counts["dead"] += int(dead.sum())
            counts["active"] += int(active.sum())
            counts["unstable"] += idx.size
            # active: L <= s <= U on the program's expression
            for sign, bound in ((1.0, U), (-1.0, L)):
                if active.any():
                    lin_rows.append(sign * A_s[active])
                    lin_h.append(sign * (s.c[active] - bound[active]))
            new_nv = nv + idx.size
            A_new = np.zeros((s.c.size, new_nv))
            A_new[active, :nv] = A_s[active]
            A_new[idx, nv + np.arange(idx.size)] = 1.0
            c_new = np.where(active, s.c, 0.0)
            keep = ~dead
            if idx.size:
                a = np.pad(A_s[idx], ((0, 0), (0, idx.size)))
                e = np.zeros_like(a)
                e[np.arange(idx.size), nv + np.arange(idx.size)] = 1.0
                l_i, u_i, c_i = L[idx], U[idx], s.c[idx]
                lin_rows += [a - e, (u_i - l_i)[:, None] * e - u_i[:, None] * a, -a]
                lin_h += [c_i, u_i * l_i - u_i * c_i, l_i - c_i]
                pre_rows.append(a)
                pre_c.append(c_i)
                pre_lo.append(l_i)
                pre_hi.append(u_i)
                vlo.append(np.zeros(idx.size))
                vhi.append(u_i.copy())
            nv = new_nv
            M_new = np.where(dead, 0.0, np.where(active, np.minimum(s.M, U), U))
            values[name] = _Value(A_new, c_new, np.where(keep, s.K, 0.0), np.where(keep, s.F, 0.0), M_new)

    out = values[net.output]
    N = nv

    def stack(rows: list[np.ndarray], width: int) -> np.ndarray:
        return np.concatenate([_pad(r, width) for r in rows]) if rows else np.zeros((0, width))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0)

    return QuadraticProgram(
        n_in=d,
        lo=np.concatenate(vlo),
        hi=np.concatenate(vhi),
        pre_A=stack(pre_rows, N),
        pre_c=cat(pre_c),
        pre_lo=cat(pre_lo),
        pre_hi=cat(pre_hi),
        G=stack(lin_rows, N),
        h=cat(lin_h),
        out_A=_pad(out.A, N),
        out_c=out.c.copy(),
        out_err=out.K + out.F,
        center=None if center is None else np.asarray(center, dtype=np.float64).reshape(-1),
        radius=radius,
        counts=counts,
    )
