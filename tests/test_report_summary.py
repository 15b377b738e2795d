"""summary.json from typed rows (each family), the terminal table with its example counts, the per-run curve,
and the two document renderers' escaping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from robustcert.errors import RobustCertError
from robustcert.report import print_summary, summarize, write_curve, write_summary
from robustcert.report.document import Block, Paragraph, Table, to_html, to_markdown
from robustcert.report.summary import rows_of_type
from robustcert.rows import AttackRow, BoundRow, SmoothingRow


def bound(i: int, eps: float, certified: bool, method: str = "crown") -> BoundRow:
    return BoundRow(
        index=i,
        label=1,
        method=method,
        prediction=1,
        correct=True,
        certified=certified,
        seconds=0.5,
        norm="linf",
        eps=eps,
        margin_lower=0.1 if certified else -0.1,
    )


def smooth(i: int, radius: float, correct: bool = True, abstain: bool = False) -> SmoothingRow:
    return SmoothingRow(
        index=i,
        label=1,
        method="smoothing",
        prediction=-1 if abstain else 1,
        correct=correct and not abstain,
        certified=not abstain,
        seconds=2.0,
        radius=radius,
        sigma=0.25,
        n0=100,
        n=1000,
        count=900,
        pA_lower=0.8,
        alpha=0.001,
        base_correct=True,
    )


def attack(i: int, eps: float, success: bool) -> AttackRow:
    return AttackRow(
        index=i,
        label=1,
        method="pgd",
        prediction=1,
        correct=True,
        certified=False,
        seconds=0.1,
        norm="linf",
        eps=eps,
        attack_success=success,
        adv_margin=-1.0 if success else 1.0,
    )


def test_bound_summary_counts_examples_per_budget() -> None:
    rows = [bound(i, e, certified=(e == 0.01 or i < 2)) for i in range(4) for e in (0.01, 0.05)]
    rows += [bound(9, 0.01, True)]  # one example with a row at one budget only (e.g. a partial run)
    s = summarize(rows, "crown")
    assert s["n_examples"] == 5 and s["label"] == "CROWN" and s["family"] == "bound"
    assert s["certified_accuracy"] == {"0.01": 1.0, "0.05": 0.5}
    assert s["n_examples_at"] == {"0.01": 5, "0.05": 4}
    assert s["mean_seconds"] == pytest.approx(0.5 * 9 / 5)
    assert s["guarantee"].startswith("deterministic")


def test_smoothing_and_attack_summaries() -> None:
    rows = [smooth(0, 0.6), smooth(1, 0.3), smooth(2, 0.0, abstain=True), smooth(3, 0.8, correct=False)]
    s = summarize(rows)
    assert s["method"] == "smoothing" and s["n_examples"] == 4
    assert s["certified_accuracy"]["0.25"] == 0.5 and s["certified_accuracy"]["0.5"] == 0.25
    assert s["abstain_rate"] == 0.25 and s["base_accuracy"] == 1.0
    assert set(s["n_examples_at"].values()) == {4}
    assert "probability" in s["guarantee"]
    a = summarize([attack(i, 0.1, i == 0) for i in range(4)], "pgd")
    assert a["attack_accuracy"] == {"0.1": 0.75} and "certified_accuracy" not in a
    assert a["n_examples_at"] == {"0.1": 4}


def test_rows_of_another_type_are_refused() -> None:
    with pytest.raises(RobustCertError, match="expected SmoothingRow"):
        summarize([bound(0, 0.1, True)], "smoothing")
    with pytest.raises(RobustCertError, match="expected AttackRow"):
        rows_of_type([bound(0, 0.1, True)], AttackRow, "pgd")
    with pytest.raises(RobustCertError, match="unknown method"):
        summarize([], "no-such-method")


def test_print_summary_shows_the_example_count() -> None:
    rows = [bound(i, e, True) for i in range(3) for e in (0.01, 0.05)] + [bound(3, 0.01, False)]
    console = Console(record=True, width=120)
    print_summary(summarize(rows, "crown"), title="CROWN: mlp on digits/test", console=console)
    text = console.export_text()
    assert "4 examples" in text and "(n=4)" in text
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 4}
    assert lines["0.01"].rstrip(" │").endswith("4") and lines["0.05"].rstrip(" │").endswith("3")


def test_summary_and_curve_files(tmp_path: Path) -> None:
    for method, rows in (
        ("smoothing", [smooth(i, 0.1 * i) for i in range(5)]),
        ("alpha-crown", [bound(i, e, i % 2 == 0, "alpha-crown") for i in range(5) for e in (0.0, 0.1)]),
        ("pgd", [attack(i, e, i == 0) for i in range(5) for e in (0.0, 0.1)]),
    ):
        out = tmp_path / method
        out.mkdir()
        summary = summarize(rows, method)
        assert json.loads(write_summary(out, summary).read_text()) == summary
        png = write_curve(out, rows, method, title="t")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000


def test_renderers_escape_text_and_keep_tables_intact(tmp_path: Path) -> None:
    blocks: list[Block] = [
        Paragraph("a <b>bold</b> & *claim*", strong="note:"),
        Table(["name", "value"], [["a|b", "<i>1</i>"]], numeric=frozenset({1})),
    ]
    md = to_markdown("T <x>", blocks)
    assert r"a|b" not in md.replace(r"a\|b", "") and r"\<i\>1\</i\>" in md
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert [line.count("|") - line.count(r"\|") for line in table_lines] == [3, 3, 3]
    page = to_html("T <x>", blocks, tmp_path)
    assert "<b>" not in page and "<i>" not in page and "&lt;x&gt;" in page
    assert '<td class="num">&lt;i&gt;1&lt;/i&gt;</td>' in page
    with pytest.raises(ValueError):
        Table(["a", "b"], [["only one"]])
