"""The one seeding scheme: 64-bit, every bit of every part counts, stable across calls and releases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from robustcert.errors import RobustCertError
from robustcert.seeding import check_seed, derived_seed, example_seed, torch_generator

HIGH = 2**32  # a difference only above bit 32


def test_example_seed_is_stable_distinct_and_64_bit() -> None:
    assert example_seed(0, 0) == example_seed(0, 0)
    values = {example_seed(7, i) for i in range(4000)}
    assert len(values) == 4000
    assert all(0 <= v < 2**64 for v in values)
    assert any(v >= 2**63 for v in values)  # the top bit is used: full 64-bit seeds
    assert example_seed(1, 5) != example_seed(5, 1)
    assert example_seed(0, 1) != example_seed(1, 0)
    assert example_seed(3, 4) != derived_seed(3, 4)  # example seeds have their own domain
    # Pinned: changing these changes every run's randomness (sharded / resumed runs would diverge).
    assert example_seed(0, 0) == 16144322192883622720
    assert example_seed(12345, 678) == 15675797142074719511
    assert derived_seed(3, 2**40) == 6705421440467557607


@pytest.mark.parametrize(("a", "b"), [((5, 9), (5 + HIGH, 9)), ((5, 9), (5, 9 + HIGH)), ((1,), (1 + 2**63,))])
def test_parts_differing_only_above_bit_32_give_different_seeds(
    a: tuple[int, ...], b: tuple[int, ...]
) -> None:
    assert derived_seed(*a) != derived_seed(*b)
    if len(a) == 2:
        assert example_seed(*a) != example_seed(*b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((HIGH,), (0, 1)),  # naive word concatenation would give [0, 1] for both
        ((1,), (1, 0)),  # SeedSequence pads its pool with zeros
        ((0,), ()),
        ((2**64 + 7,), (7, 1)),
    ],
)
def test_the_encoding_of_parts_is_injective(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    assert derived_seed(*a) != derived_seed(*b)


def test_streams_differ_when_seeds_differ_only_above_bit_32() -> None:
    for seed in (5, example_seed(0, 3)):
        other = seed ^ (1 << 40)
        a = torch.rand(8, generator=torch_generator(seed))
        b = torch.rand(8, generator=torch_generator(other))
        assert not torch.equal(a, b)
        assert torch.equal(a, torch.rand(8, generator=torch_generator(seed)))  # stable
        n1, n2 = np.random.default_rng(seed).random(8), np.random.default_rng(other).random(8)
        assert not np.array_equal(n1, n2)
    # the torch CPU generator itself ignores the high bits: the reason torch_generator hashes the seed
    raw = [torch.rand(4, generator=torch.Generator().manual_seed(s)) for s in (5, 5 + HIGH)]
    assert torch.equal(raw[0], raw[1])


class _Bowl(nn.Module):
    """Two logits: ``1 - 100 ||x - 0.5||^2`` and 0; the margin of class 0 peaks at x = 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = 1 - 100 * ((x - 0.5) ** 2).flatten(1).sum(1)
        return torch.stack([f0, torch.zeros_like(f0)], dim=1)


def test_pgd_and_smoothing_streams_use_the_high_bits() -> None:
    from robustcert.attacks import pgd
    from robustcert.smoothing import SmoothedClassifier

    x = torch.full((1, 1, 2, 2), 0.5)
    y = torch.tensor([0])
    # the margin is largest at x itself, so with steps=0 PGD returns its one random start
    starts = [pgd(_Bowl(), x, y, 0.1, steps=0, restarts=1, seed=[s]) for s in (11, 11 + HIGH)]
    assert not torch.equal(starts[0], x) and not torch.equal(starts[0], starts[1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    smoothed = SmoothedClassifier(model, 2.0, 2)  # noise large enough that votes split
    counts = [smoothed.sample_counts(x[0], 400, seed=s) for s in (11, 11 + HIGH)]
    assert counts[0] != counts[1]
    assert counts[0] == smoothed.sample_counts(x[0], 400, seed=11)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3", None])
def test_bad_seeds_are_refused(bad: object) -> None:
    with pytest.raises(RobustCertError, match="non-negative integer"):
        check_seed(bad)
    with pytest.raises(RobustCertError, match="non-negative integer"):
        derived_seed(1, bad)  # type: ignore[arg-type]
    with pytest.raises(RobustCertError, match="non-negative integer"):
        torch_generator(bad)  # type: ignore[arg-type]
    with pytest.raises(RobustCertError, match="run seed must be a non-negative integer"):
        example_seed(bad, 0)  # type: ignore[arg-type]
    with pytest.raises(RobustCertError, match="example index must be a non-negative integer"):
        example_seed(0, bad)  # type: ignore[arg-type]
