"""The SDP's two load-bearing arguments, checked directly:

1. the program of ``sdp/encode.py`` holds every point of the network: at the network's own activations
   for inputs in the region, every constraint is satisfied and the outputs match within ``out_err``;
2. the Lagrangian of ``sdp/dual.py`` is exact: ``w'Zw`` equals the margin plus the multiplied constraint
   terms (checked in rational arithmetic), so ``certified_bound`` is below the margin at every feasible
   point, for any multipliers, in both its full and Schur forms.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from robustcert.graph import to_graph
from robustcert.sdp.certify import build_program
from robustcert.sdp.dual import Multipliers, certified_bound, full_bound, lagrangian, schur_bound
from robustcert.sdp.encode import dense_network


def _net(seed: int, widths: tuple[int, ...] = (8, 8), d: int = 5, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    fan = d
    for w in widths:
        layers += [nn.Linear(fan, w), nn.ReLU()]
        fan = w
    layers.append(nn.Linear(fan, k))
    return nn.Sequential(*layers).eval()


def _activations(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Pre-activations of every ReLU, in order, float64 (the real network)."""
    out = []
    h = x.double().flatten(1)
    for layer in list(model)[1:]:
        if isinstance(layer, nn.Linear):
            h = h @ layer.weight.double().T + layer.bias.double()
        else:
            out.append(h.clone())
            h = torch.relu(h)
    out.append(h)  # the logits
    return [t.detach().numpy() for t in out]


def _program(model: nn.Module, x: torch.Tensor, eps: float, norm: str = "linf", float_model: str = "real"):
    graph = to_graph(model, tuple(x.shape[1:]))
    net = dense_network(graph)
    y = int(model(x).argmax())
    return build_program(graph, net, x, y, eps, norm=norm, domain=None, float_model=float_model), y


def _points(model: nn.Module, prog, x: torch.Tensor, eps: float, n: int, seed: int):
    """``v`` (the program's variables at the real network's activations) at n points of the box."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.from_numpy(prog.lo[: prog.n_in]), torch.from_numpy(prog.hi[: prog.n_in])
    pts = lo + (hi - lo) * torch.rand(n, prog.n_in, generator=gen, dtype=torch.float64)
    corners = torch.where(torch.rand(n, prog.n_in, generator=gen) < 0.5, lo, hi)
    pts = torch.cat([pts, corners]).reshape(-1, *x.shape[1:])
    acts = _activations(model, pts)
    pre = np.concatenate(acts[:-1], axis=1)
    return pts.reshape(pts.shape[0], -1).numpy(), pre, acts[-1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_program_holds_the_network(seed: int) -> None:
    model = _net(seed)
    x = torch.rand(1, 1, 5, generator=torch.Generator().manual_seed(seed))
    eps = 0.3
    (prog, _), y = _program(model, x, eps)
    assert prog.hidden > 0, "the test needs unstable ReLUs"
    xs, pre, logits = _points(model, prog, x, eps, 300, seed)
    # recover the ReLU variables from the pre-activations: the program's pre-activation rows are the
    # unstable neurons in graph order, each equal (within the composition's error) to the network's one
    v = xs.copy()
    for i in range(prog.hidden):
        s = v @ prog.pre_A[i, : v.shape[1]] + prog.pre_c[i]
        v = np.concatenate([v, np.maximum(s, 0)[:, None]], axis=1)
    assert v.shape[1] == prog.size
    tol = 1e-9 * (1 + np.abs(v).max())
    # boxes, the ReLU equalities and the linear constraints hold
    assert (v >= prog.lo - tol).all() and (v <= prog.hi + tol).all()
    s = v @ prog.pre_A.T + prog.pre_c
    z = v[:, prog.n_in :]
    assert np.abs(z * (z - s)).max() <= tol * (1 + np.abs(s).max())
    assert (v @ prog.G.T + prog.h <= tol * (1 + np.abs(prog.G).sum(1).max())).all()
    # the outputs equal the network's within out_err
    out = v @ prog.out_A.T + prog.out_c
    assert (np.abs(out - logits) <= prog.out_err + tol).all()
    # every unstable pre-activation is in its interval, and each is one of the network's pre-activations
    assert (s >= prog.pre_lo - tol).all() and (s <= prog.pre_hi + tol).all()
    matched = [np.abs(pre - s[:, [i]]).max(axis=0).min() for i in range(prog.hidden)]
    assert max(matched) <= 1e-6


def _rand_multipliers(prog, rng: np.random.Generator, scale: float) -> Multipliers:
    return Multipliers(
        box=rng.exponential(scale, prog.size) * (rng.random(prog.size) < 0.9),
        relu=rng.normal(0, scale, prog.hidden),
        lin=rng.exponential(scale, prog.h.size) * (rng.random(prog.h.size) < 0.5),
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_lagrangian_identity_exact(seed: int) -> None:
    """w'Zw = margin + sum box (v-lo)(v-hi) + sum relu z(z-s) + sum lin (Gv+h), in exact rationals."""
    model = _net(seed, widths=(4, 4), d=3)
    x = torch.rand(1, 1, 3, generator=torch.Generator().manual_seed(seed))
    (prog, _), y = _program(model, x, 0.4)
    rng = np.random.default_rng(seed)
    m = _rand_multipliers(prog, rng, 1.0)
    j = (y + 1) % 3
    g, g0 = prog.objective(y, j)
    # Z from exact rational arithmetic on the same float64 data
    F = Fraction
    N = prog.size
    v = [F(float(a)) for a in rng.normal(0, 1, N)]
    w = [F(1)] + v
    Z = lagrangian(prog, g, g0, m)
    # the float64 Z is within its rounding bound of the exact one: compare w'Zw both ways
    lhs = sum(F(float(Z[a, b])) * w[a] * w[b] for a in range(N + 1) for b in range(N + 1))
    margin = F(float(g0)) + sum(F(float(g[k])) * v[k] for k in range(N))
    rhs = margin
    for k in range(N):
        rhs += F(float(m.box[k])) * (v[k] - F(float(prog.lo[k]))) * (v[k] - F(float(prog.hi[k])))
    for i in range(prog.hidden):
        s = F(float(prog.pre_c[i])) + sum(F(float(prog.pre_A[i, k])) * v[k] for k in range(N))
        zi = v[prog.n_in + i]
        rhs += F(float(m.relu[i])) * zi * (zi - s)
    for r in range(prog.h.size):
        rhs += F(float(m.lin[r])) * (
            F(float(prog.h[r])) + sum(F(float(prog.G[r, k])) * v[k] for k in range(N))
        )
    scale = sum(abs(F(float(a))) for a in np.abs(lagrangian(prog, g, g0, m, absolute=True)).ravel()) * 4
    assert abs(lhs - rhs) <= scale * F(2) ** -50


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_any_multipliers_give_a_bound_below_every_point(seed: int) -> None:
    model = _net(seed)
    x = torch.rand(1, 1, 5, generator=torch.Generator().manual_seed(10 + seed))
    (prog, _), y = _program(model, x, 0.3)
    xs, _, logits = _points(model, prog, x, 0.3, 200, seed)
    rng = np.random.default_rng(seed)
    for scale in (1e-3, 1.0, 1e3):
        m = _rand_multipliers(prog, rng, scale)
        for j in range(3):
            if j == y:
                continue
            g, g0 = prog.objective(y, j)
            true_min = float((logits[:, y] - logits[:, j]).min())
            for db in (
                full_bound(prog, g, g0, m),
                schur_bound(prog, g, g0, m),
                certified_bound(prog, g, g0, m),
            ):
                if db is None:
                    continue
                assert db.bound - prog.margin_error(y, j) <= true_min


def test_schur_and_full_forms_agree() -> None:
    model = _net(5)
    x = torch.rand(1, 1, 5, generator=torch.Generator().manual_seed(5))
    (prog, _), y = _program(model, x, 0.2)
    rng = np.random.default_rng(0)
    m = _rand_multipliers(prog, rng, 1.0)
    m.box = m.box + 0.5  # inputs' D > 0, so the Schur form applies
    j = (y + 1) % 3
    g, g0 = prog.objective(y, j)
    full, schur = full_bound(prog, g, g0, m), schur_bound(prog, g, g0, m)
    assert schur is not None
    # the Schur form drops the inputs from T: never looser than the full form by more than rounding
    assert schur.bound >= full.bound - 1e-7 * (1 + abs(full.bound))


def test_l2_ball_program_holds() -> None:
    model = _net(7)
    x = torch.full((1, 1, 5), 0.5)
    eps = 0.3
    (prog, _), y = _program(model, x, eps, norm="l2")
    assert prog.center is not None and prog.radius == pytest.approx(eps)
    rng = np.random.default_rng(1)
    m = _rand_multipliers(prog, rng, 1.0)
    m.ball = 2.0
    d = rng.normal(size=(400, 5))
    d = d / np.linalg.norm(d, axis=1, keepdims=True) * eps * rng.random((400, 1)) ** 0.2
    pts = np.clip(0.5 + d, 0, 1)
    logits = _activations(model, torch.from_numpy(pts).reshape(-1, 1, 5))[-1]
    for j in range(3):
        if j == y:
            continue
        g, g0 = prog.objective(y, j)
        db = certified_bound(prog, g, g0, m)
        assert db.bound - prog.margin_error(y, j) <= float((logits[:, y] - logits[:, j]).min())


def test_unsupported_layer_names_the_node_and_the_supported_ops() -> None:
    from robustcert.errors import RobustCertError
    from robustcert.sdp import sdp_margin

    model = nn.Sequential(nn.Flatten(), nn.Linear(5, 4), nn.Sigmoid(), nn.Linear(4, 3)).eval()
    with pytest.raises(RobustCertError) as err:
        sdp_margin(model, torch.rand(1, 1, 5), 0, 0.1)
    text = str(err.value)
    assert "sigmoid" in text and "supported ops: input, linear, relu" in text and "\n" not in text


def test_missing_conic_solver_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import cvxpy

    from robustcert.errors import RobustCertError
    from robustcert.methods import get_method

    monkeypatch.setattr(cvxpy, "installed_solvers", lambda: ["SCS"])
    with pytest.raises(RobustCertError, match="pip install clarabel"):
        get_method("sdp").make_params({"solver": "clarabel", "eps": "0.1"}, cli=True)
    get_method("sdp").make_params({"solver": "scs", "eps": "0.1"}, cli=True)  # installed: accepted
