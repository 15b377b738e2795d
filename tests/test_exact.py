"""Exact MILP: its minimum is below every sampled/attacked margin, is attained, matches a dense grid on
2-D inputs; verdicts are sound (real counterexamples, no "robust" on time-out); bad input is refused.
Faked solver results, input domains other than [0, 1] and the float32 re-check: test_exact_recheck.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustcert.attacks import margin, pgd_attack
from robustcert.errors import RobustCertError
from robustcert.exact import exact_margin, exact_margins
from robustcert.models.zoo import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))


def _conv(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 3)
    )


class _Residual(nn.Module):
    """Two branches joined by an Add: checks affine maps with two inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 5)
        self.fc2 = nn.Linear(5, 5)
        self.skip = nn.Linear(2, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h) + self.skip(x))
        return self.out(h)


def _in_box(p: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    return bool(((p.double() - x.double()).abs() <= eps).all() and (p >= 0).all() and (p <= 1).all())


def _attained(res) -> None:  # type: ignore[no-untyped-def]
    """The sound lower bound is attained up to the slack subtracted from the solver's dual bound: the
    model's margin at the solver's (snapped, float32) point lies in [lower, lower + 2·tolerance] (+ float32
    rounding of the forward pass)."""
    assert res.argmin is not None and res.argmin_margin is not None and res.min_margin is not None
    assert res.lower_bound <= res.argmin_margin + 1e-5
    assert res.argmin_margin - res.lower_bound <= 2 * res.tolerance + 1e-5


def _grid_min(model: nn.Module, x: torch.Tensor, y: int, eps: float, n: int = 601) -> float:
    lo, hi = (x[0] - eps).clamp(0, 1), (x[0] + eps).clamp(0, 1)
    g0, g1 = torch.linspace(float(lo[0]), float(hi[0]), n), torch.linspace(float(lo[1]), float(hi[1]), n)
    pts = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    return float(margin(model, pts, torch.full((len(pts),), y)).min())


def _lipschitz_linf(model: nn.Sequential) -> float:
    """Crude bound on how fast any logit difference changes per unit of L∞ input change."""
    mats = [m.weight.detach().abs().double() for m in model if isinstance(m, nn.Linear)]
    prod = mats[0]
    for w in mats[1:]:
        prod = w @ prod
    return float(2 * prod.sum(dim=1).max())


@pytest.mark.parametrize("seed,eps", [(0, 0.05), (1, 0.2), (2, 0.4), (3, 0.15)])
def test_mlp_2d_matches_grid_samples_and_pgd(seed: int, eps: float) -> None:
    model = _mlp(seed)
    x = torch.rand(1, 2, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2
    y = int(model(x).argmax(1))
    res = exact_margin(model, x, y, eps)
    assert res.min_margin is not None and res.status in ("robust", "counterexample")
    m_star = res.min_margin
    # attained: the solver's own point has that margin (so it is the minimum, not just a lower bound)
    assert res.argmin is not None and _in_box(res.argmin, x, eps)
    _attained(res)
    # below every sampled point and every PGD point
    gen = torch.Generator().manual_seed(100 + seed)
    pts = (x + (2 * torch.rand(20_000, 2, generator=gen) - 1) * eps).clamp(0, 1)
    assert m_star <= float(margin(model, pts, torch.full((20_000,), y)).min()) + 1e-6
    adv = pgd_attack(model, x, torch.tensor([y]), eps, steps=30)
    assert m_star <= float(adv.adv_margin) + 1e-6
    # equal to the dense-grid minimum up to the grid's resolution
    g = _grid_min(model, x, y, eps)
    spacing = 2 * eps / 600
    assert m_star <= g + 1e-6
    assert g - m_star <= _lipschitz_linf(model) * spacing / 2 + 1e-6
    # verdict consistent with the sign of the minimum and with the forward pass at the solver's point
    assert (res.status == "robust") == (res.lower_bound > 0)
    assert (res.status == "counterexample") == (res.argmin_margin <= 0)
    per_class = [v for j, v in enumerate(res.class_lower) if j != y]
    assert min(per_class) == pytest.approx(m_star) and math.isinf(res.class_lower[y])


@pytest.mark.parametrize("seed,eps", [(0, 0.02), (1, 0.08), (2, 0.3)])
def test_conv_net_below_samples_and_pgd(seed: int, eps: float) -> None:
    model = _conv(seed)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    y = int(model(x).argmax(1))
    res = exact_margin(model, x, y, eps, time_limit=30)
    _attained(res)
    gen = torch.Generator().manual_seed(200 + seed)
    pts = (x + (2 * torch.rand(20_000, 1, 4, 4, generator=gen) - 1) * eps).clamp(0, 1)
    assert res.min_margin <= float(margin(model, pts, torch.full((20_000,), y)).min()) + 1e-6
    adv = pgd_attack(model, x, torch.tensor([y]), eps, steps=30)
    assert res.min_margin <= float(adv.adv_margin) + 1e-6


def test_tightened_and_plain_interval_encodings_agree() -> None:
    """CROWN big-M bounds (robustcert.bounds) drop binaries but must not change the optimum."""
    dropped = 0
    for seed, eps in [(1, 0.08), (2, 0.3), (5, 0.15)]:
        model = _conv(seed)
        x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        y = int(model(x).argmax(1))
        tight = exact_margin(model, x, y, eps)
        plain = exact_margin(model, x, y, eps, tighten_bounds=False)
        assert tight.upper_bound == pytest.approx(plain.upper_bound, abs=1e-6)
        assert tight.min_margin == pytest.approx(plain.min_margin, abs=tight.tolerance + plain.tolerance + 1e-6)
        assert tight.status == plain.status
        assert tight.num_binaries <= plain.num_binaries
        dropped += plain.num_binaries - tight.num_binaries
    assert dropped > 0


def test_counterexample_is_real_and_in_ball() -> None:
    found = 0
    for seed in range(6):
        model = _conv(seed)
        x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
        y = int(model(x).argmax(1))
        res = exact_margin(model, x, y, 0.25)
        assert exact_margin(model, x, y, 0.25, decision_only=True).status == res.status
        if res.status == "counterexample":
            found += 1
            cex = res.counterexample
            assert cex is not None and cex.shape == x.shape and cex.dtype == x.dtype
            assert _in_box(cex, x, 0.25)
            assert float(margin(model, cex, torch.tensor([y]))) < 0
            assert res.min_margin is not None and res.min_margin < 0
        else:
            assert res.counterexample is None
    assert found >= 2  # at eps = 0.25 about half of these random nets flip (seeds 0, 2, 5)


def test_tiny_eps_is_robust_and_eps_zero_is_the_clean_margin() -> None:
    model = _conv(4)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    y = int(model(x).argmax(1))
    clean = float(margin(model, x, torch.tensor([y])))
    assert clean > 1e-3
    res = exact_margin(model, x, y, 1e-5)
    assert res.status == "robust" and res.verified
    assert 0 < res.min_margin <= clean + 1e-6
    zero = exact_margin(model, x, y, 0.0)
    assert zero.status == "robust" and zero.num_binaries == 0
    assert zero.min_margin == pytest.approx(clean, abs=1e-5)


def test_wrong_label_gives_counterexample_at_zero_eps() -> None:
    model = _mlp(5)
    x = torch.tensor([[0.3, 0.7]])
    y_wrong = int(model(x).argmin(1))
    res = exact_margin(model, x, y_wrong, 0.0)
    assert res.status == "counterexample" and torch.equal(res.counterexample, x)


def test_time_out_is_unknown_never_robust() -> None:
    torch.manual_seed(0)
    model = build_model("mlp-2x64", (1, 8, 8), 10, mean=[0.3], std=[0.2])
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    attacked = pgd_attack(model, x, y, 0.3, steps=20)
    assert bool(attacked.success.all())  # so "robust" would be false for each of them
    for i in range(4):
        res = exact_margin(model, x[i : i + 1], y[i], 0.3, time_limit=0.3)
        assert res.status in ("unknown", "counterexample")
        if res.status == "unknown":
            assert res.min_margin is None
        assert res.seconds < 5


def test_box_argument_equals_ball_and_batch_helper() -> None:
    model = _mlp(6)
    x = torch.tensor([[0.4, 0.55], [0.1, 0.9]])
    y = model(x).argmax(1)
    eps = 0.1
    results = exact_margins(model, x, y, eps)
    for i, res in enumerate(results):
        box = ((x[i : i + 1] - eps).clamp(0, 1), (x[i : i + 1] + eps).clamp(0, 1))
        alt = exact_margin(model, None, y[i], box=box)
        assert alt.min_margin == pytest.approx(res.min_margin, abs=res.tolerance + alt.tolerance + 1e-6)


def _bn_pool() -> nn.Module:
    torch.manual_seed(9)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("kind", ["normalize", "residual", "batchnorm-avgpool"])
def test_other_affine_ops_are_encoded_exactly(kind: str) -> None:
    torch.manual_seed(7)
    if kind == "normalize":
        model: nn.Module = build_model("mlp-2x64", (1, 1, 2), 3, mean=[0.4], std=[0.3])
        x = torch.tensor([[[[0.45, 0.6]]]])
    elif kind == "residual":
        model, x = _Residual(), torch.tensor([[0.45, 0.6]])
    else:
        model, x = _bn_pool(), torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    eps = 0.03
    y = int(model(x).argmax(1))
    res = exact_margin(model, x, y, eps)
    _attained(res)
    gen = torch.Generator().manual_seed(8)
    pts = (x + (2 * torch.rand(20_000, *x.shape[1:], generator=gen) - 1) * eps).clamp(0, 1)
    assert res.min_margin <= float(margin(model, pts, torch.full((20_000,), y)).min()) + 1e-6


def test_graph_and_graphnet_inputs_give_the_same_answer() -> None:
    from robustcert.graph import GraphNet, to_graph

    model = _conv(3)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    y = int(model(x).argmax(1))
    ref = exact_margin(model, x, y, 0.1)
    graph = to_graph(model, (1, 4, 4))
    for m in (graph, GraphNet(graph)):
        res = exact_margin(m, x, y, 0.1)
        assert res.status == ref.status and res.min_margin == pytest.approx(ref.min_margin, abs=1e-6)


def test_model_mode_restored() -> None:
    model = _mlp(0)
    model.train()
    exact_margin(model, torch.tensor([[0.5, 0.5]]), 0, 0.05)
    assert model.training


def test_sigmoid_model_is_refused_with_node_and_op() -> None:
    model = nn.Sequential(nn.Linear(2, 4), nn.Sigmoid(), nn.Linear(4, 3))
    with pytest.raises(RobustCertError, match=r"ReLU networks only.*(?i:sigmoid)"):
        exact_margin(model, torch.tensor([[0.5, 0.5]]), 0, 0.1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"y": 3}, "label"),
        ({"x": torch.rand(2, 2)}, "one example"),
        ({"x": torch.tensor([[float("nan"), 0.5]])}, "NaN"),
        ({"x": torch.tensor([[float("inf"), 0.5]])}, "inf values"),
        ({"x": torch.tensor([[1.5, 0.5]])}, r"\[0, 1\]"),
        ({"time_limit": 0}, "time_limit"),
        ({"x": None, "eps": None, "box": (torch.ones(1, 2), torch.zeros(1, 2))}, "lo must be <= hi"),
        ({"box": (torch.zeros(1, 2), torch.ones(1, 2))}, "not both"),
        ({"x": torch.rand(1, 3)}, "shape"),
    ],
)
def test_bad_input_raises(kwargs: dict, match: str) -> None:
    args = {"x": torch.tensor([[0.5, 0.5]]), "y": 0, "eps": 0.1}
    args.update(kwargs)
    with pytest.raises(RobustCertError, match=match):
        exact_margin(_mlp(0), **args)


# ---------------------------------------------------------------- solver output stays off stdout


def _noisy_milp(real):  # type: ignore[no-untyped-def]
    """scipy's milp, plus what a native solver might print: raw fd 1 writes and buffered C printf."""
    import ctypes
    import os

    def call(*args, **kwargs):  # type: ignore[no-untyped-def]
        os.write(1, b"raw fd-1 solver noise\n")
        ctypes.CDLL(None).printf(b"buffered C printf noise\n")
        return real(*args, **kwargs)

    return call


def test_solver_output_never_reaches_stdout(capfd, tmp_path, monkeypatch) -> None:
    from robustcert.exact import milp as milp_module

    model = _conv(1)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = int(model(x).argmax(1))
    print("before", flush=True)
    quiet = exact_margin(model, x, y, 0.08)
    out, _ = capfd.readouterr()
    assert out == "before\n"  # stdout written before the solve is kept, in order; the solve adds nothing

    log = tmp_path / "run" / "log.txt"
    logged = exact_margin(model, x, y, 0.08, log_path=log)
    assert capfd.readouterr()[0] == ""
    text = log.read_text()
    assert "HiGHS" in text and f"class {(y + 1) % 3} vs label {y}" in text
    assert logged.status == quiet.status and logged.min_margin == pytest.approx(quiet.min_margin, abs=1e-9)

    monkeypatch.setattr(milp_module, "milp", _noisy_milp(milp_module.milp))
    exact_margin(model, x, y, 0.08)
    exact_margins(model, torch.cat([x, x]), torch.tensor([y, y]), 0.08, log_path=log)
    assert capfd.readouterr()[0] == ""
    assert log.read_text().count("buffered C printf noise") == 2 * 2  # two examples, two classes each
    assert "raw fd-1 solver noise" in log.read_text()
