"""Input splitting (robustcert.exact.input_split): answers against the exact MILP on 5-input nets (both
directions, with and without the attack), the gradient choice of dimension against the widest side, a
disjunctive property, float32 counterexamples inside the box, degenerate boxes and bad input."""

from __future__ import annotations

import pytest
import torch
from test_bab import check_counterexample
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.exact.input_split import input_split
from robustcert.exact.milp import exact_margin

pytestmark = pytest.mark.usefixtures("one_thread")


def control_net(seed: int, n_in: int = 5, width: int = 24, relevant: int | None = None) -> nn.Sequential:
    """A ReLU MLP n_in -> width -> width -> 2 whose output 1 is identically 0 (so the exact MILP's
    margin ``y_0 - y_1`` with label 0 is the minimum of ``y_0``); inputs from index ``relevant`` on get
    weights 100x smaller."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
    )
    with torch.no_grad():
        net[4].weight[1] = 0.0
        net[4].bias[1] = 0.0
        if relevant is not None:
            net[0].weight[:, relevant:] *= 0.01
    return net.eval()


def exact_min(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> float:
    res = exact_margin(net, None, 0, box=(lo.float(), hi.float()), time_limit=60)
    assert res.status in ("robust", "counterexample") and res.min_margin is not None
    return float(res.min_margin)


ROW = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # y_0 (and y_1 = 0)


def box(n_in: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(1, n_in, dtype=torch.float64), torch.ones(1, n_in, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_milp_both_directions(seed):
    """``y_0 > d`` with d 2 % of the range below the exact minimum: verified (CROWN alone cannot: the
    root needs splitting); 2 % above: falsified with a checked float32 point, also with the attack off
    (the centres of the open boxes find it). Never the other way round."""
    net = control_net(seed)
    lo, hi = box()
    m = exact_min(net, lo, hi)
    with torch.no_grad():
        spread = float(net(torch.rand(4000, 5))[:, 0].max()) - m
    for frac, truth in ((-0.02, "verified"), (0.02, "falsified")):
        d = torch.tensor([m + frac * spread], dtype=torch.float64)
        for restarts, steps in ((10, 50), (0, 0)):
            r = input_split(net, lo, hi, ROW, d, timeout=60, attack_restarts=restarts, attack_steps=steps)
            assert r.status == truth, (seed, frac, restarts, r.status, r.bound, r.domains)
            if truth == "verified":
                assert r.bound > 0 and r.stage in ("root", "input-split")
            else:
                check_counterexample(net, lo, hi, ROW, d, "all", r)
                if restarts == 0:
                    assert r.stage == "input-split"
    d = torch.tensor([m - 0.02 * spread], dtype=torch.float64)
    assert input_split(net, lo, hi, ROW, d, timeout=60).domains > 1  # the instance needs splitting


def test_gradient_choice_beats_the_widest_side():
    """With 4 of 8 inputs nearly irrelevant, halving the side the bound is sensitive to proves the
    property with far fewer boxes than halving the widest side (measured: 45 vs 3,515)."""
    net = control_net(6, n_in=8, relevant=4)
    lo, hi = box(8)
    m = exact_min(net, lo, hi)
    with torch.no_grad():
        spread = float(net(torch.rand(4000, 8))[:, 0].max()) - m
    d = torch.tensor([m - 0.01 * spread], dtype=torch.float64)
    smart = input_split(net, lo, hi, ROW, d, timeout=60)
    assert smart.status == "verified" and smart.stage == "input-split"
    wide = input_split(net, lo, hi, ROW, d, timeout=60, branching="widest", max_domains=20 * smart.domains)
    assert wide.status in ("verified", "timeout")
    assert wide.status == "timeout" or wide.domains > 10 * smart.domains, (smart.domains, wide.domains)


def test_disjunctive_property():
    """``any``: y_0 > t or -y_0 > -t - 0.01 holds everywhere (at least one), needs the sum row or
    splitting; with a gap the other way it fails where y_0 is within the gap of t."""
    net = control_net(1)
    lo, hi = box()
    with torch.no_grad():
        t = float(net(torch.rand(2000, 5))[:, 0].median())
    C = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    holds = input_split(net, lo, hi, C, torch.tensor([t, -t - 0.01], dtype=torch.float64), require="any")
    assert holds.status == "verified"
    d = torch.tensor([t, -t + 0.01], dtype=torch.float64)  # fails wherever |y_0 - t| <= 0.01
    fails = input_split(net, lo, hi, C, d, require="any", attack_restarts=0, attack_steps=0)
    assert fails.status == "falsified"
    check_counterexample(net, lo, hi, C, d, "any", fails)


def test_degenerate_boxes():
    """A box that is one point in some dimensions is split in the others; a box that is a single point
    cannot be split: verified if its bound is positive, else falsified or unknown, never verified."""
    net = control_net(2)
    lo, hi = box()
    lo[0, 2:] = hi[0, 2:] = 0.5
    m = exact_min(net, lo, hi)
    d = torch.tensor([m - 0.01 * max(abs(m), 1e-3)], dtype=torch.float64)
    r = input_split(net, lo, hi, ROW, d, timeout=60)
    assert r.status == "verified"
    point = torch.full((1, 5), 0.25, dtype=torch.float64)
    with torch.no_grad():
        v = float(net(point.float())[0, 0])
    assert input_split(net, point, point, ROW, torch.tensor([v - 1e-3])).status == "verified"
    above = input_split(net, point, point, ROW, torch.tensor([v + 1e-3]), attack_restarts=0, attack_steps=0)
    assert above.status in ("falsified", "unknown")


def test_timeout_and_bad_input():
    net = control_net(0)
    lo, hi = box()
    m = exact_min(net, lo, hi)
    r = input_split(
        net, lo, hi, ROW, torch.tensor([m - 1e-4]), timeout=1e-9, attack_restarts=0, attack_steps=0
    )
    assert r.status == "timeout" and r.bound <= 0
    with pytest.raises(RobustCertError, match="lo <= hi"):
        input_split(net, hi, lo, ROW)
    with pytest.raises(RobustCertError, match="branching"):
        input_split(net, lo, hi, ROW, branching="best")
    with pytest.raises(RobustCertError, match="method"):
        input_split(net, lo, hi, ROW, method="beta-crown")
    with pytest.raises(RobustCertError, match="timeout"):
        input_split(net, lo, hi, ROW, timeout=0)
