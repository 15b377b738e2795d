"""A user's own model through the command line: an ONNX net that expects (x - mean) / std done outside it
and data in raw units 0..16 (scikit-learn's digits) in an npz. ``--input-range``/``--mean``/``--std`` make
it the same model as ``module:function`` returning ``Sequential(Normalize(mean, std), net)``; every run,
row and report records the domain; what does not fit is a one-line error."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustcert.cli import main
from robustcert.models.checkpoint import save_model
from robustcert.models.zoo import build_model
from robustcert.rows import AttackRow, BoundRow, SmoothingRow
from robustcert.runs import read_rows

PY_MODULE = "own_model_cli_nets"  # a unique name: other tests write their own module:function files
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _export(model: nn.Module, path: Path, dynamic_batch: bool, shape: tuple[int, ...] = (1, 1, 8, 8)) -> Path:
    axes = {"x": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(shape),), str(path), input_names=["x"], output_names=["logits"],
                          dynamic_axes=axes, dynamo=False)
    return path


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Digits in raw units 0..16 (npz), an MLP trained briefly on (x - mean) / std, exported to ONNX with
    and without a dynamic batch dimension, and ``own_model_cli_nets:build`` = Normalize + the same MLP."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("own_model")
    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # N×1×8×8 in 0..16
    y = digits.target.astype(np.int64)
    assert x.min() == 0 and x.max() == 16
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1200], order[1200:1400]
    npz = root / "digits16.npz"
    np.savez(npz, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test], num_classes=10)
    mean, std = float(x[train].mean()), float(x[train].std())
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = (torch.from_numpy(x[train]) - mean) / std, torch.from_numpy(y[train])
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        predictions = net((torch.from_numpy(x[test]) - mean) / std).argmax(1)
    accuracy = float((predictions == torch.from_numpy(y[test])).float().mean())
    assert accuracy > 0.85
    torch.save(net.state_dict(), root / "weights.pt")
    (root / f"{PY_MODULE}.py").write_text(
        "import torch\n"
        "from pathlib import Path\n"
        "from torch import nn\n"
        "from robustcert.models.normalize import Normalize\n"
        "def build():\n"
        "    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),\n"
        "                        nn.Linear(32, 10))\n"
        "    net.load_state_dict(torch.load(Path(__file__).parent / 'weights.pt', weights_only=True))\n"
        f"    return nn.Sequential(Normalize([{mean!r}], [{std!r}]), net).eval()\n"
    )
    sys.path.insert(0, str(root))
    sys.modules.pop(PY_MODULE, None)
    yield {
        "root": root, "npz": npz, "mean": mean, "std": std, "net": net,
        "onnx": {True: _export(net, root / "dyn.onnx", True), False: _export(net, root / "static.onnx", False)},
    }
    sys.path.remove(str(root))
    sys.modules.pop(PY_MODULE, None)


def _norm_args(own: dict) -> list[str]:
    return ["--mean", repr(own["mean"]), "--std", repr(own["std"])]


def _data(own: dict) -> list[str]:
    return ["--dataset", f"npz:{own['npz']}"]


def _rows(run_dir: Path, row_type: type) -> list[dict]:
    rows = [r.to_json() for r in read_rows(run_dir / "results.jsonl", row_type)]
    for r in rows:
        r.pop("seconds")
    return rows


def _run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_onnx_with_normalisation_and_domain_matches_the_python_model(own: dict, tmp_path: Path,
                                                                     dynamic_batch: bool) -> None:
    args = [*_data(own), "--limit", "12", "--eps", "0.25,1,2"]
    assert main(["certify", "crown", "--model", str(own["onnx"][dynamic_batch]), "--input-range", "0,16",
                 *_norm_args(own), *args, "--out", str(tmp_path / "onnx")]) == 0
    assert main(["certify", "crown", "--model", f"{PY_MODULE}:build", "--input-range", "0,16", *args,
                 "--out", str(tmp_path / "py")]) == 0
    a, b = _rows(tmp_path / "onnx", BoundRow), _rows(tmp_path / "py", BoundRow)
    assert len(a) == len(b) == 36
    assert {r["domain"] for r in a} == {r["domain"] for r in b} == {"0,16"}
    assert [(r["index"], r["eps"], r["certified"], r["prediction"], r["correct"]) for r in a] == [
        (r["index"], r["eps"], r["certified"], r["prediction"], r["correct"]) for r in b
    ]
    for ra, rb in zip(a, b, strict=True):
        assert ra["margin_lower"] == pytest.approx(rb["margin_lower"], abs=1e-6)
    # a meaningful comparison: a trained net, certified at the small budget, not at every budget
    assert sum(r["correct"] for r in a) >= 0.8 * len(a)
    assert any(r["certified"] for r in a if r["eps"] == 0.25)
    assert not all(r["certified"] for r in a if r["eps"] == 2.0)
    run = _run_json(tmp_path / "onnx")
    assert run["domain"] == "0,16" and run["model_kind"] == "onnx"
    assert run["normalize"] == {"mean": [own["mean"]], "std": [own["std"]]}
    assert _run_json(tmp_path / "py")["domain"] == "0,16" and "normalize" not in _run_json(tmp_path / "py")


def test_the_domain_reaches_the_bounds(own: dict, tmp_path: Path) -> None:
    """Digits are mostly 0 pixels: clipping the ball at 0 tightens CROWN, so [0, 16] certifies at least as
    much as the unbounded domain, with margins never lower and some higher."""
    args = ["--model", str(own["onnx"][True]), *_norm_args(own), *_data(own), "--limit", "8", "--eps", "0.5,1"]
    assert main(["certify", "crown", *args, "--input-range", "0,16", "--out", str(tmp_path / "box")]) == 0
    assert main(["certify", "crown", *args, "--input-range", "-inf,inf", "--out", str(tmp_path / "free")]) == 0
    box, free = _rows(tmp_path / "box", BoundRow), _rows(tmp_path / "free", BoundRow)
    assert {r["domain"] for r in free} == {"-inf,inf"} and _run_json(tmp_path / "free")["domain"] == "-inf,inf"
    assert all(a["margin_lower"] >= b["margin_lower"] for a, b in zip(box, free, strict=True))
    assert any(a["margin_lower"] > b["margin_lower"] + 1e-3 for a, b in zip(box, free, strict=True))
    assert all(a["certified"] >= b["certified"] for a, b in zip(box, free, strict=True))


def test_attack_and_smoothing_run_with_the_domain(own: dict, tmp_path: Path) -> None:
    model = ["--model", str(own["onnx"][False]), "--input-range", "0,16", *_norm_args(own), *_data(own)]
    assert main(["certify", "crown", *model, "--limit", "6", "--eps", "0.5,2,4", "--out", str(tmp_path / "c")]) == 0
    assert main(["attack", "pgd", *model, "--limit", "6", "--eps", "0.5,2,4", "--steps", "10", "--restarts", "1",
                 "--out", str(tmp_path / "a")]) == 0
    attack = read_rows(tmp_path / "a" / "results.jsonl", AttackRow)
    assert len(attack) == 18 and {r.domain for r in attack} == {"0,16"}
    assert _run_json(tmp_path / "a")["domain"] == "0,16"
    assert _run_json(tmp_path / "a")["normalize"] == {"mean": [own["mean"]], "std": [own["std"]]}
    crown = {(r.index, r.eps): r for r in read_rows(tmp_path / "c" / "results.jsonl", BoundRow)}
    for r in attack:  # both over B(x, eps) ∩ [0, 16]: a certified example cannot be attacked
        if crown[(r.index, r.eps)].certified:
            assert not r.attack_success and r.adv_margin > 0
    assert any(r.attack_success for r in attack if r.eps == 4.0)  # eps 4 of 16 breaks this undefended net
    assert main(["certify", "smoothing", *model, "--limit", "3", "--sigma", "2", "--n0", "20", "--n", "200",
                 "--alpha", "0.01", "--batch", "100", "--out", str(tmp_path / "s")]) == 0
    smooth = read_rows(tmp_path / "s" / "results.jsonl", SmoothingRow)
    assert len(smooth) == 3 and {r.domain for r in smooth} == {"0,16"}
    assert all(r.radius >= 0 and r.sigma == 2.0 for r in smooth) and any(r.certified for r in smooth)
    assert _run_json(tmp_path / "s")["domain"] == "0,16"


def _card(own: dict, tmp_path: Path, methods: str, threats: str, validation: str = "") -> Path:
    """An evaluate config in ``tmp_path/cfg`` with paths relative to it."""
    cfg = tmp_path / "cfg"
    cfg.mkdir(exist_ok=True)
    (cfg / "data").mkdir(exist_ok=True)
    (cfg / "data" / "digits16.npz").write_bytes(own["npz"].read_bytes())
    (cfg / "nets").mkdir(exist_ok=True)
    (cfg / "nets" / "mlp.onnx").write_bytes(own["onnx"][True].read_bytes())
    config = cfg / "card.toml"
    config.write_text(f"""
[data]
dataset = "npz:data/digits16.npz"
limit = 6
[[model]]
name = "own-mlp"
path = "nets/mlp.onnx"
input_range = [0, 16]
mean = {own["mean"]!r}
std = [{own["std"]!r}]
class_names = {json.dumps(NAMES)}
{threats}
[methods]
{methods}
{validation}
""")
    return config


def test_evaluate_records_the_domain(own: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _card(own, tmp_path, "crown = {}\npgd = { steps = 5, restarts = 1 }", "[threat.linf]\neps = [0.25, 1.0]")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths are relative to the config, not to the working directory
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "card")]) == 0
    report = json.loads((tmp_path / "card" / "report.json").read_text())
    entry = report["models"]["own-mlp"]
    assert entry["domain"] == "0,16" and entry["class_names"] == NAMES
    runs = json.loads((tmp_path / "card" / "evaluate.json").read_text())["runs"]
    assert {r["method"] for r in runs} == {"crown", "pgd"}
    for r in runs:
        run = _run_json(tmp_path / "card" / r["dir"])
        assert run["domain"] == "0,16" and run["class_names"] == NAMES
        assert run["normalize"] == {"mean": [own["mean"]], "std": [own["std"]]}
        row_type = AttackRow if r["method"] == "pgd" else BoundRow
        rows = read_rows(tmp_path / "card" / r["dir"] / "results.jsonl", row_type)
        assert len(rows) == 12 and {row.domain for row in rows} == {"0,16"}


def test_evaluate_with_smoothing_and_its_check_on_the_domain(own: dict, tmp_path: Path) -> None:
    config = _card(own, tmp_path, "smoothing = { sigma = 2.0, n0 = 20, n = 200, alpha = 0.01, batch = 100 }",
                   "[threat.l2]\neps = [1.0]", "[validation]\nsmoothing_attack = true\nsmoothing_attack_limit = 2")
    assert main(["evaluate", "--config", str(config), "--out", str(tmp_path / "card")]) == 0
    assert json.loads((tmp_path / "card" / "report.json").read_text())["models"]["own-mlp"]["domain"] == "0,16"
    # the check attacked certificates inside their radii ∩ [0, 16] (not [0, 1]) and broke none
    check = json.loads((tmp_path / "card" / "validation.json").read_text())["smoothing_attack"]["own-mlp"]
    assert check["attacked"] >= 1 and check["broken"] == []
    runs = json.loads((tmp_path / "card" / "evaluate.json").read_text())["runs"]
    smoothing = next(r for r in runs if r["method"] == "smoothing")
    rows = read_rows(tmp_path / "card" / smoothing["dir"] / "results.jsonl", SmoothingRow)
    assert {r.domain for r in rows} == {"0,16"} and any(r.radius > 0 for r in rows)


# --------------------------------------------------------------------------------------------------
# one-line errors
# --------------------------------------------------------------------------------------------------


def _fail(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_statements_that_do_not_fit_are_one_line_errors(own: dict, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    onnx = ["--model", str(own["onnx"][True]), *_data(own), "--limit", "2", "--out", str(tmp_path / "x")]
    crown = ["certify", "crown", *onnx]
    # the default domain [0, 1] excludes 0..16: say so, with both ranges and the fix
    err = _fail([*crown, *_norm_args(own)], capsys)
    assert "excludes" in err and "[0, 16]" in err and "[0, 1]" in err and "--input-range" in err
    err = _fail([*crown, *_norm_args(own), "--input-range", "0,8"], capsys)
    assert "excludes" in err and "[0, 8]" in err
    err = _fail([*crown, *_norm_args(own), "--input-range", "0,16;0,16;0,16"], capsys)
    assert "3 channel ranges" in err and "1 channels" in err
    for bad in ("0;16", "zero,16", "16,0", "0,16,32", "nan,16"):
        err = _fail([*crown, *_norm_args(own), "--input-range", bad], capsys)
        assert "--input-range" in err or "input domain" in err, (bad, err)
    err = _fail([*crown, "--input-range", "0,16", "--mean", repr(own["mean"])], capsys)
    assert "--std" in err and "both" in err
    err = _fail([*crown, "--input-range", "0,16", "--std", repr(own["std"])], capsys)
    assert "--mean" in err and "both" in err
    err = _fail([*crown, "--input-range", "0,16", "--mean", "4", "--std", "0"], capsys)
    assert "std" in err and "> 0" in err
    err = _fail([*crown, "--input-range", "0,16", "--mean", "4", "--std", "-1"], capsys)
    assert "std" in err and "> 0" in err
    err = _fail([*crown, "--input-range", "0,16", "--mean", "4,4", "--std", "5,5"], capsys)
    assert "2 values" in err and "1 channels" in err
    err = _fail([*crown, "--input-range", "0,16", "--mean", "4", "--std", "nan"], capsys)
    assert "--std" in err
    err = _fail([*crown, "--input-range", "0,16", *_norm_args(own), "--class-names", "a,b,c"], capsys)
    assert "3 names" in err and "10 classes" in err
    err = _fail([*crown, "--input-range", "0,16", *_norm_args(own), "--class-names", ",".join(["a"] * 10)], capsys)
    assert "distinct" in err
    err = _fail(["attack", "pgd", *onnx, *_norm_args(own), "--input-range", "0,15"], capsys)
    assert "excludes" in err


def test_normalisation_of_a_model_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model("mlp-2x64", (1, 8, 8), 10, [0.3], [0.3])
    meta = {"arch": "mlp-2x64", "dataset": "digits", "input_shape": [1, 8, 8], "num_classes": 10,
            "normalize": {"mean": [0.3], "std": [0.3]}}
    directory = save_model(tmp_path / "zoo", model, meta)
    base = ["certify", "crown", "--model", str(directory), "--limit", "2", "--out", str(tmp_path / "x")]
    assert main([*base, "--eps", "0.01"]) == 0  # the directory itself is fine
    assert _run_json(tmp_path / "x")["domain"] == "0,1"
    assert {r.domain for r in read_rows(tmp_path / "x" / "results.jsonl", BoundRow)} == {"0,1"}
    err = _fail([*base, "--force", "--mean", "0.5", "--std", "0.25"], capsys)
    assert "model directory" in err and "--mean/--std" in err


def test_a_config_stating_a_domain_for_a_trained_model_is_refused(own: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "card.toml"
    config.write_text("""
[data]
dataset = "digits"
limit = 2
[[model]]
name = "trained"
train = { arch = "mlp-2x64", epochs = 1 }
input_range = [0, 16]
[threat.linf]
eps = [0.01]
[methods]
crown = {}
""")
    err = _fail(["evaluate", "--config", str(config), "--out", str(tmp_path / "card")], capsys)
    assert "input_range" in err and "path" in err
    assert not (tmp_path / "card" / "trained").exists()  # refused before anything was trained
    bad = _card(own, tmp_path, "crown = {}", "[threat.linf]\neps = [0.25]")
    bad.write_text(bad.read_text().replace("input_range = [0, 16]", "input_range = [16, 0]"))
    assert "empty" in _fail(["evaluate", "--config", str(bad), "--out", str(tmp_path / "card2")], capsys)
    bad.write_text(bad.read_text().replace("input_range = [16, 0]", "input_range = [0, 15]"))
    assert "excludes" in _fail(["evaluate", "--config", str(bad), "--out", str(tmp_path / "card3")], capsys)


def test_an_empty_config_input_range_names_the_model_and_key(own: dict, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = _card(own, tmp_path, "crown = {}", "[threat.linf]\neps = [0.25]")
    bad.write_text(bad.read_text().replace("input_range = [0, 16]", "input_range = [16, 0]"))
    err = _fail(["evaluate", "--config", str(bad), "--out", str(tmp_path / "card")], capsys)
    assert "empty" in err and "own-mlp" in err and "input_range" in err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace/save, to make the file
def test_model_files_that_need_trust_or_do_not_fit(own: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from robustcert.models.normalize import Normalize

    full = nn.Sequential(Normalize([own["mean"]], [own["std"]]), own["net"]).eval()
    example = torch.zeros(1, 1, 8, 8)
    torch.export.save(torch.export.export(full, (example,)), tmp_path / "net.pt2")
    torch.jit.save(torch.jit.trace(full, example), str(tmp_path / "net.pt"))
    common = ["--input-range", "0,16", *_data(own), "--limit", "4", "--eps", "0.5,1"]
    for name in ("net.pt2", "net.pt"):
        err = _fail(["certify", "crown", "--model", str(tmp_path / name), *common, "--out", str(tmp_path / "x")],
                    capsys)
        assert "--trust-model-file" in err and "trust" in err
        assert not (tmp_path / "x" / "results.jsonl").exists()
    # trusted, the .pt2 (normalisation inside) gives the ONNX + --mean/--std rows
    assert main(["certify", "crown", "--model", str(tmp_path / "net.pt2"), "--trust-model-file", *common,
                 "--out", str(tmp_path / "pt2")]) == 0
    assert main(["certify", "crown", "--model", str(own["onnx"][True]), *_norm_args(own), *common,
                 "--out", str(tmp_path / "onnx")]) == 0
    a, b = _rows(tmp_path / "pt2", BoundRow), _rows(tmp_path / "onnx", BoundRow)
    assert [(r["certified"], r["prediction"]) for r in a] == [(r["certified"], r["prediction"]) for r in b]
    assert all(ra["margin_lower"] == pytest.approx(rb["margin_lower"], abs=1e-5) for ra, rb in zip(a, b, strict=True))
    assert _run_json(tmp_path / "pt2")["model_kind"] == "torch.export"
    # an ONNX whose output is not one vector of class scores per example
    grid = nn.Sequential(nn.Conv2d(1, 10, 8)).eval()  # [B, 10, 1, 1]
    _export(grid, tmp_path / "grid.onnx", True)
    err = _fail(["certify", "crown", "--model", str(tmp_path / "grid.onnx"), *_norm_args(own), *common,
                 "--out", str(tmp_path / "x")], capsys)
    assert "class scores" in err and "[1, K]" in err
    # data of another shape than the model's (4×4 images in 0..16 against an 8×8 net)
    small = tmp_path / "small.npz"
    rng = np.random.default_rng(0)
    np.savez(small, x_test=rng.uniform(0, 16, (5, 1, 4, 4)).astype(np.float32),
             y_test=np.arange(5, dtype=np.int64), num_classes=10)
    for dynamic in (True, False):
        err = _fail(["certify", "crown", "--model", str(own["onnx"][dynamic]), *_norm_args(own),
                     "--input-range", "0,16", "--dataset", f"npz:{small}", "--out", str(tmp_path / "x")], capsys)
        assert "[1, 4, 4]" in err and "[1, 8, 8]" in err


def test_resume_with_another_domain_is_refused(own: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    base = ["certify", "crown", "--model", str(own["onnx"][True]), *_norm_args(own), *_data(own), "--eps", "0.5",
            "--out", str(out)]
    assert main([*base, "--input-range", "0,16", "--limit", "5"]) == 0
    err = _fail([*base, "--input-range", "0,17", "--limit", "5", "--resume"], capsys)
    assert "cannot resume" in err and "'domain'" in err
    err = _fail([*base, "--input-range=-1,16", "--limit", "5", "--resume"], capsys)
    assert "'domain'" in err
    err = _fail([*base[:4], "--mean", "5", "--std", repr(own["std"]), *base[8:], "--input-range", "0,16",
                 "--limit", "5", "--resume"], capsys)
    assert "'normalize'" in err
    results = out / "results.jsonl"
    assert len(read_rows(results, BoundRow)) == 5  # untouched
    results.write_text(results.read_text().splitlines(keepends=True)[0])  # as if interrupted after one example
    assert main([*base, "--input-range", "0,16", "--limit", "5", "--resume"]) == 0  # the same domain resumes
    rows = read_rows(results, BoundRow)
    assert [r.index for r in rows] == [0, 1, 2, 3, 4] and {r.domain for r in rows} == {"0,16"}


def test_negative_input_range_is_accepted_without_equals(own: dict, tmp_path: Path) -> None:
    """``--input-range -1,16`` (a value starting with a minus sign) is the range, not an option."""
    assert main(["certify", "ibp", "--model", str(own["onnx"][True]), *_norm_args(own), *_data(own),
                 "--input-range", "-1,16", "--limit", "2", "--eps", "0.5", "--out", str(tmp_path / "r")]) == 0
    assert _run_json(tmp_path / "r")["domain"] == "-1,16"
    assert main(["certify", "ibp", "--model", str(own["onnx"][True]), "--mean", "-4.5", "--std", "6",
                 *_data(own), "--input-range", "-1,16", "--limit", "2", "--eps", "0.5", "--out",
                 str(tmp_path / "m")]) == 0
    assert _run_json(tmp_path / "m")["normalize"] == {"mean": [-4.5], "std": [6.0]}
