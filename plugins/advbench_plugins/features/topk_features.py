"""The paper's two features over top-k labels before/after n operations (§3.2.1, §3.2.2)."""

from __future__ import annotations

import numpy as np

from advbench.plugin import FeatureSpec


def counting_feature(original: np.ndarray, transformed: np.ndarray) -> np.ndarray:
    """C(a), C(b), ...: for each position j of the original top-k, in how many of the n
    operations the label at position j is unchanged. (N, k) -> (N, k)."""
    return (transformed == original[:, None, :]).sum(axis=1).astype(np.float64)


def differences_feature(original: np.ndarray, transformed: np.ndarray) -> np.ndarray:
    """Δ(a, a_i) ... for every operation i and position: 1 where the label changed. -> (N, n*k)."""
    return (transformed != original[:, None, :]).reshape(len(original), -1).astype(np.float64)


FEATURES = [
    FeatureSpec(name="counting", summary="Per top-k position, how many operations keep the label (§3.2.1).",
                default=True, compute=lambda o, t, p: counting_feature(o, t), takes_probs=False),
    FeatureSpec(name="differences", summary="n×k binary matrix: label changed by operation i at position j (§3.2.2).",
                default=True, compute=lambda o, t, p: differences_feature(o, t), takes_probs=False),
]
