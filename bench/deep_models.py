"""The deep models of the benches, trained once and cached; shared by bench/bounds.py and bench/float_margins.py.

Models (on Fashion-MNIST when /usr/share/datasets/fashion-mnist exists — ``make fashion-mnist`` — else on
scikit-learn's 8x8 digits):

* ``mlp-6x256`` and ``mlp-9x200`` (ReLU MLPs), trained normally (``standard``) and with PGD (L-inf,
  7 steps, ``--pgd-eps``), both through ``robustcert.train.train_model`` / ``make_loss``;
* ``resnet-bn``: :class:`SmallResNet`, a small ResNet with BatchNorm and a max pool (conv-BN-ReLU stem,
  2x2 max pool, two residual blocks with BatchNorm — the second downsamples, with a 1x1 conv + BN
  shortcut — then a global average pool and a linear layer), trained normally.

Each run is cached under ``work/<data>-<arch>-<method>-e<epochs>`` (``model.pt``, ``train_state.pt``):
a finished run is loaded, an interrupted one resumes after its last epoch (bit for bit, see
``robustcert.train.loop``). The architectures are registered in the zoo's table for the benches only
(they are not zoo architectures), so the training loop can build them by name.

Also here: :func:`worst` (per example, the smallest margin bound ``min_{j != y} f_y - f_j`` of a method
under one rounding treatment, through ``robustcert.bounds.api._margins``, which takes the reference
treatments ``"none"`` and ``"legacy"`` as well as ``"float32"`` and ``"real"``),
:func:`worst_crown_alpha` (CROWN's and alpha-CROWN's from one computation of the intermediate bounds)
and :func:`pick_eps` (the grid eps at which a method without margin verifies a given share of the
correct examples). Used by ``bench/bounds.py --deep``, ``bench/float_margins.py`` and
``bench/margin_layers.py``; results in bench/results/bounds_deep.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

FASHION = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_WORK = Path(os.environ.get("TMPDIR", "/tmp")) / "robustcert-bench-deep"
MLPS = {"mlp-6x256": [256] * 6, "mlp-9x200": [200] * 9}
RESNET = "resnet-bn"
# (arch, training method): the bench's model list, in order
MODELS: tuple[tuple[str, str], ...] = (
    ("mlp-6x256", "standard"),
    ("mlp-6x256", "pgd"),
    ("mlp-9x200", "standard"),
    ("mlp-9x200", "pgd"),
    (RESNET, "standard"),
)
# eps grid for picking: 1e-5 .. 0.1, 8 steps per decade (ratio 1.33), two significant digits
EPS_GRID = tuple(float(f"{1e-5 * 10 ** (k / 8):.2g}") for k in range(33))
ROUNDINGS = (
    ("none", "no margin"),
    ("legacy", "legacy"),
    ("float32", "float32"),
    ("real", "real"),
)


class _Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the shortcut (identity, or 1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem conv 3x3 stride ``stem_stride`` (``width`` channels) + BN + ReLU, max pool 2x2,
    block(width -> width), block(width -> 2 width, stride 2), global average pool, linear. On 1x28x28
    with the defaults: 28x28 -> 14x14 (stem) -> 7x7 (max pool) -> 7x7 -> 4x4 -> 1x1."""

    def __init__(
        self, channels: int, num_classes: int, width: int = 8, spatial: int = 28, stem_stride: int = 2
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, stride=stem_stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.block1 = _Block(width, width, 1)
        self.block2 = _Block(width, 2 * width, 2)
        side = (((spatial - 1) // stem_stride + 1) // 2 - 1) // 2 + 1
        self.avg = nn.AvgPool2d(side)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn(self.stem(x))))
        x = self.block2(self.block1(x))
        return self.fc(self.flatten(self.avg(x)))


def register() -> None:
    """Add the bench architectures to the zoo's table (idempotent)."""
    from robustcert.models import zoo

    for name, widths in MLPS.items():
        zoo.ARCHITECTURES.setdefault(name, zoo._mlp(widths))
    zoo.ARCHITECTURES.setdefault(RESNET, lambda shape, k: [SmallResNet(shape[0], k, spatial=shape[1])])


def data() -> tuple[str, Any, Any]:
    """(name, train split, test split): Fashion-MNIST when installed, else digits."""
    from robustcert.data import load_dataset

    if FASHION.exists():
        return (
            "fashion-mnist",
            load_dataset("fashion-mnist", "train", FASHION),
            load_dataset("fashion-mnist", "test", FASHION),
        )
    return "digits", load_dataset("digits", "train"), load_dataset("digits", "test")


def train(
    arch: str, method: str, train_data: Any, test_data: Any, work: Path, epochs: int, pgd_eps: float
) -> tuple[nn.Module, float | None]:
    """The trained model (eval mode) and its clean test accuracy; trains, resumes or loads the cache."""
    from robustcert.train import train_model
    from robustcert.train.factory import make_loss

    register()
    loss, params = make_loss(method, eps=pgd_eps, norm="linf", pgd_steps=7)
    out = Path(work) / f"{train_data.name}-{arch}-{method}-e{epochs}"
    model, meta = train_model(
        arch=arch,
        train_data=train_data,
        test_data=test_data,
        loss=loss,
        method=method,
        method_params=params,
        out_dir=out,
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        seed=0,
        resume=(out / "train_state.pt").exists(),
        show_progress=False,
    )
    return model.eval(), meta.get("clean_accuracy")


def models(
    work: Path,
    epochs: int,
    pgd_epochs: int,
    pgd_eps: float,
    resnet_epochs: int,
    which: Sequence[tuple[str, str]] = MODELS,
) -> Iterator[tuple[str, str, nn.Module, float | None]]:
    """Yield (arch, method, model, clean accuracy) for each of ``which``, training what is not cached."""
    _, train_data, test_data = data()
    for arch, method in which:
        n = resnet_epochs if arch == RESNET else (pgd_epochs if method == "pgd" else epochs)
        model, acc = train(arch, method, train_data, test_data, work, n, pgd_eps)
        yield arch, method, model, acc


def worst(
    graph: Any,
    xs: torch.Tensor,
    ys: torch.Tensor,
    eps: float,
    rounding: str,
    method: str = "crown",
    batch: int = 60,
    alpha_steps: int = 20,
) -> torch.Tensor:
    """Per example, ``min_{j != y}`` of the certified lower bound of ``f_y - f_j`` (L-inf ball of radius
    ``eps``, intermediate bounds by CROWN for crown/alpha-crown) under ``rounding`` (one of
    ``robustcert.bounds.api.ROUNDINGS``)."""
    from robustcert.bounds import api

    out = []
    for s in range(0, len(ys), batch):
        m = api._margins(
            graph,
            xs[s : s + batch],
            ys[s : s + batch],
            eps,
            "linf",
            method,
            None,
            "crown",
            alpha_steps,
            0.1,
            rounding,
        )
        out.append(m.min(dim=1).values)
    return torch.cat(out)


def worst_crown_alpha(
    graph: Any,
    xs: torch.Tensor,
    ys: torch.Tensor,
    eps: float,
    rounding: str,
    batch: int = 60,
    alpha_steps: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`worst` of CROWN and of alpha-CROWN from ONE computation of the intermediate bounds.

    This is ``robustcert.bounds.api._margins`` for methods ``"crown"`` and ``"alpha-crown"`` written out
    (same plan, same intermediate CROWN bounds, same rounding scope, same legacy margin), sharing the
    intermediate bounds that both compute identically: alpha-CROWN keeps them fixed. The benches check
    on a few examples that the results equal the API's bit for bit."""
    from robustcert.bounds import alpha_crown, api, crown
    from robustcert.bounds._common import rounding_scope
    from robustcert.bounds._soundness import spec_tol
    from robustcert.graph.ops import numel

    out_c, out_a = [], []
    for s in range(0, len(ys), batch):
        plan = api._plan(graph, xs[s : s + batch], eps, "linf", "crown", None, "crown", rounding)
        g, inset, shapes, mags = plan.graph, plan.inset, plan.shapes, plan.mags
        k = numel(shapes[g.output])
        labels = api._labels(ys[s : s + batch], inset.batch, k)
        C = api.margin_spec(labels, k)
        with torch.no_grad(), rounding_scope(plan.rounding):
            ctx = api._intermediate(g, inset, shapes, mags, "crown")
            lb_c = crown.crown_lower(g, C, inset, ctx)
            rows = C.abs().sum(-1) > 0
            lb_a = alpha_crown.alpha_crown_lower(
                g, C, inset, ctx, steps=int(alpha_steps), lr=0.1, row_mask=rows
            )
            for lb, out in ((lb_c, out_c), (lb_a, out_a)):
                if mags is not None:
                    lb = lb - spec_tol(C, mags[g.output])
                out.append(lb.scatter(1, labels.unsqueeze(1), torch.inf).min(dim=1).values)
    return torch.cat(out_c), torch.cat(out_a)


def pick_eps(
    graph: Any,
    xs: torch.Tensor,
    ys: torch.Tensor,
    correct: torch.Tensor,
    n: int,
    targets: Sequence[float] = (0.5, 0.25),
    method: str = "crown",
    batch: int = 60,
) -> tuple[list[float], dict[float, float]]:
    """Grid eps (:data:`EPS_GRID`) at which ``method`` without any rounding margin verifies about each
    ``targets`` share of the correct examples among the first ``n``, and the shares evaluated.

    The share falls as eps grows, so each target is found by bisection on the grid (5 evaluations, the
    grid's ends are never evaluated); the picked eps is the one of the final bracket whose share is
    closest to the target."""
    sub = torch.arange(min(n, len(ys)))
    n_ok = max(int(correct[sub].sum()), 1)
    share: dict[float, float] = {}

    def at(i: int) -> float:
        eps = EPS_GRID[i]
        if eps not in share:
            w = worst(graph, xs[sub], ys[sub], eps, "none", method=method, batch=batch)
            share[eps] = int(((w > 0) & correct[sub]).sum()) / n_ok
        return share[eps]

    picked: list[float] = []
    for target in targets:
        # invariant: share(lo) >= target > share(hi), assumed at the grid's ends (never evaluated: the
        # largest eps makes CROWN slow)
        lo, hi = 0, len(EPS_GRID) - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if at(mid) >= target:
                lo = mid
            else:
                hi = mid
        ends = [i for i in (lo, hi) if EPS_GRID[i] in share]  # at least one: the last mid
        eps = min((EPS_GRID[i] for i in ends), key=lambda e: (abs(at(EPS_GRID.index(e)) - target), e))
        if eps not in picked:
            picked.append(eps)
    return picked, dict(sorted(share.items()))
