"""Kernel density + Bayesian uncertainty (Feinman et al. 2017) on the tiny world."""

import numpy as np
import torch
from torch import nn

from advbench.imaging import to_tensor
from advbench.specs import LoadedModel
from advbench.testing import check_model_detector
from advbench_plugins.detectors.baselines.kernel_density import (KernelDensity, KernelDensityParams,
                                                                 log_class_density, uncertainty)
from advbench_plugins.detectors.baselines_plugins import DETECTORS

SPEC = next(s for s in DETECTORS if s.name == "kernel-density")


def test_meets_the_model_detector_contract_and_separates_adversarial_digits():
    # 0.86-0.90 over tiny models trained with other seeds and thread counts
    assert check_model_detector(SPEC, min_auroc=0.75) >= 0.75


def test_log_class_density_by_hand_with_leave_one_out_and_the_empty_class_fallback():
    ref = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    ref_classes = torch.tensor([0, 0, 1])
    z = torch.tensor([[0.0, 0.0], [0.5, 0.5], [3.0, 0.0]], dtype=torch.float64)
    classes = torch.tensor([0, 1, 2])  # class 2 has no reference: all three are used
    h = 0.7

    def by_hand(point, members):
        d2 = np.array([((point - ref[i].numpy()) ** 2).sum() for i in members])
        return np.log(np.exp(-d2 / (2 * h * h)).mean())

    got = log_class_density(z, classes, ref, ref_classes, h).numpy()
    assert np.allclose(got, [by_hand(z[0].numpy(), [0, 1]), by_hand(z[1].numpy(), [2]),
                             by_hand(z[2].numpy(), [0, 1, 2])])
    # row 0 is reference 0 itself: left out, only reference 1 remains in its class
    loo = log_class_density(z, classes, ref, ref_classes, h, leave_out=torch.tensor([0, -1, -1])).numpy()
    assert np.isclose(loo[0], by_hand(z[0].numpy(), [1])) and np.allclose(loo[1:], got[1:])


def test_uncertainty_is_the_summed_variance_of_the_softmax_samples():
    same = torch.tensor([[[0.2, 0.8]], [[0.2, 0.8]], [[0.2, 0.8]]])
    assert torch.allclose(uncertainty(same), torch.zeros(1))
    flip = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert torch.allclose(uncertainty(flip), torch.tensor([0.5]))  # each class: variance 1/4


def test_scores_do_not_depend_on_batching_and_dropout_masks_come_from_the_seed(splits, make_ctx):
    train, images = splits["train"], splits["eval"].images[:20]
    big = KernelDensity(KernelDensityParams(batch_size=128), make_ctx()).fit(train.images, train.labels)
    small = KernelDensity(KernelDensityParams(batch_size=7), make_ctx()).fit(train.images, train.labels)
    # float32 convolutions round differently for other batch sizes: equal up to that
    assert np.allclose(big.scores(images), small.scores(images), rtol=1e-5, atol=1e-6)
    other_seed = KernelDensity(KernelDensityParams(), make_ctx(seed=1)).fit(train.images, train.labels)
    assert not torch.equal(other_seed.masks, big.masks)


def _dropout_net() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                        nn.Dropout(0.3), nn.Linear(24, 10)).eval()
    return LoadedModel(module=net, input_size=(16, 16), num_classes=10, prepare=lambda im: im)


def test_a_classifier_with_dropout_layers_samples_its_own_dropout(splits, make_ctx):
    train, images = splits["train"], splits["eval"].images[:10]
    ctx = make_ctx(model=_dropout_net())
    auto = KernelDensity(KernelDensityParams(samples=8), ctx)
    assert auto.mode == "model"
    auto.fit(train.images, train.labels)
    x = to_tensor(images)
    with torch.no_grad():
        features = auto._features(x)
        # the network is left in eval mode: its plain output has no dropout
        assert not ctx.model.module.training
        assert torch.equal(ctx.model.module(x), ctx.model.module(x))
    assert (features[:, 1] > 0).all()  # T different dropout masks: the softmax samples vary
    again = KernelDensity(KernelDensityParams(samples=8), ctx).fit(train.images, train.labels)
    assert np.allclose(again.scores(images), auto.scores(images))
    head = KernelDensity(KernelDensityParams(samples=8, dropout="head"), ctx).fit(train.images, train.labels)
    assert head.mode == "head" and not np.allclose(head.scores(images), auto.scores(images))


def test_bandwidth_changes_the_densities(splits, make_ctx):
    train, x = splits["train"], to_tensor(splits["eval"].images[:10])
    narrow = KernelDensity(KernelDensityParams(bandwidth=0.1), make_ctx()).fit(train.images, train.labels)
    wide = KernelDensity(KernelDensityParams(bandwidth=3.0), make_ctx()).fit(train.images, train.labels)
    with torch.no_grad():
        assert (narrow._features(x)[:, 0] < wide._features(x)[:, 0]).all()
