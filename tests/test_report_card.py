"""The report card built from a synthetic evaluate directory (rows written by hand, no model run):
numbers match the rows, every table row carries its example count, rows over different example sets are
flagged, HTML and Markdown are separate renderings of the same tables with all text escaped, labels and
determinism come from the registry, latency is shown with spread, n and batch, and unsound certificates
lead the report and fail the console headline."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from robustcert.evaluation.latency import Procedure, measure_latency
from robustcert.methods import BudgetParams, Method, register, unregister
from robustcert.report.card import build_report, render_html, render_markdown, write_report
from robustcert.report.console import print_report_card
from robustcert.rows import AttackRow, BoundRow, ExactRow, Row, SmoothingRow

INDICES = list(range(8))
LINF = [0.0, 0.02, 0.05]
L2 = [0.0, 0.25, 0.5]


def correct(i: int) -> bool:
    return i % 5 != 4


def broken(i: int, eps: float) -> bool:
    """The synthetic attack's verdict: wrong examples, and every third example at eps >= 0.05."""
    return not correct(i) or (eps >= 0.05 and i % 3 == 0)


def bound_rows(method: str, norm: str, eps_list: list[float], indices: list[int]) -> list[BoundRow]:
    return [
        BoundRow(
            index=i,
            label=i % 10,
            method=method,
            prediction=i % 10 if correct(i) else (i + 1) % 10,
            correct=correct(i),
            certified=correct(i) and (e == 0.0 or (e <= 0.02 and i % 3 != 0) or (e == 0.05 and i % 3 == 1)),
            seconds=0.01 / len(eps_list),
            norm=norm,
            eps=e,
            margin_lower=0.1,
        )
        for i in indices
        for e in eps_list
    ]


def exact_rows(eps_list: list[float], indices: list[int]) -> list[ExactRow]:
    rows = []
    for i in indices:
        for e in eps_list:
            status = "robust" if correct(i) and not broken(i, e) else "counterexample"
            rows.append(
                ExactRow(
                    index=i,
                    label=i % 10,
                    method="exact",
                    prediction=i % 10 if correct(i) else (i + 1) % 10,
                    correct=correct(i),
                    certified=status == "robust",
                    seconds=0.5,
                    norm="linf",
                    eps=e,
                    margin_lower=0.01 if status == "robust" else -0.01,
                    status=status,
                )
            )
    return rows


def attack_rows(norm: str, eps_list: list[float], indices: list[int]) -> list[AttackRow]:
    return [
        AttackRow(
            index=i,
            label=i % 10,
            method="pgd",
            prediction=i % 10 if correct(i) else (i + 1) % 10,
            correct=correct(i),
            certified=False,
            seconds=0.002,
            norm=norm,
            eps=e,
            attack_success=broken(i, e),
            adv_margin=-0.5 if broken(i, e) else 0.5,
        )
        for i in indices
        for e in eps_list
    ]


def smoothing_rows(indices: list[int]) -> list[SmoothingRow]:
    rows = []
    for i in indices:
        abstain = i == 7
        pred = -1 if abstain else (i % 10 if correct(i) else (i + 1) % 10)
        rows.append(
            SmoothingRow(
                index=i,
                label=i % 10,
                method="smoothing",
                prediction=pred,
                correct=pred == i % 10,
                certified=not abstain,
                seconds=0.2,
                radius=0.0 if abstain else (0.3 if i % 2 == 0 else 0.1),
                sigma=0.25,
                n0=100,
                n=1000,
                count=900,
                pA_lower=0.8,
                alpha=0.001,
                base_correct=correct(i),
            )
        )
    return rows


def write_card_dir(
    out: Path,
    extra_runs: Sequence[tuple[dict[str, Any], Sequence[Row]]] = (),
    latency: dict[str, Any] | None = None,
    arch: str = "mlp-2x64",
) -> Path:
    """An evaluate directory: two models, smoothing/CROWN/PGD on one, CROWN/exact (4 examples)/PGD on the other."""
    runs: list[tuple[dict[str, Any], Sequence[Row]]] = [
        (
            {"model": "gauss", "method": "pgd", "norm": "linf", "limit": None},
            attack_rows("linf", LINF, INDICES),
        ),
        (
            {"model": "gauss", "method": "crown", "norm": "linf", "limit": None},
            bound_rows("crown", "linf", LINF, INDICES),
        ),
        ({"model": "gauss", "method": "smoothing", "norm": "l2", "limit": None}, smoothing_rows(INDICES)),
        (
            {"model": "gauss", "method": "crown", "norm": "l2", "limit": None},
            bound_rows("crown", "l2", L2, INDICES),
        ),
        ({"model": "gauss", "method": "pgd", "norm": "l2", "limit": None}, attack_rows("l2", L2, INDICES)),
        (
            {"model": "madry", "method": "crown", "norm": "linf", "limit": None},
            bound_rows("crown", "linf", LINF, INDICES),
        ),
        ({"model": "madry", "method": "exact", "norm": "linf", "limit": 4}, exact_rows([0.05], INDICES[:4])),
        (
            {"model": "madry", "method": "pgd", "norm": "linf", "limit": None},
            attack_rows("linf", LINF, INDICES),
        ),
        *extra_runs,
    ]
    models = {}
    for name in ("gauss", "madry"):
        model_dir = out / "models" / name
        model_dir.mkdir(parents=True)
        (model_dir / "model.json").write_text(
            json.dumps({"arch": arch, "train": {"method": "gaussian", "sigma": 0.25}})
        )
        models[name] = str(model_dir)
    planned = []
    for run, rows in runs:
        run = {**run, "dir": f"runs/{run['model']}/{run['method']}-{run['norm']}"}
        run_dir = out / run["dir"]
        run_dir.mkdir(parents=True)
        (run_dir / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in rows))
        (run_dir / "run.json").write_text(json.dumps({"method": run["method"], "batch_size": 32}))
        planned.append(run)
    config = {
        "data": {"dataset": "digits", "split": "test"},
        "threat": {"linf": {"eps": LINF, "target": 0.05}, "l2": {"eps": L2, "target": 0.25}},
    }
    (out / "evaluate.json").write_text(
        json.dumps({"config": config, "models": models, "runs": planned, "indices": INDICES})
    )
    (out / "validation.json").write_text(
        json.dumps({"smoothing_attack": {"gauss": {"attacked": 3, "broken": []}}})
    )
    if latency is not None:
        (out / "latency.json").write_text(json.dumps(latency))
    return out


def fake_latency() -> dict[str, Any]:
    """A latency.json measured on a fake clock: 0.2 ms undefended, 250 ms smoothed predict (ratio 1250)."""
    t = [0.0]

    def cost(seconds: float):  # type: ignore[no-untyped-def]
        def run() -> None:
            t[0] += seconds

        return run

    result = measure_latency(
        cost(20 * 0.0002),
        {"smoothed predict": Procedure(cost(3 * 0.25), batch_size=1000, detail="n = 10000")},
        undefended_examples=20,
        defended_examples=3,
        repeats=5,
        clock=lambda: t[0],
    )
    return {"gauss": result.to_json()}


@pytest.fixture()
def card(tmp_path: Path) -> Path:
    out = write_card_dir(tmp_path / "card", latency=fake_latency())
    write_report(out, build_report(out))
    return out


class Tables(HTMLParser):
    """Every <table> of a page as lists of cell texts (header row first), and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def md_tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table as lists of (unescaped) cell texts, header first, separator dropped."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in md.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= set("-:") for c in cells):
                tables[-1].append([re.sub(r"\\(.)", r"\1", c) for c in cells])
        previous = line
    return tables


def test_numbers_match_the_rows(card: Path) -> None:
    report = json.loads((card / "report.json").read_text())
    gauss, madry = report["models"]["gauss"], report["models"]["madry"]
    crown = gauss["methods"]["crown/linf"]
    assert crown["n_examples"] == 8 and crown["label"] == "CROWN" and crown["deterministic"] is True
    for e in LINF:
        expected = (
            sum(r.correct and r.certified for r in bound_rows("crown", "linf", LINF, INDICES) if r.eps == e)
            / 8
        )
        assert crown["certified_accuracy"][str(e)] == pytest.approx(expected)
    pgd = gauss["methods"]["pgd/linf"]
    assert pgd["family"] == "attack" and "certified_accuracy" not in pgd
    assert pgd["attack_accuracy"]["0.05"] == pytest.approx(sum(not broken(i, 0.05) for i in INDICES) / 8)
    smoothing = gauss["methods"]["smoothing/l2"]
    assert smoothing["certified_accuracy"]["0.25"] == pytest.approx(
        sum(r.correct and r.radius >= 0.25 for r in smoothing_rows(INDICES)) / 8
    )
    assert smoothing["deterministic"] is False
    # the exact run covers 4 examples, only at 0.05: None elsewhere, its own n at the target
    exact = madry["methods"]["exact/linf"]
    assert exact["n_examples"] == 4 and exact["certified_accuracy"]["0.02"] is None
    target = madry["targets"]["linf"]
    assert target["n_examples"] == 8 and target["same_examples"] is False
    ex = target["methods"]["exact"]
    assert ex["n_examples"] == 4
    assert ex["certified_accuracy"] == pytest.approx(
        sum(correct(i) and not broken(i, 0.05) for i in range(4)) / 4
    )
    # the gap compares exact with the attack on the same 4 examples, not on all 8
    same = sum(not broken(i, 0.05) for i in range(4)) / 4
    assert ex["attack_accuracy"] == pytest.approx(same) and ex["gap"] == pytest.approx(
        same - ex["certified_accuracy"]
    )
    assert target["attack_accuracy"] == pytest.approx(sum(not broken(i, 0.05) for i in INDICES) / 8)
    assert ex["clean_accuracy"] == pytest.approx(sum(correct(i) for i in range(4)) / 4)
    assert gauss["clean_accuracy"] == pytest.approx(sum(correct(i) for i in INDICES) / 8)
    assert gauss["clean_n_examples"] == 8
    assert report["unsound"] == []
    certified = sum(r.certified for r in bound_rows("crown", "linf", LINF, INDICES)) * 2 + sum(
        r.certified for r in bound_rows("crown", "l2", L2, INDICES)
    )
    certified += sum(r.certified for r in exact_rows([0.05], INDICES[:4]))
    # every certificate of this directory has a PGD row at its own budget
    assert report["checked"] == {"certified": certified, "attacked": certified}
    # methods in registry order, with registry labels
    assert [m["name"] for m in report["methods"]] == ["smoothing", "crown", "exact", "pgd"]
    assert [m["label"] for m in report["methods"]] == ["smoothing", "CROWN", "exact MILP", "PGD"]


def test_every_table_row_shows_its_example_count(card: Path) -> None:
    md = (card / "report.md").read_text()
    for table in md_tables(md):
        header, *rows = table
        if header[0] == "model" and "evidence" in header:
            continue  # the unsound list: one row per example
        n_col = next(k for k, h in enumerate(header) if h == "n" or h.startswith("n "))
        for row in rows:
            assert row[n_col].isdigit(), (header, row)
    summary = next(t for t in md_tables(md) if t[0][:3] == ["model", "threat @ target", "method"])
    exact_row = next(r for r in summary[1:] if r[2] == "exact MILP")
    assert exact_row[3] == "4"
    assert all(r[3] == "8" for r in summary[1:] if r[2] != "exact MILP")
    # rows with different n share the table: the text says they are over different example sets
    assert "different example sets" in md
    page = (card / "report.html").read_text()
    assert "different example sets" in page


def test_html_and_markdown_are_separate_renderings_of_the_same_tables(card: Path) -> None:
    md = (card / "report.md").read_text()
    page = (card / "report.html").read_text()
    parser = Tables()
    parser.feed(page)
    assert parser.tables == md_tables(md)
    assert "<thead>" in page and "|---" not in page  # real HTML tables, not Markdown text in a page
    assert "data:image/png;base64," in page and 'src="curves.png"' not in page
    assert "probability" in page and "UNSOUND" not in page and "UNSOUND" not in md


def test_all_text_is_escaped(tmp_path: Path) -> None:
    out = write_card_dir(tmp_path / "card", arch="<script>alert('x')</script> | *net*")
    report = build_report(out)
    page = render_html(report, out)
    assert "<script>" not in page and "&lt;script&gt;" in page
    md = render_markdown(report)
    assert "<script>" not in md and r"\<script\>" in md and r"\| \*net\*" in md


def test_latency_is_shown_with_spread_n_and_batch(card: Path) -> None:
    md = (card / "report.md").read_text()
    latency = next(t for t in md_tables(md) if t[0][0] == "procedure")
    header, undefended, predict = latency
    assert header[1:3] == ["n", "batch"]
    assert undefended[1:3] == ["20", "1"] and undefended[3].startswith("200 µs (")
    assert predict[1:3] == ["3", "1000"] and "n = 10000" in predict[0]
    assert predict[4].startswith("1,200× (")  # 1250 to two significant digits
    assert "interleav" not in md or "back to back" in md
    report = json.loads((card / "report.json").read_text())
    stored = report["models"]["gauss"]["latency"]["measured"]["defended"]["smoothed predict"]["ratio"]
    assert stored["median"] == pytest.approx(1250.0)  # the full float is kept in JSON
    certifiers = next(t for t in md_tables(md) if t[0][0] == "run")
    crown = next(r for r in certifiers[1:] if r[0] == "CROWN (linf)")
    assert crown[1:3] == ["8", "32"]
    assert crown[4] == "50×"  # 10 ms per example vs 0.2 ms undefended


def test_old_latency_file_is_explained_not_fatal(tmp_path: Path) -> None:
    out = write_card_dir(tmp_path / "card", latency={"gauss": {"undefended_seconds": 0.001}})
    report = build_report(out)
    assert report["models"]["gauss"]["latency"]["measured"] is None
    assert "re-run `robustcert evaluate`" in report["models"]["gauss"]["latency"]["note"]
    assert "Latency not shown" in render_markdown(report)


def test_unsound_certificate_leads_the_report_and_fails_the_headline(tmp_path: Path) -> None:
    # an IBP run that certifies everything, including examples PGD breaks at 0.05
    ibp = [
        BoundRow(
            index=i,
            label=i % 10,
            method="ibp",
            prediction=i % 10,
            correct=True,
            certified=True,
            norm="linf",
            eps=e,
            margin_lower=1.0,
        )
        for i in INDICES
        for e in LINF
    ]
    out = write_card_dir(
        tmp_path / "card",
        extra_runs=[({"model": "gauss", "method": "ibp", "norm": "linf", "limit": None}, ibp)],
    )
    report = build_report(out)
    write_report(out, report)
    expected = {(i, e) for i in INDICES for e in LINF if correct(i) and broken(i, e)}
    assert {(u["index"], u["eps"]) for u in report["unsound"]} == expected
    assert all(u["method"] == "ibp" and u["label"] == "IBP" for u in report["unsound"])
    md = (out / "report.md").read_text()
    assert "UNSOUND CERTIFICATES" in md.split("\n")[2]
    page = (out / "report.html").read_text()
    assert page.index('class="unsound"') < page.index("Summary at the target budget")
    console = Console(record=True, width=200)
    assert print_report_card(report, out, console=console) == 3
    assert "UNSOUND CERTIFICATES" in console.export_text()


def test_a_new_registered_family_needs_no_report_change(tmp_path: Path) -> None:
    """An SDP-family method registered at run time: its label is used, it sorts after the built-ins, and
    its certificates are checked like every deterministic one."""
    method = Method(
        name="sdp-test",
        family="sdp",
        params=BudgetParams,
        build=lambda *a: None,  # type: ignore[arg-type,return-value]
        summary="test",
        label="SDP (test)",
    )
    register(method)
    try:
        rows = bound_rows("sdp-test", "linf", LINF, INDICES)
        rows = [BoundRow(**{**r.to_json(), "certified": r.correct}) for r in rows]  # unsound where PGD breaks
        out = write_card_dir(
            tmp_path / "card",
            extra_runs=[({"model": "madry", "method": "sdp-test", "norm": "linf", "limit": None}, rows)],
        )
        report = build_report(out)
    finally:
        unregister("sdp-test")
    rec = report["models"]["madry"]["methods"]["sdp-test/linf"]
    assert rec["label"] == "SDP (test)" and rec["deterministic"] is True and rec["family"] == "sdp"
    assert [m["name"] for m in report["methods"]][-1] == "sdp-test"
    assert report["unsound"] and {u["method"] for u in report["unsound"]} == {"sdp-test"}


def test_console_headline_has_the_readme_columns_and_the_count(card: Path) -> None:
    report = json.loads((card / "report.json").read_text())
    console = Console(record=True, width=200)
    assert print_report_card(report, card, console=console) == 0
    text = console.export_text()
    header = next(line for line in text.splitlines() if "threat @ target" in line)
    for column in ("model", "n", "clean", "threat @ target", "PGD (upper limit)", "certified"):
        assert column in header
    madry_linf = next(line for line in text.splitlines() if "madry" in line and "linf @ 0.05" in line)
    assert "CROWN 25.0%" in madry_linf and "exact MILP 50.0% (n=4)" in madry_linf and " 8 " in madry_linf
    assert "different example set" in text
    assert "PGD is an upper limit" in text and "UNSOUND" not in text


def test_not_an_evaluate_directory(tmp_path: Path) -> None:
    from robustcert.errors import RobustCertError

    with pytest.raises(RobustCertError, match="not an evaluate directory"):
        build_report(tmp_path)


def test_certificates_without_an_attack_are_counted_as_unchecked(tmp_path: Path) -> None:
    """madry has no PGD run under l2: its l2 certificates are reported as not attacked, not as checked."""
    extra = bound_rows("ibp", "l2", L2, INDICES)
    out = write_card_dir(
        tmp_path / "card",
        extra_runs=[({"model": "madry", "method": "ibp", "norm": "l2", "limit": None}, extra)],
    )
    report = build_report(out)
    unchecked = sum(r.certified for r in extra)
    assert unchecked > 0
    assert report["checked"]["certified"] - report["checked"]["attacked"] == unchecked
    md = render_markdown(report)
    assert f"on {report['checked']['attacked']} of {report['checked']['certified']} deterministic" in md
