"""The baselines run on the classifiers advbench ships: ResNet-20 (CIFAR) and torchvision ResNets,
both behind advbench's Normalized wrapper (random weights: this checks the plumbing, not the
separation)."""

import numpy as np
import pytest
import torch
import torchvision

from advbench.imaging import to_tensor
from advbench.specs import LoadedModel
from advbench_plugins.detectors.baselines_plugins import DETECTORS
from advbench_plugins.models.cifar_resnet import cifar_resnet
from advbench_plugins.models.loading import IMAGENET_MEAN, IMAGENET_STD, Normalized

SPECS = {s.name: s for s in DETECTORS}
SMALL = {"feature-squeezing": {}, "kernel-density": {"samples": 4}, "lid": {"k": 4, "minibatch": 8},
         "mahalanobis": {"noise": 0.001}}


def loaded(net) -> LoadedModel:
    torch.manual_seed(0)
    module = Normalized(net, IMAGENET_MEAN, IMAGENET_STD).eval().requires_grad_(False)
    return LoadedModel(module=module, input_size=(32, 32), num_classes=10, prepare=lambda im: im)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {"resnet20": loaded(cifar_resnet(20)), "resnet18": loaded(torchvision.models.resnet18(num_classes=10))}


def images(n: int, seed: int, noisy: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (n, 4, 4, 3)).repeat(8, 1).repeat(8, 2)
    if noisy:
        smooth = smooth + rng.integers(-40, 41, smooth.shape)
    return np.clip(smooth, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("arch", ["resnet20", "resnet18"])
@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.slow  # real ResNets
def test_fit_score_and_differentiate_on_a_resnet(name, arch, models, make_ctx, tmp_path):
    ctx = make_ctx(model=models[arch])
    x = np.concatenate([images(12, 0, False), images(12, 1, True)])
    y = np.repeat([0, 1], 12)
    spec = SPECS[name]
    # input pre-processing costs a backward pass per layer: tried on the smaller network only
    params = spec.params(batch_size=10, **{**SMALL[name], **({"noise": 0.0} if arch == "resnet18" and name ==
                                                             "mahalanobis" else {})})
    detector = spec.build(params, ctx).fit(x, y)
    scores = detector.scores(x)
    assert scores.shape == (24,) and np.isfinite(scores).all()
    t = to_tensor(x[:4]).requires_grad_(True)
    differentiable = detector.torch_scores(t)
    assert np.allclose(differentiable.detach().numpy(), scores[:4], rtol=1e-4, atol=1e-4)
    differentiable.sum().backward()
    assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    detector.save(tmp_path / "saved")
    restored = spec.build(params, ctx).load(tmp_path / "saved")
    assert np.allclose(restored.scores(x), scores)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in ctx.model.module.modules())
