"""eval_mode: every submodule in eval inside the block, each module's own flag restored after it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from robustcert.models.modes import eval_mode


def _mixed_model() -> nn.Module:
    """A model whose submodules are in different modes (a frozen BatchNorm / a training Dropout)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5)),
        nn.Linear(5, 3),
    )
    model.train()
    model[2].eval()  # frozen statistics
    model[4][1].eval()
    model[5].eval()
    return model


def _flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_mixed_modes_are_restored_exactly() -> None:
    model = _mixed_model()
    before = _flags(model)
    assert len(set(before)) == 2  # really mixed
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(_flags(model))
    assert _flags(model) == before


def test_mixed_modes_are_restored_after_an_exception() -> None:
    model = _mixed_model()
    before = _flags(model)
    with pytest.raises(ValueError, match="boom"), eval_mode(model):
        assert not any(_flags(model))
        raise ValueError("boom")
    assert _flags(model) == before


def test_nested_blocks_restore_the_outer_state() -> None:
    model = _mixed_model()
    before = _flags(model)
    with eval_mode(model):
        with eval_mode(model[4]):
            assert not any(_flags(model))
        assert not any(_flags(model))
    assert _flags(model) == before


def _call_sites() -> list[tuple[str, Callable[[nn.Module, torch.Tensor], object]]]:
    from robustcert.attacks import margin, pgd
    from robustcert.bounds import margin_lower
    from robustcert.exact import exact_margin
    from robustcert.graph import graph_from_module
    from robustcert.smoothing import SmoothedClassifier

    y = torch.tensor([0])
    return [
        ("pgd", lambda m, x: pgd(m, x, y, 0.05, steps=2, restarts=1)),
        ("margin", lambda m, x: margin(m, x, y)),
        ("graph", lambda m, x: graph_from_module(m, (1, 2, 2))),
        ("bounds", lambda m, x: margin_lower(m, x, y, eps=0.05)),
        ("exact", lambda m, x: exact_margin(m, x, y, eps=0.05, time_limit=10)),
        ("smoothing", lambda m, x: SmoothedClassifier(m, 0.25, 3).predict(x[0], n=20, batch_size=20)),
    ]


@pytest.mark.parametrize("name", [n for n, _ in _call_sites()])
def test_every_caller_restores_mixed_modes(name: str) -> None:
    fn = dict(_call_sites())[name]
    model = _mixed_model()
    model[2].running_var.fill_(1.5)  # statistics that are not the defaults
    before = _flags(model)
    fn(model, torch.full((1, 1, 2, 2), 0.5))
    assert _flags(model) == before
