"""Keep what a native solver prints out of the process's stdout.

HiGHS (inside scipy) writes its log from C, to file descriptor 1, past ``sys.stdout`` and anything Python
redirects. :func:`solver_output` therefore swaps file descriptor 1 itself for the duration of a solve.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _flush_c_stdio() -> None:
    """Flush C's stdio buffers (``fflush(NULL)``), so buffered solver output lands where fd 1 points now."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # pragma: no cover - no C library to flush (not Linux/macOS)
        pass


def _flush_python() -> None:
    for stream in (sys.stdout, sys.__stdout__):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):  # pragma: no cover - a closed stream
                pass


@contextmanager
def solver_output(log_path: Path | None) -> Iterator[None]:
    """Send everything written to file descriptor 1 during the block to ``log_path`` (appended), or
    discard it when ``log_path`` is None.

    Guarantee: nothing written to fd 1 inside the block — by C code such as HiGHS, buffered or not, or by
    Python — reaches the process's stdout; fd 1 is restored on leaving, also on an exception. Output
    written to fd 1 before the block is flushed out first. The swap is process-wide: another thread that
    prints during the block is redirected too.
    """
    _flush_python()
    _flush_c_stdio()
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    target = os.open(
        os.devnull if log_path is None else os.fspath(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )
    saved = os.dup(1)
    try:
        os.dup2(target, 1)
        yield
    finally:
        _flush_python()
        _flush_c_stdio()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)
