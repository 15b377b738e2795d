"""VNN-LIB formulas → linear atoms in disjunctive normal form, in exact rational arithmetic.

Terms: numbers, declared variables ``X_i`` / ``Y_j``, ``(+ t ...)``, ``(- t)``, ``(- t t ...)`` and
``(* t ...)`` with at most one non-constant factor. Formulas: ``(<= t t)``, ``(>= t t)``, ``(and f ...)``,
``(or f ...)``. Anything else raises :class:`RobustCertError` naming the line and the construct.
Each comparison becomes an :class:`Atom` ``sum_v a_v v + b <= 0``; :func:`to_dnf` returns a list of
conjunctions (lists of atoms) whose disjunction is equivalent to the formula.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from robustcert.errors import RobustCertError
from robustcert.vnnlib.sexpr import Atom as SAtom
from robustcert.vnnlib.sexpr import SExpr, SList

SUPPORTED = "VNN-LIB specs may use declare-const, assert, and, or, <=, >=, +, -, *"
MAX_DISJUNCTS = 100_000
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

Var = tuple[str, int]  # ("X", i) or ("Y", j)


@dataclass(frozen=True)
class Linear:
    """``sum coeffs[v] * v + const``, exactly."""

    coeffs: dict[Var, Fraction]
    const: Fraction

    def scaled(self, k: Fraction) -> Linear:
        return Linear({v: k * c for v, c in self.coeffs.items() if k * c != 0}, k * self.const)

    def plus(self, other: Linear) -> Linear:
        out = dict(self.coeffs)
        for v, c in other.coeffs.items():
            s = out.get(v, Fraction(0)) + c
            if s == 0:
                out.pop(v, None)
            else:
                out[v] = s
        return Linear(out, self.const + other.const)


@dataclass(frozen=True)
class Atom:
    """The constraint ``expr <= 0`` from file line ``line``."""

    expr: Linear
    line: int


def unsupported(where: str, line: int, construct: str) -> RobustCertError:
    return RobustCertError(f"{where} line {line}: unsupported construct {construct!r}; {SUPPORTED}")


def number(text: str) -> Fraction | None:
    """The exact value of a decimal literal, or None if ``text`` is not one."""
    return Fraction(text) if _NUMBER.match(text) else None


class FormulaReader:
    """Turns term and formula s-expressions into linear atoms; ``lookup`` resolves a symbol to a declared
    variable (or raises)."""

    def __init__(self, where: str, lookup: Callable[[str, int], Var]) -> None:
        self.where = where
        self.lookup = lookup

    def term(self, e: SExpr) -> Linear:
        if isinstance(e, SAtom):
            value = number(e.text)
            if value is not None:
                return Linear({}, value)
            return Linear({self.lookup(e.text, e.line): Fraction(1)}, Fraction(0))
        head, args = self._head(e)
        if head == "+" and args:
            out = Linear({}, Fraction(0))
            for a in args:
                out = out.plus(self.term(a))
            return out
        if head == "-" and args:
            first = self.term(args[0])
            if len(args) == 1:
                return first.scaled(Fraction(-1))
            for a in args[1:]:
                first = first.plus(self.term(a).scaled(Fraction(-1)))
            return first
        if head == "*" and args:
            out = Linear({}, Fraction(1))
            for a in args:
                t = self.term(a)
                if t.coeffs and out.coeffs:
                    raise RobustCertError(
                        f"{self.where} line {e.line}: '*' multiplies two variables; VNN-LIB output constraints "
                        "must be linear (multiply a variable by a number only)"
                    )
                out = t.scaled(out.const) if t.coeffs else out.scaled(t.const)
            return out
        raise unsupported(self.where, e.line, head)

    def _head(self, e: SList) -> tuple[str, tuple[SExpr, ...]]:
        if not e.items or not isinstance(e.items[0], SAtom):
            raise RobustCertError(f"{self.where} line {e.line}: expected an operator after '('; {SUPPORTED}")
        return e.items[0].text, e.items[1:]

    def to_dnf(self, e: SExpr) -> list[list[Atom]]:
        """Conjunctions of atoms whose disjunction is equivalent to the formula ``e``."""
        if isinstance(e, SAtom):
            raise RobustCertError(
                f"{self.where} line {e.line}: expected a constraint such as (<= X_0 1.0), got {e.text!r}"
            )
        head, args = self._head(e)
        if head in ("<=", ">="):
            if len(args) != 2:
                raise RobustCertError(
                    f"{self.where} line {e.line}: '{head}' takes exactly two terms, got {len(args)}"
                )
            diff = self.term(args[0]).plus(self.term(args[1]).scaled(Fraction(-1)))
            return [[Atom(diff if head == "<=" else diff.scaled(Fraction(-1)), e.line)]]
        if head == "or" and args:
            out: list[list[Atom]] = []
            for a in args:
                out.extend(self.to_dnf(a))
                self._check_size(len(out), e.line)
            return out
        if head == "and" and args:
            acc: list[list[Atom]] = [[]]
            for a in args:
                part = self.to_dnf(a)
                self._check_size(len(acc) * len(part), e.line)
                if len(acc) == 1 and len(part) == 1:
                    acc[0].extend(part[0])  # the common case: lists built here, owned by no one else
                else:
                    acc = [x + y for x in acc for y in part]
            return acc
        raise unsupported(self.where, e.line, head)

    def _check_size(self, n: int, line: int) -> None:
        if n > MAX_DISJUNCTS:
            raise RobustCertError(
                f"{self.where} line {line}: the specification expands to more than {MAX_DISJUNCTS} cases "
                "(disjunctions inside conjunctions); split it into several VNN-LIB files"
            )
