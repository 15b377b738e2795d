"""The report card: numbers in report.json match the rows; an unsound certifier is flagged and fails the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustcert.cli import demo_config, main
from robustcert.errors import RobustCertError
from robustcert.evaluation import validate_config
from robustcert.methods import get_method
from robustcert.rows import AttackRow, Row
from robustcert.runs import read_rows


@pytest.fixture(scope="module")
def quick_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick demo config end to end: two trained models, every method, validation and latency."""
    out = tmp_path_factory.mktemp("card")
    assert main(["evaluate", "--config", str(demo_config(quick=True)), "--out", str(out)]) == 0
    return out


def _rows(out: Path, run: dict) -> list[Row]:
    return read_rows(out / run["dir"] / "results.jsonl", get_method(run["method"]).row_type)


def test_report_numbers_match_the_rows(quick_card: Path) -> None:
    report = json.loads((quick_card / "report.json").read_text())
    info = json.loads((quick_card / "evaluate.json").read_text())
    assert set(report["models"]) == {"gaussian", "pgd"}
    methods_seen = {(r["model"], r["method"]) for r in info["runs"]}
    for method in ("ibp", "crown", "alpha-crown", "pgd"):
        assert ("gaussian", method) in methods_seen and ("pgd", method) in methods_seen
    assert ("gaussian", "smoothing") in methods_seen and ("pgd", "exact") in methods_seen
    n = report["n_examples"]
    for run in info["runs"]:
        rows = _rows(quick_card, run)
        rec = report["models"][run["model"]]["methods"][f"{run['method']}/{run['norm']}"]
        examples = sorted({r.index for r in rows})
        assert examples == info["indices"][: run["limit"] or n]
        for budget, value in (rec.get("certified_accuracy") or rec["attack_accuracy"]).items():
            b = float(budget)
            if run["method"] == "smoothing":
                expected = sum(r.correct and r.radius >= b for r in rows) / len(examples)  # type: ignore[attr-defined]
            elif b not in run["eps"]:
                assert value is None
                continue
            elif run["method"] == "pgd":
                expected = sum(r.correct and not r.attack_success for r in rows if r.eps == b) / len(examples)  # type: ignore[attr-defined]
            else:
                expected = sum(r.correct and r.certified for r in rows if r.eps == b) / len(examples)  # type: ignore[attr-defined]
            assert value == pytest.approx(expected), (run, budget)
        assert rec["seconds_per_example"] == pytest.approx(sum(r.seconds for r in rows) / len(examples))
    # the target-budget summary and the gap are taken from the same numbers, over the same examples
    for _name, entry in report["models"].items():
        for norm, target in entry["targets"].items():
            key = str(float(target["eps"]))
            assert target["attack_accuracy"] == entry["methods"][f"pgd/{norm}"]["attack_accuracy"][key]
            for method, acc in target["certified_accuracy"].items():
                assert acc == entry["methods"][f"{method}/{norm}"]["certified_accuracy"][key]
                same = target["methods"][method]
                if same["attack_accuracy"] is not None:
                    assert target["gap"][method] == pytest.approx(same["attack_accuracy"] - acc)
                    if same["deterministic"]:  # a certificate PGD breaks would be unsound
                        assert same["attack_accuracy"] >= acc - 1e-12
        measured = entry["latency"]["measured"]
        assert measured["undefended"]["seconds_per_example"]["median"] > 0
    smoothed = report["models"]["gaussian"]["latency"]["measured"]["defended"]
    (timing,) = smoothed.values()
    assert timing["ratio"]["median"] > 1 and timing["batch_size"] == 1000
    assert report["unsound"] == []


def test_report_files_are_complete_and_rerender_identically(quick_card: Path) -> None:
    for name in ("report.md", "report.html", "report.json", "curves.png", "clean_vs_certified.png"):
        assert (quick_card / name).stat().st_size > 500, name
    page = (quick_card / "report.html").read_text()
    assert "data:image/png;base64," in page and "<img" in page and 'src="curves.png"' not in page
    assert "probability" in page and "UNSOUND" not in page
    before = json.loads((quick_card / "report.json").read_text())
    (quick_card / "report.json").unlink()
    assert main(["report", str(quick_card)]) == 0
    assert json.loads((quick_card / "report.json").read_text()) == before


def _config(tmp_path: Path, model: Path, eps: float = 0.3) -> Path:
    path = tmp_path / "card.toml"
    path.write_text(f"""
[data]
dataset = "digits"
limit = 6

[[model]]
name = "standard"
path = "{model}"

[threat.linf]
eps = [{eps}]

[methods]
crown = {{}}
pgd = {{ steps = 30, restarts = 2 }}
""")
    return path


def test_unsound_certifier_is_flagged_and_fails_the_command(
    digits_standard_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import robustcert.bounds

    def always_verified(model, x, y, **kwargs):  # type: ignore[no-untyped-def]
        margins = torch.ones(x.shape[0], 10, dtype=torch.float64)
        margins[torch.arange(x.shape[0]), torch.as_tensor(y)] = float("inf")
        return margins

    monkeypatch.setattr(robustcert.bounds, "margin_lower", always_verified)
    out = tmp_path / "out"
    assert (
        main(["evaluate", "--config", str(_config(tmp_path, digits_standard_model)), "--out", str(out)]) == 3
    )
    assert "UNSOUND CERTIFICATES" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["unsound"] and all(u["method"] == "crown" for u in report["unsound"])
    pgd_broken = {
        r.index
        for r in read_rows(out / "runs/standard/pgd-linf/results.jsonl", AttackRow)
        if isinstance(r, AttackRow) and r.correct and r.attack_success
    }
    assert {u["index"] for u in report["unsound"]} == pgd_broken
    page = (out / "report.html").read_text()
    assert page.index('class="unsound"') < page.index("Summary at the target budget")
    assert "UNSOUND CERTIFICATES" in (out / "report.md").read_text().split("\n")[2]


def test_honest_certifier_on_the_same_config_is_sound(digits_standard_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert (
        main(["evaluate", "--config", str(_config(tmp_path, digits_standard_model)), "--out", str(out)]) == 0
    )
    assert json.loads((out / "report.json").read_text())["unsound"] == []


def test_config_errors() -> None:
    with pytest.raises(RobustCertError, match=r"\[data\] dataset"):
        validate_config({})
    base = {
        "data": {"dataset": "digits"},
        "model": [{"name": "a", "path": "x"}],
        "threat": {"linf": {"eps": [0.1]}},
    }
    with pytest.raises(RobustCertError, match="unknown key 'magic' in \\[methods\\]"):
        validate_config({**base, "methods": {"magic": {}}})
    with pytest.raises(RobustCertError, match="did you mean 'crown'"):
        validate_config({**base, "methods": {"crwn": {}}})
    with pytest.raises(RobustCertError, match="did you mean 'epochs'"):
        validate_config({**base, "model": [{"name": "a", "train": {"epoch": 3}}]})
    with pytest.raises(RobustCertError, match="did you mean 'methods'"):
        validate_config({**base, "method": {"crown": {}}})
    with pytest.raises(RobustCertError, match="did you mean 'alpha_steps'"):
        validate_config({**base, "methods": {"alpha-crown": {"alpha_step": 3}}})
    with pytest.raises(RobustCertError, match="alpha_steps must be >= 1"):
        validate_config({**base, "methods": {"alpha-crown": {"alpha_steps": 0}}})
    with pytest.raises(RobustCertError, match="unknown key 'norm'"):
        validate_config({**base, "methods": {"crown": {"norm": "l2"}}})
    with pytest.raises(RobustCertError, match="subset"):
        validate_config({**base, "methods": {"crown": {"eps": [0.3]}}})
    with pytest.raises(RobustCertError, match="did you mean 'linf'"):
        validate_config({**base, "threat": {"lnf": {"eps": [0.1]}}})
    with pytest.raises(RobustCertError, match="threat.l2"):
        validate_config({**base, "methods": {"smoothing": {}}})
    with pytest.raises(RobustCertError, match="values must be numbers >= 0"):
        validate_config({**base, "threat": {"linf": {"eps": [-0.1]}}})
    with pytest.raises(RobustCertError, match="exactly one of path"):
        validate_config({**base, "model": [{"name": "a"}]})
    with pytest.raises(RobustCertError, match="target"):
        validate_config({**base, "threat": {"linf": {"eps": [0.1], "target": 0.2}}})
