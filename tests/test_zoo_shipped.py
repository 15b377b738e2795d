"""Shipped models (issue 12, "Models that ship"): every model under robustcert/models/shipped loads by
name (``zoo:NAME``), and its clean and verified accuracy, recomputed from the committed weights on the
recorded subset with ``robustcert.bounds.margin_lower``, equal the figures recorded in its model.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustcert.cli import main
from robustcert.errors import RobustCertError
from robustcert.models.shipped import SHIPPED_DIR, shipped_names
from robustcert.models.sources import ModelSpec, load_model_source

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = shipped_names()
DIGITS = [n for n in NAMES if json.loads((SHIPPED_DIR / n / "model.json").read_text())["dataset"] == "digits"]
BATCH = 32  # as `robustcert certify`'s default --batch


def _indices(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi) + 1))


def _data(meta: dict):
    from robustcert.data import load_dataset

    try:
        return load_dataset(meta["dataset"], meta["certified"]["split"])
    except RobustCertError as exc:
        if meta["dataset"] == "fashion-mnist" and "does not exist" in str(exc):
            pytest.skip(f"Fashion-MNIST is not installed: {exc}")
        raise


def test_every_data_set_and_method_is_shipped() -> None:
    assert "fmnist-cnn-small-ibp-0.1" in NAMES
    methods = {json.loads((SHIPPED_DIR / n / "model.json").read_text())["train"]["method"] for n in DIGITS}
    assert methods == {"ibp", "crown-ibp", "sabr", "mtl-ibp"}


@pytest.mark.parametrize("name", NAMES)
def test_shipped_model_is_small_and_records_its_commands(name: str) -> None:
    directory = SHIPPED_DIR / name
    assert (directory / "model.pt").stat().st_size < 1_000_000
    meta = json.loads((directory / "model.json").read_text())
    assert meta["command"].startswith("robustcert train ")
    cert = meta["certified"]
    assert (
        cert["norm"] == "linf"
        and cert["eps"] > 0
        and {r["method"] for r in cert["results"]} >= {"ibp", "crown"}
    )
    for r in cert["results"]:
        assert r["command"].startswith(f"robustcert certify {r['method']} --model zoo:{name} ")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_accuracy_equals_the_record(name: str) -> None:
    from robustcert.bounds import margin_lower

    source = load_model_source(f"zoo:{name}")
    assert source.kind == "directory" and Path(source.location) == SHIPPED_DIR / name
    meta = source.meta
    cert = meta["certified"]
    data = _data(meta)
    model = source.module
    for record in cert["results"]:
        index = _indices(record["indices"])
        assert len(index) == record["n"]
        correct = verified = 0
        for start in range(0, len(index), BATCH):
            chunk = index[start : start + BATCH]
            x, y = data.x[chunk], data.y[chunk]
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            m = margin_lower(
                model,
                x,
                y,
                eps=cert["eps"],
                norm=cert["norm"],
                method=record["method"],
                float_model=record["float_model"],
            )
            correct += int(ok.sum())
            verified += int((ok & (m.min(dim=1).values > 0)).sum())
        assert correct == record["clean_correct"], (name, record["method"])
        assert verified == record["verified"], (name, record["method"], verified)
        assert record["verified_accuracy"] == verified / len(index)
    n = cert["n"]
    with torch.no_grad():
        clean = int((model(data.x[:n]).argmax(1) == data.y[:n]).sum())
    assert cert["indices"] == f"0-{n - 1}" and clean == cert["clean_correct"]
    assert cert["clean_accuracy"] == clean / n


def test_unknown_zoo_name_is_one_line_listing_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RobustCertError, match="available: zoo:") as info:
        ModelSpec("zoo:unknown")
    assert "\n" not in str(info.value) and all(f"zoo:{n}" in str(info.value) for n in NAMES)
    with pytest.raises(SystemExit) as exit_info:
        main(["certify", "ibp", "--model", "zoo:unknown", "--eps", "0.1", "--limit", "2", "--out", "unused"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --model zoo:unknown: no shipped model") and "\n" not in err, err
    assert "Traceback" not in err and not Path("unused").exists()


def test_certify_a_shipped_model_by_name_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = DIGITS[0]
    out = tmp_path / "run"
    main(["certify", "ibp", "--model", f"zoo:{name}", "--eps", "0.1", "--limit", "20", "--out", str(out)])
    run = json.loads((out / "run.json").read_text())
    assert run["dataset"] == "digits" and run["model_kind"] == "directory"
    assert Path(run["model"]) == SHIPPED_DIR / name
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == list(range(20))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_examples"] == 20 and "0.1" in summary["certified_accuracy"]


def test_evaluate_config_names_a_shipped_model(tmp_path: Path) -> None:
    from robustcert.evaluation.config import validate_config

    raw = {
        "data": {"dataset": "digits", "limit": 5},
        "model": [{"name": "shipped", "path": f"zoo:{DIGITS[0]}"}],
        "threat": {"linf": {"eps": [0.1], "target": 0.1}},
        "methods": {"ibp": {}},
    }
    config = validate_config(raw, base_dir=tmp_path)
    assert Path(config.models[0]["path"]) == SHIPPED_DIR / DIGITS[0]
    raw["model"] = [{"name": "shipped", "path": "zoo:nope"}]
    with pytest.raises(RobustCertError, match="no shipped model"):
        validate_config(raw, base_dir=tmp_path)
