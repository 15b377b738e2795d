"""The soundness chain on tiny ReLU nets, per example and L∞ eps:

    min_j IBP ≤ α-CROWN,  CROWN ≤ α-CROWN ≤ exact MILP minimum ≤ PGD margin   (+ a small tolerance),

and per class every bound ≤ the MILP's attained value; no example is both verified and attacked.
The nets are random (2-4-4-3 MLP, a 1×4×4 conv net) and quickly trained on toy problems (2-D blobs with
a Normalize layer, 1×4×4 patterns), so both verified and attacked examples occur.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcert.attacks import pgd_attack
from robustcert.exact import exact_margin
from robustcert.models.normalize import Normalize

bounds = pytest.importorskip("robustcert.bounds", reason="robustcert.bounds has not landed yet")
margin_lower = bounds.margin_lower

METHODS = ("ibp", "crown", "alpha-crown")


def _tol(v: float) -> float:
    return 1e-5 * (1.0 + abs(v))


def _random_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))


def _random_conv() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _blobs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor([[0.25, 0.25], [0.75, 0.3], [0.5, 0.8]])
    y = torch.randint(0, 3, (n,), generator=gen)
    x = (centres[y] + 0.12 * torch.randn(n, 2, generator=gen)).clamp(0, 1)
    return x, y


def _patterns(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    templates = torch.zeros(3, 1, 4, 4)
    templates[0, 0, :2, :] = 1  # top half bright
    templates[1, 0, :, :2] = 1  # left half bright
    templates[2, 0].fill_diagonal_(1)  # diagonal
    y = torch.randint(0, 3, (n,), generator=gen)
    x = (0.5 * templates[y] + 0.5 * torch.rand(n, 1, 4, 4, generator=gen)).clamp(0, 1)
    return x, y


def _trained_blobs() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = nn.Sequential(
        Normalize([0.5], [0.25]), nn.Linear(2, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    )
    x, y = _blobs(300, gen)
    _fit(model, x, y)
    xt, yt = _blobs(8, gen)
    return model, xt, yt


def _trained_patterns() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    model = _random_conv()
    x, y = _patterns(300, gen)
    _fit(model, x, y)
    xt, yt = _patterns(8, gen)
    return model, xt, yt


def _random_data(
    model: nn.Module, shape: tuple[int, ...], seed: int
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)  # labelled by the net itself, so the clean margin is positive
    return model, x, y


CASES = {
    "random-mlp": (lambda: _random_data(_random_mlp(), (2,), 10), (0.05, 0.4)),
    "random-conv": (lambda: _random_data(_random_conv(), (1, 4, 4), 11), (0.03, 0.3)),
    "trained-blobs": (_trained_blobs, (0.02, 0.15)),
    "trained-patterns": (_trained_patterns, (0.03, 0.2)),
}

_TALLY = {"verified": 0, "attacked": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("case", list(CASES))
def test_chain(case: str) -> None:
    make, eps_list = CASES[case]
    model, x, y = make()
    for eps in eps_list:
        lows = {
            m: margin_lower(model, x, y, eps=eps, norm="linf", method=m).detach().double() for m in METHODS
        }
        for m, low in lows.items():
            assert low.shape == (x.shape[0], 3), m
            assert bool(torch.isinf(low.gather(1, y.view(-1, 1))).all()), f"{m}: column y must be +inf"
        adv = pgd_attack(model, x, y, eps, norm="linf", steps=40, restarts=2)
        for i in range(x.shape[0]):
            yi = int(y[i])
            mins = {m: float(low[i].min()) for m, low in lows.items()}
            ex = exact_margin(model, x[i : i + 1], yi, eps, time_limit=20)
            assert ex.min_margin is not None, f"{case} eps={eps} #{i}: MILP did not finish"
            exact = ex.min_margin
            pgd_m = float(adv.adv_margin[i])
            where = f"{case} eps={eps} #{i}: {mins} exact={exact} pgd={pgd_m}"
            assert mins["ibp"] <= mins["alpha-crown"] + _tol(mins["ibp"]), where
            assert mins["crown"] <= mins["alpha-crown"] + _tol(mins["crown"]), where
            assert mins["alpha-crown"] <= exact + _tol(exact), where
            assert exact <= pgd_m + _tol(pgd_m), where
            # per class: every bound is below the value the MILP attained for that class
            for j in range(3):
                if j == yi:
                    continue
                for m, low in lows.items():
                    assert float(low[i, j]) <= ex.class_upper[j] + _tol(ex.class_upper[j]), (
                        f"{where} {m} j={j}"
                    )
            verified = any(v > 0 for v in mins.values())
            attacked = bool(adv.success[i])
            assert not (verified and attacked), where
            assert not (verified and ex.status == "counterexample"), where
            assert (ex.status == "counterexample") == (exact < 0) or abs(exact) <= ex.tolerance, where
            _TALLY["verified"] += verified
            _TALLY["attacked"] += attacked


def test_chain_was_not_vacuous() -> None:
    """Runs after the cases above (file order): both sides of the chain were exercised."""
    if _TALLY["verified"] + _TALLY["attacked"] == 0:
        pytest.skip("run together with test_chain")
    assert _TALLY["verified"] >= 3 and _TALLY["attacked"] >= 3, _TALLY


@pytest.mark.parametrize("case", ["random-conv", "trained-blobs", "trained-patterns"])
def test_l2_bounds_below_l2_attack(case: str) -> None:
    """No exact L2 verifier here: check each L2 bound against the L2 PGD margin, and never verified+attacked."""
    make, _ = CASES[case]
    model, x, y = make()
    for eps in (0.05, 0.4):
        adv = pgd_attack(model, x, y, eps, norm="l2", steps=40, restarts=2)
        for m in METHODS:
            low = margin_lower(model, x, y, eps=eps, norm="l2", method=m).detach().double().min(1).values
            gap = low - adv.adv_margin.double()
            assert bool((gap <= 1e-5 * (1 + adv.adv_margin.double().abs())).all()), (case, eps, m, gap)
            assert not bool(((low > 0) & adv.success).any()), (case, eps, m)
