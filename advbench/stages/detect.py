"""Detector cells (§3.2, §4): fit on train, choose on dev, score dev and eval; and the fitted
detectors that score and adaptive cells reload (:func:`trained`).

A held-out cell (``holdout``) trains on the train split of the attacks it has seen and is
scored on the eval split of the unseen one(s) only.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from advbench.abilities import detector_can
from advbench.cache import save_arrays, save_columns
from advbench.engine import detect
from advbench.engine.detect import TRAIN, LabelledSet
from advbench.execution.context import CellContext, MetricRows
from advbench.plan import IMAGES, Cell
from advbench.specs import DetectorContext, Params
from advbench.stages.inputs import detector_inputs, held_out
from advbench.stages.per_image import detector_columns


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    data, inputs = training_data(ctx, cell)
    model, _, extra = fit(ctx, cell, data, inputs, out)
    if cell.feature_group != IMAGES:
        extra += [("feature_size", "", float(inputs.shape[1])), ("operations", "", float(data.transformed.shape[1]))]
    pred, scores = np.asarray(model.predict(inputs)), np.asarray(model.scores(inputs), dtype=float)
    save_arrays(out, pred=pred, scores=scores, y=data.y, split=data.split, train_index=np.flatnonzero(data.split == TRAIN))
    spec = ctx.spec("detector", cell.detector)
    logits = model.logits(inputs) if detector_can(spec, model, "has_logits") else None  # the logit scatter of §4 (Fig. 2)
    if logits is not None:
        save_arrays(out, logits=logits)
    if detector_can(spec, model, "saves"):
        (out / SAVED).mkdir()
        model.save(out / SAVED)
    save_columns(out, "per_image", **detector_columns(ctx, cell, data, pred, scores, logits=logits))
    return detect.detection_metrics(data, pred, scores) + extra


# --- building, fitting and reloading detectors (detect, score and adaptive cells) ------------

SAVED = "detector"  # folder of a fitted detector's own files (Detector.save)
SEARCH = "search.json"


def build(ctx: CellContext, cell: Cell, params: Params) -> Any:
    """An unfitted detector; model-aware ones get the classifier in a DetectorContext."""
    entry = ctx.entry("detector", cell.detector)
    spec = ctx.registry.get("detector", entry.plugin)
    seed = ctx.bench.settings.seed
    if spec.inputs == "model":
        base = ctx.build_context("detector", entry.plugin)
        return spec.build(params, DetectorContext(cache_dir=base.cache_dir, device=base.device, seed=seed,
                                                  model=ctx.model(cell.model)))
    return spec.build(params, seed)


def training_data(ctx: CellContext, cell: Cell) -> tuple[LabelledSet, np.ndarray]:
    """The labelled set a detect cell fits on (a held-out cell's split remapped) and its input."""
    sets = [st.label for st in ctx.plan.training_sets(cell)]
    data, inputs = detector_inputs(ctx, cell, sets)
    if cell.holdout:
        data = held_out(data, *ctx.plan.holdout_sets(cell.holdout))
    return data, inputs


def fit(ctx: CellContext, cell: Cell, data: LabelledSet, inputs: np.ndarray,
        out: Path | None = None) -> tuple[Any, Params, MetricRows]:
    """Fit the cell's detector (with the dev-set search when configured); returns the fitted
    detector, the parameters it was built with, and rows describing the search."""
    entry = ctx.entry("detector", cell.detector)
    if not entry.candidates:
        detector = build(ctx, cell, entry.params)
        fit_on_train(ctx, cell, detector, inputs, data)
        return detector, entry.params, []
    spec = ctx.spec("detector", cell.detector)
    chosen, detector, dev_accuracies = detect.select_on_dev(
        [partial(build, ctx, cell, c) for c in entry.candidates], inputs, data,
        with_dev=lambda d: detector_can(spec, d, "selects_on_dev"))
    if out is not None:
        (out / SEARCH).write_text(json.dumps(
            [{"params": c.model_dump(mode="json"), "dev_accuracy": a, "chosen": i == chosen}
             for i, (c, a) in enumerate(zip(entry.candidates, dev_accuracies))], indent=1))
    rows = [("search_candidates", "", float(len(dev_accuracies)))]
    rows += [(f"chosen_{k}", "", float(v)) for k, v in entry.candidates[chosen].model_dump().items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return detector, entry.candidates[chosen], rows


def fit_on_train(ctx: CellContext, cell: Cell, detector: Any, inputs: np.ndarray, data: LabelledSet) -> None:
    """Fit the cell's (unfitted) detector on train, with dev when its spec says it selects on it."""
    spec = ctx.spec("detector", cell.detector)
    detect.fit_detector(detector, inputs, data, with_dev=detector_can(spec, detector, "selects_on_dev"))


def trained(ctx: CellContext, detect_cell: Cell) -> Any:
    """The fitted detector of a finished detect cell: reloaded from its artefact when the
    plugin can save itself, else fitted again on the same data with the same seed (and the
    candidate the dev-set search chose)."""
    directory = ctx.cache.path("detect", detect_cell.key)
    entry = ctx.entry("detector", detect_cell.detector)
    params = entry.params
    if entry.candidates and (directory / SEARCH).exists():
        trials = json.loads((directory / SEARCH).read_text())
        params = entry.candidates[next(i for i, t in enumerate(trials) if t["chosen"])]
    if (directory / SAVED).is_dir():
        detector = build(ctx, detect_cell, params)
        if detector_can(ctx.spec("detector", detect_cell.detector), detector, "saves"):
            detector.load(directory / SAVED)
            return detector
    data, inputs = training_data(ctx, detect_cell)
    detector = build(ctx, detect_cell, params)
    fit_on_train(ctx, detect_cell, detector, inputs, data)
    return detector
