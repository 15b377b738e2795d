"""The VNN-LIB parser: one hand-written spec per construct, parsed to the right tensors (exact rationals,
rounded in the sound direction), and one-line refusals naming the line and the construct."""

from __future__ import annotations

import gzip
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from robustcert.errors import RobustCertError
from robustcert.vnnlib import parse_vnnlib, read_vnnlib


def _decl(n_in: int, n_out: int) -> str:
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_in)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(n_out)
    )


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


BOX2 = "(assert (<= X_0 1.0))\n(assert (>= X_0 -1.0))\n(assert (<= X_1 0.5))\n(assert (>= X_1 0.25))\n"


def test_input_box_both_argument_orders():
    text = (
        _decl(4, 1)
        + """
(assert (<= X_0 0.5))      ; X_0 <= 0.5
(assert (>= X_0 -0.5))
(assert (<= -2 X_1))       ; X_1 >= -2
(assert (>= 3 X_1))        ; X_1 <= 3
(assert (<= (* 2 X_2) 1))  ; X_2 <= 0.5
(assert (>= (* -1 X_2) 1)) ; X_2 <= -1 (the tighter upper bound wins)
(assert (>= X_2 -4))
(assert (>= X_3 0)) (assert (<= X_3 (- 1)))
(assert (<= Y_0 0))
"""
    )
    spec = parse_vnnlib(text.replace("(assert (<= X_3 (- 1)))", "(assert (<= X_3 (+ 1 0.5)))"))
    assert spec.num_inputs == 4 and spec.num_outputs == 1
    (case,) = spec.cases
    assert torch.equal(case.box.lo, _t([-0.5, -2, -4, 0]))
    assert torch.equal(case.box.hi, _t([0.5, 3, -1, 1.5]))
    assert torch.equal(case.box.lo_in, case.box.lo) and torch.equal(case.box.hi_in, case.box.hi)  # exact


def test_output_disjunction_mnist_style():
    text = _decl(2, 3) + BOX2 + "(assert (or (and (>= Y_0 Y_1)) (and (>= Y_0 Y_2))))\n"
    spec = parse_vnnlib(text)
    (case,) = spec.cases
    assert len(case.conjunctions) == 2
    c1, c2 = case.conjunctions
    # Y_0 >= Y_1  <=>  -Y_0 + Y_1 <= 0
    assert torch.equal(c1.C, _t([[-1, 1, 0]])) and torch.equal(c1.d, _t([0]))
    assert torch.equal(c2.C, _t([[-1, 0, 1]])) and torch.equal(c2.d, _t([0]))
    assert float(c1.C_err.abs().sum()) == 0
    assert c1.satisfied_by([2.0, 1.0, 5.0]) and not c1.satisfied_by([1.0, 2.0, 0.0])
    assert c1.lines == (10,)  # 5 declarations, 4 box lines, then the assert


def test_several_input_boxes_in_one_or():
    text = (
        _decl(1, 2)
        + """(assert (or
  (and (<= X_0 0.5) (>= X_0 0.0) (<= Y_0 Y_1))
  (and (<= X_0 1.0) (>= X_0 0.5) (>= Y_0 3) (<= Y_1 2))
  (and (>= X_0 0.0) (<= X_0 0.5) (>= Y_1 1))))
"""
    )
    spec = parse_vnnlib(text)
    assert len(spec.cases) == 2 and spec.num_pairs == 3
    a, b = spec.cases
    assert torch.equal(a.box.lo, _t([0])) and torch.equal(a.box.hi, _t([0.5]))
    assert len(a.conjunctions) == 2  # same box, stated in another order: grouped
    assert torch.equal(a.conjunctions[0].C, _t([[1, -1]])) and torch.equal(a.conjunctions[0].d, _t([0]))
    assert torch.equal(a.conjunctions[1].C, _t([[0, -1]])) and torch.equal(a.conjunctions[1].d, _t([-1]))
    assert torch.equal(b.box.lo, _t([0.5])) and torch.equal(b.box.hi, _t([1.0]))
    (cb,) = b.conjunctions
    assert torch.equal(cb.C, _t([[-1, 0], [0, 1]])) and torch.equal(cb.d, _t([-3, 2]))


def test_linear_terms_sums_differences_scalars():
    text = (
        _decl(1, 3)
        + "(assert (<= X_0 1)) (assert (>= X_0 0))\n"
        + (
            "(assert (<= (+ Y_0 (* 2 Y_1) (- Y_2)) 3))\n"  # y0 + 2 y1 - y2 <= 3
            "(assert (>= (* Y_0 0.5) (- Y_1 Y_2 1.5)))\n"  # y1 - y2 - 1.5 - 0.5 y0 <= 0
            "(assert (<= (- 2.5) (+ Y_1 Y_1)))\n"  # -2 y1 <= 2.5
        )
    )
    (case,) = parse_vnnlib(text).cases
    (conj,) = case.conjunctions
    assert torch.equal(conj.C, _t([[1, 2, -1], [-0.5, 1, -1], [0, -2, 0]]))
    assert torch.equal(conj.d, _t([3, 1.5, 2.5]))


def test_and_of_ors_expands_to_the_product():
    text = (
        _decl(1, 2)
        + "(assert (<= X_0 1)) (assert (>= X_0 0))\n"
        + ("(assert (or (<= Y_0 0) (<= Y_1 0)))\n(assert (or (>= Y_0 1) (>= Y_1 1)))\n")
    )
    (case,) = parse_vnnlib(text).cases
    assert len(case.conjunctions) == 4
    assert torch.equal(case.conjunctions[1].C, _t([[1, 0], [0, -1]]))
    assert torch.equal(case.conjunctions[1].d, _t([0, -1]))


def test_inexact_decimals_round_in_the_sound_direction():
    text = _decl(1, 1) + "(assert (<= X_0 0.1)) (assert (>= X_0 -0.1))\n(assert (<= (* 0.1 Y_0) 0.3))\n"
    (case,) = parse_vnnlib(text).cases
    b = case.box
    tenth = Fraction(1, 10)
    assert Fraction(float(b.hi[0])) >= tenth >= Fraction(float(b.hi_in[0]))
    assert Fraction(float(b.lo[0])) <= -tenth <= Fraction(float(b.lo_in[0]))
    assert float(b.hi[0]) > float(b.hi_in[0])  # 0.1 is not a float: the two differ by one ulp
    (conj,) = case.conjunctions
    assert Fraction(float(conj.d[0])) >= Fraction(3, 10)
    assert Fraction(float(conj.C_err[0, 0])) >= abs(tenth - Fraction(float(conj.C[0, 0]))) > 0
    # exact check: 0.1 * 3.0000000000000004 > 0.3 exactly
    assert conj.satisfied_by([3.0]) and not conj.satisfied_by([math.nextafter(3.0, 4.0)])


def test_dropped_conjunctions_empty_box_and_false_constant():
    text = _decl(1, 1) + (
        "(assert (or (and (<= X_0 0) (>= X_0 1) (<= Y_0 0))"  # empty box
        " (and (<= X_0 1) (>= X_0 0) (<= 1 0) (<= Y_0 1))"  # false constant comparison
        " (and (<= X_0 1) (>= X_0 0) (<= 0 1) (<= Y_0 2))))\n"  # true constant: dropped atom
    )
    spec = parse_vnnlib(text)
    (case,) = spec.cases
    (conj,) = case.conjunctions
    assert torch.equal(conj.C, _t([[1]])) and torch.equal(conj.d, _t([2]))
    assert (
        parse_vnnlib(_decl(1, 1) + "(assert (<= X_0 0)) (assert (>= X_0 1)) (assert (<= Y_0 0))").cases == ()
    )


def test_input_only_disjunct_has_no_rows():
    text = _decl(1, 1) + "(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 3) (>= X_0 2) (<= Y_0 0))))"
    spec = parse_vnnlib(text)
    assert [c.conjunctions[0].num_rows for c in spec.cases] == [0, 1]
    assert spec.cases[0].conjunctions[0].C.shape == (0, 1)


def test_read_file_plain_and_gzip(tmp_path: Path):
    text = _decl(2, 2) + BOX2 + "(assert (>= Y_0 Y_1))\n"
    plain = tmp_path / "p.vnnlib"
    plain.write_text(text)
    packed = tmp_path / "p.vnnlib.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    a, b = read_vnnlib(plain), read_vnnlib(packed)
    assert torch.equal(a.cases[0].conjunctions[0].C, b.cases[0].conjunctions[0].C)
    assert a.source == "p.vnnlib"


def test_mnist_sized_spec_parses_quickly():
    import time

    lines = [_decl(784, 10)]
    lines += [
        f"(assert (<= X_{i} {0.3 + i * 1e-4:.6f}))\n(assert (>= X_{i} {0.1:.6f}))\n" for i in range(784)
    ]
    lines.append("(assert (or " + " ".join(f"(and (>= Y_{j} Y_7))" for j in range(10) if j != 7) + "))\n")
    t = time.monotonic()
    spec = parse_vnnlib("".join(lines))
    assert time.monotonic() - t < 5
    (case,) = spec.cases
    assert len(case.conjunctions) == 9 and case.box.lo.shape == (784,)


BAD = [
    ("(assert (ite (<= Y_0 0) (<= Y_0 1) (<= Y_0 2)))", 4, "unsupported construct 'ite'"),
    ("(assert (< Y_0 0))", 4, "unsupported construct '<'"),
    ("(assert (= Y_0 0))", 4, "unsupported construct '='"),
    ("(assert (<= (* Y_0 Y_0) 0))", 4, "multiplies two variables"),
    ("(assert (<= (exp Y_0) 0))", 4, "unsupported construct 'exp'"),
    ("(assert (<= Y_3 0))", 4, "'Y_3' is not a declared variable"),
    ("(assert (<= foo 0))", 4, "unknown symbol 'foo'"),
    ("(assert (<= Y_0 X_0))", 4, "mixes inputs (X) and outputs (Y)"),
    ("(assert (<= (+ X_0 X_0 X_1) 0))", 4, "involves several inputs"),
    ("(assert (<= Y_0 0 1))", 4, "takes exactly two terms"),
    ("(assert (<= Y_0 0)", 4, "is never closed"),
    ("(assert (<= Y_0 0)))", 4, "unbalanced ')'"),
    ("(check-sat)", 4, "unsupported construct 'check-sat'"),
    ("(declare-const X_0 Real)", 4, "declared twice (first on line 1)"),
    ("(declare-const Z Real)", 4, "VNN-LIB names inputs X_0"),
    ("(declare-const X_2 Int)", 4, "unsupported type 'Int'"),
    ("(assert Y_0)", 4, "expected a constraint"),
    ("(assert (<= Y_0 1e))", 4, "unknown symbol '1e'"),
]


@pytest.mark.parametrize("line, number, message", BAD)
def test_malformed_specs_name_line_and_construct(line: str, number: int, message: str):
    text = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n" + line + "\n"
    text += "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= X_1 1)) (assert (>= X_1 0))\n"
    with pytest.raises(RobustCertError) as info:
        parse_vnnlib(text, "spec.vnnlib")
    msg = str(info.value)
    assert msg.startswith(f"spec.vnnlib line {number}:"), msg
    assert message in msg and "\n" not in msg


def test_unsupported_message_lists_the_constructs():
    with pytest.raises(
        RobustCertError,
        match=r"spec.vnnlib line 2: unsupported construct 'ite'; VNN-LIB specs may use "
        r"declare-const, assert, and, or, <=, >=, \+, -, \*",
    ):
        parse_vnnlib("(declare-const Y_0 Real)\n(assert (ite 1 2 3))", "spec.vnnlib")


@pytest.mark.parametrize(
    "text, message",
    [
        (_decl(1, 1) + "(assert (<= X_0 1)) (assert (<= Y_0 0))", "X_0 has no lower bound"),
        (_decl(1, 1) + "(assert (>= X_0 1)) (assert (<= Y_0 0))", "X_0 has no upper bound"),
        ("(declare-const X_1 Real)(declare-const Y_0 Real)", "X_0 is not declared but X_1 is"),
        ("(declare-const X_0 Real)", "declares no outputs"),
        (
            _decl(1, 1) + "(assert (or (and (<= X_0 1) (>= X_0 0)) (and (<= X_0 1) (<= Y_0 0))))",
            "X_0 has no lower",
        ),
    ],
)
def test_missing_bounds_and_declarations(text: str, message: str):
    with pytest.raises(RobustCertError, match=message):
        parse_vnnlib(text)


def test_missing_file(tmp_path: Path):
    with pytest.raises(RobustCertError, match="does not exist"):
        read_vnnlib(tmp_path / "none.vnnlib")


def test_acasxu_style_conjunction_of_top_level_asserts():
    """ACAS Xu property 3 style: five inputs with unequal ranges, and several output asserts that must
    all hold (one conjunction of four rows: Y_0 is not the minimal score)."""
    text = _decl(5, 5) + "".join(
        f"(assert (<= X_{i} {hi}))\n(assert (>= X_{i} {lo}))\n"
        for i, (lo, hi) in enumerate(
            [(-0.3035, -0.2986), (-0.0095, 0.0095), (0.4934, 0.5), (0.3, 0.5), (0.3, 0.5)]
        )
    )
    text += "".join(f"(assert (<= Y_0 Y_{j}))\n" for j in range(1, 5))
    (case,) = parse_vnnlib(text).cases
    (conj,) = case.conjunctions
    assert conj.C.shape == (4, 5)
    assert torch.equal(conj.C[:, 0], _t([1, 1, 1, 1])) and torch.equal(
        conj.C[:, 1:], -torch.eye(4, dtype=torch.float64)
    )
    assert torch.equal(conj.d, _t([0, 0, 0, 0]))
    assert float(case.box.lo[0]) <= -0.3035 and float(case.box.hi[2]) == 0.5
