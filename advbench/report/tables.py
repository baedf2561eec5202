"""Tables built from a run's stored cells and metrics: the leaderboard and the paper's tables.

Each builder is a pure function of the cell rows, returning :class:`Table` values that any
format can render. A rate is an :class:`Estimate` (value, 95 % interval, count): human formats
print it as ``0.91 [0.88, 0.94]``, machine formats (CSV, JSON) as separate value/lo/hi/n columns.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from advbench import metrics as M
from advbench.errors import AdvbenchError
from advbench.plan import IMAGES

LEADERBOARD_METRICS = ("accuracy", "balanced_accuracy", "eer", "auroc", "tpr_at_5fpr")
METRIC_TITLES = {"accuracy": "Accuracy", "balanced_accuracy": "Bal. acc.", "eer": "EER", "auroc": "AUROC",
                 "tpr_at_5fpr": "TPR@5%FPR", "detection_rate": "Det. rate", "fpr": "FPR"}
LOWER_IS_BETTER = {"eer", "fpr"}
# the leaderboard's rate columns, in order: the sortable ones plus the detector's operating point
BOARD_RATES = ("accuracy", "balanced_accuracy", "detection_rate", "fpr", "eer", "auroc", "tpr_at_5fpr")
CONFIDENCE = 0.95
INTERVAL_NOTE = ("[lo, hi]: 95 % intervals — Wilson score for rates (balanced accuracy: effective n = "
                 "4 / (1/n_normal + 1/n_adversarial)), stratified bootstrap for EER and AUROC; [–]: none stored")
DECIMALS_NOTE = "decimals follow n (no more digits than the interval resolves): 2 below 100 images, 3 below 10,000, else 4"


def decimals_for(n: float | None) -> int:
    """Digits a rate over ``n`` items can carry: a 95 % interval is about ±1/sqrt(n) wide at
    p = 1/2, so n < 100 resolves hundredths at best, n < 10,000 thousandths."""
    if n is None:
        return 3
    return 2 if n < 100 else 3 if n < 10_000 else 4


@dataclass(frozen=True)
class Estimate:
    """A rate with its 95 % interval and the number of items behind it; ``None`` = not stored."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    n: int | None = None

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None

    def text(self) -> str:
        if self.value is None:
            return "–"
        d = decimals_for(self.n)
        interval = f"{self.lo:.{d}f}, {self.hi:.{d}f}" if self.has_interval else "–"
        return f"{self.value:.{d}f} [{interval}]"

    def fields(self, column: str) -> list[tuple[str, Any]]:
        return [(column, self.value), (f"{column} lo", self.lo), (f"{column} hi", self.hi), (f"{column} n", self.n)]

    def overlaps(self, other: Estimate) -> bool:
        return (self.has_interval and other.has_interval
                and self.lo <= other.hi and other.lo <= self.hi)  # type: ignore[operator]


@dataclass(frozen=True)
class Rank:
    """A leaderboard position; ``tied``: shared with another item (shown ``=1``: not ranked
    apart from the leader, whose interval it overlaps; ``=4``: an equal value)."""

    position: int
    tied: bool = False

    def text(self) -> str:
        return f"={self.position}" if self.tied else str(self.position)

    def fields(self, column: str) -> list[tuple[str, Any]]:
        return [(column, self.position)]

    def trailing_fields(self, column: str) -> list[tuple[str, Any]]:
        # after every other column, so machine readers keep the leading Rank/Detector/... layout
        return [("Tied", self.tied)]


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    notes: tuple[str, ...] = field(default=())
    key_columns: int = 1  # leading columns that name a row: repeated when a wide table is split

    def flat(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Columns and rows with each Estimate spread into value, lo, hi, n columns and each
        Rank into its position (plus a trailing "Tied" column): plain values, for CSV and JSON."""
        templates = [next((r[i] for r in self.rows if hasattr(r[i], "fields")), None) for i in range(len(self.columns))]
        columns: list[str] = []
        trailing: list[str] = []
        for col, tmpl in zip(self.columns, templates):
            columns += [col] if tmpl is None else [name for name, _ in tmpl.fields(col)]
            if hasattr(tmpl, "trailing_fields"):
                trailing += [name for name, _ in tmpl.trailing_fields(col)]
        rows = []
        for row in self.rows:
            values: list[Any] = []
            extra: dict[str, Any] = {}
            for col, tmpl, v in zip(self.columns, templates, row):
                if tmpl is None:
                    values.append(v)
                elif hasattr(v, "fields"):
                    values += [x for _, x in v.fields(col)]
                    extra.update(v.trailing_fields(col) if hasattr(v, "trailing_fields") else ())
                else:  # a failed cell's status or "-" in a column of estimates
                    values += [v] + [None] * (len(tmpl.fields(col)) - 1)
            rows.append((*values, *(extra.get(name) for name in trailing)))
        return (*columns, *trailing), rows

    def records(self) -> list[dict[str, Any]]:
        columns, rows = self.flat()
        return [dict(zip(columns, row)) for row in rows]


def metric(cell, name: str, subset: str = "") -> float | None:
    for m in cell.metrics:
        if m.name == name and m.subset == subset:
            return m.value
    return None


def standard(cell) -> bool:
    """A detect cell of the standard protocol (trained on every primary attack); held-out cells
    (``holdout``: an unseen attack or a partition) have their own table, ``unseen``."""
    return cell.stage == "detect" and not (getattr(cell, "holdout", "") or "")


def _by_world(cells) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for c in cells:
        groups[(c.dataset, c.model)].append(c)
    return groups


def wilson(value: float | None, n: float | None, exact: bool = True) -> Estimate:
    """``value`` (a share of ``n`` items) with its Wilson interval; ``exact``: ``value · n`` is
    a whole count (float dust rounded away), else an effective, fractional one."""
    count = None if n is None else int(round(n))
    if value is None or n is None or n <= 0:
        return Estimate(value, n=count)
    successes = min(max(round(value * n) if exact else value * n, 0), n)
    lo, hi = M.wilson_interval(successes, n, CONFIDENCE)
    return Estimate(value, lo, hi, count)


def detection_rate_overall(cell) -> Estimate:
    """TPR on the eval set at the detector's own threshold, recovered exactly from the stored
    accuracy, FPR and counts: FP = fpr·n_normal, TP = accuracy·n − (n_normal − FP)."""
    acc, fpr, n = metric(cell, "accuracy"), metric(cell, "fpr"), metric(cell, "n")
    n_normal, n_adv = metric(cell, "n_normal"), metric(cell, "n_adversarial")
    if acc is None or n is None or n_normal is None or not n_adv:
        return Estimate(None, n=None if n_adv is None else int(n_adv))
    false_pos = round((fpr or 0.0) * n_normal)  # fpr is not stored (nan) when n_normal = 0
    true_pos = round(acc * n) - (round(n_normal) - false_pos)
    return wilson(true_pos / n_adv, n_adv)


def estimate(cell, name: str) -> Estimate:
    """An eval-set metric of a detector cell with its 95 % interval, where the cell stores
    what the interval needs (counts; bootstrap bounds for EER and AUROC), else without one."""
    if name == "detection_rate":
        return detection_rate_overall(cell)
    value, n = metric(cell, name), metric(cell, "n")
    if name in ("eer", "auroc"):
        lo, hi = metric(cell, f"{name}_lo"), metric(cell, f"{name}_hi")
        return Estimate(value, lo, hi, None if n is None else int(n))
    if name == "balanced_accuracy":
        n0, n1 = metric(cell, "n_normal"), metric(cell, "n_adversarial")
        # Var((TPR + TNR)/2) = p(1-p)·(1/n0 + 1/n1)/4 when both recalls are near p
        n_eff = 4 / (1 / n0 + 1 / n1) if n0 and n1 else n
        return wilson(value, n_eff, exact=False) if n_eff else Estimate(value, n=None if n is None else int(n))
    counts = {"accuracy": n, "fpr": metric(cell, "n_normal"), "tpr_at_5fpr": metric(cell, "n_adversarial")}
    if name not in counts:  # a metric without an interval rule: its value, decimals from n
        return Estimate(value, n=None if n is None else int(n))
    return wilson(value, counts[name])


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
              "n: eval images; Det. rate: share of adversarial eval images flagged (TPR), FPR: of normal ones"
              + _span_note("normal", [metric(c, "n_normal") for c in counts])
              + _span_note("adversarial", [metric(c, "n_adversarial") for c in counts])]
    return tuple(notes)


def _span(values: Sequence[float | None]) -> str:
    present = sorted({int(v) for v in values if v is not None})
    if not present:
        return "–"
    return f"{present[0]}" if len(present) == 1 else f"{present[0]}–{present[-1]}"


def _span_note(label: str, values: Sequence[float | None]) -> str:
    return f"; {label}: {_span(values)}" if any(v is not None for v in values) else ""


def _check_sort(sort: str) -> None:
    if sort not in LEADERBOARD_METRICS:
        raise AdvbenchError(f"--sort {sort!r}: unknown metric; valid: {', '.join(LEADERBOARD_METRICS)}")


def leaderboard(cells, sort: str = "accuracy", top: int | None = None) -> list[Table]:
    """Detector cells of a run ranked by ``sort`` (per dataset/model), the first ``top`` of
    them if given; failed cells last, always shown. Every rate carries its 95 % interval, and
    cells whose ``sort`` interval overlaps the leader's are ranked ``=1`` with it."""
    _check_sort(sort)
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if standard(c)).items():
        ok = [c for c in group if c.status == "ok"]
        ranked = _rank(ok, lambda c: metric(c, sort), lambda c: estimate(c, sort), sort in LOWER_IS_BETTER,
                       lambda c: (c.detector, c.feature, c.transform))
        rows = [(rank, c.detector, c.feature, c.transform, _count(c, "n"), *(estimate(c, m) for m in BOARD_RATES), "ok")
                for rank, c in ranked[:top]]
        rows += [("-", c.detector, c.feature, c.transform, None, *([None] * len(BOARD_RATES)),
                  f"{c.status}: {c.error}") for c in group if c.status != "ok"]
        shown = f", best {top} of {len(ok)}" if top is not None and top < len(ok) else ""
        leader = estimate(ranked[0][1], sort) if ranked else None
        tables.append(Table(f"Leaderboard — {dataset} / {model} (eval set, ranked by {sort}{shown})",
                            ("Rank", "Detector", "Feature", "Group", "n", *(METRIC_TITLES[m] for m in BOARD_RATES),
                             "Status"),
                            tuple(rows), _board_notes(sort, ranked[:top], leader, ok), key_columns=4))
    return tables


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
                       sort in LOWER_IS_BETTER, lambda rc: (rc[0].id, rc[1].detector, rc[1].feature, rc[1].transform))
        rows = tuple((rank, run.benchmark, run.id, run.config_hash[:10], f"{run.started_at:%Y-%m-%d}",
                      c.detector, c.feature, c.transform, _count(c, "n"), *(estimate(c, m) for m in BOARD_RATES))
                     for rank, (run, c) in ranked[:best])
        tables.append(Table(f"Leaderboard across runs — {dataset} / {model} (best by {sort})",
                            ("Rank", "Benchmark", "Run", "Config", "Date", "Detector", "Feature", "Group", "n",
                             *(METRIC_TITLES[m] for m in BOARD_RATES)), rows,
                            _board_notes(sort, ranked[:best], estimate(ranked[0][1][1], sort), [c for _, c in entries]),
                            key_columns=8))
    return tables


def detection_by_attack(cells) -> list[Table]:
    """Per detector cell: the false-positive rate on normal eval images and the detection rate
    on each attack's eval images, each with its Wilson 95 % interval and count (the baseline
    comparison of a detector across attacks)."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if standard(c) and c.status == "ok").items():
        attacks = list(dict.fromkeys(m.subset for c in group for m in c.metrics if m.name == "detection_rate"))
        rows = tuple((c.detector, c.feature, c.transform,
                      wilson(metric(c, "false_positive_rate", "clean"), metric(c, "n", "clean")),
                      *(wilson(metric(c, "detection_rate", a), metric(c, "n", a)) for a in attacks)) for c in group)
        counts = "; ".join(f"{label} {_span([metric(c, 'n', subset) for c in group])}"
                           for label, subset in (("normal", "clean"), *((a, a) for a in attacks)))
        tables.append(Table(f"Detection rate per attack and false-positive rate — {dataset} / {model} (eval set)",
                            ("Detector", "Feature", "Group", "FPR (normal)", *attacks), rows,
                            ("FPR: share of normal eval images flagged adversarial; per attack: share of that attack's "
                             "adversarial eval images flagged (detection rate)",
                             "[lo, hi]: Wilson score 95 % intervals; " + DECIMALS_NOTE,
                             f"n (eval images): {counts}"), key_columns=3))
    return tables


def compare(cells_a, cells_b, run_a: int, run_b: int) -> list[Table]:
    """Detector cells present in both runs, with each metric in A, in B, and B - A."""
    def key(c):
        return (c.dataset, c.model, c.detector, c.feature, c.transform)

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
        rows.append((f"{a.dataset}/{a.model}", a.detector, a.feature, a.transform, *values))
    rows.sort(key=lambda r: -(abs(r[6]) if r[6] is not None else 0))
    return [Table(f"Run {run_b} compared with run {run_a} (B - A; sorted by |Δ accuracy|)",
                  ("Dataset/model", "Detector", "Feature", "Group", "Acc. A", "Acc. B", "Δ acc.",
                   "EER A", "EER B", "Δ EER", "AUROC A", "AUROC B", "Δ AUROC"), tuple(rows))]


def failures(cells) -> Table | None:
    bad = [c for c in cells if c.status != "ok"]
    if not bad:
        return None
    rows = tuple((c.stage, "/".join(p for p in (c.dataset, c.model, c.attack, c.transform, c.feature, c.detector) if p),
                  c.status, c.error) for c in bad)
    return Table("Cells that did not complete", ("Stage", "Cell", "Status", "Error"), rows)


def table1(cells) -> list[Table]:
    """Successful adversarial images per attack × model (after saving and re-verifying). Each
    budget of a grid and each adaptive set is its own row, beside its threat model and budget;
    the second table gives the mean perturbation of the successes and, for black-box attacks,
    the mean number of queries."""
    made = [c for c in cells if c.stage in ("attack", "adaptive")]
    worlds = sorted({(c.dataset, c.model) for c in made})
    lookup = {(c.attack, c.dataset, c.model): c for c in made}
    first: dict[str, Any] = {}
    for c in made:
        first.setdefault(c.attack, c)
    families = list(dict.fromkeys(family(c) for c in made))
    evaluation = evaluation_sets(cells)
    role = {a: _role(c, evaluation) for a, c in first.items()}
    names = sorted(first, key=lambda a: (role[a], families.index(family(first[a])), budget(first[a]) or 0.0))
    kinds = {a: _attack_kind([lookup.get((a, *w)) for w in worlds]) for a in names}
    rows = [(a, heading, threat(first[a]), _budget_text(budget(first[a])), *(_count(lookup.get((a, *w))) for w in worlds))
            for heading in ("targeted", "non-targeted", "–") for a in names if kinds[a] == heading]
    for kind, title in ((0, "(clean images attacked)"), (1, "(eval images attacked: evaluation sets)")):
        chosen = [a for a in names if min(role[a], 1) == kind]
        if chosen:
            rows.append((title, "", "", "", *(_count(next((lookup[(a, *w)] for a in chosen if (a, *w) in lookup), None),
                                                     "attempted") for w in worlds)))
    queries = any(metric(c, "mean_queries") is not None for c in made)
    measures = [("l2", "L2"), ("linf", "L∞")]
    budgets = tuple((a, *(_value(lookup.get((a, *w)), f"mean_pre_save_{n}") for w in worlds for n, _ in measures),
                     *((_value(lookup.get((a, *w)), "mean_queries") for w in worlds) if queries else ()))
                    for a in names)
    notes = ["pixel values in [0, 1]; the saved JPEG adds its own rounding on top"]
    if queries:
        notes.append("queries: mean model queries per attacked image (black-box attacks; successful or not)")
    return [Table("Table 1 — successful adversarial images per attack and model",
                  ("Attack", "Type", "Threat", "Budget", *(f"{d}/{m}" for d, m in worlds)), tuple(rows),
                  ("success = paper criterion met before and after saving to file",
                   "evaluation sets (budget rows attack@budget, evaluation = true entries, adaptive sets "
                   "attack@budget>defense) are made on the eval split's sources only; an adaptive success also "
                   "meets its defense's condition"),
                  key_columns=4),
            Table("Table 1 (budgets) — mean perturbation of the successes, before saving"
                  + (", and mean queries" if queries else ""),
                  ("Attack", *(f"{d}/{m} {t}" for d, m in worlds for _, t in measures),
                   *((f"{d}/{m} queries" for d, m in worlds) if queries else ())), budgets, tuple(notes))]


def _role(cell, evaluation: set[tuple[str, str, str]]) -> int:
    """0: a primary attack, 1: an oblivious evaluation set (a budget grid point), 2: an adaptive set."""
    return 2 if threat(cell) == "adaptive" else 1 if (cell.dataset, cell.model, cell.attack) in evaluation else 0


def evaluation_sets(cells) -> set[tuple[str, str, str]]:
    """(dataset, model, label) of the attack and adaptive cells that make evaluation sets (eval
    sources only, scored, never trained on): a cell's own ``evaluation`` flag where it has one,
    else an adaptive set, a budget grid point, or a set that score cells were run on (an
    ``evaluation = true`` entry without budgets)."""
    scored = {(c.dataset, c.model, c.attack) for c in cells if c.stage == "score"}
    out = set()
    for c in cells:
        if c.stage not in ("attack", "adaptive"):
            continue
        flag = getattr(c, "evaluation", None)
        name = (c.dataset, c.model, c.attack)
        if flag if flag is not None else (threat(c) == "adaptive" or budget(c) is not None or name in scored):
            out.add(name)
    return out


def _attack_kind(cells) -> str:
    flags = [metric(c, "targeted") for c in cells if c is not None]
    if any(f == 1.0 for f in flags):
        return "targeted"
    return "non-targeted" if any(f == 0.0 for f in flags) else "–"


def _budget_text(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _count(cell, name: str = "success"):
    if cell is None or cell.status != "ok":
        return None if cell is None else cell.status
    value = metric(cell, name)
    return None if value is None else int(value)


def table2(cells) -> list[Table]:
    """Normal/adversarial/total/ratio per split, summed over the run's dataset/model pairs."""
    splits = ("train", "dev", "eval")
    totals = {s: [0, 0] for s in splits}
    for c in cells:
        if c.stage == "split" and c.status == "ok":
            for s in splits:
                totals[s][0] += int(metric(c, "normal", s) or 0)
                totals[s][1] += int(metric(c, "adversarial", s) or 0)
    rows = tuple((s.capitalize(), n, a, n + a, f"1:{a / n:.2f}" if n else "-") for s, (n, a) in totals.items())
    return [Table("Table 2 — normal and adversarial images per split", ("Dataset", "Normal", "Adversarial", "Total", "Ratio"), rows,
                  ("no source image (nor any of its adversarial versions) is in two splits",))]


def table3(cells) -> list[Table]:
    """Top-k misclassified images per operation, for normal images and each attack: one row per
    operation (the long axis), one column per image set, so every count stays readable."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "predict").items():
        ops = list(dict.fromkeys(c.transform for c in group))
        sets = list(dict.fromkeys(c.attack for c in group))
        lookup = {(c.attack, c.transform): c for c in group}
        rows = tuple((_op_title(op), *(_value(lookup.get((s, op)), "topk_misclassified") for s in sets)) for op in ops)
        sizes = "; ".join(f"{_set_title(s)} {_span([metric(c, 'images') for c in group if c.attack == s])}"
                          for s in sets)
        tables.append(Table(f"Table 3 — top-k misclassified images under each operation — {dataset} / {model}",
                            ("Operation", *(_set_title(s) for s in sets)), rows,
                            ("normal: ground truth not in top-k; adversarial: source top-1 not in top-k",
                             f"images per set: {sizes}")))
    return tables


def _set_title(imageset: str) -> str:
    return "Normal images" if imageset == "clean" else imageset


def _op_title(op: str) -> str:
    return "Original" if op == "original" else op


def _value(cell, name: str, subset: str = ""):
    if cell is None:
        return None
    if cell.status != "ok":
        return cell.status
    value = metric(cell, name, subset)
    return None if value is None else (int(value) if float(value).is_integer() else value)


def table4(cells, value: str = "accuracy") -> list[Table]:
    """Eval ``value`` (with its 95 % interval) of each feature group × feature (rows, the long
    axis) and detector (columns)."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if standard(c) and c.transform != IMAGES).items():
        groups = list(dict.fromkeys(c.transform for c in group))
        features = list(dict.fromkeys(c.feature for c in group))
        detectors = list(dict.fromkeys(c.detector for c in group))
        lookup = {(c.detector, c.transform, c.feature): c for c in group}
        rows = tuple((g, f, *(_estimate_or_status(lookup.get((d, g, f)), value) for d in detectors))
                     for g in groups for f in features if any((d, g, f) in lookup for d in detectors))
        tables.append(Table(f"Table 4 — detector {value} on eval — {dataset} / {model}",
                            ("Group", "Feature", *detectors), rows,
                            (INTERVAL_NOTE, DECIMALS_NOTE,
                             f"n (eval images): {_span([metric(c, 'n') for c in group if c.status == 'ok'])}"),
                            key_columns=2))
    return tables


def _estimate_or_status(cell, name: str):
    if cell is None:
        return None
    return estimate(cell, name) if cell.status == "ok" else cell.status


def table5(cells) -> list[Table]:
    """Images whose true label is restored by each corrector over each operation group, each
    share with its Wilson interval over the images of that subset."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "correct").items():
        rows = []
        for c in group:
            if c.status != "ok":
                rows.append((c.corrector, c.transform, *([c.status] * 6)))
                continue
            values = [wilson(metric(c, name, subset), metric(c, "images", subset))
                      for name in ("topk_restored", "top1_restored") for subset in ("normal", "adversarial")]
            pipeline = [wilson(metric(c, n, "eval"), metric(c, "images", "eval"))
                        for n in ("pipeline_accuracy_before", "pipeline_accuracy_after")]
            rows.append((c.corrector, c.transform, *values, *pipeline))
        tables.append(Table(f"Table 5 — labels restored by correction — {dataset} / {model}",
                            ("Corrector", "Operations", "Normal top-k", "Adversarial top-k", "Normal top-1",
                             "Adversarial top-1", "Pipeline acc. before", "Pipeline acc. after"), tuple(rows),
                            ("share of images whose corrected labels contain (top-k) / start with (top-1) the true label; "
                             "pipeline: classifier top-1 accuracy on the mixed eval set, before and after correcting "
                             "what the chosen detector flags",
                             "[lo, hi]: Wilson score 95 % intervals; [–]: no image count stored; " + DECIMALS_NOTE),
                            key_columns=2))
    return tables


def table6(cells) -> list[Table]:
    """The best statistical detector per feature, chosen on dev (choosing on eval would flatter
    it), beside every image (CNN) detector; all scored on eval, with 95 % intervals."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if standard(c) and c.status == "ok").items():
        chosen = []
        for feature in dict.fromkeys(c.feature for c in group if c.feature):
            best = max((c for c in group if c.feature == feature), key=lambda c: metric(c, "accuracy", "dev") or 0)
            chosen.append((f"{best.detector} - {feature} ({best.transform})", best))
        chosen += [(c.detector, c) for c in group if c.transform == IMAGES]
        rows = tuple((name, *(estimate(c, m) for m in ("accuracy", "eer", "auroc"))) for name, c in chosen)
        tables.append(Table(f"Table 6 — accuracy and EER on eval — {dataset} / {model}",
                            ("Detector", "Accuracy", "EER", "AUROC"), rows,
                            ("statistical detectors: the best cell of each feature by dev accuracy",
                             INTERVAL_NOTE, DECIMALS_NOTE)))
    return tables


# --- the evaluation protocol: evaluation sets, adaptive attacks, unseen attacks, subsets ---------
#
# The cell's budget, threat and target columns are read with getattr: stores written before they
# existed hold the labels only ("pgd@0.03", "eot-pgd@0.03>svm/differences/JPEG"), parsed here.

SUCCEEDS_AT = 0.5  # the system success at which an attack "succeeds" against a defense
_BUDGET_IN_LABEL = re.compile(r"@([0-9.eE+-]+)$")


def budget(cell) -> float | None:
    """The budget of an attack, adaptive or score cell's image set; None for a primary attack."""
    value = getattr(cell, "budget", None)
    if value is not None:
        return float(value)
    found = _BUDGET_IN_LABEL.search((cell.attack or "").split(">", 1)[0])
    try:
        return float(found.group(1)) if found else None
    except ValueError:
        return None


def threat(cell) -> str:
    """"oblivious" or "adaptive" for attack, adaptive and score cells; "" for the others."""
    value = getattr(cell, "threat", "") or ""
    if value:
        return value
    if cell.stage == "adaptive" or (cell.stage == "score" and ">" in (cell.attack or "")):
        return "adaptive"
    return "oblivious" if cell.stage in ("attack", "score") else ""


def target(cell) -> str:
    """The defense an adaptive set was made against ("" for oblivious sets)."""
    value = getattr(cell, "target", "") or ""
    return value or ((cell.attack or "").split(">", 1)[1] if ">" in (cell.attack or "") else "")


def family(cell) -> str:
    """The attack entry's label without budget and target: "pgd@0.03" -> "pgd"."""
    label = (cell.attack or "").split(">", 1)[0]
    if budget(cell) is not None and "@" in label:
        label = label.rsplit("@", 1)[0]
    return label


def defense(cell) -> str:
    """The label of the defense a score cell applies: a detector cell as "detector/feature/group"
    (the label adaptive targets use), a corrector as "corrector/group", the detect-then-correct
    pipeline as "pipeline: detector/feature → corrector/group"."""
    det = "/".join(p for p in (cell.detector, cell.feature, "" if cell.transform == IMAGES else cell.transform) if p)
    if cell.detector and cell.corrector:
        return f"pipeline: {'/'.join(p for p in (cell.detector, cell.feature) if p)} → {cell.corrector}/{cell.transform}"
    return det if cell.detector else f"{cell.corrector}/{cell.transform}"


def targeted(cell, target_label: str) -> bool:
    """Whether a score cell applies the defense an adaptive set targets: that detector cell, the
    pipeline, or, for a group's operations, every detector and corrector over that group."""
    if target_label == "pipeline":
        return bool(cell.detector and cell.corrector)
    return defense(cell) == target_label or (not (cell.detector and cell.corrector) and cell.transform == target_label)


def _same_budget(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def detection_estimate(cell) -> Estimate:
    """A score cell's detection rate over the set's successful adversarial eval images."""
    return wilson(metric(cell, "detection_rate"), metric(cell, "n"))


def system_estimate(cell) -> Estimate:
    """A score cell's system success: attacked eval images that end fooling the defended system."""
    return wilson(metric(cell, "system_success"), metric(cell, "attempted"))


def attack_estimate(cell) -> Estimate:
    """An attack or adaptive cell's success rate: successes over attacked images."""
    success, tried = metric(cell, "success"), metric(cell, "attempted")
    return wilson(None if success is None or not tried else success / tried, tried)


def _score_cells(cells) -> list:
    return [c for c in cells if c.stage == "score" and c.status == "ok"]


def _defense_key(cell) -> tuple:
    return (cell.dataset, cell.model, cell.detector, cell.feature, cell.transform, cell.corrector)


def smallest_succeeding_budget(score_cells, threshold: float = SUCCEEDS_AT) -> str:
    """The smallest budget whose system success reaches ``threshold`` among score cells of one
    defense and one attack family: "0.03", "> 0.1" (never, up to the largest budget), "–" (no
    budgets)."""
    points = sorted((budget(c), metric(c, "system_success")) for c in score_cells if budget(c) is not None)
    if not points:
        return "–"
    hit = next((b for b, v in points if v is not None and v >= threshold), None)
    return f"{hit:g}" if hit is not None else f"> {points[-1][0]:g}"


def _detect_lookup(cells) -> dict[tuple, Any]:
    return {(c.dataset, c.model, c.detector, c.feature, c.transform): c
            for c in cells if standard(c) and c.status == "ok"}


def _primary_rate(detect, label: str) -> Estimate:
    return Estimate(None) if detect is None else wilson(metric(detect, "detection_rate", label), metric(detect, "n", label))


def _name_parts(label: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", label.lower())) - {""}


def _same_norm(a, b) -> bool:
    """Whether two cells' budgets are in the same norm; true where a store does not say."""
    na, nb = getattr(a, "norm", "") or "", getattr(b, "norm", "") or ""
    return not na or not nb or na == nb


def closest(items: Sequence, name: str, name_of: Callable[[Any], str], or_all: bool = True) -> list:
    """The items whose name matches ``name`` best: the same name, else those sharing the most
    name parts ("eot-pgd" and "pgd-grid" share "pgd"), else (``or_all``) all of them when none
    shares a part. The store does not say which attacks are related; their names are what it has."""
    if not items:
        return []
    same = [i for i in items if name_of(i) == name]
    if same:
        return same
    parts = _name_parts(name)
    shared = [len(parts & _name_parts(name_of(i))) for i in items]
    best = max(shared)
    return [i for i, k in zip(items, shared) if k == best] if best else list(items) if or_all else []


def adaptive_tables(cells) -> list[Table]:
    """Adaptive attacks against the defenses they target, beside oblivious attacks of the same
    budget; then every detector on every adaptive set (transfer)."""
    tables = []
    scores = [c for c in cells if c.stage == "score"]
    detects = _detect_lookup(cells)
    evaluation = evaluation_sets(cells)
    primary = list(dict.fromkeys((c.dataset, c.model, c.attack) for c in cells
                                 if c.stage == "attack" and (c.dataset, c.model, c.attack) not in evaluation))
    norms = {(c.dataset, c.model, c.attack): c for c in cells if c.stage == "attack"}
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "adaptive").items():
        world = [c for c in scores if (c.dataset, c.model) == (dataset, model)]
        rows = []
        for made in group:
            label, set_budget, goal = made.attack, budget(made), target(made)
            defended = [c for c in world if c.attack == label and targeted(c, goal)]
            if made.status != "ok" or not defended:
                rows.append((label, _budget_text(set_budget), made.status if made.status != "ok" else "(no trained defense)",
                             "–", "–", attack_estimate(made) if made.status == "ok" else None, *([None] * 7)))
                continue
            for sc in defended:
                if sc.status != "ok":
                    rows.append((label, _budget_text(set_budget), defense(sc), "–", "–", attack_estimate(made),
                                 sc.status, *([None] * 6)))
                    continue
                same = [c for c in world if _defense_key(c) == _defense_key(sc) and c.status == "ok"]
                curve = [c for c in same if threat(c) == "adaptive" and family(c) == family(sc) and target(c) == goal]
                comparators = closest([c for c in same if threat(c) == "oblivious" and _same_norm(c, sc)
                                       and _same_budget(budget(c), set_budget)], family(sc), family)
                primaries = [a for d, m, a in primary if (d, m) == (dataset, model)
                             and _same_norm(norms.get((d, m, a)), sc)]
                for ob in comparators or [None]:
                    first_primary = next(iter(closest(primaries, family(ob), str, or_all=False)), "") if ob else ""
                    first_primary = first_primary or next(iter(closest(primaries, family(sc), str, or_all=False)), "")
                    detect = detects.get((dataset, model, sc.detector, sc.feature, sc.transform)) \
                        if sc.detector and not sc.corrector else None
                    oblivious_curve = [c for c in same if ob is not None and threat(c) == "oblivious"
                                       and family(c) == family(ob)]
                    rows.append((label, _budget_text(set_budget), defense(sc), ob.attack if ob else "–",
                                 first_primary or "–", attack_estimate(made),
                                 detection_estimate(sc) if sc.detector else None,
                                 (detection_estimate(ob) if sc.detector else None) if ob else None,
                                 _primary_rate(detect, first_primary) if first_primary and detect else None,
                                 system_estimate(sc), system_estimate(ob) if ob else None,
                                 smallest_succeeding_budget(curve),
                                 smallest_succeeding_budget(oblivious_curve) if ob else "–"))
        tables.append(Table(
            f"Adaptive attacks against the defense they target — {dataset} / {model} (eval images)",
            ("Adaptive set", "Budget", "Defense", "Oblivious set", "Primary", "Attack success", "Det. adaptive",
             "Det. oblivious", "Det. primary", "System adaptive", "System oblivious",
             f"Adaptive ≥ {SUCCEEDS_AT:g} at", f"Oblivious ≥ {SUCCEEDS_AT:g} at"), tuple(rows),
            ("Adaptive set: attack@budget>target; Defense: each trained cell of that target (for a group's operations, "
             "every detector and corrector over the group); Oblivious set: the oblivious evaluation sets of the same "
             "budget whose family name is closest (the same, else sharing a name part: eot-pgd ~ pgd-grid; else "
             "all); Primary: the primary attack named like it",
             "Attack success: successes / attacked eval images, under the adaptive attack's own condition; "
             "Det.: share of the set's successful adversarial eval images the defense flags (Det. primary: in the "
             "defense's detect cell, on the primary attack's eval images); System: share of attacked eval images "
             "that fool the classifier and are not undone by the defense",
             f"≥ {SUCCEEDS_AT:g} at: the smallest budget of the family whose system success reaches "
             f"{SUCCEEDS_AT:g} against that defense ('> b': not up to the largest budget b)",
             "[lo, hi]: Wilson score 95 % intervals; " + DECIMALS_NOTE), key_columns=3))
        tables += _transfer(dataset, model, group, world)
    return tables


def _transfer(dataset: str, model: str, adaptive_cells, world) -> list[Table]:
    sets = [c.attack for c in adaptive_cells if c.status == "ok"]
    detectors = [c for c in world if c.detector and c.attack in sets and c.status == "ok"]
    labels = list(dict.fromkeys(defense(c) for c in detectors))
    if not labels:
        return []
    lookup = {(defense(c), c.attack): c for c in detectors}
    rows = tuple((name, *(detection_estimate(lookup[(name, s)]) if (name, s) in lookup else None for s in sets))
                 for name in labels)
    return [Table(f"Adaptive sets: detection rate of every detector (transfer) — {dataset} / {model}",
                  ("Detector", *sets), rows,
                  ("a column's target follows '>'; every other detector meets that set as a transfer attack",
                   "share of the set's successful adversarial eval images flagged; [lo, hi]: Wilson score 95 % "
                   "intervals; –: no successful image to score"))]


@dataclass(frozen=True)
class SecurityCurve:
    """Detection rate and system success of each defense against one attack family (and, for an
    adaptive family, one target) over its budgets; ``attack``: the attack's own success rate."""

    dataset: str
    model: str
    family: str
    threat: str
    target: str
    budgets: tuple[float | None, ...]
    #: (defense label, whether it detects, ((detection rate, system success) per budget))
    defenses: tuple[tuple[str, bool, tuple[tuple[Estimate, Estimate], ...]], ...]
    attack: tuple[Estimate, ...]

    @property
    def name(self) -> str:
        return f"{self.family} (adaptive vs {self.target})" if self.threat == "adaptive" else f"{self.family} (oblivious)"


def security_curves(cells) -> list[SecurityCurve]:
    """One curve per dataset/model, attack family, threat model and target, over the budgets of
    its evaluation sets (oblivious families first)."""
    makers = {(c.dataset, c.model, c.attack): c for c in cells if c.stage in ("attack", "adaptive") and c.status == "ok"}
    groups: dict[tuple, list] = defaultdict(list)
    for c in _score_cells(cells):
        groups[(c.dataset, c.model, threat(c) == "adaptive", family(c), target(c))].append(c)
    curves = []
    for (dataset, model, adaptive, fam, goal), group in sorted(groups.items(), key=lambda kv: kv[0][:3]):
        labels = sorted({c.attack for c in group}, key=lambda a: (budget(next(c for c in group if c.attack == a)) or 0.0))
        budgets = tuple(budget(next(c for c in group if c.attack == a)) for a in labels)
        lookup = {(defense(c), c.attack): c for c in group}
        names = list(dict.fromkeys(defense(c) for c in group))
        detects = {defense(c): bool(c.detector) for c in group}
        empty = (Estimate(None), Estimate(None))
        rows = tuple((name, detects[name], tuple(
            (detection_estimate(c), system_estimate(c)) if (c := lookup.get((name, a))) is not None else empty
            for a in labels)) for name in names)
        attack = tuple(attack_estimate(m) if (m := makers.get((dataset, model, a))) else Estimate(None) for a in labels)
        curves.append(SecurityCurve(dataset, model, fam, "adaptive" if adaptive else "oblivious", goal, budgets, rows,
                                    attack))
    return curves


def security(cells) -> list[Table]:
    """Per attack family with evaluation sets: each defense's detection rate and the defended
    system's success at each budget (a security curve read as a table)."""
    tables = []
    for curve in security_curves(cells):
        marks = ["" if b is None else f" @{b:g}" for b in curve.budgets]
        columns = [col for b in marks for col in (f"Det.{b}", f"System{b}")]
        rows = [(name, *(x for det, sys in points for x in (det if detects else None, sys)))
                for name, detects, points in curve.defenses]
        rows.append(("(attack alone)", *(x for est in curve.attack for x in (None, est))))
        tables.append(Table(f"Security curve — {curve.name} — {curve.dataset} / {curve.model} (eval images)",
                            ("Defense", *columns), tuple(rows),
                            ("Det. @b: share of the set's successful adversarial eval images the defense flags; "
                             "System @b: share of attacked eval images that fool the classifier and are not undone "
                             "by the defense (a detector undoes what it flags, a corrector what it restores)",
                             "(attack alone): the attack's success rate on the undefended classifier "
                             "(an adaptive attack's: under its defense's condition too)",
                             "[lo, hi]: Wilson score 95 % intervals; –: not a detector, or no successful image; "
                             + DECIMALS_NOTE)))
    return tables


def unseen(cells) -> list[Table]:
    """Detector cells trained without an attack (leave-one-attack-out, or a named partition),
    scored on that unseen attack, beside the standard cell that saw it in training."""
    tables = []
    detects = _detect_lookup(cells)
    held = [c for c in cells if c.stage == "detect" and (getattr(c, "holdout", "") or "")]
    for (dataset, model), group in _by_world(held).items():
        rows = []
        for c in group:
            name = (c.detector, c.feature, c.transform if c.transform != IMAGES else "", c.holdout)
            if c.status != "ok":
                rows.append((*name, "–", *([c.status] * 4), None))
                continue
            seen = detects.get((dataset, model, c.detector, c.feature, c.transform))
            for attack in dict.fromkeys(m.subset for m in c.metrics if m.name == "detection_rate"):
                rate = wilson(metric(c, "detection_rate", attack), metric(c, "n", attack))
                before = _primary_rate(seen, attack)
                drop = None if rate.value is None or before.value is None else rate.value - before.value
                rows.append((*name, attack, rate, before, estimate(c, "fpr"), estimate(c, "accuracy"), drop))
        tables.append(Table(f"Unseen attacks: detectors trained without them — {dataset} / {model} (eval images)",
                            ("Detector", "Feature", "Group", "Held out", "Unseen attack", "Det. unseen", "Det. seen",
                             "FPR", "Accuracy", "Δ det."), tuple(rows),
                            ("Held out: the attack (leave-one-attack-out) or partition kept out of training; "
                             "Det. unseen: share of that attack's adversarial eval images the held-out cell flags; "
                             "Det. seen: the standard cell (trained on every primary attack) on the same images; "
                             "Δ det. = unseen − seen",
                             "FPR and Accuracy: the held-out cell on normal eval images and the unseen attack's",
                             INTERVAL_NOTE, DECIMALS_NOTE), key_columns=5))
    return tables


def subset(cells) -> list[Table]:
    """The greedy operation-subset search: at each size the operation added (chosen on dev), the
    dev and eval accuracy and the cost, beside the detect cell that uses every operation."""
    tables = []
    detects = _detect_lookup(cells)
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "subset").items():
        rows = []
        for c in group:
            name = (c.detector, c.feature, c.transform)
            if c.status != "ok":
                rows.append((*name, None, c.status, None, None, None))
                continue
            full = detects.get((dataset, model, c.detector, c.feature, c.transform))
            n_dev = metric(full, "n", "dev") if full else None
            n_eval = metric(full, "n") if full else None
            for size, added, where in subset_steps(c):
                rows.append((*name, size, added, wilson(metric(c, "dev_accuracy", where), n_dev),
                             wilson(metric(c, "accuracy", where), n_eval), metric(c, "seconds_per_1000", where)))
            if full is not None:
                ops = metric(full, "operations")
                rows.append((*name, None if ops is None else int(ops), "(all operations: detect cell)",
                             wilson(metric(full, "accuracy", "dev"), n_dev), estimate(full, "accuracy"), None))
        tables.append(Table(f"Operation subsets: greedy search on dev — {dataset} / {model}",
                            ("Detector", "Feature", "Group", "Size", "Operation added", "Dev accuracy",
                             "Eval accuracy", "s / 1,000 images"), tuple(rows),
                            ("each step adds the operation with the best dev accuracy (ties: the cheaper); eval "
                             "accuracy is reported, never used to choose",
                             "s / 1,000 images: measured prediction time of the original and the chosen operations",
                             "[lo, hi]: Wilson score 95 % intervals (n: the detect cell's dev and eval images); "
                             + DECIMALS_NOTE), key_columns=4))
    return tables


def subset_steps(cell) -> list[tuple[int, str, str]]:
    """(size, operation added, metric subset) of a subset cell's steps, smallest first; the
    metrics' subsets read "NN +op"."""
    steps = []
    for m in cell.metrics:
        if m.name == "accuracy" and " +" in m.subset:
            size, added = m.subset.split(" +", 1)
            if size.isdigit():
                steps.append((int(size), added, m.subset))
    return sorted(steps)


TABLES: dict[int, Callable[[Sequence], list[Table]]] = {1: table1, 2: table2, 3: table3, 4: table4, 5: table5, 6: table6}
"""The paper's tables by number (``report --table N``)."""
EXTRA_TABLES: dict[str, Callable[[Sequence], list[Table]]] = {
    "detection": detection_by_attack, "adaptive": adaptive_tables, "security": security, "unseen": unseen,
    "subset": subset}
"""Tables by name beyond the paper's (``report --table detection``)."""


#: What a run needs for each extra table to have rows (the hint of an empty report).
TABLE_NEEDS = {"detection": "finished detector cells",
               "adaptive": "[[adaptive]] attacks",
               "security": "attacks with 'budgets' or [[adaptive]] attacks (evaluation sets)",
               "unseen": "held-out detector cells: detection.protocol = \"leave-one-attack-out\" or detection.partitions",
               "subset": "detection.subset_search"}


def table_named(name: str) -> Callable[[Sequence], list[Table]]:
    """The builder of ``report --table NAME``: a paper table by number, or an extra table."""
    if name.isdigit() and int(name) in TABLES:
        return TABLES[int(name)]
    if name in EXTRA_TABLES:
        return EXTRA_TABLES[name]
    from advbench.errors import AdvbenchError

    raise AdvbenchError(f"--table {name!r}: unknown table; valid: {', '.join(map(str, TABLES))}, {', '.join(EXTRA_TABLES)}")
