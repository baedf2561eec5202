"""The train/dev/eval split (§2.3) by source image, over the clean set and the primary attacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advbench.cache import load_array, save_arrays
from advbench.engine import imagesets
from advbench.plan import Cell
from advbench.execution.context import CellContext, MetricRows


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    n = len(ctx.clean_arrays(cell)["labels"])
    sources = {st.label: load_array(ctx.dir_of(st.key), "source")
               for st in ctx.plan.training_sets(cell) if st.threat != "clean"}
    successes = {a: np.isin(np.arange(n), src) for a, src in sources.items()}
    split = imagesets.split_sources(n, successes, ctx.bench.database.split, ctx.bench.settings.seed)
    save_arrays(out, split=split)
    rows = []
    for i, name in enumerate(imagesets.SPLITS):
        adversarial = sum(int((split[src] == i).sum()) for src in sources.values())
        rows += [("normal", name, float((split == i).sum())), ("adversarial", name, float(adversarial))]
        rows += [(f"adversarial[{a}]", name, float((split[src] == i).sum())) for a, src in sources.items()]
    return rows
