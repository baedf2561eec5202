"""check_model_detector (advbench.testing) passes a sound detector and catches broken ones; the
baselines are registered as model-aware detectors outside the default set."""

import numpy as np
import pytest
import torch

from advbench.imaging import to_tensor
from advbench.specs import DetectorSpec
from advbench.testing import check_model_detector, registry_with, tiny_adversarial_world

BASELINES = ("feature-squeezing", "kernel-density", "lid", "mahalanobis")


class BlurShiftDetector:
    """Score = L1 change of the softmax under a 3x3 box blur; threshold halfway between the
    class means of the training scores. ``flaw`` breaks one promise of the contract."""

    def __init__(self, ctx, flaw: str = ""):
        self.module, self.flaw, self.threshold = ctx.model.module, flaw, 0.0

    def shift(self, x):
        blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return (torch.softmax(self.module(x), 1) - torch.softmax(self.module(blurred), 1)).abs().sum(1)

    def torch_scores(self, x):
        return self.shift(x) + (0.5 if self.flaw == "torch-differs" else 0.0)

    def scores(self, images):
        if self.flaw == "random":
            return np.random.default_rng().random(len(images))
        with torch.no_grad():
            return self.shift(to_tensor(images)).double().numpy()

    def fit(self, images, labels):
        if self.flaw == "hook":
            self.module.register_forward_hook(lambda *a: None)
        s = self.scores(images)
        self.threshold = float((s[labels == 0].mean() + s[labels == 1].mean()) / 2)
        return self

    def predict(self, images):
        return (self.scores(images) > self.threshold).astype(int)


def spec(flaw: str = "") -> DetectorSpec:
    return DetectorSpec(name=f"blur-shift{'-' + flaw if flaw else ''}", summary="test", inputs="model",
                        build=lambda params, ctx: BlurShiftDetector(ctx, flaw))


def test_a_sound_detector_passes_and_its_auroc_is_returned():
    assert 0.65 <= check_model_detector(spec()) <= 1.0


@pytest.mark.parametrize("flaw, message", [("random", "AUROC|same seed"), ("torch-differs", "torch_scores and scores"),
                                           ("hook", "hooks left")])
def test_a_broken_detector_fails(flaw, message):
    try:
        with pytest.raises(AssertionError, match=message):
            check_model_detector(spec(flaw), min_auroc=0.0)  # reach the checks after the AUROC
    finally:  # the "hook" flaw leaves a hook on the shared tiny model: take it off
        from advbench.testing import tiny_model
        for m in tiny_model().module.modules():
            m._forward_hooks.clear()


def test_a_feature_detector_is_refused():
    with pytest.raises(AssertionError, match="inputs = 'model'"):
        check_model_detector(DetectorSpec(name="x", summary="x", build=lambda p, s: None))


def test_the_planted_adversarials_fool_the_tiny_model():
    from advbench.testing import tiny_model

    normal, adversarial = tiny_adversarial_world()
    assert len(normal) == len(adversarial) >= 200
    with torch.no_grad():
        a = tiny_model().module(to_tensor(normal)).argmax(1)
        b = tiny_model().module(to_tensor(adversarial)).argmax(1)
    assert (a != b).all()
    assert np.abs(normal.astype(int) - adversarial.astype(int)).max() <= round(0.1 * 255)


def test_the_baselines_are_registered_as_model_aware_detectors_outside_the_default_set():
    registry = registry_with()
    for name in BASELINES:
        spec = registry.get("detector", name)
        assert spec.inputs == "model" and spec.sees_images and not spec.default
