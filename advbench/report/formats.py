"""Render :class:`Table` values as rich tables, Markdown, CSV, JSON, LaTeX (booktabs), SVG or HTML."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from advbench.report.tables import Table

FORMATS = ("rich", "markdown", "csv", "json", "latex", "svg", "html")


def cell_text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_rich(tables: Sequence[Table], console: Console) -> None:
    for t in tables:
        rt = RichTable(title=t.title, title_justify="left", header_style="bold")
        for i, col in enumerate(t.columns):
            rt.add_column(col, justify="left" if i == 0 or not _numeric(t, i) else "right")
        for row in t.rows:
            rt.add_row(*(_styled(v) for v in row))
        console.print(rt)
        for note in t.notes:
            console.print(f"[dim]{note}[/dim]")


def _numeric(t: Table, i: int) -> bool:
    return any(isinstance(r[i], (int, float)) for r in t.rows)


def _styled(value: Any) -> str:
    text = cell_text(value)
    return f"[red]{text}[/red]" if isinstance(value, str) and value.startswith(("failed", "skipped")) else text


def render_markdown(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        out.append(f"### {t.title}\n")
        out.append("| " + " | ".join(t.columns) + " |")
        out.append("|" + "|".join("---" for _ in t.columns) + "|")
        out += ["| " + " | ".join(cell_text(v).replace("|", "\\|") for v in row) + " |" for row in t.rows]
        out += [f"\n_{n}_" for n in t.notes]
        out.append("")
    return "\n".join(out)


def render_csv(tables: Sequence[Table]) -> str:
    """One CSV; the first column names the table, so several tables stay one parseable file."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for t in tables:
        writer.writerow(["table", *t.columns])
        for row in t.rows:
            writer.writerow([t.title, *("" if v is None else v for v in row)])
    return buf.getvalue()


def render_json(tables: Sequence[Table]) -> str:
    return json.dumps([{"title": t.title, "columns": list(t.columns), "rows": t.records(), "notes": list(t.notes)}
                       for t in tables], indent=2, default=str)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text


def render_latex(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        spec = "l" + "r" * (len(t.columns) - 1)
        out += [r"\begin{table}[t]", r"\centering", f"\\caption{{{_latex_escape(t.title)}}}",
                f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(_latex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
        out += [" & ".join(_latex_escape(cell_text(v)) for v in row) + r" \\" for row in t.rows]
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def render_svg(tables: Sequence[Table], title: str = "advbench report", width: int = 120) -> str:
    """The rich rendering as a standalone SVG (a terminal screenshot for READMEs and slides)."""
    console = Console(record=True, file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor")
    render_rich(tables, console)
    return console.export_svg(title=title)


def render_text(tables: Sequence[Table], fmt: str) -> str:
    return {"markdown": render_markdown, "csv": render_csv, "json": render_json, "latex": render_latex,
            "svg": render_svg}[fmt](tables)


def render_html(tables: Sequence[Table], images: Sequence[tuple[str, bytes]] = (), title: str = "advbench report") -> str:
    """One self-contained page: every table, and plots inlined as base64 PNG (readable offline)."""
    import base64
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}"
             "td.num{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:bold;"
             "padding:4px 0}.note{color:#666;font-size:12px}img{max-width:100%}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for t in tables:
        parts.append(f"<table><caption>{html.escape(t.title)}</caption><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + "</tr>")
        for row in t.rows:
            parts.append("<tr>" + "".join(
                f"<td class='num'>{html.escape(cell_text(v))}</td>" if isinstance(v, (int, float))
                else f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>")
        parts.append("</table>" + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in t.notes))
    for caption, png in images:
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
