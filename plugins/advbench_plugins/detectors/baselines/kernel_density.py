"""Kernel density and Bayesian uncertainty (Feinman, Curtin, Shintre, Gardner, "Detecting
adversarial samples from artifacts", arXiv:1703.00410, 2017).

Two features per image, combined by a logistic regression trained, as the paper's, on normal
and Gaussian-noisy images (label 0) against adversarial ones (label 1):

- **KD**: the log of a Gaussian kernel density of the image's penultimate features (the input
  of the classifier's last linear layer, raw, as the paper's last hidden layer) among the
  reference images of the class the classifier predicts for it: ``log (1/n_c) sum_i
  exp(-||z - z_i||^2 / (2 bandwidth^2))``. The reference images are the core's labelled
  reference set (``FitInfo.reference``, true labels: the paper used the classifier's training
  set) or, without one, the normal training images under their predicted class (each left out
  of its own density). ``bandwidth = 0`` (default) chooses it by leave-one-out
  cross-validation of the reference features' likelihood over a grid relative to their median
  distance (the paper's 0.26 was chosen so for its own CIFAR-10 features; it does not transfer).
- **BU**: Bayesian uncertainty by Monte-Carlo dropout (Gal & Ghahramani 2016), the variance of
  the T softmax outputs summed over classes, ``mean_t ||y_t||^2 - ||mean_t y_t||^2``. The
  paper's networks were trained with dropout. A classifier without ``nn.Dropout`` (ResNet-20)
  gets dropout with rate ``p`` on its penultimate features before the last linear layer
  (``dropout = "head"``, what ``"auto"`` picks then): a perturbation of a network never trained
  with it, not the posterior sampling the paper relies on; ``features = "kd"`` / ``"bu"`` report
  each feature alone so its share shows. ``dropout = "model"`` (auto with dropout layers) runs the
  classifier T times with its own dropout layers. The T masks are drawn once from the seed and
  shared by all images, so scores do not depend on batching and stay differentiable. T = 50,
  p = 0.5 (the paper's).

The features are z-scored on the training rows, then the logistic regression (scikit-learn,
``C``) gives the score (log-odds of 'adversarial'; threshold 0). Cost: one classifier pass
per image (T with ``dropout = "model"``) plus distances to the reference features.
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
from advbench_plugins.detectors.baselines.common import (HeadParams, LogisticHead, ModelDetector, check_labels,
                                                        sources_of, with_noisy)


class KernelDensityParams(HeadParams):
    bandwidth: float = Field(0.0, ge=0, description="Gaussian kernel bandwidth in the units of the penultimate "
                                                    "features; 0 (default): chosen by leave-one-out cross-validation "
                                                    "of the class densities' likelihood on their reference images.")
    features: Literal["kd+bu", "kd", "bu"] = Field(
        "kd+bu", description="Which features the logistic regression combines: kernel density and Bayesian "
                             "uncertainty (the paper), or either alone.")
    samples: int = Field(50, ge=2, description="Monte-Carlo dropout samples T (the paper: 50).")
    p: float = Field(0.5, gt=0, lt=1, description="Dropout rate of the penultimate features with dropout = 'head'.")
    dropout: Literal["auto", "head", "model"] = Field(
        "auto", description="Where MC dropout acts: 'head' (the penultimate features), 'model' (the classifier's "
                            "own dropout layers), 'auto' (model when it has dropout layers, else head).")


#: bandwidths tried by the cross-validation, as multiples of the median distance between reference features
BANDWIDTH_GRID = np.geomspace(0.02, 2.0, 25)


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


def cross_validated_bandwidth(ref: torch.Tensor, classes: torch.Tensor) -> float:
    """The bandwidth of :data:`BANDWIDTH_GRID` (times the median distance between reference
    features) that maximises the leave-one-out log-likelihood of the reference features under
    their class's Gaussian kernel density (the normalising constant included: it sets the
    trade-off), the cross-validation by which the paper chose its bandwidth."""
    f = ref.double()
    squared = squared_distances(f, f)
    off = ~torch.eye(len(f), dtype=torch.bool)
    scale = float(squared[off].sqrt().median()) or 1.0
    same = (classes[:, None] == classes[None, :]) & off
    usable = same.sum(1) > 0
    if not usable.any():
        return scale
    best, best_ll = scale, -math.inf
    for h in BANDWIDTH_GRID * scale:
        log_kernel = (-squared / (2 * h * h)).masked_fill(~same, -math.inf)
        ll = torch.logsumexp(log_kernel[usable], 1) - torch.log(same[usable].sum(1).double()) - f.shape[1] * math.log(h)
        if float(ll.sum()) > best_ll:
            best, best_ll = float(h), float(ll.sum())
    return best


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
        self.ref = self.ref_classes = self.masks = None
        self.bandwidth = params.bandwidth

    # -- features -----------------------------------------------------------------------

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
        columns = []
        if self.params.features != "bu":
            columns.append(log_class_density(h.double(), logits.argmax(1), self.ref.to(d), self.ref_classes.to(d),
                                             self.bandwidth, None if leave_out is None else leave_out.to(d)))
        if self.params.features != "kd":
            columns.append(self._uncertainty(x, h).double())
        return torch.stack(columns, 1)

    # -- the detector -------------------------------------------------------------------

    def _fit(self, images: np.ndarray, labels, info) -> None:
        y = check_labels(labels, len(images), self.name)
        sources = sources_of(images, y, info)
        reference = info.reference if info is not None else None
        if reference is not None:  # the paper: the classifier's labelled training set
            found = collect(self.probe, reference.images, self.params.batch_size, self.device)
            self.ref_classes = torch.as_tensor(reference.labels, dtype=torch.long)
        else:  # the normal training images, classes as predicted (the core's normals are top-1 right)
            found = collect(self.probe, images[y == 0], self.params.batch_size, self.device)
            self.ref_classes = found.predicted
        self.ref = found.features[PENULTIMATE].double()
        self.masks = self._head_masks(self.ref.shape[1])
        if self.bandwidth == 0:
            self.bandwidth = cross_validated_bandwidth(self.ref, self.ref_classes)
        if self.params.noisy:
            images, y, sources = with_noisy(images, y, sources, self.seed)
        # without a separate reference set, a normal training image is left out of its own density
        position = np.full(len(images), -1)
        if reference is None:
            normal = np.flatnonzero(y == 0)[:int((np.asarray(labels) == 0).sum())]
            position[normal] = np.arange(len(normal))
        features, bs = [], self.params.batch_size
        with torch.no_grad():
            for start, x in zip(range(0, len(images), bs), image_batches(images, bs, self.device)):
                features.append(self._features(x, torch.from_numpy(position[start:start + bs])).cpu())
        self.head.fit(torch.cat(features), y)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))

    def _state(self) -> dict[str, torch.Tensor]:
        return {"ref": self.ref, "ref_classes": self.ref_classes, "masks": self.masks,
                "bandwidth": torch.tensor(self.bandwidth, dtype=torch.float64), **self.head.state()}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.ref, self.ref_classes, self.masks = state["ref"], state["ref_classes"], state["masks"]
        self.bandwidth = float(state["bandwidth"])
        self.head.load_state(state)
