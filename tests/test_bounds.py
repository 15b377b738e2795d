"""IBP, CROWN and alpha-CROWN: soundness against sampled and attacked points, ordering, front-end
agreement, rounding safety, input validation and the differentiable training paths."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

from robustcert.bounds import (
    box_bounds,
    crown_margin_lower,
    ibp_bounds,
    ibp_margin_lower,
    is_verified,
    logit_bounds,
    margin_lower,
)
from robustcert.errors import RobustCertError
from robustcert.graph import graph_from_module, load_onnx

sys.path.insert(0, os.path.dirname(__file__))
from test_bounds_models import MODEL_NAMES, SHAPE, inputs, make_model  # noqa: E402
from test_graph import export_onnx  # noqa: E402

METHODS = ["ibp", "crown", "alpha-crown"]
EPS = {"linf": 0.03, "l2": 0.3}
N_POINTS = 10_000


pytestmark = pytest.mark.usefixtures("one_thread")


def sample_ball(x: torch.Tensor, eps: float, norm: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points of ball(x, eps) ∩ [0,1]^d (one example x [1, *shape]); float64.

    linf: a quarter are corners of the box, the rest uniform. l2: half on the sphere, half inside,
    then clipped to [0, 1] (projection onto the box keeps them in the ball, as x is in the box)."""
    d = x[0].numel()
    x = x.double()
    if norm == "linf":
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        u = torch.rand((n,) + tuple(x.shape[1:]), generator=gen, dtype=torch.float64)
        k = n // 4
        u[:k] = (u[:k] > 0.5).double()
        return lo + (hi - lo) * u
    g = torch.randn(n, d, generator=gen, dtype=torch.float64)
    g = g / g.norm(dim=1, keepdim=True)
    radius = torch.ones(n, 1, dtype=torch.float64)
    radius[n // 2 :] = torch.rand(n - n // 2, 1, generator=gen, dtype=torch.float64) ** (1.0 / d)
    pts = x.flatten(1) + eps * radius * g
    return pts.clamp(0, 1).reshape((n,) + tuple(x.shape[1:]))


def attack(graph, x: torch.Tensor, y: int, eps: float, norm: str, steps: int = 15) -> torch.Tensor:
    """A few PGD steps on every margin f_y - f_j from 8 random starts; returns the points visited."""
    gen = torch.Generator().manual_seed(3)
    z = sample_ball(x, eps, norm, 8, gen).requires_grad_(True)
    pts = []
    x0 = x.double()
    for _ in range(steps):
        out = graph.forward(z)
        loss = (out[:, y : y + 1] - out).sum()
        (g,) = torch.autograd.grad(loss, z)
        with torch.no_grad():
            if norm == "linf":
                z = z - 0.3 * eps * g.sign()
                z = torch.minimum(torch.maximum(z, x0 - eps), x0 + eps).clamp(0, 1)
            else:
                gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (z.ndim - 1)))
                z = z - 0.3 * eps * g / gn
                delta = (z - x0).flatten(1)
                scale = (eps / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                z = (x0 + (delta * scale[:, None]).view_as(z)).clamp(0, 1)
        pts.append(z.detach().clone())
        z.requires_grad_(True)
    return torch.cat(pts)


def _alpha_steps(method: str) -> dict:
    return {"alpha_steps": 5} if method == "alpha-crown" else {}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sound_against_samples_and_attacks(name, norm):
    model = make_model(name)
    graph = graph_from_module(model, SHAPE)
    x = inputs(name, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = EPS[norm]
    gen = torch.Generator().manual_seed(0)
    pts = []
    for b in range(2):
        p = torch.cat(
            [
                sample_ball(x[b : b + 1], eps, norm, N_POINTS // 2, gen),
                attack(graph, x[b : b + 1], int(y[b]), eps, norm),
            ]
        )
        if norm == "linf":
            assert ((p - x[b].double()).abs() <= eps + 1e-12).all()
        else:
            assert ((p - x[b].double()).flatten(1).norm(dim=1) <= eps + 1e-9).all()
        assert p.min() >= 0 and p.max() <= 1
        pts.append(p)
    for method in METHODS:
        m = margin_lower(model, x, y, eps=eps, norm=norm, method=method, **_alpha_steps(method))
        lo, hi = logit_bounds(model, x, eps=eps, norm=norm, method=method, **_alpha_steps(method))
        assert m.shape == lo.shape == hi.shape == (2, graph.shapes()[graph.output][0])
        for b in range(2):
            with torch.no_grad():
                out = graph.forward(pts[b])
            true_margin = out[:, y[b] : y[b] + 1] - out
            k = torch.arange(out.shape[1]) != y[b]
            assert torch.isinf(m[b, y[b]]) and m[b, y[b]] > 0
            gap = true_margin[:, k] - m[b, k]
            assert gap.min() >= 0, f"{method}: margin bound above a reachable margin by {-gap.min()}"
            assert (out >= lo[b]).all() and (out <= hi[b]).all(), method


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_alpha_crown_never_looser_than_crown(name, norm):
    model = make_model(name)
    x = inputs(name, 3, seed=5)
    y = torch.tensor([0, 1, 2])
    eps = EPS[norm] * 2
    for inter in ["crown", "ibp"]:
        crown = margin_lower(model, x, y, eps=eps, norm=norm, method="crown", intermediate=inter)
        alpha = margin_lower(
            model, x, y, eps=eps, norm=norm, method="alpha-crown", intermediate=inter, alpha_steps=10
        )
        assert (alpha >= crown).all()
        lo_c, hi_c = logit_bounds(model, x, eps=eps, norm=norm, method="crown", intermediate=inter)
        lo_a, hi_a = logit_bounds(
            model, x, eps=eps, norm=norm, method="alpha-crown", intermediate=inter, alpha_steps=5
        )
        assert (lo_a >= lo_c - 1e-12).all() and (hi_a <= hi_c + 1e-12).all()


def test_alpha_crown_improves_somewhere():
    model = make_model("trained")
    x = inputs("trained", 4)
    y = model(x).argmax(1)
    crown = margin_lower(model, x, y, eps=0.05, method="crown")
    alpha = margin_lower(model, x, y, eps=0.05, method="alpha-crown", alpha_steps=20)
    finite = torch.isfinite(crown)
    assert (alpha[finite] - crown[finite]).max() > 1e-4


def test_crown_is_exact_and_beats_ibp_on_an_affine_network():
    """Theorem: with no activation CROWN is the exact minimum of a linear function, IBP is below it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Linear(16, 5)).eval()
    x = torch.rand(3, *SHAPE)
    y = torch.tensor([0, 3, 4])
    ibp = margin_lower(model, x, y, eps=0.05, method="ibp", float_model="real")
    crown = margin_lower(model, x, y, eps=0.05, method="crown", float_model="real")
    assert (crown >= ibp).all()
    # the float32 guarantee (the default) also covers the deployed rounding, so it is a little lower
    crown32 = margin_lower(model, x, y, eps=0.05, method="crown")
    assert (crown32 <= crown).all() and (crown32 >= crown - 1e-4).all()
    # exact: the minimum over the box of (w_y - w_j) x + c is attained at a corner we can write down
    with torch.no_grad():
        w1, b1, w2, b2 = (
            t.double() for t in (model[1].weight, model[1].bias, model[2].weight, model[2].bias)
        )
    W, c = w2 @ w1, w2 @ b1 + b2
    xf = x.flatten(1).double()
    lo, hi = (xf - 0.05).clamp(0, 1), (xf + 0.05).clamp(0, 1)
    for b in range(3):
        d = W[y[b]] - W
        exact = (torch.where(d > 0, lo[b], hi[b]) * d).sum(1) + (c[y[b]] - c)
        k = torch.arange(5) != y[b]
        assert torch.allclose(crown[b, k], exact[k], atol=1e-8)
        assert (crown[b, k] <= exact[k]).all()


def test_intermediate_crown_bounds_inside_ibp():
    from robustcert.bounds import api, crown

    model = make_model("cnn")
    x = inputs("cnn", 2)
    graph, inset, shapes, mags = api._setup(model, x, 0.05, "linf", "crown", None, "crown")
    b_ibp = crown.intermediate_bounds(graph, inset, shapes, mode="ibp", mags=mags)
    b_crown = crown.intermediate_bounds(graph, inset, shapes, mode="crown", mags=mags)
    tighter = 0
    for name in crown.activation_inputs(graph):
        assert (b_crown[name][0] >= b_ibp[name][0]).all() and (b_crown[name][1] <= b_ibp[name][1]).all()
        tighter += int((b_crown[name][1] - b_crown[name][0] < b_ibp[name][1] - b_ibp[name][0] - 1e-9).sum())
    assert tighter > 0


@pytest.mark.parametrize("name", ["cnn", "residual", "sig_tanh"])
def test_box_bounds_contain_sampled_activation_inputs_and_specs(name):
    """The MILP's big-M source: every activation input of every sampled point lies in its interval, the
    spec bound is below every sampled value, and the intervals are never looser than IBP's."""
    from robustcert.bounds import api, crown

    model = make_model(name)
    x = inputs(name, 1)
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    k = int(model(x).shape[1])
    C = torch.randn(1, 6, k, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = box_bounds(model, lo, hi, C)
    graph = graph_from_module(model, SHAPE)
    pts = sample_ball(x, 0.05, "linf", 3000, torch.Generator().manual_seed(1))
    with torch.no_grad():
        values = graph.forward_all(pts)
    assert set(res.activation_inputs) == set(crown.activation_inputs(graph))
    for node, (b_lo, b_hi) in res.activation_inputs.items():
        assert (values[node] >= b_lo).all() and (values[node] <= b_hi).all(), node
    assert ((values[graph.output] @ C[0].T) >= res.spec_lower).all()
    g, inset, shapes, mags = api._setup(model, None, None, "linf", "crown", (lo, hi), "crown")
    ibp_b = crown.intermediate_bounds(g, inset, shapes, mode="ibp", mags=mags)
    for node, (b_lo, b_hi) in res.activation_inputs.items():
        assert (b_lo >= ibp_b[node][0]).all() and (b_hi <= ibp_b[node][1]).all(), node
    with pytest.raises(RobustCertError, match="C must be"):
        box_bounds(model, lo, hi, C[0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_frontend_gives_the_same_bounds(name, tmp_path):
    model = make_model(name)
    path = str(tmp_path / "m.onnx")
    export_onnx(model, path)
    net = load_onnx(path)
    x = inputs(name, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
        torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)
    for method in METHODS:
        for norm in ["linf", "l2"]:
            for float_model, tol in (("real", 1e-5), ("float32", 1e-4)):
                # the float32 margin follows each affine node's fan-in, which the export may group differently;
                # float64 passes, so that both front ends' rounding slack is far below the tolerance
                opts = {"float_model": float_model, "precision": "float64", **_alpha_steps(method)}
                a = margin_lower(model, x, y, eps=EPS[norm], norm=norm, method=method, **opts)
                b = margin_lower(net, x, y, eps=EPS[norm], norm=norm, method=method, **opts)
                k = torch.isfinite(a)
                assert torch.equal(k, torch.isfinite(b))
                torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol)


def _twin_heads(bias_gap: float, deep: bool) -> nn.Module:
    """Two logits with identical weights; logit 0 exceeds logit 1 by exactly ``bias_gap`` everywhere."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    width = 64
    if deep:
        layers += [nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh()]
        width = 32
    head = nn.Linear(width, 2)
    with torch.no_grad():
        head.weight[1] = head.weight[0]
        head.bias.copy_(torch.tensor([bias_gap, 0.0]))
    return nn.Sequential(*layers, head).eval()


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("gap", [0.0, 1e-12])
def test_rounding_cannot_verify_a_zero_or_tiny_margin(gap, deep):
    model = _twin_heads(gap, deep)
    x = torch.rand(4, *SHAPE)
    with torch.no_grad():
        out = model(x.double()) if False else graph_from_module(model, SHAPE).forward(x.double())
    true = out[:, 0] - out[:, 1]
    assert (true.abs() <= 2e-12).all()
    y = torch.zeros(4, dtype=torch.long)
    for method in METHODS:
        for norm in ["linf", "l2"]:
            for eps in [0.0, 0.01]:
                for float_model, slack in (("real", 1e-6), ("float32", 1e-3)):
                    m = margin_lower(
                        model, x, y, eps=eps, norm=norm, method=method, alpha_steps=3, float_model=float_model
                    )
                    # the real network's margin is exactly float32(gap) everywhere: a real-arithmetic bound may
                    # verify a positive gap but never exceed it; in float32, w·h + 1e-12 rounds to w·h, so
                    # the deployed margin is 0 and nothing may be verified
                    real_gap = float(torch.tensor(gap, dtype=torch.float32))
                    assert (m[:, 1] <= real_gap).all(), (method, norm, eps, float_model, m[:, 1])
                    if float_model == "float32" or gap == 0.0:
                        assert not is_verified(m).any(), (method, norm, eps, float_model, m[:, 1])
                        assert (m[:, 1] < 0).all()
                    # the bound is not absurdly wide: only the rounding of the computation (real) or also of
                    # the float32 deployment (float32) separates it from the true margin
                    assert (m[:, 1] > -slack).all()


def test_a_clear_margin_is_verified():
    model = _twin_heads(1e-3, True)
    x = torch.rand(4, *SHAPE)
    y = torch.zeros(4, dtype=torch.long)
    for method in METHODS:
        assert is_verified(margin_lower(model, x, y, eps=0.01, method=method, alpha_steps=3)).all()


def test_explicit_box_equals_the_linf_ball():
    model = make_model("residual")
    x = inputs("residual", 2)
    y = torch.tensor([1, 3])
    box = ((x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1))
    for method in METHODS:
        a = margin_lower(model, x, y, eps=0.02, method=method, alpha_steps=3)
        b = margin_lower(model, None, y, box=box, method=method, alpha_steps=3)
        if method == "alpha-crown":
            # the two boxes differ by float rounding (float32 x - 0.02 vs float64, rounded outward), and the
            # slope search can follow a different path from there: equal up to the search, both >= CROWN
            crown = margin_lower(model, x, y, eps=0.02, method="crown")
            assert (a >= crown).all() and (b >= crown - 1e-6).all()
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
        else:
            torch.testing.assert_close(a, b)


def test_l2_uses_the_box_too():
    """A huge L2 radius: the bound must not be worse than the [0,1] box alone (ball ∩ box)."""
    model = make_model("mlp")
    x = inputs("mlp", 2)
    y = torch.tensor([0, 1])
    box = (torch.zeros_like(x), torch.ones_like(x))
    for method in METHODS:
        big = margin_lower(model, x, y, eps=100.0, norm="l2", method=method, alpha_steps=3)
        whole = margin_lower(model, None, y, box=box, method=method, alpha_steps=3)
        k = torch.isfinite(big)
        assert (big[k] >= whole[k] - 1e-6 * (1 + whole[k].abs())).all()  # up to the safety margins


def test_eps_zero_is_the_margin_itself():
    model = make_model("sig_tanh")
    x = inputs("sig_tanh", 3)
    y = torch.tensor([0, 1, 2])
    out = graph_from_module(model, SHAPE).forward(x.double())
    true = out[torch.arange(3), y].unsqueeze(1) - out
    for method in METHODS:
        for float_model, slack in (("real", 1e-6), ("float32", 1e-4)):
            m = margin_lower(model, x, y, eps=0.0, method=method, float_model=float_model)
            k = torch.isfinite(m)
            assert (m[k] <= true[k]).all() and (m[k] >= true[k] - slack).all()


def _errs(fn, match):
    with pytest.raises(RobustCertError, match=match):
        fn()


def test_bad_inputs_raise_clear_errors():
    model = make_model("mlp")
    x = inputs("mlp", 2)
    y = torch.tensor([0, 1])
    _errs(lambda: margin_lower(model, x, y, eps=-0.1), "eps")
    _errs(lambda: margin_lower(model, x, y, eps=float("nan")), "eps")
    _errs(lambda: margin_lower(model, x, y, norm="l1"), "norm")
    _errs(lambda: margin_lower(model, x, y, method="deeppoly"), "method")
    _errs(lambda: margin_lower(model, x, y, intermediate="lp"), "intermediate")
    xn = x.clone()
    xn[0, 0, 0, 0] = float("nan")
    _errs(lambda: margin_lower(model, xn, y), "NaN")
    _errs(lambda: margin_lower(model, x * 3, y), r"\[0, 1\]")
    _errs(lambda: margin_lower(model, torch.rand(2, 1, 5, 5), y), "shape")
    _errs(lambda: margin_lower(model, x[0], y[:1]), "batch")
    _errs(lambda: margin_lower(model, x, torch.tensor([0, 10])), "labels outside")
    _errs(lambda: margin_lower(model, x, torch.tensor([0, 1, 2])), "one label per input")
    _errs(lambda: margin_lower(model, x, torch.tensor([0.0, 1.0])), "integer")
    _errs(lambda: margin_lower(model, x, y, box=(x, x)), "not both")
    _errs(lambda: margin_lower(model, None, y, box=(x, x - 0.1)), "lo must be <= hi")
    _errs(lambda: margin_lower(model, None, y, norm="l2", box=(x, x)), "linf")
    _errs(lambda: logit_bounds(model, x, eps=-1), "eps")
    bn = make_model("bn_pool").train()
    _errs(lambda: margin_lower(bn, x, y), r"model\.eval\(\)")
    upsample = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.Flatten(), nn.Linear(288, 3))
    with pytest.raises(RobustCertError) as info:
        margin_lower(upsample.eval(), x, y)
    assert (
        "nn.Upsample" in str(info.value) and "'1'" in str(info.value) and "supported ops" in str(info.value)
    )


def test_shape_mismatch_with_a_loaded_onnx_model(tmp_path):
    path = str(tmp_path / "m.onnx")
    export_onnx(make_model("mlp"), path)
    net = load_onnx(path)
    _errs(lambda: margin_lower(net, torch.rand(2, 1, 5, 5), torch.tensor([0, 1])), "input shape")


def test_train_mode_model_is_evaluated_in_eval_mode_and_restored():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.9), nn.Linear(16, 3)
    ).train()
    x = torch.rand(2, *SHAPE)
    a = margin_lower(model, x, torch.tensor([0, 1]), eps=0.01)
    assert model.training and model[3].training
    b = margin_lower(model.eval(), x, torch.tensor([0, 1]), eps=0.01)
    torch.testing.assert_close(a, b)


def test_differentiable_training_paths():
    model = make_model("cnn").train()
    x = inputs("cnn", 4)
    y = torch.tensor([0, 1, 2, 3])
    lo, hi = (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1)
    out_lo, out_hi = ibp_bounds(model, lo, hi)
    assert out_lo.dtype == torch.float32 and out_lo.requires_grad
    (out_hi - out_lo).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    m_ibp = ibp_margin_lower(model, lo, hi, y)
    m_crown = crown_margin_lower(model, lo, hi, y)  # CROWN-IBP
    assert m_crown.dtype == torch.float32 and (m_crown[torch.arange(4), y] == 0).all()
    torch.nn.functional.cross_entropy(-m_crown, y).backward()
    assert model[1].weight.grad is not None and model[1].weight.grad.abs().sum() > 0
    model.eval()
    cert_ibp = margin_lower(model, None, y, box=(lo, hi), method="ibp")
    cert_crown = margin_lower(model, None, y, box=(lo, hi), method="crown", intermediate="ibp")
    k = torch.isfinite(cert_ibp)
    torch.testing.assert_close(m_ibp.detach().double()[k], cert_ibp[k], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(m_crown.detach().double()[k], cert_crown[k], rtol=1e-4, atol=1e-4)
    m64 = crown_margin_lower(model, lo, hi, y, dtype=torch.float64)
    assert m64.dtype == torch.float64
    assert (m64.detach()[k] >= cert_crown[k]).all()  # the certified one subtracts the safety margin


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_relaxations_are_valid_on_their_intervals(act):
    """aL x + bL <= act(x) <= aU x + bU on a fine grid of [lb, ub], for narrow, wide, one-sided and
    straddling intervals (where the tangent-through-endpoint and chord cases both occur)."""
    from robustcert.bounds import crown

    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4000, generator=gen, dtype=torch.float64) * 3
    widths = torch.rand(4000, generator=gen, dtype=torch.float64) ** 3 * 12
    widths[:200] = 1e-10
    lb, ub = centers - widths / 2, centers + widths / 2
    rule = crown.RULES[act].relax
    aL, bL, aU, bU = rule(None, lb, ub, None)
    bL = torch.zeros_like(lb) if bL is None else bL
    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    xs = lb[:, None] + (ub - lb)[:, None] * t[None, :]
    f = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act](xs)
    slack = 1e-12
    assert (aL[:, None] * xs + bL[:, None] <= f + slack).all()
    assert (aU[:, None] * xs + bU[:, None] >= f - slack).all()
    straddle = (lb < 0) & (ub > 0)
    if act != "relu":  # the bounds are not trivial: they touch the function somewhere
        gap_up = (aU[:, None] * xs + bU[:, None] - f).min(1).values
        assert gap_up[straddle].max() < 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["sig_tanh", "const_ops"])
def test_sound_with_wide_sigmoid_tanh_intervals(name, norm):
    model = make_model(name)
    graph = graph_from_module(model, SHAPE)
    x = inputs(name, 1)
    y = torch.tensor([1])
    eps = {"linf": 0.3, "l2": 3.0}[norm]
    pts = torch.cat(
        [sample_ball(x, eps, norm, 4000, torch.Generator().manual_seed(1)), attack(graph, x, 1, eps, norm)]
    )
    with torch.no_grad():
        out = graph.forward(pts)
    true = out[:, 1:2] - out
    for method in METHODS:
        m = margin_lower(model, x, y, eps=eps, norm=norm, method=method, **_alpha_steps(method))
        lo, hi = logit_bounds(model, x, eps=eps, norm=norm, method=method, **_alpha_steps(method))
        k = torch.arange(out.shape[1]) != 1
        assert (true[:, k] >= m[0, k]).all(), method
        assert (out >= lo).all() and (out <= hi).all(), method


def test_receptive_field_windows_equal_dense_crown():
    """The windowed ("patches") CROWN of conv feature maps gives the dense CROWN intervals."""
    from robustcert.bounds import api, crown, crown_window

    torch.manual_seed(2)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        bn,
        nn.Sigmoid(),
        nn.AvgPool2d(2, stride=1),
        nn.Conv2d(4, 3, 2, dilation=2, padding=1, groups=1),
        nn.Tanh(),
        nn.Conv2d(3, 3, 3, padding=1, groups=3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    ).eval()
    x = torch.rand(3, *SHAPE)
    for norm, eps in [("linf", 0.1), ("l2", 0.8)]:
        graph, inset, shapes, mags = api._setup(model, x, eps, norm, "crown", None, "crown")
        planned = [
            n
            for n in crown.activation_inputs(graph)
            if crown_window.plan(graph, n, crown.Ctx(shapes)) is not None
        ]
        assert len(planned) >= 3
        a = crown.intermediate_bounds(graph, inset, shapes, mags=mags, use_windows=True)
        b = crown.intermediate_bounds(graph, inset, shapes, mags=mags, use_windows=False)
        for k in a:
            torch.testing.assert_close(a[k][0], b[k][0], rtol=0, atol=1e-10)
            torch.testing.assert_close(a[k][1], b[k][1], rtol=0, atol=1e-10)
    y = model(x).argmax(1)
    m = margin_lower(model, x, y, eps=0.1, method="crown")
    graph = graph_from_module(model, SHAPE)
    pts = sample_ball(x[:1], 0.1, "linf", 3000, torch.Generator().manual_seed(0))
    out = graph.forward(pts)
    true = out[:, y[0] : y[0] + 1] - out
    assert (true[:, torch.arange(4) != y[0]] >= m[0, torch.arange(4) != y[0]]).all()
