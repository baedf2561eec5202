"""Tables built from a run's stored cells and metrics: the leaderboard and the paper's tables.

Each builder is a pure function of the cell rows, returning :class:`Table` values that any
format can render.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from advbench.plan import IMAGES

LEADERBOARD_METRICS = ("accuracy", "balanced_accuracy", "eer", "auroc", "tpr_at_5fpr")
METRIC_TITLES = {"accuracy": "Accuracy", "balanced_accuracy": "Bal. acc.", "eer": "EER", "auroc": "AUROC",
                 "tpr_at_5fpr": "TPR@5%FPR"}
LOWER_IS_BETTER = {"eer", "fpr"}


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    notes: tuple[str, ...] = field(default=())

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


def metric(cell, name: str, subset: str = "") -> float | None:
    for m in cell.metrics:
        if m.name == name and m.subset == subset:
            return m.value
    return None


def _by_world(cells) -> dict[tuple[str, str], list]:
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for c in cells:
        groups[(c.dataset, c.model)].append(c)
    return groups


def leaderboard(cells, sort: str = "accuracy", top: int | None = None) -> list[Table]:
    """Detector cells of a run ranked by ``sort`` (per dataset/model), the first ``top`` of
    them if given; failed cells last, always shown."""
    tables = []
    reverse = sort not in LOWER_IS_BETTER
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "detect").items():
        ok = [c for c in group if c.status == "ok"]
        ok.sort(key=lambda c: (metric(c, sort) is None, -(metric(c, sort) or 0) if reverse else (metric(c, sort) or 0),
                               c.detector, c.feature, c.transform))
        rows = [(i + 1, c.detector, c.feature, c.transform, *(metric(c, m) for m in LEADERBOARD_METRICS), "ok")
                for i, c in enumerate(ok[:top])]
        rows += [("-", c.detector, c.feature, c.transform, *([None] * len(LEADERBOARD_METRICS)),
                  f"{c.status}: {c.error}") for c in group if c.status != "ok"]
        shown = f", best {top} of {len(ok)}" if top is not None and top < len(ok) else ""
        tables.append(Table(f"Leaderboard — {dataset} / {model} (eval set, ranked by {sort}{shown})",
                            ("Rank", "Detector", "Feature", "Group", *(METRIC_TITLES[m] for m in LEADERBOARD_METRICS), "Status"),
                            tuple(rows)))
    return tables


def cross_run_leaderboard(runs_and_cells, sort: str = "accuracy", best: int = 3) -> list[Table]:
    """The best ``best`` detector cells of each dataset/model across runs (latest run of each
    benchmark), with the run id, config hash and date beside them."""
    reverse = sort not in LOWER_IS_BETTER
    rows_by_world: dict[tuple[str, str], list] = defaultdict(list)
    for run, cells in runs_and_cells:
        for c in cells:
            if c.stage == "detect" and c.status == "ok" and metric(c, sort) is not None:
                rows_by_world[(c.dataset, c.model)].append((run, c))
    tables = []
    for (dataset, model), entries in sorted(rows_by_world.items()):
        entries.sort(key=lambda rc: -metric(rc[1], sort) if reverse else metric(rc[1], sort))
        rows = tuple((i + 1, run.benchmark, run.id, run.config_hash[:10], f"{run.started_at:%Y-%m-%d}",
                      c.detector, c.feature, c.transform, *(metric(c, m) for m in LEADERBOARD_METRICS))
                     for i, (run, c) in enumerate(entries[:best]))
        tables.append(Table(f"Leaderboard across runs — {dataset} / {model} (best by {sort})",
                            ("Rank", "Benchmark", "Run", "Config", "Date", "Detector", "Feature", "Group",
                             *(METRIC_TITLES[m] for m in LEADERBOARD_METRICS)), rows))
    return tables


def compare(cells_a, cells_b, run_a: int, run_b: int) -> list[Table]:
    """Detector cells present in both runs, with each metric in A, in B, and B - A."""
    def key(c):
        return (c.dataset, c.model, c.detector, c.feature, c.transform)

    b_by_key = {key(c): c for c in cells_b if c.stage == "detect" and c.status == "ok"}
    rows = []
    for a in cells_a:
        b = b_by_key.get(key(a))
        if a.stage != "detect" or a.status != "ok" or b is None:
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
    """Successful adversarial images per attack × model (after saving and re-verifying)."""
    attacks = [c for c in cells if c.stage == "attack"]
    worlds = sorted({(c.dataset, c.model) for c in attacks})
    names = list(dict.fromkeys(c.attack for c in attacks))
    lookup = {(c.attack, c.dataset, c.model): c for c in attacks}
    rows = []
    for targeted, heading in ((1.0, "Targeted attacks"), (0.0, "Non-targeted attacks")):
        chosen = [a for a in names if any(metric(lookup[(a, *w)], "targeted") == targeted
                                          for w in worlds if (a, *w) in lookup)]
        for a in chosen:
            rows.append((a, heading.split()[0].lower(),
                         *(_count(lookup.get((a, *w))) for w in worlds)))
    n_row = ("(clean images attacked)", "", *(_count(lookup.get((names[0], *w)), "attempted") if names else None for w in worlds))
    budgets = tuple((a, *(_value(lookup.get((a, *w)), f"mean_pre_save_{n}") for w in worlds for n in ("l2", "linf")))
                    for a in names)
    return [Table("Table 1 — successful adversarial images per attack and model",
                  ("Attack", "Type", *(f"{d}/{m}" for d, m in worlds)), tuple(rows) + (n_row,),
                  ("success = paper criterion met before and after saving to file",)),
            Table("Table 1 (budgets) — mean perturbation of the successes, before saving",
                  ("Attack", *(f"{d}/{m} {n}" for d, m in worlds for n in ("L2", "L∞"))), budgets,
                  ("pixel values in [0, 1]; the saved JPEG adds its own rounding on top",))]


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
    """Top-k misclassified images per operation, for normal images and each attack."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "predict").items():
        ops = list(dict.fromkeys(c.transform for c in group))
        sets = list(dict.fromkeys(c.attack for c in group))
        lookup = {(c.attack, c.transform): c for c in group}
        rows = tuple((("Normal images" if s == "clean" else s),
                      *(_value(lookup.get((s, op)), "topk_misclassified") for op in ops)) for s in sets)
        tables.append(Table(f"Table 3 — top-k misclassified images under each operation — {dataset} / {model}",
                            ("Images", *(_op_title(o) for o in ops)), rows,
                            ("normal: ground truth not in top-k; adversarial: source top-1 not in top-k",)))
    return tables


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
    """Eval accuracy of each detector × feature group × feature."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "detect" and c.transform != IMAGES).items():
        groups = list(dict.fromkeys(c.transform for c in group))
        features = list(dict.fromkeys(c.feature for c in group))
        detectors = list(dict.fromkeys(c.detector for c in group))
        lookup = {(c.detector, c.transform, c.feature): c for c in group}
        rows = tuple((d, *(_value(lookup.get((d, g, f)), value) for g in groups for f in features)) for d in detectors)
        tables.append(Table(f"Table 4 — detector {value} on eval — {dataset} / {model}",
                            ("Detector", *(f"{g} {f}" for g in groups for f in features)), rows))
    return tables


def table5(cells) -> list[Table]:
    """Images whose true label is restored by each corrector over each operation group."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "correct").items():
        rows = []
        for c in group:
            values = [_value(c, name, subset) for name in ("topk_restored", "top1_restored")
                      for subset in ("normal", "adversarial")]
            pipeline = [_value(c, n, "eval") for n in ("pipeline_accuracy_before", "pipeline_accuracy_after")]
            rows.append((c.corrector, c.transform, *values, *pipeline))
        tables.append(Table(f"Table 5 — labels restored by correction — {dataset} / {model}",
                            ("Corrector", "Operations", "Normal top-k", "Adversarial top-k", "Normal top-1",
                             "Adversarial top-1", "Pipeline acc. before", "Pipeline acc. after"), tuple(rows),
                            ("share of images whose corrected labels contain (top-k) / start with (top-1) the true label; "
                             "pipeline: classifier top-1 accuracy on the mixed eval set, before and after correcting "
                             "what the chosen detector flags",)))
    return tables


def table6(cells) -> list[Table]:
    """The best statistical detector per feature, chosen on dev (choosing on eval would flatter
    it), beside every image (CNN) detector; all scored on eval."""
    tables = []
    for (dataset, model), group in _by_world(c for c in cells if c.stage == "detect" and c.status == "ok").items():
        rows = []
        for feature in dict.fromkeys(c.feature for c in group if c.feature):
            best = max((c for c in group if c.feature == feature), key=lambda c: metric(c, "accuracy", "dev") or 0)
            rows.append((f"{best.detector} - {feature} ({best.transform})", metric(best, "accuracy"), metric(best, "eer"),
                         metric(best, "auroc")))
        rows += [(c.detector, metric(c, "accuracy"), metric(c, "eer"), metric(c, "auroc"))
                 for c in group if c.transform == IMAGES]
        tables.append(Table(f"Table 6 — accuracy and EER on eval — {dataset} / {model}",
                            ("Detector", "Accuracy", "EER", "AUROC"), tuple(rows),
                            ("statistical detectors: the best cell of each feature by dev accuracy",)))
    return tables


TABLES: dict[int, Callable[[Sequence], list[Table]]] = {1: table1, 2: table2, 3: table3, 4: table4, 5: table5, 6: table6}
