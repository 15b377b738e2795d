"""robustcert.allocator: glibc keeps freed blocks for reuse, once per process, unless the user opts out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = "from robustcert.allocator import keep_freed_memory as k; print(k(), k())"


def _run(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("ROBUSTCERT_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["ROBUSTCERT_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_thresholds_are_set_once_and_the_opt_out_is_honoured():
    assert _run(None) == "True True"
    assert _run("0") == "False False"
