"""The inputs of detector, scoring and correction cells, read from other cells' artefacts."""

from __future__ import annotations

import numpy as np

from advbench.abilities import takes_probs

from advbench.engine.detect import EVAL, UNUSED, LabelledSet
from advbench.plan import CLEAN, IMAGES, ORIGINAL, Cell
from advbench.specs import Probabilities
from advbench.execution.context import CellContext


def labelled_set(ctx: CellContext, cell: Cell, sets: list[str], group: str, *, with_images: bool = False,
                 k: int | None = None, with_probs: bool = False) -> LabelledSet:
    """Normal then adversarial images of ``sets`` (image set labels), in a fixed order: top-k
    labels without and under each operation of ``group`` (the first ``k``), origin, split,
    truth; the images and full probabilities when asked for."""
    ops = [] if group in (IMAGES, "") else [t.label for t in ctx.plan.group_ops(group)]
    split = ctx.split(cell)
    clean = ctx.clean_arrays(cell, mmap=True)
    parts = []
    for label in sets:
        images, source = ctx.imageset_arrays(cell, label)
        original = ctx.predictions(cell, label, ORIGINAL)[:, :k]
        transformed = np.stack([ctx.predictions(cell, label, op)[:, :k] for op in ops], axis=1) if ops and len(original) \
            else np.zeros((len(original), len(ops), original.shape[1]), np.int32)
        if with_probs:
            p_original = ctx.predictions(cell, label, ORIGINAL, "full").astype(np.float32)
            p_ops = np.stack([ctx.predictions(cell, label, op, "full") for op in ops], axis=1).astype(np.float32) \
                if ops and len(original) else np.zeros((len(original), len(ops), p_original.shape[1]), np.float32)
        else:
            p_original = p_ops = np.zeros((len(original), 0), np.float32)
        parts.append((original, transformed, np.full(len(source), int(label != CLEAN)), split[source],
                      np.full(len(source), label, dtype=object), clean["labels"][source],
                      np.asarray(images) if with_images else np.zeros((len(source), 0)), np.asarray(source),
                      p_original, p_ops))
    cols = [np.concatenate(p) for p in zip(*parts)]
    probs = Probabilities(cols[8], cols[9]) if with_probs else None
    return LabelledSet(*cols[:8], probs=probs)


def held_out(data: LabelledSet, trained_on: list[str], scored_on: list[str]) -> LabelledSet:
    """The split of a held-out detector cell: train and dev rows of the attacks it trains on,
    eval rows of the attacks it is scored on (and normal images everywhere); other rows unused."""
    seen = np.isin(data.origin, [CLEAN, *trained_on])
    unseen = np.isin(data.origin, [CLEAN, *scored_on])
    split = np.where(data.split == EVAL, np.where(unseen, EVAL, UNUSED), np.where(seen, data.split, UNUSED))
    return LabelledSet(data.original, data.transformed, data.y, split.astype(data.split.dtype), data.origin,
                       data.truth, data.images, data.source, data.probs)


def feature_matrix(ctx: CellContext, feature_label: str, data: LabelledSet) -> np.ndarray:
    """A feature plugin applied to a labelled set (``probs=`` when its signature asks)."""
    entry = ctx.entry("feature", feature_label)
    if not len(data.original):  # an empty evaluation set: plugins need not handle zero rows
        return np.zeros((0, 0))
    spec = ctx.registry.get("feature", entry.plugin)
    kwargs = {"probs": data.probs} if takes_probs(spec) else {}
    return np.asarray(spec.compute(data.original, data.transformed, entry.params, **kwargs), dtype=np.float64)


def detector_inputs(ctx: CellContext, cell: Cell, sets: list[str]) -> tuple[LabelledSet, np.ndarray]:
    """(labelled set, detector input) of a detect-like cell over ``sets``: images for
    detectors that see them, the feature matrix otherwise."""
    if cell.feature_group == IMAGES:
        data = labelled_set(ctx, cell, sets, IMAGES, with_images=True)
        return data, data.images
    feature = ctx.entry("feature", cell.feature)
    wants_probs = takes_probs(ctx.registry.get("feature", feature.plugin))
    data = labelled_set(ctx, cell, sets, cell.feature_group, k=ctx.bench.feature_k(feature), with_probs=wants_probs)
    return data, feature_matrix(ctx, cell.feature, data)

