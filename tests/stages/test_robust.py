"""Robust cells on the tiny world (``robust_run``, tests/conftest.py): the worst case over an
attack ensemble per defense and budget, monotone in the budget, never better for the defender
than its members, judged as the score cells judge an evaluation set."""

from __future__ import annotations

import json

import numpy as np

from advbench.cache import load_columns
from advbench.report import tables
from advbench.report.tables.robust import robust_table
from advbench.store import open_store


def _dir(root, cell):
    return next((root / "cache" / cell.stage).rglob(cell.key))


def _robust(result) -> dict[tuple[str, str, float], object]:
    return {(o.cell.family, o.cell.target, o.cell.budget): o for o in result.outcomes
            if o.cell.stage == "robust"}


def _metrics(outcome) -> dict[tuple[str, str], float]:
    return {(n, s): v for n, s, v in outcome.metrics}


def _broken_sources(root, outcome, member: str | None = None, budget: float | None = None) -> set[str]:
    manifest = json.loads((_dir(root, outcome.cell) / "manifest.json").read_text())
    return {r["source"] for r in manifest if r["broken"] and (member is None or r["member"] == member)
            and (budget is None or r["broken_at"] == budget)}


def test_robust_cells_chain_their_budgets(robust_run):
    result, _ = robust_run
    cells = _robust(result)
    for (entry, target, budget), o in cells.items():
        if budget > 0.1:
            below = cells[(entry, target, min(b for e, t, b in cells if (e, t) == (entry, target)))]
            assert below.cell.key in o.cell.deps  # reads the worst case of the budget below
        m = _metrics(o)
        assert m[("attempted", "")] > 0 and m[("budget", "")] == budget


def test_every_reported_security_curve_is_non_decreasing_in_the_budget(robust_run, evaluation_run):
    for run, _ in (robust_run, evaluation_run):
        cells = open_store(run.store_url, create=False).cells(run.run_id)
        curves = tables.security_curves(cells)
        assert any(c.threat == "robust" for c in curves) or run is evaluation_run[0]
        for curve in curves:
            for name, _, points in curve.defenses:
                values = [system.value for _, system in points if system.value is not None]
                assert values == sorted(values), (curve.name, name, values)
        for curve in (c for c in curves if c.threat == "robust"):
            successes = [a.value for a in curve.attack]
            assert successes == sorted(successes), curve.name
    result, root = robust_run
    for (entry, target, budget), o in _robust(result).items():
        larger = [x for (e, t, b), x in _robust(result).items() if (e, t) == (entry, target) and b > budget]
        for x in larger:  # per image: broken at a smaller budget, broken at every larger one
            assert _broken_sources(root, o) <= _broken_sources(root, x)
            assert _metrics(x)[("carried", "")] == _metrics(o)[("broken", "")]


def test_the_ensemble_is_never_better_for_the_defender_than_a_member_alone(robust_run):
    result, root = robust_run
    cells = _robust(result)
    budgets = sorted({b for _, _, b in cells})
    for target in {t for _, t, _ in cells}:
        for budget in budgets:
            ensemble = cells[("ensemble", target, budget)]
            for alone in ("eot-alone", "rank-alone"):
                assert _metrics(ensemble)[("system_success", "")] >= _metrics(cells[(alone, target, budget)])[
                    ("system_success", "")], (target, budget, alone)
            # its first member ran exactly as alone (same images, seeds, batches): every image it broke
            assert _broken_sources(root, cells[("eot-alone", target, budget)]) <= _broken_sources(root, ensemble)
        top = cells[("ensemble", target, budgets[-1])]
        assert _metrics(top)[("system_success", "")] > _metrics(cells[("ensemble", target, budgets[0])])[
            ("system_success", "")]  # the larger budget broke more on the tiny world
        # the member whose image is kept broke it; members' counts add up to the broken images
        m = _metrics(top)
        assert sum(v for (n, s), v in m.items() if n == "member_broken") + m[("carried", "")] == m[("broken", "")]


def test_a_member_the_defense_cannot_meet_is_skipped_and_said_so(robust_run):
    result, root = robust_run
    o = _robust(result)[("ensemble", "lda/differences/All", 10 / 255)]
    m = _metrics(o)
    assert m[("member_skipped", "opgd")] == 1 and m[("member_attacked", "opgd")] == 0  # LDA has no gradient
    assert m[("steps", "eot-ce")] == 10 and m[("eot_samples", "rank-eot")] == 3 and m[("rel_stepsize", "rank-eot")] == 0.2
    members = json.loads((_dir(root, o.cell) / "members.json").read_text())
    assert "differentiable detector scores" in next(x for x in members if x["member"] == "opgd")["skipped"]


def _adaptive_breaks(root, result, budget: float) -> set[str]:
    """Sources the [[adaptive]] eot-pgd set at ``budget`` fools the LDA-defended system with
    (the score cell's verdict)."""
    score = next(o for o in result.outcomes if o.cell.stage == "score" and o.cell.imageset.startswith("eot-pgd@")
                 and o.cell.detector == "lda" and not o.cell.corrector and abs(o.cell.budget - budget) < 1e-9)
    rows = load_columns(_dir(root, score.cell), "per_image")
    return {s for s, d in zip(rows["source"], rows["decision"]) if d == 0}


def test_the_robust_verdict_is_the_score_cells_verdict(robust_run):
    """The ensemble's first member at the first budget is the [[adaptive]] cell of the same
    configuration; the images it broke are those the score cell finds fooling the system."""
    result, root = robust_run
    first = 10 / 255
    fooled_system = _adaptive_breaks(root, result, first)
    for entry, member in (("eot-alone", None), ("ensemble", "eot-ce")):
        robust = _robust(result)[(entry, "lda/differences/All", first)]
        assert _broken_sources(root, robust, member, first) == fooled_system, entry
    m = _metrics(_robust(result)[("eot-alone", "lda/differences/All", first)])
    adaptive = next(o for o in result.outcomes if o.cell.stage == "adaptive" and abs(o.cell.budget - first) < 1e-9)
    assert m[("success", "")] == _metrics(adaptive)[("success", "")]


def test_at_a_larger_budget_the_ensemble_breaks_every_image_the_member_alone_breaks(robust_run):
    """Past the first budget a member starts from its warm start, then runs from the clean image
    on what still stands, as it does alone: every image the [[adaptive]] cell of its
    configuration breaks at 51/255 is broken there (eot-pgd draws nothing at random here, so this
    holds per image, not only in distribution)."""
    result, root = robust_run
    alone = _adaptive_breaks(root, result, 0.2)
    assert alone
    for entry in ("eot-alone", "ensemble"):
        robust = _robust(result)[(entry, "lda/differences/All", 0.2)]
        assert alone <= _broken_sources(root, robust), entry
        m = _metrics(robust)
        if m[("member_attacked", "eot-ce")]:  # what the warm start left standing was run again from the clean image
            assert 0 < m[("member_fresh", "eot-ce")] <= m[("member_attacked", "eot-ce")]


def test_the_robust_table_and_the_leaderboard(robust_run):
    result, _ = robust_run
    cells = open_store(result.store_url, create=False).cells(result.run_id)
    (table,) = robust_table(cells)
    assert len(table.rows) == len(_robust(result)) and all(r[-1] == "ok" for r in table.rows)
    row = next(r for r in table.rows if r[:3] == ("ensemble", "lda/differences/All", "10/255"))
    assert row[6].n == row[3] and "eot-ce: 10 steps, 5 ops/step" in row[8] and "opgd: not applicable" in row[8]
    board = tables.leaderboard(cells)[0]
    assert board.columns[-4:] == ("Robust det.", "Robust sys.", "Robust @", "Status")
    lda_all = next(r for r in board.rows if r[1:4] == ("lda", "differences", "All"))
    assert lda_all[-2] == "51/255" and lda_all[-3].value == max(
        _metrics(o)[("system_success", "")] for (e, t, b), o in _robust(result).items()
        if t == "lda/differences/All" and b > 0.1)
    assert np.isfinite(lda_all[-3].lo)
