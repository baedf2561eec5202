"""Every table and format of the report, parsed back, on the tiny world's store."""

from __future__ import annotations

import csv
import io
import json
import re
from xml.etree import ElementTree

import pytest

from advbench.report import formats, tables
from advbench.store import open_store


@pytest.fixture(scope="module")
def cells(tiny_run):
    result, root = tiny_run
    return open_store(str(root / "results.db")).cells(result.run_id)


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5, 6])
def test_every_table_has_rows_in_every_format(cells, number):
    built = tables.TABLES[number](cells)
    assert built and all(t.rows for t in built)
    as_json = json.loads(formats.render_json(built))
    assert [t["title"] for t in as_json] == [t.title for t in built]
    rows = list(csv.reader(io.StringIO(formats.render_csv(built))))
    assert rows[0][0] == "table" and len(rows) == sum(len(t.rows) + 1 for t in built)
    latex = formats.render_latex(built)
    assert latex.count(r"\begin{tabular}") == len(built) == latex.count(r"\bottomrule")
    for t in built:  # every row has as many cells as the header
        assert all(len(r) == len(t.columns) for r in t.rows)
    body = [line for line in latex.splitlines() if line.endswith(r"\\")]
    assert all(line.count("&") == len(built[0].columns) - 1 for line in body[:1])
    markdown = formats.render_markdown(built)
    assert sum(line.startswith("|---") for line in markdown.splitlines()) == len(built)
    svg_text = "".join(_svg_text(formats.render_svg(built, width=200)).split())
    assert all("".join(t.title.split()) in svg_text for t in built)  # rich wraps titles to the table's width


def _svg_text(svg: str) -> str:
    """The visible text of rich's SVG export: one <text> per styled segment, per line."""
    root = ElementTree.fromstring(svg)
    lines: dict[str, str] = {}
    for node in root.iter("{http://www.w3.org/2000/svg}text"):
        lines[node.get("y")] = lines.get(node.get("y"), "") + "".join(node.itertext())
    return "\n".join(lines.values()).replace("\xa0", " ")


def test_table1_counts_match_the_attack_cells(cells):
    t1, budgets = tables.table1(cells)
    by_attack = {r[0]: r[2] for r in t1.rows}
    attack_cells = {c.attack: c for c in cells if c.stage == "attack"}
    assert by_attack["fgsm"] == int(tables.metric(attack_cells["fgsm"], "success"))
    linf = {r[0]: r[2] for r in budgets.rows}
    assert linf["fgsm"] == tables.metric(attack_cells["fgsm"], "mean_pre_save_linf") > 0
    assert {r[1] for r in t1.rows if r[0] in ("bim", "fgsm")} == {"targeted", "non-targeted"}


def test_table2_is_leak_free_totals(cells):
    [t2] = tables.table2(cells)
    normal = sum(r[1] for r in t2.rows)
    assert normal == int(tables.metric(next(c for c in cells if c.stage == "clean"), "selected"))


def test_leaderboard_is_ranked_and_html_holds_every_table(cells):
    [board] = tables.leaderboard(cells)
    accuracies = [r[4] for r in board.rows]
    assert accuracies == sorted(accuracies, reverse=True)
    [best2] = tables.leaderboard(cells, top=2)
    assert best2.rows == board.rows[:2] and "best 2 of" in best2.title
    [by_eer] = tables.leaderboard(cells, sort="eer")
    assert [r[6] for r in by_eer.rows] == sorted(r[6] for r in by_eer.rows)
    everything = [board] + [t for n in tables.TABLES for t in tables.TABLES[n](cells)]
    page = formats.render_html(everything, [("a plot", b"\x89PNG fake")])
    assert all(t.title.split(" — ")[0] in page for t in everything)
    assert page.count("<table>") == len(everything) and "data:image/png;base64," in page


def test_compare_shows_zero_deltas_for_the_same_run(cells):
    [table] = tables.compare(cells, cells, 1, 1)
    assert table.rows and all(r[6] == 0 for r in table.rows)


def test_latex_escapes_specials():
    t = tables.Table("a_b & 50%", ("x_y",), (("#1",),))
    out = formats.render_latex([t])
    assert re.search(r"a\\_b \\& 50\\%", out) and r"\#1" in out
