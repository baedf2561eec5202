"""Tests for advbench.metrics against hand-computed cases."""

from __future__ import annotations

import math
from statistics import NormalDist

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


# Wilson intervals: Wilson (1927); reference values from Newcombe (1998), Statistics in
# Medicine 17:857-872, Table II (method 3, no continuity correction), and the textbook 8/10.
@pytest.mark.parametrize(("successes", "n", "lo", "hi"), [
    (8, 10, 0.4902, 0.9433),
    (0, 10, 0.0, 0.2775),
    (50, 100, 0.4038, 0.5962),
    (95, 100, 0.8882, 0.9785),
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_matches_published_values(successes, n, lo, hi):
    got = m.wilson_interval(successes, n)
    assert got == pytest.approx((lo, hi), abs=6e-5)


def test_wilson_edges_and_symmetry():
    assert m.wilson_interval(10, 10)[1] == 1.0 and m.wilson_interval(0, 10)[0] == 0.0
    lo, hi = m.wilson_interval(3, 10)
    assert m.wilson_interval(7, 10) == pytest.approx((1 - hi, 1 - lo))  # p -> 1 - p mirrors it
    assert all(math.isnan(v) for v in m.wilson_interval(0, 0))
    wide, narrow = m.wilson_interval(8, 10, 0.99), m.wilson_interval(8, 10, 0.80)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    with pytest.raises(ValueError):
        m.wilson_interval(11, 10)


def _gaussian_scores(rng, n_per_class, shift):
    y = np.r_[np.zeros(n_per_class, int), np.ones(n_per_class, int)]
    return y, rng.normal(size=2 * n_per_class) + shift * y


def test_fast_bootstrap_equals_the_reference_metric_on_the_same_resamples():
    # tied scores (rounding) exercise the per-group counting
    y, s = _gaussian_scores(np.random.default_rng(3), 30, 1.0)
    s = np.round(s, 1)
    for name, reference in (("auroc", m.auroc), ("eer", m.equal_error_rate)):
        fast = m.bootstrap_interval(y, s, name, n_boot=300, seed=7)
        slow = m.bootstrap_interval(y, s, reference, n_boot=300, seed=7)
        assert fast == pytest.approx(slow, abs=1e-12)
        assert fast[0] < reference(y, s) < fast[1]


def test_bootstrap_is_deterministic_and_stratified():
    y, s = _gaussian_scores(np.random.default_rng(4), 40, 1.0)
    a = m.bootstrap_interval(y, s, "auroc", seed=1)
    assert a == m.bootstrap_interval(y, s, "auroc", seed=1)
    assert a != m.bootstrap_interval(y, s, "auroc", seed=2)
    # two positives only: an unstratified resample would often hold no positive (nan AUROC);
    # stratified, every one has both classes and the bounds are finite
    y2 = np.r_[np.zeros(30, int), 1, 1]
    lo, hi = m.bootstrap_interval(y2, np.arange(32.0), "auroc", n_boot=200)
    assert lo == hi == 1.0
    assert all(math.isnan(v) for v in m.bootstrap_interval(np.zeros(5), np.arange(5.0), "eer"))
    with pytest.raises(ValueError, match="unknown statistic"):
        m.bootstrap_interval(y, s, "accuracy")


@pytest.mark.parametrize(("name", "truth"), [
    ("auroc", NormalDist().cdf(1 / math.sqrt(2))),  # AUROC of N(1, 1) vs N(0, 1): Φ(d / √2)
    ("eer", NormalDist().cdf(-0.5)),  # threshold at d / 2: Φ(-d / 2)
])
def test_bootstrap_intervals_cover_the_true_value(name, truth):
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(120):
        y, s = _gaussian_scores(rng, 100, 1.0)
        lo, hi = m.bootstrap_interval(y, s, name, n_boot=400, seed=int(rng.integers(1 << 30)))
        hits += lo <= truth <= hi
    assert 0.88 <= hits / 120 <= 0.995  # nominal 0.95; binomial noise of 120 trials ~ ±0.02


def test_bootstrap_is_fast_on_ten_thousand_rows():
    import time

    y, s = _gaussian_scores(np.random.default_rng(6), 5_000, 1.0)
    start = time.perf_counter()
    m.bootstrap_interval(y, s, "auroc")
    m.bootstrap_interval(y, s, "eer")
    assert time.perf_counter() - start < 5.0  # ~0.3 s each on a laptop core; slack for shared CI


# --- matched operating points ------------------------------------------------------------------


def test_tnr_at_95_tpr_against_hand_computed_values():
    # descending: 0.9 (adv) TPR 1/2; 0.6 (normal) FPR 1/4; 0.5 (adv) TPR 1 -> TNR 3/4 there
    y, s = [0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.6, 0.5, 0.9]
    assert m.tnr_at_tpr(y, s) == pytest.approx(0.75)
    assert m.tnr_at_tpr(y, s, 0.5) == pytest.approx(1.0)  # reached by 0.9 alone
    assert m.tnr_at_tpr([1, 1], [0.1, 0.2]) != m.tnr_at_tpr([1, 1], [0.1, 0.2])  # nan with one class


def test_threshold_at_fpr_flags_floor_of_the_share_of_normal_images():
    normal = np.arange(1, 21) / 10  # 0.1 .. 2.0
    t = m.threshold_at_fpr(normal, 0.05)  # floor(0.05 * 20) = 1 image flagged
    assert t == pytest.approx(1.9) and (normal > t).sum() == 1
    assert m.threshold_at_fpr(normal[:10], 0.05) == pytest.approx(1.0)  # floor(0.5) = 0: flags none
    assert (normal[:10] > m.threshold_at_fpr(normal[:10], 0.05)).sum() == 0


def test_tpr_at_5_fpr_with_the_threshold_set_on_dev_normals_and_applied_to_eval():
    dev_normal = np.arange(1, 21) / 10  # threshold 1.9 (see above)
    t = m.threshold_at_fpr(dev_normal, 0.05)
    y = [0, 0, 0, 0, 1, 1, 1, 1, 1]
    s = [0.5, 1.95, 2.5, 1.0, 1.8, 1.91, 3.0, 0.2, 1.9]  # eval: 2 of 4 normals > 1.9; 2 of 5 adversarials
    rates = m.rates_at_threshold(y, s, t)
    assert rates == {"tpr": pytest.approx(2 / 5), "fpr": pytest.approx(2 / 4), "n_adversarial": 5, "n_normal": 4}


def test_tnr_bootstrap_fast_path_equals_the_slow_one():
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(40), np.ones(30)]
    s = np.round(rng.normal(size=70) + y, 1)  # ties on purpose
    fast = m.bootstrap_interval(y, s, "tnr_at_95tpr", n_boot=200, seed=1)
    slow = m.bootstrap_interval(y, s, lambda a, b: m.tnr_at_tpr(a, b), n_boot=200, seed=1)
    assert fast == pytest.approx(slow)
