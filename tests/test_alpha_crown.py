"""alpha-CROWN in both modes (final-only alphas, and optimised intermediate intervals): never looser
than CROWN, sound against sampled and attacked points (ReLU, LeakyReLU, conv windows, a skip connection),
intermediate optimisation strictly tighter on a deeper MLP, recomputed intervals contain the reachable
pre-activations, and the certified evaluation clamps whatever alphas the search proposes."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

from robustcert.bounds import alpha_crown, api
from robustcert.bounds._common import Ctx, InputSet, rounding_scope
from robustcert.bounds.crown import crown_lower
from robustcert.graph import graph_from_module
from robustcert.graph.ir import Graph

sys.path.insert(0, os.path.dirname(__file__))
from test_bounds_models import MODEL_NAMES, SHAPE, inputs, make_model  # noqa: E402

EPS = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(act: nn.Module, hidden: int = 4, width: int = 16, d_in: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    d = d_in
    for _ in range(hidden):
        layers += [nn.Linear(d, width), act]
        d = width
    layers.append(nn.Linear(d, 5))
    return nn.Sequential(*layers).eval()


def _conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(6, 6, 3, 1, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    ).eval()


CASES = {
    "relu": lambda: (_mlp(nn.ReLU()), (1, 2, 4)),
    "leaky": lambda: (_mlp(nn.LeakyReLU(0.1)), (1, 2, 4)),
    "leaky_steep": lambda: (_mlp(nn.LeakyReLU(1.7), hidden=3), (1, 2, 4)),
    "conv": lambda: (_conv(), SHAPE),
}


class Problem:
    """A margin problem as margin_lower sets it up (float32 rounding model, CROWN intervals)."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...], n: int = 3, eps: float = EPS, seed: int = 1):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.rand((n,) + shape, generator=gen, dtype=torch.float64)
        self.eps = eps
        self.graph: Graph = graph_from_module(model, shape)
        with torch.no_grad():
            self.y = self.graph.forward(self.x).argmax(1)
        self.plan = api._plan(self.graph, self.x, eps, "linf", "alpha-crown", None, "crown", "float32")
        k = self.graph.shapes()[self.graph.output][0]
        self.C = api.margin_spec(self.y, k)
        self.rows = self.C.abs().sum(-1) > 0
        with torch.no_grad(), rounding_scope(self.plan.rounding):
            self.ctx = api._intermediate(self.graph, self.plan.inset, self.plan.shapes, None, "crown")

    @property
    def inset(self) -> InputSet:
        return self.plan.inset

    def crown(self) -> torch.Tensor:
        with torch.no_grad(), rounding_scope(self.plan.rounding):
            return crown_lower(self.graph, self.C, self.inset, self.ctx)

    def alpha(self, inter: bool, steps: int = 20, lr: float = 0.1) -> torch.Tensor:
        with torch.no_grad(), rounding_scope(self.plan.rounding):
            return alpha_crown.alpha_crown_lower(
                self.graph,
                self.C,
                self.inset,
                self.ctx,
                steps=steps,
                lr=lr,
                row_mask=self.rows,
                optimize_intermediate=inter,
            )

    def points(self, b: int, n: int = 2000, attack_steps: int = 30) -> torch.Tensor:
        """Random points (a quarter of them corners) of the box of example b and PGD points that
        minimise each margin."""
        gen = torch.Generator().manual_seed(b)
        lo, hi = self.inset.lo[b : b + 1], self.inset.hi[b : b + 1]
        u = torch.rand((n,) + tuple(lo.shape[1:]), generator=gen, dtype=torch.float64)
        u[: n // 4] = (u[: n // 4] > 0.5).double()
        pts = [lo + (hi - lo) * u]
        k = self.C.shape[1]
        z = (
            lo + (hi - lo) * torch.rand((k,) + tuple(lo.shape[1:]), generator=gen, dtype=torch.float64)
        ).clone()
        step = (hi - lo).max() / 8
        for _ in range(attack_steps):
            z.requires_grad_(True)
            out = self.graph.forward(z)
            margins = out[:, int(self.y[b])] - out[torch.arange(k), torch.arange(k)]
            (g,) = torch.autograd.grad(margins.sum(), z)
            with torch.no_grad():
                z = torch.minimum(torch.maximum(z - step * g.sign(), lo), hi)
            pts.append(z.detach().clone())
        return torch.cat(pts)

    def true_margins(self, b: int, pts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.graph.forward(pts)
        return out[:, int(self.y[b]) : int(self.y[b]) + 1] - out


def _check_sound(p: Problem, bound: torch.Tensor) -> None:
    for b in range(p.x.shape[0]):
        m = p.true_margins(b, p.points(b))
        rows = p.rows[b]
        gap = m[:, rows] - bound[b, rows]
        assert gap.min() >= 0, f"bound above a reachable margin by {-gap.min()}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_never_below_crown_and_sound(case):
    model, shape = CASES[case]()
    p = Problem(model, shape)
    bounds_before = {k: (v[0].clone(), v[1].clone()) for k, v in p.ctx.bounds.items()}
    crown = p.crown()
    final = p.alpha(False)
    inter = p.alpha(True)
    for k, (lo, hi) in bounds_before.items():  # the caller's intervals are untouched
        assert torch.equal(p.ctx.bounds[k][0], lo) and torch.equal(p.ctx.bounds[k][1], hi)
    assert final.dtype == inter.dtype == p.inset.lo.dtype
    assert (final >= crown).all() and (inter >= crown).all()
    assert (inter[p.rows] - crown[p.rows]).max() > 0
    _check_sound(p, inter)
    _check_sound(p, final)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_suite_models_intermediate_mode(name, monkeypatch):
    """Every model of the bounds suite (skip connections, max pool, sigmoid...) through margin_lower with
    the intermediate mode: never below CROWN, never above a sampled margin."""
    import functools

    model = make_model(name)
    x = inputs(name, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    crown = api.margin_lower(model, x, y, eps=0.03, method="crown")
    monkeypatch.setattr(
        alpha_crown,
        "alpha_crown_lower",
        functools.partial(alpha_crown.alpha_crown_lower, optimize_intermediate=True),
    )
    alpha = api.margin_lower(model, x, y, eps=0.03, method="alpha-crown", alpha_steps=5)
    assert (alpha >= crown).all()
    lo_c, hi_c = api.logit_bounds(model, x, eps=0.03, method="crown")
    lo_a, hi_a = api.logit_bounds(model, x, eps=0.03, method="alpha-crown", alpha_steps=3)
    # logit_bounds' CROWN upper bound is a direct upper bound, alpha-CROWN's a negated lower one: 1e-12
    assert (lo_a >= lo_c - 1e-12).all() and (hi_a <= hi_c + 1e-12).all()
    graph = graph_from_module(model, SHAPE)
    gen = torch.Generator().manual_seed(0)
    for b in range(2):
        lo, hi = (x[b : b + 1].double() - 0.03).clamp(0, 1), (x[b : b + 1].double() + 0.03).clamp(0, 1)
        u = torch.rand((2000,) + SHAPE, generator=gen, dtype=torch.float64)
        u[:500] = (u[:500] > 0.5).double()
        with torch.no_grad():
            out = graph.forward(lo + (hi - lo) * u)
        m = out[:, y[b] : y[b] + 1] - out
        keep = torch.arange(out.shape[1]) != y[b]
        assert (m[:, keep] >= alpha[b, keep]).all()
        assert (out >= lo_a[b]).all() and (out <= hi_a[b]).all()


def test_intermediate_strictly_tighter_on_deep_mlp():
    p = Problem(_mlp(nn.ReLU(), hidden=4, width=32, d_in=16), (1, 4, 4), n=4, eps=0.2)
    crown = p.crown()
    final = p.alpha(False)
    inter = p.alpha(True)
    gain_final = (final - crown)[p.rows].mean()
    gain_inter = (inter - crown)[p.rows].mean()
    assert gain_final > 0
    assert gain_inter > 2 * gain_final, (float(gain_final), float(gain_inter))


@pytest.mark.parametrize("case", ["mlp", "conv"])
def test_recomputed_intervals_contain_preactivations(case):
    if case == "mlp":
        p = Problem(_mlp(nn.ReLU(), hidden=4, width=16, d_in=16), (1, 4, 4), n=2, eps=0.1)
    else:
        p = Problem(_conv(), SHAPE, n=2, eps=0.1)
    targets = alpha_crown._targets(p.graph, p.ctx)
    assert len(targets) >= 3
    if case == "conv":  # rows of conv maps in window layout, the linear layer's rows dense
        assert any(t.geos is not None for t in targets) and any(t.geos is None for t in targets)
    with torch.no_grad(), rounding_scope(p.plan.rounding):
        proposal = alpha_crown._search(p.graph, p.C, p.inset, p.ctx, targets, p.rows, 15, 0.1, torch.float32)
        bounds = alpha_crown.certified_intervals(p.graph, p.inset, p.ctx, proposal, targets)
    tighter = 0
    for b in range(2):
        pts = p.points(b, n=3000, attack_steps=0)
        with torch.no_grad():
            values = p.graph.forward_all(pts)
        for t in targets:
            lo, hi = bounds[t.name]
            lo0, hi0 = p.ctx.bounds[t.name]
            assert lo.dtype == p.inset.lo.dtype
            assert (lo[b] >= lo0[b]).all() and (hi[b] <= hi0[b]).all()
            tighter += int((lo[b] > lo0[b]).sum() + (hi[b] < hi0[b]).sum())
            v = values[t.name]
            assert (v >= lo[b]).all() and (v <= hi[b]).all(), t.name
    assert tighter > 0


@pytest.mark.parametrize("inter", [False, True])
def test_corrupted_proposal_is_clamped(inter, monkeypatch):
    """Alphas outside [0, 1] from the search are clamped: the bound equals the one of the clamped
    proposal and stays sound."""
    p = Problem(_mlp(nn.LeakyReLU(0.1), hidden=3), (1, 2, 4), n=2, eps=0.1)
    real_search = alpha_crown._search
    seen: list[alpha_crown.Proposal] = []

    def corrupt(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in d.items():
            noise = torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=v.dtype)
            out[k] = v + 4 * noise  # mostly far outside [0, 1]
        return out

    def bad_search(*args, **kwargs):
        good = real_search(*args, **kwargs)
        bad = alpha_crown.Proposal(corrupt(good.final), {n: corrupt(d) for n, d in good.inter.items()})
        seen.append(bad)
        return bad

    monkeypatch.setattr(alpha_crown, "_search", bad_search)
    corrupted = p.alpha(inter)
    assert len(seen) == (2 if inter else 1)
    assert any(((v < 0) | (v > 1)).any() for v in seen[0].final.values())
    if inter:
        assert any(((v < 0) | (v > 1)).any() for d in seen[1].inter.values() for v in d.values())

    def clamp(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.clamp(0, 1) for k, v in d.items()}

    clamped = [alpha_crown.Proposal(clamp(b.final), {n: clamp(d) for n, d in b.inter.items()}) for b in seen]
    queue = list(clamped)
    monkeypatch.setattr(alpha_crown, "_search", lambda *a, **k: queue.pop(0))
    assert torch.equal(p.alpha(inter), corrupted)
    assert (corrupted >= p.crown()).all()
    _check_sound(p, corrupted)


def test_certified_value_is_not_the_search_value(monkeypatch):
    """The returned bound is computed in the input set's dtype, not in the search dtype."""
    p = Problem(_mlp(nn.ReLU(), hidden=2), (1, 2, 4), n=2)
    dtypes: list[torch.dtype] = []
    real = alpha_crown._evaluate

    def spy(graph, C, inset, ctx, *rest):
        dtypes.append(inset.lo.dtype)
        return real(graph, C, inset, ctx, *rest)

    monkeypatch.setattr(alpha_crown, "_evaluate", spy)
    out = p.alpha(True, steps=alpha_crown.INTERMEDIATE_STEPS + 2)
    assert out.dtype == p.inset.lo.dtype
    certified = [d for d in dtypes if d == p.inset.lo.dtype]
    assert dtypes[-1] == p.inset.lo.dtype and len(certified) == 2  # final-only and joint proposals
    assert set(dtypes) == {torch.float32, p.inset.lo.dtype} and len(dtypes) > 2


def test_early_stop_and_zero_steps():
    p = Problem(_mlp(nn.ReLU(), hidden=2), (1, 2, 4), n=2)
    assert torch.equal(p.alpha(False, steps=0), p.crown())
    stop = alpha_crown._Stopper()
    assert not stop.done(-10.0)
    for _ in range(alpha_crown.EARLY_STOP_PATIENCE - 1):
        assert not stop.done(-10.0 + 1e-7)
    assert stop.done(-10.0)
    assert not alpha_crown._Stopper().done(-1.0)


def test_ctx_state_and_ibp_intervals():
    """Intermediate mode on IBP intervals (CROWN-IBP set-up) is sound and never below CROWN."""
    model, shape = CASES["relu"]()
    p = Problem(model, shape)
    with torch.no_grad(), rounding_scope(p.plan.rounding):
        ctx = api._intermediate(p.graph, p.inset, p.plan.shapes, None, "ibp")
        crown = crown_lower(p.graph, p.C, p.inset, ctx)
        inter = alpha_crown.alpha_crown_lower(
            p.graph, p.C, p.inset, Ctx(ctx.shapes, ctx.bounds), row_mask=p.rows, optimize_intermediate=True
        )
    assert (inter >= crown).all()
    _check_sound(p, inter)


def test_l2_ball_intermediate_mode():
    """An L2 ball (ball ∩ box concretisation): never below CROWN, never above a sampled margin."""
    model, shape = CASES["leaky"]()
    torch.manual_seed(0)
    x = torch.rand((2,) + shape, dtype=torch.float64)
    graph = graph_from_module(model, shape)
    with torch.no_grad():
        y = graph.forward(x).argmax(1)
    eps = 0.4
    crown = api.margin_lower(graph, x, y, eps=eps, norm="l2", method="crown")
    plan = api._plan(graph, x, eps, "l2", "alpha-crown", None, "crown", "float32")
    C = api.margin_spec(y, 5)
    with torch.no_grad(), rounding_scope(plan.rounding):
        ctx = api._intermediate(graph, plan.inset, plan.shapes, None, "crown")
        lb = alpha_crown.alpha_crown_lower(graph, C, plan.inset, ctx, optimize_intermediate=True)
    rows = C.abs().sum(-1) > 0
    assert (lb[rows] >= crown[rows]).all() and (lb[rows] > crown[rows]).any()
    gen = torch.Generator().manual_seed(0)
    for b in range(2):
        g = torch.randn((3000,) + shape, generator=gen, dtype=torch.float64)
        g = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        r = torch.rand(3000, 1, 1, 1, generator=gen, dtype=torch.float64).sqrt()
        pts = (x[b : b + 1] + eps * r * g).clamp(0, 1)
        with torch.no_grad():
            out = graph.forward(pts)
        m = out[:, y[b] : y[b] + 1] - out
        assert (m[:, rows[b]] >= lb[b, rows[b]]).all()


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_box_bound_value_and_gradient_match_autograd(per_row, sign):
    """The fused box bound of the search equals ``A.c + sign |A|.r`` and autograd's gradient of it."""
    from robustcert.bounds._common import _BoxBound, dot

    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    a[0, 0, 0] = 0.0  # |.| at 0: either subgradient is valid; both implementations pick 0
    shape = (2, 3, 5) if per_row else (2, 1, 5)
    c, r = (
        torch.randn(shape, generator=gen, dtype=torch.float64),
        torch.rand(shape, generator=gen, dtype=torch.float64),
    )
    g = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    a1, a2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    fused = _BoxBound.apply(a1, c, r, sign)
    plain = dot(a2, c) + sign * dot(a2.abs(), r)
    assert torch.allclose(fused, plain, rtol=1e-12, atol=1e-12)
    (fused * g).sum().backward()
    (plain * g).sum().backward()
    assert torch.allclose(a1.grad, a2.grad, rtol=1e-12, atol=1e-12)
