"""PGD: finds known optima on linear models, never leaves the threat set, repeats with a seed, validates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcert.attacks import eval_mode, margin, perturb_for_training, pgd, pgd_attack
from robustcert.errors import RobustCertError
from robustcert.models.zoo import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(d: int = 12, k: int = 2, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("mlp-2x64", (1, 4, 4), 3)


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> bool:
    if not (bool((x_adv >= 0).all()) and bool((x_adv <= 1).all())):
        return False
    d = (x_adv.double() - x.double()).flatten(1)
    size = d.abs().max(dim=1).values if norm == "linf" else d.norm(dim=1)
    return bool((size <= eps).all())


def test_linf_finds_closed_form_optimum_on_linear_model() -> None:
    model = _linear()
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(2))
    eps = 0.07
    w = model[1].weight.detach()
    sign = torch.where(y.view(-1, 1) == 0, 1.0, -1.0)  # direction of w_y - w_other
    opt = (x - eps * (sign * (w[0] - w[1])).sign()).clamp(0, 1)  # clipped corner: the exact minimiser
    res = pgd_attack(model, x, y, eps, norm="linf", steps=20)
    assert _in_ball(res.x_adv, x, eps, "linf")
    assert torch.allclose(res.adv_margin, margin(model, opt, y), atol=1e-5)
    assert torch.allclose(res.x_adv, opt, atol=1e-5)
    # the attack is successful exactly where the optimum is misclassified
    assert torch.equal(res.success, margin(model, opt, y) < 0)


def test_l2_reaches_closed_form_optimum_on_linear_model() -> None:
    model = _linear(d=20)
    x = 0.3 + 0.4 * torch.rand(8, 20, generator=torch.Generator().manual_seed(3))  # far from the box edge
    y = torch.zeros(8, dtype=torch.long)
    eps = 0.2
    w = model[1].weight.detach()
    wd = w[0] - w[1]
    opt = x - eps * wd / wd.norm()
    best = margin(model, opt, y)
    scale = eps * wd.norm()
    # from the clean point the first step goes straight to the optimum
    res = pgd_attack(model, x, y, eps, norm="l2", steps=50, random_start=False, restarts=1)
    assert _in_ball(res.x_adv, x, eps, "l2")
    assert bool((res.adv_margin >= best - 1e-5).all())  # cannot beat the optimum
    assert bool((res.adv_margin <= best + 1e-3 * scale).all())
    # from random starts it must slide along the sphere: within 5 % of eps·||w||
    res = pgd_attack(model, x, y, eps, norm="l2", steps=50)
    assert _in_ball(res.x_adv, x, eps, "l2")
    assert bool((res.adv_margin >= best - 1e-5).all())
    assert bool((res.adv_margin <= best + 0.05 * scale).all())


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("linf", 1e-7), ("l2", 0.8), ("l2", 3.0), ("linf", 0.0)])
def test_every_returned_point_is_in_ball_and_box(norm: str, eps: float) -> None:
    model = _mlp()
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(32, 1, 4, 4, generator=gen)
    x[:4] = 0.0  # corners of the box
    x[4:8] = 1.0
    y = torch.randint(0, 3, (32,), generator=gen)
    x_adv = pgd(model, x, y, eps, norm=norm, steps=10, restarts=2, step_size=eps if eps > 0 else None)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert _in_ball(x_adv, x, eps, norm)
    if eps == 0:
        assert torch.equal(x_adv, x)
    # the float32 check a user would write also passes
    d = (x_adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert bool((size <= eps).all())
    t = perturb_for_training(model, x, y, eps, norm=norm, steps=3, generator=torch.Generator().manual_seed(0))
    assert _in_ball(t, x, eps, norm)


def test_best_point_never_worse_than_clean_and_deterministic() -> None:
    model = _mlp(1)
    x = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(6))
    a = pgd_attack(model, x, y, 0.1, steps=15, seed=7)
    b = pgd_attack(model, x, y, 0.1, steps=15, seed=7)
    c = pgd_attack(model, x, y, 0.1, steps=15, seed=8, restarts=1)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.adv_margin, b.adv_margin)
    assert bool((a.adv_margin <= a.clean_margin + 1e-6).all())
    assert bool((a.adv_margin < a.clean_margin - 1e-4).any())  # it actually moved
    assert torch.allclose(a.adv_margin, margin(model, a.x_adv, y))
    assert not torch.equal(a.x_adv, c.x_adv)  # another seed gives other points


def test_model_mode_and_grads_restored() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[2].eval()  # a mixed state must come back exactly
    x = torch.rand(4, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0])
    pgd(model, x, y, 0.1, steps=3)
    perturb_for_training(model, x, y, 0.1, steps=3)
    assert model.training and model[1].training and not model[2].training
    assert all(p.grad is None for p in model.parameters())
    with eval_mode(model):
        assert not model.training
    assert model.training


def test_works_under_no_grad_and_ce_loss() -> None:
    model = _mlp(2)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    y = torch.randint(0, 3, (6,), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        res = pgd_attack(model, x, y, 0.2, steps=10, loss="ce")
    assert _in_ball(res.x_adv, x, 0.2, "linf")
    assert bool((res.adv_margin < res.clean_margin).any())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"norm": "l1"}, "norm"),
        ({"y": torch.tensor([0, 3])}, "labels"),
        ({"y": torch.tensor([0, 1, 2])}, "labels"),
        ({"x": torch.full((2, 1, 4, 4), float("nan"))}, "NaN"),
        ({"x": torch.rand(2, 1, 5, 5)}, "shape"),
        ({"x": torch.rand(2, 1, 4, 4) + 2}, r"\[0, 1\]"),
        ({"steps": -1}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"loss": "hinge"}, "loss"),
        ({"step_size": 0.0}, "step_size"),
    ],
)
def test_bad_input_raises(kwargs: dict, match: str) -> None:
    model = _mlp()
    args = {"x": torch.rand(2, 1, 4, 4), "y": torch.tensor([0, 1]), "eps": 0.1}
    args.update(kwargs)
    with pytest.raises(RobustCertError, match=match):
        pgd(model, **args)
