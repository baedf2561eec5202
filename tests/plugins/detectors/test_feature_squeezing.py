"""Feature squeezing (Xu et al. 2018) on the tiny world."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from advbench.imaging import to_tensor
from advbench.testing import check_model_detector
from advbench_plugins.detectors.baselines.feature_squeezing import (FeatureSqueezing, FeatureSqueezingParams,
                                                                    fpr_threshold, non_local_means)
from advbench_plugins.detectors.baselines_plugins import DETECTORS
from advbench_plugins.transforms.squeezers import bit_depth_tensor, median_tensor

SPEC = next(s for s in DETECTORS if s.name == "feature-squeezing")


def test_meets_the_model_detector_contract_and_separates_adversarial_digits():
    # 0.70-0.78 over tiny models trained with other seeds and thread counts
    assert check_model_detector(SPEC, min_auroc=0.65) >= 0.65


def test_the_threshold_flags_five_percent_of_the_normal_training_images(splits, make_ctx):
    train = splits["train"]
    detector = FeatureSqueezing(FeatureSqueezingParams(), make_ctx()).fit(train.images, train.labels)
    normal = train.images[train.labels == 0]
    flagged = detector.predict(normal)
    k = int(np.floor(0.05 * len(normal)))
    assert flagged.sum() == k and k >= 5  # exactly floor(5 % of n): the scores do not tie
    # the adversarial training images play no part in the threshold
    other = FeatureSqueezing(FeatureSqueezingParams(), make_ctx()).fit(normal, np.zeros(len(normal), int))
    assert other.threshold == detector.threshold


def test_fpr_threshold_is_the_order_statistic_that_flags_floor_fpr_n():
    scores = np.arange(100, dtype=float)[::-1]
    assert fpr_threshold(scores, 0.05) == 94.0  # 95..99 are above it: 5 of 100
    assert fpr_threshold(scores, 0.001) == 99.0  # nothing flagged
    assert (scores > fpr_threshold(scores, 0.2)).sum() == 20


def test_scores_are_the_largest_l1_change_of_the_softmax_under_the_squeezers(splits, make_ctx):
    images = splits["eval"].images[:12]
    ctx = make_ctx()
    detector = FeatureSqueezing(FeatureSqueezingParams(bits=4, median_size=3), ctx)
    detector.fit(splits["train"].images, splits["train"].labels)
    x = to_tensor(images)
    with torch.no_grad():
        p = torch.softmax(ctx.model.module(x), 1)
        by_hand = torch.stack([(p - torch.softmax(ctx.model.module(squeeze), 1)).abs().sum(1)
                               for squeeze in (bit_depth_tensor(x, 4), median_tensor(x, 3))]).max(0).values
    assert np.allclose(detector.scores(images), by_hand.numpy(), atol=1e-6)
    assert ((0 <= detector.scores(images)) & (detector.scores(images) <= 2)).all()


def test_gradients_pass_straight_through_bit_depth_reduction(splits, make_ctx):
    detector = FeatureSqueezing(FeatureSqueezingParams(median_size=0), make_ctx())
    detector.fit(splits["train"].images, splits["train"].labels)
    x = to_tensor(splits["eval"].images[:8]).requires_grad_(True)
    detector.torch_scores(x).sum().backward()
    # without the straight-through estimator the rounding would stop every gradient
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_non_local_means_keeps_flat_images_and_smooths_noise():
    flat = torch.full((1, 3, 12, 12), 0.4)
    assert torch.allclose(non_local_means(flat, 5, 3, 2.0), flat, atol=1e-6)
    noisy = (0.5 + 0.05 * torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    smoothed = non_local_means(noisy, 7, 3, 30.0)
    assert smoothed.std() < 0.7 * noisy.std()


def test_nlm_squeezer_adds_a_third_distance(splits, make_ctx):
    images = splits["eval"].images[:6]
    two = FeatureSqueezing(FeatureSqueezingParams(), make_ctx()).fit(splits["train"].images, splits["train"].labels)
    three = FeatureSqueezing(FeatureSqueezingParams(nlm=True, nlm_search=5), make_ctx())
    three.fit(splits["train"].images, splits["train"].labels)
    assert [name for name, _ in three.squeezers] == ["bit-depth:5", "median:2", "nlm"]
    assert (three.scores(images) >= two.scores(images) - 1e-6).all()


@pytest.mark.parametrize("bad", [dict(bits=0, median_size=0, nlm=False), dict(nlm=True, nlm_search=4), dict(fpr=0.0)])
def test_invalid_parameters_are_refused(bad):
    with pytest.raises(ValidationError):
        FeatureSqueezingParams(**bad)
