"""``results.jsonl``: typed rows appended and flushed as each example finishes, read back safely after a crash.

Every example's rows are written with one ``write`` and then flushed and fsync'ed, so a crash (even
``kill -9``) leaves at most one torn trailing line, or an example with fewer rows than expected.
:func:`read_rows` validates every line against the run's row type (:mod:`robustcert.rows`):

* a torn **last** line (no final newline, or not JSON) is dropped with a warning on stderr — the resumed
  run recomputes that example;
* a bad line **anywhere else** is an error naming the file and line: it is not the trace of a crash, and
  silently dropping it (or every line after it) would make a report wrong.

:func:`read_complete_rows` keeps only examples that have all their rows, and :func:`rewrite_rows`
replaces the file with exactly those, so a resumed run neither loses a finished example nor duplicates
one.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

from robustcert.errors import RobustCertError
from robustcert.rows import Row


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_rows(path: Path, row_type: type[Row], *, warn: bool = True) -> list[Row]:
    """Every row of ``path`` validated as ``row_type``; a torn last line is dropped (with a warning).

    Raises RobustCertError for an invalid line that is not the last one."""
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise RobustCertError(f"cannot read {path}: {exc.strerror}") from exc
    # split() leaves b"" after a final newline; anything else there is a torn write.
    tail = lines.pop()
    rows: list[Row] = []
    last = len(lines)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == last and not tail.strip():
                # the last complete-looking line is garbage: treat it like a torn write as well
                if warn:
                    _warn(f"{path} line {number} is incomplete (a crash during a write?); it is ignored and "
                          "recomputed on --resume")
                break
            raise RobustCertError(
                f"{path} line {number} is not valid JSON; delete that line and rerun with --resume to recompute it"
            ) from None
        rows.append(row_type.from_json(data, where=f"{path} line {number}"))
    if tail.strip() and warn:
        _warn(f"{path} line {last + 1} is incomplete (a crash during a write?); it is ignored and recomputed "
              "on --resume")
    return rows


def read_complete_rows(path: Path, row_type: type[Row], rows_per_example: int) -> list[Row]:
    """Rows of the examples that have all ``rows_per_example`` rows, in file order."""
    rows = read_rows(path, row_type)
    count: dict[int, int] = defaultdict(int)
    for row in rows:
        count[row.index] += 1
    over = sorted(i for i, c in count.items() if c > rows_per_example)
    if over:
        raise RobustCertError(
            f"{path} holds more rows than expected for examples {over[:5]}; the file was edited or mixed with "
            "another run: rerun with --force"
        )
    return [row for row in rows if count[row.index] == rows_per_example]


def rewrite_rows(path: Path, rows: list[Row]) -> None:
    """Atomically replace ``path`` with exactly ``rows``."""
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row.to_json(), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RowWriter:
    """Appends one example's rows at a time, durably (one write, flush, fsync)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, rows: list[Row]) -> None:
        self._file.write("".join(json.dumps(row.to_json(), sort_keys=True) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
