"""The input domain: InputDomain's parsing, text form, coercion, clipping and data check; the soundness of
bounds over ball ∩ domain (per channel, half-open sides included) and that the domain can only tighten
them; and ``robustcert.certify`` giving the CLI's rows for the same model, examples and seed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustcert
from robustcert.bounds import margin_lower
from robustcert.cli import main
from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.models.normalize import Normalize
from robustcert.rows import BoundRow, SmoothingRow
from robustcert.runs import read_rows

PER_CHANNEL = InputDomain((-1.0, 0.0, -2.5), (1.0, 255.0, 0.5))
HALF_OPEN = InputDomain((-math.inf, 0.0, -math.inf), (1.0, math.inf, math.inf))
# Normalisation that maps PER_CHANNEL to about [-1, 1] per channel, so no channel saturates the net.
MEAN, STD = (0.0, 127.5, -1.0), (1.0, 127.5, 1.5)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------------
# InputDomain
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, lo, hi",
    [
        ("0,1", (0.0,), (1.0,)),
        ("-1,1", (-1.0,), (1.0,)),
        ("0,16", (0.0,), (16.0,)),
        ("-1,1;0,255;-2.5,0.5", (-1.0, 0.0, -2.5), (1.0, 255.0, 0.5)),
        ("-inf,1;0,inf;-inf,inf", (-math.inf, 0.0, -math.inf), (1.0, math.inf, math.inf)),
        ("3,3", (3.0,), (3.0,)),  # a point is a (degenerate) box
    ],
)
def test_parse_and_text_round_trip(text: str, lo: tuple, hi: tuple) -> None:
    d = InputDomain.parse(text)
    assert (d.lo, d.hi) == (lo, hi)
    assert d.text() == text
    assert InputDomain.parse(d.text()) == d
    assert InputDomain.coerce(d.text()) == d


def test_parse_accepts_spaces_and_case() -> None:
    assert InputDomain.parse(" -1 , 1 ; 0,  255 ") == InputDomain((-1.0, 0.0), (1.0, 255.0))
    assert InputDomain.parse("-INF,Inf") == InputDomain.unbounded()
    assert InputDomain.unbounded().text() == "-inf,inf"
    assert InputDomain.unit().text() == "0,1" and InputDomain.unit().is_unit
    assert not PER_CHANNEL.is_unit


@pytest.mark.parametrize("value", [0.1234567, 1 / 3, 2.8214843, 255.00001, 1e-9 + 1])
def test_text_round_trip_is_exact_for_any_float(value: float) -> None:
    d = InputDomain((-value,), (value,))
    assert InputDomain.parse(d.text()) == d


def test_config_input_range_keeps_full_precision() -> None:
    from robustcert.evaluation.config import model_spec, validate_config

    config = validate_config({
        "data": {"dataset": "digits"},
        "model": [{"name": "m", "path": "net.onnx", "input_range": [-0.4242129, 2.8214843]}],
        "threat": {"linf": {"eps": [0.1]}},
        "methods": {"crown": {}},
    })
    domain = model_spec(config.models[0], "net.onnx").domain
    assert domain == InputDomain((-0.4242129,), (2.8214843,))
    domain.check_data(torch.tensor([-0.4242129, 2.8214843], dtype=torch.float64).view(2, 1, 1, 1))


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, InputDomain((0.0,), (1.0,))),
        ((0, 16), InputDomain((0.0,), (16.0,))),
        ([-1, 1], InputDomain((-1.0,), (1.0,))),
        ([[-1, 1], [0, 255], [-2.5, 0.5]], PER_CHANNEL),
        (((-1.0, 1.0),), InputDomain((-1.0,), (1.0,))),
        ("-1,1;0,255;-2.5,0.5", PER_CHANNEL),
        ([[-math.inf, 1], [0, math.inf], [-math.inf, math.inf]], HALF_OPEN),
        (PER_CHANNEL, PER_CHANNEL),
    ],
)
def test_coerce(value: object, expected: InputDomain) -> None:
    d = InputDomain.coerce(value)
    assert d == expected
    assert all(isinstance(v, float) for v in (*d.lo, *d.hi))


@pytest.mark.parametrize(
    "text, needle",
    [
        ("1,0", "empty"),
        ("0,1;2,-2", "empty"),
        ("inf,inf", "empty"),
        ("-inf,-inf", "empty"),
        ("nan,1", "NaN"),
        ("0,nan", "NaN"),
        ("", "LO,HI"),
        ("0", "LO,HI"),
        ("0,1,2", "LO,HI"),
        ("0,1;", "LO,HI"),
        ("0;1", "LO,HI"),
        ("a,b", "not a number"),
        ("0,1x", "not a number"),
    ],
)
def test_parse_refuses_empty_nan_and_malformed(text: str, needle: str) -> None:
    with pytest.raises(RobustCertError) as info:
        InputDomain.parse(text)
    message = str(info.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize(
    "value",
    [(1, 0), [0, math.nan], [[0, 1], [3, 2]], [], [0, 1, 2], [[0, 1], [2]], 5, {"lo": 0, "hi": 1}, [["a", 1]]],
)
def test_coerce_refuses_bad_values(value: object) -> None:
    with pytest.raises(RobustCertError):
        InputDomain.coerce(value)


def test_constructor_refuses_mismatched_or_empty_bounds() -> None:
    with pytest.raises(RobustCertError, match="as many lower as upper"):
        InputDomain((0.0, 0.0), (1.0,))
    with pytest.raises(RobustCertError, match="as many lower as upper"):
        InputDomain((), ())
    with pytest.raises(RobustCertError, match="channel 1"):
        InputDomain((0.0, 2.0), (1.0, 1.0))


def test_check_channels() -> None:
    PER_CHANNEL.check_channels((3, 4, 4))
    InputDomain.unit().check_channels((3, 4, 4))  # one range applies to every channel
    with pytest.raises(RobustCertError) as info:
        PER_CHANNEL.check_channels((1, 8, 8))
    assert "3 channel ranges" in str(info.value) and "1 channels" in str(info.value)


def test_check_data_names_the_channel_and_both_ranges() -> None:
    x = torch.zeros(5, 3, 2, 2)
    x[:, 1] = 200.0
    x[:, 2] = -0.5
    PER_CHANNEL.check_data(x)  # inside
    x[3, 2, 1, 0] = 3.0  # channel 2 of example 3 leaves [-2.5, 0.5]
    with pytest.raises(RobustCertError) as info:
        PER_CHANNEL.check_data(x, "the data (mine/test)")
    message = str(info.value)
    assert message.startswith("the input domain excludes the data (mine/test)")
    assert "channel 2" in message and "example 3" in message
    assert "[-0.5, 3]" in message  # the data's range over that channel
    assert "[-2.5, 0.5]" in message  # the domain's range of that channel
    assert "\n" not in message
    # a single range for every channel, and the lower side
    y = torch.full((2, 3, 2, 2), 0.5)
    y[1, 1, 0, 0] = -0.25
    with pytest.raises(RobustCertError) as info:
        InputDomain.unit().check_data(y)
    assert "channel 1" in str(info.value) and "example 1" in str(info.value)
    assert "[-0.25, 0.5]" in str(info.value) and "[0, 1]" in str(info.value)
    # bounds are inclusive, and infinite sides admit anything finite
    PER_CHANNEL.check_data(torch.tensor([[-1.0, 0.0, -2.5], [1.0, 255.0, 0.5]]).view(2, 3, 1, 1))
    HALF_OPEN.check_data(torch.tensor([-1e30, 1e30, 1e30]).view(1, 3, 1, 1))
    with pytest.raises(RobustCertError, match="channel 0"):
        HALF_OPEN.check_data(torch.tensor([1.5, 1.0, 0.0]).view(1, 3, 1, 1))
    # flat inputs [B, features]: the features are the channels
    with pytest.raises(RobustCertError, match="channel 0"):
        InputDomain((0.0, -1.0), (1.0, 0.0)).check_data(torch.tensor([[0.5, -0.5], [2.0, -0.5]]))


def test_clip_is_the_projection_onto_the_box() -> None:
    gen = torch.Generator().manual_seed(0)
    for dom in (PER_CHANNEL, HALF_OPEN, InputDomain.unit()):
        z = torch.randn(64, 3, 3, 3, generator=gen, dtype=torch.float64) * 300
        p = dom.clip(z)
        assert dom.contains(p)
        assert torch.equal(dom.clip(p), p)  # idempotent
        lo, hi = dom.tensors(z)
        assert torch.equal(p, torch.where(z < lo, lo.expand_as(z), torch.where(z > hi, hi.expand_as(z), z)))
        # no point of the domain is closer to z, in L2 or L-inf
        for _ in range(20):
            q = dom.clip(torch.randn(64, 3, 3, 3, generator=gen, dtype=torch.float64) * 300)
            assert bool(((z - p).flatten(1).norm(dim=1) <= (z - q).flatten(1).norm(dim=1) + 1e-9).all())
            assert bool(((z - p).flatten(1).abs().amax(1) <= (z - q).flatten(1).abs().amax(1) + 1e-9).all())
        inside = dom.clip(torch.rand(8, 3, 3, 3, generator=gen, dtype=torch.float64))
        assert torch.equal(dom.clip(inside), inside)
    # dtype and device follow x
    x32 = torch.full((1, 3, 1, 1), 1000.0)
    assert PER_CHANNEL.clip(x32).dtype == torch.float32
    assert PER_CHANNEL.clip(x32).flatten().tolist() == [1.0, 255.0, 0.5]


# --------------------------------------------------------------------------------------------------
# bounds over ball ∩ domain
# --------------------------------------------------------------------------------------------------


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize(MEAN, STD), nn.Flatten(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        Normalize(MEAN, STD), nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2, padding=1),
        nn.ReLU(), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4),
    ).eval()


NETS = {"mlp": _mlp, "cnn": _cnn}


def _finite_box(dom: InputDomain) -> tuple[torch.Tensor, torch.Tensor]:
    """The domain with each infinite side replaced by one 4 away from the other side (or ±2)."""
    pairs = zip(dom.lo, dom.hi, strict=True)
    lo = [a if math.isfinite(a) else (b - 4.0 if math.isfinite(b) else -2.0) for a, b in pairs]
    hi = [b if math.isfinite(b) else a + 4.0 for a, b in zip(lo, dom.hi, strict=True)]
    return torch.tensor(lo).view(1, 3, 1, 1), torch.tensor(hi).view(1, 3, 1, 1)


def _examples(dom: InputDomain, seed: int = 1) -> torch.Tensor:
    """Six float32 inputs of the domain: three inside, one on every lower face, one on every upper face,
    and one with channel 0 on its lower face and channel 2 on its upper face."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = _finite_box(dom)
    x = lo + (hi - lo) * torch.rand(6, 3, 4, 4, generator=gen)
    x[3] = lo[0].expand(3, 4, 4)
    x[4] = hi[0].expand(3, 4, 4)
    x[5, 0], x[5, 2] = lo[0, 0], hi[0, 2]
    assert dom.contains(x)
    return x


def _inside(points: torch.Tensor, x: torch.Tensor, eps: float, norm: str, dom: InputDomain) -> torch.Tensor:
    """[N] bool: float64 membership of each point in B(x, eps) ∩ domain."""
    d = (points.double() - x.double()).flatten(1)
    ball = d.abs().amax(1) <= eps if norm == "linf" else d.norm(dim=1) <= eps
    lo, hi = dom.tensors(points.double())
    return ball & ((points.double() >= lo) & (points.double() <= hi)).flatten(1).all(1)


def _inward_box(x64: torch.Tensor, eps: float, dom: InputDomain) -> tuple[torch.Tensor, torch.Tensor]:
    """The float32 box [lo, hi] inside B∞(x, eps) ∩ domain, its sides rounded inwards (float64 values)."""
    lo, hi = dom.clip(x64 - eps), dom.clip(x64 + eps)
    lo32, hi32 = lo.float(), hi.float()
    lo32 = torch.where(lo32.double() < lo, torch.nextafter(lo32, torch.tensor(math.inf)), lo32)
    hi32 = torch.where(hi32.double() > hi, torch.nextafter(hi32, torch.tensor(-math.inf)), hi32)
    return lo32.double(), hi32.double()


def _samples(x: torch.Tensor, eps: float, norm: str, dom: InputDomain, gen: torch.Generator) -> torch.Tensor:
    """Float32 points of B(x, eps) ∩ domain for one input x [C, H, W]: uniform ones, vertices and points on
    the ball's boundary, clipped onto the domain's faces (clipping never leaves the ball: x is in the box)."""
    n = 160
    x64 = x.double().unsqueeze(0)
    shape = (n, *x.shape)
    if norm == "linf":
        lo, hi = _inward_box(x64, eps, dom)
        uniform = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64)
        corners = torch.where(torch.rand(shape, generator=gen) < 0.5, lo, hi)
        beyond = x64 + eps * (2 * torch.rand(shape, generator=gen, dtype=torch.float64) - 1).mul(1.5).clamp(-1, 1)
        points = torch.maximum(torch.minimum(torch.cat([uniform, corners, beyond]), hi), lo)
    else:
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        sparse = g * (torch.rand(shape, generator=gen) < 0.1)
        dirs = []
        for d in (g, sparse):
            unit = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            dirs += [unit, unit * torch.rand(n, 1, 1, 1, generator=gen, dtype=torch.float64)]
        points = dom.clip(x64 + eps * (1 - 1e-4) * torch.cat(dirs))
    points = points.float()
    keep = _inside(points, x, eps, norm, dom)
    assert int(keep.sum()) >= 0.9 * len(points)
    return points[keep]


def _pgd_points(net: nn.Module, x: torch.Tensor, y: int, eps: float, norm: str, dom: InputDomain,
                gen: torch.Generator) -> torch.Tensor:
    """Points of B(x, eps) ∩ domain found by a small projected gradient descent on each margin f_y - f_j."""
    found = []
    for j in range(4):
        if j == y:
            continue
        adv = (x.unsqueeze(0) + 0.5 * eps * torch.randn((4, *x.shape), generator=gen).sign()).clone()
        for _ in range(15):
            adv = _project(adv, x, eps, norm, dom).requires_grad_(True)
            out = net(adv)
            (grad,) = torch.autograd.grad((out[:, y] - out[:, j]).sum(), adv)
            with torch.no_grad():
                if norm == "linf":
                    adv = adv - 0.25 * eps * grad.sign()
                else:
                    adv = adv - 0.5 * eps * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        found.append(_project(adv.detach(), x, eps, norm, dom))
    points = torch.cat(found)
    return points[_inside(points, x, eps, norm, dom)]


def _project(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, dom: InputDomain) -> torch.Tensor:
    if norm == "linf":
        lo, hi = _inward_box(x.double().unsqueeze(0), eps, dom)
        return torch.maximum(torch.minimum(adv, hi.float()), lo.float())
    d = adv - x
    scale = (eps * (1 - 1e-4) / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
    return dom.clip(x + d * scale)


def _true_min_margins(net: nn.Module, points: torch.Tensor, y: int) -> torch.Tensor:
    with torch.no_grad():
        out = net(points)
    return (out[:, y : y + 1] - out).amin(0)  # [K]: min over the points of f_y - f_j


EPS = {"linf": 0.3, "l2": 1.5}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_margin_bounds_hold_on_ball_and_domain(arch: str, method: str, norm: str) -> None:
    net = NETS[arch](seed=3)
    x = _examples(PER_CHANNEL)
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = EPS[norm]
    options = {"alpha_steps": 10} if method == "alpha-crown" else {}
    lb = margin_lower(net, x, y, eps=eps, norm=norm, method=method, domain=PER_CHANNEL, **options)
    assert lb.shape == (6, 4) and bool(torch.isfinite(lb.scatter(1, y.view(-1, 1), 0.0)).all())
    gen = torch.Generator().manual_seed(7)
    for b in range(len(x)):
        points = torch.cat([_samples(x[b], eps, norm, PER_CHANNEL, gen),
                            _pgd_points(net, x[b], int(y[b]), eps, norm, PER_CHANNEL, gen)])
        true = _true_min_margins(net, points, int(y[b]))
        others = [j for j in range(4) if j != int(y[b])]
        assert bool((lb[b, others] <= true[others].double()).all()), (b, lb[b], true)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bounds_hold_with_half_open_domain(norm: str) -> None:
    net = _cnn(seed=4)
    x = _examples(HALF_OPEN, seed=2)
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = EPS[norm]
    gen = torch.Generator().manual_seed(8)
    for method in ("ibp", "crown"):
        lb = margin_lower(net, x, y, eps=eps, norm=norm, method=method, domain=HALF_OPEN)
        for b in range(len(x)):
            points = torch.cat([_samples(x[b], eps, norm, HALF_OPEN, gen),
                                _pgd_points(net, x[b], int(y[b]), eps, norm, HALF_OPEN, gen)])
            true = _true_min_margins(net, points, int(y[b]))
            others = [j for j in range(4) if j != int(y[b])]
            assert bool((lb[b, others] <= true[others].double()).all()), (method, b, lb[b], true)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_the_domain_can_only_tighten_the_bounds(arch: str, norm: str) -> None:
    """Clipping the ball to the domain shrinks the input set: the bounds with the domain are never below
    those over the whole ball (InputDomain.unbounded()), and they are above them for the inputs on the
    domain's faces."""
    net = NETS[arch](seed=5)
    x = _examples(PER_CHANNEL)
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = EPS[norm]
    others = torch.ones(6, 4, dtype=torch.bool).scatter(1, y.view(-1, 1), False)
    for method in ("ibp", "crown"):
        with_domain = margin_lower(net, x, y, eps=eps, norm=norm, method=method, domain=PER_CHANNEL)
        without = margin_lower(net, x, y, eps=eps, norm=norm, method=method, domain=InputDomain.unbounded())
        assert bool((with_domain[others] >= without[others]).all()), (method, with_domain - without)
        gain = (with_domain - without)[others].view(6, 3)
        assert bool((gain[3:] > 0).any()), (method, gain)  # the inputs on faces gain


def _hand_net() -> nn.Module:
    """Inputs (a, b) [B, 2]; margin f_0 - f_1 = 0.5 - 10 relu(-a) + 0 * relu(b): positive wherever a >= 0,
    negative as soon as a < -0.05. Its margin goes negative only outside the domain a ∈ [0, 1]."""
    hidden = nn.Linear(2, 3)
    out = nn.Linear(3, 2)
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
        hidden.bias.zero_()
        out.weight.copy_(torch.tensor([[-10.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
        out.bias.copy_(torch.tensor([0.5, 0.0]))
    return nn.Sequential(hidden, nn.ReLU(), out).eval()


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_a_net_unsafe_only_outside_the_domain_is_certified_with_it(method: str, norm: str) -> None:
    net = _hand_net()
    dom = InputDomain((0.0, -5.0), (1.0, 5.0))
    x = torch.tensor([[0.0, 0.0], [0.0, 5.0], [0.02, -5.0]])
    y = torch.zeros(3, dtype=torch.long)
    eps = 0.2
    # ground truth: the margin is 0.5 on the whole domain, and negative just outside it
    with torch.no_grad():
        near = dom.clip((x + eps * torch.randn(100, 1, 2).clamp(-1, 1)).view(-1, 2))
        assert torch.allclose(net(near).diff(dim=1), torch.tensor(-0.5))
        assert float(net(torch.tensor([[-0.1, 0.0]])).diff(dim=1)) > 0
    with_domain = margin_lower(net, x, y, eps=eps, norm=norm, method=method, domain=dom)[:, 1]
    without = margin_lower(net, x, y, eps=eps, norm=norm, method=method, domain=InputDomain.unbounded())[:, 1]
    assert bool((with_domain > 0).all()) and bool((with_domain <= 0.5).all())
    assert bool((without <= 0).all())
    # and through robustcert.certify: certified with the domain, not without it
    rows = robustcert.certify(net, x, y, method, domain=[(0, 1), (-5, 5)], eps=[eps], norm=norm)
    assert [r.certified for r in rows] == [True, True, True] and {r.domain for r in rows} == {"0,1;-5,5"}
    rows = robustcert.certify(net, x, y, method, domain=InputDomain.unbounded(), eps=[eps], norm=norm)
    assert [r.certified for r in rows] == [False, False, False]


def test_inputs_outside_the_domain_are_refused() -> None:
    net = _mlp(seed=0)
    x = _examples(PER_CHANNEL)
    y = torch.zeros(6, dtype=torch.long)
    x[2, 1, 0, 0] = 256.0
    with pytest.raises(RobustCertError) as info:
        margin_lower(net, x, y, eps=0.1, domain=PER_CHANNEL)
    assert "excludes" in str(info.value) and "channel 1" in str(info.value) and "[0, 255]" in str(info.value)
    with pytest.raises(RobustCertError, match="excludes"):  # the default domain is [0, 1]
        margin_lower(net, _examples(PER_CHANNEL), y, eps=0.1)
    with pytest.raises(RobustCertError, match="channel ranges"):
        margin_lower(net, _examples(PER_CHANNEL), y, eps=0.1, domain=[(0, 255), (0, 255)])


# --------------------------------------------------------------------------------------------------
# robustcert.certify == the CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def per_channel_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-channel CNN with Normalize in front (module:function) and an npz of 3×4×4 inputs in
    PER_CHANNEL, with labels mostly the net's own predictions (so some certificates hold)."""
    root = tmp_path_factory.mktemp("api_vs_cli")
    net = _cnn(seed=11)
    torch.save(net.state_dict(), root / "weights.pt")
    gen = torch.Generator().manual_seed(3)
    lo, hi = _finite_box(PER_CHANNEL)
    x = lo + (hi - lo) * torch.rand(10, 3, 4, 4, generator=gen)
    x[0] = lo[0].expand(3, 4, 4)
    x[1] = hi[0].expand(3, 4, 4)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[7] = (y[7] + 1) % 4  # a wrong label
    np.savez(root / "pc.npz", x_test=x.numpy(), y_test=y.numpy().astype(np.int64), num_classes=4)
    (root / "api_cli_nets.py").write_text(
        "import torch\n"
        "from pathlib import Path\n"
        "from torch import nn\n"
        "from robustcert.models.normalize import Normalize\n"
        "def build():\n"
        f"    net = nn.Sequential(Normalize({MEAN!r}, {STD!r}), nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),\n"
        "        nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(),\n"
        "        nn.Linear(12, 4))\n"
        "    net.load_state_dict(torch.load(Path(__file__).parent / 'weights.pt', weights_only=True))\n"
        "    return net.eval()\n"
    )
    sys.path.insert(0, str(root))
    sys.modules.pop("api_cli_nets", None)
    yield {"root": root, "net": net, "x": x, "y": y}
    sys.path.remove(str(root))


def _rows_without_time(rows: list) -> list[dict]:
    out = [r.to_json() for r in rows]
    for r in out:
        r.pop("seconds")
    return out


@pytest.mark.parametrize(
    "method, cli_args, params, row_type",
    [
        ("crown", ["--eps", "0.05,0.3", "--batch", "4"], {"eps": [0.05, 0.3], "batch": 4}, BoundRow),
        ("crown", ["--eps", "0.5", "--norm", "l2"], {"eps": [0.5], "norm": "l2"}, BoundRow),
        ("smoothing", ["--sigma", "0.5", "--n0", "20", "--n", "200", "--alpha", "0.01", "--batch", "100"],
         {"sigma": 0.5, "n0": 20, "n": 200, "alpha": 0.01, "batch": 100}, SmoothingRow),
    ],
)
def test_python_certify_gives_the_cli_rows(per_channel_setup: dict, method: str, cli_args: list[str],
                                           params: dict, row_type: type, tmp_path: Path) -> None:
    s = per_channel_setup
    out = tmp_path / "cli"
    assert main(["certify", method, "--model", "api_cli_nets:build", "--dataset", f"npz:{s['root'] / 'pc.npz'}",
                 "--input-range", "-1,1;0,255;-2.5,0.5", "--limit", "8", "--seed", "5", *cli_args,
                 "--out", str(out)]) == 0
    cli_rows = _rows_without_time(read_rows(out / "results.jsonl", row_type))
    run = json.loads((out / "run.json").read_text())
    assert run["domain"] == "-1,1;0,255;-2.5,0.5"
    api_rows = robustcert.certify(s["net"], s["x"][:8], s["y"][:8], method, domain=[(-1, 1), (0, 255), (-2.5, 0.5)],
                                  seed=5, **params)
    assert all(isinstance(r, row_type) for r in api_rows)
    assert _rows_without_time(api_rows) == cli_rows
    assert {r["domain"] for r in cli_rows} == {"-1,1;0,255;-2.5,0.5"}
    if row_type is BoundRow:  # a meaningful comparison: some certified, some not
        certified = [r["certified"] for r in cli_rows]
        assert any(certified) and not all(certified)
    # indices name the examples, and their seeds: the rows for examples 4..7 given alone are the same
    later = robustcert.certify(s["net"], s["x"][4:8], s["y"][4:8], method, domain=PER_CHANNEL, seed=5,
                               indices=[4, 5, 6, 7], **params)
    per_example = len(api_rows) // 8
    assert _rows_without_time(later) == cli_rows[4 * per_example :]


def test_python_certify_refuses_bad_input(per_channel_setup: dict) -> None:
    s = per_channel_setup
    with pytest.raises(RobustCertError) as info:
        robustcert.certify(s["net"], s["x"], s["y"], "crown", domain=PER_CHANNEL, epss=[0.1])
    assert "did you mean 'eps'" in str(info.value)
    with pytest.raises(RobustCertError, match="did you mean"):
        robustcert.certify(s["net"], s["x"], s["y"], "smoothing", domain=PER_CHANNEL, sigmaa=0.5)
    with pytest.raises(RobustCertError, match="did you mean"):
        robustcert.certify(s["net"], s["x"], s["y"], "crwn", domain=PER_CHANNEL)
    with pytest.raises(RobustCertError) as info:  # the default domain [0, 1] excludes channel 1's 0..255
        robustcert.certify(s["net"], s["x"], s["y"], "crown", eps=[0.1])
    assert "excludes" in str(info.value)
    x = s["x"].clone()
    x[2, 2, 1, 1] = 0.75
    with pytest.raises(RobustCertError) as info:
        robustcert.certify(s["net"], x, s["y"], "crown", domain=PER_CHANNEL, eps=[0.1])
    assert "excludes" in str(info.value) and "channel 2" in str(info.value) and "example 2" in str(info.value)
    with pytest.raises(RobustCertError, match="channel ranges"):
        robustcert.certify(s["net"], s["x"], s["y"], "crown", domain="0,1;0,1", eps=[0.1])


def test_smoothing_certificate_attack_stays_in_a_per_channel_domain() -> None:
    from robustcert.attacks.smoothed import attack_smoothed

    net = _cnn(seed=11)
    x = _examples(PER_CHANNEL)
    for b in (0, 3, 4):
        result = attack_smoothed(net, x[b], 0, 1.0, 0.5, 4, domain=PER_CHANNEL, steps=5, m=8, n_predict=100)
        assert PER_CHANNEL.contains(result.x_adv.unsqueeze(0).double())
        assert result.distance <= 1.0
