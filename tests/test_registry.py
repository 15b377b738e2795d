"""The method registry: a method added through the registry alone runs from the CLI and from an evaluate
config; parameters are validated once with clear errors; docs/methods.md is generated from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from robustcert.cli import main
from robustcert.errors import RobustCertError
from robustcert.methods import BudgetParams, Method, ModelInfo, get_method, param, register, unregister
from robustcert.methods.docs import render
from robustcert.rows import BoundRow, Row
from robustcert.runs import read_rows


@dataclass(frozen=True, kw_only=True)
class ToyParams(BudgetParams):
    lipschitz: float = param(1e6, help="an assumed (huge) bound on the margin's L1-Lipschitz constant", min=0.0)


class ToyCertifier:
    """Margin lower bound = clean margin − lipschitz · eps · d: sound for any model whose margin changes by
    less than ``lipschitz`` per unit of L1 input change (true of the small test models for 1e6)."""

    batch_size = 4

    def __init__(self, model: nn.Module, params: ToyParams) -> None:
        self.model, self.params = model, params
        self.rows_per_example = len(params.eps)

    def certify_batch(self, xs: torch.Tensor, ys: list[int], indices: list[int], seeds: list[int]) -> list[list[Row]]:
        with torch.no_grad():
            logits = self.model(xs).double()
        out: list[list[Row]] = []
        for k, (y, index) in enumerate(zip(ys, indices, strict=True)):
            others = torch.cat([logits[k, :y], logits[k, y + 1 :]])
            margin = float(logits[k, y] - others.max())
            pred = int(logits[k].argmax())
            rows: list[Row] = []
            for eps in self.params.eps:
                lower = margin - self.params.lipschitz * eps * xs[k].numel()
                rows.append(BoundRow(index=index, label=y, method="toy", prediction=pred, correct=pred == y,
                                     certified=pred == y and lower > 0, norm=self.params.norm, eps=eps,
                                     margin_lower=lower))
            out.append(rows)
        return out


def _build(model: nn.Module, info: ModelInfo, params: ToyParams, log_path: Path | None) -> ToyCertifier:
    return ToyCertifier(model, params)


TOY = Method(name="toy", family="bound", params=ToyParams, build=_build, label="Toy", summary="a test method")


@pytest.fixture
def toy() -> Iterator[Method]:
    register(TOY)
    yield TOY
    unregister("toy")


def test_a_method_added_through_the_registry_runs_from_the_cli(
    toy: Method, digits_standard_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert main(["certify", "toy", "--model", str(digits_standard_model), "--limit", "6",
                 "--eps", "0,0.1", "--lipschitz", "100", "--out", str(out)]) == 0
    rows = read_rows(out / "results.jsonl", BoundRow)
    assert len(rows) == 12 and {r.method for r in rows} == {"toy"}
    assert all(not r.certified for r in rows if isinstance(r, BoundRow) and r.eps == 0.1)
    assert any(r.certified for r in rows if isinstance(r, BoundRow) and r.eps == 0.0)
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["lipschitz"] == 100.0 and run["family"] == "bound"
    with pytest.raises(SystemExit) as exit_info:
        main(["certify", "toy", "--model", str(digits_standard_model), "--lipschitz", "-1",
              "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2


def test_a_method_added_through_the_registry_runs_in_evaluate(
    toy: Method, digits_standard_model: Path, tmp_path: Path
) -> None:
    config = tmp_path / "card.toml"
    config.write_text(f"""
[data]
dataset = "digits"
limit = 4

[[model]]
name = "standard"
path = "{digits_standard_model}"

[threat.linf]
eps = [0.0, 0.01]
target = 0.01

[methods]
toy = {{ lipschitz = 3.0 }}
pgd = {{ steps = 5, restarts = 1 }}
""")
    out = tmp_path / "card"
    assert main(["evaluate", "--config", str(config), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "toy/linf" in report["models"]["standard"]["methods"]
    rows = read_rows(out / "runs/standard/toy-linf/results.jsonl", BoundRow)
    assert len(rows) == 8
    assert "Toy" in (out / "report.html").read_text()
    assert "toy" in render()


def test_params_are_validated_once_with_clear_errors() -> None:
    crown = get_method("crown")
    assert crown.make_params({"eps": "0.1,0.2"}).eps == (0.1, 0.2)  # type: ignore[attr-defined]
    cases = {
        "must be >= 0": {"eps": "-0.1"},
        "did you mean 'eps'": {"epz": "0.1"},
        "must be one of linf, l2": {"norm": "l3"},
        "must be a number": {"eps": "abc"},
        "lists a budget twice": {"eps": "0.1,0.1"},
        "must be a whole number": {"batch": "2.5"},
    }
    for message, values in cases.items():
        with pytest.raises(RobustCertError, match=message):
            crown.make_params(values)
    with pytest.raises(RobustCertError, match="supports --norm linf only"):
        get_method("exact").finalize(get_method("exact").make_params({"norm": "l2"}), ModelInfo((1, 8, 8), 10))
    with pytest.raises(RobustCertError, match="model was not trained with Gaussian noise"):
        smoothing = get_method("smoothing")
        smoothing.finalize(smoothing.make_params({}), ModelInfo((1, 8, 8), 10, {"train": {"method": "standard"}}))


def test_methods_doc_is_generated_from_the_registry() -> None:
    committed = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
    assert committed.read_text() == render(), "regenerate: python -m robustcert.methods.docs > docs/methods.md"
