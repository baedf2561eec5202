"""What a run's rows say when it is run again or by several processes at once: the run keeps
the time it was first started, and a cell computed by any invocation of the run is recorded as
computed (with its time), whichever invocation records it last. Both backends, both upsert paths."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from advbench.store import Store
from advbench.store.models import Cell, Run

from store_workers import StubCell


def _start(store: Store) -> int:
    return store.start_run(benchmark="b", config_hash="h", config_text="", seed=0, versions={"advbench": "0.1"})


def _row(store: Store, run_id: int, key: str) -> tuple[bool, float, str]:
    with store.session() as s:
        cell = s.scalars(select(Cell).where(Cell.run_id == run_id, Cell.key == key)).one()
        return cell.cached, cell.seconds, cell.status


@pytest.fixture(params=["on-conflict", "fallback"])
def store(request, store_url):
    store = Store(store_url)
    store._native_upsert = request.param == "on-conflict"
    yield store
    store.close()


def test_a_rerun_keeps_the_runs_started_at(store):
    run = _start(store)
    with store.session() as s:
        first = s.get(Run, run).started_at
    store.finish_run(run, "ok")
    time.sleep(0.01)
    assert _start(store) == run
    with store.session() as s:
        again = s.get(Run, run)
        assert again.started_at == first and again.finished_at is None and again.status == "running"


@pytest.mark.parametrize("order", ["computed first", "cached first"])
def test_a_cell_computed_by_one_invocation_stays_computed(store, order):
    """Two invocations of one run at once: one computes the cell, the other waits on its lock
    and finds it cached. Last writer won before: the store said 'cached' for a computed cell."""
    run = _start(store)
    cell = StubCell("detect", "k1", detector="svm")
    computed = dict(status="ok", cached=False, seconds=3.5, metrics=[("accuracy", "", 0.9)])
    cached = dict(status="ok", cached=True, seconds=0.0, metrics=[("accuracy", "", 0.9)])
    for how in ((computed, cached) if order == "computed first" else (cached, computed)):
        store.record_cell(run, cell, **how)
    assert _row(store, run, "k1") == (False, 3.5, "ok")


def test_cached_is_recorded_when_no_invocation_of_the_run_computed_it(store):
    run = _start(store)
    fails, serves = StubCell("detect", "k1", detector="svm"), StubCell("detect", "k2", detector="lda")
    store.record_cell(run, fails, status="failed", error="boom", seconds=1.0)
    store.record_cell(run, fails, status="ok", cached=True)  # another run computed it meanwhile
    assert _row(store, run, "k1") == (True, 0.0, "ok")
    store.record_cell(run, serves, status="ok", cached=True)
    store.record_cell(run, serves, status="ok", cached=True)
    assert _row(store, run, "k2") == (True, 0.0, "ok")
    store.record_cell(run, serves, status="ok", cached=False, seconds=2.0)  # --fresh: computed again
    store.record_cell(run, serves, status="ok", cached=False, seconds=4.0)
    assert _row(store, run, "k2") == (False, 4.0, "ok")
