"""``results.jsonl``: rows appended and flushed as each example finishes, read back safely after a crash.

Every example's rows are written with one ``write`` and then flushed and fsync'ed, so a crash leaves at
most one partial trailing line (or an example with fewer rows than expected): ``read_complete_rows``
drops exactly those, and ``open_for_append`` rewrites the file without them, so a resumed run neither
loses a finished example nor duplicates one.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def read_rows(path: Path) -> list[Row]:
    """Every complete JSON line of ``path`` (a partial last line is skipped)."""
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn final write
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    return rows


def read_complete_rows(path: Path, rows_per_example: int) -> list[Row]:
    """Rows of the examples that have all ``rows_per_example`` rows, in file order."""
    rows = read_rows(path)
    count: dict[int, int] = defaultdict(int)
    for row in rows:
        count[int(row["index"])] += 1
    return [row for row in rows if count[int(row["index"])] == rows_per_example]


def rewrite_rows(path: Path, rows: list[Row]) -> None:
    """Atomically replace ``path`` with exactly ``rows``."""
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RowWriter:
    """Appends one example's rows at a time, durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, rows: list[Row]) -> None:
        self._file.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
