"""Clean selection (§2.1): the images a model classifies correctly (top-k), N of them, seeded."""

from __future__ import annotations

import json
from pathlib import Path

from advbench.cache import save_arrays
from advbench.engine import imagesets
from advbench.errors import DataError
from advbench.plan import Cell
from advbench.execution.context import CellContext, MetricRows


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    source, model = ctx.dataset(cell.dataset), ctx.model(cell.model)
    if len(source.class_names) != model.num_classes:
        raise DataError(f"model {cell.model!r} has {model.num_classes} classes but dataset {cell.dataset!r} "
                        f"has {len(source.class_names)}; restrict the model with 'datasets = [...]'")
    s = ctx.bench.settings
    if s.top_k >= model.num_classes:  # validation catches it where the dataset tells its class count
        raise DataError(f"benchmark.top_k = {s.top_k} leaves no class outside the top-k of model {cell.model!r} "
                        f"({model.num_classes} classes): no non-targeted attack could succeed; choose 1 to "
                        f"{model.num_classes - 1}")
    if ctx.bench.labels_k > model.num_classes:
        raise DataError(f"a feature's k = {ctx.bench.labels_k} is more than the {model.num_classes} classes of model "
                        f"{cell.model!r}; choose k from 1 to {model.num_classes}")
    n = min(s.images_per_model, ctx.plan.max_images or s.images_per_model)
    arrays, metrics = imagesets.select_clean(source, model, top_k=s.top_k, n=n, seed=s.seed, device=ctx.device)
    if metrics["seen"] == 0:
        raise DataError(f"dataset {cell.dataset!r} gave no readable image ({int(metrics['skipped_files'])} files "
                        f"skipped as unreadable); check its 'root' and the image files")
    if metrics["selected"] == 0:
        raise DataError(f"model {cell.model!r} classifies none of the {int(metrics['seen'])} images of dataset "
                        f"{cell.dataset!r} correctly (true label in its top-{s.top_k}); check the class order "
                        f"of the dataset against the model's")
    (out / "ids.json").write_text(json.dumps(arrays.pop("ids").tolist()))
    (out / "classes.json").write_text(json.dumps(list(source.class_names)))
    save_arrays(out, **arrays)
    return [(k, "", float(v)) for k, v in metrics.items()]
