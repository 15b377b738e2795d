"""Certified training (IBP, CROWN-IBP, SABR, MTL-IBP; Shi et al.'s init and regularisers): the losses
against their definitions, the IBP loss never below the clean loss, a trained model's certified bounds
never beaten by PGD or sampling, exact resumption, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import one_error_line as _fail
from torch import nn

from robustcert.attacks import perturb_for_training, pgd
from robustcert.bounds import ibp_margin_lower as bounds_ibp_margin_lower
from robustcert.bounds import margin_lower
from robustcert.cli import main
from robustcert.data import load_dataset
from robustcert.errors import RobustCertError
from robustcert.models import build_model
from robustcert.train import LossContext, train_model
from robustcert.train.factory import LINF_ONLY, TRAIN_REGISTRY, make_loss
from robustcert.train.interval import ibp_margin_lower, interval_trace
from robustcert.train.losses_expressive import MTLIBPLoss, SABRLoss, sabr_box
from robustcert.train.warmup import ibp_init, relu_balance_loss, tightness_loss

pytestmark = pytest.mark.usefixtures("one_thread")

CERTIFIED = ("ibp", "crown-ibp", "sabr", "mtl-ibp")


def _ctx(progress: float = 1.0, seed: int = 0) -> LossContext:
    return LossContext(torch.Generator().manual_seed(seed), progress)


def _random_model(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, (1, 8, 8), 10, [0.3], [0.4])


# ---------------------------------------------------------------- interval bounds for training


@pytest.mark.parametrize("arch", ["mlp-2x64", "cnn-small"])
def test_training_ibp_equals_the_library_ibp_and_bounds_the_margin(arch: str) -> None:
    model = _random_model(arch, 1).double()
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    lo, hi = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    m = ibp_margin_lower(model, lo, hi, y)
    assert torch.equal(m.gather(1, y.view(-1, 1)), torch.zeros(16, 1, dtype=m.dtype))
    ref = bounds_ibp_margin_lower(model, lo, hi, y)
    assert torch.allclose(m, ref, rtol=1e-9, atol=1e-9)
    for k in range(20):  # every point of the box has a margin >= the bound
        u = torch.rand(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(10 + k))
        z = model(lo + u * (hi - lo))
        margins = z.gather(1, y.view(-1, 1)) - z
        assert bool((margins >= m - 1e-9).all())


def test_unsupported_models_are_refused_with_one_line() -> None:
    with pytest.raises(RobustCertError, match="cannot bound layer Tanh"):
        interval_trace(
            nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)),
            torch.zeros(1, 4),
            torch.ones(1, 4),
        )
    with pytest.raises(RobustCertError, match="ends with a Linear layer"):
        interval_trace(
            nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU()), torch.zeros(1, 4), torch.ones(1, 4)
        )


# ---------------------------------------------------------------- the IBP loss is never below the clean loss


@pytest.mark.parametrize("arch", ["mlp-2x64", "cnn-small"])
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_bound_loss_is_never_below_the_clean_loss(arch: str, method: str, seed: int) -> None:
    model = _random_model(arch, seed)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.rand(32, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (32,), generator=g)
    clean = float(F.cross_entropy(model(x), y).detach())
    for eps in (1e-4, 0.01, 0.1, 0.3):
        for kappa_end, progress in ((0.0, 1.0), (0.5, 1.0), (0.0, 0.3)):  # 0.3: mid-ramp, beta > 0
            loss, _ = make_loss(method, eps=eps, kappa_end=kappa_end, ramp_start=0.1, ramp_end=0.5)
            value = float(loss(model, x, y, _ctx(progress)).detach())
            assert value >= clean - 1e-6 * max(1.0, abs(clean)), (eps, kappa_end, progress)
    # and strictly above it once eps > 0 and the robust term has weight
    loss, _ = make_loss(method, eps=0.1, kappa_end=0.0)
    assert float(loss(model, x, y, _ctx(1.0))) > clean


def test_before_the_ramp_the_loss_is_the_clean_loss() -> None:
    model = _random_model("mlp-2x64", 0)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    for method in CERTIFIED:
        loss, _ = make_loss(method, eps=0.1, ramp_start=0.2, ramp_end=0.6, shi_reg=0.5)
        assert torch.equal(loss(model, x, y, _ctx(0.2)), F.cross_entropy(model(x), y))


# ---------------------------------------------------------------- SABR and MTL-IBP on hand-made cases


def _linear(weight: list[list[float]], bias: list[float]) -> nn.Module:
    layer = nn.Linear(2, len(bias))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return nn.Sequential(nn.Flatten(), layer)


def test_sabr_loss_equals_its_definition_on_a_hand_made_case() -> None:
    # two classes, f0 - f1 = 2·x0 - 3·x1 + 0.5; the cross-entropy grows along (-1, +1) everywhere, so PGD
    # ends at the corner x + eps·(-1, +1) = (0.3, 0.7). tau = lambda·eps = 0.05: the box centre is that
    # corner projected onto [x - eps + tau, x + eps - tau] = (0.35, 0.65), the box [0.30, 0.40] x [0.60, 0.70],
    # on which the margin's minimum is 2·0.30 - 3·0.70 + 0.5 = -1.0: loss = log(1 + e^1).
    model = _linear([[1.0, -2.0], [-1.0, 1.0]], [0.5, 0.0])
    x, y = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    loss = SABRLoss(0.2, sabr_lambda=0.25, pgd_steps=10, ramp_start=0.0, ramp_end=0.0)
    assert loss.params()["kappa_end"] == 0.0
    value = float(loss(model, x, y, _ctx(1.0)))
    assert value == pytest.approx(math.log1p(math.e), rel=1e-5)
    lo, hi = sabr_box(x, torch.tensor([[0.3, 0.7]]), 0.2, 0.25)
    assert torch.allclose(lo, torch.tensor([[0.30, 0.60]])) and torch.allclose(
        hi, torch.tensor([[0.40, 0.70]])
    )
    # lambda = 1 is IBP on the whole ball: the box is [0.3, 0.7]^2, minimum 0.6 - 2.1 + 0.5 = -1.0 as well
    lo, hi = sabr_box(x, torch.tensor([[0.31, 0.52]]), 0.2, 1.0)
    assert torch.allclose(lo, torch.tensor([[0.3, 0.3]])) and torch.allclose(hi, torch.tensor([[0.7, 0.7]]))


def test_sabr_box_stays_inside_the_ball_and_the_domain() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4, generator=g)
    x_adv = (x + (2 * torch.rand(x.shape, generator=g) - 1) * 0.1).clamp(0, 1)
    for lam in (0.1, 0.4, 1.0):
        lo, hi = sabr_box(x, x_adv, 0.1, lam)
        assert bool((lo >= (x - 0.1 - 1e-7)).all()) and bool((hi <= x + 0.1 + 1e-7).all())
        assert bool((lo >= 0).all()) and bool((hi <= 1).all()) and bool((lo <= hi).all())
        assert bool(((hi - lo) <= 2 * lam * 0.1 + 1e-7).all())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mtl_ibp_loss_equals_its_definition_on_a_hand_made_case(alpha: float) -> None:
    # three classes; over the ball [0.4, 0.6]^2 the IBP margin bounds are, by hand,
    # f0 - f1 = 2·x0 - 3·x1 + 0.5 >= -0.5 (at (0.4, 0.6)) and f0 - f2 = -x0 - 3·x1 + 1.5 >= -0.9 (at (0.6, 0.6))
    model = _linear([[1.0, -2.0], [-1.0, 1.0], [2.0, 1.0]], [0.5, 0.0, -1.0])
    x, y = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    ibp_ce = math.log(1 + math.exp(0.5) + math.exp(0.9))
    x_adv = perturb_for_training(model, x, y, eps=0.1, steps=5, generator=torch.Generator().manual_seed(7))
    adv_ce = float(F.cross_entropy(model(x_adv), y))
    loss = MTLIBPLoss(0.1, mtl_alpha=alpha, pgd_steps=5, ramp_start=0.0, ramp_end=0.0)
    value = float(loss(model, x, y, _ctx(1.0, seed=7)))
    assert value == pytest.approx(alpha * ibp_ce + (1 - alpha) * adv_ce, rel=1e-5)
    assert adv_ce < ibp_ce  # the case does tell the two terms apart


# ---------------------------------------------------------------- Shi et al.: initialisation and regularisers


def test_ibp_init_draws_hidden_layers_with_std_sqrt_2pi_over_fan_in() -> None:
    torch.manual_seed(0)
    model = build_model("cnn-small", (1, 28, 28), 10)
    last_before = model[-1].weight.clone()
    assert ibp_init(model, torch.Generator().manual_seed(1)) == 3  # conv, conv, fc; not the classifier
    for layer, fan_in in ((model[1], 16), (model[3], 16 * 16), (model[6], 32 * 7 * 7)):
        std = float(layer.weight.std())
        assert std == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.1)
    assert torch.equal(model[-1].weight, last_before)


@pytest.mark.parametrize("arch", ["mlp-2x256", "cnn-small"])
def test_ibp_init_keeps_interval_widths_about_constant(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, (1, 28, 28), 10, [0.3], [0.4])
    x = torch.rand(64, 1, 28, 28)
    box = ((x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1))

    def growth() -> list[float]:  # mean half-width at each ReLU over that of the (normalised) input box
        trace = interval_trace(model, *box)
        first = float((trace.first_in[1] - trace.first_in[0]).mean())
        return [float((u - lo).mean()) / first for lo, u in trace.pre_relu]

    default = growth()
    ibp_init(model)
    ratios = growth()
    assert all(0.25 < r < 4 for r in ratios), ratios  # about 1 per layer (the derivation's expectation)
    assert max(default) > 2 * max(ratios)  # the default initialisation lets them grow


def test_warmup_regularisers_follow_their_definitions() -> None:
    lo1, up1 = torch.tensor([[-1.0, 0.5, -3.0, 1.0]]), torch.tensor([[1.0, 1.5, -1.0, 3.0]])
    box = (torch.zeros(1, 2), torch.ones(1, 2))
    trace = interval_trace(_linear([[1.0, 0.0]], [0.0]), *box)._replace(first_in=box, pre_relu=[(lo1, up1)])
    # input half-width 0.5, layer mean half-width (1 + 0.5 + 1 + 1)/4 = 0.875: tightness 0.5/0.875 = 4/7
    tol = 0.9
    expected = max(0.0, tol - 0.5 / 0.875) / tol
    assert float(tightness_loss(trace, tol)) == pytest.approx(expected, rel=1e-6)
    assert float(tightness_loss(trace, 0.5)) == 0.0
    # centres (0, 1, -2, 2): active (l > 0): 1 and 2; inactive (u < 0): -2. mean over all 4 neurons:
    # active 3/4, inactive -2/4 -> ratio min(1.5, 1/1.5) = 2/3; squared deviations from the mean 0.25:
    # active (0.75² + 1.75²) = 3.625, inactive 2.25² = 5.0625 -> ratio 3.625/5.0625
    r_mean, r_var = 2 / 3, 3.625 / 5.0625
    expected = (max(0.0, tol - r_mean) + max(0.0, tol - r_var)) / tol
    assert float(relu_balance_loss(trace, tol)) == pytest.approx(expected, rel=1e-6)
    assert float(relu_balance_loss(trace, 0.5)) == 0.0  # both ratios above the tolerance


def test_the_regulariser_adds_only_during_the_ramp() -> None:
    model = _random_model("cnn-small", 0)
    x, y = torch.rand(16, 1, 8, 8), torch.arange(16) % 10
    plain, _ = make_loss("ibp", eps=0.1, ramp_start=0.1, ramp_end=0.5)
    reg, _ = make_loss("ibp", eps=0.1, ramp_start=0.1, ramp_end=0.5, shi_reg=1.0)
    assert float(reg(model, x, y, _ctx(0.3))) > float(plain(model, x, y, _ctx(0.3)))
    assert float(reg(model, x, y, _ctx(0.5))) == float(plain(model, x, y, _ctx(0.5)))


# ---------------------------------------------------------------- a trained model's certificates are sound


@pytest.fixture(scope="module")
def ibp_trained(tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    loss, params = make_loss(
        "ibp", eps=0.05, ibp_init=True, shi_reg=0.5, schedule="smooth", ramp_start=0.05, ramp_end=0.5
    )
    model, meta = train_model(
        arch="cnn-small",
        train_data=load_dataset("digits", "train"),
        test_data=load_dataset("digits", "test"),
        loss=loss,
        method="ibp",
        method_params=params,
        out_dir=tmp_path_factory.mktemp("ibp"),
        epochs=12,
        lr=3e-3,
        grad_clip=10.0,
        show_progress=False,
    )
    assert meta["clean_accuracy"] > 0.6
    return model


@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_certified_bounds_of_an_ibp_trained_model_are_never_beaten(
    ibp_trained: nn.Module, method: str
) -> None:
    data = load_dataset("digits", "test").subset(list(range(60)))
    x, y, eps = data.x, data.y, 0.05
    bound = margin_lower(ibp_trained, x, y, eps=eps, method=method)  # float64, compared in float64
    verified = (bound > 0).all(dim=1)
    assert float(verified.float().mean()) >= 0.5  # the training did produce certificates to check (~0.7-0.8)

    def margins(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = ibp_trained(points)
        return (z.gather(1, y.view(-1, 1)) - z).double()  # the float32 margins, exactly

    # PGD (margin objective, several restarts) and uniform samples and corners of the ball ∩ [0, 1]
    candidates = [pgd(ibp_trained, x, y, eps=eps, steps=40, restarts=3, seed=1)]
    g = torch.Generator().manual_seed(5)
    for _ in range(100):
        candidates.append((x + (2 * torch.rand(x.shape, generator=g) - 1) * eps).clamp(0, 1))
    for _ in range(20):
        sign = torch.randint(0, 2, x.shape, generator=g) * 2 - 1
        candidates.append((x + sign * eps).clamp(0, 1))
    for point in candidates:
        assert bool(((point - x).abs() <= eps + 1e-7).all())
        m = margins(point)
        off = torch.ones_like(m, dtype=torch.bool).scatter(1, y.view(-1, 1), False)
        assert bool((m[off] >= bound[off]).all()), float((m - bound)[off].min())
        assert bool((m.masked_fill(~off, 1.0)[verified] > 0).all())  # no verified example is broken


# ---------------------------------------------------------------- resumption


_RESUME_LOSS = dict(
    eps=0.05, pgd_steps=3, ibp_init=True, shi_reg=0.5, schedule="smooth", ramp_start=0.1, ramp_end=0.9
)


def _train(out: Path, method: str, resume: bool = False, loss=None):  # type: ignore[no-untyped-def]
    built, params = make_loss(method, **_RESUME_LOSS)
    return train_model(
        arch="mlp-2x64",
        train_data=load_dataset("digits", "train").subset(list(range(256))),
        test_data=None,
        loss=loss or built,
        method=method,
        method_params=params,
        out_dir=out,
        epochs=3,
        seed=11,
        resume=resume,
        grad_clip=1.0,
        show_progress=False,
    )


@pytest.mark.parametrize("method", CERTIFIED)
def test_resume_after_an_interruption_gives_the_same_weights(tmp_path: Path, method: str) -> None:
    full, meta_full = _train(tmp_path / "full", method)
    steps_per_epoch = 256 // 64
    inner, _ = make_loss(method, **_RESUME_LOSS)
    calls = {"n": 0}

    def crashing(model, x, y, ctx):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch + 1:  # killed in the middle of the third epoch
            raise KeyboardInterrupt
        return inner(model, x, y, ctx)

    crashing.initialize = inner.initialize  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "cut", method, loss=crashing)
    resumed, meta = _train(tmp_path / "cut", method, resume=True)
    assert meta["epochs_done"] == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert meta["train"] == meta_full["train"] and meta["train"]["grad_clip"] == 1.0
    assert meta["train"]["ibp_init"] is True and meta["train"]["schedule"] == "smooth"


# ---------------------------------------------------------------- registry and bad input


def test_each_certified_method_is_one_registry_entry() -> None:
    for name in CERTIFIED:
        entry = TRAIN_REGISTRY[name]
        assert entry.name == name and entry.summary and name in LINF_ONLY
        loss, params = make_loss(name, eps=0.2)  # eps_train may exceed any certified eps
        assert params["eps"] == 0.2 and params["norm"] == "linf"
        assert {"schedule", "ramp_start", "ramp_end", "kappa_end", "ibp_init", "shi_reg"} <= set(params)


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--method", "ibp", "--norm", "l2"], "--method ibp trains against L∞ balls only, not l2"),
        (["--method", "sabr", "--norm", "l2"], "--method sabr trains against L∞ balls only"),
        (["--method", "mtl-ibp", "--norm", "l2"], "--method mtl-ibp trains against L∞ balls only"),
        (["--method", "ibp", "--eps-train", "-0.1"], "--eps-train .*must be a finite number >= 0, got -0.1"),
        (["--method", "ibp", "--ramp-start", "0.6", "--ramp-end", "0.2"], "ends .* before it starts"),
        (["--method", "ibp", "--schedule", "cosine"], "unknown --schedule 'cosine'"),
        (["--method", "ibp-fast"], "unknown training method 'ibp-fast'; choose one of: .*sabr, mtl-ibp"),
    ],
)
def test_bad_training_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], pattern: str
) -> None:
    err = _fail(
        ["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "m"), *extra], capsys
    )
    assert re.search(pattern, err), err
    assert not (tmp_path / "m").exists()


def test_the_train_cli_records_the_command_and_the_schedule(tmp_path: Path) -> None:
    out = tmp_path / "m"
    args = [
        "train",
        "--arch",
        "mlp-2x64",
        "--method",
        "ibp",
        "--eps-train",
        "0.06",
        "--ibp-init",
        "--shi-reg",
        "0.5",
        "--schedule",
        "smooth",
        "--ramp-start",
        "0.2",
        "--ramp-end",
        "0.6",
        "--grad-clip",
        "5",
        "--epochs",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    meta = json.loads((out / "model.json").read_text())
    train = meta["train"]
    assert train["eps"] == 0.06 and train["ibp_init"] is True and train["shi_reg"] == 0.5
    assert (train["schedule"], train["ramp_start"], train["ramp_end"], train["kappa_end"]) == (
        "smooth",
        0.2,
        0.6,
        0.5,
    )
    assert train["grad_clip"] == 5.0
    assert meta["command"].startswith("robustcert train ") and "--ibp-init" in meta["command"]
    assert "--eps=0.06" in meta["command"] and "--schedule=smooth" in meta["command"]
