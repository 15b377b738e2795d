"""One example through the SDP certifier: region → certified intervals → program → per-class dual solve
→ certified bound (:mod:`.dual`) minus the program-vs-network error (:mod:`.encode`).

The margin bound reported for a class is the larger of two certified bounds: the SDP's, and the
CROWN (or α-CROWN) bound computed anyway for the intervals. Classes CROWN already proves are not
solved (``skip_proven``), which is where most of a robust example's time would go.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.sdp.dual import DualBound, Multipliers, certified_bound
from robustcert.sdp.encode import DenseNetwork, QuadraticProgram, dense_network, encode

SOLVER_CHOICES = ("first-order", "scs", "clarabel")


@dataclass
class ClassResult:
    """One class pair ``(y, j)``: ``sdp`` the certified SDP bound of the target network's margin (None
    when not solved), ``baseline`` the CROWN/α-CROWN bound, ``solver_value`` the solver's own optimum
    (reporting only), ``iterations``, ``seconds``."""

    j: int
    baseline: float
    sdp: float | None = None
    solver_value: float | None = None
    iterations: int = 0
    seconds: float = 0.0
    status: str = "skipped"

    @property
    def lower(self) -> float:
        """The larger certified bound; a non-finite one counts as -inf (never a proof)."""
        base = self.baseline if math.isfinite(self.baseline) else -math.inf
        if self.sdp is None or not math.isfinite(self.sdp):
            return base
        return max(self.sdp, base)


@dataclass
class SdpResult:
    """All classes of one example: ``margin_lower = min_j max(sdp_j, baseline_j)`` (certified), the
    program's size, total solver iterations and seconds, and the largest gap between a solver's claimed
    optimum and the certified bound (what the sound recomputation cost)."""

    margin_lower: float
    classes: list[ClassResult]
    solver: str
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    size: int = 0

    @property
    def iterations(self) -> int:
        """Solver iterations spent on the example: the first-order solver runs the classes as one batch
        (each class records the batch's count), the conic solvers one problem per class."""
        its = [c.iterations for c in self.classes]
        if not its:
            return 0
        return max(its) if self.solver == "first-order" else sum(its)

    @property
    def gap(self) -> float | None:
        gaps = [
            c.solver_value - c.sdp
            for c in self.classes
            if c.sdp is not None and c.solver_value is not None and np.isfinite(c.solver_value)
        ]
        return max(gaps) if gaps else None

    @property
    def sdp_lower(self) -> float | None:
        """min over solved classes of the SDP's own certified bound (None if none was solved)."""
        vals = [c.sdp for c in self.classes if c.sdp is not None]
        return min(vals) if vals else None


def build_program(
    graph: Any,
    net: DenseNetwork,
    x: torch.Tensor,
    y: int,
    eps: float,
    *,
    norm: str,
    domain: InputDomain | None,
    float_model: str,
    bounds_method: str = "crown",
) -> tuple[QuadraticProgram, np.ndarray]:
    """The program of ``x`` ([1, *input_shape]) over ``B_norm(x, eps) ∩ domain`` and the baseline margin
    bounds ([K], ``+inf`` at ``y``) of ``bounds_method`` over the same set."""
    from robustcert.bounds.api import _input_set, margin_spec, region_bounds

    dom = domain if domain is not None else InputDomain.unit()
    k = net.output_size
    C = margin_spec(torch.tensor([y]), k)
    rb = region_bounds(
        graph, C, x=x, eps=eps, norm=norm, domain=dom, float_model=float_model, method=bounds_method
    )
    inset = _input_set(x, eps, norm, None, dom)
    lo = inset.lo.reshape(-1).numpy().astype(np.float64)
    hi = inset.hi.reshape(-1).numpy().astype(np.float64)
    intervals = {
        name: (b[0].reshape(-1).numpy(), b[1].reshape(-1).numpy()) for name, b in rb.activation_inputs.items()
    }
    center = x.double().reshape(-1).numpy() if norm == "l2" else None
    prog = encode(
        net,
        lo,
        hi,
        intervals,
        float_model=float_model,
        center=center,
        radius=float(eps) if norm == "l2" else None,
    )
    baseline = rb.spec_lower[0].numpy().astype(np.float64).copy()
    baseline[y] = np.inf
    return prog, baseline


def solve_classes(
    prog: QuadraticProgram,
    y: int,
    baseline: np.ndarray,
    *,
    solver: str,
    time_limit: float,
    skip_proven: bool = True,
    max_iters: int | None = None,
) -> list[ClassResult]:
    """Solve the dual for every class ``j != y`` (those with ``baseline_j <= 0`` only, with
    ``skip_proven``) within ``time_limit`` seconds in all, and certify each from its multipliers."""
    k = baseline.size
    results = [ClassResult(j, float(baseline[j])) for j in range(k) if j != y]
    todo = [r for r in results if not (skip_proven and r.baseline > 0)]
    if not todo:
        return results
    start = time.monotonic()
    deadline = start + 0.95 * time_limit  # the rest for certifying each class's multipliers
    if solver == "first-order":
        from robustcert.sdp.first_order import first_order_dual

        objectives = [prog.objective(y, r.j) for r in todo]
        t0 = time.monotonic()
        targets = [prog.margin_error(y, r.j) * 1.01 + 1e-9 for r in todo]
        fo = first_order_dual(
            prog,
            objectives,
            deadline=deadline,
            max_iters=max_iters,
            targets=targets,
            stop_when_proven=skip_proven,
        )
        per = (time.monotonic() - t0) / len(todo)
        for r, mult in zip(todo, fo.multipliers, strict=True):
            _certify(prog, y, r, mult, solver_value=None)
            r.iterations, r.seconds, r.status = fo.iterations, per, fo.status
        return results
    from robustcert.sdp.cvx import CvxDual

    dual = CvxDual(prog, solver, time_limit, max_iters=max_iters)
    for n, r in enumerate(todo):
        t0 = time.monotonic()
        share = start + (deadline - start) * (n + 1) / len(todo)
        g, g0 = prog.objective(y, r.j)
        res = dual.solve(g, g0, share)
        _certify(prog, y, r, res.multipliers, solver_value=res.objective)
        r.iterations, r.status = res.iterations, res.status
        r.seconds = time.monotonic() - t0
    return results


def _certify(
    prog: QuadraticProgram, y: int, r: ClassResult, mult: Multipliers, solver_value: float | None
) -> None:
    g, g0 = prog.objective(y, r.j)
    db: DualBound = certified_bound(prog, g, g0, mult)
    r.sdp = db.bound - prog.margin_error(y, r.j)
    r.solver_value = solver_value


def sdp_margin(
    model: Any,
    x: torch.Tensor,
    y: int,
    eps: float,
    *,
    norm: str = "linf",
    solver: str = "first-order",
    time_limit: float = 60.0,
    domain: InputDomain | None = None,
    float_model: str = "float32",
    bounds_method: str = "crown",
    skip_proven: bool = True,
    max_iters: int | None = None,
    graph: Any = None,
    net: DenseNetwork | None = None,
) -> SdpResult:
    """A certified lower bound of ``min_{j != y} f_y - f_j`` over ``B_norm(x, eps) ∩ domain`` (``domain``
    None: [0, 1]) for the ``float_model`` network ("float32": the model's float32 evaluation in any
    summation order; "real": the real-valued network), by the SDP relaxation of Raghunathan et al.
    (2018) with stable ReLUs eliminated, solved by ``solver`` and certified from its multipliers
    (:mod:`robustcert.sdp.dual`). ``x``: [1, *input_shape]. Never above the true minimum, whatever the
    solver returns; at least the ``bounds_method`` bound."""
    from robustcert.graph import to_graph
    from robustcert.validation import check_eps

    if solver not in SOLVER_CHOICES:
        raise RobustCertError(f"unknown SDP solver {solver!r}; choose one of: {', '.join(SOLVER_CHOICES)}")
    if norm not in ("linf", "l2"):
        raise RobustCertError(f"the SDP certifies linf or l2 balls, got norm {norm!r}")
    if float_model not in ("float32", "real"):
        raise RobustCertError(f"float_model must be float32 or real, got {float_model!r}")
    eps = check_eps(eps)
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] != 1:
        raise RobustCertError(f"x must be one example shaped [1, *input_shape], got {getattr(x, 'shape', x)}")
    if solver != "first-order":
        from robustcert.sdp.cvx import require_cvxpy

        require_cvxpy(solver)
    start = time.monotonic()
    if graph is None:
        graph = to_graph(model, tuple(x.shape[1:]))
    if net is None:
        net = dense_network(graph)
    if not 0 <= int(y) < net.output_size:
        raise RobustCertError(f"label {y} is outside [0, {net.output_size - 1}]")
    prog, baseline = build_program(
        graph,
        net,
        x,
        int(y),
        eps,
        norm=norm,
        domain=domain,
        float_model=float_model,
        bounds_method=bounds_method,
    )
    left = max(time_limit - (time.monotonic() - start), 0.1)
    classes = solve_classes(
        prog, int(y), baseline, solver=solver, time_limit=left, skip_proven=skip_proven, max_iters=max_iters
    )
    worst = min((c.lower for c in classes), default=math.inf)
    return SdpResult(worst, classes, solver, time.monotonic() - start, dict(prog.counts), prog.size)
