"""Kernel density and Bayesian uncertainty (Feinman, Curtin, Shintre, Gardner, "Detecting
adversarial samples from artifacts", arXiv:1703.00410, 2017).

Two features per image, combined by a logistic regression trained on the train split, as the
paper does (its LR is trained on normal, adversarial and noisy images; here on the normal and
adversarial images the core gives, labels 0/1):

- **KD**: the log of a Gaussian kernel density of the image's penultimate features (the input
  of the classifier's last linear layer) among the NORMAL training images of the class the
  classifier predicts for it: ``log (1/n_c) sum_i exp(-||z - z_i||^2 / (2 bandwidth^2))``
  (the kernel's normalising constant dropped: it is the same for every image). Low density =
  off the data manifold. Features are centred on the normal training images and divided by
  their overall spread (the root of the mean per-dimension variance) times sqrt(D): a rescaling
  of the paper's Euclidean geometry after which the mean squared distance between two normal
  images is 2 whatever the layer width D. The bandwidth is on that scale (the paper's CIFAR-10
  value, 0.26, was for its raw features and does not transfer; per-dimension standardisation
  would blow up units that normal images never use). Default 0.3: of 0.1/0.3/1.0 it was within
  0.01 AUROC of the best on CIFAR-10 ResNet-20 (BIM and FGSM) and 0.86-0.90 against 0.69-0.81
  for 1.0 on four variants of the tiny test world. A class without normal training
  images uses all of them. A normal training image is left out of its own density (leave one
  out), else it would meet itself at distance 0 in training but never at test time.
- **BU**: Bayesian uncertainty by Monte-Carlo dropout (Gal & Ghahramani 2016), the variance of
  the T softmax outputs summed over classes, ``mean_t ||y_t||^2 - ||mean_t y_t||^2``. The
  paper's networks had dropout layers; ours usually do not. ``dropout = "head"`` (what
  ``"auto"`` picks for a classifier without ``nn.Dropout``) drops the penultimate features with
  rate ``p`` before the last linear layer (one network pass, T cheap heads);
  ``dropout = "model"`` (what ``"auto"`` picks when the classifier has dropout layers) runs
  the whole classifier T times with its own dropout layers active at their own rates. The T
  dropout masks are drawn once from the seed and shared by all images, so scores do not depend
  on how images are batched and stay differentiable. Paper defaults: T = 50, p = 0.5.

Both features are z-scored on the train split, then the logistic regression (scikit-learn,
``C``) gives the score (log-odds of 'adversarial'; threshold 0). Cost: one classifier pass
per image (T with ``dropout = "model"``) plus distances to the normal training features.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from advbench_plugins.detectors.baselines.activations import (LOGITS, PENULTIMATE, ActivationProbe, collect,
                                                               image_batches, last_linear)
from advbench_plugins.detectors.baselines.common import HeadParams, LogisticHead, ModelDetector, check_labels


class KernelDensityParams(HeadParams):
    bandwidth: float = Field(0.3, gt=0, description="Gaussian kernel bandwidth on the standardised, "
                                                    "sqrt(D)-scaled penultimate features (the paper's 0.26 was "
                                                    "for its raw CIFAR-10 features).")
    samples: int = Field(50, ge=2, description="Monte-Carlo dropout samples T (the paper: 50).")
    p: float = Field(0.5, gt=0, lt=1, description="Dropout rate of the penultimate features with dropout = 'head'.")
    dropout: Literal["auto", "head", "model"] = Field(
        "auto", description="Where MC dropout acts: 'head' (the penultimate features), 'model' (the classifier's "
                            "own dropout layers), 'auto' (model when it has dropout layers, else head).")


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances, differentiable everywhere (no square root)."""
    return (a.square().sum(1, keepdim=True) + b.square().sum(1)[None] - 2 * a @ b.T).clamp_min(0)


def log_class_density(z: torch.Tensor, classes: torch.Tensor, ref: torch.Tensor, ref_classes: torch.Tensor,
                      bandwidth: float, leave_out: torch.Tensor | None = None) -> torch.Tensor:
    """log (1/n_c) sum_{i in c} exp(-||z - ref_i||^2 / (2 h^2)) per row, ``c`` the row's class
    (all references when the class has none). ``leave_out[j]`` = index of row j among the
    references, or -1: that reference is left out of the row's sum."""
    log_kernel = -squared_distances(z, ref) / (2 * bandwidth ** 2)
    member = classes[:, None] == ref_classes[None, :]
    if leave_out is not None:
        own = torch.zeros_like(member)
        rows = torch.nonzero(leave_out >= 0).flatten()
        own[rows, leave_out[rows]] = True
        member &= ~own
        everyone = ~own
    else:
        everyone = torch.ones_like(member)
    member = torch.where(member.any(1, keepdim=True), member, everyone)
    masked = log_kernel.masked_fill(~member, -math.inf)
    return torch.logsumexp(masked, 1) - torch.log(member.sum(1).to(log_kernel.dtype))


def uncertainty(probabilities: torch.Tensor) -> torch.Tensor:
    """(T, N, C) softmax samples -> (N,) ``mean_t ||y_t||^2 - ||mean_t y_t||^2``."""
    return probabilities.square().sum(2).mean(0) - probabilities.mean(0).square().sum(1)


class _FixedDropout:
    """Forward hooks that make the classifier's dropout layers apply the t-th of T fixed masks
    (drawn on first use from the seed, one per layer and sample, shared by all images)."""

    def __init__(self, module: nn.Module, seed: int):
        self.layers = [(n, m) for n, m in module.named_modules()
                       if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        self.seed = seed
        self.masks: dict[tuple[int, int], torch.Tensor] = {}

    def mask(self, layer: int, t: int, shape: torch.Size, p: float, device) -> torch.Tensor:
        key = (layer, t)
        if key not in self.masks or self.masks[key].shape != shape:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + layer * 1009 + t)
            self.masks[key] = (torch.rand(shape, generator=gen) >= p).float() / (1 - p)
        return self.masks[key].to(device)

    def run(self, fn, t: int):
        def hook(index, p):
            return lambda _m, inputs, _out: inputs[0] * self.mask(index, t, inputs[0].shape[1:], p, inputs[0].device)
        handles = [m.register_forward_hook(hook(i, m.p)) for i, (_, m) in enumerate(self.layers)]
        try:
            return fn()
        finally:
            for h in handles:
                h.remove()


class KernelDensity(ModelDetector):
    name = "kernel-density"

    def __init__(self, params: KernelDensityParams, ctx):
        super().__init__(params, ctx)
        self.probe = ActivationProbe(self.module, penultimate=True)
        self.linear = dict(self.module.named_modules())[last_linear(self.module)]
        self.model_dropout = _FixedDropout(self.module, self.seed)
        mode = params.dropout
        if mode == "auto":
            mode = "model" if self.model_dropout.layers else "head"
        self.mode = mode
        self.head = LogisticHead(params.C, params.balanced)
        self.ref = self.ref_classes = self.mean = self.scale = self.masks = None

    # -- features -----------------------------------------------------------------------

    def _standardise(self, h: torch.Tensor) -> torch.Tensor:
        d = h.device
        return (h - self.mean.to(d)) / (self.scale.to(d) * math.sqrt(h.shape[1]))

    def _head_masks(self, dim: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        keep = torch.rand((self.params.samples, dim), generator=gen) >= self.params.p
        return keep.float() / (1 - self.params.p)

    def _uncertainty(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "head":
            dropped = h[None] * self.masks.to(h.device)[:, None, :]  # (T, N, D)
            logits = self.linear(dropped)
        else:
            logits = torch.stack([self.model_dropout.run(lambda: self.module(x), t)
                                  for t in range(self.params.samples)])
        return uncertainty(torch.softmax(logits.float(), 2))

    def _features(self, x: torch.Tensor, leave_out: torch.Tensor | None = None) -> torch.Tensor:
        out = self.probe(x)
        h, logits = out[PENULTIMATE], out[LOGITS]
        d = h.device
        density = log_class_density(self._standardise(h), logits.argmax(1), self.ref.to(d), self.ref_classes.to(d),
                                    self.params.bandwidth, None if leave_out is None else leave_out.to(d))
        return torch.stack([density, self._uncertainty(x, h)], 1)

    # -- the detector -------------------------------------------------------------------

    def _fit(self, images: np.ndarray, labels) -> None:
        y = check_labels(labels, len(images), self.name)
        normal = images[y == 0]
        found = collect(self.probe, normal, self.params.batch_size, self.device)
        h = found.features[PENULTIMATE]
        # one scale for all dimensions (the root of the mean variance): the paper's Euclidean
        # geometry, rescaled; per-dimension scaling would blow up units that normal images never use
        self.mean = h.mean(0)
        self.scale = h.var(0, unbiased=False).mean().sqrt().clamp_min(1e-12).reshape(1)
        self.ref, self.ref_classes = self._standardise(h), found.predicted
        self.masks = self._head_masks(h.shape[1])
        # each normal training image is reference number position-among-normals: left out of its own sum
        position = np.full(len(images), -1)
        position[y == 0] = np.arange(len(normal))
        features, bs = [], self.params.batch_size
        with torch.no_grad():
            for start, x in zip(range(0, len(images), bs), image_batches(images, bs, self.device)):
                features.append(self._features(x, torch.from_numpy(position[start:start + bs])).cpu())
        self.head.fit(torch.cat(features), y)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))

    def _state(self) -> dict[str, torch.Tensor]:
        return {"ref": self.ref, "ref_classes": self.ref_classes, "mean": self.mean, "scale": self.scale,
                "masks": self.masks, **self.head.state()}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.ref, self.ref_classes, self.mean, self.scale = state["ref"], state["ref_classes"], state["mean"], state["scale"]
        self.masks = state["masks"]
        self.head.load_state(state)
