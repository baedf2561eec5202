from __future__ import annotations

import os
import types

import numpy as np
import pytest

from advbench import hookimpl
from advbench.config import parse_benchmark
from advbench.errors import DataError
from advbench.execution.executors import ForkPool
from advbench.execution.runner import RunOptions, Runner
from advbench.specs import DetectorSpec
from advbench.execution.execute import comparable
from advbench.testing import registry_with, tiny_benchmark

pytestmark = pytest.mark.skipif(not ForkPool.available(), reason="forked workers need Linux")


def test_workers_give_the_same_results_as_one_process(tiny_run, tmp_path, registry):
    result, root = tiny_run
    bench = parse_benchmark((root / "benchmark.toml").read_text(), registry)
    options = RunOptions(store=str(tmp_path / "r.db"), cache_dir=tmp_path / "cache", workers=2)
    pooled = Runner(bench, registry, options).run()
    assert not pooled.failed
    assert {o.cell.key: comparable(o.metrics) for o in pooled.outcomes} == \
        {o.cell.key: comparable(o.metrics) for o in result.outcomes}


def test_forked_workers_share_the_drivers_loaded_model(tiny_run, tmp_path, registry, monkeypatch):
    from advbench.execution.context import CellContext

    builds = tmp_path / "builds"
    load = CellContext.model

    def model(self, label):
        if label not in self._models:
            with builds.open("a") as f:
                f.write(f"{os.getpid()}\n")
        return load(self, label)

    monkeypatch.setattr(CellContext, "model", model)
    _, root = tiny_run
    bench = parse_benchmark((root / "benchmark.toml").read_text(), registry)
    options = RunOptions(store=str(tmp_path / "r.db"), cache_dir=tmp_path / "cache", workers=2)
    assert not Runner(bench, registry, options).run().failed
    assert builds.read_text().split() == [str(os.getpid())]  # loaded once, by the driver


class _Dies:
    """A detector that kills the process it is fitted in, when that is a forked worker."""

    def __init__(self, parent: int):
        self.parent = parent

    def fit(self, features, labels):
        if os.getpid() != self.parent:
            os._exit(1)

    def predict(self, features):
        return np.zeros(len(features), dtype=int)

    def scores(self, features):
        return np.zeros(len(features))


def test_a_dead_worker_is_a_one_line_error_and_keeps_finished_cells(tiny_run, tmp_path):
    module = types.ModuleType("dying_detector")
    parent = os.getpid()

    @hookimpl
    def advbench_register_detectors(register):
        register(DetectorSpec(name="dies", summary="exits its worker", build=lambda p, seed: _Dies(parent)))

    module.advbench_register_detectors = advbench_register_detectors
    registry = registry_with(module)
    bench = parse_benchmark(tiny_benchmark(detectors=['plugin = "lda"', 'plugin = "dies"']), registry)
    options = RunOptions(store=str(tmp_path / "r.db"), cache_dir=tmp_path / "cache", workers=2)
    with pytest.raises(DataError, match="a --workers process died"):
        Runner(bench, registry, options).run()
    from advbench.store import open_store

    cells = open_store(str(tmp_path / "r.db")).cells(1)
    assert any(c.stage == "predict" and c.status == "ok" for c in cells)  # finished work is kept
