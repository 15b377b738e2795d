"""Progress reporting: a rich progress bar on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class Progress(Protocol):
    def advance(self, n: int = 1, info: str = "") -> None: ...


class _PlainProgress:
    def __init__(self, label: str, total: int, every: float = 5.0) -> None:
        self.label, self.total, self.done, self.every = label, total, 0, every
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1, info: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            extra = f" {info}" if info else ""
            print(f"{self.label}: {self.done}/{self.total} ({now - self.start:.1f}s){extra}", flush=True)


class _RichProgress:
    def __init__(self, bar, task, label: str) -> None:  # type: ignore[no-untyped-def]
        self.bar, self.task, self.label = bar, task, label

    def advance(self, n: int = 1, info: str = "") -> None:
        self.bar.update(self.task, advance=n, description=f"{self.label} {info}".strip())


class _NoProgress:
    def advance(self, n: int = 1, info: str = "") -> None:
        pass


@contextmanager
def progress(label: str, total: int, enabled: bool = True) -> Iterator[Progress]:
    """Yield an object with ``advance(n, info)``; a bar on a TTY, a line every few seconds otherwise."""
    if not enabled:
        yield _NoProgress()
        return
    if sys.stdout.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(label, total=total)
            yield _RichProgress(bar, task, label)
    else:
        yield _PlainProgress(label, total)
