"""Features over the classifier's full softmax output (contract 1.1: ``compute(..., probs=)``).

``prob-shift``: for each of the n operations, the L1 distance between the softmax vector of the
image under the operation and without it, plus their maximum: (N, n + 1). With the squeezers
(``bit-depth``, ``median``) as the operations, the last column is feature squeezing's score (Xu,
Evans, Qi, NDSS 2018); with any operations it generalises it from squeezers to the image
operations of Nguyen et al. (2019), and the detector on top is any feature detector.
"""

from __future__ import annotations

import numpy as np

from advbench.plugin import FeatureSpec, NoParams, PluginError, Probabilities


def prob_shift(original: np.ndarray, transformed: np.ndarray) -> np.ndarray:
    """Softmax outputs (N, C) without and (N, n, C) under n operations -> (N, n + 1): the L1
    distance per operation, then the maximum over operations (0 when n = 0)."""
    original = np.asarray(original, dtype=np.float64)
    transformed = np.asarray(transformed, dtype=np.float64)
    if transformed.ndim != 3 or original.shape != (transformed.shape[0], transformed.shape[2]):
        raise ValueError(f"prob-shift: expects probabilities (N, C) and (N, n, C), got {original.shape} and "
                         f"{transformed.shape}")
    distances = np.abs(transformed - original[:, None, :]).sum(2)
    largest = distances.max(1, initial=0.0)
    return np.concatenate([distances, largest[:, None]], 1)


def _compute(original: np.ndarray, transformed: np.ndarray, params, probs: Probabilities | None = None) -> np.ndarray:
    if probs is None:
        raise PluginError("prob-shift needs the classifier's softmax outputs: the core passes probs= to a feature "
                          "whose compute() takes it; it got none")
    return prob_shift(probs.original, probs.transformed)


PROB_SHIFT = FeatureSpec(name="prob-shift", params=NoParams, compute=_compute, takes_probs=True,
                         summary="L1 change of the softmax vector under each operation, plus the largest: feature "
                                 "squeezing's score generalised to any operations (Xu et al. 2018).")
