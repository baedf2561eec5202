"""Render :class:`Table` values as rich tables, Markdown, CSV, JSON, LaTeX (booktabs), SVG or HTML."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from advbench.report.safe_text import csv_cell, markdown_text
from advbench.report.tables import Estimate, Rank, Table

FORMATS = ("rich", "markdown", "csv", "json", "latex", "svg", "html")


def cell_text(value: Any) -> str:
    if value is None:
        return "–"
    if hasattr(value, "text"):  # Estimate, Rank: they know their digits
        return value.text()
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_rich(tables: Sequence[Table], console: Console, max_columns: int | None = None) -> None:
    """Every table at its natural width; one wider than the console (or with more than
    ``max_columns`` columns) is split into parts that fit, each repeating the table's key
    columns, so no number is ever cut to ``…``."""
    for t in tables:
        parts = column_parts(t, console.width, max_columns)
        for k, columns in enumerate(parts):
            title = t.title if len(parts) == 1 else f"{t.title} (part {k + 1} of {len(parts)})"
            # Text, not markup: a label such as "bench[/]" is printed, not parsed
            rt = RichTable(title=Text(title), title_justify="left", header_style="bold")
            for i in columns:
                rt.add_column(Text(t.columns[i]), justify="left" if i == 0 or not _numeric(t, i) else "right",
                              overflow="fold")  # a column narrower than its text folds it: nothing is hidden
            for row in t.rows:
                rt.add_row(*(_styled(row[i]) for i in columns))
            console.print(rt)
        for note in t.notes:
            console.print(Text(note, style="dim"))


_COLUMN_OVERHEAD = 3  # rich's default box: one space of padding each side and one rule


def column_parts(t: Table, width: int, max_columns: int | None = None) -> list[list[int]]:
    """Column indices of each part of ``t`` for a console ``width`` wide: the key columns,
    then as many further columns as fit (and at most ``max_columns`` in all)."""
    sizes = [max([cell_len(c)] + [cell_len(cell_text(r[i])) for r in t.rows]) + _COLUMN_OVERHEAD
             for i, c in enumerate(t.columns)]
    keys = list(range(min(t.key_columns, len(t.columns))))
    fits = 1 + sum(sizes) <= width and (max_columns is None or len(t.columns) <= max_columns)
    if fits or len(keys) == len(t.columns):
        return [list(range(len(t.columns)))]
    budget = width - 1 - sum(sizes[k] for k in keys)
    most = None if max_columns is None else max(1, max_columns - len(keys))
    parts: list[list[int]] = [[]]
    used = 0
    for i in range(len(keys), len(t.columns)):
        if parts[-1] and (used + sizes[i] > budget or (most is not None and len(parts[-1]) >= most)):
            parts.append([])
            used = 0
        parts[-1].append(i)
        used += sizes[i]
    return [keys + p for p in parts]


def _numeric(t: Table, i: int) -> bool:
    return any(isinstance(r[i], (int, float, Estimate, Rank)) for r in t.rows)


def _styled(value: Any) -> Text:
    text = cell_text(value)
    failed = isinstance(value, str) and value.startswith(("failed", "skipped"))
    return Text(text, style="red" if failed else "")  # Text, not markup: "[0.88, 0.94]" stays literal


def render_markdown(tables: Sequence[Table]) -> str:
    """Labels are escaped (HTML, Markdown punctuation, ``|``): a name prints, never renders."""
    out = []
    for t in tables:
        out.append(f"### {markdown_text(t.title)}\n")
        out.append("| " + " | ".join(markdown_text(c) for c in t.columns) + " |")
        out.append("|" + "|".join("---" for _ in t.columns) + "|")
        out += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in t.rows]
        out += [f"\n_{markdown_text(n)}_" for n in t.notes]
        out.append("")
    return "\n".join(out)


def _markdown_cell(value: Any) -> str:
    # numbers and estimates are ours ("0.91 [0.88, 0.94]"): printed as they are; text is escaped
    return markdown_text(value) if isinstance(value, str) else cell_text(value)


def render_csv(tables: Sequence[Table]) -> str:
    """One CSV; the first column names the table, so several tables stay one parseable file.
    Each rate with an interval spreads over four columns: ``X``, ``X lo``, ``X hi``, ``X n``.
    Text that a spreadsheet would run as a formula is neutralised (:func:`csv_cell`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for t in tables:
        columns, rows = t.flat()  # an interval is value, lo, hi, n columns here
        writer.writerow([csv_cell(c) for c in ("table", *columns)])
        for row in rows:
            writer.writerow([csv_cell(t.title), *(csv_cell("" if v is None else v) for v in row)])
    return buf.getvalue()


def render_json(tables: Sequence[Table]) -> str:
    """Each table's rows as records of plain values (intervals as ``X lo``/``X hi``/``X n`` keys)."""
    return json.dumps([{"title": t.title, "columns": list(t.flat()[0]), "rows": t.records(), "notes": list(t.notes)}
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


def render_html(tables: Sequence[Table], images: Sequence[tuple[str, bytes]] = (), title: str = "advbench report",
                facts: Sequence[tuple[str, str]] = ()) -> str:
    """One self-contained page: what it reports on (``facts``: label, text; the benchmark, run,
    dates and versions), every table, and plots inlined as base64 PNG (readable offline)."""
    import base64
    import html

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}"
             "td.num{text-align:right;font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:bold;"
             "padding:4px 0}.note{color:#666;font-size:12px}img{max-width:100%}dl.facts{display:grid;"
             "grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}dl.facts dt{font-weight:bold}"
             "dl.facts dd{margin:0}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if facts:
        parts.append("<dl class='facts'>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                                    for k, v in facts) + "</dl>")
    for t in tables:
        parts.append(f"<table><caption>{html.escape(t.title)}</caption><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in t.columns) + "</tr>")
        for row in t.rows:
            parts.append("<tr>" + "".join(
                f"<td class='num'>{html.escape(cell_text(v))}</td>" if isinstance(v, (int, float, Estimate, Rank))
                else f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>")
        parts.append("</table>" + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in t.notes))
    for caption, png in images:
        data = base64.b64encode(png).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)
