"""Binary detection metrics (pure numpy): label 1 = adversarial, higher score = more adversarial.

Rates that are undefined for the given data (no negatives, no positives, an empty subset)
are ``nan`` rather than an error, so a report can still be written; in particular
``eer``, ``auroc`` and ``tpr_at_fpr`` are ``nan`` when ``y_true`` holds only one class.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as _skm
from sklearn.exceptions import UndefinedMetricWarning


def _labels(y: ArrayLike) -> np.ndarray:
    return np.asarray(y).astype(int).ravel()


def _scores(s: ArrayLike) -> np.ndarray:
    return np.asarray(s, dtype=float).ravel()


def _both_classes(y_true: np.ndarray) -> bool:
    return bool((y_true == 1).any() and (y_true == 0).any())


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of correct predictions; ``nan`` for empty input."""
    t, p = _labels(y_true), _labels(y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean of the per-class recalls (TPR and TNR) over the classes present in ``y_true``.

    With one class present this is that class's recall (as sklearn does); ``nan`` if empty.
    """
    t, p = _labels(y_true), _labels(y_pred)
    recalls = [np.mean(p[t == c] == c) for c in (0, 1) if (t == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def roc_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)``, from (0, 0) at threshold +inf up to (1, 1).

    Every distinct score is a point (``drop_intermediate=False``), so collinear points that
    :func:`tpr_at_fpr` may need are kept; tied scores form one point. With one class only,
    the undefined rate is ``nan`` (sklearn's behaviour, its warning silenced).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return _skm.roc_curve(_labels(y_true), _scores(scores), drop_intermediate=False)


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count half); ``nan`` with one class only."""
    t = _labels(y_true)
    if not _both_classes(t):
        return float("nan")
    return float(_skm.roc_auc_score(t, _scores(scores)))


def equal_error_rate(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Error rate where FPR = FNR (= 1 - TPR); ``nan`` with one class only.

    Walks the ROC points (FPR - FNR grows from -1 to 1 along them) and intersects the segment
    on which FPR - FNR changes sign with the line FPR = FNR, i.e. linear interpolation between
    the two neighbouring ROC points (the rate of a randomised mix of their two thresholds).
    """
    t = _labels(y_true)
    if not _both_classes(t):
        return float("nan")
    fpr, tpr, _ = roc_curve(t, scores)
    d = fpr - (1 - tpr)
    i = int(np.argmax(d >= 0))  # first point at or past the crossing; d[-1] = 1 so one exists
    if d[i] == 0 or i == 0:
        return float(fpr[i])
    w = -d[i - 1] / (d[i] - d[i - 1])  # fraction of the way from point i-1 to point i
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def tpr_at_fpr(y_true: ArrayLike, scores: ArrayLike, fpr: float = 0.05) -> float:
    """Largest TPR among ROC points with FPR <= ``fpr`` (no interpolation); ``nan`` if one class."""
    t = _labels(y_true)
    if not _both_classes(t):
        return float("nan")
    f, tp, _ = roc_curve(t, scores)
    # (0, 0) always qualifies; the slack absorbs float error in fpr.
    return float(tp[f <= fpr + 1e-12].max())


def detection_rate(y_pred: ArrayLike, mask: ArrayLike) -> float:
    """Share flagged adversarial (``y_pred == 1``) among the rows where ``mask`` is true.

    ``nan`` for an empty subset.
    """
    p, m = _labels(y_pred), np.asarray(mask, dtype=bool).ravel()
    return float(np.mean(p[m] == 1)) if m.any() else float("nan")


def false_positive_rate(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of normal images (``y_true == 0``) flagged adversarial; ``nan`` if there are none."""
    t, p = _labels(y_true), _labels(y_pred)
    return detection_rate(p, t == 0)


def binary_metrics(y_true: ArrayLike, y_pred: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """accuracy, balanced_accuracy, eer, auroc, tpr_at_5fpr (TPR at FPR <= 5%) and fpr."""
    return {
        "accuracy": accuracy(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "eer": equal_error_rate(y_true, scores),
        "auroc": auroc(y_true, scores),
        "tpr_at_5fpr": tpr_at_fpr(y_true, scores, 0.05),
        "fpr": false_positive_rate(y_true, y_pred),
    }
