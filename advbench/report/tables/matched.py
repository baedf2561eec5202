"""Detectors compared at matched operating points, per attack, under both protocols: the
mixture one (a detector trained on every primary attack) and the per-attack one (a detector
per attack, trained on that attack alone, as the baselines' papers did)."""

from __future__ import annotations

from advbench.plan import IMAGES, PER_ATTACK
from advbench.report.tables.base import (DECIMALS_NOTE, INTERVAL_NOTE, Estimate, Table, by_world, metric, standard,
                                         wilson)

COLUMNS = ("Detector", "Feature", "Group", "Protocol", "Attack", "n normal", "n adv.", "AUROC", "TNR@95%TPR",
           "TPR@dev 5%", "FPR@dev 5%", "FPR top-1 wrong")


def protocol(cell) -> str:
    """The protocol a detect cell follows, as the report labels it."""
    holdout = getattr(cell, "holdout", "") or ""
    if not holdout:
        return "mixture"
    return "per-attack" if holdout.startswith(PER_ATTACK) else "held out"


def _bootstrapped(cell, name: str, subset: str, n) -> Estimate:
    return Estimate(metric(cell, name, subset), metric(cell, f"{name}_lo", subset), metric(cell, f"{name}_hi", subset),
                    None if n is None else int(n))


def _rows(cell) -> list[tuple]:
    name = (cell.detector, cell.feature, cell.feature_group if cell.feature_group != IMAGES else "", protocol(cell))
    n_normal = metric(cell, "n", "clean")
    fpr = wilson(metric(cell, "fpr_at_dev_5fpr"), n_normal)
    wrong = wilson(metric(cell, "false_positive_rate", "clean:top1-wrong"), metric(cell, "n", "clean:top1-wrong"))
    attacks = [m.subset for m in cell.metrics if m.name == "detection_rate"]
    rows = []
    for attack in attacks:
        n_adv = metric(cell, "n", attack)
        single = len(attacks) == 1  # the cell's overall numbers are this attack's
        subset = "" if single else attack
        n = None if n_normal is None or n_adv is None else n_normal + n_adv
        tpr_name, tpr_subset = ("tpr_at_dev_5fpr", "") if single else ("detection_rate_at_dev_5fpr", attack)
        rows.append((*name, attack, None if n_normal is None else int(n_normal), None if n_adv is None else int(n_adv),
                     _bootstrapped(cell, "auroc", subset, n), _bootstrapped(cell, "tnr_at_95tpr", subset, n),
                     wilson(metric(cell, tpr_name, tpr_subset), n_adv), fpr, wrong))
    return rows


def matched(cells) -> list[Table]:
    """Per detector cell (mixture and per-attack protocols) and attack: AUROC and TNR at 95 % TPR
    (threshold-free), and the TPR and FPR at the threshold that flags 5 % of the normal DEV
    images (matched across detectors), each with its interval; the FPR on normal eval images the
    classifier gets wrong at top-1 beside."""
    kept = [c for c in cells if c.stage == "detect" and c.status == "ok" and (standard(c) or protocol(c) == "per-attack")]
    tables = []
    for (dataset, model), group in by_world(kept).items():
        group = sorted(group, key=lambda c: (c.detector, c.feature, c.feature_group, protocol(c) != "mixture", c.holdout))
        rows = tuple(r for c in group for r in _rows(c))
        tables.append(Table(f"Matched operating points, both protocols — {dataset} / {model} (eval set)", COLUMNS, rows,
                            ("Protocol: mixture = trained on every primary attack (one threshold for all); per-attack = "
                             "trained on normal images and that attack alone (the baselines' papers)",
                             "AUROC, TNR@95%TPR: that attack's adversarial eval images against the normal eval images; "
                             "TPR@dev 5% / FPR@dev 5%: at the threshold flagging 5 % of the normal DEV images; FPR top-1 "
                             "wrong: the detector's own decision on normal eval images the classifier gets wrong at "
                             "top-1 (set aside by model-aware cells with model_normals = \"top-1\")",
                             INTERVAL_NOTE, DECIMALS_NOTE), key_columns=5))
    return tables
