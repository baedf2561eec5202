"""Every table and format of the report, parsed back, on the tiny world's store."""

from __future__ import annotations

import csv
import io
import json
import re
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest
from rich.console import Console

from dataclasses import fields

from advbench import metrics as M
from advbench import schema
from advbench.errors import AdvbenchError
from advbench.report import formats, tables
from advbench.store import open_store


@pytest.fixture(scope="module")
def cells(tiny_run):
    result, root = tiny_run
    return open_store(str(root / "results.db")).cells(result.run_id)


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5, 6, "detection"])
def test_every_table_has_rows_in_every_format(cells, number):
    built = (tables.TABLES | tables.EXTRA_TABLES)[number](cells)
    assert built and all(t.rows for t in built)
    as_json = json.loads(formats.render_json(built))
    assert [t["title"] for t in as_json] == [t.title for t in built]
    rows = list(csv.reader(io.StringIO(formats.render_csv(built))))
    assert rows[0][0] == "table" and len(rows) == sum(len(t.rows) + 1 for t in built)
    assert all(len(r) == len(rows[0]) for r in rows[:len(built[0].rows) + 1])  # header and rows agree
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
    assert t1.columns[:4] == ("Attack", "Type", "Threat", "Budget")
    by_attack = {r[0]: r[4] for r in t1.rows}
    attack_cells = {c.imageset: c for c in cells if c.stage == "attack"}
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
    accuracy, eer = board.columns.index("Accuracy"), board.columns.index("EER")
    accuracies = [r[accuracy].value for r in board.rows]
    assert accuracies == sorted(accuracies, reverse=True)  # one n for all cells: ties-first keeps value order
    [best2] = tables.leaderboard(cells, top=2)
    assert best2.rows == board.rows[:2] and "best 2 of" in best2.title
    [by_eer] = tables.leaderboard(cells, sort="eer")
    eers = [r[eer].value for r in by_eer.rows]
    assert eers == sorted(eers)
    everything = [board] + [t for n in tables.TABLES for t in tables.TABLES[n](cells)]
    page = formats.render_html(everything, [("a plot", b"\x89PNG fake")])
    assert all(t.title.split(" — ")[0] in page for t in everything)
    assert page.count("<table>") == len(everything) and "data:image/png;base64," in page


def test_leaderboard_intervals_reach_csv_and_json_as_columns(cells):
    [board] = tables.leaderboard(cells, top=1)
    est = board.rows[0][board.columns.index("Accuracy")]
    cell = next(c for c in cells if c.stage == "detect" and (c.detector, c.feature, c.feature_group) == board.rows[0][1:4])
    n = int(tables.metric(cell, "n"))
    assert board.rows[0][board.columns.index("n")] == n == est.n
    assert (est.lo, est.hi) == M.wilson_interval(round(est.value * n), n)
    [record] = json.loads(formats.render_json([board]))[0]["rows"]
    assert list(record)[:4] == ["Rank", "Detector", "Feature", "Group"]
    assert (record["Accuracy"], record["Accuracy lo"], record["Accuracy hi"], record["Accuracy n"]) == (
        est.value, est.lo, est.hi, n)
    assert record["EER lo"] <= record["EER"] <= record["EER hi"]  # the detect stage's bootstrap bounds
    assert isinstance(record["Tied"], bool) and record["Rank"] == 1
    header, row = list(csv.reader(io.StringIO(formats.render_csv([board]))))
    got = dict(zip(header, row))
    assert float(got["Accuracy hi"]) == pytest.approx(est.hi) and float(got["EER hi"]) == record["EER hi"]
    assert got["Rank"] == "1"


def test_detection_table_on_the_tiny_world(cells):
    [table] = tables.detection_by_attack(cells)
    assert table.columns[:4] == ("Detector", "Feature", "Group", "FPR (normal)")
    assert set(table.columns[4:]) == {"fgsm", "bim"}
    detect = [c for c in cells if c.stage == "detect" and c.status == "ok"]
    assert len(table.rows) == len(detect)
    fgsm = table.columns.index("fgsm")
    for row, c in zip(table.rows, detect):
        assert row[fgsm].value == tables.metric(c, "detection_rate", "fgsm")
        assert row[fgsm].n == int(tables.metric(c, "n", "fgsm")) and row[3].n == int(tables.metric(c, "n", "clean"))


# --- constructed cells: exact derivations, ties, wide tables ----------------------------------------


def _m(name, value, subset=""):
    return SimpleNamespace(name=name, subset=subset, value=value)


def _cell(**values):
    """A stored cell as the store hands it back: every schema column (advbench.schema.Cell),
    its status and metrics."""
    row = {f.name: f.default for f in fields(schema.Cell) if f.metadata["store"]}
    return SimpleNamespace(**(row | {"key": "", "status": "ok", "error": "", "metrics": []} | values))


def _origin(label, budget=None, threat="oblivious", target="", norm="linf", plugin=None, evaluation=None):
    """The schema fields of an image set's cells: entry, family (label without the budget), plugin."""
    entry = label.split(">", 1)[0]
    family = entry.rsplit("@", 1)[0] if budget is not None else entry
    return {"imageset": label, "entry": entry, "family": family, "plugin": plugin or family, "budget": budget,
            "norm": norm, "threat": threat, "target": target,
            "evaluation": (budget is not None or threat == "adaptive") if evaluation is None else evaluation}


def _detector(name, *, n_normal=50, fp=5, per_attack=(("fgsm", 25, 20), ("pgd", 25, 15)), feature="counting",
              group="JPEG", extra=(), dataset="d", model="m", status="ok"):
    """A detect cell stored the way engine/detect.py stores one: rates and their counts."""
    n_adv = sum(k for _, k, _ in per_attack)
    tp = sum(t for _, _, t in per_attack)
    n = n_normal + n_adv
    metrics = [_m("accuracy", (tp + n_normal - fp) / n), _m("fpr", fp / n_normal), _m("n", n),
               _m("n_normal", n_normal), _m("n_adversarial", n_adv),
               _m("balanced_accuracy", (tp / n_adv + 1 - fp / n_normal) / 2), _m("tpr_at_5fpr", tp / n_adv / 2),
               _m("eer", 0.1), _m("auroc", 0.9),
               _m("false_positive_rate", fp / n_normal, "clean"), _m("n", n_normal, "clean")]
    metrics += [m_ for a, k, t in per_attack for m_ in (_m("detection_rate", t / k, a), _m("n", k, a))]
    metrics += [_m(k, v) for k, v in extra]
    return _cell(stage="detect", status=status, dataset=dataset, model=model, feature_group=group, feature=feature,
                 detector=name, metrics=metrics)


def _with(cell, **values):
    """The cell with some eval metrics replaced (a chosen accuracy, AUROC, ...)."""
    kept = [x for x in cell.metrics if not (x.subset == "" and x.name in values)]
    return SimpleNamespace(**{**vars(cell), "metrics": kept + [_m(k, v) for k, v in values.items()]})


def test_the_detection_rate_is_read_from_its_stored_count():
    cell = _detector("x", n_normal=60, fp=6, per_attack=(("fgsm", 40, 31),), extra=(("detected", 31.0),))
    cell.metrics = [m for m in cell.metrics if m.name != "accuracy"]  # not needed: the count is stored
    est = tables.estimate(cell, "detection_rate")
    assert est.value == 31 / 40 and (est.lo, est.hi) == M.wilson_interval(31, 40) and est.n == 40


def test_detection_rate_overall_is_recovered_exactly():
    """Stores and caches written before detect cells stored their detection rate."""
    # 60 normal (6 flagged), 40 adversarial (31 flagged): accuracy (31 + 54) / 100 = 0.85
    cell = _detector("x", n_normal=60, fp=6, per_attack=(("fgsm", 40, 31),))
    est = tables.estimate(cell, "detection_rate")
    assert est.value == 31 / 40 and (est.lo, est.hi) == M.wilson_interval(31, 40) and est.n == 40
    fpr = tables.estimate(cell, "fpr")
    assert fpr.n == 60 and (fpr.lo, fpr.hi) == M.wilson_interval(6, 60)
    assert tables.estimate(cell, "tpr_at_5fpr").n == 40
    bal = tables.estimate(cell, "balanced_accuracy")  # effective n 4 / (1/60 + 1/40) = 96
    assert bal.n == 96 and (bal.lo, bal.hi) == pytest.approx(M.wilson_interval(bal.value * 96, 96))
    old = SimpleNamespace(**{**vars(cell), "metrics": [x for x in cell.metrics if not x.name.startswith("n")]})
    assert tables.estimate(old, "detection_rate").value is None and not tables.estimate(old, "accuracy").has_interval


def test_ties_with_the_leader_share_rank_one_and_ranks_continue():
    base = _detector("base")  # n = 100
    cells = [_renamed(_with(base, accuracy=a), name) for name, a in (("e", 0.60), ("a", 0.90), ("c", 0.70), ("b", 0.85), ("d", 0.70))]
    # Wilson 95 %, n = 100: 0.90 [0.826, 0.945]; 0.85 [0.767, 0.907] overlaps it; 0.70 [0.604, 0.781] does not
    [board] = tables.leaderboard(cells)
    assert [(r[0].text(), r[1]) for r in board.rows] == [("=1", "a"), ("=1", "b"), ("=3", "c"), ("=3", "d"), ("5", "e")]
    assert any(note.startswith("= :") for note in board.notes)
    assert "0.90 [0.83, 0.95]" not in formats.render_markdown([board])  # n = 100 resolves thousandths
    assert "0.900 [0.826, 0.945]" in formats.render_markdown([board])
    tied = [r["Tied"] for r in board.records()]
    assert tied == [True, True, True, True, False]


def _renamed(cell, name):
    return SimpleNamespace(**{**vars(cell), "detector": name})


def test_ties_on_auroc_and_eer_use_the_stored_bootstrap_bounds():
    base = _detector("base")
    cells = [_renamed(_with(base, auroc=0.95, auroc_lo=0.93, auroc_hi=0.97, eer=0.05, eer_lo=0.03, eer_hi=0.07), "a"),
             _renamed(_with(base, auroc=0.90, auroc_lo=0.85, auroc_hi=0.92, eer=0.06, eer_lo=0.04, eer_hi=0.09), "b"),
             _renamed(_with(base, auroc=0.94, auroc_lo=0.90, auroc_hi=0.96, eer=0.12, eer_lo=0.10, eer_hi=0.15), "c")]
    [by_auroc] = tables.leaderboard(cells, sort="auroc")
    assert [(r[0].text(), r[1]) for r in by_auroc.rows] == [("=1", "a"), ("=1", "c"), ("3", "b")]
    [by_eer] = tables.leaderboard(cells, sort="eer")
    assert [(r[0].text(), r[1]) for r in by_eer.rows] == [("=1", "a"), ("=1", "b"), ("3", "c")]
    auroc = by_auroc.columns.index("AUROC")
    assert by_auroc.rows[0][auroc].text() == "0.950 [0.930, 0.970]"
    # without stored bounds only equal values tie, and the board says so
    bare = [_renamed(_with(base, auroc=v), k) for k, v in (("a", 0.9), ("b", 0.9), ("c", 0.8))]
    [board] = tables.leaderboard(bare, sort="auroc")
    assert [r[0].text() for r in board.rows] == ["=1", "=1", "3"]
    assert any("no auroc interval stored" in note for note in board.notes)
    assert board.rows[0][auroc].text() == "0.900 [–]"


def test_failed_cells_stay_on_the_board_in_every_format():
    cells = [_detector("ok"), _renamed(_with(_detector("x", status="failed"), accuracy=None), "broken")]
    cells[1].error = "boom"
    [board] = tables.leaderboard(cells)
    assert board.rows[-1][0] == "-" and board.rows[-1][-1] == "failed: boom"
    broken = board.records()[-1]
    assert broken["Accuracy"] is None and broken["Accuracy lo"] is None and broken["Tied"] is None
    text = _rendered([board], 100)
    assert "failed: boom" in text and "…" not in text
    assert len({len(r) for r in csv.reader(io.StringIO(formats.render_csv([board])))}) == 1


def test_cross_run_leaderboard_marks_ties_and_keeps_run_columns():
    from datetime import datetime

    run = SimpleNamespace(id=4, benchmark="b", config_hash="0123456789abcdef", started_at=datetime(2024, 5, 1))
    cells = [_renamed(_with(_detector("x"), accuracy=a), k) for k, a in (("a", 0.9), ("b", 0.88), ("c", 0.5))]
    [board] = tables.cross_run_leaderboard([(run, cells)], best=3)
    assert [r[0].text() for r in board.rows] == ["=1", "=1", "3"]
    assert board.rows[0][1:6] == ("b", 4, "0123456789", "2024-05-01", "a")
    with pytest.raises(AdvbenchError, match="valid: accuracy"):
        tables.cross_run_leaderboard([(run, cells)], sort="precision")


def test_detection_by_attack_gives_wilson_intervals_and_counts():
    cells = [_detector("lda"), _detector("svm", fp=0, per_attack=(("fgsm", 25, 25), ("pgd", 25, 0))),
             _detector("cnn", n_normal=40, fp=2, group="images", feature="")]
    [table] = tables.detection_by_attack(cells)
    assert table.columns == ("Detector", "Feature", "Group", "FPR (normal)", "fgsm", "pgd")
    lda, svm, cnn = table.rows
    assert (lda[3].value, lda[3].n) == (0.1, 50) and (lda[3].lo, lda[3].hi) == M.wilson_interval(5, 50)
    assert (lda[4].value, lda[4].n) == (0.8, 25) and (lda[4].lo, lda[4].hi) == M.wilson_interval(20, 25)
    assert svm[4].hi == 1.0 and svm[5].lo == 0.0 and cnn[3].n == 40
    assert "normal 40–50; fgsm 25; pgd 25" in table.notes[-1]
    [record] = [r for r in table.records() if r["Detector"] == "svm"]
    assert record["pgd"] == 0.0 and record["pgd n"] == 25
    assert record["pgd hi"] == pytest.approx(M.wilson_interval(0, 25)[1])


def test_decimals_follow_the_count():
    assert tables.Estimate(0.9123, 0.88, 0.94, 44).text() == "0.91 [0.88, 0.94]"
    assert tables.Estimate(0.9123, 0.9, 0.93, 1000).text() == "0.912 [0.900, 0.930]"
    assert tables.Estimate(0.91234, 0.9, 0.93, 20_000).text() == "0.9123 [0.9000, 0.9300]"
    assert tables.Estimate(None).text() == "–" and tables.Estimate(0.5, n=10).text() == "0.50 [–]"


def _predict_cell(imageset, op, count, images=40):
    return _cell(stage="predict", dataset="d", model="m", imageset=imageset, operation=op,
                 metrics=[_m("topk_misclassified", count), _m("images", images)])


def _rendered(built, width):
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    formats.render_rich(built, console)
    return console.export_text()


def _assert_every_value_shown(built, text):
    lines = text.splitlines()
    assert "…" not in text
    for t in built:
        for row in t.rows:
            key = " ".join(formats.cell_text(v) for v in row[:t.key_columns])
            for v in row[t.key_columns:]:  # each value on a line of its row (its part of a split table)
                want = formats.cell_text(v)
                assert any(want in line and all(formats.cell_text(k) in line for k in row[:t.key_columns])
                           for line in lines), (t.title, key, want)


@pytest.mark.parametrize("width", [220, 100])
def test_wide_tables_show_every_number(width):
    ops = [f"jpeg@{q}" for q in range(100, 4, -5)] + [f"scaling@{s / 100:.2f}" for s in range(50, 150, 5)]
    sets = ["clean", "fgsm", "bim", "pgd", "cw", "deepfool", "newtonfool", "jsma"]
    predict = [_predict_cell(s, op, (i * 7 + j * 3) % 41) for i, op in enumerate(["original"] + ops)
               for j, s in enumerate(sets)]
    [t3] = tables.table3(predict)
    assert t3.columns[0] == "Operation" and len(t3.rows) == len(ops) + 1 and len(t3.columns) == len(sets) + 1
    detectors = ["lda", "svm", "mlp", "logreg", "knn", "tree", "forest", "boost", "nb"]
    detect = [_renamed(_detector("x", group=g, feature=f, fp=i % 9, per_attack=(("fgsm", 60, 40 + i % 17),)), d)
              for i, (d, g, f) in enumerate((d, g, f) for d in detectors for g in ("JPEG", "Scaling", "All")
                                            for f in ("counting", "differences"))]
    [t4] = tables.table4(detect)
    assert t4.columns == ("Group", "Feature", *detectors) and len(t4.rows) == 6
    built = [t3, t4, *tables.leaderboard(detect), *tables.detection_by_attack(detect)]
    text = _rendered(built, width)
    _assert_every_value_shown(built, text)
    assert max(len(line) for line in text.splitlines()) <= width
    if width == 100:
        assert "(part 2 of" in text  # Table 4 and the leaderboard do not fit in 100 columns


def test_column_parts_repeat_the_key_columns_and_honour_max_columns():
    t = tables.Table("t", ("Group", "Feature", *(f"d{i}" for i in range(9))),
                     (("JPEG", "counting", *(tables.Estimate(0.5, 0.4, 0.6, 100) for _ in range(9))),), key_columns=2)
    assert formats.column_parts(t, 400) == [list(range(11))]
    parts = formats.column_parts(t, 100)
    assert len(parts) > 1 and all(p[:2] == [0, 1] for p in parts)
    assert sorted({i for p in parts for i in p}) == list(range(11))
    assert all(len(p) <= 5 for p in formats.column_parts(t, 400, max_columns=5))


def test_compare_shows_zero_deltas_for_the_same_run(cells):
    [table] = tables.compare(cells, cells, 1, 1)
    assert table.rows and all(r[6] == 0 for r in table.rows)


def test_latex_escapes_specials():
    t = tables.Table("a_b & 50%", ("x_y",), (("#1",),))
    out = formats.render_latex([t])
    assert re.search(r"a\\_b \\& 50\\%", out) and r"\#1" in out


# --- the evaluation protocol: budgets, adaptive sets, unseen attacks, subset search ------------------


@pytest.fixture(scope="module")
def evaluation_cells(evaluation_run):
    result, root = evaluation_run
    return open_store(str(root / "results.db")).cells(result.run_id)


@pytest.mark.parametrize("name", ["adaptive", "security", "unseen", "subset"])
def test_evaluation_tables_have_rows_in_every_format(evaluation_cells, cells, name):
    built = tables.table_named(name)(evaluation_cells)
    assert built and all(t.rows for t in built)
    for t in built:
        assert all(len(r) == len(t.columns) for r in t.rows)
    rows = list(csv.reader(io.StringIO(formats.render_csv(built))))
    assert len(rows) == sum(len(t.rows) + 1 for t in built) and len({len(r) for r in rows[:len(built[0].rows) + 1]}) == 1
    assert [t["title"] for t in json.loads(formats.render_json(built))] == [t.title for t in built]
    _assert_every_value_shown(built, _rendered(built, 120))
    assert tables.table_named(name)(cells) == []  # a run without those cells: nothing


def _by(cells, **fields):
    return [c for c in cells if all(getattr(c, k) == v for k, v in fields.items())]


def test_adaptive_table_on_the_tiny_world(evaluation_cells):
    main, transfer = tables.adaptive_tables(evaluation_cells)
    col = main.columns.index
    rows = {(r[0], r[2]): r for r in main.rows}
    [score] = _by(evaluation_cells, stage="score", imageset="eot-pgd@0.3>JPEG", detector="lda", feature_group="JPEG")
    [oblivious] = _by(evaluation_cells, stage="score", imageset="fgsm-grid@0.3", detector="lda", feature_group="JPEG")
    row = rows[("eot-pgd@0.3>JPEG", "lda/counting/JPEG")]
    assert row[col("Oblivious set")] == "fgsm-grid@0.3" and row[col("Budget")] == "0.3"
    [detect] = [c for c in evaluation_cells if tables.standard(c) and c.feature_group == "JPEG"]
    assert row[col("Primary")] == "fgsm" and row[col("Det. primary")] == tables.wilson(
        tables.metric(detect, "detection_rate", "fgsm"), tables.metric(detect, "n", "fgsm"))
    n, tried = tables.metric(score, "n"), tables.metric(score, "attempted")
    assert row[col("Det. adaptive")] == tables.wilson(tables.metric(score, "detection_rate"), n)
    assert row[col("System adaptive")].value == tables.metric(score, "fooled") / tried
    assert row[col("System oblivious")].value == tables.metric(oblivious, "system_success")
    # the JPEG operations are the target: every detector and corrector over JPEG, never the All group
    assert {d for s, d in rows if s == "eot-pgd@0.3>JPEG"} == {"lda/counting/JPEG", "vote/JPEG", "rank-weighted/JPEG",
                                                               "top1-majority/JPEG"}
    assert rows[("system-hsj>lda/counting/JPEG", "lda/counting/JPEG")][col("Oblivious set")] == "–"  # no budget
    assert transfer.columns[1:] == ("eot-pgd@0.1>JPEG", "eot-pgd@0.3>JPEG", "system-hsj>lda/counting/JPEG")
    assert {r[0] for r in transfer.rows} == {"lda/counting/JPEG", "lda/counting/All"}


def test_unseen_and_subset_tables_on_the_tiny_world(evaluation_cells):
    [unseen] = tables.unseen(evaluation_cells)
    held = [c for c in evaluation_cells if c.stage == "detect" and c.holdout]
    assert len(unseen.rows) == len(held) == 4 and {r[3] for r in unseen.rows} == {"fgsm", "bim"}
    for r in unseen.rows:
        [c] = [c for c in held if (c.feature_group, c.holdout) == (r[2], r[3])]
        [seen] = [s for s in evaluation_cells if tables.standard(s) and s.feature_group == c.feature_group]
        assert r[5].value == tables.metric(c, "detection_rate", r[4]) and r[6].value == tables.metric(seen, "detection_rate", r[4])
    [subset] = tables.subset(evaluation_cells)
    assert [r[3] for r in subset.rows] == [1, 2, 5] and subset.rows[-1][4].startswith("(all operations")
    [cell] = [c for c in evaluation_cells if c.stage == "subset"]
    assert subset.rows[0][6].value == tables.metric(cell, "accuracy", f"01 +{subset.rows[0][4]}")


def test_table1_rows_for_grid_points_and_adaptive_sets(evaluation_cells):
    t1, budgets = tables.table1(evaluation_cells)
    rows = {r[0]: r for r in t1.rows}
    assert rows["fgsm-grid@0.3"][2:4] == ("oblivious", "0.3") and rows["fgsm"][2:4] == ("oblivious", "–")
    assert rows["eot-pgd@0.1>JPEG"][2:4] == ("adaptive", "0.1") and rows["system-hsj>lda/counting/JPEG"][3] == "–"
    [grid] = _by(evaluation_cells, stage="attack", imageset="fgsm-grid@0.3")
    assert rows["(eval images attacked: evaluation sets)"][4] == int(tables.metric(grid, "attempted"))
    assert rows["fgsm-grid@0.3"][4] == int(tables.metric(grid, "success"))
    hsj = next(r for r in budgets.rows if r[0] == "system-hsj>lda/counting/JPEG")
    [cell] = _by(evaluation_cells, stage="adaptive", imageset="system-hsj>lda/counting/JPEG")
    assert budgets.columns[-1].endswith("queries") and hsj[-1] == tables.metric(cell, "mean_queries") > 0
    assert next(r for r in budgets.rows if r[0] == "fgsm")[-1] is None


def test_held_out_cells_stay_off_the_standard_tables(evaluation_cells):
    [board] = tables.leaderboard(evaluation_cells)
    assert len(board.rows) == len([c for c in evaluation_cells if tables.standard(c)]) == 2
    [t4] = tables.table4(evaluation_cells)
    [standard_jpeg] = [c for c in evaluation_cells if tables.standard(c) and c.feature_group == "JPEG"]
    assert t4.rows[0][2].value == tables.metric(standard_jpeg, "accuracy")


# constructed cells: exact values

def _made(stage, attack, success, attempted=20, budget=None, threat="oblivious", target="", targeted=0.0, norm="linf",
          plugin=None, evaluation=None, **extra):
    metrics = [_m("success", success), _m("attempted", attempted), _m("targeted", targeted)]
    metrics += [_m(k, v) for k, v in extra.items()]
    return _cell(stage=stage, dataset="d", model="m", metrics=metrics,
                 **_origin(attack, budget, threat, target, norm, plugin, evaluation))


def _score(attack, *, n, flagged=None, fooled, attempted=20, detector="svm", feature="differences", group="JPEG",
           corrector="", budget=None, threat="oblivious", target="", norm="linf", plugin=None):
    metrics = [_m("attempted", attempted), _m("n", n), _m("fooled", fooled), _m("system_success", fooled / attempted)]
    if flagged is not None:
        metrics.append(_m("detection_rate", flagged / n if n else None))
    groups = {"correction_group": group} if corrector and not detector else {"feature_group": group}
    return _cell(stage="score", dataset="d", model="m", feature=feature, detector=detector, corrector=corrector,
                 metrics=metrics, **groups, **_origin(attack, budget, threat, target, norm, plugin))


def _world(fgsm_norm="l2"):
    """pgd (primary), a pgd grid at 0.01/0.03 (L∞) and fgsm at 0.03 (L2 unless ``fgsm_norm``);
    eot-pgd at 0.01/0.03 (L∞) against the svm/differences/JPEG detector; a corrector over JPEG;
    a pipeline target nobody trained."""
    target = "svm/differences/JPEG"
    return [
        _made("attack", "pgd", 18),
        _made("attack", "pgd@0.01", 8, budget=0.01), _made("attack", "pgd@0.03", 15, budget=0.03),
        _made("attack", "fgsm@0.03", 12, budget=0.03, norm=fgsm_norm),
        _made("adaptive", "eot-pgd@0.01>" + target, 6, budget=0.01, threat="adaptive", target=target),
        _made("adaptive", "eot-pgd@0.03>" + target, 14, budget=0.03, threat="adaptive", target=target),
        _made("adaptive", "eot-pgd@0.03>pipeline", 3, budget=0.03, threat="adaptive", target="pipeline"),
        _detector("svm", feature="differences", per_attack=(("pgd", 25, 20),)),
        _score("pgd@0.01", n=8, flagged=6, fooled=2, budget=0.01),
        _score("pgd@0.03", n=15, flagged=12, fooled=3, budget=0.03),
        _score("fgsm@0.03", n=12, flagged=6, fooled=6, budget=0.03, norm=fgsm_norm),
        _score("eot-pgd@0.01>" + target, n=6, flagged=1, fooled=5, budget=0.01, threat="adaptive", target=target),
        _score("eot-pgd@0.03>" + target, n=14, flagged=2, fooled=12, budget=0.03, threat="adaptive", target=target),
        _score("eot-pgd@0.03>" + target, n=14, fooled=11, detector="", feature="", corrector="vote", budget=0.03,
               threat="adaptive", target=target),
        _score("eot-pgd@0.03>pipeline", n=3, fooled=3, detector="", feature="", corrector="vote", budget=0.03,
               threat="adaptive", target="pipeline"),
    ]


def test_adaptive_rows_compare_the_same_budget_and_norm():
    main, transfer = tables.adaptive_tables(_world())
    col = main.columns.index
    rows = [r for r in main.rows if r[0] == "eot-pgd@0.03>svm/differences/JPEG"]
    # the corrector is not the target; pgd@0.03 is L∞ at 0.03 as eot-pgd is, fgsm@0.03 is L2
    assert [(r[col("Defense")], r[col("Oblivious set")], r[col("Primary")]) for r in rows] == [
        ("svm/differences/JPEG", "pgd@0.03", "pgd")]
    row = rows[0]
    assert row[col("Det. adaptive")] == tables.Estimate(2 / 14, *M.wilson_interval(2, 14), 14)
    assert row[col("Det. oblivious")] == tables.Estimate(12 / 15, *M.wilson_interval(12, 15), 15)
    assert row[col("Det. primary")] == tables.Estimate(20 / 25, *M.wilson_interval(20, 25), 25)
    assert row[col("System adaptive")] == tables.Estimate(12 / 20, *M.wilson_interval(12, 20), 20)
    assert row[col("System oblivious")].value == 3 / 20 and row[col("Attack success")].value == 14 / 20
    # system success 5/20 at 0.01, 12/20 at 0.03: the adaptive attack succeeds at 0.03; pgd never (3/20)
    assert (row[col("Adaptive ≥ 0.5 at")], row[col("Oblivious ≥ 0.5 at")]) == ("0.03", "> 0.03")
    [low] = [r for r in main.rows if r[0] == "eot-pgd@0.01>svm/differences/JPEG"]
    assert low[col("Oblivious set")] == "pgd@0.01" and low[col("Adaptive ≥ 0.5 at")] == "0.03"
    [pipe] = [r for r in main.rows if r[0] == "eot-pgd@0.03>pipeline"]
    assert pipe[col("Defense")] == "(no trained defense)" and pipe[col("Attack success")].value == 3 / 20
    assert transfer.columns[1:] == ("eot-pgd@0.01>svm/differences/JPEG", "eot-pgd@0.03>svm/differences/JPEG",
                                    "eot-pgd@0.03>pipeline")
    [svm] = transfer.rows
    assert svm[0] == "svm/differences/JPEG" and svm[2].value == 2 / 14 and svm[3] is None


def test_every_oblivious_set_of_the_budget_and_norm_is_a_comparator():
    [main, _] = tables.adaptive_tables(_world(fgsm_norm="linf"))
    col = main.columns.index
    rows = [r for r in main.rows if r[0] == "eot-pgd@0.03>svm/differences/JPEG"]
    # no name is read: fgsm@0.03 is L∞ at 0.03 too, and no primary attack is of its plugin
    assert [(r[col("Oblivious set")], r[col("Primary")]) for r in rows] == [("pgd@0.03", "pgd"), ("fgsm@0.03", "–")]
    assert rows[1][col("Det. oblivious")].value == 6 / 12 and rows[1][col("Det. primary")] is None
    assert tables.smallest_succeeding_budget([]) == "–"


def test_the_primary_attack_is_the_one_of_the_comparator_s_plugin():
    grid = {"pgd@0.01": "linf-grid@0.01", "pgd@0.03": "linf-grid@0.03"}  # a grid of the pgd plugin, named otherwise
    renamed = [SimpleNamespace(**{**vars(c), "imageset": grid.get(c.imageset, c.imageset),
                                  "family": "linf-grid" if c.imageset in grid else c.family}) for c in _world()]
    [main, _] = tables.adaptive_tables(renamed)
    col = main.columns.index
    [row] = [r for r in main.rows if r[0] == "eot-pgd@0.03>svm/differences/JPEG"]
    assert (row[col("Oblivious set")], row[col("Primary")]) == ("linf-grid@0.03", "pgd")


def test_security_table_reads_per_budget():
    built = tables.security(_world())
    titles = [t.title.split(" — ")[1] for t in built]
    assert titles == ["pgd (oblivious)", "fgsm (oblivious)", "eot-pgd (adaptive vs svm/differences/JPEG)",
                      "eot-pgd (adaptive vs pipeline)"]  # oblivious first, then in the order of the cells
    pgd = built[0]
    assert pgd.columns == ("Defense", "Det. @0.01", "System @0.01", "Det. @0.03", "System @0.03")
    svm, alone = pgd.rows
    assert svm[0] == "svm/differences/JPEG" and svm[1].value == 6 / 8 and svm[4] == tables.Estimate(
        3 / 20, *M.wilson_interval(3, 20), 20)
    assert alone[0] == "(attack alone)" and alone[1] is None and alone[2].value == 8 / 20 and alone[4].value == 15 / 20
    adaptive = built[2]
    vote = next(r for r in adaptive.rows if r[0] == "vote/JPEG")
    assert vote[1] is None and vote[3] is None and vote[4].value == 11 / 20 and vote[2].value is None  # none at 0.01
    [curve] = [c for c in tables.security_curves(_world()) if c.family == "pgd"]
    assert curve.budgets == (0.01, 0.03) and curve.name == "pgd (oblivious)"


def test_unseen_table_compares_with_the_cell_that_saw_the_attack():
    seen = _detector("svm", per_attack=(("fgsm", 25, 20), ("pgd", 25, 15), ("cw", 10, 9)))
    held = SimpleNamespace(**{**vars(_detector("svm", per_attack=(("pgd", 25, 5),))), "holdout": "pgd"})
    part = SimpleNamespace(**{**vars(_detector("svm", per_attack=(("pgd", 25, 10), ("cw", 10, 2)))), "holdout": "linf-to-l2"})
    broken = SimpleNamespace(**{**vars(_detector("lda", status="failed")), "holdout": "fgsm"})
    [table] = tables.unseen([seen, held, part, broken])
    rows = {(r[0], r[3], r[4]): r for r in table.rows}
    pgd = rows[("svm", "pgd", "pgd")]
    assert pgd[5] == tables.Estimate(0.2, *M.wilson_interval(5, 25), 25) and pgd[6].value == 0.6
    assert pgd[9] == pytest.approx(0.2 - 0.6) and pgd[7].n == 50 and pgd[8].n == 75
    assert rows[("svm", "linf-to-l2", "cw")][5].value == 0.2 and rows[("svm", "linf-to-l2", "cw")][6].value == 0.9
    assert rows[("lda", "fgsm", "–")][5] == "failed"
    [board] = tables.leaderboard([seen, held, part])
    assert len(board.rows) == 1  # held-out cells are not on the leaderboard


def test_subset_table_orders_steps_and_gives_the_all_operations_reference():
    full = _detector("lda", group="All", extra=(("operations", 38.0),))
    full.metrics += [_m("n", 30.0, "dev"), _m("accuracy", 0.9, "dev")]
    steps = [("02 +scaling@0.5", 0.8, 0.78, 3.5), ("01 +jpeg@60", 0.7, 0.66, 2.0), ("10 +rotate@5", 0.92, 0.9, 9.0)]
    metrics = [_m("candidates", 38.0)] + [m for where, dev, ev, cost in steps for m in (
        _m("dev_accuracy", dev, where), _m("accuracy", ev, where), _m("seconds_per_1000", cost, where))]
    cell = _cell(stage="subset", dataset="d", model="m", feature_group="All", feature="counting", detector="lda",
                 metrics=metrics)
    [table] = tables.subset([full, cell])
    assert [(r[3], r[4]) for r in table.rows] == [(1, "jpeg@60"), (2, "scaling@0.5"), (10, "rotate@5"),
                                                 (38, "(all operations: detect cell)")]
    first = table.rows[0]
    assert first[5] == tables.Estimate(0.7, *M.wilson_interval(21, 30), 30)
    assert first[6] == tables.Estimate(0.66, *M.wilson_interval(66, 100), 100) and first[7] == 2.0
    assert table.rows[-1][6] == tables.estimate(full, "accuracy") and table.rows[-1][5].value == 0.9


def test_table1_orders_primary_grid_then_adaptive_and_shows_queries_only_when_stored():
    cells = [_made("attack", "pgd@0.03", 15, budget=0.03), _made("attack", "cw", 17, targeted=1.0),
             _made("adaptive", "hsj>svm", 9, threat="adaptive", target="svm", mean_queries=812.5),
             _made("attack", "pgd", 18), _made("attack", "pgd@0.01", 8, budget=0.01),
             _made("attack", "square-linf", 5, attempted=10, evaluation=True),  # evaluation = true: no budget
             _score("square-linf", n=5, flagged=2, fooled=3)]
    t1, budgets = tables.table1(cells)
    assert [r[:4] for r in t1.rows[:6]] == [("cw", "targeted", "oblivious", "–"), ("pgd", "non-targeted", "oblivious", "–"),
                                           ("pgd@0.01", "non-targeted", "oblivious", "0.01"),
                                           ("pgd@0.03", "non-targeted", "oblivious", "0.03"),
                                           ("square-linf", "non-targeted", "oblivious", "–"),
                                           ("hsj>svm", "non-targeted", "adaptive", "–")]
    assert [r[4] for r in t1.rows[:6]] == [17, 18, 8, 15, 5, 9]
    assert [r[0] for r in t1.rows[6:]] == ["(clean images attacked)", "(eval images attacked: evaluation sets)"]
    assert [r[4] for r in t1.rows[6:]] == [20, 20]  # cw's attempted; pgd@0.01's (the first evaluation set)
    assert budgets.columns[-1] == "d/m queries" and budgets.rows[-1] == ("hsj>svm", None, None, 812.5)
    assert tables.evaluation_sets(cells) == {("d", "m", a) for a in ("pgd@0.03", "hsj>svm", "pgd@0.01", "square-linf")}
    flagged = SimpleNamespace(**{**vars(cells[3]), "evaluation": True})  # the cell's flag says it
    assert ("d", "m", "pgd") in tables.evaluation_sets([flagged])
    _, plain = tables.table1([c for c in cells if c.stage == "attack"])
    assert not any("queries" in c for c in plain.columns)


def test_a_failed_score_cell_shows_its_status_in_the_adaptive_table():
    cells = _world()
    broken = _score("eot-pgd@0.01>svm/differences/JPEG", n=6, flagged=1, fooled=5, budget=0.01, threat="adaptive",
                    target="svm/differences/JPEG")
    broken.status = "failed"
    cells = [c for c in cells if c.imageset != broken.imageset or c.stage != "score"] + [broken]
    main, transfer = tables.adaptive_tables(cells)
    [row] = [r for r in main.rows if r[0] == broken.imageset]
    assert row[2] == "svm/differences/JPEG" and row[main.columns.index("Det. adaptive")] == "failed"
    assert transfer.rows[0][1] is None  # nothing to transfer from a failed cell
    # the 0.03 row's curve no longer sees the failed 0.01 point
    [high] = [r for r in main.rows if r[0] == "eot-pgd@0.03>svm/differences/JPEG" and r[3] == "pgd@0.03"]
    assert high[main.columns.index("Adaptive ≥ 0.5 at")] == "0.03"
