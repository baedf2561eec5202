"""Oblivious attacks (§2.2): adversarial images saved as files, reloaded and re-verified.

Primary attacks run on every clean image; evaluation sets (the points of a budget grid, an
entry with ``evaluation = true``) run on the eval split's sources only, the only images they
are scored on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advbench.cache import save_arrays
from advbench.engine import imagesets
from advbench.engine.detect import EVAL
from advbench.plan import Cell
from advbench.specs import AttackContext
from advbench.execution.context import CellContext, MetricRows


def attacked_sources(ctx: CellContext, cell: Cell) -> np.ndarray:
    """Indices of the clean images an attack cell attacks."""
    n = len(ctx.clean_arrays(cell, mmap=True)["labels"])
    if cell.stage == "attack" and not cell.evaluation:
        return np.arange(n)
    return np.flatnonzero(ctx.split(cell) == EVAL)


def run(ctx: CellContext, cell: Cell, out: Path, entry, attack_ctx: AttackContext) -> MetricRows:
    """Attack the chosen clean images with ``entry``; shared by oblivious and adaptive cells."""
    spec = ctx.registry.get("attack", entry.plugin)
    db, s = ctx.bench.database, ctx.bench.settings
    clean = ctx.clean_arrays(cell)
    chosen = attacked_sources(ctx, cell)
    subset = {name: values[chosen] for name, values in clean.items()}
    arrays, metrics = imagesets.run_attack(
        spec, entry.params, ctx.model(cell.model), subset, out_dir=out, top_k=s.top_k, shift=db.target_shift,
        threshold=db.target_threshold, fmt=db.image_format, quality=db.jpeg_quality, batch_size=db.batch_size,
        seed=s.seed, ctx=attack_ctx)
    arrays["source"] = chosen[arrays["source"]]  # positions in the subset -> clean-set indices
    save_arrays(out, **arrays)
    rows = [(k, "", float(v)) for k, v in metrics.items()] + [("targeted", "", float(spec.targeted))]
    if cell.budget is not None:
        rows.append(("budget", "", float(cell.budget)))
    return rows


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    entry = ctx.entry("attack", cell.entry)
    base = ctx.build_context("attack", entry.plugin)
    return run(ctx, cell, out, entry, AttackContext(cache_dir=base.cache_dir, device=base.device, seed=base.seed))
