"""Read a VNN-LIB 1.0 file (the VNN-COMP format) into a :class:`~robustcert.vnnlib.spec.VnnSpec`.

Accepted: ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)`` (inputs X_0..X_{n-1} of the
row-major flattened model input, outputs Y_0..Y_{k-1}), and ``(assert F)`` where F is built from
``and``, ``or``, ``<=`` and ``>=`` over terms linear in the variables (numbers, ``+``, ``-``, ``*`` by a
number). All asserts hold together. After expansion into a disjunction of conjunctions, every
conjunction must bound each X_i from both sides with single-input constraints (``(<= X_i c)``,
``(>= c X_i)``, ``(<= (* 2 X_i) c)``, …) and constrain the outputs linearly; constraints mixing inputs and
outputs, or several inputs, are refused. Conjunctions over the same input box are grouped into one
:class:`Case`; a conjunction whose box is empty or that contains a false constant comparison can never
hold and is dropped. Errors are :class:`RobustCertError` naming the file, the line and the construct.
No third-party parser: PyPI's ``vnnlib`` targets the VNN-LIB 2.0 syntax through C++ bindings.
"""

from __future__ import annotations

import gzip
import os
import re
from fractions import Fraction
from pathlib import Path

import torch

from robustcert.errors import RobustCertError
from robustcert.vnnlib.formula import SUPPORTED, Atom, FormulaReader, Var, unsupported
from robustcert.vnnlib.sexpr import Atom as SAtom
from robustcert.vnnlib.sexpr import SList, read_sexprs
from robustcert.vnnlib.spec import Case, Conjunction, InputBox, Row, VnnSpec, round_down, round_up

_NAME = re.compile(r"^([XY])_(0|[1-9]\d*)$")
_FALSE = object()  # marks a conjunction that can never hold


def read_vnnlib(path: str | os.PathLike[str]) -> VnnSpec:
    """Parse the VNN-LIB file at ``path`` (plain, or gzip-compressed when it ends in ``.gz``).

    Guarantee: the result is equivalent to the file (exact rationals, rounded as
    :mod:`robustcert.vnnlib.spec` describes); anything outside the supported subset raises
    :class:`RobustCertError` with the file, line and construct."""
    p = Path(path)
    if not p.is_file():
        raise RobustCertError(f"VNN-LIB file {p} does not exist; check the path")
    try:
        raw = gzip.open(p, "rb").read() if p.suffix == ".gz" else p.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise RobustCertError(f"could not read VNN-LIB file {p}: {exc}") from None
    return parse_vnnlib(text, p.name)


def parse_vnnlib(text: str, where: str = "spec.vnnlib") -> VnnSpec:
    """Parse VNN-LIB ``text``; ``where`` names it in error messages (see :func:`read_vnnlib`)."""
    declared: dict[Var, int] = {}

    def lookup(name: str, line: int) -> Var:
        m = _NAME.match(name)
        var = (m.group(1), int(m.group(2))) if m else None
        if var is None or var not in declared:
            raise RobustCertError(
                f"{where} line {line}: {name!r} is not a declared variable; declare it first with "
                f"(declare-const {name} Real)"
                if m
                else f"{where} line {line}: unknown symbol {name!r}; {SUPPORTED}"
            )
        return var

    reader = FormulaReader(where, lookup)
    common: list[Atom] = []
    factors: list[list[list[Atom]]] = []
    for stmt in read_sexprs(text, where):
        head = stmt.items[0].text if stmt.items and isinstance(stmt.items[0], SAtom) else None
        if head == "declare-const":
            _declare(stmt, declared, where)
        elif head == "assert":
            if len(stmt.items) != 2:
                raise RobustCertError(f"{where} line {stmt.line}: 'assert' takes exactly one formula")
            dnf = reader.to_dnf(stmt.items[1])
            if len(dnf) == 1:
                common.extend(dnf[0])
            else:
                factors.append(dnf)
        elif head is None:
            raise RobustCertError(
                f"{where} line {stmt.line}: expected a statement such as (assert ...); {SUPPORTED}"
            )
        else:
            raise unsupported(where, stmt.line, head)
    n_in = _count(declared, "X", where)
    n_out = _count(declared, "Y", where)
    return VnnSpec(where, n_in, n_out, _cases(common, factors, n_in, n_out, where))


def _declare(stmt: SList, declared: dict[Var, int], where: str) -> None:
    items = stmt.items
    if len(items) != 3 or not all(isinstance(i, SAtom) for i in items):
        raise RobustCertError(f"{where} line {stmt.line}: write declarations as (declare-const X_0 Real)")
    name, kind = items[1].text, items[2].text  # type: ignore[union-attr]
    if kind != "Real":
        raise RobustCertError(
            f"{where} line {stmt.line}: unsupported type {kind!r} for {name}; declare Real variables"
        )
    m = _NAME.match(name)
    if not m:
        raise RobustCertError(
            f"{where} line {stmt.line}: variable {name!r}: VNN-LIB names inputs X_0, X_1, … and outputs Y_0, Y_1, …"
        )
    var = (m.group(1), int(m.group(2)))
    if var in declared:
        raise RobustCertError(
            f"{where} line {stmt.line}: {name} is declared twice (first on line {declared[var]})"
        )
    declared[var] = stmt.line


def _count(declared: dict[Var, int], kind: str, where: str) -> int:
    idx = sorted(i for k, i in declared if k == kind)
    if not idx:
        what = "inputs (declare-const X_0 Real)" if kind == "X" else "outputs (declare-const Y_0 Real)"
        raise RobustCertError(f"{where}: declares no {what}")
    missing = sorted(set(range(idx[-1] + 1)) - set(idx))
    if missing:
        raise RobustCertError(
            f"{where}: {kind}_{missing[0]} is not declared but {kind}_{idx[-1]} is; declare {kind}_0 … {kind}_{idx[-1]}"
        )
    return len(idx)


class _Bounds:
    """Exact lower/upper bounds per input, updated by single-input atoms."""

    def __init__(self, n: int) -> None:
        self.lo: list[Fraction | None] = [None] * n
        self.hi: list[Fraction | None] = [None] * n


def _split(atoms: list[Atom], where: str) -> tuple[list[tuple[int, bool, Fraction]], list[Atom], bool]:
    """Input bounds (index, is_upper, value), output atoms, and whether a constant atom is false."""
    bounds: list[tuple[int, bool, Fraction]] = []
    outputs: list[Atom] = []
    for a in atoms:
        kinds = {k for k, _ in a.expr.coeffs}
        if not kinds:
            if a.expr.const > 0:
                return bounds, outputs, True
            continue
        if kinds == {"Y"}:
            outputs.append(a)
            continue
        if kinds == {"X", "Y"}:
            raise RobustCertError(
                f"{where} line {a.line}: a constraint mixes inputs (X) and outputs (Y); "
                "VNN-LIB input constraints must be bounds on single inputs"
            )
        if len(a.expr.coeffs) != 1:
            raise RobustCertError(
                f"{where} line {a.line}: an input constraint involves several inputs; robustcert reads input "
                "boxes only: bound each X_i by a number"
            )
        (((_, i), c),) = a.expr.coeffs.items()
        value = -a.expr.const / c  # c x + b <= 0: x <= -b/c if c > 0, x >= -b/c if c < 0
        bounds.append((i, c > 0, value))
    return bounds, outputs, False


def _cases(
    common: list[Atom], factors: list[list[list[Atom]]], n_in: int, n_out: int, where: str
) -> tuple[Case, ...]:
    base_bounds, base_out, false = _split(common, where)
    if false:
        return ()
    lo: list[Fraction | None] = [None] * n_in
    hi: list[Fraction | None] = [None] * n_in
    for i, upper, v in base_bounds:
        _tighten(lo, hi, i, upper, v)
    if any(a is not None and b is not None and a > b for a, b in zip(lo, hi, strict=True)):
        return ()  # the asserts' common box is empty: nothing can violate the property
    disjuncts: list[list[Atom]] = [[]]
    for f in factors:
        if len(disjuncts) * len(f) > 100_000:
            raise RobustCertError(
                f"{where}: the asserts expand to more than 100000 cases; split the specification into several files"
            )
        disjuncts = [d + part for d in disjuncts for part in f]
    floats = _box_floats(lo, hi, where) if all(v is not None for v in lo + hi) else None
    grouped: dict[tuple, tuple[InputBox, list[Conjunction]]] = {}
    for atoms in disjuncts:
        bounds, outs, false = _split(atoms, where)
        if false:
            continue
        over: dict[int, list[Fraction | None]] = {}
        for i, upper, v in bounds:
            cur = over.setdefault(i, [lo[i], hi[i]])
            if upper:
                cur[1] = v if cur[1] is None or v < cur[1] else cur[1]
            else:
                cur[0] = v if cur[0] is None or v > cur[0] else cur[0]
        if any(b[0] is not None and b[1] is not None and b[0] > b[1] for b in over.values()):
            continue  # an empty box
        key = tuple(sorted((i, b[0], b[1]) for i, b in over.items()))
        if key not in grouped:
            box = _box(lo, hi, over, floats, where)
            if box is None:
                continue
            grouped[key] = (box, [])
        grouped[key][1].append(_conjunction(base_out + outs, n_out))
    return tuple(Case(box, tuple(conjs)) for box, conjs in grouped.values())


def _tighten(lo: list[Fraction | None], hi: list[Fraction | None], i: int, upper: bool, v: Fraction) -> None:
    if upper:
        cur = hi[i]
        hi[i] = v if cur is None or v < cur else cur
    else:
        cur = lo[i]
        lo[i] = v if cur is None or v > cur else cur


def _missing(i: int, lower: bool, where: str) -> RobustCertError:
    side = "lower" if lower else "upper"
    return RobustCertError(
        f"{where}: X_{i} has no {side} bound; the input box must bound every X_i from both sides, "
        f"e.g. (assert ({'>=' if lower else '<='} X_{i} 0.0))"
    )


def _box_floats(lo: list, hi: list, where: str) -> list[list[float]]:
    out: list[list[float]] = [[], [], [], []]
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if a is None or b is None:
            raise _missing(i, a is None, where)
        out[0].append(round_down(a))
        out[1].append(round_up(b))
        out[2].append(round_up(a))
        out[3].append(round_down(b))
    return out


def _box(
    lo: list[Fraction | None],
    hi: list[Fraction | None],
    over: dict[int, list[Fraction | None]],
    floats: list[list[float]] | None,
    where: str,
) -> InputBox | None:
    if floats is None:  # some input is bounded only inside the disjunctions
        merged_lo = [over[i][0] if i in over else lo[i] for i in range(len(lo))]
        merged_hi = [over[i][1] if i in over else hi[i] for i in range(len(hi))]
        if any(a is not None and b is not None and a > b for a, b in zip(merged_lo, merged_hi, strict=True)):
            return None
        vals = _box_floats(merged_lo, merged_hi, where)
    else:
        vals = [list(v) for v in floats]
        for i, (a, b) in over.items():
            if a is None or b is None:
                raise _missing(i, a is None, where)
            vals[0][i], vals[1][i], vals[2][i], vals[3][i] = (
                round_down(a),
                round_up(b),
                round_up(a),
                round_down(b),
            )
    t = [torch.tensor(v, dtype=torch.float64) for v in vals]
    return InputBox(t[0], t[1], t[2], t[3])


def _conjunction(atoms: list[Atom], n_out: int) -> Conjunction:
    rows: list[Row] = []
    C = torch.zeros((len(atoms), n_out), dtype=torch.float64)
    E = torch.zeros_like(C)
    d = torch.zeros(len(atoms), dtype=torch.float64)
    for r, a in enumerate(atoms):
        coeffs = tuple(sorted((j, c) for (_, j), c in a.expr.coeffs.items()))
        rows.append((coeffs, -a.expr.const))
        for j, c in coeffs:
            f = float(c)
            C[r, j] = f
            E[r, j] = round_up(abs(c - Fraction(f)))
        d[r] = round_up(-a.expr.const)
    return Conjunction(C, E, d, tuple(rows), tuple(a.line for a in atoms))
