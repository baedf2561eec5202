"""Label correction (§3.3): vote over the labels under a group's operations; with a
[correction] pipeline, correct only what the chosen detector flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advbench.cache import load_array, save_arrays, save_columns
from advbench.engine import correct
from advbench.errors import DataError
from advbench.plan import Cell
from advbench.execution.context import CellContext, MetricRows
from advbench.stages.inputs import labelled_set
from advbench.stages.per_image import detector_columns


def corrected_labels(ctx: CellContext, corrector: str, transformed: np.ndarray, k: int) -> np.ndarray:
    entry = ctx.entry("corrector", corrector)
    return np.asarray(ctx.registry.get("corrector", entry.plugin).correct(transformed, k, entry.params))


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    k = ctx.bench.settings.top_k
    data = labelled_set(ctx, cell, [st.label for st in ctx.plan.training_sets(cell)], cell.correction_group, k=k)
    corrected = corrected_labels(ctx, cell.corrector, data.transformed, data.original.shape[1])
    save_arrays(out, corrected=corrected)
    flagged = None
    pipe = ctx.bench.correction.pipeline
    if pipe is not None:
        key = ctx.plan.pipeline_key(cell.dataset, cell.model)
        if key is None:
            raise DataError(f"correction.pipeline = {pipe.model_dump()} matches no detector cell of "
                            f"{cell.dataset}/{cell.model}: feature detectors need 'feature' and 'group', "
                            f"image detectors neither")
        flagged = load_array(ctx.cache.path("detect", key), "pred")
    save_columns(out, "per_image", **detector_columns(ctx, cell, data, decision=flagged, label=corrected[:, 0]))
    return correct.correction_metrics(data, corrected, flagged)
