"""Per-image columns that cells write beside their artefacts and the store keeps (export)."""

from __future__ import annotations

import numpy as np

from advbench.engine.detect import LabelledSet
from advbench.plan import Cell
from advbench.execution.context import CellContext

SPLIT_NAMES = np.array(["train", "dev", "eval", "unused"])  # index -1 (held out) is the last


def detector_columns(ctx: CellContext, cell: Cell, data: LabelledSet, decision: np.ndarray | None = None,
                     scores: np.ndarray | None = None, label: np.ndarray | None = None,
                     logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Origin (source image, imageset, split, truth) of every row of ``data`` and what a cell said
    of it; columns a cell has nothing for are left out."""
    ids = ctx.clean_arrays(cell, mmap=True)["ids"]
    columns = {"source": ids[data.source].astype(str), "origin": data.origin.astype(str),
               "split": SPLIT_NAMES[data.split.astype(int)], "y": data.y.astype(np.int64),
               "truth": data.truth.astype(np.int64)}
    if scores is not None:
        columns["score"] = np.asarray(scores, dtype=float)
    if decision is not None:
        columns["decision"] = np.asarray(decision).astype(np.int64)
    if label is not None:
        columns["label"] = np.asarray(label).astype(np.int64)
    if logits is not None:
        columns["logit_0"], columns["logit_1"] = np.asarray(logits, dtype=float).T[:2]
    return columns
