"""A model-aware detector in the style of feature squeezing (Xu et al., NDSS 2018): an image is
suspicious when a light blur changes the classifier's softmax a lot.

Written against the documented contract only: ``DetectorSpec(inputs="model")``, built with
``build(params, ctx)`` where ``ctx.model.module`` is the classifier (float images in [0, 1]);
``fit``/``predict``/``scores`` on uint8 (N, H, W, 3) images; the optional ``torch_scores`` +
``threshold`` (adaptive attacks differentiate through them) and ``save``/``load`` (tensors only),
declared on the spec (``differentiable``, ``saves``).
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from advbench.plugin import DetectorSpec, Params, to_tensor


class BlurShiftParams(Params):
    size: int = Field(3, ge=2, le=9, description="Side of the box blur, in pixels.")
    fpr: float = Field(0.05, gt=0, lt=1, description="Share of the normal training images flagged.")


class BlurShiftDetector:
    """Score: L1 distance between the softmax of an image and of its box-blurred copy."""

    def __init__(self, params: BlurShiftParams, ctx):
        self.params, self.module, self.device = params, ctx.model.module, ctx.device
        self.threshold = 0.0

    def torch_scores(self, x: torch.Tensor) -> torch.Tensor:
        k = self.params.size
        blurred = F.avg_pool2d(F.pad(x, (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2), mode="replicate"), k, stride=1)
        return (torch.softmax(self.module(x), 1) - torch.softmax(self.module(blurred), 1)).abs().sum(1)

    def scores(self, images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.torch_scores(to_tensor(images, self.device)).double().cpu().numpy()

    def fit(self, images: np.ndarray, labels: np.ndarray) -> "BlurShiftDetector":
        normal = np.sort(self.scores(images[np.asarray(labels) == 0]))
        flagged = int(self.params.fpr * len(normal))
        self.threshold = float(normal[len(normal) - flagged - 1])
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        return (self.scores(images) > self.threshold).astype(int)

    def save(self, directory) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        torch.save({"threshold": torch.tensor(self.threshold)}, Path(directory) / "threshold.pt")

    def load(self, directory) -> "BlurShiftDetector":
        self.threshold = float(torch.load(Path(directory) / "threshold.pt", weights_only=True)["threshold"])
        return self


BLUR_SHIFT = DetectorSpec(name="example-blur-shift", inputs="model", params=BlurShiftParams, build=BlurShiftDetector,
                          summary="Softmax change under a box blur, feature-squeezing style (example plugin).",
                          differentiable=True, saves=True, selects_on_dev=False, has_logits=False)
