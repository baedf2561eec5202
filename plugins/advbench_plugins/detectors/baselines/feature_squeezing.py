"""Feature squeezing (Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
Neural Networks", NDSS 2018).

The classifier's softmax on an image is compared with its softmax on squeezed copies; the score
is the largest L1 distance over the squeezers (the paper's joint detector),
``max_s || softmax(f(x)) - softmax(f(s(x))) ||_1``, in [0, 2]. The threshold is the paper's rule:
the value that flags a share ``fpr`` (5 %) of the NORMAL training images; adversarial training
images are not used. ``predict`` = score > threshold.

Defaults: the paper's CIFAR-10 joint detector, all three squeezers: 5-bit depth reduction, a 2x2
median filter (SciPy's window; see :mod:`advbench_plugins.transforms.squeezers`) and non-local
means with search window 13, patch 3, strength 2 ("13-3-2"), computed as the paper's code did by
OpenCV's ``fastNlMeansDenoisingColored(h = hColor = 2, templateWindowSize = 3,
searchWindowSize = 13)`` on the 8-bit image (RGB handed as BGR, as OpenCV expects).

Cost: 1 + (number of squeezers) classifier passes per image; fitting is scoring the normal
training images. ``torch_scores`` gives the same values as ``scores`` and a gradient an adaptive
attack can follow: bit-depth reduction passes the gradient straight through (BPDA, Athalye et al.
2018), the median routes it to the selected pixels, and OpenCV's non-local means, which has no
gradient, is differentiated through a plain NL-means in torch with the same windows and strength
(patch distances averaged over the patch and channels on the 0..255 scale, weights
``exp(-d^2 / h^2)``): its forward value is OpenCV's exactly, its backward pass the smooth
surrogate's (BPDA with a differentiable approximation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from advbench.plugin import to_tensor, to_uint8

from advbench_plugins.detectors.baselines.common import ModelDetector, ModelDetectorParams, check_labels
from advbench_plugins.transforms.squeezers import bit_depth_ste, median_tensor


class FeatureSqueezingParams(ModelDetectorParams):
    bits: int = Field(5, ge=0, le=8, description="Bit depth of the bit-depth squeezer (the paper's CIFAR-10 "
                                                 "setting: 5); 0 = no bit-depth squeezer.")
    median_size: int = Field(2, ge=0, le=15, description="Side of the median-filter squeezer (the paper's "
                                                         "CIFAR-10 setting: 2x2, SciPy's window); 0 = none.")
    nlm: bool = Field(True, description="The non-local-means squeezer (the paper's third CIFAR-10 squeezer; "
                                        "OpenCV's, a torch surrogate for gradients).")
    nlm_search: int = Field(13, ge=3, le=31, description="NL-means search window side (odd; the paper: 13).")
    nlm_patch: int = Field(3, ge=1, le=15, description="NL-means patch side (odd; the paper: 3).")
    nlm_strength: float = Field(2.0, gt=0, description="NL-means filter strength h on the 0..255 scale "
                                                       "(the paper: 2).")
    fpr: float = Field(0.05, gt=0, lt=1, description="Share of the normal training images the threshold flags "
                                                     "(the paper: 5 %).")

    @model_validator(mode="after")
    def _valid_squeezers(self):
        if not (self.bits or self.median_size > 1 or self.nlm):
            raise ValueError("no squeezer left: set bits > 0, median_size > 1 or nlm = true")
        if self.nlm and (self.nlm_search % 2 == 0 or self.nlm_patch % 2 == 0):
            raise ValueError("nlm_search and nlm_patch must be odd")
        return self


def non_local_means(batch: torch.Tensor, search: int = 13, patch: int = 3, strength: float = 2.0) -> torch.Tensor:
    """Plain NL-means (Buades et al. 2005) of a float (N, 3, H, W) batch in [0, 1]: each pixel
    becomes the average of the pixels of its ``search``-wide window, weighted by
    ``exp(-d^2 / strength^2)``, ``d^2`` the mean squared difference (0..255 scale) of the two
    ``patch``-wide neighbourhoods over all channels. Edges replicated. Differentiable."""
    s, p = search // 2, patch // 2
    h, w = batch.shape[-2:]
    padded = F.pad(batch, (s, s, s, s), mode="replicate")
    total = torch.zeros_like(batch)
    weights = torch.zeros_like(batch[:, :1])
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            shifted = padded[..., s + dy:s + dy + h, s + dx:s + dx + w]
            d2 = ((batch - shifted) * 255).square().mean(1, keepdim=True)
            if p:
                d2 = F.avg_pool2d(F.pad(d2, (p, p, p, p), mode="replicate"), patch, stride=1)
            weight = torch.exp(-d2 / strength ** 2)
            total = total + weight * shifted
            weights = weights + weight
    return total / weights


def opencv_non_local_means(batch: torch.Tensor, search: int = 13, patch: int = 3, strength: float = 2.0) -> torch.Tensor:
    """OpenCV's ``fastNlMeansDenoisingColored`` (the paper's squeezer) of each image of a float
    (N, 3, H, W) batch in [0, 1], on its 8-bit rounding; no gradient."""
    import cv2  # opencv-python-headless

    rgb = to_uint8(batch.detach())
    out = [cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(a[..., ::-1]), None, strength, strength, patch,
                                           search)[..., ::-1] for a in rgb]
    return to_tensor(np.stack(out), str(batch.device)).to(batch.dtype)


def nlm_bpda(batch: torch.Tensor, search: int, patch: int, strength: float) -> torch.Tensor:
    """OpenCV's NL-means on the forward pass, the torch NL-means's gradient on the backward one."""
    differentiate = torch.is_grad_enabled() and batch.requires_grad
    smooth = non_local_means(batch, search, patch, strength) if differentiate else batch
    return smooth + (opencv_non_local_means(batch, search, patch, strength) - smooth).detach()


def squeezers(params: FeatureSqueezingParams) -> list[tuple[str, object]]:
    """``(name, differentiable squeezer)`` in the order bits, median, nlm."""
    out: list[tuple[str, object]] = []
    if params.bits:
        out.append((f"bit-depth:{params.bits}", lambda x: bit_depth_ste(x, params.bits)))
    if params.median_size > 1:
        out.append((f"median:{params.median_size}", lambda x: median_tensor(x, params.median_size)))
    if params.nlm:
        out.append(("nlm", lambda x: nlm_bpda(x, params.nlm_search, params.nlm_patch, params.nlm_strength)))
    return out


def fpr_threshold(normal_scores: np.ndarray, fpr: float) -> float:
    """The threshold t with ``scores > t`` true for floor(fpr * n) of the n normal scores (fewer
    when scores tie at t): the (n - k)-th smallest score."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))
    k = int(math.floor(fpr * len(s) + 1e-9))
    return float(s[len(s) - k - 1])


class FeatureSqueezing(ModelDetector):
    name = "feature-squeezing"

    def __init__(self, params: FeatureSqueezingParams, ctx):
        super().__init__(params, ctx)
        self.squeezers = squeezers(params)

    def _fit(self, images: np.ndarray, labels, info) -> None:
        y = check_labels(labels, len(images), self.name, need_both=False)
        self.fitted = True  # scoring below needs no learnt state
        self.threshold = fpr_threshold(self.scores(images[y == 0]), self.params.fpr)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.module(x).float(), 1)
        distances = [(p - torch.softmax(self.module(squeeze(x)).float(), 1)).abs().sum(1)
                     for _, squeeze in self.squeezers]
        return torch.stack(distances, 1).max(1).values

    def _state(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass
