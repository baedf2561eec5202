"""Mahalanobis confidence (Lee, Lee, Lee, Shin, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018).

Per probed layer, an image's feature vector is the layer's output averaged over space (the
paper's pooling). Layers (``layers = "stages"``, the default): the paper's list for ResNets, the
post-ReLU stem output and the output of every residual stage (ResNet-20: 16, 16, 32, 64
channels); the last stage's mean is the penultimate feature, counted once. Class-conditional
Gaussians with one covariance shared by all classes (tied) are estimated from the core's
labelled reference set with its TRUE labels (``FitInfo.reference``; the paper used the
classifier's training set), or without one from the normal training images under their
predicted class: class means ``mu_c`` and the pseudo-inverse of the pooled within-class
covariance (the paper's EmpiricalCovariance on centred features). The layer's confidence score
is ``M(x) = max_c -(f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)``.

Input pre-processing (the paper's eq. 4): ``x' = x - noise * sign(grad_x (f(x) - mu_c')^T
Sigma^-1 (f(x) - mu_c'))``, ``c'`` the closest class, in pixel units of [0, 1] images (the
paper's code scales the step by 1/std in normalised space: the same step in pixel space), no
clipping; then ``M(x')``. One gradient per layer. The paper chose ``noise`` from {0, 0.0005,
0.001, 0.0014, 0.002, 0.005, 0.01} by the validation AUROC: the core's dev search does that
(``search = { noise = [...] }``; the spec declares ``select_by = "auroc"``). Default 0.0.

The per-layer scores, standardised, go to a logistic regression (the paper's "feature
ensemble"), trained on normal and Gaussian-noisy images (label 0) against adversarial ones
(label 1), as the paper's. Score = its log-odds of 'adversarial'. Without a reference set, a
normal training image is scored by Gaussians fitted without it (5-fold cross-fitting), as a new
image is. Cost: one classifier pass per image (plus one backward and one forward pass per layer
with ``noise > 0``); the fitted state is the class means and one precision matrix per layer.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from advbench.plugin import DataError

from advbench_plugins.detectors.baselines.activations import (LOGITS, ActivationProbe, collect, has_stages,
                                                               image_batches, reduce, select_layers)
from advbench_plugins.detectors.baselines.common import (HeadParams, LogisticHead, ModelDetector, check_labels,
                                                        sources_of, with_noisy)


#: folds of the normal training images when scoring them for the logistic regression
CROSS_FIT_FOLDS = 5


class MahalanobisParams(HeadParams):
    noise: float = Field(0.0, ge=0, description="Input pre-processing step in [0, 1] pixel units (the paper's grid: "
                                                "0 ... 0.01, chosen by validation AUROC); 0 = none.")
    layers: str = Field("stages", description="Layers read: 'stages' (the stem's post-ReLU output and every residual "
                                              "stage's output; a plain network's children and its penultimate features), 'children', 'blocks', or "
                                              "comma-separated module names / types.")


def tied_gaussian(features: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(class ids present, their means (c, D), the pseudo-inverse of the pooled within-class
    covariance (D, D)), in float64."""
    f = features.double()
    present = torch.unique(classes)
    means = torch.stack([f[classes == c].mean(0) for c in present])
    centred = f - means[torch.searchsorted(present, classes)]
    covariance = centred.T @ centred / len(f)
    return present, means, torch.linalg.pinv(covariance, hermitian=True)


def squared_mahalanobis(f: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N, c) squared Mahalanobis distances of rows of ``f`` to each class mean."""
    diff = f.double()[:, None, :] - means[None]
    return torch.einsum("ncd,de,nce->nc", diff, precision, diff)


class Mahalanobis(ModelDetector):
    name = "mahalanobis"

    def __init__(self, params: MahalanobisParams, ctx):
        super().__init__(params, ctx)
        # a ResNet's last stage averaged over space is its penultimate feature already; a plain
        # network's children are not: the paper's final feature is added for it
        self.probe = ActivationProbe(self.module, select_layers(self.module, params.layers),
                                     penultimate=not has_stages(self.module))
        self.head = LogisticHead(params.C, params.balanced)
        self.gaussians: list[tuple[torch.Tensor, torch.Tensor]] = []  # (means, precision), in probe order

    def _layer_vectors(self, x: torch.Tensor) -> list[torch.Tensor]:
        vectors = [reduce(v, "mean") for n, v in self.probe(x).items() if n != LOGITS]
        if self.gaussians and len(vectors) != len(self.gaussians):
            raise DataError(f"{self.name}: the classifier gives {len(vectors)} layers, the fitted detector "
                            f"{len(self.gaussians)}: fitted on another model?")
        return vectors

    def _confidence(self, layer: int, f: torch.Tensor) -> torch.Tensor:
        """(N,) the layer's Mahalanobis confidence score: minus the closest squared distance."""
        means, precision = self.gaussians[layer]
        return -squared_mahalanobis(f, means.to(f.device), precision.to(f.device)).min(1).values

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, layers) Mahalanobis confidence scores, after pre-processing when noise > 0."""
        if self.params.noise == 0:
            return torch.stack([self._confidence(i, v) for i, v in enumerate(self._layer_vectors(x))], 1)
        with torch.enable_grad():  # one forward pass, one backward pass per layer
            probe_x = x.detach().requires_grad_(True)
            vectors = self._layer_vectors(probe_x)
            last = len(vectors) - 1
            signs = [torch.autograd.grad(-self._confidence(i, v).sum(), probe_x, retain_graph=i < last)[0].sign()
                     for i, v in enumerate(vectors)]
        # the step direction is piecewise constant in x: gradients flow through the second pass only
        return torch.stack([self._confidence(i, self._layer_vectors(x - self.params.noise * sign)[i])
                            for i, sign in enumerate(signs)], 1)

    def _fit(self, images: np.ndarray, labels, info) -> None:
        y = check_labels(labels, len(images), self.name)
        sources = sources_of(images, y, info)
        reference = info.reference if info is not None else None
        self.fitted = True
        if self.params.noisy:
            images, y, sources = with_noisy(images, y, sources, self.seed)
        if reference is not None:
            found = collect(self.probe, reference.images, self.params.batch_size, self.device, how="mean")
            classes = torch.as_tensor(reference.labels, dtype=torch.long)
            self.gaussians = [tied_gaussian(f, classes)[1:] for n, f in found.features.items() if n != LOGITS]
            features = self._score_images(images)
        else:
            features = self._cross_fitted(images, y, np.asarray(labels))
        self.head.fit(features, y)

    def _cross_fitted(self, images: np.ndarray, y: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        """Scores of every row under Gaussians of the (original) normal training rows; a normal
        row's from Gaussians fitted without it (5 folds): the in-sample distances are too small."""
        normal = np.flatnonzero(y == 0)[:int((labels == 0).sum())]  # noisy rows come last
        found = collect(self.probe, images[normal], self.params.batch_size, self.device, how="mean")
        layers, classes = [f for n, f in found.features.items() if n != LOGITS], found.predicted
        features = torch.zeros(len(images), len(layers), dtype=torch.float64)
        folds = np.random.default_rng(self.seed).permutation(len(normal)) % min(CROSS_FIT_FOLDS, len(normal))
        for fold in np.unique(folds):
            rest = torch.from_numpy(folds != fold)
            self.gaussians = [tied_gaussian(f[rest], classes[rest])[1:] for f in layers]
            features[normal[folds == fold]] = self._score_images(images[normal[folds == fold]])
        self.gaussians = [tied_gaussian(f, classes)[1:] for f in layers]
        others = np.setdiff1d(np.arange(len(images)), normal)
        features[others] = self._score_images(images[others])
        return features

    def _score_images(self, images: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            parts = [self._features(x).double().cpu()
                     for x in image_batches(images, self.params.batch_size, self.device)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.gaussians), dtype=torch.float64)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))

    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"layer{i}.means": m for i, (m, _) in enumerate(self.gaussians)}
        state.update({f"layer{i}.precision": p for i, (_, p) in enumerate(self.gaussians)})
        return {**state, **self.head.state()}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        count = sum(1 for k in state if k.endswith(".means"))
        self.gaussians = [(state[f"layer{i}.means"], state[f"layer{i}.precision"]) for i in range(count)]
        self.head.load_state(state)
