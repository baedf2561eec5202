"""Label correction by voting over the top-k labels of transformed images (paper §3.3).

All three votes are pure functions of the (N, n, k) label array. Ties are broken by the best
rank a label reached in any operation, then by its first appearance (operation order), then
by the smaller label, so results never depend on hashing or sort stability.

With few classes the paper's top-k vote is nearly always "right" by construction: with 10
classes and k = 5, the five most frequent labels cover half of all classes, so a correct
top-k after voting says little. The top-1 majority and the rank-weighted vote are sharper.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from advbench.plugin import CorrectorSpec, NoParams, Params


def _vote(transformed: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    """Top-k labels by total weight; ``weights`` (k,) is the weight of each rank position."""
    n_images, n_ops, width = transformed.shape
    out = np.full((n_images, k), -1, dtype=np.int64)
    for i in range(n_images):
        labels = transformed[i].reshape(-1)
        score: dict[int, float] = {}
        best_rank: dict[int, int] = {}
        first: dict[int, int] = {}
        for position, label in enumerate(labels.tolist()):
            rank = position % width
            score[label] = score.get(label, 0.0) + float(weights[rank])
            best_rank[label] = min(best_rank.get(label, width), rank)
            first.setdefault(label, position)
        ranked = sorted(score, key=lambda lab: (-score[lab], best_rank[lab], first[lab], lab))
        ranked = [lab for lab in ranked if score[lab] > 0][:k]
        out[i, : len(ranked)] = ranked
    return out


def paper_vote(transformed: np.ndarray, k: int) -> np.ndarray:
    """§3.3.1: count every label in every top-k list; the k most frequent are the new top-k."""
    return _vote(transformed, k, np.ones(transformed.shape[2]))


def top1_majority(transformed: np.ndarray, k: int) -> np.ndarray:
    """Only each operation's top-1 votes; the most voted labels form the new ranking."""
    weights = np.zeros(transformed.shape[2])
    weights[0] = 1.0
    return _vote(transformed, k, weights)


def rank_weighted(transformed: np.ndarray, k: int, decay: float = 0.5) -> np.ndarray:
    """A label at rank r (0-based) earns ``decay ** r``: agreement at the top counts most."""
    return _vote(transformed, k, decay ** np.arange(transformed.shape[2]))


class RankWeightedParams(Params):
    decay: float = Field(0.5, gt=0, le=1, description="Weight of rank r is decay**r (1 = the paper's vote).")


CORRECTORS = [
    CorrectorSpec(name="vote", summary="The paper's vote: the k most frequent labels over all top-k lists (§3.3.1).",
                  params=NoParams, default=True, correct=lambda t, k, p: paper_vote(t, k)),
    CorrectorSpec(name="top1-majority", summary="Majority of each operation's top-1 label.",
                  params=NoParams, default=True, correct=lambda t, k, p: top1_majority(t, k)),
    CorrectorSpec(name="rank-weighted", summary="Votes weighted by rank: decay**rank.",
                  params=RankWeightedParams, default=True, correct=lambda t, k, p: rank_weighted(t, k, p.decay)),
]
