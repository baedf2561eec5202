"""Predictions (§3.1): top-k labels and probabilities of an image set under one operation."""

from __future__ import annotations

import time
from pathlib import Path

from advbench.cache import save_arrays
from advbench.engine import predict
from advbench.errors import DataError
from advbench.plan import CLEAN, ORIGINAL, Cell
from advbench.stages.context import CellContext, MetricRows


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    images, source = ctx.imageset_arrays(cell, cell.attack)
    clean = ctx.clean_arrays(cell, mmap=True)
    keep_labels = clean["labels"][source] if cell.attack == CLEAN else clean["top1"][source]
    reference = op = tensor_op = None
    if cell.transform != ORIGINAL:
        entry = ctx.entry("transform", cell.transform)
        spec = ctx.registry.get("transform", entry.plugin)
        reference = ctx.predictions(cell, cell.attack, ORIGINAL)
        if ctx.bench.prediction.backend == "tensor":
            if spec.apply_tensor is None:
                raise DataError(f"transform plugin {entry.plugin!r} has no tensor backend; use prediction.backend = 'pillow'")
            tensor_op = lambda batch: spec.apply_tensor(batch, entry.params)  # noqa: E731
        else:
            op = lambda image: spec.apply(image, entry.params)  # noqa: E731
    t0 = time.perf_counter()
    result = predict.predict_under_operation(
        ctx.model(cell.model), images, top_k=ctx.bench.labels_k, batch_size=ctx.bench.prediction.batch_size,
        device=ctx.device, op=op, tensor_op=tensor_op, reference=reference)
    seconds = time.perf_counter() - t0
    save_arrays(out, **result)
    # the rule's k, not the features': Table 3 counts labels that left the benchmark's top-k
    labels = result["labels"][:, :ctx.bench.settings.top_k]
    return [("topk_misclassified", "", float(predict.topk_misclassified(labels, keep_labels))),
            ("images", "", float(len(images))), ("seconds", "", seconds)]
