"""Detector cells ranked: the leaderboard of a run, the best across runs, two runs compared,
and the cells that did not complete."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from advbench.errors import AdvbenchError
from advbench.report.tables.labels import budget_steps, detector_label
from advbench.report.tables.base import (DECIMALS_NOTE, INTERVAL_NOTE, Estimate, Rank, Table, by_world,
                                         counted, estimate, metric, span, standard)
from advbench.report.tables.robust import robust_lookup
from advbench.report.tables.robust import detection_estimate as robust_detection
from advbench.report.tables.robust import system_estimate as robust_system

LEADERBOARD_METRICS = ("accuracy", "balanced_accuracy", "eer", "auroc", "tpr_at_5fpr", "tnr_at_95tpr",
                       "tpr_at_dev_5fpr")
METRIC_TITLES = {"accuracy": "Accuracy", "balanced_accuracy": "Bal. acc.", "eer": "EER", "auroc": "AUROC",
                 "tpr_at_5fpr": "TPR@5%FPR", "detection_rate": "Det. rate", "fpr": "FPR",
                 "tnr_at_95tpr": "TNR@95%TPR", "tpr_at_dev_5fpr": "TPR@dev 5%", "fpr_at_dev_5fpr": "FPR@dev 5%"}
LOWER_IS_BETTER = {"eer", "fpr", "fpr_at_dev_5fpr"}
# the leaderboard's rate columns, in order: the sortable ones, the detector's own operating point and
# the matched one (threshold flagging 5 % of normal dev images)
BOARD_RATES = ("accuracy", "balanced_accuracy", "detection_rate", "fpr", "eer", "auroc", "tpr_at_5fpr",
               "tnr_at_95tpr", "tpr_at_dev_5fpr", "fpr_at_dev_5fpr")


def _rank(items: list, value: Callable[[Any], float | None], interval: Callable[[Any], Estimate],
          lower_is_better: bool, tiebreak: Callable[[Any], tuple]) -> list[tuple[Rank, Any]]:
    """Items best first, each with its rank. Those whose interval overlaps the leader's (or
    whose value equals it) are not ranked apart from it: they come first, all ranked ``=1``;
    the rest follow by value with their positions (competition ranking: equal values share
    one, ``=4``); items without a value come last."""
    def key(item):
        v = value(item)
        return (v is None, 0.0 if v is None else (v if lower_is_better else -v), *tiebreak(item))

    ordered = sorted(items, key=key)
    if not ordered or value(ordered[0]) is None:
        return [(Rank(i + 1), item) for i, item in enumerate(ordered)]
    top_value, top_interval = value(ordered[0]), interval(ordered[0])
    with_leader = [item for item in ordered if value(item) is not None
                   and (value(item) == top_value or interval(item).overlaps(top_interval))]
    taken = {id(item) for item in with_leader}
    ordered = with_leader + [item for item in ordered if id(item) not in taken]
    positions = [1] * len(with_leader)
    for i in range(len(with_leader), len(ordered)):
        v = value(ordered[i])
        same = v is not None and i > len(with_leader) and v == value(ordered[i - 1])
        positions.append(positions[-1] if same else i + 1)
    shared = {p for p in positions if positions.count(p) > 1}
    return [(Rank(p, p in shared), item) for p, item in zip(positions, ordered)]


def _board_notes(sort: str, ranked: list[tuple[Rank, Any]], leader_interval: Estimate | None,
                 counts: Sequence[Any]) -> tuple[str, ...]:
    notes = []
    if any(r.tied for r, _ in ranked):
        notes.append(f"= : shared rank; =1: the 95 % interval of {sort} overlaps the leader's (or equals its value): "
                     "not ranked apart")
    if leader_interval is not None and not leader_interval.has_interval:
        notes.append(f"no {sort} interval stored for the leader: only equal values tie")
    notes += [INTERVAL_NOTE, DECIMALS_NOTE,
              "TPR@5%FPR: read off the eval ROC; TPR@dev 5% / FPR@dev 5%: on eval, at the threshold that flags 5 % of "
              "the normal DEV images (matched across detectors); TNR@95%TPR: 1 - FPR where the eval TPR reaches 0.95",
              "n: eval images; Det. rate: share of adversarial eval images flagged (TPR), FPR: of normal ones"
              + _span_note("normal", [metric(c, "n_normal") for c in counts])
              + _span_note("adversarial", [metric(c, "n_adversarial") for c in counts])]
    return tuple(notes)


def _span_note(label: str, values: Sequence[float | None]) -> str:
    return f"; {label}: {span(values)}" if any(v is not None for v in values) else ""


def _check_sort(sort: str) -> None:
    if sort not in LEADERBOARD_METRICS:
        raise AdvbenchError(f"--sort {sort!r}: unknown metric; valid: {', '.join(LEADERBOARD_METRICS)}")


def leaderboard(cells, sort: str = "accuracy", top: int | None = None) -> list[Table]:
    """Detector cells of a run ranked by ``sort`` (per dataset/model), the first ``top`` of
    them if given; failed cells last, always shown. Every rate carries its 95 % interval, and
    cells whose ``sort`` interval overlaps the leader's are ranked ``=1`` with it."""
    _check_sort(sort)
    tables = []
    robust = robust_lookup(cells)
    for (dataset, model), group in by_world(c for c in cells if standard(c)).items():
        ok = [c for c in group if c.status == "ok"]
        ranked = _rank(ok, lambda c: metric(c, sort), lambda c: estimate(c, sort), sort in LOWER_IS_BETTER,
                       lambda c: (c.detector, c.feature, c.feature_group))
        worst = robust_columns(robust, dataset, model) if any(k[:2] == (dataset, model) for k in robust) else None
        extra = () if worst is None else ("Robust det.", "Robust sys.", "Robust @")
        rows = [(rank, c.detector, c.feature, c.feature_group, counted(c, "n"), *(estimate(c, m) for m in BOARD_RATES),
                 *(() if worst is None else worst(c)), "ok") for rank, c in ranked[:top]]
        rows += [("-", c.detector, c.feature, c.feature_group, None, *([None] * (len(BOARD_RATES) + len(extra))),
                  f"{c.status}: {c.error}") for c in group if c.status != "ok"]
        shown = f", best {top} of {len(ok)}" if top is not None and top < len(ok) else ""
        leader = estimate(ranked[0][1], sort) if ranked else None
        notes = _board_notes(sort, ranked[:top], leader, ok) + ((ROBUST_NOTE,) if extra else ())
        tables.append(Table(f"Leaderboard — {dataset} / {model} (mixture protocol, eval set, ranked by {sort}{shown})",
                            ("Rank", "Detector", "Feature", "Group", "n", *(METRIC_TITLES[m] for m in BOARD_RATES),
                             *extra, "Status"),
                            tuple(rows), notes, key_columns=4))
    return tables


ROBUST_NOTE = ("Robust det./sys.: the [[robust]] worst case against this cell at its largest budget (Robust @): the "
               "share of images fooling the classifier that it flags, and of attacked eval images that fool the "
               "defended system (--table robust: every budget, members, steps/samples/restarts); –: no robust entry "
               "targets it")


def robust_columns(robust: dict, dataset: str, model: str):
    """A detector cell -> (robust detection rate, robust system success, budget) of the robust
    cell targeting it, Nones where none does."""
    def columns(c) -> tuple:
        label = detector_label(c)
        cell = robust.get((dataset, model, label))
        if cell is None:
            return (None, None, "–")
        return (robust_detection(cell), robust_system(cell), budget_steps(cell.budget))
    return columns


def cross_run_leaderboard(runs_and_cells, sort: str = "accuracy", best: int = 3) -> list[Table]:
    """The best ``best`` detector cells of each dataset/model across runs (latest run of each
    benchmark), with the run id, config hash and date beside them; ties with the leader as in
    :func:`leaderboard`."""
    _check_sort(sort)
    rows_by_world: dict[tuple[str, str], list] = defaultdict(list)
    for run, cells in runs_and_cells:
        for c in cells:
            if standard(c) and c.status == "ok" and metric(c, sort) is not None:
                rows_by_world[(c.dataset, c.model)].append((run, c))
    tables = []
    for (dataset, model), entries in sorted(rows_by_world.items()):
        ranked = _rank(entries, lambda rc: metric(rc[1], sort), lambda rc: estimate(rc[1], sort),
                       sort in LOWER_IS_BETTER, lambda rc: (rc[0].id, rc[1].detector, rc[1].feature, rc[1].feature_group))
        rows = tuple((rank, run.benchmark, run.id, run.config_hash[:10], f"{run.started_at:%Y-%m-%d}",
                      c.detector, c.feature, c.feature_group, counted(c, "n"), *(estimate(c, m) for m in BOARD_RATES))
                     for rank, (run, c) in ranked[:best])
        tables.append(Table(f"Leaderboard across runs — {dataset} / {model} (best by {sort})",
                            ("Rank", "Benchmark", "Run", "Config", "Date", "Detector", "Feature", "Group", "n",
                             *(METRIC_TITLES[m] for m in BOARD_RATES)), rows,
                            _board_notes(sort, ranked[:best], estimate(ranked[0][1][1], sort), [c for _, c in entries]),
                            key_columns=8))
    return tables


def compare(cells_a, cells_b, run_a: int, run_b: int) -> list[Table]:
    """Detector cells present in both runs, with each metric in A, in B, and B - A."""
    def key(c):
        return (c.dataset, c.model, c.detector, c.feature, c.feature_group)

    b_by_key = {key(c): c for c in cells_b if standard(c) and c.status == "ok"}
    rows = []
    for a in cells_a:
        b = b_by_key.get(key(a))
        if not standard(a) or a.status != "ok" or b is None:
            continue
        values = []
        for m in ("accuracy", "eer", "auroc"):
            va, vb = metric(a, m), metric(b, m)
            values += [va, vb, None if va is None or vb is None else vb - va]
        rows.append((f"{a.dataset}/{a.model}", a.detector, a.feature, a.feature_group, *values))
    rows.sort(key=lambda r: -(abs(r[6]) if r[6] is not None else 0))
    return [Table(f"Run {run_b} compared with run {run_a} (B - A; sorted by |Δ accuracy|)",
                  ("Dataset/model", "Detector", "Feature", "Group", "Acc. A", "Acc. B", "Δ acc.",
                   "EER A", "EER B", "Δ EER", "AUROC A", "AUROC B", "Δ AUROC"), tuple(rows))]


def failures(cells) -> Table | None:
    bad = [c for c in cells if c.status != "ok"]
    if not bad:
        return None
    rows = tuple((c.stage, "/".join(p for p in (c.dataset, c.model, c.imageset, c.operation, c.feature_group, c.feature,
                                                c.detector, c.correction_group, c.corrector) if p),
                  c.status, c.error) for c in bad)
    return Table("Cells that did not complete", ("Stage", "Cell", "Status", "Error"), rows)
