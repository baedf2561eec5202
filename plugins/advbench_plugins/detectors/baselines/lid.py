"""Local intrinsic dimensionality (Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle,
Bailey, "Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality", ICLR 2018).

For every probed layer, the LID of an image's activation is estimated by maximum likelihood
(Amsaleg et al. 2015) from its ``k`` nearest neighbours in a reference minibatch of NORMAL
images, ``LID = -(1/k sum_i log(r_i / r_k))^-1``; the per-layer estimates are the detector's
features, standardised, under a logistic regression trained on the train split (the paper's
LogisticRegressionCV on normal, adversarial and noisy images; here normal and adversarial as
the core gives them, with ``C`` for the core's dev search).

Reference minibatches: the paper draws them from the images being characterised; a deployed
detector cannot see the test set's normal images, so ours are drawn from the NORMAL TRAINING
images, once, deterministically: a seeded permutation cut into ``reference_batches`` batches
of ``batch_size`` (default one batch of 100, the paper's minibatch size; fewer normal images =
one smaller batch). Every image (training or new, normal or adversarial) is measured against
the same batches and its LID averaged over them, so training and test features are computed
alike. An image is never its own neighbour: a reference at (numerically) zero distance is
skipped, which leaves a normal reference image k neighbours among the other ones. Likewise an
adversarial training image does not get its source as a neighbour (a test image's source is
never in the reference): when fitting, its nearest normal training image in pixel space, its
likely source, is excluded (:func:`nearest_rows`); without that the logistic regression learns
from adversarial LIDs pulled down by their sources (tiny world: eval AUROC 0.72 instead of 0.78).

Defaults: k = 20 (the paper tried 10-30 per dataset), one minibatch of 100, layers = the
top-level children of the network plus the logits (the paper used every layer's output:
convolutions, activations, pooling, dense), activations flattened as in the paper
(``reduce = "mean"`` averages feature maps over space instead, for large inputs). Cost: one
classifier pass per image plus k-NN among ``reference_batches * batch_size`` activations per
layer; the reference images are kept (uint8) and their activations recomputed on load.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from advbench_plugins.detectors.baselines.activations import (ActivationProbe, collect, image_batches, reduce,
                                                               select_layers)
from advbench_plugins.detectors.baselines.common import HeadParams, LogisticHead, ModelDetector, check_labels


class LIDParams(HeadParams):
    k: int = Field(20, ge=2, description="Nearest neighbours of the LID estimate (the paper: 20 for CIFAR-10; "
                                         "capped at the reference batch size minus 1).")
    minibatch: int = Field(100, ge=3, description="Normal training images per reference minibatch (the paper: 100).")
    reference_batches: int = Field(1, ge=1, description="Reference minibatches the LID is averaged over "
                                                        "(the paper: 1).")
    layers: str = Field("children", description="Layers read: 'children' (the network's top-level children), "
                                                "or comma-separated module names / types; the logits always.")
    reduce: Literal["flatten", "mean"] = Field("flatten", description="Activation of a layer as a vector: "
                                                                      "'flatten' (the paper) or spatial 'mean'.")


def lid_mle(squared: torch.Tensor, k: int, usable: torch.Tensor) -> torch.Tensor:
    """LID maximum-likelihood estimates from squared distances (n, m) to m references: the k
    smallest ``usable`` (n, m) distances are the neighbours (fewer when some row has fewer usable
    references: a reference batch barely larger than k). Differentiable in ``squared``."""
    k = max(1, min(k, int(usable.sum(1).min())))
    ranked = squared.masked_fill(~usable, float("inf")).topk(k, dim=1, largest=False).values
    # log(r_i / r_k) = (log d_i - log d_k) / 2 with d = r^2
    logs = ranked.clamp_min(1e-30).log()
    mean_log_ratio = 0.5 * (logs - logs[:, -1:]).mean(1)
    return -1.0 / mean_log_ratio.clamp_max(-1e-12)


def pairwise_squared(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distances (n, m) in float64 and the tolerance under which a pair is one image."""
    a, b = a.double(), b.double()
    na, nb = a.square().sum(1, keepdim=True), b.square().sum(1)[None]
    squared = (na + nb - 2 * a @ b.T).clamp_min(0)
    return squared, 1e-9 * (na + nb) + 1e-20


def nearest_rows(images: np.ndarray, candidates: np.ndarray, chunk: int = 256) -> np.ndarray:
    """For each image, the index of the nearest candidate in pixel space (L2): the likely
    source of an adversarial image among the normal training images."""
    c = torch.from_numpy(candidates.reshape(len(candidates), -1)).double()
    out = []
    for start in range(0, len(images), chunk):
        a = torch.from_numpy(images[start:start + chunk].reshape(-1, c.shape[1])).double()
        out.append(pairwise_squared(a, c)[0].argmin(1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def reference_indices(n_normal: int, minibatch: int, batches: int, seed: int) -> list[np.ndarray]:
    """Indices (among the normal training images) of each reference minibatch: a seeded
    permutation cut into ``batches`` batches of ``minibatch`` (as many full ones as there are
    images for; at least one, possibly smaller)."""
    order = np.random.default_rng(seed).permutation(n_normal)
    full = min(batches, n_normal // minibatch)
    if full == 0:
        return [np.sort(order)]
    return [np.sort(order[i * minibatch:(i + 1) * minibatch]) for i in range(full)]


class LID(ModelDetector):
    name = "lid"

    def __init__(self, params: LIDParams, ctx):
        super().__init__(params, ctx)
        self.probe = ActivationProbe(self.module, select_layers(self.module, params.layers))
        self.head = LogisticHead(params.C, params.balanced)
        self.reference_images: np.ndarray | None = None
        self.batches: list[np.ndarray] = []
        self.references: dict[str, torch.Tensor] = {}

    def _prepare_references(self) -> None:
        found = collect(self.probe, self.reference_images, self.params.batch_size, self.device, self.params.reduce)
        self.references = {n: v.to(self.device) for n, v in {**found.features, "logits": found.logits}.items()}

    def _features(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(n, layers) LIDs averaged over the reference batches; ``exclude[j]`` = a reference
        (index into the reference images) that row j may not have as a neighbour, or -1."""
        columns = []
        for name, value in self.probe(x).items():
            act = reduce(value, self.params.reduce)
            ref = self.references[name]
            estimates = []
            for batch in self.batches:
                index = torch.as_tensor(batch, device=act.device)
                squared, tolerance = pairwise_squared(act, ref[index])
                usable = squared > tolerance
                if exclude is not None:
                    usable &= exclude.to(act.device)[:, None] != index[None, :]
                estimates.append(lid_mle(squared, min(self.params.k, len(batch) - 1), usable))
            columns.append(torch.stack(estimates).mean(0))
        return torch.stack(columns, 1)

    def _fit(self, images: np.ndarray, labels) -> None:
        y = check_labels(labels, len(images), self.name)
        normal = images[y == 0]
        p = self.params
        chosen = reference_indices(len(normal), p.minibatch, p.reference_batches, self.seed)
        keep = np.concatenate(chosen)
        self.reference_images = normal[keep]
        # batch positions within the kept reference images
        starts = np.cumsum([0, *map(len, chosen)])
        self.batches = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self._prepare_references()
        self.fitted = True
        exclude = np.full(len(images), -1)
        exclude[np.flatnonzero(y == 0)[keep]] = np.arange(len(keep))
        adversarial = np.flatnonzero(y == 1)
        exclude[adversarial] = nearest_rows(images[adversarial], self.reference_images)
        bs = p.batch_size
        with torch.no_grad():
            features = torch.cat([self._features(x, torch.from_numpy(exclude[start:start + bs])).cpu()
                                  for start, x in zip(range(0, len(images), bs),
                                                      image_batches(images, bs, self.device))])
        self.head.fit(features, y)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))

    def _state(self) -> dict[str, torch.Tensor]:
        sizes = torch.tensor([len(b) for b in self.batches])
        return {"reference_images": torch.from_numpy(self.reference_images.copy()), "batch_sizes": sizes,
                **self.head.state()}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.reference_images = state["reference_images"].numpy()
        starts = np.cumsum([0, *state["batch_sizes"].tolist()])
        self.batches = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self.head.load_state(state)
        self._prepare_references()
