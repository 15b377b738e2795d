"""Branch and bound (robustcert.exact.bab): answers against the exact MILP on small ReLU nets (both
directions), counterexamples checked on the float32 model, a disjunctive ("any") property, the branching
heuristic against random choice, time-outs and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.exact.bab import _with_sum_row, branch_and_bound, objective
from robustcert.exact.milp import exact_margin

pytestmark = pytest.mark.usefixtures("one_thread")


def net(seed: int, width: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(8, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3)
    ).eval()


def instance(seed: int, eps: float = 0.3, width: int = 16):
    model = net(seed, width)
    torch.manual_seed(100 + seed)
    x = torch.rand(1, 8)
    y = int(model(x).argmax())
    lo, hi = x.double() - eps, x.double() + eps
    C = torch.eye(3, dtype=torch.float64)[y].unsqueeze(0) - torch.eye(3, dtype=torch.float64)
    C = C[[j for j in range(3) if j != y]]
    return model, lo, hi, C, y


def check_counterexample(model, lo, hi, C, d, require, r) -> None:
    assert r.counterexample is not None and r.value is not None and r.value <= 0
    x = r.counterexample
    assert x.dtype == torch.float32
    assert bool((x.double() >= lo).all() and (x.double() <= hi).all())
    with torch.no_grad():
        vals = model(x).double() @ C.T - d
    assert float(objective(vals, require)[0]) <= 0


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_milp_both_directions(seed):
    """d just below the exact minimum margin: the property holds and must be verified; just above: it
    is violated and must be falsified with a checked counterexample. Never the other way round."""
    model, lo, hi, C, y = instance(seed)
    exact = exact_margin(model, None, y, box=(lo.float(), hi.float()), time_limit=60)
    assert exact.min_margin is not None
    m = exact.min_margin
    for frac, truth in ((-0.05, "verified"), (0.05, "falsified")):
        d = torch.full((2,), m + frac * max(abs(m), 1e-3), dtype=torch.float64)
        r = branch_and_bound(model, lo, hi, C, d, timeout=60, batch=32)
        assert r.status == truth, (m, frac, r.status, r.bound, r.domains)
        if truth == "verified":
            assert r.bound > 0
        else:
            check_counterexample(model, lo, hi, C, d, "all", r)
            # without the attack the search must still never claim the false property
            blind = branch_and_bound(
                model, lo, hi, C, d, timeout=20, batch=32, attack_restarts=0, attack_steps=0
            )
            assert blind.status != "verified", blind


def test_disjunctive_property():
    """``any``: ya - yb > -0.01 or yb - ya > -0.01 always holds (one of them is >= 0), and needs
    branching near ya = yb; with +0.01 it fails wherever |ya - yb| <= 0.01, which a continuous net
    crossing ya = yb in the box reaches."""
    model, lo, hi, _, _ = instance(3)
    with torch.no_grad():
        a, b = (int(i) for i in model(((lo + hi) / 2).float())[0].argsort(descending=True)[:2])
    C = torch.zeros(2, 3, dtype=torch.float64)
    C[0, a], C[0, b], C[1, a], C[1, b] = 1.0, -1.0, -1.0, 1.0  # the two leading classes
    with torch.no_grad():
        pts = lo + (hi - lo) * torch.rand((4000, 8), dtype=torch.float64)
        diff = (model(pts.float()) @ C[0].float()).double()
    assert float(diff.min()) < 0 < float(diff.max())  # ya - yb changes sign in the box
    holds = branch_and_bound(model, lo, hi, C, torch.full((2,), -0.01), require="any", timeout=60)
    assert holds.status == "verified"  # by the sum of the two rows (+0.02), at the root
    # ya - yb > -(|min|+0.01) holds everywhere but only the first row can show it: needs branching
    d_far = torch.tensor([float(diff.min()) - 0.01, 0.5], dtype=torch.float64)
    deep = branch_and_bound(model, lo, hi, C, d_far, require="any", timeout=60)
    assert deep.status == "verified" and deep.domains > 1
    d = torch.full((2,), 0.01, dtype=torch.float64)
    fails = branch_and_bound(model, lo, hi, C, d, require="any", timeout=60)
    assert fails.status == "falsified"
    check_counterexample(model, lo, hi, C, d, "any", fails)


def test_branching_beats_random():
    """The sensitivity-based choice verifies a hard instance with fewer domains than random choice
    (which may not finish within its budget)."""
    model, lo, hi, C, y = instance(2, width=24)
    m = exact_margin(model, None, y, box=(lo.float(), hi.float()), time_limit=60).min_margin
    assert m is not None
    d = torch.full((2,), m - 0.03 * max(abs(m), 1e-3), dtype=torch.float64)
    smart = branch_and_bound(model, lo, hi, C, d, timeout=60, batch=16)
    assert smart.status == "verified" and smart.stage == "bab"
    rand = branch_and_bound(
        model, lo, hi, C, d, timeout=60, batch=16, branching="random", max_domains=4 * smart.domains
    )
    assert rand.status != "falsified"
    assert rand.status == "timeout" or rand.domains > smart.domains


def test_timeout_and_bad_input():
    model, lo, hi, C, y = instance(0)
    m = exact_margin(model, None, y, box=(lo.float(), hi.float()), time_limit=60).min_margin
    d = torch.full((2,), m - 0.001, dtype=torch.float64)
    r = branch_and_bound(model, lo, hi, C, d, timeout=0.0)
    assert r.status == "timeout" and r.bound <= 0
    with pytest.raises(RobustCertError, match="lo <= hi"):
        branch_and_bound(model, hi, lo, C)
    with pytest.raises(RobustCertError, match="C must be"):
        branch_and_bound(model, lo, hi, C, torch.zeros(3))
    with pytest.raises(RobustCertError, match="require"):
        branch_and_bound(model, lo, hi, C, require="some")
    with pytest.raises(RobustCertError, match="branching"):
        branch_and_bound(model, lo, hi, C, branching="best")


def test_sum_row_only_when_exact():
    """The extra row of an ``any`` property is the rows' sum, used only when float64 sums it exactly."""
    C = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    Cx, dx = _with_sum_row(C, torch.tensor([0.5, 0.25], dtype=torch.float64))
    assert (
        Cx.shape == (3, 2)
        and torch.equal(Cx[2], torch.zeros(2, dtype=torch.float64))
        and float(dx[2]) == 0.75
    )
    inexact = torch.tensor([[1.0, 1e-17], [1.0, 1.0]], dtype=torch.float64)  # 1 + 1e-17 rounds
    assert _with_sum_row(inexact, torch.zeros(2, dtype=torch.float64))[0].shape == (2, 2)
    assert _with_sum_row(C[:1], torch.zeros(1, dtype=torch.float64))[0].shape == (1, 2)


@pytest.mark.parametrize("seed", range(2))
def test_vertex_attack_falsifies_inside_the_search(seed):
    """With the opening attack off (only the box centre tried), properties 5 % above the exact minimum
    are falsified by the search itself — PGD from the vertices where the children's relaxations are
    lowest — with a checked float32 counterexample; without that attack the search cannot falsify them
    (measured: unknown or timeout after hundreds of domains)."""
    model, lo, hi, C, y = instance(seed)
    m = exact_margin(model, None, y, box=(lo.float(), hi.float()), time_limit=60).min_margin
    assert m is not None
    d = torch.full((2,), m + 0.05 * max(abs(m), 1e-3), dtype=torch.float64)
    blind = dict(timeout=20, batch=32, attack_restarts=0, attack_steps=0)
    r = branch_and_bound(model, lo, hi, C, d, **blind)
    assert r.status == "falsified" and r.stage == "bab", r
    check_counterexample(model, lo, hi, C, d, "all", r)
    without = branch_and_bound(model, lo, hi, C, d, vertex_attack=False, max_domains=100, **blind)
    assert without.status != "falsified" and without.status != "verified", without
