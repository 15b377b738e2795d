"""Tokenizer and s-expression reader for VNN-LIB files, keeping the line of every token.

A VNN-LIB 1.0 file (the VNN-COMP format) is a sequence of s-expressions such as
``(declare-const X_0 Real)`` and ``(assert (<= X_0 0.5))``; ``;`` starts a comment that runs to the end
of the line. :func:`read_sexprs` returns the top-level expressions as :class:`Atom` and :class:`SList`
nodes that remember the line they start on, so later stages can name the line of a bad construct.
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

from robustcert.errors import RobustCertError

_TOKEN = re.compile(r"\s+|;[^\n]*|\(|\)|[^\s();]+")


class Atom(NamedTuple):
    """A symbol or number as written, and the line (1-based) it is on."""

    text: str
    line: int


class SList(NamedTuple):
    """A parenthesised list and the line (1-based) of its opening parenthesis."""

    items: tuple[Atom | SList, ...]
    line: int


SExpr = Atom | SList


def read_sexprs(text: str, where: str) -> list[SList]:
    """The top-level s-expressions of ``text``; ``where`` (the file name) prefixes error messages.

    Guarantees: every returned node is a complete, balanced list; an unbalanced parenthesis or a bare
    atom at the top level raises :class:`RobustCertError` naming the line."""
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(pos: int) -> int:
        return bisect.bisect_right(newlines, pos) + 1

    stack: list[tuple[list[SExpr], int]] = []
    top: list[SList] = []
    for m in _TOKEN.finditer(text):
        tok = m.group()
        first = tok[0]
        if first.isspace() or first == ";":
            continue
        if tok == "(":
            stack.append(([], line_of(m.start())))
        elif tok == ")":
            if not stack:
                raise RobustCertError(f"{where} line {line_of(m.start())}: unbalanced ')' (no matching '(')")
            items, line = stack.pop()
            node = SList(tuple(items), line)
            if stack:
                stack[-1][0].append(node)
            else:
                top.append(node)
        elif stack:
            stack[-1][0].append(Atom(tok, line_of(m.start())))
        else:
            raise RobustCertError(
                f"{where} line {line_of(m.start())}: unexpected {tok!r} outside parentheses; "
                "VNN-LIB statements look like (assert ...) or (declare-const X_0 Real)"
            )
    if stack:
        raise RobustCertError(f"{where} line {stack[-1][1]}: '(' is never closed (the file ends first)")
    return top
