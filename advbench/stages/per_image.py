"""Per-image columns that cells write beside their artefacts and the store keeps (export)."""

from __future__ import annotations

import numpy as np

from advbench.engine.detect import LabelledSet
from advbench.plan import Cell
from advbench.stages.context import CellContext

SPLIT_NAMES = np.array(["train", "dev", "eval", "unused"])  # index -1 (held out) is the last


def detector_columns(ctx: CellContext, cell: Cell, data: LabelledSet, decision: np.ndarray | None = None,
                     scores: np.ndarray | None = None, label: np.ndarray | None = None) -> dict[str, np.ndarray]:
    ids = ctx.clean_arrays(cell)["ids"]
    n = len(data.y)
    nan = np.full(n, np.nan)
    missing = np.full(n, -1)
    return {"source": ids[data.source].astype(str), "origin": data.origin.astype(str),
            "split": SPLIT_NAMES[data.split.astype(int)], "y": data.y.astype(np.int64),
            "truth": data.truth.astype(np.int64),
            "score": nan if scores is None else np.asarray(scores, dtype=float),
            "decision": missing if decision is None else np.asarray(decision).astype(np.int64),
            "label": missing if label is None else np.asarray(label).astype(np.int64)}
