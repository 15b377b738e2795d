"""The SDP certifier (robustcert.sdp) is sound and not vacuous, checked against independent oracles.

* Soundness: every certified per-class bound is at most the exact MILP's per-class value (the MILP's
  float64 objective at a point of the box, i.e. the real network's margin there), and at most the float32
  model's per-class margin at PGD points and at many random, corner and near-optimal points of the L∞ box
  or of the L2 ball ∩ [0, 1] — for every solver, for solves stopped after 1-5 iterations, and for any
  multipliers at all (random, huge, negative, or the optimum's with sign-violating entries) pushed through
  :func:`robustcert.sdp.dual.certified_bound`.
* Tightness: Clarabel's bound is at least IBP's, and on trained nets strictly above CROWN's and α-CROWN's.
* Float32: the float32 model's margins on points rounded to float32 stay above the ``float32`` bound,
  also on a linear region whose logits are large (where the float32 rounding matters), and the
  ``real`` bound is at least the ``float32`` one.

Tiny ReLU nets (6 inputs, two hidden layers of 10, 3 classes; random or briefly trained so that many
ReLUs are unstable at the budgets used) and one 64-input digits net.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from robustcert.attacks import pgd_attack
from robustcert.bounds import margin_lower
from robustcert.exact import exact_margin
from robustcert.graph import to_graph
from robustcert.sdp import Multipliers, certified_bound, dense_network, sdp_margin
from robustcert.sdp.certify import build_program
from robustcert.sdp.cvx import CvxDual

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, WIDTH, K = 6, 10, 3
# (net seed, trained, x seed, eps): chosen so that each program has several unstable ReLUs and both
# "robust" and "counterexample" MILP verdicts occur
CASES = [
    (0, False, 10, 0.05),
    (0, False, 10, 0.15),
    (2, False, 12, 0.1),
    (1, True, 11, 0.15),
    (3, True, 13, 0.1),
]
FAST = {"first-order": {"max_iters": 40}, "clarabel": {}, "scs": {"max_iters": 400}}


def _rel(a: float) -> float:
    """A float64-rounding-sized allowance for comparing two independently computed margins near ``a``."""
    return 1e-9 * (1.0 + abs(a))


@functools.cache
def _tiny(seed: int, trained: bool) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(D_IN, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, K)
    )
    if trained:  # a few full-batch Adam steps on a smooth 3-class task: margins of a few units
        gen = torch.Generator().manual_seed(seed)
        xs = torch.rand(256, D_IN, generator=gen)
        ys = (xs[:, :K] - xs[:, K : 2 * K]).argmax(1)
        opt = torch.optim.Adam(model.parameters(), lr=0.03)
        for _ in range(120):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs), ys).backward()
            opt.step()
    return model.eval()


@functools.cache
def _case(i: int):  # noqa: ANN202 - (model, x, y, eps, ExactResult)
    seed, trained, xseed, eps = CASES[i]
    model = _tiny(seed, trained)
    x = torch.rand(1, D_IN, generator=torch.Generator().manual_seed(xseed))
    with torch.no_grad():
        y = int(model(x).argmax())
    ex = exact_margin(model, x, y, eps=eps, time_limit=30)
    assert ex.min_margin is not None, ex.solver_status  # closed: class_upper are attained values
    return model, x, y, eps, ex


@functools.cache
def _digits():  # noqa: ANN202 - (model, xs, ys)
    """A 64-16-16-10 ReLU net trained 2 epochs on digits, and 3 correctly classified test examples."""
    from robustcert.data import load_dataset

    torch.manual_seed(0)
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        perm = torch.randperm(len(tr.y))
        for b in range(0, len(perm), 64):
            idx = perm[b : b + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(tr.x[idx]), tr.y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        ok = (model(te.x).argmax(1) == te.y).nonzero().flatten()[:3]
    return model, te.x[ok], te.y[ok]


# --- points inside the perturbation set and per-class margins there ---------------------------------------


def _box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x64 = x.double().reshape(1, -1)
    return (x64 - eps).clamp(0, 1), (x64 + eps).clamp(0, 1)


def _linf_points(x: torch.Tensor, eps: float, n: int, seed: int) -> torch.Tensor:
    """Uniform points, corners and points near corners of B_inf(x, eps) ∩ [0, 1], float64, [3n, d]."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = _box(x, eps)
    d = lo.shape[1]
    uni = lo + (hi - lo) * torch.rand(n, d, generator=gen, dtype=torch.float64)
    corner = torch.where(torch.rand(n, d, generator=gen) < 0.5, lo, hi)
    near = corner + (lo + hi - 2 * corner) * 0.02 * torch.rand(n, d, generator=gen, dtype=torch.float64)
    return torch.cat([uni, corner, near])


def _l2_points(x: torch.Tensor, eps: float, n: int, seed: int) -> torch.Tensor:
    """Points of B_2(x, eps) ∩ [0, 1] (inside and on the sphere, then clamped: clamping to [0, 1] only
    moves a point of x + B toward x coordinatewise, so it stays in the ball), float64, [2n, d]."""
    gen = torch.Generator().manual_seed(seed)
    x64 = x.double().reshape(1, -1)
    d = x64.shape[1]
    u = torch.randn(2 * n, d, generator=gen, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    r = torch.cat(
        [torch.ones(n, dtype=torch.float64), torch.rand(n, generator=gen, dtype=torch.float64) ** (1 / d)]
    )
    return (x64 + eps * (1 - 1e-12) * r[:, None] * u).clamp(0, 1)


def _class_margins32(model: nn.Module, pts: torch.Tensor, y: int, shape: tuple[int, ...]) -> np.ndarray:
    """[n, K] float32-model margins f_y - f_j at the points rounded to float32 (column y: +inf)."""
    with torch.no_grad():
        logits = model(pts.float().reshape(-1, *shape)).double()
    m = logits[:, y : y + 1] - logits
    m[:, y] = math.inf
    return m.numpy()


def _class_margins64(model: nn.Module, pts: torch.Tensor, y: int, shape: tuple[int, ...]) -> np.ndarray:
    """The same for the real-valued network, evaluated in float64 (error ~1e-15 relative)."""
    m64 = _double(model)
    with torch.no_grad():
        logits = m64(pts.reshape(-1, *shape))
    m = logits[:, y : y + 1] - logits
    m[:, y] = math.inf
    return m.numpy()


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double().eval()


def _descend_classes(
    model: nn.Module, x: torch.Tensor, y: int, eps: float, norm: str, starts: int = 8, steps: int = 60
) -> torch.Tensor:
    """Near-minimisers of each f_y - f_j over the set, by float64 projected sign-gradient / L2 steps from
    random starts (a per-class PGD, which the library's PGD, on the overall margin, is not)."""
    m64 = _double(model)
    x64 = x.double().reshape(1, -1)
    lo, hi = _box(x, eps)
    pts = _linf_points(x, eps, starts, 1) if norm == "linf" else _l2_points(x, eps, starts, 1)
    found = []
    for j in range(K if x.shape[1] == D_IN else 10):
        if j == y:
            continue
        p = pts.clone()
        for t in range(steps):
            p.requires_grad_(True)
            out = m64(p.reshape(-1, *x.shape[1:]))
            (out[:, y] - out[:, j]).sum().backward()
            step = eps * 0.25 * (1 - t / steps) + 1e-4
            with torch.no_grad():
                if norm == "linf":
                    p = torch.minimum(torch.maximum(p - step * p.grad.sign(), lo), hi)
                else:
                    g = p.grad / p.grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
                    delta = p - step * g - x64
                    delta = delta * (eps * (1 - 1e-12) / delta.norm(dim=1, keepdim=True).clamp_min(eps))
                    p = (x64 + delta).clamp(0, 1)
        found.append(p.detach())
    return torch.cat(found)


def _pgd_points(model: nn.Module, x: torch.Tensor, y: int, eps: float, norm: str) -> torch.Tensor:
    pts = []
    for seed in range(3):
        res = pgd_attack(model, x, torch.tensor([y]), eps, norm=norm, steps=40, restarts=2, seed=seed)
        pts.append(res.x_adv.double().reshape(1, -1))
    return torch.cat(pts)


def _check_below_points(res, margins: np.ndarray, y: int) -> None:  # noqa: ANN001
    """Every solved class's certified bound (and the reported margin_lower) is <= the margins at all points."""
    for c in res.classes:
        assert c.sdp is not None and math.isfinite(c.sdp)
        lowest = float(margins[:, c.j].min())
        assert c.sdp <= lowest, f"class {c.j}: certified {c.sdp!r} > margin {lowest!r} at a point of the set"
        assert c.lower <= lowest
    assert res.margin_lower <= float(np.delete(margins, y, axis=1).min())


# --- 1. below the exact MILP, per class, every solver ------------------------------------------------------


@pytest.mark.parametrize("solver", ["first-order", "clarabel", "scs"])
def test_each_class_bound_is_below_the_milp_value(solver: str) -> None:
    unstable = 0
    for i in range(len(CASES)):
        model, x, y, eps, ex = _case(i)
        res = sdp_margin(
            model,
            x,
            y,
            eps,
            solver=solver,
            float_model="real",
            skip_proven=False,
            time_limit=20,
            **FAST[solver],
        )
        unstable += res.counts["unstable"]
        assert len(res.classes) == K - 1
        for c in res.classes:
            assert c.sdp is not None and c.iterations > 0, (i, c)
            # class_upper[j]: the real network's margin f_y - f_j at a point of the box (the MILP's
            # float64 objective there); the certified bound of the real network cannot exceed it
            assert c.sdp <= ex.class_upper[c.j] + _rel(ex.class_upper[c.j]), (i, solver, c, ex.class_upper)
            assert c.lower <= ex.class_upper[c.j] + _rel(ex.class_upper[c.j])
        assert res.margin_lower <= ex.min_margin + 2 * ex.tolerance + _rel(ex.min_margin)
        assert res.sdp_lower is not None and res.sdp_lower <= ex.upper_bound + _rel(ex.upper_bound)
    assert unstable >= 20  # the relaxation, not just interval arithmetic, is exercised


def test_digits_net_below_milp_and_pgd() -> None:
    model, xs, ys = _digits()
    shape = (1, 8, 8)
    for x, y, eps, solver in [
        (xs[0:1], int(ys[0]), 0.03, "first-order"),
        (xs[1:2], int(ys[1]), 0.05, "clarabel"),
    ]:
        ex = exact_margin(model, x, y, eps=eps, time_limit=30)
        res = sdp_margin(
            model,
            x,
            y,
            eps,
            solver=solver,
            float_model="real",
            skip_proven=False,
            max_iters=100 if solver == "first-order" else None,
            time_limit=30,
        )
        assert res.counts["unstable"] >= 3
        for c in res.classes:
            assert c.sdp is not None
            assert c.sdp <= ex.class_upper[c.j] + _rel(ex.class_upper[c.j]), (solver, c, ex.class_upper)
        res32 = sdp_margin(model, x, y, eps, solver="first-order", skip_proven=False, max_iters=60)
        pts = torch.cat([_linf_points(x, eps, 300, 3), _pgd_points(model, x, y, eps, "linf")])
        if ex.argmin is not None:
            pts = torch.cat([pts, ex.argmin.double().reshape(1, -1)])
        _check_below_points(res32, _class_margins32(model, pts, y, shape), y)


# --- 1b / 5. below the float32 model's margins at attacked and sampled points, L∞ and L2 --------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("solver", ["first-order", "clarabel"])
def test_float32_bound_is_below_margins_at_points(solver: str, norm: str) -> None:
    for i in range(len(CASES)):
        model, x, y, eps, _ = _case(i)
        if norm == "l2":
            eps = 2 * eps  # an L2 ball of a similar reach on 6 inputs
        res = sdp_margin(model, x, y, eps, norm=norm, solver=solver, skip_proven=False, **FAST[solver])
        sampled = _linf_points(x, eps, 400, i) if norm == "linf" else _l2_points(x, eps, 600, i)
        pts = torch.cat(
            [sampled, _pgd_points(model, x, y, eps, norm), _descend_classes(model, x, y, eps, norm)]
        )
        if norm == "l2":
            assert bool(((pts - x.double()).norm(dim=1) <= eps).all())
        _check_below_points(res, _class_margins32(model, pts, y, (D_IN,)), y)


# --- 2. stopped after a few iterations ----------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["first-order", "scs"])
@pytest.mark.parametrize("iters", [1, 2, 5])
def test_solve_stopped_early_is_still_sound(solver: str, iters: int) -> None:
    for i in range(len(CASES)):
        model, x, y, eps, ex = _case(i)
        res = sdp_margin(
            model, x, y, eps, solver=solver, float_model="real", skip_proven=False, max_iters=iters
        )
        for c in res.classes:
            assert 0 < c.iterations <= iters, c
            assert c.sdp is not None and not math.isnan(c.sdp)
            assert c.sdp <= ex.class_upper[c.j] + _rel(ex.class_upper[c.j]), (i, c, ex.class_upper)


def test_tiny_time_limit_is_still_sound() -> None:
    model, x, y, eps, ex = _case(1)
    res = sdp_margin(
        model, x, y, eps, solver="first-order", float_model="real", skip_proven=False, time_limit=1e-3
    )
    for c in res.classes:
        assert c.sdp is not None and not math.isnan(c.sdp)
        assert c.sdp <= ex.class_upper[c.j] + _rel(ex.class_upper[c.j])


def test_clarabel_honours_max_iters() -> None:
    model, x, y, eps, ex = _case(1)
    res = sdp_margin(model, x, y, eps, solver="clarabel", float_model="real", skip_proven=False, max_iters=2)
    for c in res.classes:
        assert c.sdp is not None and c.sdp <= ex.class_upper[c.j] + _rel(ex.class_upper[c.j])
    assert all(c.iterations <= 2 for c in res.classes), [c.iterations for c in res.classes]


# --- 3. any multipliers give a bound below the program's true minimum ---------------------------------------


def _program_margins(prog, pts: torch.Tensor, g: np.ndarray, g0: float) -> np.ndarray:  # noqa: ANN001
    """The program's own margin g.v + g0 at the program-network point v(x) of each input x (float64)."""
    X = pts.numpy().reshape(len(pts), -1)
    V = np.zeros((len(X), prog.size))
    V[:, : prog.n_in] = X
    for i in range(prog.hidden):
        V[:, prog.n_in + i] = np.maximum(V @ prog.pre_A[i] + prog.pre_c[i], 0.0)
    return V @ g + g0


def _multiplier_families(prog, best: Multipliers, rng: np.random.Generator):  # noqa: ANN001, ANN202
    N, H, m = prog.size, prog.hidden, prog.h.size

    def rand(n: int, lo: float, hi: float) -> np.ndarray:
        return rng.choice([-1.0, 1.0], n) * 10.0 ** rng.uniform(lo, hi, n)

    for _ in range(40):  # random signs and magnitudes over 12 decades
        yield Multipliers(rand(N, -6, 6), rand(H, -6, 6), rand(m, -6, 6), float(rand(1, -6, 6)[0]))
    for scale in (1e12, 1e30, 1e100):  # huge
        yield Multipliers(np.full(N, scale), rand(H, 0, 1) * scale, np.full(m, scale), scale)
        yield Multipliers(rand(N, 0, 1) * scale, rand(H, 0, 1), rand(m, 0, 1), scale)
    yield Multipliers(np.zeros(N), np.zeros(H), np.zeros(m), 0.0)
    yield Multipliers(-np.abs(best.box), -best.relu, -np.abs(best.lin), -1.0)  # all signs wrong
    for noise in (1e-8, 1e-4, 1e-2, 0.3):  # the optimum, perturbed (sign-violating entries included)
        for _ in range(5):
            yield Multipliers(
                best.box * (1 + noise * rng.standard_normal(N)) + noise * rng.standard_normal(N),
                best.relu * (1 + noise * rng.standard_normal(H)),
                best.lin * (1 + noise * rng.standard_normal(m)) + noise * rng.standard_normal(m),
                best.ball,
            )
    # the optimum with one multiplier made negative: where that constraint is slack at the relaxation's
    # optimum, an unclipped negative multiplier would *raise* the computed value above the true minimum
    for t in (0.1, 1.0, 10.0):
        for k in range(0, m, max(1, m // 25)):
            lin = best.lin.copy()
            lin[k] = -t * (1.0 + abs(lin[k]))
            yield Multipliers(best.box, best.relu, lin, best.ball)
        for k in range(N):
            box = best.box.copy()
            box[k] = -t * (1.0 + abs(box[k]))
            yield Multipliers(box, best.relu, best.lin, best.ball)


@pytest.mark.parametrize("case,norm", [(1, "linf"), (3, "linf"), (3, "l2")])
def test_any_multipliers_give_a_bound_below_the_true_minimum(case: int, norm: str) -> None:
    model, x, y, eps, ex = _case(case)
    eps = eps if norm == "linf" else 2 * eps
    graph = to_graph(model, (D_IN,))
    prog, _ = build_program(
        graph, dense_network(graph), x, y, eps, norm=norm, domain=None, float_model="real"
    )
    assert prog.hidden >= 4
    pts = torch.cat(
        [
            _linf_points(x, eps, 500, 5) if norm == "linf" else _l2_points(x, eps, 500, 5),
            _descend_classes(model, x, y, eps, norm),
        ]
    )
    nets64 = _class_margins64(model, pts, y, (D_IN,))
    rng = np.random.default_rng(case)
    dual = CvxDual(prog, "clarabel", 20.0)
    tried = 0
    for j in range(K):
        if j == y:
            continue
        g, g0 = prog.objective(y, j)
        err = prog.margin_error(y, j)
        own = _program_margins(prog, pts, g, g0)
        # the program network and the real one agree within margin_error at every point of the set
        assert np.abs(own - nets64[:, j]).max() <= err
        truth = float(own.min())
        if norm == "linf":
            truth = min(truth, ex.class_upper[j] + err)
        best = dual.solve(g, g0, deadline=math.inf).multipliers
        opt = certified_bound(prog, g, g0, best).bound
        assert opt <= truth + _rel(truth)
        for mult in _multiplier_families(prog, best, rng):
            b = certified_bound(prog, g, g0, mult).bound
            assert not math.isnan(b)
            assert b <= truth + _rel(truth), (j, b, truth, mult)
            tried += 1
    assert tried > 200


# --- 4. tightness: at least IBP, and beyond CROWN / α-CROWN on trained nets -----------------------------------


def test_clarabel_bound_is_at_least_ibp_and_beats_crown() -> None:
    """The program contains the triangle (LP) constraints over intervals at least as tight as IBP's, so its
    exact optimum is >= the IBP margin bound; Clarabel stops at ~1e-8 relative accuracy and the dual is
    recomputed with rounding padding, hence the 1e-6 (1 + |ibp|) allowance."""
    beats_crown = beats_alpha = 0
    for i in range(len(CASES)):
        model, x, y, eps, _ = _case(i)
        res = sdp_margin(model, x, y, eps, solver="clarabel", float_model="real", skip_proven=False)
        labels = torch.tensor([y])
        kw = {"eps": eps, "float_model": "real"}
        ibp = margin_lower(model, x, labels, method="ibp", **kw)[0].numpy()
        crown = margin_lower(model, x, labels, method="crown", **kw)[0].numpy()
        alpha = margin_lower(model, x, labels, method="alpha-crown", **kw)[0].numpy()
        for c in res.classes:
            assert c.sdp is not None
            assert c.sdp >= ibp[c.j] - 1e-6 * (1 + abs(ibp[c.j])), (i, c, ibp)
            assert c.lower >= crown[c.j]  # the reported bound never drops below the baseline
            beats_crown += c.sdp > crown[c.j] + 1e-3 * (1 + abs(crown[c.j]))
            beats_alpha += c.sdp > alpha[c.j] + 1e-3 * (1 + abs(alpha[c.j]))
    assert beats_crown >= 2 and beats_alpha >= 2, (beats_crown, beats_alpha)


# --- 5. float32 vs real ---------------------------------------------------------------------------------------


def test_real_bound_is_at_least_the_float32_bound() -> None:
    """float32 pays its deployment error (wider intervals, larger margin_error): its bound cannot be
    higher than the real network's, up to Clarabel's accuracy."""
    strictly = 0
    for i in range(len(CASES)):
        model, x, y, eps, _ = _case(i)
        real = sdp_margin(model, x, y, eps, solver="clarabel", float_model="real", skip_proven=False)
        f32 = sdp_margin(model, x, y, eps, solver="clarabel", float_model="float32", skip_proven=False)
        for a, b in zip(real.classes, f32.classes, strict=True):
            assert a.sdp is not None and b.sdp is not None
            assert a.sdp >= b.sdp - 1e-6 * (1 + abs(b.sdp)), (i, a, b)
            strictly += a.sdp > b.sdp
    assert strictly >= 5


def _big_linear_region_net() -> tuple[nn.Sequential, torch.Tensor, int]:
    """Large logits (~1e3) with a margin of a few units, every ReLU stable at eps = 1e-4: the margin is an
    affine function, the relaxation is exact, and what separates the real minimum from the float32
    model's is float32 rounding of ~1e-4."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(D_IN, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, K))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(8.0)
            layer.bias.abs_().add_(3.0)  # every unit active around x
        model[4].weight.mul_(8.0)
    x = torch.rand(1, D_IN, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = int(model(x).argmax())
    return model, x, y


def test_float32_rounding_is_paid_on_a_large_linear_region() -> None:
    """Every ReLU is stable, so the margin is affine on the box and the SDP is exact: with the optimal
    box multipliers (|g_i| / (2 r_i), in closed form) the dual bound equals the real minimum up to
    ~1e-9. The float32 model's margins at float32 points at and next to the minimising corner fall
    *below* that real minimum (rounding of ~1e-5 here): only ``margin_error`` keeps the bound below them."""
    model, x, y = _big_linear_region_net()
    eps = 1e-4
    graph = to_graph(model, (D_IN,))
    prog, _ = build_program(
        graph, dense_network(graph), x, y, eps, norm="linf", domain=None, float_model="float32"
    )
    assert prog.hidden == 0
    lo, hi = _box(x, eps)
    m64 = _double(model)
    gen = torch.Generator().manual_seed(0)
    below_real = 0
    for j in range(K):
        if j == y:
            continue
        g, g0 = prog.objective(y, j)
        box = np.abs(g) / (prog.hi - prog.lo)
        bound = certified_bound(prog, g, g0, Multipliers(box, np.zeros(0), np.zeros(prog.h.size))).bound
        p = x.double().reshape(1, -1).clone().requires_grad_(True)
        out = m64(p)
        (out[0, y] - out[0, j]).backward()
        corner = torch.where(p.grad > 0, lo, hi)
        with torch.no_grad():
            real_min = float(m64(corner)[0, y] - m64(corner)[0, j])
        assert abs(bound - real_min) <= 1e-6 * abs(real_min)  # the dual at these multipliers is exact
        c32 = corner.float().double()
        ulps = torch.randint(0, 4, (4000, D_IN), generator=gen).double()
        near = c32 + torch.sign(x.double() - c32) * ulps * torch.finfo(torch.float32).eps * c32.abs()
        f32 = _class_margins32(model, torch.cat([c32, near]), y, (D_IN,))[:, j]
        below_real += int((f32 < real_min - 1e-7 * abs(real_min)).sum())
        assert bound - prog.margin_error(y, j) <= float(f32.min()), (
            j,
            bound,
            prog.margin_error(y, j),
            f32.min(),
        )
    assert below_real > 0  # float32 rounding does go below the real minimum: the check has teeth
    res = sdp_margin(model, x, y, eps, solver="clarabel", float_model="float32", skip_proven=False)
    assert res.counts["unstable"] == 0
    pts = torch.cat([_linf_points(x, eps, 300, 0), _descend_classes(model, x, y, eps, "linf")])
    _check_below_points(res, _class_margins32(model, pts, y, (D_IN,)), y)


# --- non-finite values: a NaN must never count as a proof ---------------------------------------------------


def test_huge_finite_multipliers_give_a_number() -> None:
    model, x, y, eps, _ = _case(1)
    graph = to_graph(model, (D_IN,))
    prog, _ = build_program(
        graph, dense_network(graph), x, y, eps, norm="linf", domain=None, float_model="real"
    )
    j = next(k for k in range(K) if k != y)
    g, g0 = prog.objective(y, j)
    N, H, m = prog.size, prog.hidden, prog.h.size
    with np.errstate(all="ignore"):
        b = certified_bound(
            prog, g, g0, Multipliers(np.full(N, 1e200), np.full(H, 1e200), np.full(m, 1e200), 1e200)
        )
    assert not math.isnan(b.bound)  # a valid, useless -inf is fine; NaN is never


def test_a_nan_class_bound_is_never_a_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    import robustcert.sdp.certify as certify
    from robustcert.sdp.dual import DualBound

    model, x, y, eps, ex = _case(1)
    assert ex.status == "counterexample"
    crown = margin_lower(model, x, torch.tensor([y]), eps=eps)[0].numpy()
    bad = [j for j in range(K) if j != y and crown[j] <= 0]
    assert bad and bad[-1] == max(j for j in range(K) if j != y)  # the unproven class comes last
    real = certify.certified_bound

    def nan_for_bad(prog, g, g0, m):  # noqa: ANN001, ANN202
        if np.array_equal(g, prog.objective(y, bad[-1])[0]):
            return DualBound(math.nan, math.nan, math.nan, "full")
        return real(prog, g, g0, m)

    monkeypatch.setattr(certify, "certified_bound", nan_for_bad)
    res = sdp_margin(model, x, y, eps, solver="clarabel", float_model="real")
    assert not res.margin_lower > 0, res  # a counterexample exists (MILP): this must not look robust
