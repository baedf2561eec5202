"""Detector cells: features from the label arrays, fit on train, score dev and eval."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from advbench import metrics as M
from advbench.errors import DataError
from advbench.specs import Detector

TRAIN, DEV, EVAL = 0, 1, 2


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


def evaluate_detector(detector: Detector, features: np.ndarray, data: LabelledSet) -> list[tuple[str, str, float]]:
    """Fit on train; return (metric, subset, value) rows for dev and eval, per attack on eval."""
    train = data.split == TRAIN
    if len(np.unique(data.y[train])) < 2:
        raise DataError("the train split holds only one class; raise images_per_model or add attacks that succeed")
    dev = data.split == DEV
    if "dev" in inspect.signature(detector.fit).parameters:  # model selection on dev, when supported
        detector.fit(features[train], data.y[train], dev=(features[dev], data.y[dev]) if dev.any() else None)
    else:
        detector.fit(features[train], data.y[train])
    rows: list[tuple[str, str, float]] = [("n_train", "", float(train.sum()))]
    for split_id, split_name in ((DEV, "dev"), (EVAL, "eval")):
        mask = data.split == split_id
        if not mask.any():
            continue
        y, pred, scores = data.y[mask], detector.predict(features[mask]), detector.scores(features[mask])
        subset = "" if split_name == "eval" else "dev"
        rows += [(name, subset, value) for name, value in M.binary_metrics(y, pred, scores).items()]
        rows.append(("n", subset, float(mask.sum())))
        if split_name == "eval":
            for origin in sorted(set(data.origin[mask].tolist())):
                sub = data.origin[mask] == origin
                name = "false_positive_rate" if origin == "clean" else "detection_rate"
                rows.append((name, origin, float(pred[sub].mean())))
    return rows
