"""Budgets are the core's: the points of a grid that are ready together run as one batch, the
attack gets the grid in one call (run_budgets) or one call per budget from the same random state,
and each budget's images equal what that budget alone makes."""

from __future__ import annotations

import dataclasses
from types import ModuleType

import numpy as np

from advbench.cache import load_array
from advbench.execution.execute import comparable
from advbench.hookspecs import hookimpl
from advbench.testing import registry_with, run_tiny, tiny_benchmark

BASE = ['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5']
PGD = 'plugin = "pgd"\nsteps = 10\nrel_stepsize = 0.2'  # a random start: the reseeding shows
DEEPFOOL = 'plugin = "deepfool"\nsteps = 5\ncandidates = 4\novershoot = 2.0'  # run_budgets: one unbounded run


def _sets(tmp_path, attacks, registry):
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = run_tiny(tmp_path, tiny_benchmark(attacks=BASE + attacks, images=40), registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    made = {}
    for o in result.outcomes:
        if o.cell.stage == "attack" and o.cell.budget is not None:
            folder = next((tmp_path / "cache" / "attack").rglob(o.cell.key))
            made[(o.cell.plugin, o.cell.budget)] = (comparable(o.metrics), load_array(folder, "images"),
                                                     load_array(folder, "source"))
    return made


def test_a_grid_in_one_batch_equals_each_budget_alone(tmp_path, registry):
    grid = _sets(tmp_path / "grid", [f'{PGD}\nname = "pgd-grid"\nbudgets = [0.1, 0.3]',
                                     f'{DEEPFOOL}\nname = "df-grid"\nbudgets = [0.2, 0.6]'], registry)
    alone = _sets(tmp_path / "alone", [f'{PGD}\nname = "p1"\nbudgets = [0.1]', f'{PGD}\nname = "p3"\nbudgets = [0.3]',
                                       f'{DEEPFOOL}\nname = "d2"\nbudgets = [0.2]',
                                       f'{DEEPFOOL}\nname = "d6"\nbudgets = [0.6]'], registry)
    assert set(grid) == set(alone) == {("pgd", 0.1), ("pgd", 0.3), ("deepfool", 0.2), ("deepfool", 0.6)}
    for point in grid:
        metrics, images, source = grid[point]
        assert metrics == alone[point][0] and np.array_equal(images, alone[point][1]), point
        assert np.array_equal(source, alone[point][2]), point
    assert all(len(grid[(plugin, b)][2]) for plugin, b in (("pgd", 0.3), ("deepfool", 0.6)))  # images to compare


def test_the_attack_sees_the_whole_grid_in_one_call_per_batch(tmp_path):
    from advbench.registry import discover

    calls = []
    spec = discover().get("attack", "deepfool")

    def run_budgets(model, images, criterion, params, budgets, ctx):
        calls.append((len(images), tuple(budgets), params.max_norm))
        return spec.run_budgets(model, images, criterion, params, budgets, ctx)

    module = ModuleType("counting_grid")
    module.advbench_register_attacks = hookimpl(lambda register: register(dataclasses.replace(
        spec, name="counted-deepfool", run_budgets=run_budgets)))
    registry = registry_with(module)
    _sets(tmp_path, [f'{DEEPFOOL.replace("deepfool", "counted-deepfool")}\nbudgets = [0.6, 0.2, 0.4]'], registry)
    assert calls and all(c[1:] == ((0.2, 0.4, 0.6), 0.2) for c in calls)  # ascending; params at the smallest
    assert len(calls) == 1  # the eval sources fit one batch: one call for the three budgets, not three
