"""Operation-subset search (the paper's cost question): greedy forward selection of image
operations on dev for one detector and feature, each subset size then scored on eval.

Each step adds the operation whose addition gives the best dev accuracy (ties: the cheaper
operation, then config order). The cost of a subset is the measured prediction time of its
operations (seconds per 1,000 images, from the predict cells of the training sets).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from advbench import metrics as M
from advbench.abilities import takes_probs
from advbench.engine.detect import DEV, EVAL, LabelledSet
from advbench.execution.context import CellContext, MetricRows
from advbench.plan import ORIGINAL, Cell
from advbench.stages import detect
from advbench.stages.inputs import feature_matrix, labelled_set


def op_costs(ctx: CellContext, cell: Cell, ops: list[str]) -> dict[str, float]:
    """Seconds per 1,000 images of each operation's prediction cells (over the training sets)."""
    costs = {}
    for op in ops:
        seconds = images = 0.0
        for st in ctx.plan.training_sets(cell):
            key = ctx.plan.key("predict", cell.dataset, cell.model, st.label, op)
            rows = {(n, s): v for n, s, v in ctx.cache.metrics("predict", key).get("metrics", [])}
            seconds += rows.get(("seconds", ""), 0.0)
            images += rows.get(("images", ""), 0.0)
        costs[op] = 1000 * seconds / images if images else float("nan")
    return costs


def _columns(data: LabelledSet, chosen: list[int]) -> LabelledSet:
    probs = None if data.probs is None else type(data.probs)(data.probs.original, data.probs.transformed[:, chosen])
    return LabelledSet(data.original, data.transformed[:, chosen], data.y, data.split, data.origin, data.truth,
                       data.images, data.source, probs)


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    search = next(s for s in ctx.bench.detection.subset_search
                  if (s.detector, s.feature, s.group) == (cell.detector, cell.feature, cell.feature_group))
    ops = [t.label for t in ctx.plan.group_ops(cell.feature_group)]
    feature = ctx.entry("feature", cell.feature)
    wants_probs = takes_probs(ctx.registry.get("feature", feature.plugin))
    data = labelled_set(ctx, cell, [st.label for st in ctx.plan.training_sets(cell)], cell.feature_group,
                        k=ctx.bench.feature_k(feature), with_probs=wants_probs)
    costs = op_costs(ctx, cell, [ORIGINAL, *ops])
    chosen: list[int] = []
    steps = []
    dev, ev = data.split == DEV, data.split == EVAL
    for size in range(1, min(search.max_operations, len(ops)) + 1):
        best = None
        for i in (i for i in range(len(ops)) if i not in chosen):
            subset = _columns(data, [*chosen, i])
            inputs = feature_matrix(ctx, cell.feature, subset)
            model = detect.build(ctx, cell, ctx.entry("detector", cell.detector).params)
            detect.fit_on_train(ctx, cell, model, inputs, subset)
            pred = np.asarray(model.predict(inputs))
            candidate = (M.accuracy(subset.y[dev], pred[dev]), -costs[ops[i]], -i)
            if best is None or candidate > best[0]:
                best = (candidate, i, M.accuracy(subset.y[ev], pred[ev]))
        assert best is not None
        chosen.append(best[1])
        steps.append({"size": size, "added": ops[best[1]], "dev_accuracy": best[0][0], "accuracy": best[2],
                      "seconds_per_1000": costs[ORIGINAL] + sum(costs[ops[j]] for j in chosen)})
    (out / "subset.json").write_text(json.dumps(steps, indent=1))
    rows: MetricRows = [("candidates", "", float(len(ops)))]
    for step in steps:
        where = f"{step['size']:02d} +{step['added']}"
        rows += [("accuracy", where, step["accuracy"]), ("dev_accuracy", where, step["dev_accuracy"]),
                 ("seconds_per_1000", where, step["seconds_per_1000"])]
    return rows
