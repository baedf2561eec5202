"""Detector cells: features from the label arrays, fit on train, score dev and eval."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from advbench import metrics as M
from advbench.errors import DataError
from advbench.specs import Detector, FitInfo, Probabilities

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


def fit_detector(detector: Detector, features: np.ndarray, data: LabelledSet, *, with_dev: bool,
                 info: FitInfo | None = None) -> None:
    """Fit on train; ``with_dev``: the detector's ``fit`` takes ``dev`` (its spec declares
    ``selects_on_dev``) and selects its model on it; ``info`` (all rows; a detector whose spec
    declares ``fit_info``) goes with the train rows' sources."""
    train = data.split == TRAIN
    if len(np.unique(data.y[train])) < 2:
        raise DataError("the train split holds only one class; raise images_per_model or add attacks that succeed")
    dev = data.split == DEV
    kwargs = {} if info is None else {"info": replace(info, sources=np.asarray(info.sources)[train])}
    if with_dev:
        detector.fit(features[train], data.y[train], dev=(features[dev], data.y[dev]) if dev.any() else None, **kwargs)
    else:
        detector.fit(features[train], data.y[train], **kwargs)


def select_on_dev(builds: Sequence[Callable[[], Detector]], features: np.ndarray, data: LabelledSet, *,
                  with_dev: Callable[[Detector], bool], by: str = "accuracy",
                  info: FitInfo | None = None) -> tuple[int, Detector, list[float]]:
    """Fit every candidate on train and keep the one with the best dev ``by``: accuracy (the
    paper's "the dev set was used to select the model": the detector's own decision) or AUROC
    (score-based detectors, whose operating point is set apart); the first of equals, so the
    config's order breaks ties. Returns its index, the fitted detector and every candidate's dev
    value."""
    dev = data.split == DEV
    if not dev.any():
        raise DataError("a detector search needs dev images to choose on; the dev split is empty "
                        "(raise images_per_model or the dev share of database.split)")
    if by not in ("accuracy", "auroc"):
        raise ValueError(f"select_on_dev: by must be 'accuracy' or 'auroc', got {by!r}")
    best: tuple[int, Detector] | None = None
    values: list[float] = []
    for index, build in enumerate(builds):
        detector = build()
        fit_detector(detector, features, data, with_dev=with_dev(detector), info=info)
        if by == "auroc":
            values.append(M.auroc(data.y[dev], np.asarray(detector.scores(features[dev]), dtype=float)))
        else:
            values.append(M.accuracy(data.y[dev], np.asarray(detector.predict(features[dev]))))
        if best is None or (values[-1] > values[best[0]]) or (np.isnan(values[best[0]]) and not np.isnan(values[-1])):
            best = (index, detector)
    assert best is not None, "select_on_dev needs at least one candidate"
    return best[0], best[1], values


#: the operating point matched across detectors: the threshold flagging this share of normal dev images
MATCHED_FPR = 0.05
#: the TPR at which the TNR is read (Lee et al. 2018)
MATCHED_TPR = 0.95


def detection_metrics(data: LabelledSet, pred: np.ndarray, scores: np.ndarray) -> list[tuple[str, str, float]]:
    """(metric, subset, value) rows for dev and eval, and per attack on eval, from the
    predictions and scores of every image (one pass of the detector, sliced here).

    Beside the detector's own decision (``pred``), matched operating points that compare
    detectors fairly: AUROC, TNR at 95 % TPR (both threshold-free) and, at the threshold that
    flags 5 % of the NORMAL DEV images, the eval TPR and FPR (``*_at_dev_5fpr``, overall and
    per attack) with their counts; and the FPR on normal eval images split by whether the
    classifier gets them right at top-1 (``clean:top1-correct`` / ``clean:top1-wrong``)."""
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
            rows.append(("tnr_at_95tpr", "", M.tnr_at_tpr(data.y[mask], scores[mask], MATCHED_TPR)))
            for stat in ("auroc", "eer", "tnr_at_95tpr"):  # 95 % stratified bootstrap intervals, seeded
                lo, hi = M.bootstrap_interval(data.y[mask], scores[mask], stat, n_boot=1000, seed=0)
                rows += [(f"{stat}_lo", "", lo), (f"{stat}_hi", "", hi)]
            for origin in sorted(set(data.origin[mask].tolist())):
                sub = data.origin[mask] == origin
                name = "false_positive_rate" if origin == "clean" else "detection_rate"
                # the count beside each rate, so a report can put an interval on it
                rows += [(name, origin, float(pred[mask][sub].mean())), ("n", origin, float(sub.sum()))]
            rows += top1_fpr_rows(data.rows(mask & (data.y == 0)), pred[mask & (data.y == 0)])
            rows += per_attack_rows(data, scores, mask)
    rows += matched_rows(data, scores)
    return rows


def per_attack_rows(data: LabelledSet, scores: np.ndarray, mask: np.ndarray) -> list[tuple[str, str, float]]:
    """AUROC and TNR at 95 % TPR (with bootstrap intervals) of each attack's eval images against
    the normal ones, when the cell is scored on more than one attack: how a mixture-trained
    detector compares with a per-attack one on the same images."""
    attacks = sorted(set(data.origin[mask & (data.y == 1)].tolist()))
    if len(attacks) < 2:
        return []
    rows = []
    for origin in attacks:
        sub = mask & ((data.y == 0) | (data.origin == origin))
        y, s = data.y[sub], scores[sub]
        rows += [("auroc", origin, M.auroc(y, s)), ("tnr_at_95tpr", origin, M.tnr_at_tpr(y, s, MATCHED_TPR))]
        for stat in ("auroc", "tnr_at_95tpr"):
            lo, hi = M.bootstrap_interval(y, s, stat, n_boot=1000, seed=0)
            rows += [(f"{stat}_lo", origin, lo), (f"{stat}_hi", origin, hi)]
    return rows


def top1_fpr_rows(normal: LabelledSet, pred: np.ndarray) -> list[tuple[str, str, float]]:
    """FPR on normal images split by whether the classifier's top-1 label (as the detector sees
    the image) is right, with counts: normal images the classifier gets wrong look off-manifold to
    density and uncertainty detectors."""
    right = normal.original[:, 0] == normal.truth if len(normal.original) else np.zeros(0, bool)
    rows = []
    for subset, mask in (("clean:top1-correct", right), ("clean:top1-wrong", ~right)):
        if mask.any():
            rows += [("false_positive_rate", subset, float(np.mean(pred[mask] == 1))), ("n", subset, float(mask.sum()))]
    return rows


def matched_rows(data: LabelledSet, scores: np.ndarray) -> list[tuple[str, str, float]]:
    """The eval TPR and FPR (overall and per attack) at the threshold that flags
    ``MATCHED_FPR`` of the normal DEV images: a deployable operating point, the same for every
    detector; nothing without normal dev images."""
    dev_normal = (data.split == DEV) & (data.y == 0)
    evaluation = data.split == EVAL
    if not dev_normal.any() or not evaluation.any():
        return []
    threshold = M.threshold_at_fpr(scores[dev_normal], MATCHED_FPR)
    rates = M.rates_at_threshold(data.y[evaluation], scores[evaluation], threshold)
    rows = [("threshold_at_dev_5fpr", "", threshold), ("n_normal", "dev", float(dev_normal.sum())),
            ("tpr_at_dev_5fpr", "", rates["tpr"]), ("fpr_at_dev_5fpr", "", rates["fpr"])]
    for origin in sorted(set(data.origin[evaluation & (data.y == 1)].tolist())):
        sub = evaluation & (data.origin == origin)
        rows.append(("detection_rate_at_dev_5fpr", origin, float(np.mean(scores[sub] > threshold))))
    return rows
