"""Stable seeds. Every random draw in robustcert comes from a generator seeded here, so results depend
only on the seeds a user gives (and, in a run, on each example's index), never on order or sharding."""

from __future__ import annotations

import numbers

import numpy as np

from robustcert.errors import RobustCertError


def _nonneg_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise RobustCertError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def derived_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (numpy's SeedSequence hash, fixed across platforms)."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1
    )


def example_seed(run_seed: int, index: int) -> int:
    """The seed of one example's randomness in a run: a stable hash of (run seed, example index)."""
    ss = np.random.SeedSequence(
        [_nonneg_int(run_seed, "run seed") & 0xFFFFFFFF, _nonneg_int(index, "index") & 0xFFFFFFFF, 0x5EED]
    )
    return int(ss.generate_state(1, np.uint64)[0] >> 1)
