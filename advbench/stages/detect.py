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
from advbench.engine.detect import TRAIN, UNUSED, LabelledSet
from advbench.execution.context import CellContext, MetricRows
from advbench.plan import IMAGES, PER_ATTACK, Cell
from advbench.specs import DetectorContext, FitInfo, Params
from advbench.stages.inputs import detector_inputs, held_out
from advbench.stages.per_image import detector_columns
from advbench.stages.reference import reference_set


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    every, every_input = _all_rows(ctx, cell)
    data, inputs = _protocol_subset(ctx, cell, every, every_input)
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
    return detect.detection_metrics(data, pred, scores) + extra + set_aside_normals(ctx, cell, model, every, every_input)


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
    """The labelled set a detect cell fits on (a held-out cell's split remapped; a model-aware
    detector's rows from top-1-correct sources only, with ``model_normals = "top-1"``) and its input."""
    return _protocol_subset(ctx, cell, *_all_rows(ctx, cell))


def _protocol_subset(ctx: CellContext, cell: Cell, data: LabelledSet,
                     inputs: np.ndarray) -> tuple[LabelledSet, np.ndarray]:
    keep = protocol_rows(ctx, cell, data)
    if cell.holdout.startswith(PER_ATTACK):  # other attacks' rows: neither trained nor scored on
        keep &= data.split != UNUSED
    if not keep.all():
        data, inputs = data.rows(keep), inputs[keep]
    return data, inputs


def _all_rows(ctx: CellContext, cell: Cell) -> tuple[LabelledSet, np.ndarray]:
    """Every row of the cell's training sets and its input, a held-out cell's split remapped."""
    data, inputs = detector_inputs(ctx, cell, [st.label for st in ctx.plan.training_sets(cell)])
    if cell.holdout:
        data = held_out(data, *ctx.plan.holdout_sets(cell.holdout))
    return data, inputs


def protocol_rows(ctx: CellContext, cell: Cell, data: LabelledSet) -> np.ndarray:
    """Rows a detect cell uses: all, or for a model-aware detector under ``[detection]
    model_normals = "top-1"`` the rows whose source image the classifier gets right at top-1
    (as the detector sees the normal image), normal and adversarial alike."""
    if not selects_top1(ctx, cell):
        return np.ones(len(data.y), dtype=bool)
    return np.isin(data.source, top1_correct_sources(data))


def selects_top1(ctx: CellContext, cell: Cell) -> bool:
    return ctx.spec("detector", cell.detector).inputs == "model" and ctx.bench.detection.model_normals == "top-1"


def set_aside_normals(ctx: CellContext, cell: Cell, detector: Any, data: LabelledSet,
                      inputs: np.ndarray) -> MetricRows:
    """The FPR on the normal eval images a top-1 cell leaves out (their classifier's top-1 is
    wrong), with their count: what a deployed detector meets beside the papers' protocol.
    ``data``/``inputs``: every row of the cell (:func:`_all_rows`)."""
    if not selects_top1(ctx, cell):
        return []
    aside = ~protocol_rows(ctx, cell, data) & (data.split == detect.EVAL) & (data.y == 0)
    if not aside.any():
        return []
    return detect.top1_fpr_rows(data.rows(aside), np.asarray(detector.predict(inputs[aside])))


def top1_correct_sources(data: LabelledSet) -> np.ndarray:
    normal = data.y == 0
    return data.source[normal][data.original[normal, 0] == data.truth[normal]]


def fit_info(ctx: CellContext, cell: Cell, data: LabelledSet) -> FitInfo | None:
    """What a detector whose spec declares ``fit_info`` is told: each row's source and the
    labelled reference set."""
    if not ctx.spec("detector", cell.detector).fit_info:
        return None
    return FitInfo(sources=np.asarray(data.source), reference=reference_set(ctx, cell))


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
    by = spec.select_by
    chosen, detector, dev_values = detect.select_on_dev(
        [partial(build, ctx, cell, c) for c in entry.candidates], inputs, data,
        with_dev=lambda d: detector_can(spec, d, "selects_on_dev"), by=by, info=fit_info(ctx, cell, data))
    if out is not None:
        (out / SEARCH).write_text(json.dumps(
            [{"params": c.model_dump(mode="json"), f"dev_{by}": a, "chosen": i == chosen}
             for i, (c, a) in enumerate(zip(entry.candidates, dev_values))], indent=1))
    rows = [("search_candidates", "", float(len(dev_values)))]
    rows += [(f"chosen_{k}", "", float(v)) for k, v in entry.candidates[chosen].model_dump().items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return detector, entry.candidates[chosen], rows


def fit_on_train(ctx: CellContext, cell: Cell, detector: Any, inputs: np.ndarray, data: LabelledSet) -> None:
    """Fit the cell's (unfitted) detector on train, with dev when its spec says it selects on it."""
    spec = ctx.spec("detector", cell.detector)
    detect.fit_detector(detector, inputs, data, with_dev=detector_can(spec, detector, "selects_on_dev"),
                        info=fit_info(ctx, cell, data))


def trained(ctx: CellContext, detect_cell: Cell) -> Any:
    """The fitted detector of a finished detect cell: reloaded from its artefact when the
    plugin can save itself, else fitted again on the same data with the same seed (and the
    candidate the dev-set search chose)."""
    if detect_cell.key in ctx._fitted:
        return ctx._fitted[detect_cell.key]
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
            # kept for the cell's other evaluation sets: a random forest's skops file took 66 ms to
            # load, once per set; a feature detector is small (an image detector is not kept)
            if ctx.registry.get("detector", entry.plugin).inputs == "features":
                ctx._fitted[detect_cell.key] = detector
            return detector
    data, inputs = training_data(ctx, detect_cell)
    detector = build(ctx, detect_cell, params)
    fit_on_train(ctx, detect_cell, detector, inputs, data)
    return detector
