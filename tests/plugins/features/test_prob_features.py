"""prob-shift: the L1 change of the softmax under each operation, plus the largest."""

from pathlib import Path

import numpy as np
import pytest
import torch

from advbench.errors import PluginError
from advbench.imaging import to_tensor
from advbench.specs import DetectorContext, FeatureSpec, Probabilities
from advbench.testing import check_feature, tiny_detection_splits, tiny_model
from advbench_plugins.detectors.baselines.feature_squeezing import FeatureSqueezing, FeatureSqueezingParams
from advbench_plugins.features import topk_features
from advbench_plugins.features.prob_features import PROB_SHIFT, prob_shift
from advbench_plugins.transforms.squeezers import bit_depth_tensor, median_tensor


def test_known_values():
    original = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    transformed = np.array([[[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]],
                            [[0.0, 0.0, 1.0], [0.9, 0.1, 0.0]]])
    assert np.allclose(prob_shift(original, transformed), [[0.0, 1.0, 1.0], [2.0, 0.2, 2.0]])


def test_no_operations_give_a_zero_maximum():
    assert np.array_equal(prob_shift(np.ones((2, 3)) / 3, np.zeros((2, 0, 3))), np.zeros((2, 1)))


def test_compute_receives_probs_and_refuses_to_run_without_them():
    labels, per_op = np.zeros((2, 1), int), np.zeros((2, 2, 1), int)
    probs = Probabilities(original=np.full((2, 4), 0.25, np.float32),
                          transformed=np.tile(np.eye(4, dtype=np.float32)[:2], (2, 1, 1)))
    out = PROB_SHIFT.compute(labels, per_op, PROB_SHIFT.params(), probs=probs)
    assert out.shape == (2, 3) and np.allclose(out, 1.5)
    with pytest.raises(PluginError, match="softmax outputs"):
        PROB_SHIFT.compute(labels, per_op, PROB_SHIFT.params())


def test_meets_the_feature_contract():
    out = check_feature(PROB_SHIFT)
    assert out.shape == (12, 6) and (out >= 0).all() and (out <= 2 + 1e-6).all()
    assert np.allclose(out[:, -1], out[:, :-1].max(1))


def test_check_feature_also_passes_the_top_k_features_and_catches_a_random_one():
    for name, fn in (("counting", topk_features.counting_feature), ("differences", topk_features.differences_feature)):
        check_feature(FeatureSpec(name=name, summary="", compute=lambda o, t, p, fn=fn: fn(o, t)))
    rng = np.random.default_rng()
    noisy = FeatureSpec(name="noisy", summary="", compute=lambda o, t, p: rng.random((len(o), 2)))
    with pytest.raises(AssertionError, match="not deterministic"):
        check_feature(noisy)


def test_with_the_squeezers_as_operations_its_maximum_is_the_feature_squeezing_score(tmp_path):
    model = tiny_model()
    train = tiny_detection_splits()["train"]
    images = train.images[:16]
    x = to_tensor(images)
    with torch.no_grad():
        original = torch.softmax(model.module(x), 1).numpy()
        transformed = np.stack([torch.softmax(model.module(op), 1).numpy()
                                for op in (bit_depth_tensor(x, 5), median_tensor(x, 2))], 1)
    shift = prob_shift(original, transformed)
    ctx = DetectorContext(cache_dir=Path(tmp_path), device="cpu", seed=0, model=model)
    detector = FeatureSqueezing(FeatureSqueezingParams(), ctx).fit(train.images, train.labels)
    assert np.allclose(shift[:, -1], detector.scores(images), atol=1e-5)
