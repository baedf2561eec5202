"""Several `advbench run`s of one benchmark at once, on one store and one cache (a cluster or a
shell loop): all finish, every cell is computed exactly once, results equal a single run's."""

from __future__ import annotations

import multiprocessing

import pytest
from sqlalchemy import func, select

from advbench.store import open_store
from advbench.store.models import Cell, Run
from concurrent_runs import run_once


@pytest.mark.slow  # four processes, each a run
def test_four_runs_at_once_compute_each_cell_once(tmp_path, store_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(4)
    with ctx.Pool(4) as pool:
        results = pool.starmap(run_once, [(str(tmp_path), store_url, barrier)] * 4)
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors[0]
    assert all(not r["failed"] for r in results)
    computed = [k for r in results for k in r["computed"]]
    assert sorted(computed) == sorted(set(computed))  # no cell computed twice
    assert set(computed) == set(results[0]["metrics"])  # and every cell computed by someone
    assert all(r["metrics"] == results[0]["metrics"] for r in results)
    alone = run_once(str(tmp_path / "alone"), str(tmp_path / "alone.db"))
    assert alone["metrics"] == results[0]["metrics"]  # the same as a single run
    store = open_store(store_url)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 1
        n_cells = s.scalar(select(func.count()).select_from(Cell))
        assert n_cells == len(results[0]["metrics"])  # no duplicate rows
        # each cell was computed by one of the run's invocations: none is recorded as cached,
        # whichever invocation (the computing one or one that found it cached) recorded it last
        assert s.scalars(select(Cell.key).where(Cell.cached)).all() == []
        assert s.scalar(select(func.min(Cell.seconds))) > 0
    assert {store.run_status(r) for r in store.runs()} == {"ok"}
