"""Helpers shared by the tests that drive the ``robustcert`` command in-process."""

from __future__ import annotations

import pytest

from robustcert.cli import main


def one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``robustcert argv``; assert exit status 2 and a single ``error: ...`` line on stderr without a
    traceback; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err
