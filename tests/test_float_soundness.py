"""Rounding soundness of the certified bounds (robustcert.bounds._soundness).

* the float64 bound with its margin is below an exact rational (``fractions``) recomputation of the same
  relaxation on tiny nets, and the margin is not absurdly larger than the actual float64 error;
* a hand-made net whose float32 evaluation flips a tiny real margin is not verified in float32 mode
  (and the flip is checked on the torch float32 model);
* float32-mode bounds hold against sampled and attacked points evaluated by the float32 model;
* the margin grows about linearly with depth, orders of magnitude below the legacy margin on deep nets;
* the float32 sigmoid/tanh accuracy assumed by the rounding model holds; unknown ops are refused;
  rows record ``float_model``.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction

import pytest
import torch
from torch import nn

from robustcert.bounds import _soundness as soundness
from robustcert.bounds import api, crown, ibp, is_verified, logit_bounds, margin_lower
from robustcert.bounds._common import outward, rounding_scope
from robustcert.errors import RobustCertError
from robustcert.graph import graph_from_module
from robustcert.rows import BoundRow, ExactRow

sys.path.insert(0, os.path.dirname(__file__))
from test_bounds import attack, sample_ball  # noqa: E402
from test_bounds_models import MODEL_NAMES, SHAPE, inputs, make_model  # noqa: E402

U32 = 2.0**-24


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# (a) exact rational recomputation of the same relaxation
# --------------------------------------------------------------------------------------------------


def _tiny_net(d_in: int, hidden: int, k: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, k)).eval()
    with torch.no_grad():  # spread the weights over a few binades so rounding is not trivially exact
        for p in net.parameters():
            p.mul_(torch.exp2(torch.randint(-3, 4, p.shape).float()))
    return net


def _fr(t: torch.Tensor) -> list:
    """The exact Fractions of a tensor's (float32 or float64) values, flattened."""
    return [Fraction(float(v)) for v in t.double().flatten().tolist()]


def _exact_crown_ibp(net: nn.Sequential, x: torch.Tensor, eps: float, C: torch.Tensor, pre: tuple):
    """Exact rational CROWN and IBP lower bounds of ``C · f`` over ``[x - eps, x + eps] ∩ [0, 1]`` for a
    Linear-ReLU-Linear net, with the hidden pre-activation intervals ``pre`` (the float intervals the
    float64 computation used, taken as exact rationals) and the relaxation of ``crown.relu_relax``."""
    W1 = [_fr(r) for r in net[0].weight.detach()]
    b1 = _fr(net[0].bias.detach())
    W2 = [_fr(r) for r in net[2].weight.detach()]
    b2 = _fr(net[2].bias.detach())
    xs, e = _fr(x[0]), Fraction(eps)
    lo = [max(Fraction(0), v - e) for v in xs]
    hi = [min(Fraction(1), v + e) for v in xs]
    low, up = _fr(pre[0][0]), _fr(pre[1][0])
    H, D = len(b1), len(xs)
    out_crown, out_ibp = [], []
    for row in C[0].tolist():
        c = [Fraction(v) for v in row]
        a2 = [sum((c[k] * W2[k][i] for k in range(len(c))), Fraction(0)) for i in range(H)]
        bias = sum((c[k] * b2[k] for k in range(len(c))), Fraction(0))
        # IBP with the last layer elided: concretise a2 over [relu(l), relu(u)]
        ibp_value = bias + sum(
            (a2[i] * (max(low[i], 0) if a2[i] >= 0 else max(up[i], 0)) for i in range(H)), Fraction(0)
        )
        # CROWN: the relaxation of crown.relu_relax, in exact arithmetic
        a1, b = [Fraction(0)] * H, bias
        for i in range(H):
            if low[i] >= 0:
                lower, upper = (Fraction(1), Fraction(0)), (Fraction(1), Fraction(0))
            elif up[i] <= 0:
                lower, upper = (Fraction(0), Fraction(0)), (Fraction(0), Fraction(0))
            else:
                s = up[i] / (up[i] - low[i])
                upper = (s, -low[i] * s)
                lower = (Fraction(1) if up[i] >= -low[i] else Fraction(0), Fraction(0))
            slope, icept = lower if a2[i] >= 0 else upper
            a1[i] = a2[i] * slope
            b += a2[i] * icept
        coef = [sum((a1[i] * W1[i][j] for i in range(H)), Fraction(0)) for j in range(D)]
        b += sum((a1[i] * b1[i] for i in range(H)), Fraction(0))
        b += sum((coef[j] * (lo[j] if coef[j] >= 0 else hi[j]) for j in range(D)), Fraction(0))
        out_crown.append(b)
        out_ibp.append(ibp_value)
    return out_crown, out_ibp


def _float_bounds(net: nn.Module, x: torch.Tensor, eps: float, C: torch.Tensor, rounding: str):
    """CROWN and IBP lower bounds of ``C · f`` through the API internals, plus the hidden intervals used."""
    plan = api._plan(net, x, eps, "linf", "crown", None, "crown", rounding)
    with torch.no_grad(), rounding_scope(plan.rounding):
        ctx_c = api._intermediate(plan.graph, plan.inset, plan.shapes, None, "crown")
        lb_c = crown.crown_lower(plan.graph, C, plan.inset, ctx_c)
        ctx_i = api._intermediate(plan.graph, plan.inset, plan.shapes, None, "ibp")
        lb_i = ibp.spec_lower(plan.graph, C, plan.inset, ctx_i)
    (name,) = crown.activation_inputs(plan.graph)
    return plan, ctx_c, ctx_i, lb_c, lb_i, name


@pytest.mark.parametrize("seed", range(6))
def test_bound_is_below_an_exact_rational_recomputation(seed):
    d_in = 2 + seed % 2
    net = _tiny_net(d_in, 4, 3, seed)
    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(1, d_in, generator=gen)
    eps = [0.05, 0.2, 0.0, 0.11, 0.5, 0.013][seed]
    C = torch.randn(1, 5, 3, generator=gen, dtype=torch.float64)
    plan, ctx_c, ctx_i, lb_c, lb_i, name = _float_bounds(net, x, eps, C, "real")
    exact_c, _ = _exact_crown_ibp(net, x, eps, C, ctx_c.bounds[name])
    _, exact_i = _exact_crown_ibp(net, x, eps, C, ctx_i.bounds[name])
    # the same computation without the rounding model, on the same intervals: the actual float64 result
    with torch.no_grad():
        plain_c = crown.crown_lower(plan.graph, C, plan.inset, ctx_c)
    for s in range(C.shape[1]):
        for got, exact in ((float(lb_c[0, s]), exact_c[s]), (float(lb_i[0, s]), exact_i[s])):
            assert Fraction(got) <= exact, (seed, s, got, float(exact))
        actual = abs(Fraction(float(plain_c[0, s])) - exact_c[s])
        margin = Fraction(float(plain_c[0, s])) - Fraction(float(lb_c[0, s]))
        ulp = Fraction(torch.finfo(torch.float64).eps) * (1 + abs(exact_c[s]))
        # not absurdly larger than the true float64 error (measured: ~100x, at most ~700x over 200 rows)
        assert margin <= 1e4 * max(actual, ulp), (seed, s, float(margin), float(actual))
    # float32 mode covers every |delta_v| <= e_v, delta = 0 (the real network) included: below the exact
    # value of the same relaxation on its own (wider) intervals
    _, ctx32, _, lb32_c, _, _ = _float_bounds(net, x, eps, C, "float32")
    exact32_c, _ = _exact_crown_ibp(net, x, eps, C, ctx32.bounds[name])
    for s in range(C.shape[1]):
        assert Fraction(float(lb32_c[0, s])) <= exact32_c[s], (seed, s)


def _relu_lines(lo: Fraction, hi: Fraction) -> tuple[tuple[Fraction, Fraction], tuple[Fraction, Fraction]]:
    """``crown.relu_relax``'s (lower, upper) lines ``(slope, intercept)`` on [lo, hi], exactly."""
    if lo >= 0:
        return (Fraction(1), Fraction(0)), (Fraction(1), Fraction(0))
    if hi <= 0:
        return (Fraction(0), Fraction(0)), (Fraction(0), Fraction(0))
    s = hi / (hi - lo)
    return (Fraction(1) if hi >= -lo else Fraction(0), Fraction(0)), (s, -lo * s)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 6, 7])  # seeds where CROWN beats IBP somewhere
def test_float32_intermediate_pass_is_below_an_exact_rational_recomputation(seed):
    """The default precision runs CROWN's intermediate passes in float32 on outward-rounded copies of the
    set and intervals: each bound must be below the exact value of the same relaxation on those copies."""
    torch.manual_seed(seed)
    d_in, h = 3, 8
    net = nn.Sequential(nn.Linear(d_in, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2)).eval()
    with torch.no_grad():  # weights over a few binades
        for p in net.parameters():
            p.mul_(torch.exp2(torch.randint(-3, 4, p.shape).float()))
    x = torch.rand(1, d_in, generator=torch.Generator().manual_seed(200 + seed))
    eps = 0.25 + 0.05 * (seed % 6)
    plan = api._plan(net, x, eps, "linf", "crown", None, "crown", "real")
    with torch.no_grad(), rounding_scope(plan.rounding):
        b = crown.intermediate_bounds(plan.graph, plan.inset, plan.shapes, refine_dtype=torch.float32)
        ibp_b = crown.intermediate_bounds(plan.graph, plan.inset, plan.shapes, mode="ibp")
    z1, z2 = crown.activation_inputs(plan.graph)
    IL2, IU2 = _fr(ibp_b[z2][0]), _fr(ibp_b[z2][1])
    lo1, hi1 = outward(b[z1], torch.float32)  # the copies the float32 pass saw
    box_lo, box_hi = outward((plan.inset.lo, plan.inset.hi), torch.float32)
    L1, U1, L2, U2 = (_fr(t) for t in (lo1, hi1, *b[z2]))
    blo, bhi = _fr(box_lo), _fr(box_hi)
    W1 = [_fr(r) for r in net[0].weight.detach()]
    b1 = _fr(net[0].bias.detach())
    W2 = [_fr(r) for r in net[2].weight.detach()]
    b2 = _fr(net[2].bias.detach())
    lines = [_relu_lines(L1[j], U1[j]) for j in range(h)]
    crown_won = 0
    for i in range(h):
        for sign in (1, -1):  # the lower bound of sign * z2_i
            a = [sign * W2[i][j] for j in range(h)]
            const = sign * b2[i]
            lam = []
            for j in range(h):
                (sl, il), (su, iu) = lines[j]
                s_, i_ = (sl, il) if a[j] >= 0 else (su, iu)
                lam.append(a[j] * s_)
                const += a[j] * i_
            coef = [sum((lam[j] * W1[j][k] for j in range(h)), Fraction(0)) for k in range(d_in)]
            const += sum((lam[j] * b1[j] for j in range(h)), Fraction(0))
            const += sum((coef[k] * (blo[k] if coef[k] >= 0 else bhi[k]) for k in range(d_in)), Fraction(0))
            got = L2[i] if sign == 1 else -U2[i]
            ibp_side = IL2[i] if sign == 1 else -IU2[i]
            # the interval is CROWN's intersected with IBP's: where IBP is tighter, the interval is IBP's
            assert got <= const or got == ibp_side, (seed, i, sign, float(got), float(const))
            crown_won += int(got != ibp_side)
    assert crown_won > 0  # the float32 pass decided some bound


# --------------------------------------------------------------------------------------------------
# (b) a net whose float32 evaluation flips a tiny margin
# --------------------------------------------------------------------------------------------------

_T = 2.0**-12  # the real margin


def _flip_net() -> nn.Sequential:
    """h1 = 1e4 x0 + 5000 + 2t, h2 = 1e4 x0 + 5000 (both active on [0, 1]); f0 = h1 - h2 + 10 - t,
    f1 = 10. In real arithmetic f0 - f1 = t = 2^-12 everywhere; in float32, h ~ 1e4 has ulp 2^-10, so
    h1 and h2 often round to the same number and f0 - f1 = -t. (The common offset 10 keeps the logits
    large enough for the front end's float32-vs-float64 conversion check.)"""
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1e4, 0.0], [1e4, 0.0]]))
        net[0].bias.copy_(torch.tensor([5000.0 + 2 * _T, 5000.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
        net[2].bias.copy_(torch.tensor([10.0 - _T, 10.0]))
    b0, b2 = net[0].bias.detach(), net[2].bias.detach()
    assert float(b0[0]) == 5000.0 + 2 * _T and float(b2[0]) == 10.0 - _T  # representable: exact
    return net


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_a_float32_flip_is_not_verified_in_float32_mode(method):
    net = _flip_net()
    x, eps, y = torch.tensor([[0.6, 0.5]]), 0.01, torch.tensor([0])
    # the flip happens: the torch float32 model has a negative margin at points of the ball
    grid = torch.stack(
        torch.meshgrid(torch.linspace(0.59, 0.61, 401), torch.linspace(0.49, 0.51, 3), indexing="ij"), -1
    ).reshape(-1, 2)
    with torch.no_grad():
        out = net(grid)
    m32 = out[:, 0].double() - out[:, 1].double()
    assert (m32 < 0).sum() > 10 and float(m32.min()) == -_T
    # ... while the real margin is +t everywhere (exact rational evaluation at a few points)
    W1, b1 = net[0].weight.detach(), net[0].bias.detach()
    for p in grid[::50]:
        h = [
            sum(Fraction(float(W1[i, j])) * Fraction(float(p[j])) for j in range(2)) + Fraction(float(b1[i]))
            for i in range(2)
        ]
        assert h[0] - h[1] + Fraction(10.0 - _T) - Fraction(10.0) == Fraction(_T)
    opts = {"alpha_steps": 3} if method == "alpha-crown" else {}
    m_f32 = margin_lower(net, x, y, eps=eps, method=method, float_model="float32", **opts)
    m_real = margin_lower(net, x, y, eps=eps, method=method, float_model="real", **opts)
    assert not is_verified(m_f32).any(), m_f32
    assert float(m_real[0, 1]) <= _T, m_real
    if method != "ibp":  # CROWN is exact here (both neurons stable); IBP's intervals are 200 wide
        assert is_verified(m_real).all() and float(m_real[0, 1]) > 0.99 * _T, m_real
    assert margin_lower(net, x, y, eps=eps, method=method, **opts)[0, 1] == m_f32[0, 1]  # the default


# --------------------------------------------------------------------------------------------------
# (c) float32 mode against sampled and attacked points of the float32 model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float32_bounds_hold_for_the_float32_model(name, norm):
    model = make_model(name).float().eval()
    graph = graph_from_module(model, SHAPE)
    x = inputs(name, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = {"linf": 0.03, "l2": 0.3}[norm]
    gen = torch.Generator().manual_seed(7)
    for method in ["ibp", "crown", "alpha-crown"]:
        opts = {"alpha_steps": 3} if method == "alpha-crown" else {}
        m = margin_lower(model, x, y, eps=eps, norm=norm, method=method, **opts)
        lo, hi = logit_bounds(model, x, eps=eps, norm=norm, method=method, **opts)
        for b in range(2):
            pts = torch.cat(
                [
                    sample_ball(x[b : b + 1], eps, norm, 2000, gen),
                    attack(graph, x[b : b + 1], int(y[b]), eps, norm),
                ]
            )
            with torch.no_grad():
                outs = [model(pts.float()).double(), graph.forward(pts.float()).double()]
            k = torch.arange(m.shape[1]) != y[b]
            for out in outs:  # the deployed module and the graph's ops, both in float32
                margins = out[:, y[b] : y[b] + 1] - out  # exact: differences of float32 numbers
                assert (margins[:, k] >= m[b, k]).all(), (method, float((margins[:, k] - m[b, k]).min()))
                assert (out >= lo[b]).all() and (out <= hi[b]).all(), method


# --------------------------------------------------------------------------------------------------
# (d) growth with depth: about linear, far below the legacy margin
# --------------------------------------------------------------------------------------------------


def _mlp(depth: int, width: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    n = 64
    for _ in range(depth - 1):
        layers += [nn.Linear(n, width), nn.ReLU()]
        n = width
    layers.append(nn.Linear(n, 10))
    return nn.Sequential(*layers).eval()


def test_margin_grows_about_linearly_with_depth_and_beats_the_legacy_margin():
    x = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(1))
    rows = {}
    for depth in (2, 6, 9):
        net = _mlp(depth, 200)
        res = {
            r: api._logits(net, x, 0.01, "linf", "crown", None, "crown", 5, 0.1, r, precision="float64")
            for r in api.ROUNDINGS
        }
        # the default precision: CROWN's intermediate passes in float32, with their own rounding slack
        res["real, float32 passes"] = api._logits(
            net, x, 0.01, "linf", "crown", None, "crown", 5, 0.1, "real"
        )
        lo0, hi0 = res["none"]
        rows[depth] = {
            r: float(torch.cat([(lo0 - lo).flatten(), (hi - hi0).flatten()]).max())
            for r, (lo, hi) in res.items()
            if r != "none"
        }
        rows[depth]["width"] = float((hi0 - lo0).median())
    print("\nlargest margin on the CROWN logit bounds of random 200-wide MLPs (eps 0.01):")
    print(
        f"{'depth':>5} {'legacy':>10} {'real':>10} {'float32':>10} {'real, f32 passes':>17} {'bound width':>12}"
    )
    for depth, r in rows.items():
        print(
            f"{depth:>5} {r['legacy']:>10.2e} {r['real']:>10.2e} {r['float32']:>10.2e}"
            f" {r['real, float32 passes']:>17.2e} {r['width']:>12.2e}"
        )
    for depth in (2, 6, 9):  # float32 passes cost less than certifying the float32 model does
        assert rows[depth]["real, float32 passes"] < rows[depth]["float32"], rows[depth]
    for depth in (6, 9):  # legacy vs real: both about the float64 computation of the real network
        assert rows[depth]["real"] < 1e-6 * rows[depth]["legacy"], rows[depth]
        # the float32 claim is stronger and still far below the legacy margin on deep nets
        assert rows[depth]["float32"] < 1e-1 * rows[depth]["legacy"], rows[depth]
    assert rows[9]["float32"] < 1e-4 * rows[9]["legacy"], rows[9]
    for mode in ("real", "float32"):  # at most linear growth (these nets' activations even shrink)
        for depth in (6, 9):
            assert rows[depth][mode] <= depth * rows[2][mode], (mode, rows)
    assert all(0 < r["real"] < 1e-10 for r in rows.values())


# --------------------------------------------------------------------------------------------------
# assumptions, refusals, rows
# --------------------------------------------------------------------------------------------------


def test_float32_sigmoid_and_tanh_are_as_accurate_as_the_model_assumes():
    """The rounding model allows ACT_ULPS32 u relative error (plus a tiny absolute term) for torch's
    float32 sigmoid/tanh; measure on a dense grid (vectorised and scalar tails) with a 4x reserve."""
    x = torch.cat(
        [
            torch.linspace(-90, 90, 400_001),
            torch.logspace(-30, 1.9, 50_001),
            -torch.logspace(-30, 1.9, 50_001),
            torch.tensor([-3.0, 0.5, 7.0]),  # a short tensor: the non-vectorised path
        ]
    )
    for f in (torch.sigmoid, torch.tanh):
        exact = f(x.double())
        err = (f(x).double() - exact).abs()
        allowed = soundness.ACT_ULPS32 * U32 * exact.abs() + soundness.TINY32
        assert (err * 4 <= allowed).all(), (f.__name__, float((err / (U32 * exact.abs() + 1e-300)).max()))


def test_an_op_without_a_rounding_model_is_refused(monkeypatch):
    monkeypatch.delitem(soundness.ACTIVATIONS, "relu")
    net = _tiny_net(2, 3, 2, 0)
    with pytest.raises(RobustCertError, match="no rounding model for op 'relu'"):
        margin_lower(net, torch.rand(1, 2), torch.tensor([0]), eps=0.1)
    with pytest.raises(RobustCertError, match="float_model"):
        margin_lower(net, torch.rand(1, 2), torch.tensor([0]), eps=0.1, float_model="float16")
    with pytest.raises(RobustCertError, match="float_model"):
        logit_bounds(net, torch.rand(1, 2), eps=0.1, float_model="legacy")


def test_bound_rows_record_the_float_model():
    row = BoundRow(
        index=0,
        label=1,
        method="crown",
        prediction=1,
        correct=True,
        certified=True,
        norm="linf",
        eps=0.1,
        margin_lower=0.5,
    )
    assert row.float_model == "float32" and row.to_json()["float_model"] == "float32"
    old = {k: v for k, v in row.to_json().items() if k != "float_model"}  # a row written before the field
    assert BoundRow.from_json(old).float_model == "float32"
    assert BoundRow.from_json({**old, "float_model": "real"}).float_model == "real"
    exact = ExactRow(**old, status="robust")  # the MILP encodes the real-valued network
    assert exact.float_model == "real" and ExactRow.from_json(exact.to_json()).float_model == "real"
