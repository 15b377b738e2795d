"""The exact MILP's verdicts are re-checked (issue 9).

* "robust" needs HiGHS' dual bound minus its tolerances (MIP gap, feasibility tolerance, LP accuracy) > 0:
  faked solver results just inside the tolerance, with a wide relative gap, an error status, a refused
  option or no dual bound are never "robust";
* "counterexample" needs the model's own float32 forward pass at the snapped point (inside the region) to
  confirm margin ≤ 0: a faked claim it does not confirm is "unknown";
* the input domain (robustcert.domain.InputDomain) replaces [0, 1]: real solves over [-1, 2] × [-0.5, 1.5]
  agree with a dense grid over box ∩ domain, their counterexamples lie in it, their robust verdicts
  survive PGD restricted to it; x outside the domain is refused; ExactCertifier passes ModelInfo.domain.
"""

from __future__ import annotations

import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.optimize import OptimizeResult, OptimizeWarning
from torch import nn

from robustcert.attacks import margin, pgd_attack
from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.exact import exact_margin, exact_margins
from robustcert.exact import milp as milp_module
from robustcert.methods.base import ModelInfo
from robustcert.methods.exact import ExactCertifier, ExactParams

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ faked solver results


def _vee() -> nn.Sequential:
    """f_0 = 2 (x1 + x2) − 1, f_1 = 1.5 |x1 − x2|: the MILP objective of class 1 is
    ``2 (x1 + x2) − 1.5 |x1 − x2|`` and its constant ``CONST = −1`` exactly (the only bias), so a faked
    objective value v means a margin ``v − 1``. At X = (0.5, 0.5) the margin is 1; on [0, 1]^2 (eps 0.5) its
    minimum is −1 at (0, 0) (−0.5 at (1, 0)), and the interval bounds prove nothing."""
    m = nn.Sequential(nn.Linear(2, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]))
        m[2].weight.copy_(torch.tensor([[0.0, 0.0, 2.0], [1.5, 1.5, 0.0]]))
        m[2].bias.copy_(torch.tensor([-1.0, 0.0]))
    return m


X = torch.tensor([[0.5, 0.5]])
CONST = -1.0


def _fake_solver(monkeypatch, point, fun, dual, status=0, refuse=False):  # type: ignore[no-untyped-def]
    """Replace HiGHS by a result claiming objective ``fun`` at input ``point`` (the other MILP variables
    0) and dual bound ``dual``; ``refuse`` adds scipy's warning that HiGHS refused an option."""
    calls = []

    def fake(c, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["options"])
        if refuse:
            warnings.warn("Option 'mip_abs_gap' is out of range", OptimizeWarning, stacklevel=2)
        x = np.zeros(len(c))
        x[:2] = point
        return OptimizeResult(
            status=status, message="fake", success=status == 0, x=x, fun=fun,
            mip_dual_bound=dual, mip_gap=0.0, mip_node_count=1,
        )

    monkeypatch.setattr(milp_module, "milp", fake)
    return calls


def test_fixture_has_a_counterexample_and_the_stated_constant(monkeypatch) -> None:
    seen = []
    real = milp_module.milp

    def spy(c, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(real(c, **kwargs))
        return seen[-1]

    monkeypatch.setattr(milp_module, "milp", spy)
    res = exact_margin(_vee(), X, 0, 0.5)
    assert res.status == "counterexample" and res.min_margin == pytest.approx(-1.0, abs=1e-3)
    assert res.class_upper[1] == seen[0].fun + CONST  # the objective's constant is CONST


def test_solver_gets_the_tolerances_the_slack_assumes(monkeypatch) -> None:
    calls = _fake_solver(monkeypatch, [0.5, 0.5], 1.0, 1.0)
    exact_margin(_vee(), X, 0, 0.5, mip_rel_gap=1e-3)
    (options,) = calls
    assert options["mip_rel_gap"] == 1e-3
    for key, value in milp_module._HIGHS_TOLERANCES.items():
        assert options[key] == value


def test_dual_bound_within_the_absolute_gap_is_not_robust(monkeypatch) -> None:
    # HiGHS stops with dual = primal: margin 5e-7 > 0, but the true minimum may lie mip_abs_gap (1e-6) lower
    _fake_solver(monkeypatch, [0.5, 0.5], 1 + 5e-7, 1 + 5e-7)
    res = exact_margin(_vee(), X, 0, 0.5)
    assert res.status == "unknown" and not res.verified
    assert res.lower_bound < 0 and res.counterexample is None
    assert res.tolerance >= 1e-6  # max(mip_abs_gap, mip_feasibility_tolerance) at least


def test_dual_bound_well_above_the_slack_is_robust(monkeypatch) -> None:
    """The same faked solve with a clear bound: the verdict follows the dual bound (so the test above
    fails for the slack, not for some other reason)."""
    _fake_solver(monkeypatch, [0.5, 0.5], 1.3, 1.3)
    res = exact_margin(_vee(), X, 0, 0.5)
    assert res.status == "robust"
    assert res.lower_bound == pytest.approx(0.3 - res.tolerance) and res.tolerance < 1e-3


@pytest.mark.parametrize("objective,robust", [(1.005, False), (1.05, True)])
def test_relative_gap_is_subtracted(monkeypatch, objective: float, robust: bool) -> None:
    """Solved "to optimality" with mip_rel_gap 1e-2: HiGHS may have pruned nodes down to 1 % of the
    objective (about 1e-2) below it, which a margin of 5e-3 does not survive and one of 5e-2 does."""
    _fake_solver(monkeypatch, [0.5, 0.5], objective, objective)
    res = exact_margin(_vee(), X, 0, 0.5, mip_rel_gap=1e-2)
    assert (res.status == "robust") is robust
    assert res.tolerance >= 1e-2 * objective
    assert res.lower_bound <= objective + CONST - 1e-2 * objective


def test_open_gap_keeps_the_open_nodes_bound(monkeypatch) -> None:
    """Stopped at the time limit with incumbent 3.0 and dual bound 1.02: every pruned node lies above
    3.0 − 1 %, so the bound is the dual bound (minus the LP accuracy allowance), and the gap is open."""
    _fake_solver(monkeypatch, [0.5, 0.5], 3.0, 1.02, status=1)
    res = exact_margin(_vee(), X, 0, 0.5, mip_rel_gap=1e-2)
    assert res.status == "robust" and res.min_margin is None
    assert 0 < res.lower_bound <= 0.02 and res.tolerance < 1e-3


@pytest.mark.parametrize(
    "primal,dual,const,rel,expected",
    [
        (5e-7, 5e-7, 0.0, 1e-6, 5e-7 - 1e-6),  # closed gap: minus max(abs gap, τ) = 1e-6
        (1.0, 1.0, -1 + 5e-7, 1e-6, 5e-7 - 1e-6),  # the gap is on the objective, not on the margin
        (2.0, 2.0, -1.985, 1e-2, 0.015 - 0.02),  # relative gap: 1 % of the objective 2.0
        (3.0, 1.0, -0.99, 1e-2, 0.01),  # open gap: pruned nodes lie above 2.97, the open ones above 1.0
        (None, 1.0, -0.99, 1e-2, 0.01 - 1e-6),  # no incumbent: still minus max(abs gap, τ)
    ],
)
def test_solver_bound_subtracts_the_gap_highs_may_have_pruned(primal, dual, const, rel, expected) -> None:  # type: ignore[no-untyped-def]
    res = OptimizeResult(status=0, fun=primal, mip_dual_bound=dual)
    bound, slack, _ = milp_module._solver_bound(res, const, 0.0, rel, True)
    assert bound == pytest.approx(expected, abs=1e-7)  # rounding allowance: 1e-9 of the magnitudes
    assert bound == pytest.approx(dual + const - slack)
    with_lp = milp_module._solver_bound(res, const, 1e-4, rel, True)[0]
    assert with_lp == pytest.approx(expected - 1e-4, abs=1e-7)  # the LP accuracy allowance adds on


@pytest.mark.parametrize(
    "case",
    ["solver error", "infeasible", "no dual bound", "nan dual bound", "refused option"],
)
def test_no_trusted_dual_bound_is_never_robust(monkeypatch, case: str) -> None:
    kwargs = {
        "solver error": {"status": 4},
        "infeasible": {"status": 2},
        "no dual bound": {"dual": None},
        "nan dual bound": {"dual": float("nan")},
        "refused option": {"refuse": True},
    }[case]
    args = {"point": [0.5, 0.5], "fun": 2.0, "dual": 2.0, **kwargs}
    _fake_solver(monkeypatch, **args)
    res = exact_margin(_vee(), X, 0, 0.5)
    assert res.status == "unknown"
    assert res.class_lower[1] < -0.5  # only the solver-free interval bound is left
    assert res.tolerance == 0.0


def test_claimed_counterexample_that_the_forward_pass_refutes_is_unknown(monkeypatch) -> None:
    # the solver claims margin -0.5 (dual bound too) at (0.5, 0.5), where the model's margin is +1
    _fake_solver(monkeypatch, [0.5, 0.5], 0.5, 0.5)
    res = exact_margin(_vee(), X, 0, 0.5)
    assert res.status == "unknown" and res.counterexample is None
    assert res.argmin_margin == pytest.approx(1.0)
    assert "not confirmed" in res.solver_status[1]


def test_claimed_counterexample_slightly_outside_the_box_is_snapped_and_confirmed(monkeypatch) -> None:
    # HiGHS may return bounds violated by its feasibility tolerance: (1 + 1e-7, -1e-7), margin -0.5
    _fake_solver(monkeypatch, [1.0 + 1e-7, -1e-7], 0.5, 0.5)
    res = exact_margin(_vee(), X, 0, 0.5)
    assert res.status == "counterexample"
    cex = res.counterexample
    assert cex is not None and cex.dtype == torch.float32 and cex.shape == X.shape
    assert bool((cex >= 0).all() and (cex <= 1).all())
    assert float(margin(_vee(), cex, torch.tensor([0]))) <= 0


def test_tie_counts_as_counterexample_never_robust() -> None:
    """Two identical logits: margin exactly 0 everywhere, which is not robust (margin > 0 is)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        m[2].weight[1] = m[2].weight[0]
        m[2].bias[1] = m[2].bias[0]
        m[2].bias[2] = -100.0
    res = exact_margin(m, X, 0, 0.1)
    assert res.status == "counterexample"
    assert res.argmin_margin == 0.0 and res.lower_bound <= 0


def test_float64_model_is_checked_in_float64() -> None:
    m = _vee().double()
    res = exact_margin(m, X.double(), 0, 0.5)
    assert res.status == "counterexample" and res.counterexample is not None
    assert res.counterexample.dtype == torch.float64


def test_real_solves_subtract_at_least_the_gap_tolerances() -> None:
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.tensor([[0.4, 0.6]])
    y = int(m(x).argmax(1))
    res = exact_margin(m, x, y, 0.2)
    assert res.num_binaries > 0
    # max(abs gap, τ) plus the LP allowance, which has τ · 1 for each binary's range at least
    assert res.tolerance >= 1e-6 * (1 + res.num_binaries)
    solved = [j for j in range(3) if j != y]
    assert all(res.class_lower[j] <= res.class_upper[j] for j in solved)


# ------------------------------------------------------------------ rounding of the region


def test_directed_sum_brackets_the_real_sum() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(2000).astype(np.float32).astype(np.float64)
    b = rng.choice([0.1, 1 / 3, 0.3, 1e-9, 0.0, 2.0], 2000) * rng.choice([-1, 1], 2000)
    down, up = milp_module._directed_sum(a, b)
    for ai, bi, d, u in zip(a, b, down, up, strict=True):
        exact = Fraction(float(ai)) + Fraction(float(bi))
        assert Fraction(float(d)) <= exact <= Fraction(float(u))
        assert np.nextafter(d, np.inf) >= u  # tight: at most one ulp apart
        if Fraction(float(d)) == exact:
            assert d == u


def test_snapped_points_lie_in_the_ball_and_domain_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    dom = InputDomain((-1.0, -0.5), (2.0, 1.5))
    for eps in (0.1, 1 / 3, 0.7):
        x = dom.clip(torch.rand(1, 2, 3, 3, generator=gen) * 3 - 1)
        region = milp_module._region(x, eps, None, dom)
        lo_t, hi_t = dom.tensors(x)
        for trial in range(50):
            # corners of the outward box, points beyond it and random points
            raw = np.where(np.random.default_rng(trial).random(region.lo.size) < 0.5, region.lo, region.hi)
            raw = raw + np.random.default_rng(100 + trial).normal(0, 1e-7 if trial % 2 else 0.5, raw.size)
            p = milp_module._snap(raw, region, torch.float32)
            assert p is not None and p.dtype == torch.float32 and p.shape == x.shape
            assert bool((p >= lo_t).all() and (p <= hi_t).all())
            for pi, xi in zip(p.flatten().tolist(), x.flatten().tolist(), strict=True):
                assert abs(Fraction(pi) - Fraction(xi)) <= Fraction(eps)


def test_point_on_the_outward_bound_snaps_inside_the_real_ball() -> None:
    """x − eps = 0.5 + 2^-62 exactly, which float64 rounds down to the float32 0.5: the MILP's box reaches
    0.5, but 0.5 is 2^-24 > eps away from x, so a solver point there must snap to x's side."""
    x = torch.tensor([[0.5 + 2.0**-24]])
    eps = 2.0**-24 - 2.0**-62
    region = milp_module._region(x, eps, None, None)
    assert region.lo[0] == 0.5 and region.inner_lo[0] > 0.5  # outward contains, inward excludes 0.5
    p = milp_module._snap(np.array([0.5]), region, torch.float32)
    assert p is not None and abs(Fraction(float(p)) - Fraction(float(x))) <= Fraction(eps)


def test_region_contains_the_ball_and_no_float32_means_no_point() -> None:
    x = torch.tensor([[0.3, 0.9]])
    region = milp_module._region(x, 0.1, None, None)
    for v, lo, hi in zip(x.flatten().tolist(), region.lo, region.hi, strict=True):
        assert Fraction(float(lo)) <= max(Fraction(v) - Fraction(0.1), Fraction(0))
        assert Fraction(float(hi)) >= min(Fraction(v) + Fraction(0.1), Fraction(1))
    box = milp_module._region(None, None, (torch.full((1, 1), 0.1, dtype=torch.float64),) * 2, None)
    assert milp_module._snap(np.array([0.1]), box, torch.float32) is None  # 0.1 is no float32
    assert milp_module._snap(np.array([0.1]), box, torch.float64) is not None


# ------------------------------------------------------------------ input domains other than [0, 1]

DOMAIN = InputDomain((-1.0, -0.5), (2.0, 1.5))  # per channel (here: per input of a flat 2-vector)


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


def _box(x: torch.Tensor, eps: float, dom: InputDomain) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = dom.tensors(x)
    return torch.maximum(x - eps, lo), torch.minimum(x + eps, hi)


def _grid_min(model: nn.Module, x: torch.Tensor, y: int, eps: float, dom: InputDomain, n: int = 401):
    lo, hi = _box(x.double(), eps, dom)
    g0 = torch.linspace(float(lo[0, 0]), float(hi[0, 0]), n)
    g1 = torch.linspace(float(lo[0, 1]), float(hi[0, 1]), n)
    pts = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    pts = torch.maximum(torch.minimum(pts, hi.float()), lo.float())
    return float(margin(model, pts, torch.full((len(pts),), y), domain=dom).min()), pts


def _in_region(p: torch.Tensor, x: torch.Tensor, eps: float, dom: InputDomain) -> bool:
    lo, hi = dom.tensors(p)
    exact = all(
        abs(Fraction(a) - Fraction(b)) <= Fraction(eps)
        for a, b in zip(p.flatten().tolist(), x.flatten().tolist(), strict=True)
    )
    return exact and bool((p >= lo).all() and (p <= hi).all())


SEEDS = [(0, [[-0.9, 1.4]], 0.4), (1, [[1.9, -0.4]], 0.5), (2, [[0.0, 1.0]], 0.6), (3, [[-1.0, -0.5]], 0.3)]


@pytest.mark.parametrize("seed,x,eps", SEEDS)
def test_domain_matches_grid_and_pgd_inside_box_and_domain(seed: int, x: list, eps: float) -> None:
    model = _mlp(seed)
    xt = torch.tensor(x)
    y = int(model(xt).argmax(1))
    res = exact_margin(model, xt, y, eps, domain=DOMAIN)
    assert res.min_margin is not None and res.status in ("robust", "counterexample")
    assert res.argmin is not None and _in_region(res.argmin, xt, eps, DOMAIN)
    g, _ = _grid_min(model, xt, y, eps, DOMAIN)
    assert res.lower_bound <= g + 1e-5  # below every grid point of box ∩ domain
    assert g - res.lower_bound <= 0.05  # and close to the grid minimum (grid spacing <= 3e-3)
    adv = pgd_attack(model, xt, torch.tensor([y]), eps, steps=50, restarts=5, domain=DOMAIN)
    assert _in_region(adv.x_adv, xt, eps, DOMAIN)
    assert res.lower_bound <= float(adv.adv_margin) + 1e-5
    if res.status == "robust":
        assert float(adv.adv_margin) > 0
    else:
        cex = res.counterexample
        assert cex is not None and _in_region(cex, xt, eps, DOMAIN)
        assert float(margin(model, cex, torch.tensor([y]), domain=DOMAIN)) <= 0


def test_domain_is_really_used_not_unit_box() -> None:
    """Near the domain's edges a [0, 1]-clipped MILP would miss the points outside [0, 1]: for some of
    these cases the grid minimum over box ∩ domain is far below the one over box ∩ [0, 1], and the MILP
    follows the former."""
    lower_than_unit = 0
    for seed, x, eps in SEEDS[:3]:
        model = _mlp(seed)
        xt = torch.tensor(x)
        y = int(model(xt).argmax(1))
        g_dom, _ = _grid_min(model, xt, y, eps, DOMAIN)
        unit_x = xt.clamp(0, 1)
        g_unit, _ = _grid_min(model, unit_x, y, eps, InputDomain.unit())
        res = exact_margin(model, xt, y, eps, domain=DOMAIN)
        assert res.lower_bound <= g_dom + 1e-5
        if g_dom < g_unit - 0.05 and res.lower_bound < g_unit - 0.05:
            lower_than_unit += 1
    assert lower_than_unit >= 1


def test_robust_verdicts_over_a_domain_survive_pgd_conv() -> None:
    dom = InputDomain((-1.0, 0.0), (2.0, 3.0))  # two image channels
    robust = counterexamples = 0
    for seed in range(4):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(27, 6), nn.ReLU(), nn.Linear(6, 3)
        )
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 2, 3, 3, generator=gen) * torch.tensor([3.0, 3.0]).view(1, 2, 1, 1)
        x = x + torch.tensor([-1.0, 0.0]).view(1, 2, 1, 1)
        y = int(model(x).argmax(1))
        for eps in (0.05, 0.5):
            res = exact_margin(model, x, y, eps, domain=dom, time_limit=30)
            adv = pgd_attack(model, x, torch.tensor([y]), eps, steps=50, restarts=3, domain=dom)
            assert res.lower_bound <= float(adv.adv_margin) + 1e-5
            if res.status == "robust":
                robust += 1
                assert float(adv.adv_margin) > 0
            elif res.status == "counterexample":
                counterexamples += 1
                assert res.counterexample is not None and _in_region(res.counterexample, x, eps, dom)
                assert float(margin(model, res.counterexample, torch.tensor([y]), domain=dom)) <= 0
    assert robust >= 1 and counterexamples >= 1


def test_x_outside_the_domain_is_refused_and_inside_accepted() -> None:
    model = _mlp(0)
    with pytest.raises(RobustCertError, match=r"input domain excludes x.*\[-1, 2\]"):
        exact_margin(model, torch.tensor([[2.5, 0.0]]), 0, 0.1, domain=DOMAIN)
    with pytest.raises(RobustCertError, match=r"input domain excludes x.*\[0, 1\]"):
        exact_margin(model, torch.tensor([[-0.5, 0.0]]), 0, 0.1)  # default domain: [0, 1]
    assert exact_margin(model, torch.tensor([[-0.5, 0.0]]), 0, 0.1, domain=DOMAIN).status != ""
    with pytest.raises(RobustCertError, match="channel"):
        exact_margin(model, torch.tensor([[0.5, 0.5]]), 0, 0.1, domain=InputDomain((0.0,) * 3, (1.0,) * 3))


def test_box_is_intersected_with_a_given_domain() -> None:
    model = _mlp(1)
    x = torch.tensor([[1.9, -0.4]])
    y = int(model(x).argmax(1))
    ball = exact_margin(model, x, y, 0.5, domain=DOMAIN)
    box = exact_margin(model, None, y, box=(x - 0.5, x + 0.5), domain=DOMAIN)
    assert box.min_margin == pytest.approx(ball.min_margin, abs=ball.tolerance + box.tolerance + 1e-6)
    with pytest.raises(RobustCertError, match="outside the input domain"):
        exact_margin(model, None, y, box=(x + 5, x + 6), domain=DOMAIN)


def test_exact_margins_and_certifier_pass_the_domain() -> None:
    model = _mlp(2)
    xs = torch.tensor([[0.0, 1.0], [-0.9, 1.4]])
    ys = model(xs).argmax(1)
    batch = exact_margins(model, xs, ys, 0.6, domain=DOMAIN)
    info = ModelInfo(input_shape=(2,), num_classes=3, domain=DOMAIN)
    certifier = ExactCertifier(model, info, ExactParams(eps=(0.6,)), None)
    rows = certifier.certify_batch(xs, ys.tolist(), [0, 1], [0, 0])
    for i in range(2):
        single = exact_margin(model, xs[i : i + 1], ys[i], 0.6, domain=DOMAIN)
        assert batch[i].status == single.status == rows[i][0].status
    # x outside [0, 1] would be refused under the default domain: the certifier really passed DOMAIN
    unit = ExactCertifier(model, ModelInfo(input_shape=(2,), num_classes=3), ExactParams(eps=(0.6,)), None)
    with pytest.raises(RobustCertError, match="input domain"):
        unit.certify_batch(xs, ys.tolist(), [0, 1], [0, 0])
