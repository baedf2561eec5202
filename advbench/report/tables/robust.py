"""The robust evaluation (``[[robust]]``): per defense and budget, the worst case over an
attack ensemble (stages/robust.py), as a table, as security curves, and as the leaderboard's
"robust" column.

Its rates are monotone in the budget by construction: an image broken at a smaller budget is
broken at every larger one. The search behind each row (steps, sampled operations, restarts per
member) is printed with it, so a defense that holds states what it held against.
"""

from __future__ import annotations

from collections import defaultdict

from advbench.report.tables.base import DECIMALS_NOTE, Estimate, Table, by_world, metric, wilson
from advbench.report.tables.labels import budget_steps

STAGE = "robust"


def robust_cells(cells) -> list:
    return [c for c in cells if c.stage == STAGE]


def entry_label(cell) -> str:
    """The ``[[robust]]`` entry's name (the robust cell's family)."""
    return cell.family


def success_estimate(cell) -> Estimate:
    return wilson(_ratio(metric(cell, "success"), metric(cell, "attempted")), metric(cell, "attempted"))


def detection_estimate(cell) -> Estimate:
    return wilson(_ratio(metric(cell, "detected"), metric(cell, "success")), metric(cell, "success"))


def system_estimate(cell) -> Estimate:
    return wilson(_ratio(metric(cell, "broken"), metric(cell, "attempted")), metric(cell, "attempted"))


def _ratio(count: float | None, total: float | None) -> float | None:
    return None if count is None or not total else count / total


def members_of(cell) -> list[str]:
    return list(dict.fromkeys(m.subset for m in cell.metrics if m.name == "member_attacked"))


def search_text(cell) -> str:
    """Each member that ran at this budget: its steps, sampled operations and restarts (or
    queries), the rows it attacked, and the mean steps it spent."""
    parts = []
    for name in members_of(cell):
        if metric(cell, "member_skipped", name):
            parts.append(f"{name}: not applicable")
            continue
        if not metric(cell, "member_attacked", name):
            parts.append(f"{name}: nothing left to attack")
            continue
        steps, samples = metric(cell, "steps", name), metric(cell, "eot_samples", name)
        runs = metric(cell, "restarts", name) or metric(cell, "rounds", name)
        queries = metric(cell, "max_queries", name)
        if steps is None and queries is None:
            continue  # not run at this budget
        what = [f"{steps:g} steps" if steps is not None else f"{queries:g} queries"]
        if samples is not None:
            what.append(f"{samples:g} ops/step" if samples else "all ops/step")
        if runs is not None:
            what.append(f"{runs:g} runs")
        attacked, spent = metric(cell, "member_attacked", name), metric(cell, "mean_steps", name)
        fresh = metric(cell, "member_fresh", name)  # past the first budget: after the warm start, if any
        again = f" ({fresh:g} from clean)" if fresh is not None and metric(cell, "budget_index") else ""
        what.append(f"on {attacked:g}{again}" + (f", mean {spent:.0f} steps per run" if spent is not None else ""))
        parts.append(f"{name}: {', '.join(what)}")
    return "; ".join(parts) or "–"


def broken_text(cell) -> str:
    counts = [(name, metric(cell, "member_broken", name) or 0) for name in members_of(cell)]
    return ", ".join(f"{name} {n:g}" for name, n in counts if n) or "none"


def robust_table(cells) -> list[Table]:
    """Per dataset/model: each [[robust]] entry's worst case against each defense per budget."""
    tables = []
    for (dataset, model), group in by_world(robust_cells(cells)).items():
        rows = []
        for c in sorted(group, key=lambda c: (entry_label(c), c.target, c.budget or 0.0)):
            head = (entry_label(c), c.target, budget_steps(c.budget))
            if c.status != "ok":
                rows.append((*head, None, None, None, None, "–", "–", f"{c.status}: {c.error}"))
                continue
            attempted, carried = metric(c, "attempted"), metric(c, "carried") or 0
            new = (metric(c, "broken") or 0) - carried
            rows.append((*head, None if attempted is None else int(attempted), success_estimate(c),
                         detection_estimate(c), system_estimate(c), f"{new:g} new + {carried:g} carried: "
                         f"{broken_text(c)}", search_text(c), "ok"))
        tables.append(Table(
            f"Robust evaluation: the worst case over an attack ensemble — {dataset} / {model} (eval images)",
            ("Entry", "Defense", "Budget", "Attacked", "Attack success", "Detected", "System fooled",
             "Broken (by member)", "Search (per member)", "Status"), tuple(rows),
            ("per attacked eval image, the worst case for the defender over every member and every budget up to "
             "this one: an image that fooled the defended system at a smaller budget counts here too (its image is "
             "inside this ball), so System fooled never falls with the budget",
             "Attack success: attacked images whose kept image satisfies the success rule on the classifier (after "
             "the save); Detected: share of those the detector flags; System fooled: share of attacked images "
             "that fool the classifier and are not undone by the defense (the score cells' rule)",
             "Broken: images newly broken at this budget per member (members run in order, each on the images "
             "still standing, from its own image of the budget below, then again from the clean image on what that "
             "left standing, as the member runs alone), and those carried from smaller budgets",
             "Search: steps per run, operations sampled per step, runs (restarts or rounds), images attacked (past the "
             "first budget: first from the member's warm start where it has one, and '(N from clean)': then from "
             "the clean image) and mean steps spent per run; "
             "'not applicable': the defense lacks what the member needs",
             "[lo, hi]: Wilson score 95 % intervals; " + DECIMALS_NOTE), key_columns=3))
    return tables


def robust_curves(cells) -> list:
    """One security curve per world, [[robust]] entry and defense (see evaluation.SecurityCurve)."""
    from advbench.report.tables.evaluation import SecurityCurve

    groups: dict[tuple, list] = defaultdict(list)
    for c in robust_cells(cells):
        if c.status == "ok":
            groups[(c.dataset, c.model, entry_label(c), c.target)].append(c)
    curves = []
    for (dataset, model, name, goal), group in sorted(groups.items()):
        group.sort(key=lambda c: c.budget or 0.0)
        points = tuple((detection_estimate(c), system_estimate(c)) for c in group)
        curves.append(SecurityCurve(dataset, model, name, "robust", goal, tuple(c.budget for c in group),
                                    ((goal, True, points),), tuple(success_estimate(c) for c in group),
                                    frozenset({goal})))
    return curves


def robust_lookup(cells) -> dict[tuple, object]:
    """(dataset, model, defense label) -> the ok robust cell of its largest budget (any entry;
    the worst of them where several reach that budget)."""
    best: dict[tuple, object] = {}
    for c in robust_cells(cells):
        if c.status != "ok":
            continue
        key = (c.dataset, c.model, c.target)
        held = best.get(key)
        if held is None or (c.budget or 0.0, metric(c, "system_success") or 0.0) > \
                (held.budget or 0.0, metric(held, "system_success") or 0.0):  # type: ignore[attr-defined]
            best[key] = c
    return best
