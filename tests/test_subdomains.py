"""Batched bounds of branch-and-bound sub-domains (robustcert.bounds.subdomains): agreement with
margin_lower without splits, soundness against sampled / randomly searched points of each sub-domain
(the split constraints read on the float32 model's pre-activations), infeasible domains, exactness on
a one-neuron net, and the refinement of intermediate intervals."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import Tensor, nn

from robustcert.bounds import margin_lower, margin_spec
from robustcert.bounds.subdomains import (
    Root,
    bound_subdomains,
    root_bounds,
    sign_patterns,
    split_domains,
    subdomain_intervals,
    top_unstable,
)
from robustcert.errors import RobustCertError

# the dtype of the bound computation, where robustcert.bounds has the choice (float32 compute is on
# its way in); float64 for the exactness checks
HAS_PRECISION = "precision" in inspect.signature(margin_lower).parameters
PREC64: dict = {"precision": "float64"} if HAS_PRECISION else {}
PRECISIONS = ["float32", "float64"] if HAS_PRECISION else [None]


def tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def tiny_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, 2, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 3),
    ).eval()


def setup(
    model: nn.Module, shape: tuple[int, ...], eps: float, seed: int = 1, **kw
) -> tuple[Root, Tensor, Tensor]:
    torch.manual_seed(seed)
    x = torch.rand((1,) + shape)
    y = model(x).argmax(1)
    root = root_bounds(model, x, eps, **kw)
    return root, x, margin_spec(y, 3, root.dtype)


def in_domains(root: Root, splits: dict[str, Tensor], pts: Tensor) -> tuple[Tensor, Tensor]:
    """[N, D] bool: point n satisfies domain d's constraints on the float32 pre-activations; and the
    float32 outputs [N, K]."""
    with torch.no_grad():
        vals = root.graph.forward_all(pts.float())
    D = next(iter(splits.values())).shape[0]
    ok = torch.ones(pts.shape[0], D, dtype=torch.bool)
    for name, s in splits.items():
        z = vals[name].flatten(1).unsqueeze(1)  # [N, 1, n]
        sd = s.flatten(1).unsqueeze(0)  # [1, D, n]
        bad = ((sd > 0) & (z < 0)) | ((sd < 0) & (z > 0))
        ok &= ~bad.any(-1)
    return ok, vals[root.graph.output].double()


def sample_box(x: Tensor, eps: float, n: int, gen: torch.Generator) -> Tensor:
    lo, hi = (x.double() - eps).clamp(0, 1), (x.double() + eps).clamp(0, 1)
    u = torch.rand((n,) + tuple(x.shape[1:]), generator=gen, dtype=torch.float64)
    u[: n // 8] = (u[: n // 8] > 0.5).double()
    return lo + (hi - lo) * u


def check_sound(root: Root, x: Tensor, eps: float, C: Tensor, splits, lb: Tensor, n: int) -> int:
    """Sample n points (plus a random local search inside each domain); assert C·f >= lb on every
    point of every domain; return how many (point, domain) pairs were checked."""
    C, lb = C.double(), lb.double()  # the bounds may be float32 numbers: compare exactly in float64
    gen = torch.Generator().manual_seed(0)
    pts = sample_box(x, eps, n, gen)
    ok, out = in_domains(root, splits, pts)
    val = torch.einsum("sk,nk->ns", C[0], out)  # [N, S]
    viol = ok.unsqueeze(-1) & (val.unsqueeze(1) < lb.unsqueeze(0))  # [N, D, S]
    assert not bool(viol.any()), f"{int(viol.sum())} violations"
    # random search: per domain, start at its worst sampled point and take random steps that stay in the
    # domain and lower the smallest margin (PGD-free)
    lo, hi = (x.double() - eps).clamp(0, 1), (x.double() + eps).clamp(0, 1)
    rows = C[0].abs().sum(-1) > 0
    obj = torch.where(rows, val, torch.inf).min(-1).values  # [N]
    checked = int(ok.sum())
    for d in range(lb.shape[0]):
        idx = ok[:, d].nonzero().flatten()
        if idx.numel() == 0:
            continue
        best = pts[idx[obj[idx].argmin()]].unsqueeze(0)
        best_obj = float(obj[idx].min())
        for step in (0.3, 0.1, 0.03):
            cand = (best + step * eps * torch.randn((64,) + tuple(x.shape[1:]), generator=gen)).clamp(lo, hi)
            ok_c, out_c = in_domains(root, {k: v[d : d + 1] for k, v in splits.items()}, cand)
            val_c = torch.einsum("sk,nk->ns", C[0], out_c)
            assert not bool((ok_c & (val_c < lb[d]).any(-1, keepdim=True)).any())
            checked += int(ok_c.sum())
            o = torch.where(rows, val_c, torch.inf).min(-1).values
            o = torch.where(ok_c[:, 0], o, torch.inf)
            if float(o.min()) < best_obj:
                best_obj, best = float(o.min()), cand[o.argmin()].unsqueeze(0)
    return checked


# ---- (a) no splits = margin_lower ----------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("make,shape", [(mlp, (6,)), (tiny_cnn, (1, 8, 8))])
def test_no_splits_equals_margin_lower(make, shape, precision):
    model = make()
    eps = 0.1
    kw = {} if precision is None else {"precision": precision}
    root, x, C = setup(model, shape, eps, **kw)
    y = int((C[0].abs().sum(-1) == 0).nonzero())
    ref = margin_lower(model, x, torch.tensor([y]), eps=eps, method="crown", **kw)
    one = bound_subdomains(root, C, {})
    assert one.dtype == root.dtype
    mask = torch.arange(3) != y
    assert torch.equal(one[:, mask].double(), ref[:, mask])  # the same computation, bit for bit
    t = tol(root.dtype)
    # D copies without constraints (all-zero splits): the same numbers up to summation order
    zeros = {n: torch.zeros((5,) + root.shapes[n], dtype=torch.int8) for n in root.split_nodes}
    many = bound_subdomains(root, C, zeros)
    assert many.shape == (5, 3)
    torch.testing.assert_close(many[:, mask].double(), ref[:, mask].expand(5, 2), rtol=t, atol=t)
    # splits that constrain nothing reuse every root interval as a view (no copies)
    iv = subdomain_intervals(root, zeros)
    for name, (lo, _) in iv.bounds.items():
        assert lo.data_ptr() == root.ctx.bounds[name][0].data_ptr() and lo.stride(0) == 0


# ---- (b) soundness by sampling and random search -------------------------------------------------


@pytest.mark.parametrize("refine", [True, False])
@pytest.mark.parametrize("make,shape,eps", [(mlp, (6,), 0.15), (tiny_cnn, (1, 8, 8), 0.1)])
def test_sound_on_sampled_points(make, shape, eps, refine):
    model = make()
    root, x, C = setup(model, shape, eps)
    picks = top_unstable(root, 4)
    assert len(picks) == 4
    splits = sign_patterns(root, picks)
    lb = bound_subdomains(root, C, splits, refine=refine)
    assert lb.shape == (16, 3)
    checked = check_sound(root, x, eps, C, splits, lb, 4000)
    assert checked > 2000
    # domains that hold sampled points cannot be infeasible
    ok, _ = in_domains(root, splits, sample_box(x, eps, 4000, torch.Generator().manual_seed(0)))
    assert bool(torch.isfinite(lb[ok.any(0)]).all())


def test_sound_deeper_splits_and_alpha():
    """Splits on both layers, and alpha-CROWN, are sound and alpha never loses to CROWN."""
    model = mlp(3)
    eps = 0.15
    root, x, C = setup(model, (6,), eps)
    unst = root.unstable()
    names = list(root.split_nodes)
    picks = [(names[0], int(unst[names[0]].flatten().nonzero()[0]))]
    picks += [(names[1], int(i)) for i in unst[names[1]].flatten().nonzero()[:2].flatten()]
    splits = sign_patterns(root, picks)
    lb = bound_subdomains(root, C, splits)
    la = bound_subdomains(root, C, splits, method="alpha-crown", alpha_steps=5)
    assert bool((la >= lb).all())
    check_sound(root, x, eps, C, splits, la, 4000)


# ---- (c) infeasible domains, splitting against the parent --------------------------------------


def test_infeasible_domain_is_inf():
    model = mlp()
    root, x, C = setup(model, (6,), 0.05)
    name = root.split_nodes[1]
    lo, hi = root.ctx.bounds[name]
    dead = (hi[0] < 0).flatten().nonzero()
    assert dead.numel() > 0
    s = torch.zeros((2,) + root.shapes[name], dtype=torch.int8).flatten(1)
    s[0, int(dead[0])] = 1  # z >= 0 on a neuron with ub < 0: empty
    s[1, int(dead[0])] = -1  # consistent with the root: the root's bound
    lb = bound_subdomains(root, C, {name: s.reshape((2,) + root.shapes[name])})
    assert bool(torch.isinf(lb[0]).all()) and bool((lb[0] > 0).all())
    ref = bound_subdomains(root, C, {})
    torch.testing.assert_close(lb[1], ref[0], rtol=tol(root.dtype), atol=tol(root.dtype))


def test_children_not_looser_than_parent_with_floor():
    """Children of the root split on one neuron: with the parent's bound as floor never looser, and on
    some neurons strictly tighter in the worse child (the one that matters for branch and bound)."""
    model = mlp()
    root, x, C = setup(model, (6,), 0.1)
    parent = bound_subdomains(root, C, {})
    rows = C[0].abs().sum(-1) > 0
    gained = 0
    for pick in top_unstable(root, 6):
        kids = split_domains({}, pick, root.shapes)
        assert kids[pick[0]].flatten(1)[:, pick[1]].tolist() == [1, -1]
        lb = bound_subdomains(root, C, kids, floor=parent)
        assert bool((lb.min(0).values[rows] >= parent[0, rows]).all())
        gained += int((lb.min(0).values[rows] > parent[0, rows] + 1e-9).sum())
    assert gained > 0


# ---- (d) exactness on one unstable neuron --------------------------------------------------------


def one_neuron_net(w_out: float) -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, -0.3]]))
        net[0].bias.copy_(torch.tensor([1.0, -3.0, -0.4]))  # stable on, stable off, unstable
        net[2].weight.copy_(torch.tensor([[1.0, 2.0, w_out]]))
        net[2].bias.copy_(torch.tensor([0.1]))
    return net.eval()


def test_exact_with_one_unstable_neuron():
    """f = x0 + x1 + 1.1 - 1.5 relu(x0 - 0.3 x1 - 0.4) on [0, 1]^2: on each side of the split f is
    affine and its minimum over the box lies in that side, so CROWN on each child is exact."""
    net = one_neuron_net(-1.5)
    x = torch.full((1, 2), 0.5)
    root = root_bounds(net, x, 0.5, float_model="real", **PREC64)
    name = root.split_nodes[0]
    lo, hi = root.ctx.bounds[name]
    assert bool((lo[0, 2] < 0) & (hi[0, 2] > 0)) and bool(((lo[0, :2] >= 0) | (hi[0, :2] <= 0)).all())
    C = torch.ones(1, 1, 1, dtype=root.dtype)
    kids = split_domains({}, (name, 2), root.shapes)
    lb = bound_subdomains(root, C, kids)[:, 0]
    parent = bound_subdomains(root, C, {})[0, 0]
    # dense grid, exact min on each side (the minima are at corners, which the grid contains)
    g = torch.linspace(0, 1, 1001, dtype=torch.float64)
    X = torch.cartesian_prod(g, g)
    with torch.no_grad():
        net = net.double()
        f, z = net(X)[:, 0], net[0](X)[:, 2]
    exact_pos, exact_neg = float(f[z >= 0].min()), float(f[z <= 0].min())
    assert abs(float(lb[0]) - exact_pos) < 1e-6 and abs(float(lb[1]) - exact_neg) < 1e-6
    assert abs(float(lb.min()) - float(f.min())) < 1e-6
    assert float(parent) < float(f.min()) - 0.1  # the unsplit relaxation is loose
    assert abs(exact_pos - 1.2) < 1e-6 and abs(exact_neg - 1.1) < 1e-6  # float32 weights


def test_one_neuron_positive_output_weight_is_sound_not_exact():
    """With a positive output weight f is convex in the neuron; CROWN without the split constraint's
    Lagrange term (beta-CROWN) concretises each piece over the whole box: sound, not exact."""
    net = one_neuron_net(1.5)
    root = root_bounds(net, torch.full((1, 2), 0.5), 0.5, float_model="real", **PREC64)
    name = root.split_nodes[0]
    lb = bound_subdomains(
        root, torch.ones(1, 1, 1, dtype=root.dtype), split_domains({}, (name, 2), root.shapes)
    )
    g = torch.linspace(0, 1, 201, dtype=torch.float64)
    X = torch.cartesian_prod(g, g)
    with torch.no_grad():
        net = net.double()
        f, z = net(X)[:, 0], net[0](X)[:, 2]
    assert float(lb[0, 0]) <= float(f[z >= 0].min()) and float(lb[1, 0]) <= float(f[z <= 0].min())


# ---- (e) refine ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make,shape,eps", [(mlp, (6,), 0.15), (tiny_cnn, (1, 8, 8), 0.1)])
def test_refine_tightens_intervals(make, shape, eps):
    model = make()
    root, x, C = setup(model, shape, eps)
    picks = [p for p in top_unstable(root, 40) if p[0] == root.split_nodes[0]][:4]
    splits = sign_patterns(root, picks)
    fine = subdomain_intervals(root, splits, refine=True)
    coarse = subdomain_intervals(root, splits, refine=False)
    later = root.split_nodes[1]
    for name, (lo, hi) in fine.bounds.items():
        clo, chi = coarse.bounds[name]
        assert bool((lo >= clo).all()) and bool((hi <= chi).all())  # nested
    lo, hi = fine.bounds[later]
    clo, chi = coarse.bounds[later]
    tighter = int(((lo > clo) | (hi < chi)).sum())
    assert tighter > 0
    lb_f = bound_subdomains(root, C, splits, refine=True)
    lb_c = bound_subdomains(root, C, splits, refine=False)
    rows = C[0].abs().sum(-1) > 0
    # tighter intervals: the worst domain's bound (what branch and bound needs) is at least as good,
    # and on average every domain gains
    assert bool((lb_f.min(0).values[rows] >= lb_c.min(0).values[rows]).all())
    assert float((lb_f - lb_c)[:, rows].mean()) > 0
    assert bool((lb_f >= lb_c - 1e-3).all())


# ---- input checks ----------------------------------------------------------------------------------


def test_bad_splits_raise():
    root, x, C = setup(mlp(), (6,), 0.1)
    name = root.split_nodes[0]
    with pytest.raises(RobustCertError, match="not the input of a ReLU"):
        bound_subdomains(root, C, {root.graph.output: torch.zeros(1, 3, dtype=torch.int8)})
    with pytest.raises(RobustCertError, match="values outside"):
        bound_subdomains(root, C, {name: torch.full((1, 16), 2, dtype=torch.int8)})
    with pytest.raises(RobustCertError, match="shape"):
        bound_subdomains(root, C, {name: torch.zeros(1, 15, dtype=torch.int8)})
    with pytest.raises(RobustCertError, match="C must be"):
        bound_subdomains(root, C.expand(3, 3, 3), {name: torch.zeros(2, 16, dtype=torch.int8)})
    with pytest.raises(RobustCertError, match="ONE example"):
        root_bounds(mlp(), torch.rand(2, 6), 0.1)


def test_dtype_follows_the_input_set():
    """Nothing is hard-coded to float64: a root whose input set and intervals are float32 gives float32
    bounds close to the float64 ones (soundness in float32 compute is the rounding model's business)."""
    root, x, C = setup(mlp(), (6,), 0.1, **PREC64)
    b32 = {k: (lo.float(), hi.float()) for k, (lo, hi) in root.ctx.bounds.items()}
    root32 = Root(
        root.graph,
        root.inset.to(torch.float32),
        root.shapes,
        root.rounding,
        type(root.ctx)(root.shapes, b32),
        root.intermediate,
        root.split_nodes,
    )
    assert root32.dtype == torch.float32
    splits = sign_patterns(root32, top_unstable(root32, 3))
    lb32 = bound_subdomains(root32, C, splits)
    lb64 = bound_subdomains(root, C, splits)
    assert lb32.dtype == torch.float32
    rows = C[0].abs().sum(-1) > 0
    torch.testing.assert_close(lb32[:, rows].double(), lb64[:, rows], rtol=1e-4, atol=1e-4)


def test_batch_size_does_not_change_the_bounds():
    root, x, C = setup(mlp(), (6,), 0.15)
    splits = sign_patterns(root, top_unstable(root, 3))
    whole = bound_subdomains(root, C, splits)
    floor = whole - 1.0
    parts = bound_subdomains(root, C.expand(8, 3, 3), splits, batch_size=3, floor=floor)
    torch.testing.assert_close(parts, whole, rtol=tol(root.dtype), atol=tol(root.dtype))


def test_children_from_parent_intervals():
    """Branch and bound from the parent's intervals: the grandchildren get the parent's (refined)
    intervals as base and only the new split; their intervals lie inside the parent's and their bounds
    are sound on the full constraint sets."""
    model = mlp(2)
    eps = 0.15
    root, x, C = setup(model, (6,), eps)
    first, second = top_unstable(root, 2)
    kids = split_domains({}, first, root.shapes)
    kid_iv = subdomain_intervals(root, kids)
    grand = split_domains(kids, second, root.shapes)  # all constraints, 4 domains
    new_only = split_domains({}, second, root.shapes)  # only the new one, 2 domains
    new_only = {k: torch.cat([v[:1], v[:1], v[1:], v[1:]]) for k, v in new_only.items()}  # as in grand
    base = kid_iv.take(torch.tensor([0, 1, 0, 1]))
    iv = subdomain_intervals(root, new_only, base=base)
    for name, (lo, hi) in iv.bounds.items():
        assert bool((lo >= base.bounds[name][0]).all()) and bool((hi <= base.bounds[name][1]).all())
    lb = bound_subdomains(root, C, new_only, base=base)
    assert check_sound(root, x, eps, C, grand, lb, 4000) > 1000
    # the same result as bounding the grandchildren's full constraints from the root, up to the
    # refinement order, and never infeasible where the full constraints hold sampled points
    full = bound_subdomains(root, C, grand)
    assert bool(torch.isfinite(lb).all() == torch.isfinite(full).all())


@pytest.mark.parametrize("w_out", [-1.5, 1.5])
def test_sound_on_sampled_points_tight(w_out):
    """Sampling where the bounds are tight (one unstable neuron): a bound attached to the wrong
    side of the split would be caught here."""
    net = one_neuron_net(w_out)
    x = torch.full((1, 2), 0.5)
    root = root_bounds(net, x, 0.5)
    name = root.split_nodes[0]
    kids = split_domains({}, (name, 2), root.shapes)
    C = torch.ones(1, 1, 1, dtype=root.dtype)
    lb = bound_subdomains(root, C, kids)
    assert check_sound(root, x, 0.5, C, kids, lb, 4000) > 3000


# ---- (e) beta-CROWN: Lagrange multipliers of the split constraints -------------------------------


def test_beta_sound_and_never_below_crown():
    """beta-CROWN on splits of both layers: sound on sampled and searched points of every domain, never
    below CROWN, and tighter than alpha-CROWN on average (the split constraints are used)."""
    model = mlp(3)
    eps = 0.15
    root, x, C = setup(model, (6,), eps)
    unst = root.unstable()
    names = list(root.split_nodes)
    picks = [(names[0], int(i)) for i in unst[names[0]].flatten().nonzero()[:2].flatten()]
    picks += [(names[1], int(i)) for i in unst[names[1]].flatten().nonzero()[:2].flatten()]
    splits = sign_patterns(root, picks)
    lc = bound_subdomains(root, C, splits)
    la = bound_subdomains(root, C, splits, method="alpha-crown", alpha_steps=20)
    lbeta = bound_subdomains(root, C, splits, method="beta-crown", alpha_steps=20)
    assert bool((lbeta >= lc).all())
    rows = torch.isfinite(lbeta) & torch.isfinite(la) & (C[0].abs().sum(-1) > 0)
    assert float((lbeta - la)[rows].mean()) > 0
    check_sound(root, x, eps, C, splits, lbeta, 4000)


def _linear_pieces(model: nn.Sequential, splits: dict[str, Tensor], root: Root, d: int):
    """For the all-neurons-decided domain d of a Linear-ReLU-...-Linear net: the output as ``M x + m`` and
    the sign constraints as ``G x <= g`` (float64, the real-valued network)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    n_in = linears[0].in_features
    M, m = torch.eye(n_in, dtype=torch.float64), torch.zeros(n_in, dtype=torch.float64)
    G, g = [], []
    for layer, name in zip(linears[:-1], root.split_nodes, strict=True):
        W, b = layer.weight.detach().double(), layer.bias.detach().double()
        Mz, mz = W @ M, W @ m + b  # the pre-activation z = Mz x + mz
        lo, hi = (t[0].flatten() for t in root.ctx.bounds[name])
        s = splits[name][d].flatten().double() if name in splits else torch.zeros_like(lo)
        active = torch.where(s != 0, s > 0, lo >= 0)
        assert bool(((s != 0) | (lo >= 0) | (hi <= 0)).all()), "a neuron is left undecided"
        for j in (s != 0).nonzero().flatten():  # s z >= 0  <=>  -s Mz x <= s mz
            G.append(-s[j] * Mz[j])
            g.append(s[j] * mz[j])
        M, m = Mz * active.double().unsqueeze(1), mz * active.double()
    W, b = linears[-1].weight.detach().double(), linears[-1].bias.detach().double()
    return W @ M, W @ m + b, torch.stack(G), torch.stack(g)


def test_beta_reaches_the_lp_value_with_every_neuron_split():
    """With every unstable neuron split, each domain is a polytope on which the net is linear: the exact
    minimum is an LP. beta-CROWN (real-valued network) is never above it and, with its multipliers
    optimised, within 1e-3 of it (strong duality), where alpha-CROWN without them is not."""
    from scipy.optimize import linprog

    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    x = torch.full((1, 3), 0.5)
    root = root_bounds(model, x, 0.2, float_model="real")
    unst = root.unstable()
    picks = [(n, int(i)) for n in root.split_nodes for i in unst[n].flatten().nonzero().flatten()]
    assert 3 <= len(picks) <= 7
    splits = sign_patterns(root, picks)
    C = torch.tensor([[[1.0, -1.0], [-1.0, 1.0]]], dtype=root.dtype)
    lbeta = bound_subdomains(root, C, splits, method="beta-crown", alpha_steps=300, alpha_lr=0.3)
    la = bound_subdomains(root, C, splits, method="alpha-crown", alpha_steps=300, alpha_lr=0.3)
    lo, hi = root.inset.lo[0].double(), root.inset.hi[0].double()
    solved, beta_gains = 0, []
    for d in range(lbeta.shape[0]):
        M, m, G, g = _linear_pieces(model, splits, root, d)
        for r in range(C.shape[1]):
            c = C[0, r].double() @ M
            res = linprog(
                c.numpy(),
                A_ub=G.numpy(),
                b_ub=g.numpy(),
                bounds=list(zip(lo.tolist(), hi.tolist(), strict=True)),
            )
            if res.status == 2:  # infeasible domain: any bound holds
                continue
            assert res.status == 0
            exact = float(res.fun + C[0, r].double() @ m)
            solved += 1
            assert float(lbeta[d, r]) <= exact + 1e-9
            assert float(lbeta[d, r]) >= exact - 1e-3 * (1 + abs(exact))
            beta_gains.append(float(lbeta[d, r] - la[d, r]))
    assert solved >= 4
    assert max(beta_gains) > 1e-2  # the multipliers matter: alpha-CROWN alone stays below the LP


def test_tighten_root_is_nested_and_sound():
    """tighten_root's intervals lie inside the root's, are tighter somewhere, and contain every sampled
    float32 value of their node."""
    from robustcert.bounds.subdomains import tighten_root

    model = mlp(3)
    eps = 0.15
    root, x, C = setup(model, (6,), eps)
    tight = tighten_root(root, C, steps=20)
    shrunk = 0.0
    for name in root.split_nodes:
        (lo0, hi0), (lo1, hi1) = root.ctx.bounds[name], tight.ctx.bounds[name]
        assert bool((lo1 >= lo0).all() and (hi1 <= hi0).all())
        shrunk += float(((hi0 - lo0) - (hi1 - lo1)).sum())
    assert shrunk > 0
    pts = sample_box(x, eps, 4000, torch.Generator().manual_seed(7))
    with torch.no_grad():
        vals = root.graph.forward_all(pts.float())
    for name in root.split_nodes:
        lo, hi = tight.ctx.bounds[name]
        v = vals[name].double()
        assert bool((v >= lo).all() and (v <= hi).all())
    # and the bounds of sub-domains built on it stay sound
    unst = tight.unstable()
    picks = [(n, int(i)) for n in tight.split_nodes for i in unst[n].flatten().nonzero()[:2].flatten()]
    splits = sign_patterns(tight, picks)
    lb = bound_subdomains(tight, C, splits, method="beta-crown", alpha_steps=10)
    check_sound(tight, x, eps, C, splits, lb, 4000)
