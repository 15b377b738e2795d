"""The SDP's dual solved by an off-the-shelf conic solver (cvxpy with SCS or Clarabel), for small nets.

We solve the dual directly — maximise ``mu0`` subject to ``Z(box, relu, lin, ball) - mu0 e0 e0' >= 0``
(PSD), ``box, lin, ball >= 0`` — so the multipliers are the solver's *primal* variables, read without any
sign convention. The solver's optimum is never used as a bound: :func:`robustcert.sdp.dual.certified_bound`
recomputes one from the multipliers it returns (SCS's raw optimum can be on the unsafe side).
The problem is compiled once per example (a cvxpy Parameter carries the class pair's objective) and
warm-started across classes (SCS).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustcert.errors import RobustCertError
from robustcert.sdp.dual import Multipliers
from robustcert.sdp.encode import QuadraticProgram

SOLVERS = ("scs", "clarabel")


def require_cvxpy(solver: str) -> None:
    """RobustCertError with the install command when cvxpy or the solver is missing."""
    try:
        import cvxpy as cp
    except ImportError:
        raise RobustCertError(
            "the SDP's scs/clarabel solvers need cvxpy: pip install 'robustcert[sdp]' "
            "(or use --solver first-order, which needs nothing more)"
        ) from None
    if solver.upper() not in cp.installed_solvers():
        raise RobustCertError(
            f"cvxpy cannot find the {solver} solver: pip install {solver} (or use --solver first-order)"
        )


@dataclass
class SolveResult:
    multipliers: Multipliers
    objective: float  # the solver's claimed optimum (reporting only, never a bound)
    iterations: int
    status: str


class _Entries:
    """COO entries of the linear map ``y -> vec(Z)`` (row-major, symmetric by construction)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []

    def add(self, i: Any, j: Any, var: Any, val: Any) -> None:
        """Add ``val`` at ``Z[i, j]`` (and ``Z[j, i]``) for variable ``var``; arguments broadcast."""
        shape = np.broadcast_shapes(np.shape(i), np.shape(j), np.shape(var), np.shape(val))
        i, j, var, val = (np.broadcast_to(np.asarray(a), shape).ravel() for a in (i, j, var, val))
        off = i != j
        for a, b, v, w in ((i, j, var, val), (j[off], i[off], var[off], val[off])):
            self.rows.append(a * self.n + b)
            self.cols.append(v)
            self.vals.append(w)

    def matrix(self, nvars: int):  # noqa: ANN201 - scipy sparse
        from scipy import sparse

        return sparse.csr_matrix(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
            shape=(self.n * self.n, nvars),
        )


def _dual_map(prog: QuadraticProgram):  # noqa: ANN202
    """``(A, slices)``: vec(Z) = A y + vec(C) over y = [box | relu | lin | ball? | mu0]."""
    N, d, H, m = prog.size, prog.n_in, prog.hidden, prog.h.size
    ball = prog.center is not None
    n = N + 1
    o_box, o_relu, o_lin = 0, N, N + H
    o_ball = N + H + m
    o_mu = o_ball + (1 if ball else 0)
    e = _Entries(n)
    k = np.arange(N)
    e.add(1 + k, 1 + k, o_box + k, np.ones(N))
    e.add(np.zeros(N, int), 1 + k, o_box + k, -(prog.lo + prog.hi) / 2)
    e.add(0, 0, o_box + k, prog.lo * prog.hi)
    if H:
        i = np.arange(H)
        p = 1 + d + i
        e.add(p, p, o_relu + i, np.ones(H))
        e.add(0, p, o_relu + i, -prog.pre_c / 2)
        r, c = np.nonzero(prog.pre_A)
        e.add(1 + d + r, 1 + c, o_relu + r, -prog.pre_A[r, c] / 2)
    if m:
        r, c = np.nonzero(prog.G)
        e.add(0, 1 + c, o_lin + r, prog.G[r, c] / 2)
        e.add(0, 0, o_lin + np.arange(m), prog.h)
    if ball:
        x0 = prog.center
        assert x0 is not None
        kk = np.arange(d)
        e.add(1 + kk, 1 + kk, o_ball, np.ones(d))
        e.add(0, 1 + kk, o_ball, -x0)
        e.add(0, 0, o_ball, float((x0**2).sum() - float(prog.radius or 0.0) ** 2))
    e.add(0, 0, o_mu, -1.0)
    nvars = o_mu + 1
    return e.matrix(nvars), (o_box, o_relu, o_lin, o_ball, o_mu, ball)


def _objective_vec(prog: QuadraticProgram, g: np.ndarray, g0: float) -> np.ndarray:
    n = prog.size + 1
    C = np.zeros((n, n))
    C[0, 0] = g0
    C[0, 1:] = g / 2
    C[1:, 0] = g / 2
    return C.ravel()


class CvxDual:
    """The compiled dual of one program; :meth:`solve` per class pair."""

    def __init__(
        self, prog: QuadraticProgram, solver: str, time_limit: float, max_iters: int | None = None
    ) -> None:
        import cvxpy as cp

        require_cvxpy(solver)
        self.prog, self.solver, self.time_limit = prog, solver, time_limit
        # default iteration caps: SCS's first-order steps are cheap, Clarabel's interior-point ones not
        self.max_iters = max_iters if max_iters is not None else (20000 if solver == "scs" else 400)
        A, self.layout = _dual_map(prog)
        o_box, o_relu, o_lin, o_ball, o_mu, ball = self.layout
        n = prog.size + 1
        self.y = cp.Variable(A.shape[1])
        self.c = cp.Parameter(n * n)
        Z = cp.reshape(A @ self.y + self.c, (n, n), order="C")
        nonneg = np.r_[np.arange(o_box, o_relu), np.arange(o_lin, o_ball + (1 if ball else 0))]
        cons = [Z >> 0]
        if nonneg.size:
            cons.append(self.y[nonneg] >= 0)
        self.problem = cp.Problem(cp.Maximize(self.y[o_mu]), cons)
        self._warm = False

    def solve(self, g: np.ndarray, g0: float, deadline: float) -> SolveResult:
        import cvxpy as cp

        self.c.value = _objective_vec(self.prog, g, g0)
        left = max(deadline - time.monotonic(), 0.5)
        opts: dict[str, object] = {}
        if self.solver == "scs":
            opts = {
                "max_iters": self.max_iters,
                "time_limit_secs": left,
                "eps_abs": 1e-6,
                "eps_rel": 1e-6,
                "warm_start": self._warm,
            }
        else:
            opts = {"time_limit": left, "max_iter": self.max_iters}
        try:
            with warnings.catch_warnings():  # "solution may be inaccurate": the bound is recomputed anyway
                warnings.simplefilter("ignore", UserWarning)
                self.problem.solve(solver=self.solver.upper(), **opts)
        except cp.error.SolverError as exc:
            return SolveResult(self._zero(), float("-inf"), 0, f"solver error: {exc}")
        self._warm = True
        y = self.y.value
        stats = self.problem.solver_stats
        iters = int(getattr(stats, "num_iters", 0) or 0)
        if y is None:
            return SolveResult(self._zero(), float("-inf"), iters, str(self.problem.status))
        o_box, o_relu, o_lin, o_ball, o_mu, ball = self.layout
        mult = Multipliers(
            box=np.asarray(y[o_box:o_relu]),
            relu=np.asarray(y[o_relu:o_lin]),
            lin=np.asarray(y[o_lin:o_ball]),
            ball=float(y[o_ball]) if ball else 0.0,
        )
        value = self.problem.value
        return SolveResult(
            mult, float(value) if value is not None else float("-inf"), iters, str(self.problem.status)
        )

    def _zero(self) -> Multipliers:
        p = self.prog
        return Multipliers(np.zeros(p.size), np.zeros(p.hidden), np.zeros(p.h.size))
