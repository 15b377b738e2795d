"""``robustcert certify bab`` (the branch-and-bound stage as a registry method): its verdicts agree with
the exact MILP's on the same examples in both directions, certify at least what CROWN certifies, its
counterexamples lie in the ball and are misclassified by the float32 model; a model with few inputs
goes through input splitting; bad input is one error line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from cli_helpers import one_error_line
from torch import nn

from robustcert.cli import main
from robustcert.data import load_dataset
from robustcert.jobs import load_run_model
from robustcert.methods import get_method
from robustcert.methods.bab import BabCertifier, _in_ball
from robustcert.methods.base import ModelInfo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bab_method") / "mlp"
    assert main(["train", "--arch", "mlp-2x32", "--epochs", "3", "--lr", "0.01", "--out", str(out)]) == 0
    return out


def _rows(run: Path) -> dict[tuple[int, float], dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return {(r["index"], r["eps"]): r for r in rows}


def test_agrees_with_milp_and_crown(mlp_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    common = ["--model", str(mlp_dir), "--eps", "0.03,0.08", "--limit", "12"]
    assert main(["certify", "bab", *common, "--time-limit", "20", "--out", str(tmp_path / "bab")]) == 0
    assert main(["certify", "exact", *common, "--time-limit", "30", "--out", str(tmp_path / "milp")]) == 0
    assert main(["certify", "crown", *common, "--out", str(tmp_path / "crown")]) == 0
    capsys.readouterr()
    bab, milp, crown = (_rows(tmp_path / n) for n in ("bab", "milp", "crown"))
    assert bab.keys() == milp.keys() == crown.keys()
    statuses = set()
    for key, row in bab.items():
        statuses.add(row["status"])
        assert row["float_model"] == "float32" and row["method"] == "bab"
        assert row["certified"] == (row["status"] == "robust")
        if row["status"] == "robust":
            assert row["margin_lower"] > 0
            assert milp[key]["status"] != "counterexample", key
        if row["status"] == "counterexample":
            assert milp[key]["status"] != "robust", key
        if milp[key]["status"] == "robust":  # the MILP proves it: bab must not find a counterexample
            assert row["status"] != "counterexample"
        if crown[key]["certified"]:
            assert row["certified"], key  # the root bound is at least CROWN's
    assert statuses >= {"robust", "counterexample"}, statuses
    # bab decides at least as much as the MILP within these limits
    decided = sum(r["status"] != "unknown" for r in bab.values())
    assert decided >= sum(r["status"] != "unknown" for r in milp.values())


def test_counterexamples_are_in_the_ball_and_misclassified(mlp_dir: Path):
    """The certifier's search directly: a falsified example's point is in the real ball and the float32
    model misclassifies it."""
    data = load_dataset("digits", "test")
    loaded = load_run_model(mlp_dir, data)
    entry = get_method("bab")
    params = entry.make_params({"eps": "0.1", "time_limit": "10"})
    cert = BabCertifier(loaded.module, loaded.info, params, None)
    import robustcert.exact.bab as bab

    found = 0
    for i in range(30):
        x, y = data.x[i], int(data.y[i])
        with torch.no_grad():
            if int(loaded.module(x.unsqueeze(0)).argmax()) != y:
                continue
        lo = (x.double() - 0.1).clamp(0, 1).unsqueeze(0)
        hi = (x.double() + 0.1).clamp(0, 1).unsqueeze(0)
        k = 10
        C = (torch.eye(k, dtype=torch.float64)[y].unsqueeze(0) - torch.eye(k, dtype=torch.float64))[
            [j for j in range(k) if j != y]
        ]
        r = bab.branch_and_bound(cert.graph, lo, hi, C, timeout=10, seed=i)
        if r.status != "falsified":
            continue
        found += 1
        assert r.counterexample is not None and _in_ball(r.counterexample, x, 0.1)
        status, _ = cert._search(x, y, 0.1, i)
        assert status in ("counterexample", "unknown")
        if found >= 3:
            break
    assert found >= 1


def test_in_ball_is_exact():
    """The ball check is exact: fl(0.1 + 0.2) = 0.30000000000000004 lies above the real 0.1 + 0.2 (with
    the float64 values of 0.1 and 0.2), so it is outside; the float64 0.3 lies just below, inside."""
    x = torch.tensor([0.1], dtype=torch.float64)
    assert _in_ball(torch.tensor([0.3], dtype=torch.float64), x, 0.2)
    assert not _in_ball(torch.tensor([0.1 + 0.2], dtype=torch.float64), x, 0.2)
    assert _in_ball(x, x, 0.0)


def test_few_inputs_use_input_splitting(monkeypatch: pytest.MonkeyPatch):
    """A 5-input model is searched by input splitting; its verdicts agree with the MILP."""
    import robustcert.exact.input_split as split
    from robustcert.exact.milp import exact_margin

    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 20), nn.ReLU(), nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3)).eval()
    calls: list[int] = []
    real = split.input_split

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(split, "input_split", counting)
    entry = get_method("bab")
    info = ModelInfo(input_shape=(5,), num_classes=3)
    params = entry.make_params({"eps": "0.05,0.3", "time_limit": "20"})
    cert = BabCertifier(net, info, params, None)
    torch.manual_seed(4)
    xs = torch.rand(6, 5)
    with torch.no_grad():
        ys = net(xs).argmax(1).tolist()
    rows = cert.certify_batch(xs, ys, list(range(6)), list(range(6)))
    assert calls  # input splitting ran
    for x, y, per_eps in zip(xs, ys, rows, strict=True):
        for row in per_eps:
            res = exact_margin(net, x.unsqueeze(0), y, eps=row.eps, time_limit=30)
            if row.status == "robust":
                assert res.status != "counterexample"
            if row.status == "counterexample":
                assert res.status != "robust"
            if res.status == "robust":
                assert row.status == "robust", (row, res.min_margin)


def test_bad_input(mlp_dir: Path, capsys: pytest.CaptureFixture):
    base = ["certify", "bab", "--model", str(mlp_dir), "--limit", "2"]
    for extra, needle in (
        (["--eps", "-0.1"], "eps"),
        (["--time-limit", "0"], "time"),
        (["--batch", "0"], "batch"),
    ):
        assert needle in one_error_line([*base, *extra], capsys).lower()
