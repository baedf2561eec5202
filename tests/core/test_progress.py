"""The time left of a run's progress lines (``advbench.estimate.progress``): stages with no finished
cell are priced by the plan's estimate, not by the mean of the cells that finished."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from advbench import cli
from advbench.config import parse_benchmark
from advbench.estimate.progress import TimeLeft, expected_seconds
from advbench.plan import Cell
from advbench.execution.context import plan_for
from advbench.execution.execute import CellOutcome
from advbench.testing import tiny_benchmark


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def cell(stage: str, key: str) -> Cell:
    return Cell(stage, key, "d", "m", imageset="pgd", operation="jpeg@90" if stage == "predict" else "")


# The run of the issue: two long attacks, then 400 predictions (40 ms each in the plan's estimate)
# and 48 statistical detector fits (unpriced). The old estimate charged every prediction at the
# attacks' mean: ~158 min left for a run that ended half a minute later.
COUNTS = {"attack": 2, "predict": 400, "detect": 48}
EXPECTED = {**{f"a{i}": ("attack", 90.0) for i in range(2)},
            **{f"p{i}": ("predict", 0.04) for i in range(400)},
            **{f"d{i}": ("detect", None) for i in range(48)}}


def run_attacks(left: TimeLeft, clock: Clock) -> None:
    for i in range(2):
        clock.now += 120.0
        left.observe(f"a{i}", "attack", 120.0, computed=True)


def test_stages_without_a_finished_cell_are_priced_by_the_plan_estimate():
    clock = Clock()
    left = TimeLeft(COUNTS, lambda: EXPECTED, clock=clock)
    run_attacks(left, clock)
    # 400 predictions at the estimate's 0.04 s, scaled by how the attacks compared with theirs (120/90)
    assert left.seconds() == pytest.approx(400 * 0.04 * 120 / 90)
    assert left.priced


def test_a_stage_is_priced_by_its_own_cells_once_some_finished():
    clock = Clock()
    left = TimeLeft(COUNTS, lambda: EXPECTED, clock=clock)
    run_attacks(left, clock)
    for i in range(100):  # predictions turn out at 0.02 s: half the estimate
        clock.now += 0.02
        left.observe(f"p{i}", "predict", 0.02, computed=True)
    left.observe("d0", "detect", 0.2, computed=True)
    clock.now += 0.2
    assert left.seconds() == pytest.approx(300 * 0.02 + 47 * 0.2)


def test_cached_cells_take_nothing_off_the_calibration_and_overhead_counts():
    clock = Clock()
    left = TimeLeft({"attack": 2, "predict": 10}, lambda: {"a0": ("attack", 10.0), "a1": ("attack", 10.0),
                                                           **{f"p{i}": ("predict", 1.0) for i in range(10)}},
                    clock=clock)
    clock.now = 1.0
    left.observe("a0", "attack", 0.0, computed=False)  # cached: 1 s of store and scheduling
    assert left.seconds() == pytest.approx(10.0 + 10 * 1.0 + 11 * 1.0)  # estimates as they are, + overhead


def test_without_the_plan_estimate_untimed_stages_count_nothing():
    def broken():
        raise RuntimeError("model cannot be built here")

    clock = Clock()
    left = TimeLeft(COUNTS, broken, clock=clock)
    run_attacks(left, clock)
    assert left.seconds() == 0.0 and not left.priced  # not 400 x 120 s


def test_workers_share_their_stages():
    clock = Clock()
    left = TimeLeft(COUNTS, lambda: EXPECTED, parallel={"predict": 2}, clock=clock)
    run_attacks(left, clock)
    assert left.seconds() == pytest.approx(400 * 0.04 * 120 / 90 / 2)


def test_the_progress_line_uses_the_estimate_and_prices_the_plan_once():
    clock, calls = Clock(), []

    def expected():
        calls.append(1)
        return EXPECTED

    buffer = io.StringIO()
    progress = cli.PlainProgress(COUNTS, Console(file=buffer, width=200), every=30.0,
                                 left=TimeLeft(COUNTS, expected, clock=clock), clock=clock)
    for i in range(2):
        clock.now += 120.0
        progress(CellOutcome(cell("attack", f"a{i}"), "ok", seconds=120.0))
    lines = [line for line in buffer.getvalue().splitlines() if line.startswith("progress:")]
    assert lines == ["progress: 1/450 cells, 2.0 min elapsed, ~2.4 min left",  # an attack (120 s) + predictions
                     "progress: 2/450 cells, 4.0 min elapsed, ~0.4 min left"]  # 400 x 0.04 s x 120/90 = 21 s
    assert calls == [1]


def test_the_plan_estimate_prices_model_cells_and_leaves_array_work_unpriced(registry):
    bench = parse_benchmark(tiny_benchmark(detectors=['plugin = "lda"'], images=12), registry)
    plan = plan_for(bench, registry)
    expected = expected_seconds(plan, registry)
    assert set(expected) == {c.key for c in plan.cells}
    by_stage: dict[str, list] = {}
    for stage, seconds in expected.values():
        by_stage.setdefault(stage, []).append(seconds)
    for stage in ("clean", "attack", "predict"):
        assert all(s is not None and s > 0 for s in by_stage[stage]), stage
    for stage in ("split", "detect", "correct"):
        assert all(s is None for s in by_stage.get(stage, [])), stage


def test_the_clean_cell_does_not_calibrate_the_other_stages():
    clock = Clock()  # the clean cell trained the model on first use: 2 s against an estimate of 0.05 s
    left = TimeLeft({"clean": 1, "predict": 10}, lambda: {"c": ("clean", 0.05),
                                                          **{f"p{i}": ("predict", 0.1) for i in range(10)}},
                    clock=clock)
    clock.now = 2.0
    left.observe("c", "clean", 2.0, computed=True)
    assert left.seconds() == pytest.approx(10 * 0.1)  # not 10 x 0.1 x 40
