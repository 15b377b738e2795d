"""Stable seeds: the one seeding scheme of robustcert.

Every random draw in robustcert comes from a generator seeded here, so results depend only on the seeds a
user gives (and, in a run, on each example's index), never on order or sharding.

* :func:`derived_seed` hashes any number of non-negative integers of *any* size into a 64-bit seed
  (``0 <= seed < 2**64``). Every bit of every part counts: the parts are encoded injectively (each as its
  number of 32-bit words followed by the words) and hashed by numpy's ``SeedSequence``, whose output is
  fixed across platforms and numpy versions. Distinct part tuples give distinct seeds except for 64-bit
  hash collisions.
* :func:`example_seed` is the seed of one example of a run: ``derived_seed`` of (a domain word, run seed,
  example index), so it never coincides with a sub-stream seed built by ``derived_seed`` from the same
  numbers.
* :func:`torch_generator` is how a seed becomes a ``torch.Generator``. torch's CPU generator (mt19937)
  only uses the low 32 bits of ``manual_seed``'s argument, so the seed is hashed first: every bit of it
  changes the stream (there are still at most 2**32 distinct CPU streams — a limit of torch, not of the
  seeds). Use it instead of ``torch.Generator().manual_seed(seed)``.

A numpy ``Generator`` can take these seeds directly (``np.random.default_rng(seed)`` uses every bit).
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from robustcert.errors import RobustCertError

#: Recorded in every run.json: a run whose rows were drawn under another scheme is not resumed.
SCHEME = "robustcert-seeding/2 (64-bit SeedSequence)"
_EXAMPLE_DOMAIN = 0x5EED_E4A3  # keeps example seeds apart from derived_seed(run_seed, index)
_TORCH_DOMAIN = 0x7043_6A5E


def check_seed(value: object, name: str = "seed") -> int:
    """``value`` as an int when it is a non-negative integer (of any size); else RobustCertError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise RobustCertError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _words(value: int) -> list[int]:
    """``value`` as its number of 32-bit words followed by the words, least significant first.

    The encoding is prefix-free, so a tuple of parts maps to one word list and back (no two tuples share
    one, even after SeedSequence's zero padding: every part starts with a non-zero length word)."""
    words = [(value >> shift) & 0xFFFFFFFF for shift in range(0, max(value.bit_length(), 1), 32)]
    return [len(words), *words]


def derived_seed(*parts: int) -> int:
    """A stable 64-bit seed (``0 <= seed < 2**64``) from non-negative integers of any size.

    Guarantee: the same parts always give the same seed, on every platform; parts differing in any bit
    (above bit 32 included) give different seeds except for 64-bit hash collisions. Raises
    RobustCertError for a negative or non-integer part.
    """
    entropy: list[int] = []
    for k, part in enumerate(parts):
        entropy.extend(_words(check_seed(part, f"seed part {k}")))
    state = np.random.SeedSequence(np.asarray(entropy, dtype=np.uint32)).generate_state(1, np.uint64)
    return int(state[0])


def example_seed(run_seed: int, index: int) -> int:
    """The 64-bit seed of one example's randomness in a run: a stable hash of (run seed, example index).

    Every bit of both counts (no truncation); see :func:`derived_seed` for the guarantee."""
    return derived_seed(_EXAMPLE_DOMAIN, check_seed(run_seed, "run seed"), check_seed(index, "example index"))


def torch_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (default CPU) whose stream is a function of every bit of
    ``seed`` (any non-negative integer): it is seeded with ``derived_seed(domain, seed)``, because the CPU
    generator would otherwise ignore all but the low 32 bits of ``seed``."""
    gen = torch.Generator(device=device if device is not None else "cpu")
    gen.manual_seed(derived_seed(_TORCH_DOMAIN, check_seed(seed, "seed")))
    return gen
