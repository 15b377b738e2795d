"""A report as a list of blocks (headings, paragraphs, tables, images), rendered to Markdown and to
self-contained HTML by two independent renderers.

Both renderers take the same blocks, so report.md and report.html say the same thing; neither parses
the other's output. All text is plain text: the HTML renderer escapes every string with
``html.escape``, the Markdown renderer escapes Markdown's special characters, so a model name or an
evidence string can never inject markup into either.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    """Plain text; ``strong`` is a bold lead-in. ``kind`` is "", "ok" (a passed check) or "alert"
    (unsound certificates): a banner in HTML, a heading-level line in Markdown for "alert"."""

    text: str
    strong: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Table:
    """A table of text cells; ``numeric`` marks the columns aligned right."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    numeric: frozenset[int] = field(default_factory=frozenset)
    caption: str = ""

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise ValueError(f"table row {list(row)} has {len(row)} cells for {len(self.header)} columns")


@dataclass(frozen=True)
class Image:
    """A PNG file beside the report (``path`` is relative to the output directory)."""

    path: str
    alt: str


Block = Heading | Paragraph | Table | Image

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def md_escape(text: str) -> str:
    """Text safe inside a Markdown paragraph or table cell (special characters backslash-escaped)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown, ``title`` as the level-1 heading."""
    lines = [f"# {md_escape(title)}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += [f"{'#' * max(2, block.level)} {md_escape(block.text)}", ""]
        elif isinstance(block, Paragraph):
            if block.kind == "alert":
                lines += [f"## ⚠ {md_escape(block.strong)}", ""]
                if block.text:
                    lines += [md_escape(block.text), ""]
                continue
            lead = f"**{md_escape(block.strong)}** " if block.strong else ""
            lines += [(lead + md_escape(block.text)).strip(), ""]
        elif isinstance(block, Table):
            if block.caption:
                lines += [md_escape(block.caption), ""]
            lines.append("| " + " | ".join(md_escape(c) for c in block.header) + " |")
            lines.append(
                "|"
                + "|".join("---:" if k in block.numeric else "---" for k in range(len(block.header)))
                + "|"
            )
            lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        else:
            lines += [f"![{md_escape(block.alt)}]({block.path})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}
th{background:#f2f2f2}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;padding:.3em 0;color:#444}img{max-width:100%;margin:.5em 0}
.unsound{background:#c62828;color:#fff;font-size:1.4em;font-weight:bold;padding:.6em 1em;border-radius:4px}
.ok{background:#e8f5e9;border-left:5px solid #2e7d32;padding:.5em 1em}"""


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def to_html(title: str, blocks: Sequence[Block], image_dir: Path) -> str:
    """The blocks as one self-contained HTML page: images under ``image_dir`` embedded as data URIs
    (an image file that does not exist is left out), every text escaped."""
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(2, block.level), 6)
            body.append(f"<h{level}>{e(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            if block.kind == "alert":
                body.append(f'<div class="unsound">⚠ {e(block.strong)}</div>')
                if block.text:
                    body.append(f"<p>{e(block.text)}</p>")
                continue
            css = ' class="ok"' if block.kind == "ok" else ""
            lead = f"<strong>{e(block.strong)}</strong> " if block.strong else ""
            body.append(f"<p{css}>{lead}{e(block.text)}</p>")
        elif isinstance(block, Table):

            def cell(tag: str, k: int, text: str, numeric: frozenset[int] = block.numeric) -> str:
                css = ' class="num"' if k in numeric else ""
                return f"<{tag}{css}>{e(text)}</{tag}>"

            caption = f"<caption>{e(block.caption)}</caption>" if block.caption else ""
            head = "".join(cell("th", k, c) for k, c in enumerate(block.header))
            rows = "".join(
                "<tr>" + "".join(cell("td", k, c) for k, c in enumerate(row)) + "</tr>" for row in block.rows
            )
            body.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            path = image_dir / block.path
            if path.exists():
                body.append(f'<img alt="{e(block.alt)}" src="{_embed(path)}">')
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
