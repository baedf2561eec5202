from __future__ import annotations

import os

import pytest

from advbench.config import parse_benchmark
from advbench.errors import DataError
from advbench.executor import ForkPool, InProcess, executor_for
from advbench.runner import RunOptions, Runner

pytestmark = pytest.mark.skipif(not ForkPool.available(), reason="forked workers need Linux")


def test_the_pool_runs_every_item_once():
    assert sorted(ForkPool(2).map(lambda x: x * x, range(6))) == [0, 1, 4, 9, 16, 25]
    assert isinstance(executor_for(1, 10), InProcess) and isinstance(executor_for(4, 1), InProcess)


def test_a_dead_worker_is_a_one_line_error():
    def die(x):
        os._exit(1)

    with pytest.raises(DataError, match="a --workers process died"):
        list(ForkPool(2).map(die, range(3)))


def test_workers_give_the_same_results_as_one_process(tiny_run, tmp_path, registry):
    result, root = tiny_run
    bench = parse_benchmark((root / "benchmark.toml").read_text(), registry)
    options = RunOptions(store=str(tmp_path / "r.db"), cache_dir=tmp_path / "cache", workers=2)
    pooled = Runner(bench, registry, options).run()
    assert not pooled.failed

    def comparable(o):
        return repr([m for m in o.metrics if m[0] not in ("attack_seconds", "images_per_second")])

    assert {o.cell.key: comparable(o) for o in pooled.outcomes} == {o.cell.key: comparable(o) for o in result.outcomes}
