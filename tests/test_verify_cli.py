"""``robustcert verify`` on tiny ONNX nets: answers cross-checked against dense sampling, PGD and the exact
MILP; counterexamples re-checked from the result file; bad input as one-line errors (exit 2, ``error`` in
the result file); ``--instances`` resumable without losing or repeating rows."""

from __future__ import annotations

import csv
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from cli_helpers import one_error_line as _run_error
from torch import nn

from robustcert.cli import main
from robustcert.verify import instances as instances_mod
from robustcert.verify import pipeline
from robustcert.verify.cli import EXIT_UNDECIDED
from robustcert.vnnlib import read_vnnlib

pytestmark = pytest.mark.usefixtures("one_thread")


def _export(net: nn.Module, path: Path, n_in: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, n_in),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamo=False,
        )
    return path


def _mlp(seed: int, sizes: list[int]) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("verify")
    cls = _mlp(0, [4, 16, 16, 3])
    ctrl = _mlp(1, [2, 12, 12, 2])
    soft = nn.Sequential(_mlp(2, [4, 8, 3]), nn.Softmax(dim=1)).eval()
    return {
        "root": root,
        "cls": cls,
        "cls_onnx": _export(cls, root / "cls.onnx", 4),
        "ctrl": ctrl,
        "ctrl_onnx": _export(ctrl, root / "ctrl.onnx", 2),
        "soft_onnx": _export(soft, root / "soft.onnx", 4),
    }


def _decl(n_in: int, n_out: int) -> list[str]:
    return [f"(declare-const X_{i} Real)" for i in range(n_in)] + [
        f"(declare-const Y_{j} Real)" for j in range(n_out)
    ]


def _robustness_spec(path: Path, center: list[float], eps: float, label: int, k: int) -> Path:
    lines = _decl(len(center), k)
    for i, c in enumerate(center):
        lines += [f"(assert (<= X_{i} {c + eps!r}))", f"(assert (>= X_{i} {c - eps!r}))"]
    lines.append(
        "(assert (or " + " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(k) if j != label) + "))"
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def _label(net: nn.Module, center: list[float]) -> int:
    with torch.no_grad():
        return int(net(torch.tensor([center]))[0].argmax())


def _sample_box(lo: torch.Tensor, hi: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = lo.float() + torch.rand((n, lo.numel()), generator=g) * (hi - lo).float()
    corners = torch.cartesian_prod(
        *[torch.stack([a, b]) for a, b in zip(lo.float(), hi.float(), strict=True)]
    )
    return torch.cat([pts.clamp(lo.float(), hi.float()), corners.reshape(-1, lo.numel())])


def _violations(net: nn.Module, spec_path: Path, n: int = 20000) -> int:
    """How many sampled points (random + corners) of any box satisfy one of its conjunctions (float32)."""
    spec = read_vnnlib(spec_path)
    count = 0
    for case in spec.cases:
        x = _sample_box(case.box.lo_in, case.box.hi_in, n, 0)
        with torch.no_grad():
            y = net(x).double()
        for conj in case.conjunctions:
            count += int(((y @ conj.C.T - conj.d) <= 0).all(dim=1).sum())
    return count


CENTER = [0.5, 0.4, 0.6, 0.3]
EPS = [0.002, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4]


@pytest.fixture(scope="module")
def cls_answers(nets: dict) -> dict[float, pipeline.Verdict]:
    label = _label(nets["cls"], CENTER)
    out = {}
    for eps in EPS:
        spec = _robustness_spec(nets["root"] / f"rob_{eps}.vnnlib", CENTER, eps, label, 3)
        out[eps] = pipeline.verify_files(nets["cls_onnx"], spec, timeout=60)
    return out


def test_classification_answers_are_decided_both_ways(cls_answers: dict):
    answers = [v.answer for v in cls_answers.values()]
    assert "unsat" in answers and "sat" in answers, answers
    assert answers[0] == "unsat" and answers[-1] == "sat"


def test_unsat_never_violated_by_sampling_or_pgd(nets: dict, cls_answers: dict):
    from robustcert.attacks import pgd
    from robustcert.attacks.pgd import margin

    label = _label(nets["cls"], CENTER)
    for eps, verdict in cls_answers.items():
        if verdict.answer != "unsat":
            continue
        spec = nets["root"] / f"rob_{eps}.vnnlib"
        assert _violations(nets["cls"], spec) == 0, eps
        x0 = torch.tensor([CENTER])
        adv = pgd(nets["cls"], x0, torch.tensor([label]), eps * (1 - 1e-6), steps=100, restarts=5, seed=1)
        assert float(margin(nets["cls"], adv, torch.tensor([label]))[0]) > 0, eps


def test_answers_agree_with_the_exact_milp(nets: dict, cls_answers: dict):
    from robustcert.exact import exact_margin

    label = _label(nets["cls"], CENTER)
    checked = 0
    for eps, verdict in cls_answers.items():
        spec = read_vnnlib(nets["root"] / f"rob_{eps}.vnnlib")
        box = spec.cases[0].box
        res = exact_margin(
            nets["cls"], None, label, box=(box.lo.float()[None], box.hi.float()[None]), time_limit=30
        )
        if verdict.answer == "unsat":
            assert res.status == "robust", (eps, res.status)
            checked += 1
        elif verdict.answer == "sat":
            assert res.status != "robust", (eps, res.status)
            checked += 1
    assert checked == len(EPS)


def test_bounds_alone_never_prove_a_violated_instance(nets: dict, monkeypatch: pytest.MonkeyPatch):
    """With falsification switched off, the bounds (CROWN, α-CROWN, branch and bound) must leave every
    instance the MILP refutes open: ``unknown``, or ``sat`` through branch and bound's own attack, whose
    point the pipeline checks like any other."""
    from robustcert.exact import exact_margin

    monkeypatch.setattr(pipeline, "falsify", lambda *a, **k: None)
    label = _label(nets["cls"], CENTER)
    refuted = 0
    for eps in EPS:
        path = nets["root"] / f"rob_{eps}.vnnlib"
        box = read_vnnlib(path).cases[0].box
        res = exact_margin(
            nets["cls"], None, label, box=(box.lo.float()[None], box.hi.float()[None]), time_limit=30
        )
        answer = pipeline.verify_files(nets["cls_onnx"], path, timeout=60).answer
        if res.status == "counterexample":
            refuted += 1
            assert answer in ("unknown", "sat"), eps
        else:
            assert res.status == "robust" and answer in ("unsat", "unknown"), (eps, res.status, answer)
    assert refuted >= 2


def _parse_result(path: Path) -> tuple[str, dict[str, float]]:
    text = path.read_text()
    first, _, rest = text.partition("\n")
    values = {}
    for tok in rest.replace("(", " ").replace(")", " \n").split("\n"):
        parts = tok.split()
        if len(parts) == 2:
            values[parts[0]] = float(parts[1])
    return first, values


def _check_counterexample(net: nn.Module, values: dict[str, float], n_in: int, k: int, violates) -> None:
    """The printed X are float32 values, the printed Y are the net's float32 outputs there (batch 1),
    and ``violates(x, y)`` — written independently of the parser — holds."""
    x = torch.tensor([[values[f"X_{i}"] for i in range(n_in)]], dtype=torch.float32)
    assert all(float(x[0, i]) == values[f"X_{i}"] for i in range(n_in))
    with torch.no_grad():
        y = net(x)[0]
    assert [float(v) for v in y] == [values[f"Y_{j}"] for j in range(k)]
    assert violates([Fraction(float(v)) for v in x[0]], [Fraction(float(v)) for v in y])


def test_sat_result_file_counterexample_is_checked(nets: dict, capsys: pytest.CaptureFixture):
    # Y_0 <= median of Y_0 over the box: half the box violates the property
    lo, hi = torch.tensor([0.2, 0.1, 0.0, 0.3]), torch.tensor([0.6, 0.9, 0.5, 0.35])
    with torch.no_grad():
        t = float(nets["cls"](_sample_box(lo, hi, 4000, 3))[:, 0].median())
    lines = _decl(4, 3)
    for i in range(4):
        lines += [f"(assert (>= X_{i} {float(lo[i])!r}))", f"(assert (<= X_{i} {float(hi[i])!r}))"]
    lines.append(f"(assert (<= Y_0 {t!r}))")
    spec = nets["root"] / "median.vnnlib"
    spec.write_text("\n".join(lines) + "\n")
    out = nets["root"] / "median.txt"
    assert main(["verify", str(nets["cls_onnx"]), str(spec), "--timeout", "30", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("sat")
    first, values = _parse_result(out)
    assert first == "sat"

    def violates(xs: list[Fraction], ys: list[Fraction]) -> bool:
        inside = all(Fraction(float(lo[i])) <= xs[i] <= Fraction(float(hi[i])) for i in range(4))
        return inside and ys[0] <= Fraction(t)

    _check_counterexample(nets["cls"], values, 4, 3, violates)


def _control_spec(path: Path, t0: float, t1: float) -> Path:
    """Two input boxes with general linear output constraints (control-benchmark style)."""
    lines = _decl(2, 2)
    lines.append(
        "(assert (or"
        " (and (>= X_0 -1.0) (<= X_0 0.0) (>= X_1 -0.5) (<= X_1 0.5) (<= (+ Y_0 (* 0.5 Y_1)) "
        + repr(t0)
        + "))"
        " (and (>= X_0 0.0) (<= X_0 1.0) (>= X_1 -0.5) (<= X_1 0.5) (>= (- Y_1 Y_0) " + repr(t1) + "))))"
    )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_control_style_spec_both_answers(nets: dict, capsys: pytest.CaptureFixture):
    from robustcert.bounds import logit_bounds

    ctrl = nets["ctrl"]
    # Thresholds from the nets' own ranges: far below/above (unsat), inside (sat).
    x = torch.cartesian_prod(torch.linspace(-1, 0, 201), torch.linspace(-0.5, 0.5, 201))
    x2 = torch.cartesian_prod(torch.linspace(0, 1, 201), torch.linspace(-0.5, 0.5, 201))
    with torch.no_grad():
        a = ctrl(x)[:, 0] + 0.5 * ctrl(x)[:, 1]
        b = ctrl(x2)[:, 1] - ctrl(x2)[:, 0]
    lo, hi = logit_bounds(
        ctrl, None, method="ibp", box=(torch.tensor([[-1.0, -0.5]]), torch.tensor([[1.0, 0.5]]))
    )
    span = float((hi - lo).abs().max())
    unsat = _control_spec(
        nets["root"] / "ctrl_unsat.vnnlib", float(a.min()) - 2 * span, float(b.max()) + 2 * span
    )
    sat = _control_spec(nets["root"] / "ctrl_sat.vnnlib", float(a.median()), float(b.max()) + 2 * span)
    assert main(["verify", str(nets["ctrl_onnx"]), str(unsat), "--out", str(nets["root"] / "cu.txt")]) == 0
    assert (nets["root"] / "cu.txt").read_text() == "unsat\n"
    assert _violations(ctrl, unsat) == 0
    assert main(["verify", str(nets["ctrl_onnx"]), str(sat), "--out", str(nets["root"] / "cs.txt")]) == 0
    first, values = _parse_result(nets["root"] / "cs.txt")
    assert first == "sat"
    t0 = Fraction(float(a.median()))

    def violates(xs: list[Fraction], ys: list[Fraction]) -> bool:  # only the first box can be violated
        inside = -1 <= xs[0] <= 0 and Fraction(-1, 2) <= xs[1] <= Fraction(1, 2)
        return inside and ys[0] + Fraction(1, 2) * ys[1] <= t0

    _check_counterexample(ctrl, values, 2, 2, violates)
    capsys.readouterr()


def test_spec_that_can_never_hold_is_unsat(nets: dict, capsys: pytest.CaptureFixture):
    spec = nets["root"] / "empty.vnnlib"
    lines = _decl(4, 3) + [f"(assert (<= X_{i} 0.6)) (assert (>= X_{i} 0.4))" for i in range(4)]
    spec.write_text(
        "\n".join(lines + ["(assert (or (and (<= X_0 0.3) (>= Y_0 Y_1)) (and (<= 1 0) (>= Y_0 Y_2))))"])
    )
    assert main(["verify", str(nets["cls_onnx"]), str(spec), "--out", str(nets["root"] / "empty.txt")]) == 0
    assert (nets["root"] / "empty.txt").read_text() == "unsat\n"
    capsys.readouterr()


def test_bad_input_one_line_errors(nets: dict, capsys: pytest.CaptureFixture):
    root = nets["root"]
    onnx = str(nets["cls_onnx"])
    bad = root / "bad.vnnlib"
    bad.write_text("\n".join(_decl(4, 3)) + "\n(assert (ite (<= Y_0 0) (<= Y_0 1) (<= Y_0 2)))\n")
    out = root / "bad.txt"
    err = _run_error(["verify", onnx, str(bad), "--out", str(out)], capsys)
    assert "bad.vnnlib line 8: unsupported construct 'ite'" in err
    assert out.read_text() == "error\n"
    wrong_x = _robustness_spec(root / "x5.vnnlib", [0.5] * 5, 0.1, 0, 3)
    assert "declares 5 inputs" in _run_error(["verify", onnx, str(wrong_x)], capsys)
    wrong_y = _robustness_spec(root / "y4.vnnlib", CENTER, 0.1, 0, 4)
    assert "declares 4 outputs" in _run_error(["verify", onnx, str(wrong_y)], capsys)
    good = _robustness_spec(root / "good.vnnlib", CENTER, 0.01, 0, 3)
    assert "does not exist" in _run_error(["verify", str(root / "none.onnx"), str(good)], capsys)
    assert "does not exist" in _run_error(["verify", onnx, str(root / "none.vnnlib")], capsys)
    assert "seconds > 0" in _run_error(["verify", onnx, str(good), "--timeout", "0"], capsys)
    assert "seconds > 0" in _run_error(["verify", onnx, str(good), "--timeout", "-3"], capsys)
    garbage = root / "garbage.onnx"
    garbage.write_bytes(b"not an onnx file")
    assert "onnx" in _run_error(["verify", str(garbage), str(good)], capsys).lower()
    assert "MODEL.onnx SPEC.vnnlib" in _run_error(["verify", onnx], capsys)


def test_softmax_model_refused(nets: dict, capsys: pytest.CaptureFixture):
    """Bounds are on the logits; float32 softmax outputs can tie where logits do not: refused."""
    pairwise = _robustness_spec(nets["root"] / "soft_pair.vnnlib", CENTER, 0.001, 0, 3)
    err = _run_error(["verify", str(nets["soft_onnx"]), str(pairwise)], capsys)
    assert "ends in softmax" in err and "export the model without" in err


def test_timeout_and_unknown_exit_status(
    nets: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    spec = _robustness_spec(nets["root"] / "t.vnnlib", CENTER, 0.01, _label(nets["cls"], CENTER), 3)
    out = nets["root"] / "t.txt"
    assert (
        main(["verify", str(nets["cls_onnx"]), str(spec), "--timeout", "1e-9", "--out", str(out)])
        == EXIT_UNDECIDED
    )
    assert out.read_text() == "timeout\n"
    monkeypatch.setattr(pipeline, "proven", lambda *a, **k: [False] * len(a[3]))
    # with the bounds' stages failing, branch and bound still decides the instance
    assert main(["verify", str(nets["cls_onnx"]), str(spec), "--out", str(out)]) == 0
    assert out.read_text() == "unsat\n"
    monkeypatch.setattr(pipeline, "branch_and_bound_pair", lambda *a, **k: ("unknown", None))
    assert main(["verify", str(nets["cls_onnx"]), str(spec), "--out", str(out)]) == EXIT_UNDECIDED
    assert out.read_text() == "unknown\n"
    capsys.readouterr()


@pytest.mark.parametrize("stage", ["bab", "input-split"])
def test_branch_and_bound_stage_agrees_with_the_milp(
    nets: dict, monkeypatch: pytest.MonkeyPatch, stage: str
):
    """With CROWN / alpha-CROWN disabled, every robustness instance is decided by the complete stage
    (or the attacks) and agrees with the exact MILP: ReLU branch and bound (forced by lowering the
    input-count limit of input splitting below this net's 4 inputs) and input splitting (the default
    for 4 inputs)."""
    from robustcert.exact import exact_margin

    monkeypatch.setattr(pipeline, "proven", lambda *a, **k: [False] * len(a[3]))
    if stage == "bab":
        monkeypatch.setattr(pipeline, "MAX_INPUTS", 3)
    label = _label(nets["cls"], CENTER)
    stages = set()
    for eps in EPS:
        path = nets["root"] / f"rob_{eps}.vnnlib"
        box = read_vnnlib(path).cases[0].box
        res = exact_margin(
            nets["cls"], None, label, box=(box.lo.float()[None], box.hi.float()[None]), time_limit=30
        )
        verdict = pipeline.verify_files(nets["cls_onnx"], path, timeout=60)
        stages.add(verdict.stage)
        if res.status == "robust":
            assert verdict.answer == "unsat" and verdict.stage == stage, (eps, verdict)
        elif res.status == "counterexample":
            assert verdict.answer == "sat", (eps, verdict)
    assert stage in stages


def _instances(nets: dict) -> Path:
    root = nets["root"] / "inst"
    (root / "specs").mkdir(parents=True, exist_ok=True)
    label = _label(nets["cls"], CENTER)
    rows = []
    for k, eps in enumerate([0.002, 0.4, 0.01, 0.2, 0.03]):
        _robustness_spec(root / "specs" / f"s{k}.vnnlib", CENTER, eps, label, 3)
        rows.append(f"../cls.onnx,specs/s{k}.vnnlib,30")
    (root / "instances.csv").write_text("\n".join(rows) + "\n")
    return root / "instances.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_instances_resume_loses_and_repeats_nothing(
    nets: dict, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
):
    csv_path = _instances(nets)
    out = nets["root"] / "inst_out"
    real = pipeline.verify_files
    calls: list[str] = []

    def dies_on_third(onnx, vnnlib, timeout, seed=0):
        calls.append(Path(vnnlib).name)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(onnx, vnnlib, timeout, seed)

    monkeypatch.setattr(pipeline, "verify_files", dies_on_third)
    with pytest.raises(SystemExit) as info:
        main(["verify", "--instances", str(csv_path), "--out", str(out)])
    assert info.value.code == 1  # an internal error: one line, status 1
    assert "killed" in capsys.readouterr().err
    rows = _rows(out / "results.csv")
    assert [r["instance"] for r in rows] == ["0", "1"]
    # a kill in the middle of a write leaves a torn last line
    with open(out / "results.csv", "a") as f:
        f.write("2,../cls.onnx,specs/s2.vnn")
    assert "already holds" in _run_error(["verify", "--instances", str(csv_path), "--out", str(out)], capsys)
    monkeypatch.setattr(pipeline, "verify_files", real)
    assert main(["verify", "--instances", str(csv_path), "--out", str(out), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "incomplete" in captured.err
    rows = _rows(out / "results.csv")
    assert [r["instance"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["answer"] for r in rows] == ["unsat", "sat", "unsat", "sat", "unsat"]
    assert all(float(r["seconds"]) >= 0 for r in rows)
    assert sorted(p.name for p in (out / "counterexamples").iterdir()) == ["1.txt", "3.txt"]
    # a finished run resumed again computes nothing and keeps its rows
    monkeypatch.setattr(
        pipeline, "verify_files", lambda *a, **k: pytest.fail("recomputed a finished instance")
    )
    assert main(["verify", "--instances", str(csv_path), "--out", str(out), "--resume"]) == 0
    assert len(_rows(out / "results.csv")) == 5
    # other instances in the same directory are refused
    csv_path.write_text(csv_path.read_text() + "../cls.onnx,specs/s0.vnnlib,10\n")
    assert "other instances" in _run_error(
        ["verify", "--instances", str(csv_path), "--out", str(out), "--resume"], capsys
    )


def test_instances_bad_rows(nets: dict, capsys: pytest.CaptureFixture, tmp_path: Path):
    bad = tmp_path / "instances.csv"
    bad.write_text(f"{nets['cls_onnx']},missing.vnnlib,10\n")
    assert "missing.vnnlib does not exist" in _run_error(["verify", "--instances", str(bad)], capsys)
    spec = _robustness_spec(tmp_path / "s.vnnlib", CENTER, 0.01, 0, 3)
    bad.write_text(f"{nets['cls_onnx']},{spec.name},0\n")
    assert "row 1: timeout must be > 0" in _run_error(["verify", "--instances", str(bad)], capsys)
    bad.write_text(f"{nets['cls_onnx']},{spec.name}\n")
    assert "expected onnx,vnnlib,timeout" in _run_error(["verify", "--instances", str(bad)], capsys)
    # a spec that does not fit its model is an `error` row, and the run goes on
    wrong = _robustness_spec(tmp_path / "w.vnnlib", [0.5] * 5, 0.01, 0, 3)
    bad.write_text(f"{nets['cls_onnx']},{wrong.name},10\n{nets['cls_onnx']},{spec.name},10\n")
    assert main(["verify", "--instances", str(bad), "--out", str(tmp_path / "o")]) == 0
    assert [r["answer"] for r in _rows(tmp_path / "o" / "results.csv")][0] == "error"
    assert "declares 5 inputs" in capsys.readouterr().err
    assert instances_mod.HEADER[0] == "instance"


def test_box_bounds_methods_sound_and_ordered(nets: dict):
    """box_bounds(method="alpha-crown") is never looser than CROWN, and both hold at sampled points of the
    float32 network (float_model="float32")."""
    from robustcert.bounds import box_bounds

    net = nets["cls"]
    lo, hi = torch.tensor([[0.3, 0.2, 0.4, 0.1]]), torch.tensor([[0.7, 0.6, 0.8, 0.5]])
    C = torch.tensor([[[1.0, -1.0, 0.0], [0.5, 0.0, -2.0], [0.0, 1.0, 1.0]]], dtype=torch.float64)
    crown = box_bounds(net, lo, hi, C, float_model="float32").spec_lower
    alpha = box_bounds(net, lo, hi, C, float_model="float32", method="alpha-crown", alpha_steps=30).spec_lower
    assert bool((alpha >= crown).all())
    with torch.no_grad():
        y = net(_sample_box(lo[0].double(), hi[0].double(), 20000, 5)).double()
    assert bool(((y @ C[0].T) >= alpha).all())
    with pytest.raises(Exception, match="unknown method"):
        box_bounds(net, lo, hi, C, method="ibp")


def test_deeper_net_agrees_with_the_exact_milp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A second tiny net (6-20-20-4), three centres × three eps: every decided answer agrees with the
    MILP, with and without the pipeline's falsification (the bounds must never contradict a MILP
    counterexample)."""
    from robustcert.exact import exact_margin

    net = _mlp(3, [6, 20, 20, 4])
    with torch.no_grad():  # larger weights: the classes change inside the boxes
        for p in net.parameters():
            p.mul_(2.0)
    onnx = _export(net, tmp_path / "deep.onnx", 6)
    g = torch.Generator().manual_seed(4)
    real_falsify = pipeline.falsify
    tally = {"unsat": 0, "sat": 0, "unknown": 0}
    for c in range(3):
        center = [round(float(v), 4) for v in 0.2 + 0.6 * torch.rand(6, generator=g)]
        label = _label(net, center)
        for eps in (0.02, 0.1, 0.3):
            spec = _robustness_spec(tmp_path / f"d{c}_{eps}.vnnlib", center, eps, label, 4)
            box = read_vnnlib(spec).cases[0].box
            res = exact_margin(
                net, None, label, box=(box.lo.float()[None], box.hi.float()[None]), time_limit=30
            )
            assert res.status in ("robust", "counterexample")
            for attack in (True, False):
                monkeypatch.setattr(pipeline, "falsify", real_falsify if attack else (lambda *a, **k: None))
                answer = pipeline.verify_files(onnx, spec, timeout=60).answer
                tally[answer] += attack
                if answer == "unsat":
                    assert res.status == "robust", (c, eps)
                elif answer == "sat":  # without the pipeline's attack, branch and bound's own (checked)
                    assert res.status == "counterexample", (c, eps)
    assert tally["unsat"] >= 2 and tally["sat"] >= 2, tally


def test_branch_and_bound_pair_raises_d_for_inexact_coefficients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A conjunction with coefficients float64 cannot hold (0.1) reaches branch and bound with ``d``
    raised by at least ``C_err · max|y|``; an exact one with ``d`` unchanged."""
    import robustcert.exact.bab as bab
    from robustcert.verify.prove import branch_and_bound_pair

    net = _mlp(0, [3, 8, 2])
    seen: list[torch.Tensor] = []

    def fake(model, lo, hi, C, d, **kw):
        seen.append(d.clone())
        return bab.BabResult("unknown", -1.0)

    monkeypatch.setattr(bab, "branch_and_bound", fake)
    lines = ["(declare-const X_0 Real)", "(declare-const X_1 Real)", "(declare-const X_2 Real)"]
    lines += ["(declare-const Y_0 Real)", "(declare-const Y_1 Real)"]
    lines += [f"(assert (>= X_{i} 0.2))\n(assert (<= X_{i} 0.4))" for i in range(3)]
    for name, row in (
        ("inexact", "(assert (<= (* 0.1 Y_0) Y_1))"),
        ("exact", "(assert (<= (* 0.5 Y_0) Y_1))"),
    ):
        path = tmp_path / f"{name}.vnnlib"
        path.write_text("\n".join([*lines, row]) + "\n")
        case = read_vnnlib(path).cases[0]
        conj = case.conjunctions[0]
        branch_and_bound_pair(net, (3,), case, 0, timeout=1.0)
        if name == "inexact":
            assert bool((conj.C_err > 0).any())
            with torch.no_grad():
                pts = case.box.lo + (case.box.hi - case.box.lo) * torch.rand(2000, 3, dtype=torch.float64)
                ymax = net(pts.float()).abs().max(0).values.double()
            assert bool((seen[-1] >= conj.d + conj.C_err @ ymax).all())
            assert bool((seen[-1] > conj.d).all())
        else:
            assert not bool((conj.C_err > 0).any()) and torch.equal(seen[-1], conj.d)


def test_pairs_that_ran_out_of_their_share_get_the_time_left(
    nets: dict, monkeypatch: pytest.MonkeyPatch
):
    """Open pairs share the time left; one that times out on its share is tried again when the others
    finish early (an answer, not ``unknown``, while time remains); a pair ending ``unknown`` is final."""
    label = _label(nets["cls"], CENTER)
    path = _robustness_spec(nets["root"] / "share.vnnlib", CENTER, 0.02, label, 3)
    monkeypatch.setattr(pipeline, "proven", lambda *a, **k: [False] * len(a[3]))
    calls: list[tuple[int, float]] = []

    def fake(model, shape, case, index, timeout, seed=0, search="relu"):
        calls.append((index, timeout))
        if index == 0 and sum(i == 0 for i, _ in calls) == 1:
            return "timeout", None  # ran out of its first share
        return "verified", None

    monkeypatch.setattr(pipeline, "branch_and_bound_pair", fake)
    verdict = pipeline.verify_files(nets["cls_onnx"], path, timeout=60)
    assert verdict.answer == "unsat", verdict
    firsts = [t for i, t in calls if i == 0]
    assert len(firsts) == 2 and firsts[1] > firsts[0]  # the retry gets the time the other pair left

    def unknown_first(model, shape, case, index, timeout, seed=0, search="relu"):
        return ("unknown" if index == 0 else "verified"), None

    monkeypatch.setattr(pipeline, "branch_and_bound_pair", unknown_first)
    assert pipeline.verify_files(nets["cls_onnx"], path, timeout=60).answer == "unknown"
