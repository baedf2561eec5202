"""Predictions (§3.1): top-k labels and probabilities of an image set under one operation.

A cell per operation is the unit of caching; the operations of one image set that are ready
together (every one but the original, which they read) are predicted in one pipelined call
(:func:`compute_many`): the first chunk of each operation is prepared while the model runs on
the last chunk of the one before. The arrays are the very ones of one call per operation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from advbench.cache import save_arrays
from advbench.engine import predict
from advbench.errors import DataError
from advbench.execution.context import CellContext, MetricRows
from advbench.plan import CLEAN, ORIGINAL, Cell


def _operation(ctx: CellContext, cell: Cell) -> predict.Operation:
    """(Pillow op, tensor op) of a cell's operation; (None, None) for the original."""
    return (None, None) if cell.operation == ORIGINAL else backend_operation(ctx, cell.operation)


def backend_operation(ctx: CellContext, label: str) -> predict.Operation:
    """(Pillow op, tensor op) of an operation on the configured prediction backend."""
    entry = ctx.entry("transform", label)
    spec = ctx.registry.get("transform", entry.plugin)
    if ctx.bench.prediction.backend == "tensor":
        if spec.apply_tensor is None:
            raise DataError(f"transform plugin {entry.plugin!r} has no tensor backend; use prediction.backend = 'pillow'")
        return None, lambda batch: spec.apply_tensor(batch, entry.params)
    return (lambda image: spec.apply(image, entry.params)), None


def _rows(ctx: CellContext, result: dict[str, np.ndarray], keep_labels: np.ndarray, seconds: float) -> MetricRows:
    # the rule's k, not the features': Table 3 counts labels that left the benchmark's top-k
    labels = result["labels"][:, :ctx.bench.settings.top_k]
    return [("topk_misclassified", "", float(predict.topk_misclassified(labels, keep_labels))),
            ("images", "", float(len(labels))), ("seconds", "", seconds)]


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    return compute_many(ctx, [cell], [out])[0]


def compute_many(ctx: CellContext, cells: Sequence[Cell], outs: Sequence[Path]) -> list[MetricRows]:
    """The cells of one image set (the original alone, or operations that read it) in one
    call; ``seconds`` of each is the time from the previous operation's result to its own."""
    first = cells[0]
    if len(cells) > 1 and any(c.operation == ORIGINAL for c in cells):  # the others read it: it goes first
        at = next(i for i, c in enumerate(cells) if c.operation == ORIGINAL)
        rest = [i for i in range(len(cells)) if i != at]
        done = {at: compute(ctx, cells[at], outs[at])}
        done |= dict(zip(rest, compute_many(ctx, [cells[i] for i in rest], [outs[i] for i in rest])))
        return [done[i] for i in range(len(cells))]
    images, source = ctx.imageset_arrays(first, first.imageset)
    clean = ctx.clean_arrays(first, mmap=True)
    keep_labels = clean["labels"][source] if first.imageset == CLEAN else clean["top1"][source]
    reference = None if first.operation == ORIGINAL else ctx.predictions(first, first.imageset, ORIGINAL)
    operations = [_operation(ctx, c) for c in cells]
    results = predict.predict_under_operations(
        ctx.model(first.model), images, operations, top_k=ctx.bench.labels_k,
        batch_size=ctx.bench.prediction.batch_size, device=ctx.device, reference=reference)
    rows = []
    t0 = time.perf_counter()
    for out, result in zip(outs, results):
        seconds = time.perf_counter() - t0
        save_arrays(out, **result)
        rows.append(_rows(ctx, result, keep_labels, seconds))
        t0 = time.perf_counter()
    return rows
