"""Detector cells (§3.2, §4): fit on train, choose on dev, score dev and eval.

A held-out cell (``holdout``) trains on the train split of the attacks it has seen and is
scored on the eval split of the unseen one(s) only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advbench.cache import save_arrays, save_columns
from advbench.engine import detect
from advbench.engine.detect import TRAIN
from advbench.plan import IMAGES, Cell
from advbench.stages import detectors
from advbench.stages.context import CellContext, MetricRows
from advbench.stages.per_image import detector_columns


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    data, inputs = detectors.training_data(ctx, cell)
    model, _, extra = detectors.fit(ctx, cell, data, inputs, out)
    if cell.transform != IMAGES:
        extra += [("feature_size", "", float(inputs.shape[1])), ("operations", "", float(data.transformed.shape[1]))]
    pred, scores = np.asarray(model.predict(inputs)), np.asarray(model.scores(inputs), dtype=float)
    save_arrays(out, pred=pred, scores=scores, y=data.y, split=data.split, train_index=np.flatnonzero(data.split == TRAIN))
    logits = model.logits(inputs) if hasattr(model, "logits") else None  # the logit scatter of §4 (Fig. 2)
    if logits is not None:
        save_arrays(out, logits=logits)
    detectors.save(model, out)
    save_columns(out, "per_image", **detector_columns(ctx, cell, data, pred, scores, logits=logits))
    return detect.detection_metrics(data, pred, scores) + extra + detectors.set_aside_normals(ctx, cell, model)

