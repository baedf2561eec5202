"""Tests for advbench.metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from advbench import metrics as m

# Six-point example. Sorted by score, descending:
#   0.9 P, 0.8 N, 0.65 P, 0.4 N, 0.35 P, 0.1 N      (3 positives, 3 negatives)
# ROC points (fpr, tpr): (0,0) (0,1/3) (1/3,1/3) (1/3,2/3) (2/3,2/3) (2/3,1) (1,1).
# AUROC: positive-over-negative pairs 3 + 2 + 1 = 6 of 9 -> 2/3.
# FPR - FNR at the points: -1, -2/3, -1/3, 0, ... -> crosses exactly at (1/3, 2/3): EER = 1/3.
# TPR at FPR <= 5%: only (0,0), (0,1/3) qualify -> 1/3; at FPR <= 50% -> 2/3.
Y6 = np.array([1, 0, 1, 0, 1, 0])
S6 = np.array([0.9, 0.8, 0.65, 0.4, 0.35, 0.1])


def test_six_point_example():
    fpr, tpr, thr = m.roc_curve(Y6, S6)
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert thr[0] == np.inf and thr[-1] == 0.1
    assert m.auroc(Y6, S6) == pytest.approx(2 / 3)
    assert m.equal_error_rate(Y6, S6) == pytest.approx(1 / 3)
    assert m.tpr_at_fpr(Y6, S6) == pytest.approx(1 / 3)
    assert m.tpr_at_fpr(Y6, S6, 0.5) == pytest.approx(2 / 3)
    assert m.tpr_at_fpr(Y6, S6, 1 / 3) == pytest.approx(2 / 3)  # boundary is inclusive


def test_perfect_separation():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    assert m.equal_error_rate(y, s) == 0.0
    assert m.auroc(y, s) == 1.0
    assert m.tpr_at_fpr(y, s, 0.0) == 1.0
    assert m.equal_error_rate(y, -s) == 1.0 and m.auroc(y, -s) == 0.0


def test_identical_scores_are_chance():
    y = np.array([0, 1, 0, 1, 1, 0, 0])
    s = np.full(y.size, 0.3)
    assert m.equal_error_rate(y, s) == pytest.approx(0.5)  # midpoint of (0,0)-(1,1)
    assert m.auroc(y, s) == pytest.approx(0.5)
    assert m.tpr_at_fpr(y, s) == 0.0


def test_ties_interpolate_the_eer():
    # P 0.9, P 0.5, N 0.5 (tied with a positive), N 0.1.
    # ROC points: (0,0) (0,1/2) (1/2,1) (1,1); FPR - FNR: -1, -1/2, +1/2.
    # The crossing is halfway along (0,1/2)-(1/2,1): fpr = 1/4, tpr = 3/4 -> EER 1/4.
    # AUROC: 0.9 beats both negatives (2), 0.5 beats 0.1 (1) and ties 0.5 (1/2) -> 3.5/4.
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.5, 0.5, 0.1])
    fpr, tpr, _ = m.roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    assert m.equal_error_rate(y, s) == pytest.approx(0.25)
    assert m.auroc(y, s) == pytest.approx(0.875)
    assert m.tpr_at_fpr(y, s, 0.4) == pytest.approx(0.5)


def test_tpr_at_fpr_keeps_collinear_points():
    # Each threshold adds one positive and one negative: all ROC points are collinear.
    # sklearn's default drop_intermediate would drop (1/4, 1/4), which is the answer at 30%.
    y = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    s = np.array([4, 4, 3, 3, 2, 2, 1, 1])
    assert m.tpr_at_fpr(y, s, 0.3) == pytest.approx(0.25)
    assert m.equal_error_rate(y, s) == pytest.approx(0.5)


def test_eer_matches_brute_force_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    fpr, tpr, _ = m.roc_curve(y, s)
    # Dense linear interpolation of the ROC polyline, then FPR = FNR by search.
    t = np.linspace(0, 1, 200_001)
    seg = np.minimum((t * (fpr.size - 1)).astype(int), fpr.size - 2)
    w = t * (fpr.size - 1) - seg
    f = fpr[seg] + w * (fpr[seg + 1] - fpr[seg])
    g = 1 - (tpr[seg] + w * (tpr[seg + 1] - tpr[seg]))
    k = np.argmin(np.abs(f - g))
    assert m.equal_error_rate(y, s) == pytest.approx((f[k] + g[k]) / 2, abs=1e-3)


def test_single_class_gives_nan():
    y = np.zeros(4, int)
    s = np.array([0.1, 0.2, 0.3, 0.4])
    for fn in (m.equal_error_rate, m.auroc, m.tpr_at_fpr):
        assert math.isnan(fn(y, s))
        assert math.isnan(fn(1 - y, s))
    fpr, tpr, _ = m.roc_curve(y, s)
    assert np.isnan(tpr).all() and fpr[-1] == 1.0
    assert m.balanced_accuracy(y, [0, 0, 1, 1]) == 0.5  # recall of the one class present
    assert math.isnan(m.false_positive_rate(1 - y, [0, 1, 0, 1]))  # no negatives


def test_label_metrics():
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 0])
    assert m.accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    assert m.balanced_accuracy(y_true, y_pred) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert m.false_positive_rate(y_true, y_pred) == pytest.approx(1 / 4)
    assert m.detection_rate(y_pred, y_true == 1) == pytest.approx(1 / 2)
    assert m.detection_rate(y_pred, [True, False, False, True, True, True]) == pytest.approx(2 / 4)
    assert math.isnan(m.detection_rate(y_pred, np.zeros(6, bool)))
    assert math.isnan(m.accuracy([], []))


def test_binary_metrics():
    y_pred = (S6 > 0.5).astype(int)  # flags 0.9 P, 0.8 N, 0.65 P
    out = m.binary_metrics(Y6, y_pred, S6)
    assert set(out) == {"accuracy", "balanced_accuracy", "eer", "auroc", "tpr_at_5fpr", "fpr"}
    assert all(isinstance(v, float) for v in out.values())
    assert out == pytest.approx(
        {"accuracy": 4 / 6, "balanced_accuracy": 4 / 6, "eer": 1 / 3, "auroc": 2 / 3,
         "tpr_at_5fpr": 1 / 3, "fpr": 1 / 3}
    )  # fmt: skip
