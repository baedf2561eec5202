"""The paper's Tables 1–6 (Nguyen et al., "Detecting and correcting adversarial images using
image processing operations and CNNs"), each a pure function of a run's cells."""

from __future__ import annotations

from typing import Any

from advbench.schema import IMAGES
from advbench.report.tables.base import (DECIMALS_NOTE, INTERVAL_NOTE, Table, by_world, counted, estimate,
                                         metric, span, standard, wilson)
from advbench.report.tables.labels import budget_text, evaluation_sets


def table1(cells) -> list[Table]:
    """Successful adversarial images per attack × model (after saving and re-verifying). Each
    budget of a grid and each adaptive set is its own row, beside its threat model and budget;
    the second table gives the mean perturbation of the successes and, for black-box attacks,
    the mean number of queries."""
    made = [c for c in cells if c.stage in ("attack", "adaptive")]
    worlds = sorted({(c.dataset, c.model) for c in made})
    lookup = {(c.imageset, c.dataset, c.model): c for c in made}
    first: dict[str, Any] = {}
    for c in made:
        first.setdefault(c.imageset, c)
    families = list(dict.fromkeys(c.family for c in made))
    evaluation = evaluation_sets(cells)
    role = {a: _role(c, evaluation) for a, c in first.items()}
    names = sorted(first, key=lambda a: (role[a], families.index(first[a].family), first[a].budget or 0.0))
    kinds = {a: _attack_kind([lookup.get((a, *w)) for w in worlds]) for a in names}
    rows = [(a, heading, first[a].threat, budget_text(first[a].budget), *(counted(lookup.get((a, *w))) for w in worlds))
            for heading in ("targeted", "non-targeted", "–") for a in names if kinds[a] == heading]
    for kind, title in ((0, "(clean images attacked)"), (1, "(eval images attacked: evaluation sets)")):
        chosen = [a for a in names if min(role[a], 1) == kind]
        if chosen:
            rows.append((title, "", "", "", *(counted(next((lookup[(a, *w)] for a in chosen if (a, *w) in lookup), None),
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
    return 2 if cell.threat == "adaptive" else 1 if (cell.dataset, cell.model, cell.imageset) in evaluation else 0


def _attack_kind(cells) -> str:
    flags = [metric(c, "targeted") for c in cells if c is not None]
    if any(f == 1.0 for f in flags):
        return "targeted"
    return "non-targeted" if any(f == 0.0 for f in flags) else "–"


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
    for (dataset, model), group in by_world(c for c in cells if c.stage == "predict").items():
        ops = list(dict.fromkeys(c.operation for c in group))
        sets = list(dict.fromkeys(c.imageset for c in group))
        lookup = {(c.imageset, c.operation): c for c in group}
        rows = tuple((_op_title(op), *(_value(lookup.get((s, op)), "topk_misclassified") for s in sets)) for op in ops)
        sizes = "; ".join(f"{_set_title(s)} {span([metric(c, 'images') for c in group if c.imageset == s])}"
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
    for (dataset, model), group in by_world(c for c in cells if standard(c) and c.feature_group != IMAGES).items():
        groups = list(dict.fromkeys(c.feature_group for c in group))
        features = list(dict.fromkeys(c.feature for c in group))
        detectors = list(dict.fromkeys(c.detector for c in group))
        lookup = {(c.detector, c.feature_group, c.feature): c for c in group}
        rows = tuple((g, f, *(_estimate_or_status(lookup.get((d, g, f)), value) for d in detectors))
                     for g in groups for f in features if any((d, g, f) in lookup for d in detectors))
        tables.append(Table(f"Table 4 — detector {value} on eval — {dataset} / {model}",
                            ("Group", "Feature", *detectors), rows,
                            (INTERVAL_NOTE, DECIMALS_NOTE,
                             f"n (eval images): {span([metric(c, 'n') for c in group if c.status == 'ok'])}"),
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
    for (dataset, model), group in by_world(c for c in cells if c.stage == "correct").items():
        rows = []
        for c in group:
            if c.status != "ok":
                rows.append((c.corrector, c.correction_group, *([c.status] * 6)))
                continue
            values = [wilson(metric(c, name, subset), metric(c, "images", subset))
                      for name in ("topk_restored", "top1_restored") for subset in ("normal", "adversarial")]
            pipeline = [wilson(metric(c, n, "eval"), metric(c, "images", "eval"))
                        for n in ("pipeline_accuracy_before", "pipeline_accuracy_after")]
            rows.append((c.corrector, c.correction_group, *values, *pipeline))
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
    for (dataset, model), group in by_world(c for c in cells if standard(c) and c.status == "ok").items():
        chosen = []
        for feature in dict.fromkeys(c.feature for c in group if c.feature):
            # max keeps the first of equal values: a tie goes to the first cell in plan order (report.order)
            best = max((c for c in group if c.feature == feature), key=lambda c: metric(c, "accuracy", "dev") or 0)
            chosen.append((f"{best.detector} - {feature} ({best.feature_group})", best))
        chosen += [(c.detector, c) for c in group if c.feature_group == IMAGES]
        rows = tuple((name, *(estimate(c, m) for m in ("accuracy", "eer", "auroc"))) for name, c in chosen)
        tables.append(Table(f"Table 6 — accuracy and EER on eval — {dataset} / {model}",
                            ("Detector", "Accuracy", "EER", "AUROC"), rows,
                            ("statistical detectors: the best cell of each feature by dev accuracy (a tie: the "
                             "first in the benchmark file's order)",
                             INTERVAL_NOTE, DECIMALS_NOTE)))
    return tables
