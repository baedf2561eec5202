"""Local intrinsic dimensionality (Ma, Li, Wang, Erfani, Wijewickrema, Schoenebeck, Song, Houle,
Bailey, "Characterizing Adversarial Subspaces Using Local Intrinsic Dimensionality", ICLR 2018).

For every probed layer, the LID of an image's activation is estimated by maximum likelihood
(Amsaleg et al. 2015) from its ``k`` nearest neighbours in a reference minibatch of NORMAL
images, ``LID = -(1/k sum_i log(r_i / r_k))^-1``; the per-layer estimates are the detector's
features, standardised, under a logistic regression trained, as the paper's, on normal and
Gaussian-noisy images (label 0) against adversarial ones (label 1).

Layers (``layers = "blocks"``, the default): the paper reads every layer of its CNN; on a ResNet
we read the post-ReLU stem output and every residual block's output (each ends with a ReLU),
then the logits and the softmax (ResNet-20: 12 features). Activations are flattened (the paper).

Reference minibatches: the paper draws them from the images being characterised, test set
included; a deployed detector cannot see the test set's normal images, so ours are drawn from the
NORMAL TRAINING images, once, deterministically: a seeded permutation cut into
``reference_batches`` batches of ``minibatch`` (one batch of 100, the paper's size). Every image,
training or new, is measured against the same batches. An image never has its own source among
its neighbours: when fitting, the core tells each row's source (``FitInfo.sources``), and a
normal, noisy or adversarial training image skips the reference image of the same source (a
normal one: itself; an adversarial one: the image it was made from; the paper's code skips the
nearest neighbour of every image instead); a new image's source is never a training image. Without
the core's sources, an adversarial row's source is taken to be its nearest normal row in pixel
space. A reference at (numerically) zero distance is skipped as well (duplicate images).

Defaults: k = 20 (the paper's CIFAR-10 setting; the dev search can try others), one minibatch of
100. Cost: one classifier pass per image plus k-NN among ``reference_batches * minibatch``
activations per layer; the reference images are kept (uint8) with their source ids and their
activations recomputed on load.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from advbench_plugins.detectors.baselines.activations import (LOGITS, ActivationProbe, image_batches, reduce,
                                                               select_layers)
from advbench_plugins.detectors.baselines.common import (HeadParams, LogisticHead, ModelDetector, check_labels,
                                                        sources_of, with_noisy)


class LIDParams(HeadParams):
    k: int = Field(20, ge=2, description="Nearest neighbours of the LID estimate (the paper: 20 for CIFAR-10; "
                                         "capped at the reference batch size minus 1).")
    minibatch: int = Field(100, ge=3, description="Normal training images per reference minibatch (the paper: 100).")
    reference_batches: int = Field(1, ge=1, description="Reference minibatches the LID is averaged over "
                                                        "(the paper: 1).")
    layers: str = Field("blocks", description="Layers read: 'blocks' (the stem's and every residual block's "
                                              "post-ReLU output; a plain network's children), 'children', "
                                              "'stages', or comma-separated module names / types; the logits and "
                                              "the softmax always.")
    reduce: Literal["flatten", "mean"] = Field("flatten", description="Activation of a layer as a vector: "
                                                                      "'flatten' (the paper) or spatial 'mean'.")


SOFTMAX = "softmax"


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
        self.reference_sources: np.ndarray | None = None
        self.batches: list[np.ndarray] = []
        self.references: dict[str, torch.Tensor] = {}

    def _activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {n: reduce(v, self.params.reduce) for n, v in self.probe(x).items()}
        out[SOFTMAX] = torch.softmax(out[LOGITS].double(), 1)
        return out

    def _prepare_references(self) -> None:
        parts: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for x in image_batches(self.reference_images, self.params.batch_size, self.device):
                for name, value in self._activations(x).items():
                    parts.setdefault(name, []).append(value)
        self.references = {n: torch.cat(v) for n, v in parts.items()}

    def _features(self, x: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(n, layers) LIDs averaged over the reference batches; ``exclude[j]``: the source id
        whose reference images row j may not have as neighbours (-1: none)."""
        columns = []
        ref_sources = None
        if exclude is not None:
            ref_sources = torch.as_tensor(self.reference_sources, device=x.device)
            exclude = exclude.to(x.device)
        for name, act in self._activations(x).items():
            ref = self.references[name]
            estimates = []
            for batch in self.batches:
                index = torch.as_tensor(batch, device=act.device)
                squared, tolerance = pairwise_squared(act, ref[index])
                usable = squared > tolerance
                if exclude is not None:
                    usable &= exclude[:, None] != ref_sources[index][None, :]
                estimates.append(lid_mle(squared, min(self.params.k, len(batch) - 1), usable))
            columns.append(torch.stack(estimates).mean(0))
        return torch.stack(columns, 1)

    def _fit(self, images: np.ndarray, labels, info) -> None:
        y = check_labels(labels, len(images), self.name)
        sources = sources_of(images, y, info)
        normal = np.flatnonzero(y == 0)
        p = self.params
        chosen = reference_indices(len(normal), p.minibatch, p.reference_batches, self.seed)
        keep = normal[np.concatenate(chosen)]
        self.reference_images, self.reference_sources = images[keep], np.asarray(sources[keep], dtype=np.int64)
        starts = np.cumsum([0, *map(len, chosen)])  # batch positions within the kept reference images
        self.batches = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self._prepare_references()
        self.fitted = True
        if p.noisy:
            images, y, sources = with_noisy(images, y, sources, self.seed)
        self.head.fit(self._training_features(images, np.asarray(sources, dtype=np.int64)), y)

    def _training_features(self, images: np.ndarray, sources: np.ndarray) -> torch.Tensor:
        """LIDs of training rows, each without the reference images of its own source."""
        bs = self.params.batch_size
        with torch.no_grad():
            return torch.cat([self._features(x, torch.from_numpy(sources[start:start + bs])).cpu()
                              for start, x in zip(range(0, len(images), bs), image_batches(images, bs, self.device))])

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))

    def _state(self) -> dict[str, torch.Tensor]:
        sizes = torch.tensor([len(b) for b in self.batches])
        return {"reference_images": torch.from_numpy(self.reference_images.copy()), "batch_sizes": sizes,
                "reference_sources": torch.from_numpy(self.reference_sources.copy()), **self.head.state()}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.reference_images = state["reference_images"].numpy()
        self.reference_sources = state["reference_sources"].numpy()
        starts = np.cumsum([0, *state["batch_sizes"].tolist()])
        self.batches = [np.arange(a, b) for a, b in zip(starts[:-1], starts[1:])]
        self.head.load_state(state)
        self._prepare_references()
