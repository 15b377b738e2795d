"""PGD over a model's input domain: every returned point lies in B(x, eps) ∩ domain (checked in float64,
per channel, unbounded sides included), points outside [0, 1] are found when the domain allows them, data
outside the domain is refused, the default is [0, 1] bit for bit, and the pgd method passes the model's
domain to the attack."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustcert.attacks import margin, perturb_for_training, pgd, pgd_attack
from robustcert.domain import InputDomain
from robustcert.errors import RobustCertError
from robustcert.methods.base import ModelInfo
from robustcert.methods.pgd import PGDParams
from robustcert.methods.pgd import build as build_pgd
from robustcert.models.zoo import build_model
from robustcert.rows import AttackRow, Row

PER_CHANNEL = InputDomain((-1.0, 0.0, -2.5), (1.0, 255.0, 0.5))
HALF_OPEN = InputDomain((-math.inf, 0.0, -math.inf), (1.0, math.inf, math.inf))


pytestmark = pytest.mark.usefixtures("one_thread")


def _model3(seed: int = 0) -> nn.Module:
    """A 3-channel 4×4 MLP with 3 classes; the first layer is scaled down so that [0, 255] inputs do not
    saturate every ReLU (the attack then has gradients to follow)."""
    torch.manual_seed(seed)
    model = build_model("mlp-2x64", (3, 4, 4), 3, mean=[0.0, 127.5, -1.0], std=[1.0, 127.5, 1.5])
    return model


def _data(domain: InputDomain, n: int = 24, seed: int = 0) -> torch.Tensor:
    """``n >= 6`` points of ``domain`` (an infinite side replaced by one 6 away from the other, or by ±3):
    uniform, plus three examples on the lower and three on the upper bounds."""
    gen = torch.Generator().manual_seed(seed)
    pairs = zip(domain.lo, domain.hi, strict=True)
    lo_f = [a if math.isfinite(a) else (b - 6.0 if math.isfinite(b) else -3.0) for a, b in pairs]
    hi_f = [b if math.isfinite(b) else a + 6.0 for a, b in zip(lo_f, domain.hi, strict=True)]
    lo, hi = torch.tensor(lo_f).view(1, -1, 1, 1), torch.tensor(hi_f).view(1, -1, 1, 1)
    x = lo + (hi - lo) * torch.rand(n, 3, 4, 4, generator=gen)
    x[:3] = lo.expand(3, 3, 4, 4)
    x[3:6] = hi.expand(3, 3, 4, 4)
    return x


def _in_threat_set(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, domain: InputDomain) -> bool:
    """Float64: ``x_adv`` in ``B(x, eps)`` and in the domain's exact (float64) per-channel bounds."""
    a64, x64 = x_adv.double(), x.double()
    lo = torch.tensor(domain.lo, dtype=torch.float64).view(1, -1, 1, 1)
    hi = torch.tensor(domain.hi, dtype=torch.float64).view(1, -1, 1, 1)
    if not (bool((a64 >= lo).all()) and bool((a64 <= hi).all())):
        return False
    d = (a64 - x64).flatten(1)
    size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps).all())


@pytest.mark.parametrize("domain", [PER_CHANNEL, HALF_OPEN], ids=["per-channel", "half-open"])
@pytest.mark.parametrize(
    "norm,eps", [("linf", 0.3), ("linf", 40.0), ("linf", 1e-7), ("l2", 2.0), ("l2", 300.0), ("linf", 0.0)]
)
def test_every_returned_point_is_in_ball_and_domain(domain: InputDomain, norm: str, eps: float) -> None:
    model = _model3()
    x = _data(domain)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    step = eps / 2 if eps > 0 else None
    # random starts (restarts >= 2, and one random start with restarts=1), per-example seeds
    starts: list[dict] = [
        {"restarts": 3},
        {"restarts": 1, "random_start": True},
        {"restarts": 2, "seed": list(range(24))},
    ]
    for kwargs in starts:
        res = pgd_attack(model, x, y, eps, norm=norm, steps=8, step_size=step, domain=domain, **kwargs)
        assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
        assert _in_threat_set(res.x_adv, x, eps, norm, domain)
        assert torch.allclose(res.adv_margin, margin(model, res.x_adv, y, domain=domain))
        if eps == 0:
            assert torch.equal(res.x_adv, x)
    t = perturb_for_training(model, x, y, eps, norm=norm, steps=4, generator=torch.Generator().manual_seed(0),
                             domain=domain)
    assert _in_threat_set(t, x, eps, norm, domain)


def test_large_eps_reaches_the_domain_bounds() -> None:
    """With eps larger than the domain, L∞ PGD moves to domain bounds (not to [0, 1]) on a linear model."""
    torch.manual_seed(3)
    linear = nn.Linear(48, 2)
    model = nn.Sequential(nn.Flatten(), linear)
    x = _data(PER_CHANNEL, n=8, seed=2)
    y = torch.zeros(8, dtype=torch.long)
    w = linear.weight.detach()
    down = ((w[0] - w[1]) > 0).view(1, 3, 4, 4)  # lowering these features lowers the margin
    lo = torch.tensor(PER_CHANNEL.lo).view(1, 3, 1, 1).expand_as(x)
    hi = torch.tensor(PER_CHANNEL.hi).view(1, 3, 1, 1).expand_as(x)
    opt = torch.where(down, lo, hi)
    x_adv = pgd(model, x, y, 300.0, norm="linf", steps=10, step_size=300.0, domain=PER_CHANNEL)
    assert _in_threat_set(x_adv, x, 300.0, "linf", PER_CHANNEL)
    assert torch.equal(x_adv, opt)


def _flips_above_one() -> nn.Module:
    """Two classes over 2 channels of 1×1 pixels: class 1 wins exactly where channel 0 exceeds 1.5."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
        linear.bias.copy_(torch.tensor([0.0, -1.5]))
    return nn.Sequential(nn.Flatten(), linear)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_finds_adversarial_point_outside_unit_box_inside_domain(norm: str) -> None:
    model = _flips_above_one()
    x = torch.tensor([[0.9, 0.5]]).view(1, 2, 1, 1)
    y = torch.tensor([0])
    eps = 0.8
    unit = pgd_attack(model, x, y, eps, norm=norm, steps=20)  # [0, 1] cannot reach x0 > 1.5
    assert not bool(unit.success.any()) and bool((unit.x_adv <= 1).all())
    domains = (
        InputDomain((0.0,), (2.0,)), InputDomain((0.0, -5.0), (math.inf, 0.5)), "0,2", [(0, 2), (0, 1)]
    )
    for domain in domains:
        res = pgd_attack(model, x, y, eps, norm=norm, steps=20, domain=domain)
        assert bool(res.success.all())
        assert float(res.x_adv[0, 0]) > 1.5
        assert _in_threat_set(res.x_adv, x, eps, norm, InputDomain.coerce(domain))
    # the domain caps the attack even when the ball does not: [0, 1.4] leaves no counterexample
    capped = pgd_attack(model, x, y, eps, norm=norm, steps=20, domain=(0.0, 1.4))
    # (1.4 is not a float32: the box used is the stated one rounded outward to float32, one ulp wider)
    assert not bool(capped.success.any()) and float(capped.x_adv.max()) <= InputDomain.parse("0,1.4").representable()[1][0]


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, y, d: pgd(m, x, y, 0.1, domain=d),
        lambda m, x, y, d: pgd_attack(m, x, y, 0.1, norm="l2", domain=d),
        lambda m, x, y, d: perturb_for_training(m, x, y, 0.1, domain=d),
        lambda m, x, y, d: margin(m, x, y, domain=d),
    ],
    ids=["pgd", "pgd_attack", "perturb_for_training", "margin"],
)
def test_data_outside_domain_refused_with_one_line_error(call) -> None:
    model = _model3()
    x = _data(PER_CHANNEL, n=6)[[0, 2, 4]][:2].clone()
    y = torch.tensor([0, 1])
    x[1, 2, 0, 0] = 0.6  # channel 2 ends at 0.5
    with pytest.raises(RobustCertError) as info:
        call(model, x, y, PER_CHANNEL)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the input domain excludes x: channel 2 of example 1")
    assert "[-2.5, 0.5]" in message
    # values in [0, 1] but outside a domain that starts at 0.5
    with pytest.raises(RobustCertError, match="the input domain excludes x"):
        call(model, torch.rand(2, 3, 4, 4) * 0.4, y, "0.5,1")
    # a domain with a range per channel must match the input's channels
    with pytest.raises(RobustCertError, match="channel ranges"):
        call(model, torch.rand(2, 3, 4, 4), y, [(0, 1), (0, 1)])
    with pytest.raises(RobustCertError, match="domain"):
        call(model, torch.rand(2, 3, 4, 4), y, "1,0")


def test_default_domain_is_unit_bit_for_bit() -> None:
    torch.manual_seed(0)
    model = build_model("mlp-2x64", (3, 4, 4), 3)
    x = torch.rand(16, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    x[:2] = 0.0
    x[2:4] = 1.0
    x[4, 0, 0, 0] = 1.0 + 5e-7  # within the tolerance: moved onto the box, as before domains existed
    y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(5))
    for norm, eps in (("linf", 0.1), ("l2", 0.5)):
        base = pgd_attack(model, x, y, eps, norm=norm, steps=6, restarts=2)
        t0 = perturb_for_training(model, x, y, eps, norm=norm, steps=3)
        for domain in (InputDomain.unit(), None, "0,1", (0, 1), [(0, 1)] * 3):
            other = pgd_attack(model, x, y, eps, norm=norm, steps=6, restarts=2, domain=domain)
            assert torch.equal(base.x_adv, other.x_adv)
            assert torch.equal(base.adv_margin, other.adv_margin)
            assert torch.equal(base.clean_margin, other.clean_margin)
            assert torch.equal(t0, perturb_for_training(model, x, y, eps, norm=norm, steps=3, domain=domain))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bound_float32_cannot_represent(norm: str) -> None:
    """lo = 0.7 is not a float32: float32(0.7) < 0.7. Every method uses the stated box rounded outward to
    float32 (InputDomain.representable), so such data is inside as stored, x is not moved, and every
    returned point lies in that box and in the ball, eps = 0 included."""
    model = _model3()
    domain = InputDomain((0.7,), (1.0,))
    lo32 = domain.representable()[0][0]
    assert lo32 < 0.7 and lo32 == float(torch.tensor(0.7))
    x = torch.full((4, 3, 4, 4), 0.7)
    x[2:] = 0.7 + 0.3 * torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert float(x[0, 0, 0, 0]) < 0.7
    y = torch.tensor([0, 1, 2, 0])
    for eps in (0.0, 1e-9, 0.05):
        x_adv = pgd(model, x, y, eps, norm=norm, steps=5, domain=domain)
        assert bool((x_adv.double() >= lo32).all()) and bool((x_adv <= 1).all())
        d = (x_adv.double() - x.double()).flatten(1)
        size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
        assert bool((size <= eps).all())


def _successes(rows: list[list[Row]]) -> list[bool]:
    assert all(len(r) == 1 and isinstance(r[0], AttackRow) for r in rows)
    return [r[0].attack_success for r in rows if isinstance(r[0], AttackRow)]


def test_pgd_method_attacks_over_the_model_domain() -> None:
    model = _flips_above_one()
    xs = torch.tensor([[0.9, 0.5], [0.2, 0.5]]).view(2, 2, 1, 1)
    params = PGDParams(eps=(0.8,), steps=20)
    unit_info = ModelInfo((2, 1, 1), 2)
    rows_unit = build_pgd(model, unit_info, params, None).certify_batch(xs, [0, 0], [0, 1], [1, 2])
    info = ModelInfo((2, 1, 1), 2, domain=InputDomain((0.0, 0.0), (2.0, 1.0)))
    rows = build_pgd(model, info, params, None).certify_batch(xs, [0, 0], [0, 1], [1, 2])
    assert _successes(rows_unit) == [False, False]
    assert _successes(rows) == [True, False]
    # data outside the model's domain is refused, not silently clipped
    narrow = ModelInfo((2, 1, 1), 2, domain=InputDomain((0.0,), (0.6,)))
    with pytest.raises(RobustCertError, match="the input domain excludes x"):
        build_pgd(model, narrow, params, None).certify_batch(xs, [0, 0], [0, 1], [1, 2])
