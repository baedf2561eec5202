"""A one-number detector: the mean of the feature vector against the midpoint learnt in training."""

import numpy as np

from advbench.plugin import DetectorSpec


class ThresholdDetector:
    """Flags an image when its mean feature lies on the adversarial side of the training midpoint."""

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "ThresholdDetector":
        means = features.mean(1)
        normal, adversarial = means[labels == 0].mean(), means[labels == 1].mean()
        self.cut = (normal + adversarial) / 2
        self.sign = 1.0 if adversarial > normal else -1.0
        return self

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.sign * (features.mean(1) - self.cut)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return (self.scores(features) > 0).astype(int)


THRESHOLD = DetectorSpec(name="example-threshold", summary="Mean-feature threshold (example plugin).",
                         build=lambda params, seed: ThresholdDetector(),
                         selects_on_dev=False, has_logits=False, differentiable=False, saves=False)
