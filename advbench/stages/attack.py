"""Oblivious attacks (§2.2): adversarial images saved as files, reloaded and re-verified.

Primary attacks run on every clean image; evaluation sets (the points of a budget grid, an
entry with ``evaluation = true``) run on the eval split's sources only, the only images they
are scored on. The budgets are the core's: the points of one grid that are ready together are
one batch of cells (``Stage.batch_by``: their family), and the attack gets the grid's budgets
in one call (:func:`advbench.engine.imagesets.run_attack_budgets`); each point stays its own
cell, cached and keyed as before.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def run(ctx: CellContext, cells: Sequence[Cell], outs: Sequence[Path], entries, attack_ctx: AttackContext) -> list[MetricRows]:
    """Attack the chosen clean images; shared by oblivious and adaptive cells. ``cells`` is one
    cell of an entry without budgets, or points of one budget grid (``entries``: the entries of
    the section they come from): the attack then gets their budgets, ascending, in one call
    (``AttackSpec.run_budgets``; without it, one call per budget from the same random state)."""
    by_label = {e.label: e for e in entries}
    first = cells[0]
    spec = ctx.registry.get("attack", by_label[first.entry].plugin)
    db, s = ctx.bench.database, ctx.bench.settings
    clean = ctx.clean_arrays(first)
    chosen = attacked_sources(ctx, first)
    subset = {name: values[chosen] for name, values in clean.items()}
    order = sorted(range(len(cells)), key=lambda i: cells[i].budget or 0.0)
    points = [by_label[cells[i].entry] for i in order]
    made = imagesets.run_attack_budgets(
        spec, [e.params for e in points], None if first.budget is None else [e.budget for e in points],
        ctx.model(first.model), subset, out_dirs=[outs[i] for i in order], top_k=s.top_k, shift=db.target_shift,
        threshold=db.target_threshold, fmt=db.image_format, quality=db.jpeg_quality, batch_size=db.batch_size,
        seed=s.seed, ctx=attack_ctx)
    rows: list[MetricRows] = [[] for _ in cells]
    for i, (arrays, metrics) in zip(order, made):
        arrays["source"] = chosen[arrays["source"]]  # positions in the subset -> clean-set indices
        save_arrays(outs[i], **arrays)
        rows[i] = [(k, "", float(v)) for k, v in metrics.items()] + [("targeted", "", float(spec.targeted))]
        if cells[i].budget is not None:
            rows[i].append(("budget", "", float(cells[i].budget)))
    return rows


def attack_context(ctx: CellContext, cells: Sequence[Cell], section) -> AttackContext:
    base = ctx.build_context("attack", next(e for e in section if e.label == cells[0].entry).plugin)
    return AttackContext(cache_dir=base.cache_dir, device=base.device, seed=base.seed)


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    return compute_many(ctx, [cell], [out])[0]


def compute_many(ctx: CellContext, cells: Sequence[Cell], outs: Sequence[Path]) -> list[MetricRows]:
    """The points of one budget grid that are ready together, in one call (or one cell)."""
    return run(ctx, cells, outs, ctx.bench.attacks, attack_context(ctx, cells, ctx.bench.attacks))
