"""The typed result of parsing a VNN-LIB file: input boxes, each with a disjunction of output conjunctions.

Meaning (VNN-COMP's): the property is **violated** ("sat") if for some :class:`Case`, some
:class:`Conjunction` of that case and some input ``x`` in the case's box, ``C f(x) <= d`` holds row by
row; it holds ("unsat") if no such ``x`` exists.

Every number of the file is kept exactly (as a :class:`fractions.Fraction`) and rounded to float64 in
the direction that keeps each use sound:

* ``InputBox.lo``/``hi`` are rounded **outward** (the float box contains the real box: bounds computed
  over it cover every real input of the spec); ``lo_in``/``hi_in`` **inward** (a float point inside them
  lies in the real box: used to pick and check counterexamples).
* ``Conjunction.C`` is the nearest float64 to each exact coefficient and ``C_err`` bounds
  ``|C_exact − C|`` entrywise; ``d`` is rounded **up**. So ``(C_exact y)_i >= (C y)_i − (C_err |y|)_i``,
  and a proven ``(C y)_i − (C_err |y|)_i > d_i`` implies the exact row is violated for that output.
* :meth:`Conjunction.satisfied_by` checks a concrete output vector exactly, in rational arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

Row = tuple[tuple[tuple[int, Fraction], ...], Fraction]  # ((output index, coefficient), ...), d


def round_down(value: Fraction) -> float:
    """The largest float64 <= ``value``."""
    f = float(value)
    if math.isfinite(f) and Fraction(f) > value:
        f = math.nextafter(f, -math.inf)
    return f


def round_up(value: Fraction) -> float:
    """The smallest float64 >= ``value``."""
    f = float(value)
    if math.isfinite(f) and Fraction(f) < value:
        f = math.nextafter(f, math.inf)
    return f


@dataclass(frozen=True)
class Conjunction:
    """Rows ``C y <= d`` that must all hold for the property to be violated (see the module docstring for
    the rounding of ``C``, ``C_err`` and ``d``; ``rows`` are the exact rows, ``lines`` the file lines they
    come from). Zero rows means "any output": then every input of the box violates the property."""

    C: Tensor  # [R, K] float64
    C_err: Tensor  # [R, K] float64, >= |C_exact - C|
    d: Tensor  # [R] float64, >= d_exact
    rows: tuple[Row, ...]
    lines: tuple[int, ...]

    @property
    def num_rows(self) -> int:
        return len(self.rows)

    def satisfied_by(self, y: Sequence[float] | Tensor) -> bool:
        """True iff every exact row holds at the output vector ``y`` (floats, taken exactly)."""
        values = [Fraction(float(v)) for v in (y.reshape(-1).tolist() if isinstance(y, Tensor) else y)]
        for coeffs, d in self.rows:
            if sum((c * values[j] for j, c in coeffs), Fraction(0)) > d:
                return False
        return True


@dataclass(frozen=True)
class InputBox:
    """The input box of a case, flat (VNN-LIB's X_i is the i-th entry of the row-major input):
    ``lo``/``hi`` rounded outward, ``lo_in``/``hi_in`` inward (float64 tensors of length n)."""

    lo: Tensor
    hi: Tensor
    lo_in: Tensor
    hi_in: Tensor

    def contains(self, x: Tensor) -> bool:
        """True iff every entry of ``x`` (taken exactly) lies in the exact box."""
        v = x.detach().reshape(-1).to(torch.float64)
        return bool(((v >= self.lo_in) & (v <= self.hi_in)).all())


@dataclass(frozen=True)
class Case:
    """One input box and the disjunction of output conjunctions that violate the property inside it."""

    box: InputBox
    conjunctions: tuple[Conjunction, ...]


@dataclass(frozen=True)
class VnnSpec:
    """A parsed VNN-LIB file: ``num_inputs`` X variables, ``num_outputs`` Y variables, and the cases; the
    property is violated iff some case has an input in its box satisfying one of its conjunctions."""

    source: str
    num_inputs: int
    num_outputs: int
    cases: tuple[Case, ...]

    @property
    def num_pairs(self) -> int:
        """The number of (box, conjunction) sub-problems."""
        return sum(len(c.conjunctions) for c in self.cases)
