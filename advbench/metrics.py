"""Binary detection metrics (pure numpy): label 1 = adversarial, higher score = more adversarial.

Rates that are undefined for the given data (no negatives, no positives, an empty subset)
are ``nan`` rather than an error, so a report can still be written; in particular
``eer``, ``auroc``, ``tpr_at_fpr`` and ``tnr_at_tpr`` are ``nan`` when ``y_true`` holds only one class.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

# scikit-learn is imported where it is used: the report's tables import this module, and
# ``advbench --help`` must not pay for scikit-learn (nor torch)


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
    from sklearn import metrics as skm
    from sklearn.exceptions import UndefinedMetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return skm.roc_curve(_labels(y_true), _scores(scores), drop_intermediate=False)


def auroc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (ties count half); ``nan`` with one class only."""
    t = _labels(y_true)
    if not _both_classes(t):
        return float("nan")
    from sklearn import metrics as skm

    return float(skm.roc_auc_score(t, _scores(scores)))


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


def tnr_at_tpr(y_true: ArrayLike, scores: ArrayLike, tpr: float = 0.95) -> float:
    """TNR (1 - FPR) at the first ROC point, from the highest threshold down, whose TPR reaches
    ``tpr`` (Lee et al. 2018's "TNR at TPR 95 %"; the threshold is read off the same data, as
    theirs); ``nan`` if one class."""
    t = _labels(y_true)
    if not _both_classes(t):
        return float("nan")
    f, tp, _ = roc_curve(t, scores)
    return float(1 - f[int(np.argmax(tp >= tpr - 1e-12))])


def threshold_at_fpr(normal_scores: ArrayLike, fpr: float = 0.05) -> float:
    """The threshold ``t`` with ``scores > t`` true for at most ``floor(fpr * n)`` of the ``n``
    normal scores (exactly that many when scores do not tie at ``t``): the (n - k)-th smallest
    score, ``k = floor(fpr * n)``. Set on normal images the detector has not been fitted on
    (dev), then applied to eval: a deployable operating point, unlike :func:`tpr_at_fpr`, which
    reads its threshold off the eval set itself. ``nan`` without scores."""
    s = np.sort(_scores(normal_scores))
    if not s.size:
        return float("nan")
    k = int(np.floor(fpr * s.size + 1e-9))
    return float(s[s.size - k - 1])


def rates_at_threshold(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """TPR and FPR of the decision ``scores > threshold``, with the counts behind them
    (``n_adversarial``, ``n_normal``) so a report can put intervals on them."""
    t, s = _labels(y_true), _scores(scores)
    flagged = s > threshold
    return {"tpr": detection_rate(flagged, t == 1), "fpr": detection_rate(flagged, t == 0),
            "n_adversarial": float((t == 1).sum()), "n_normal": float((t == 0).sum())}


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


# --- Intervals -------------------------------------------------------------------------------


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n`` (Wilson, 1927; the
    method Newcombe, 1998, recommends over the Wald interval, which collapses at 0 and n).

    The bounds are the two roots ``p`` of ``|p̂ - p| = z·sqrt(p(1 - p)/n)``: they stay inside
    [0, 1] and are not degenerate when ``successes`` is 0 or ``n``. ``successes`` may be
    fractional (an effective count). ``n == 0`` gives ``(nan, nan)``.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    z = _z(confidence)
    p, z2n = successes / n, z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * np.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # exact 0 and 1 at the ends (the formula leaves float dust there)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return float(lo), float(hi)


def _ranked(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rows in descending score order as (positives' group, negatives' group, ..., groups):
    a group is one distinct score value (group 0 = the highest), so ties share a group."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    group = np.cumsum(np.r_[True, s_sorted[1:] != s_sorted[:-1]]) - 1
    return group[y_sorted == 1], group[y_sorted == 0], order, int(group[-1]) + 1


def _group_counts(groups_of_rows: np.ndarray, draws: np.ndarray, n_groups: int) -> np.ndarray:
    """(B, G) counts of resampled rows per score group; ``draws`` is (B, m) row indices."""
    b = draws.shape[0]
    flat = groups_of_rows[draws] + (np.arange(b) * n_groups)[:, None]
    return np.bincount(flat.ravel(), minlength=b * n_groups).reshape(b, n_groups)


def _auroc_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUROC of each resample from its (B, G) per-group counts (groups in descending score):
    a positive beats every negative in a later group and ties half of those in its own."""
    neg_below = neg.sum(axis=1, keepdims=True) - np.cumsum(neg, axis=1)
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    return wins / (pos.sum(axis=1) * neg.sum(axis=1))


def _eer_counts(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """EER of each resample, computed exactly as :func:`equal_error_rate` does: ROC points at
    every threshold (empty groups only repeat a point, which changes nothing), then linear
    interpolation on the segment where FPR - FNR changes sign."""
    b = pos.shape[0]
    zero = np.zeros((b, 1))
    tpr = np.hstack([zero, np.cumsum(pos, axis=1) / pos.sum(axis=1, keepdims=True)])
    fpr = np.hstack([zero, np.cumsum(neg, axis=1) / neg.sum(axis=1, keepdims=True)])
    d = fpr - (1 - tpr)  # -1 at (0, 0), +1 at (1, 1)
    i = np.argmax(d >= 0, axis=1)[:, None]
    d0, d1 = np.take_along_axis(d, i - 1, 1), np.take_along_axis(d, i, 1)
    f0, f1 = np.take_along_axis(fpr, i - 1, 1), np.take_along_axis(fpr, i, 1)
    return (f0 + (-d0 / (d1 - d0)) * (f1 - f0)).ravel()


def _tnr_counts(pos: np.ndarray, neg: np.ndarray, tpr: float = 0.95) -> np.ndarray:
    """TNR at TPR ``tpr`` of each resample, as :func:`tnr_at_tpr`: the first group (highest
    score first) at which the cumulative TPR reaches ``tpr``."""
    cum_tpr = np.cumsum(pos, axis=1) / pos.sum(axis=1, keepdims=True)
    cum_fpr = np.cumsum(neg, axis=1) / neg.sum(axis=1, keepdims=True)
    i = np.argmax(cum_tpr >= tpr - 1e-12, axis=1)[:, None]
    return 1 - np.take_along_axis(cum_fpr, i, 1).ravel()


_FAST_STATISTICS = {"auroc": _auroc_counts, "eer": _eer_counts, "tnr_at_95tpr": _tnr_counts}


def _resample_blocks(rng: np.random.Generator, n_pos: int, n_neg: int, n_boot: int):
    """Stratified resamples in blocks of rows (bounded memory): (positive draws, negative
    draws), each (b, n_pos) / (b, n_neg) indices into that class. The block size depends on
    the row count only, so every statistic sees the same resamples for the same seed."""
    block = max(1, 2_000_000 // (n_pos + n_neg))
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
        yield rng.integers(0, n_pos, (b, n_pos)), rng.integers(0, n_neg, (b, n_neg))


def bootstrap_interval(y_true: ArrayLike, scores: ArrayLike, statistic: str | Callable[[np.ndarray, np.ndarray], float],
                       n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Stratified percentile bootstrap interval of a ranking statistic (Efron & Tibshirani,
    1993, ch. 13): normal and adversarial rows are resampled with replacement separately, so
    every resample keeps both classes and the class sizes of the data (the design of a
    benchmark's eval set), and the interval is the central ``confidence`` share of the
    ``n_boot`` resampled statistics.

    ``statistic`` is ``"auroc"``, ``"eer"`` or ``"tnr_at_95tpr"`` (vectorised: each resample reduced to counts per
    distinct score, so 10,000 rows x 1,000 resamples take well under a second), or any
    ``f(y_true, scores) -> float`` (called once per resample; slow). The same ``seed`` gives
    the same interval. With one class only (or no rows) the interval is ``(nan, nan)``.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    alpha = (1 - confidence) / 2
    _z(confidence)  # validates confidence
    y, s = _labels(y_true), _scores(scores)
    if y.size != s.size:
        raise ValueError(f"y_true has {y.size} rows but scores has {s.size}")
    if not _both_classes(y):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pos_groups, neg_groups, order, n_groups = _ranked(y, s)
    stats = []
    if isinstance(statistic, str):
        if statistic not in _FAST_STATISTICS:
            raise ValueError(f"unknown statistic {statistic!r}; valid: {', '.join(_FAST_STATISTICS)} or a callable")
        reduce = _FAST_STATISTICS[statistic]
        for draw_pos, draw_neg in _resample_blocks(rng, pos_groups.size, neg_groups.size, n_boot):
            stats.append(reduce(_group_counts(pos_groups, draw_pos, n_groups).astype(float),
                                _group_counts(neg_groups, draw_neg, n_groups).astype(float)))
    else:
        # the same rows as the fast path: class members in descending score order
        pos_rows, neg_rows = order[y[order] == 1], order[y[order] == 0]
        for draw_pos, draw_neg in _resample_blocks(rng, pos_rows.size, neg_rows.size, n_boot):
            for dp, dn in zip(draw_pos, draw_neg):
                rows = np.r_[pos_rows[dp], neg_rows[dn]]
                stats.append([statistic(y[rows], s[rows])])
    values = np.concatenate([np.ravel(v) for v in stats])
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)
