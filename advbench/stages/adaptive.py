"""Adaptive attacks: attackers who know the defense (Carlini & Wagner 2017; Athalye et al. 2018;
Tramèr et al. 2020). The cell rebuilds the targeted defense from its trained artefacts, hands it
to the attack as ``ctx.defense``, and writes the adversarial images through the same save ->
reload -> re-verify path as every attack, on the eval split's sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advbench.abilities import detector_can, takes_probs
from advbench.config import Entry, Target
from advbench.differentiable import differentiable_operation, straight_through
from advbench.imaging import jpeg_roundtrip, to_tensor, to_uint8
from advbench.plan import IMAGES, Cell
from advbench.specs import Defense, Probabilities
from advbench.stages import attack, detect
from advbench.execution.context import CellContext, MetricRows
from advbench.stages.correct import corrected_labels

Batch = Callable[[torch.Tensor], torch.Tensor]


def entry_and_target(ctx: CellContext, cell: Cell) -> tuple[Entry, Target]:
    entry = next(e for e in ctx.bench.adaptive if e.label == cell.entry)
    return entry, next(t for t in entry.targets if t.label == cell.target)


def operations(ctx: CellContext, group: str) -> tuple[list[Batch], list[Batch]]:
    """(differentiable ops, forward-only ops) of a group, as batch functions."""
    diff, plain = [], []
    for t in ctx.plan.group_ops(group):
        spec = ctx.registry.get("transform", t.plugin)
        diff.append(differentiable_operation(spec, t.params))
        plain.append(lambda x, spec=spec, p=t.params: spec.apply_tensor(x, p))
    return diff, plain


def _labels_under(model: Any, ops: list[Batch], x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Top-k labels of the (uint8-rounded) batch without and under each op, and the probabilities."""
    with torch.no_grad():
        x = torch.round(x.clamp(0, 1) * 255) / 255
        outs = [torch.softmax(model(x).float(), 1)] + [torch.softmax(model(op(x).clamp(0, 1)).float(), 1) for op in ops]
    labels = [o.topk(k, 1).indices.cpu().numpy() for o in outs]
    return labels[0], np.stack(labels[1:], axis=1), [o.cpu().numpy() for o in outs]


def feature_flags(ctx: CellContext, cell: Cell, det_cell: Cell, detector: Any, plain: list[Batch]) -> Batch:
    """A feature detector's decision on a float batch: labels under the group's operations
    (tensor backend, forward only), the feature, the fitted detector."""
    model = ctx.model(cell.model).module
    feature = ctx.entry("feature", det_cell.feature)
    spec = ctx.registry.get("feature", feature.plugin)
    k = ctx.bench.feature_k(feature)

    def flags(x: torch.Tensor) -> torch.Tensor:
        original, transformed, probs = _labels_under(model, plain, x, k)
        kwargs = {"probs": Probabilities(probs[0], np.stack(probs[1:], axis=1))} if takes_probs(spec) else {}
        features = np.asarray(spec.compute(original, transformed, feature.params, **kwargs), dtype=np.float64)
        return torch.from_numpy(np.asarray(detector.predict(features)) == 1).to(x.device)

    return flags


def image_flags(detector: Any) -> Batch:
    return lambda x: torch.from_numpy(np.asarray(detector.predict(to_uint8(x))) == 1).to(x.device)


def storage(image_format: str, jpeg_quality: int) -> Batch:
    """The database's save -> reload as a straight-through batch op (the very bytes the attack
    stage writes and re-verifies: 8-bit rounding, then the file format)."""

    def save_and_reload(x: torch.Tensor) -> torch.Tensor:
        arrays = to_uint8(x)
        if image_format == "jpeg":
            arrays = np.stack([jpeg_roundtrip(a, jpeg_quality) for a in arrays])
        return to_tensor(arrays, x.device)

    return straight_through(save_and_reload, "storage")


def build_defense(ctx: CellContext, cell: Cell, target: Target) -> Defense:
    if target.kind == "operations":
        diff, _ = operations(ctx, target.group)
        return Defense("operations", target.label, operations=tuple(diff))
    if target.kind == "detector":
        det_cell = ctx.plan.by_key[ctx.plan.detect_key(cell.dataset, cell.model, target.detector, target.feature,
                                                       target.group)]
        return detector_defense(ctx, cell, det_cell, target.label)
    pipe_key = ctx.plan.pipeline_key(cell.dataset, cell.model)
    det_cell = ctx.plan.by_key[pipe_key]
    base = detector_defense(ctx, cell, det_cell, target.label)
    group = ctx.bench.correction_groups()[0]
    diff, plain = operations(ctx, group)
    corrector = ctx.bench.correctors[0].label
    model = ctx.model(cell.model).module
    k = ctx.bench.settings.top_k

    def correct(x: torch.Tensor) -> torch.Tensor:
        _, transformed, _ = _labels_under(model, plain, x, k)
        return torch.from_numpy(corrected_labels(ctx, corrector, transformed, k)[:, 0]).to(x.device)

    return Defense("pipeline", target.label, operations=tuple(diff), detector_scores=base.detector_scores,
                   threshold=base.threshold, flags=base.flags, correct=correct, top_k=base.top_k or k)


def detector_defense(ctx: CellContext, cell: Cell, det_cell: Cell, name: str) -> Defense:
    detector = detect.trained(ctx, det_cell)
    if det_cell.feature_group == IMAGES:
        differentiable = detector_can(ctx.spec("detector", det_cell.detector), detector, "differentiable")
        scores = detector.torch_scores if differentiable else None
        return Defense("detector", name, detector_scores=scores, threshold=float(detector.threshold if differentiable else 0.0),
                       flags=image_flags(detector))
    diff, plain = operations(ctx, det_cell.feature_group)
    return Defense("detector", name, operations=tuple(diff), flags=feature_flags(ctx, cell, det_cell, detector, plain),
                   top_k=ctx.bench.feature_k(ctx.entry("feature", det_cell.feature)))


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    return compute_many(ctx, [cell], [out])[0]


def compute_many(ctx: CellContext, cells: Sequence[Cell], outs: Sequence[Path]) -> list[MetricRows]:
    """The points of one adaptive budget grid against one target, ready together, in one call."""
    _, target = entry_and_target(ctx, cells[0])
    db = ctx.bench.database
    defense = dataclasses.replace(build_defense(ctx, cells[0], target), storage=storage(db.image_format, db.jpeg_quality))
    base = attack.attack_context(ctx, cells, ctx.bench.adaptive)
    return attack.run(ctx, cells, outs, ctx.bench.adaptive, dataclasses.replace(base, defense=defense))
