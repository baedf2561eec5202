"""Mahalanobis confidence (Lee et al. 2018) on the tiny world."""

import numpy as np
import pytest
import torch

from advbench.errors import DataError
from advbench.imaging import to_tensor
from advbench.testing import check_model_detector
from advbench_plugins.detectors.baselines.mahalanobis import (Mahalanobis, MahalanobisParams, squared_mahalanobis,
                                                              tied_gaussian)
from advbench_plugins.detectors.baselines_plugins import DETECTORS

SPEC = next(s for s in DETECTORS if s.name == "mahalanobis")


def test_meets_the_model_detector_contract_and_separates_adversarial_digits():
    # 0.90-0.96 over tiny models trained with other seeds and thread counts
    assert check_model_detector(SPEC, min_auroc=0.85) >= 0.85


def test_with_input_preprocessing_it_still_meets_the_contract():
    assert check_model_detector(SPEC, SPEC.params(noise=0.01), min_auroc=0.85) >= 0.85


def test_tied_gaussian_and_distances_by_hand():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 3)) + np.repeat([[0, 0, 0], [4, 0, 0]], 20, axis=0)
    classes = np.repeat([0, 2], 20)  # class 1 absent: not a candidate
    present, means, precision = tied_gaussian(torch.from_numpy(f), torch.from_numpy(classes))
    mu = np.stack([f[:20].mean(0), f[20:].mean(0)])
    centred = f - mu[np.repeat([0, 1], 20)]
    cov = centred.T @ centred / 40
    assert present.tolist() == [0, 2]
    assert np.allclose(means.numpy(), mu) and np.allclose(precision.numpy(), np.linalg.inv(cov))
    x = rng.normal(size=(5, 3))
    expected = [[(x[i] - mu[c]) @ np.linalg.inv(cov) @ (x[i] - mu[c]) for c in range(2)] for i in range(5)]
    assert np.allclose(squared_mahalanobis(torch.from_numpy(x), means, precision).numpy(), expected)


def test_a_plain_network_gets_its_children_and_penultimate_without_the_logits(splits, make_ctx):
    train = splits["train"]
    detector = Mahalanobis(MahalanobisParams(), make_ctx()).fit(train.images, train.labels)
    # a plain network: net.0 .. net.5 (Flatten skipped; net.7 returns the logits) and the penultimate features
    assert len(detector.gaussians) == 7
    assert detector.gaussians[-1][0].shape == (10, 256)


def test_preprocessing_raises_the_confidence_score_of_the_nonlinear_layers(splits, make_ctx):
    train = splits["train"]
    x = to_tensor(splits["eval"].images[:20])
    plain = Mahalanobis(MahalanobisParams(), make_ctx()).fit(train.images, train.labels)
    moved = Mahalanobis(MahalanobisParams(noise=0.002), make_ctx()).fit(train.images, train.labels)
    with torch.no_grad():
        before, after = plain._features(x), moved._features(x)
    # a small step against the gradient of the closest distance brings images closer to a class;
    # not in net.0, a convolution of the pixels (near-degenerate covariance: the step overshoots)
    assert ((after >= before - 1e-9)[:, 2:]).all()
    assert not torch.allclose(after, before)


def test_a_detector_saved_with_other_parameters_does_not_load(splits, make_ctx, tmp_path):
    train = splits["train"]
    Mahalanobis(MahalanobisParams(), make_ctx()).fit(train.images, train.labels).save(tmp_path / "saved")
    with pytest.raises(DataError, match="was fitted as"):
        Mahalanobis(MahalanobisParams(noise=0.01), make_ctx()).load(tmp_path / "saved")


def test_fit_needs_both_classes(splits, make_ctx):
    normal = splits["train"].images[splits["train"].labels == 0]
    with pytest.raises(DataError, match="adversarial images"):
        Mahalanobis(MahalanobisParams(), make_ctx()).fit(normal, np.zeros(len(normal), int))


def test_a_resnet_gets_lees_features_the_stem_and_every_stage_once():
    from advbench_plugins.models.cifar_resnet import cifar_resnet

    probe = Mahalanobis(MahalanobisParams(), _resnet_ctx(cifar_resnet(20))).probe
    assert probe.layers == ["layer1:in", "layer1", "layer2", "layer3"] and probe._linear is None


def _resnet_ctx(net):
    from advbench.specs import DetectorContext, LoadedModel

    model = LoadedModel(module=net.eval(), input_size=(32, 32), num_classes=10, prepare=lambda im: im)
    return DetectorContext(cache_dir=None, device="cpu", seed=0, model=model)
