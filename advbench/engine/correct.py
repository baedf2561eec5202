"""Metrics of label correction (§3.3) and of the detect-then-correct pipeline."""

from __future__ import annotations

import numpy as np

from advbench.engine.detect import EVAL, LabelledSet


def contains(labels: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return (labels == truth.reshape(-1, 1)).any(axis=1)


def correction_metrics(data: LabelledSet, corrected: np.ndarray, flagged: np.ndarray | None = None):
    """Rows (metric, subset, value): share of images whose corrected top-k holds the true label
    (``topk_restored``) and whose corrected top-1 is it (``top1_restored``), before/after, for
    normal images, adversarial images and each attack; plus the pipeline accuracy on eval."""
    rows: list[tuple[str, str, float]] = []
    subsets = {"normal": data.y == 0, "adversarial": data.y == 1}
    subsets.update({f"attack:{a}": data.origin == a for a in sorted(set(data.origin.tolist()) - {"clean"})})
    for name, mask in subsets.items():
        if not mask.any():
            continue
        truth = data.truth[mask]
        rows += [
            ("topk_restored", name, float(contains(corrected[mask], truth).mean())),
            ("top1_restored", name, float((corrected[mask, 0] == truth).mean())),
            ("topk_before", name, float(contains(data.original[mask], truth).mean())),
            ("top1_before", name, float((data.original[mask, 0] == truth).mean())),
            ("images", name, float(mask.sum())),
        ]
    if flagged is not None:
        ev = data.split == EVAL
        before = data.original[ev, 0] == data.truth[ev]
        after = np.where(flagged[ev] == 1, corrected[ev, 0], data.original[ev, 0]) == data.truth[ev]
        everything = corrected[ev, 0] == data.truth[ev]
        rows += [("images", "eval", float(ev.sum())),  # the n of the two accuracies' intervals (Table 5)
                 ("pipeline_accuracy_before", "eval", float(before.mean())),
                 ("pipeline_accuracy_after", "eval", float(after.mean())),
                 ("accuracy_correct_all", "eval", float(everything.mean())),
                 ("flagged", "eval", float(flagged[ev].mean()))]
    return rows
