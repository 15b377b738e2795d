"""Record the ``certified`` section of each shipped model's model.json (issue 12, "Models that ship").

For every (model, bound method) it runs the user-facing command
``robustcert certify METHOD --model zoo:NAME --eps EPS --limit N --out runs/zoo-record/NAME-METHOD --force``
(one torch thread) and writes into ``src/robustcert/models/shipped/NAME/model.json``::

    "certified": {"norm": "linf", "eps": 0.1, "dataset": ..., "split": "test", "indices": "0-359", "n": 360,
                  "clean_correct": ..., "clean_accuracy": ...,
                  "results": [{"method": "ibp", "verified": ..., "verified_accuracy": ..., "float_model": "float32",
                               "n": ..., "indices": ..., "command": "robustcert certify ibp ..."}, ...]}

``tests/test_zoo_shipped.py`` recomputes these counts from the committed weights with
``robustcert.bounds.margin_lower`` and asserts they are equal.

    OMP_NUM_THREADS=1 .venv/bin/python bench/zoo_record.py            # every shipped model
    OMP_NUM_THREADS=1 .venv/bin/python bench/zoo_record.py NAME ...   # some
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from robustcert.models.shipped import SHIPPED_DIR, shipped_names

ROOT = Path(__file__).resolve().parents[1]
EPS = 0.1
# bound method -> examples (the first N of the test split) per data set; Fashion-MNIST's CROWN on fewer
PLAN = {
    "digits": [("ibp", 360), ("crown", 360)],
    "fashion-mnist": [("ibp", 1000), ("crown", 200)],
}


def record(name: str) -> dict:
    """Run the certify commands for ``name`` and write its ``certified`` section; returns the section."""
    meta_path = SHIPPED_DIR / name / "model.json"
    meta = json.loads(meta_path.read_text())
    dataset = meta["dataset"]
    results = []
    clean: tuple[int, int] | None = None
    for method, limit in PLAN[dataset]:
        out = f"runs/zoo-record/{name}-{method}"
        command = [
            "robustcert",
            "certify",
            method,
            "--model",
            f"zoo:{name}",
            "--eps",
            str(EPS),
            "--limit",
            str(limit),
            "--out",
            out,
            "--force",
        ]
        exe = str(ROOT / ".venv" / "bin" / "robustcert")
        subprocess.run(
            [exe, *command[1:]],
            check=True,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
        )
        rows = [json.loads(line) for line in (ROOT / out / "results.jsonl").read_text().splitlines()]
        assert len(rows) == limit and sorted(r["index"] for r in rows) == list(range(limit))
        correct = sum(bool(r["correct"]) for r in rows)
        verified = sum(bool(r["certified"]) for r in rows)
        if clean is None or limit > clean[1]:
            clean = (correct, limit)
        results.append(
            {
                "method": method,
                "indices": f"0-{limit - 1}",
                "n": limit,
                "clean_correct": correct,
                "clean_accuracy": correct / limit,
                "verified": verified,
                "verified_accuracy": verified / limit,
                "float_model": rows[0]["float_model"],
                "command": " ".join(command),
            }
        )
        print(f"{name} {method} n={limit} clean {correct}/{limit} verified {verified}/{limit}", flush=True)
    assert clean is not None
    section = {
        "norm": "linf",
        "eps": EPS,
        "dataset": dataset,
        "split": "test",
        "indices": f"0-{clean[1] - 1}",
        "n": clean[1],
        "clean_correct": clean[0],
        "clean_accuracy": clean[0] / clean[1],
        "results": results,
    }
    meta["certified"] = section
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return section


if __name__ == "__main__":
    for model_name in sys.argv[1:] or shipped_names():
        record(model_name)
