"""The layers of a user's own network (issue 9, part 3): MaxPool, LeakyReLU, GELU, Concat, Pad,
permute/transpose, slicing, Softmax/LogSoftmax as the last op — and BatchNorm, residual blocks and pools
around them — in both front ends, with their IBP, CROWN and alpha-CROWN rules.

Every relaxation is checked against dense sampling of its interval; every model's bounds against
sampled points and PGD points that maximise / minimise each output."""

from __future__ import annotations

import math
import os
import sys

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustcert.bounds import (
    crown,
    crown_margin_lower,
    ibp,
    ibp_bounds,
    is_verified,
    logit_bounds,
    margin_lower,
)
from robustcert.bounds._common import Ctx, InputSet
from robustcert.bounds.alpha_crown import leaky_relu_alpha_relax
from robustcert.errors import RobustCertError
from robustcert.graph import OPS, GraphNet, Node, graph_from_module, graph_from_onnx, load_onnx
from robustcert.graph.ops import gelu_divisor

sys.path.insert(0, os.path.dirname(__file__))
from test_bounds import sample_ball  # noqa: E402
from test_bounds_models import SHAPE  # noqa: E402
from test_graph import export_onnx  # noqa: E402

METHODS = ["ibp", "crown", "alpha-crown"]
EPS = {"linf": 0.03, "l2": 0.3}
N_POINTS = 5_000


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# models, one or more new ops each (SHAPE = (1, 8, 8))
# --------------------------------------------------------------------------------------------------


class MaxPools(nn.Module):
    """MaxPool2d after a ReLU, then straight after a conv (ceil mode, padding); F.max_pool2d with
    dilation; AdaptiveMaxPool2d."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 3, 3, padding=1)
        self.p1 = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(3, 4, 3)
        self.p2 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.c3 = nn.Conv2d(1, 2, 3)
        self.p3 = nn.AdaptiveMaxPool2d(2)
        self.fc = nn.Linear(4 * 2 * 2 + 2 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.p2(self.c2(self.p1(torch.relu(self.c1(x)))))  # [4, 2, 2]
        b = F.max_pool2d(self.c3(x), 2, stride=1, dilation=2)  # [2, 4, 4]
        b = self.p3(F.leaky_relu(b, 0.2))  # [2, 2, 2]
        return self.fc(torch.cat([torch.relu(a).flatten(1), b.flatten(1)], dim=1))


class Leaky(nn.Module):
    """LeakyReLU with a small, a negative and a > 1 slope (convex, non-monotone and concave)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = (
            nn.Linear(64, 16),
            nn.Linear(16, 12),
            nn.Linear(12, 8),
            nn.Linear(8, 4),
        )
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.l1(x.flatten(1)))
        h = F.leaky_relu(self.l2(h), negative_slope=-0.4)
        h = F.leaky_relu(self.l3(h), 1.8)
        return self.l4(h)


def _gelu_mlp() -> nn.Module:
    m = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 12), nn.GELU(), nn.Linear(12, 4)
    )
    with torch.no_grad():  # wide pre-activations: intervals cross both inflection points +-sqrt 2
        m[1].weight.mul_(3.0)
        m[3].weight.mul_(2.0)
    return m


class ConcatPad(nn.Module):
    """torch.cat of two branches along channels, ZeroPad2d, F.pad with a non-zero value, a cropping pad."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 3, padding=1)
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.crop = nn.ConstantPad2d((-1, 0, 0, -1), 0.0)
        self.c = nn.Conv2d(4, 2, 3, stride=2)
        self.fc = nn.Linear(2 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)  # [4, 8, 8]
        h = self.pad(h)  # [4, 11, 9]
        h = F.pad(h, (0, 1), value=0.25)  # [4, 11, 10]
        h = self.crop(h)  # [4, 10, 9]
        return self.fc(torch.relu(self.c(h)).flatten(1))


class TransposeSlice(nn.Module):
    """A cyclic permute (not its own inverse), slicing with a step, transpose, narrow, an int index (drops
    a dim), concat of features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 3 + 8 * 3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x).permute(0, 2, 3, 1))  # [8, 8, 3]
        h = h[:, 1:7:2, :, :]  # [3, 8, 3]
        h = h.transpose(1, 3)  # [3, 8, 3]
        h = h.narrow(1, 1, 2)  # [2, 8, 3]
        g = h[:, 0]  # [8, 3]
        return self.fc(torch.cat([torch.tanh(h).flatten(1), g.flatten(1)], dim=1))


class ResidualBN(nn.Module):
    """A residual block with BatchNorm, then a MaxPool."""

    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(4)
        self.c1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)
        for bn in (self.bn0, self.bn1, self.bn2):
            bn.running_mean.copy_(torch.randn(4, generator=gen) * 0.2)
            bn.running_var.copy_(torch.rand(4, generator=gen) + 0.5)
            with torch.no_grad():
                bn.weight.copy_(torch.randn(4, generator=gen) * 0.5 + 1)
                bn.bias.copy_(torch.randn(4, generator=gen) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        r = self.bn2(self.c2(torch.relu(self.bn1(self.c1(h)))))
        return self.fc(self.pool(torch.relu(h + r)).flatten(1))


def _cnn_maxpool() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, 10),
    )


def _conv_acts() -> nn.Module:
    """Conv feature maps through LeakyReLU and GELU (CROWN's receptive-field windows apply)."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.LeakyReLU(0.05),
        nn.Conv2d(3, 3, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(3, 2, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 4),
    )


def _mlp(head: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(3)
    layers = [nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 5)]
    return nn.Sequential(*layers, *([head] if head is not None else []))


def make(name: str, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    builders = {
        "maxpool": MaxPools,
        "leaky": Leaky,
        "gelu": _gelu_mlp,
        "concat_pad": ConcatPad,
        "transpose_slice": TransposeSlice,
        "residual_bn": lambda: ResidualBN(gen),
        "cnn_maxpool": _cnn_maxpool,
        "conv_acts": _conv_acts,
        "softmax": lambda: _mlp(nn.Softmax(dim=1)),
    }
    return builders[name]().eval()


LAYER_MODELS = [
    "maxpool",
    "leaky",
    "gelu",
    "concat_pad",
    "transpose_slice",
    "residual_bn",
    "cnn_maxpool",
    "conv_acts",
]
# the new IR op(s) each model must contain (so a front end that silently dropped one fails)
EXPECTED_OPS = {
    "maxpool": {"gather", "reduce_max", "concat", "leaky_relu"},
    "leaky": {"leaky_relu"},
    "gelu": {"gelu"},
    "concat_pad": {"concat", "pad"},
    "transpose_slice": {"permute", "slice", "concat"},
    "residual_bn": {"gather", "reduce_max", "add"},
    "cnn_maxpool": {"gather", "reduce_max"},
    "conv_acts": {"leaky_relu", "gelu"},
}


export = export_onnx  # one exporter for the graph, bound and layer tests


def points(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((n,) + SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def onnx_nets(tmp_path_factory) -> dict[str, GraphNet]:
    root = tmp_path_factory.mktemp("layers_onnx")
    out = {}
    for name in LAYER_MODELS + ["softmax"]:
        path = str(root / f"{name}.onnx")
        export(make(name), path, fold=name != "residual_bn")  # folded BatchNorm: its own test
        out[name] = load_onnx(path)
    return out


# --------------------------------------------------------------------------------------------------
# (a) front ends reproduce the model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_MODELS)
def test_graphs_reproduce_the_model(name, onnx_nets):
    model = make(name)
    g = graph_from_module(model, SHAPE)
    net = onnx_nets[name]
    for graph in (g, net.ir):
        assert EXPECTED_OPS[name] <= {n.op for n in graph.nodes}, (name, {n.op for n in graph.nodes})
    x = points(6)
    with torch.no_grad():
        ref = model(x).double()
        torch.testing.assert_close(g.forward(x.double()), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(x.double()), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.ir.forward(x.double()), g.forward(x.double()), rtol=1e-5, atol=1e-5)
        assert g.forward(x).dtype == torch.float32  # evaluates in the input's dtype
    assert g.stripped is None and g.notes == [] and net.ir.stripped is None


def test_maxpool_windows_match_torch_on_awkward_geometries():
    """Padding, ceil mode (a last window starting in the padding is dropped), dilation, strides."""
    torch.manual_seed(0)
    x = torch.randn(3, 2, 9, 7, dtype=torch.float64)
    for k, s, p, d, ceil in [
        (2, 2, 0, 1, False),
        (3, 2, 1, 1, True),
        (3, 3, 1, 1, True),
        (2, 1, 1, 2, False),
        (3, 2, 1, 2, True),
        ((3, 2), (2, 1), (1, 0), 1, True),
        (4, 3, 2, 1, True),
    ]:
        pool = nn.MaxPool2d(k, s, p, dilation=d, ceil_mode=ceil)
        g = graph_from_module(nn.Sequential(pool), (2, 9, 7))
        torch.testing.assert_close(g.forward(x), pool(x), rtol=0, atol=0)
        lo, hi = x - 0.1, x + 0.2
        blo, bhi = ibp.ibp_bounds_graph(g, lo, hi)
        torch.testing.assert_close(blo, pool(lo), rtol=0, atol=0)  # IBP of a max pool is exact
        torch.testing.assert_close(bhi, pool(hi), rtol=0, atol=0)


def test_onnx_gelu_pattern_of_older_opsets_is_one_node(tmp_path):
    """Below opset 20 the exporter writes 0.5 x (1 + erf(x / c)) out; it becomes one gelu node keeping
    the stored float32 c, and gives the same bounds as the torch model."""
    model = make("gelu")
    path = str(tmp_path / "gelu17.onnx")
    export(model, path, opset=17)
    types = {n.op_type for n in onnx.load(path).graph.node}
    assert "Erf" in types and "Gelu" not in types
    g = graph_from_onnx(path)
    gelus = [n for n in g.nodes if n.op == "gelu"]
    assert len(gelus) == 2 and {n.op for n in g.nodes} <= {"input", "flatten", "linear", "gelu"}
    c = gelu_divisor(gelus[0])
    assert c == float(torch.tensor(math.sqrt(2.0), dtype=torch.float32)) and c != math.sqrt(2.0)
    x = points(4)
    with torch.no_grad():
        torch.testing.assert_close(g.forward(x.double()), model(x).double(), rtol=1e-5, atol=1e-5)
    y = torch.tensor([0, 1, 2, 3])
    for method in METHODS:
        a = margin_lower(model, x, y, eps=0.02, method=method, alpha_steps=3)
        b = margin_lower(GraphNet(g), x, y, eps=0.02, method=method, alpha_steps=3)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_batchnorm_folded_and_unfolded_give_the_same_bounds(tmp_path):
    model = make("residual_bn")
    nets = {}
    for fold in (True, False):
        path = str(tmp_path / f"bn{fold}.onnx")
        export(model, path, fold=fold)
        types = {n.op_type for n in onnx.load(path).graph.node}
        assert ("BatchNormalization" in types) != fold
        nets[fold] = load_onnx(path)
    x = points(2)
    y = torch.tensor([0, 3])
    for method in METHODS:
        ref = margin_lower(model, x, y, eps=0.01, method=method, alpha_steps=3)
        unfolded = margin_lower(nets[False], x, y, eps=0.01, method=method, alpha_steps=3)
        folded = margin_lower(nets[True], x, y, eps=0.01, method=method, alpha_steps=3)
        torch.testing.assert_close(unfolded, ref, rtol=1e-6, atol=1e-6)
        # folding multiplies weights in float32: a slightly different network, within float32 rounding
        torch.testing.assert_close(folded, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# relaxations against dense sampling
# --------------------------------------------------------------------------------------------------


def _intervals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random intervals of every width (1e-7 .. 30) around centres in [-9, 9], plus hand-picked ones at
    the kinks and inflection points."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, generator=g, dtype=torch.float64) * 3
    scale = torch.tensor([1e-7, 0.5, 4.0, 30.0], dtype=torch.float64)[torch.randint(0, 4, (n,), generator=g)]
    w = torch.rand(n, generator=g, dtype=torch.float64) * scale
    r2 = math.sqrt(2.0)
    special = torch.tensor(
        [
            [-r2 - 0.1, -r2 + 0.1],
            [r2 - 1e-3, r2 + 1e-3],
            [-r2, r2],
            [-0.76, -0.74],
            [-8.0, 8.0],
            [-40.0, -30.0],
            [30.0, 40.0],
            [-1e-9, 1e-9],
            [0.0, 0.0],
            [-3.0, -3.0],
            [0.0, 5.0],
            [-5.0, 0.0],
            [-2.0, 0.5],
            [-0.2, 6.0],
        ],
        dtype=torch.float64,
    )
    return torch.cat([c - w / 2, special[:, 0]]), torch.cat([c + w / 2, special[:, 1]])


def _dense(lb: torch.Tensor, ub: torch.Tensor, n: int = 3001) -> torch.Tensor:
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    return lb[:, None] + (ub - lb)[:, None] * t[None]


def _tol(X: torch.Tensor) -> torch.Tensor:
    """Rounding of the sampled points and of evaluating a line at them (not of the bound itself)."""
    return 1e-13 * (1 + X.abs())


@pytest.mark.parametrize("divisor", [None, float(torch.tensor(math.sqrt(2.0), dtype=torch.float32)), 0.7])
def test_gelu_relaxation_and_interval_are_sound(divisor):
    lb, ub = _intervals(3000, 0)
    node = Node("g", "gelu", ("x",), {"divisor": divisor})
    aL, bL, aU, bU = crown.gelu_relax(node, lb[None], ub[None], Ctx({}))
    X = _dense(lb, ub)
    fx = OPS["gelu"].forward(node, X)
    lo = aL[0][:, None] * X + bL[0][:, None]
    up = aU[0][:, None] * X + bU[0][:, None]
    assert (lo <= fx + _tol(X)).all(), float((lo - fx).max())
    assert (up >= fx - _tol(X)).all(), float((fx - up).max())
    il, iu = ibp.ibp_gelu(node, (lb, ub))
    assert (il[:, None] <= fx + _tol(X)).all() and (iu[:, None] >= fx - _tol(X)).all()
    # tight: at the midpoint (where the slope is chosen) the lines are never worse than IBP's constants
    # (slope 0 is a candidate), and on a convex piece the upper line is the chord (touches f at both ends)
    k = (ub - lb) > 1e-3
    mid = (lb + ub) / 2
    assert (aL[0] * mid + bL[0] >= il - 1e-9).all() and (aU[0] * mid + bU[0] <= iu + 1e-9).all()
    c = gelu_divisor(node)
    convex = (lb > -c) & (ub < c) & k
    assert convex.any()
    ends = torch.stack([lb, ub], 1)
    f_ends = OPS["gelu"].forward(node, ends)
    assert torch.allclose((aU[0][:, None] * ends + bU[0][:, None])[convex], f_ends[convex], atol=1e-9)


def test_gelu_relaxation_is_cached_per_interval():
    lb, ub = _intervals(50, 1)
    node = Node("g", "gelu", ("x",), {"divisor": None})
    ctx = Ctx({})
    first = crown.gelu_relax(node, lb, ub, ctx)
    assert crown.gelu_relax(node, lb, ub, ctx) is first
    other = crown.gelu_relax(node, lb.clone(), ub, ctx)  # another tensor: recomputed, same values
    assert other is not first and all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("slope", [0.01, 0.3, -0.5, 1.0, 1.7, 3.0])
def test_leaky_relu_relaxations_are_sound(slope):
    lb, ub = _intervals(2000, 2)
    node = Node("l", "leaky_relu", ("x",), {"negative_slope": slope})
    X = _dense(lb, ub, 1001)
    fx = F.leaky_relu(X, slope)

    def check(aL, bL, aU, bU):
        bl = 0.0 if bL is None else bL[..., None]
        bu = 0.0 if bU is None else bU[..., None]
        assert (aL[..., None] * X + bl <= fx + _tol(X)).all()
        assert (aU[..., None] * X + bu >= fx - _tol(X)).all()

    aL, bL, aU, bU = crown.leaky_relu_relax(node, lb, ub, Ctx({}))
    check(aL, bL, aU, bU)
    stable = (lb >= 0) | (ub <= 0)
    assert torch.equal(aL[stable], aU[stable])  # exact when stable
    il, iu = ibp.ibp_leaky_relu(node, (lb, ub))
    assert (il[:, None] <= fx + _tol(X)).all() and (iu[:, None] >= fx - _tol(X)).all()
    assert torch.allclose(il, fx.min(1).values, atol=1e-12) or slope < 0  # exact for a >= 0
    # alpha-CROWN: every alpha in [0, 1] (one spec row each) gives a valid relaxation
    alphas = torch.tensor([0.0, 0.25, 0.7, 1.0], dtype=torch.float64)
    alpha = alphas.view(1, 4, 1).expand(1, 4, lb.numel()).clone()
    ctx = Ctx({}, state={"alpha": {"l": alpha}})
    aL, bL, aU, bU = leaky_relu_alpha_relax(node, lb[None], ub[None], ctx)
    for s in range(4):
        pick = lambda t, s=s: None if t is None else (t[0, s] if t.ndim == 3 else t[0])  # noqa: E731
        check(pick(aL), pick(bL), pick(aU), pick(bU))


def test_max_pool_relaxation_is_sound():
    g = torch.Generator().manual_seed(4)
    B, k, C = 400, 6, 3
    centre = torch.randn(B, k, C, generator=g, dtype=torch.float64)
    width = torch.rand(B, k, C, generator=g, dtype=torch.float64) * torch.rand(B, 1, 1, generator=g) * 3
    width[:40] = 0.0  # degenerate intervals
    width[40:80, 1:] = 0.01  # one entry dominates or nearly
    lb, ub = centre - width, centre + width
    valid = torch.rand(k, C, generator=g) > 0.4
    valid[0] = True
    for v in (None, valid):
        node = Node("m", "reduce_max", ("w",), {"valid": v})
        aL, bL, aU, bU = crown.reduce_max_relax(node, lb, ub, Ctx({}))
        assert bL is None and bU.shape == (B, 1, C) and aU.shape == (B, k, C)
        u = torch.rand((3000, B, k, C), generator=g, dtype=torch.float64)
        u[:1000] = (u[:1000] > 0.5).double()  # corners
        Z = lb + (ub - lb) * u
        Zm = Z if v is None else Z.masked_fill(~v, -math.inf)
        y = Zm.amax(dim=2, keepdim=True)
        assert ((aL * Z).sum(2, keepdim=True) <= y).all()
        up = (aU * Z).sum(2, keepdim=True) + bU
        assert (up >= y - 1e-13).all()
        assert (aU >= 0).all() and (aU <= 1 + 1e-15).all() and (aU.sum(1) <= 1 + 1e-15).all()
        um = ub if v is None else ub.masked_fill(~v, -math.inf)
        assert (up <= um.amax(1, keepdim=True).unsqueeze(0) + 1e-13).all()  # never above the constant
        if v is not None:  # masked entries never get a coefficient
            assert (aL.masked_select(~v.expand(B, k, C)) == 0).all()
            assert (aU.masked_select(~v.expand(B, k, C)) == 0).all()
        lo_i, hi_i = ibp.RULES["reduce_max"](node, (lb, ub))
        assert (lo_i.unsqueeze(0) <= y + 1e-13).all() and (hi_i.unsqueeze(0) >= y - 1e-13).all()


# --------------------------------------------------------------------------------------------------
# (b) bounds contain sampled and attacked outputs; (c) orderings
# --------------------------------------------------------------------------------------------------


def _box(x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r1 = torch.rand(x.shape, generator=g) * 0.08
    r2 = torch.rand(x.shape, generator=g) * 0.08
    return (x - r1).clamp(0, 1).double(), (x + r2).clamp(0, 1).double()


def _project(z, x0, kind, eps, box):
    if kind == "box":
        return torch.minimum(torch.maximum(z, box[0]), box[1])
    if kind == "linf":
        return torch.minimum(torch.maximum(z, x0 - eps), x0 + eps).clamp(0, 1)
    delta = (z - x0).flatten(1)
    scale = (eps / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (x0 + (delta * scale[:, None]).view_as(z)).clamp(0, 1)


def _sample(x0, kind, eps, box, n, gen):
    if kind == "box":
        lo, hi = box
        u = torch.rand((n,) + tuple(x0.shape[1:]), generator=gen, dtype=torch.float64)
        u[: n // 4] = (u[: n // 4] > 0.5).double()
        return lo + (hi - lo) * u
    return sample_ball(x0, eps, kind, n, gen)


def _pgd_extremes(f, x0, kind, eps, box, k: int, steps: int = 20, starts: int = 3) -> torch.Tensor:
    """PGD that maximises and minimises each of the k outputs of f from random starts; all visited points."""
    gen = torch.Generator().manual_seed(7)
    n = 2 * k * starts
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat_interleave(k * starts)
    which = torch.arange(k).repeat_interleave(starts).repeat(2)
    z = _sample(x0, kind, eps, box, n, gen)
    step = 0.25 * (eps if kind != "box" else float((box[1] - box[0]).max()))
    visited = []
    for _ in range(steps):
        z.requires_grad_(True)
        out = f(z)
        (g,) = torch.autograd.grad((sign * out[torch.arange(n), which]).sum(), z)
        with torch.no_grad():
            if kind == "l2":
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (z.ndim - 1)))
            else:
                g = g.sign()
            z = _project(z + step * g, x0, kind, eps, box)
        visited.append(z.detach().clone())
    return torch.cat(visited)


def _bound_kwargs(kind, x, eps, box, b):
    if kind == "box":
        return {"x": None, "box": (box[0][b : b + 1], box[1][b : b + 1]), "norm": "linf"}
    return {"x": x[b : b + 1], "eps": eps, "norm": kind}


@pytest.mark.parametrize("kind", ["box", "linf", "l2"])
@pytest.mark.parametrize("name", LAYER_MODELS + ["softmax"])
def test_bounds_contain_sampled_and_attacked_outputs(name, kind):
    """Real-valued bounds (float_model="real") contain the float64 graph's outputs and margins; float32
    bounds (the default) contain the float32 torch model's logits, at >= 5000 sampled points and at PGD
    points maximising / minimising every output."""
    model = make(name)
    g = graph_from_module(model, SHAPE)
    x = points(2, seed=11)
    box = _box(x, 5)
    eps = EPS.get(kind, 0.0)
    with torch.no_grad():
        y = g.forward(x.double()).argmax(1)
    k = g.shapes()[g.output][0]
    gen = torch.Generator().manual_seed(0)
    for b in range(2):
        x0 = x[b : b + 1].double()
        bx = (box[0][b : b + 1], box[1][b : b + 1])
        pts = torch.cat(
            [_sample(x0, kind, eps, bx, N_POINTS, gen), _pgd_extremes(g.forward, x0, kind, eps, bx, k)]
        )
        assert len(pts) >= N_POINTS
        with torch.no_grad():
            out64 = g.forward(pts)
            out32 = model(pts.float()).double() if name != "softmax" else g.forward(pts.float()).double()
        true_margin = out64[:, y[b] : y[b] + 1] - out64
        others = torch.arange(k) != y[b]
        kw = _bound_kwargs(kind, x, eps, box, b)
        for method in METHODS:
            steps = {"alpha_steps": 4} if method == "alpha-crown" else {}
            lo, hi = logit_bounds(model, method=method, float_model="real", **kw, **steps)
            assert (out64 >= lo).all() and (out64 <= hi).all(), (
                method,
                float((lo - out64).max()),
                float((out64 - hi).max()),
            )
            lo32, hi32 = logit_bounds(model, method=method, **kw, **steps)
            assert (out32 >= lo32).all() and (out32 <= hi32).all(), method
            m = margin_lower(model, y=y[b : b + 1], method=method, float_model="real", **kw, **steps)
            assert (true_margin[:, others] >= m[0, others]).all(), (
                method,
                float((m[0, others] - true_margin[:, others]).max()),
            )


@pytest.mark.parametrize("name", LAYER_MODELS)
def test_alpha_crown_never_looser_and_crown_intervals_inside_ibp(name):
    model = make(name)
    x = points(3, seed=5)
    y = torch.tensor([0, 1, 2])
    for norm, eps in (("linf", 0.05), ("l2", 0.5)):
        c = margin_lower(model, x, y, eps=eps, norm=norm, method="crown")
        a = margin_lower(model, x, y, eps=eps, norm=norm, method="alpha-crown", alpha_steps=8)
        assert (a >= c).all()
        lo_c, hi_c = logit_bounds(model, x, eps=eps, norm=norm, method="crown")
        lo_a, hi_a = logit_bounds(model, x, eps=eps, norm=norm, method="alpha-crown", alpha_steps=4)
        # (upper and lower CROWN logit bounds come from one backward pass there: equal up to rounding)
        assert (lo_a >= lo_c - 1e-12).all() and (hi_a <= hi_c + 1e-12).all()
    # by construction: CROWN's intermediate intervals are intersected with IBP's (up to the rounding of
    # IBP's centre/radius form on an interval that is narrower but not representably so: 1e-12)
    g = graph_from_module(model, SHAPE)
    lo, hi = (x - 0.05).clamp(0, 1).double(), (x + 0.05).clamp(0, 1).double()
    inset, shapes = InputSet(lo, hi), g.shapes()
    b_ibp = crown.intermediate_bounds(g, inset, shapes, mode="ibp")
    b_crown = crown.intermediate_bounds(g, inset, shapes, mode="crown")
    for node in crown.activation_inputs(g):
        assert (b_crown[node][0] >= b_ibp[node][0] - 1e-12).all()
        assert (b_crown[node][1] <= b_ibp[node][1] + 1e-12).all()


def test_alpha_crown_optimises_leaky_relu_slopes():
    model = make("leaky")
    x = points(4, seed=2)
    y = torch.tensor([0, 1, 2, 3])
    c = margin_lower(model, x, y, eps=0.05, method="crown")
    a = margin_lower(model, x, y, eps=0.05, method="alpha-crown", alpha_steps=20)
    k = torch.isfinite(c)
    assert (a[k] - c[k]).max() > 1e-4


def test_maxpool_refines_its_source_once_not_every_window():
    g = graph_from_module(make("maxpool"), SHAPE)
    targets = crown.refine_targets(g)
    needs = crown.activation_inputs(g)
    windows = [n.name for n in g.nodes if n.op == "gather"]
    assert windows and all(w in needs and w not in targets for w in windows)
    src = {g.node(w).inputs[0]: g.node(g.node(w).inputs[0]).op for w in windows}
    # a pool straight after a conv tightens the conv; after an activation, IBP of the activation is kept
    assert {op for op in src.values()} == {"conv2d", "relu", "leaky_relu"}
    for name, op in src.items():
        assert (name in targets) == (op == "conv2d")


def test_windows_equal_dense_coefficients_for_leaky_relu_and_gelu():
    g = graph_from_module(make("conv_acts"), SHAPE)
    x = points(2, seed=3).double()
    inset, shapes = InputSet((x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)), g.shapes()
    with_windows = crown.intermediate_bounds(g, inset, shapes, mode="crown", use_windows=True)
    dense = crown.intermediate_bounds(g, inset, shapes, mode="crown", use_windows=False)
    assert crown.crown_window.plan(g, "_4", Ctx(shapes)) is not None  # windows cross GELU and LeakyReLU
    for node in crown.activation_inputs(g):
        torch.testing.assert_close(with_windows[node], dense[node], rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# (d) the torch model and its ONNX export give the same bounds
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYER_MODELS + ["softmax"])
def test_torch_and_onnx_give_the_same_bounds(name, onnx_nets):
    model, net = make(name), onnx_nets[name]
    x = points(2, seed=9)
    y = torch.tensor([1, 2])
    for norm in ("linf", "l2"):
        for method in METHODS:
            steps = {"alpha_steps": 3} if method == "alpha-crown" else {}
            a = margin_lower(model, x, y, eps=EPS[norm], norm=norm, method=method, **steps)
            b = margin_lower(net, x, y, eps=EPS[norm], norm=norm, method=method, **steps)
            # the exported graph splits some ops differently (e.g. Transpose/Slice/Gather nodes), so the
            # float32 deployment margin, which follows each affine node's fan-in, may differ in the 6th digit
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            la, ha = logit_bounds(model, x, eps=EPS[norm], norm=norm, method=method, **steps)
            lb_, hb = logit_bounds(net, x, eps=EPS[norm], norm=norm, method=method, **steps)
            torch.testing.assert_close(la, lb_, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(ha, hb, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# (e) unsupported ops name the node, its type and the supported list
# --------------------------------------------------------------------------------------------------


class _Up(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(2 * 12 * 12, 3)

    def forward(self, x):
        return self.fc(self.up(self.conv(x)).flatten(1))


def _fx_error(model: nn.Module) -> str:
    with pytest.raises(RobustCertError) as info:
        graph_from_module(model.eval(), SHAPE)
    return str(info.value)


def test_unsupported_ops_name_node_type_and_supported_list(tmp_path):
    msg = _fx_error(_Up())
    assert "'up'" in msg and "nn.Upsample" in msg and "supported ops" in msg and "nn.MaxPool2d" in msg
    assert "gelu" in msg and "leaky_relu" in msg  # the IR op list too
    path = str(tmp_path / "up.onnx")
    export(_Up().eval(), path)
    with pytest.raises(RobustCertError) as info:
        load_onnx(path)
    msg = str(info.value)
    assert "ONNX Resize" in msg and "/up/Resize" in msg and "supported ops" in msg and "MaxPool" in msg


def test_layers_outside_what_is_supported_are_refused_with_reasons(tmp_path):
    class SoftmaxInside(nn.Module):
        def forward(self, x):
            return torch.softmax(x.flatten(1), dim=1) * 2.0

    class SoftmaxOverBatch(nn.Module):
        def forward(self, x):
            return torch.softmax(x.flatten(1), dim=0)

    class TanhGelu(nn.Module):
        def forward(self, x):
            return F.gelu(x.flatten(1), approximate="tanh")

    class CatBatch(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], dim=0).flatten(1)

    class PadReflect(nn.Module):
        def forward(self, x):
            return F.pad(x, (1, 1, 1, 1), mode="reflect").flatten(1)

    class PermuteBatch(nn.Module):
        def forward(self, x):
            return x.flatten(1).permute(1, 0)

    cases = [
        (SoftmaxInside(), "only as the last op"),
        (SoftmaxOverBatch(), "classes"),
        (TanhGelu(), "approximate='tanh'"),
        (CatBatch(), "batch"),
        (PadReflect(), "mode='reflect'"),
        (PermuteBatch(), "batch"),
    ]
    for model, why in cases:
        msg = _fx_error(model)
        assert why in msg and "supported ops" in msg, (type(model).__name__, msg)
    path = str(tmp_path / "inside.onnx")
    export(SoftmaxInside().eval(), path)
    with pytest.raises(RobustCertError, match="only as the last op"):
        load_onnx(path)


def test_onnx_erf_outside_the_gelu_pattern_is_refused(tmp_path):
    class Erf(nn.Module):
        def forward(self, x):
            return torch.erf(x.flatten(1)) * 0.5

    path = str(tmp_path / "erf.onnx")
    export(Erf().eval(), path)
    with pytest.raises(RobustCertError) as info:
        load_onnx(path)
    assert "ONNX Erf" in str(info.value) and "GELU pattern" in str(info.value)


# --------------------------------------------------------------------------------------------------
# (f) Softmax / LogSoftmax as the last op: stripped with a note, same verdicts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["softmax", "log_softmax"])
def test_softmax_last_is_stripped_with_a_note_and_keeps_the_verdicts(head, tmp_path):
    plain = _mlp()
    layer = nn.Softmax(dim=1) if head == "softmax" else nn.LogSoftmax(dim=-1)
    headed = _mlp(layer).eval()
    g = graph_from_module(headed, SHAPE)
    assert g.stripped == head and len(g.notes) == 1 and "same argmax" in g.notes[0]
    assert ("LogSoftmax" if head == "log_softmax" else "Softmax") in g.notes[0]
    path = str(tmp_path / "head.onnx")
    export(headed, path)
    net = load_onnx(path)
    assert net.ir.stripped == head and len(net.ir.notes) == 1
    x = points(8, seed=4)
    with torch.no_grad():
        probs = headed(x)
        torch.testing.assert_close(g.model_forward(x.double()).float(), probs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            net(x.double()).float(), probs, rtol=1e-5, atol=1e-6
        )  # GraphNet re-applies it
        torch.testing.assert_close(g.forward(x.double()).float(), plain(x), rtol=1e-5, atol=1e-5)
        y = plain(x).argmax(1)
        assert torch.equal(y, probs.argmax(1))
    for method in METHODS:
        for eps in (0.0, 0.01, 0.05):
            ref = margin_lower(plain, x, y, eps=eps, method=method, alpha_steps=3)
            for m in (headed, net):
                got = margin_lower(m, x, y, eps=eps, method=method, alpha_steps=3)
                torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
                assert torch.equal(is_verified(got), is_verified(ref))

    # the functional and method forms too; a GraphNet with a stripped head inlined as the last module
    class Fn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp()

        def forward(self, x):
            return self.body(x).log_softmax(-1) if head == "log_softmax" else F.softmax(self.body(x), dim=-1)

    assert graph_from_module(Fn().eval(), SHAPE).stripped == head
    outer = graph_from_module(nn.Sequential(net).eval(), SHAPE)
    assert outer.stripped == head and len(outer.notes) == 1
    with pytest.raises(RobustCertError, match="only as the last op"):
        graph_from_module(nn.Sequential(net, nn.ReLU()).eval(), SHAPE)


# --------------------------------------------------------------------------------------------------
# certification through the public API, and the differentiable training paths
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn_maxpool", "residual_bn"])
def test_margin_lower_on_a_maxpool_cnn_and_a_residual_bn_block(name):
    model = make(name)
    x = points(3, seed=6)
    with torch.no_grad():
        y = model(x).argmax(1)
    g = graph_from_module(model, SHAPE)
    for method in METHODS:
        zero = margin_lower(model, x, y, eps=0.0, method=method, alpha_steps=3, float_model="real")
        with torch.no_grad():
            out = g.forward(x.double())
        true = out.gather(1, y[:, None]) - out
        k = torch.isfinite(zero)
        assert (zero[k] <= true[k]).all() and (zero[k] >= true[k] - 1e-6).all()  # eps = 0: the margin
        assert is_verified(zero).all()
        m = margin_lower(model, x, y, eps=0.01, method=method, alpha_steps=5)
        for b in range(3):
            x0 = x[b : b + 1].double()
            pts = torch.cat(
                [
                    sample_ball(x0, 0.01, "linf", 2000, torch.Generator().manual_seed(b)),
                    _pgd_extremes(g.forward, x0, "linf", 0.01, None, out.shape[1], steps=10, starts=2),
                ]
            )
            with torch.no_grad():
                o = g.forward(pts)
            margins = o[:, y[b] : y[b] + 1] - o
            others = torch.arange(o.shape[1]) != y[b]
            assert (margins[:, others] >= m[b, others]).all(), method
    assert (
        margin_lower(model, x, y, eps=0.01, method="alpha-crown", alpha_steps=5)
        >= margin_lower(model, x, y, eps=0.01, method="crown")
    ).all()


def test_training_paths_are_differentiable_through_the_new_layers():
    for name in ("maxpool", "gelu", "concat_pad", "transpose_slice", "leaky"):
        model = make(name).train()
        x = points(2, seed=8)
        lo, hi = (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1)
        out_lo, out_hi = ibp_bounds(model, lo, hi)
        assert out_lo.dtype == torch.float32 and out_lo.requires_grad
        m = crown_margin_lower(model, lo, hi, torch.tensor([0, 1]))
        (F.cross_entropy(-m, torch.tensor([0, 1])) + (out_hi - out_lo).sum()).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(gr is not None for gr in grads) and sum(float(gr.abs().sum()) for gr in grads) > 0, name
        with torch.no_grad():
            ref = model.eval()(x)
        assert ((ref >= out_lo - 1e-5) & (ref <= out_hi + 1e-5)).all()


def test_a_hand_made_gelu_with_a_bad_divisor_is_refused():
    from robustcert.graph import Graph

    nodes = [
        Node("x", "input", ()),
        Node("f", "flatten", ("x",)),
        Node("l", "linear", ("f",), {"weight": torch.ones(3, 64, dtype=torch.float64), "bias": None}),
        Node("g", "gelu", ("l",), {"divisor": -1.0}),
    ]
    net = GraphNet(Graph(nodes, "g", SHAPE))
    with pytest.raises(RobustCertError, match="divisor"):
        margin_lower(net, points(1), torch.tensor([0]), eps=0.01, method="crown")
