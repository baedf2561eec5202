"""Detector cells: features from the label arrays, fit on train, score dev and eval."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from advbench import metrics as M
from advbench.errors import DataError
from advbench.specs import Detector, Probabilities

TRAIN, DEV, EVAL = 0, 1, 2
UNUSED = -1  # rows a held-out detector cell neither trains nor is scored on


@dataclass(frozen=True)
class LabelledSet:
    """Feature inputs of one detection dataset: normal images (y=0) and every attack's (y=1)."""

    original: np.ndarray  # (N, k) top-k without operation
    transformed: np.ndarray  # (N, n, k) top-k under each selected operation
    y: np.ndarray  # (N,) 1 = adversarial
    split: np.ndarray  # (N,) 0 train, 1 dev, 2 eval
    origin: np.ndarray  # (N,) "clean" or the attack label
    truth: np.ndarray  # (N,) ground-truth label of the source image
    images: np.ndarray  # (N, H, W, 3) uint8 for image detectors, else (N, 0)
    source: np.ndarray | None = None  # (N,) index of the source image in the clean set
    probs: Probabilities | None = None  # full softmax outputs, for features that take them

    def rows(self, mask: np.ndarray) -> LabelledSet:
        """The subset of rows where ``mask`` holds."""
        probs = None if self.probs is None else Probabilities(self.probs.original[mask], self.probs.transformed[mask])
        return LabelledSet(self.original[mask], self.transformed[mask], self.y[mask], self.split[mask],
                           self.origin[mask], self.truth[mask], self.images[mask],
                           None if self.source is None else self.source[mask], probs)


def fit_detector(detector: Detector, features: np.ndarray, data: LabelledSet, *, with_dev: bool) -> None:
    """Fit on train; ``with_dev``: the detector's ``fit`` takes ``dev`` (its spec declares
    ``selects_on_dev``) and selects its model on it."""
    train = data.split == TRAIN
    if len(np.unique(data.y[train])) < 2:
        raise DataError("the train split holds only one class; raise images_per_model or add attacks that succeed")
    dev = data.split == DEV
    if with_dev:
        detector.fit(features[train], data.y[train], dev=(features[dev], data.y[dev]) if dev.any() else None)
    else:
        detector.fit(features[train], data.y[train])


def select_on_dev(builds: Sequence[Callable[[], Detector]], features: np.ndarray,
                  data: LabelledSet, *, with_dev: Callable[[Detector], bool]) -> tuple[int, Detector, list[float]]:
    """Fit every candidate on train and keep the one with the best dev accuracy (the first of
    equals, so the config's order breaks ties): the paper's "the dev set was used to select the
    model". Returns its index, the fitted detector and every candidate's dev accuracy."""
    dev = data.split == DEV
    if not dev.any():
        raise DataError("a detector search needs dev images to choose on; the dev split is empty "
                        "(raise images_per_model or the dev share of database.split)")
    best: tuple[int, Detector] | None = None
    accuracies: list[float] = []
    for index, build in enumerate(builds):
        detector = build()
        fit_detector(detector, features, data, with_dev=with_dev(detector))
        accuracies.append(M.accuracy(data.y[dev], np.asarray(detector.predict(features[dev]))))
        if best is None or accuracies[-1] > accuracies[best[0]]:
            best = (index, detector)
    assert best is not None, "select_on_dev needs at least one candidate"
    return best[0], best[1], accuracies


def detection_metrics(data: LabelledSet, pred: np.ndarray, scores: np.ndarray) -> list[tuple[str, str, float]]:
    """(metric, subset, value) rows for dev and eval, and per attack on eval, from the
    predictions and scores of every image (one pass of the detector, sliced here)."""
    rows: list[tuple[str, str, float]] = [("n_train", "", float((data.split == TRAIN).sum()))]
    for split_id, subset in ((DEV, "dev"), (EVAL, "")):
        mask = data.split == split_id
        if not mask.any():
            continue
        rows += [(name, subset, value) for name, value in M.binary_metrics(data.y[mask], pred[mask], scores[mask]).items()]
        rows.append(("n", subset, float(mask.sum())))
        if split_id == EVAL:
            adversarial, normal = mask & (data.y == 1), mask & (data.y == 0)
            detected, false_positives = int((pred[adversarial] == 1).sum()), int((pred[normal] == 1).sum())
            # the detection rate (TPR at the detector's own threshold) with the counts behind it
            rows += [("n_normal", "", float(normal.sum())), ("n_adversarial", "", float(adversarial.sum())),
                     ("detected", "", float(detected)), ("false_positives", "", float(false_positives)),
                     ("detection_rate", "", float(detected / adversarial.sum()) if adversarial.any() else float("nan"))]
            for stat in ("auroc", "eer"):  # 95 % stratified bootstrap intervals, seeded
                lo, hi = M.bootstrap_interval(data.y[mask], scores[mask], stat, n_boot=1000, seed=0)
                rows += [(f"{stat}_lo", "", lo), (f"{stat}_hi", "", hi)]
            for origin in sorted(set(data.origin[mask].tolist())):
                sub = data.origin[mask] == origin
                name = "false_positive_rate" if origin == "clean" else "detection_rate"
                # the count beside each rate, so a report can put an interval on it
                rows += [(name, origin, float(pred[mask][sub].mean())), ("n", origin, float(sub.sum()))]
    return rows
