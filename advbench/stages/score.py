"""Score cells: a trained detector, corrector or detect-then-correct pipeline on one evaluation
set (a budget of an attack grid, or an adaptive attack), on its eval images.

For an adversarial image the defended system is fooled when the classifier is fooled (every
image of the set is, after its save and re-check) and the defense does not undo it: the
detector does not flag it, or the corrected label is still wrong (a pipeline undoes an image
only when it flags it *and* corrects it to the true label). ``system_success`` is the share of
the attacked eval images that end fooled.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from advbench.cache import save_columns
from advbench.engine.detect import EVAL
from advbench.plan import IMAGES, Cell
from advbench.stages import detect
from advbench.execution.context import CellContext, MetricRows
from advbench.stages.correct import corrected_labels
from advbench.stages.inputs import detector_inputs, labelled_set
from advbench.stages.per_image import detector_columns


def detect_cell_of(ctx: CellContext, cell: Cell) -> Cell:
    """The detect cell whose detector a score cell applies."""
    group = cell.feature_group
    feature = "" if group == IMAGES else cell.feature
    key = ctx.plan.detect_key(cell.dataset, cell.model, cell.detector, feature, "" if group == IMAGES else group)
    return ctx.plan.by_key[key]


def attempted(ctx: CellContext, cell: Cell) -> float:
    """How many eval images the attack that made this set attacked."""
    maker = ctx.plan.imageset(cell).key
    record = ctx.cache.metrics(ctx.plan.by_key[maker].stage, maker)
    return {(n, s): v for n, s, v in record.get("metrics", [])}.get(("attempted", ""), float("nan"))


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    tried = attempted(ctx, cell)
    rows: MetricRows = [("attempted", "", tried)]
    flagged = scores = corrected = None
    if cell.detector:
        det_cell = detect_cell_of(ctx, cell)
        detector = detect.trained(ctx, det_cell)
        data, inputs = detector_inputs(ctx, replace(det_cell, imageset=cell.imageset), [cell.imageset])
        mask = data.split == EVAL
        empty = not mask.any()  # an attack may succeed on no eval image: nothing to score
        scored = inputs[mask]  # one array for both calls: detectors reuse a pass on the same object
        flagged = np.zeros(0, int) if empty else np.asarray(detector.predict(scored)).astype(int)
        scores = np.zeros(0) if empty else np.asarray(detector.scores(scored), dtype=float)
        rows += [("detection_rate", "", _mean(flagged)), ("detected", "", float(flagged.sum())),
                 ("mean_score", "", _mean(scores))]
    if cell.corrector:
        k = ctx.bench.settings.top_k
        data = labelled_set(ctx, cell, [cell.imageset], cell.correction_group, k=k)
        mask = data.split == EVAL
        corrected = corrected_labels(ctx, cell.corrector, data.transformed[mask], k)[:, 0]
        rows.append(("top1_restored", "", _mean(corrected == data.truth[mask])))
    undone = system_undone(flagged, corrected, data.truth[mask] if corrected is not None else None, int(mask.sum()))
    fooled = int((~undone).sum())
    rows += [("n", "", float(mask.sum())), ("fooled", "", float(fooled)),
             ("system_success", "", fooled / tried if tried == tried and tried > 0 else float("nan"))]
    save_columns(out, "per_image", **detector_columns(ctx, cell, data.rows(mask), decision=flagged, scores=scores,
                                                      label=corrected))
    return rows


def system_undone(flagged: np.ndarray | None, corrected: np.ndarray | None, truth: np.ndarray | None,
                  n: int | None = None) -> np.ndarray:
    """Which adversarial images the defense undoes: a detector what it flags, a corrector what it
    restores to the true label, a detect-then-correct pipeline what it flags *and* restores."""
    undone = np.ones(n if n is not None else len(flagged if flagged is not None else corrected), dtype=bool)
    if flagged is not None:
        undone &= np.asarray(flagged) == 1
    if corrected is not None:
        undone &= np.asarray(corrected) == truth
    return undone


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
