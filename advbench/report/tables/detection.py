"""The baseline comparison of a detector across attacks: its false-positive rate and its
detection rate on each attack's eval images."""

from __future__ import annotations

from advbench.report.tables.base import (DECIMALS_NOTE, Table, by_world, detection_rate_on, metric, span, standard,
                                         wilson)


def detection_by_attack(cells) -> list[Table]:
    """Per detector cell: the false-positive rate on normal eval images and the detection rate
    on each attack's eval images, each with its Wilson 95 % interval and count (the baseline
    comparison of a detector across attacks)."""
    tables = []
    for (dataset, model), group in by_world(c for c in cells if standard(c) and c.status == "ok").items():
        attacks = list(dict.fromkeys(m.subset for c in group for m in c.metrics
                                     if m.name == "detection_rate" and m.subset))  # "": all attacks together
        rows = tuple((c.detector, c.feature, c.feature_group,
                      wilson(metric(c, "false_positive_rate", "clean"), metric(c, "n", "clean")),
                      *(detection_rate_on(c, a) for a in attacks)) for c in group)
        counts = "; ".join(f"{label} {span([metric(c, 'n', subset) for c in group])}"
                           for label, subset in (("normal", "clean"), *((a, a) for a in attacks)))
        tables.append(Table(f"Detection rate per attack and false-positive rate — {dataset} / {model} (eval set)",
                            ("Detector", "Feature", "Group", "FPR (normal)", *attacks), rows,
                            ("FPR: share of normal eval images flagged adversarial; per attack: share of that attack's "
                             "adversarial eval images flagged (detection rate)",
                             "[lo, hi]: Wilson score 95 % intervals; " + DECIMALS_NOTE,
                             f"n (eval images): {counts}"), key_columns=3))
    return tables
