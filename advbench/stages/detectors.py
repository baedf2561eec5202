"""Building, fitting and reloading detectors: shared by detect, score and adaptive cells."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from advbench.engine import detect
from advbench.engine.detect import LabelledSet
from advbench.plan import Cell
from advbench.specs import DetectorContext, Params
from advbench.stages.context import CellContext, MetricRows
from advbench.stages.inputs import detector_inputs, held_out

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
        detect.fit_detector(detector, inputs, data)
        return detector, entry.params, []
    chosen, detector, dev_accuracies = detect.select_on_dev(
        [partial(build, ctx, cell, c) for c in entry.candidates], inputs, data)
    if out is not None:
        (out / SEARCH).write_text(json.dumps(
            [{"params": c.model_dump(mode="json"), "dev_accuracy": a, "chosen": i == chosen}
             for i, (c, a) in enumerate(zip(entry.candidates, dev_accuracies))], indent=1))
    rows = [("search_candidates", "", float(len(dev_accuracies)))]
    rows += [(f"chosen_{k}", "", float(v)) for k, v in entry.candidates[chosen].model_dump().items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return detector, entry.candidates[chosen], rows


def save(detector: Any, out: Path) -> None:
    if hasattr(detector, "save") and hasattr(detector, "load"):
        (out / SAVED).mkdir()
        detector.save(out / SAVED)


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
        if hasattr(detector, "load"):
            detector.load(directory / SAVED)
            # kept for the cell's other evaluation sets: a random forest's skops file took 66 ms to
            # load, once per set; a feature detector is small (an image detector is not kept)
            if ctx.registry.get("detector", entry.plugin).inputs == "features":
                ctx._fitted[detect_cell.key] = detector
            return detector
    data, inputs = training_data(ctx, detect_cell)
    detector = build(ctx, detect_cell, params)
    detect.fit_detector(detector, inputs, data)
    return detector
