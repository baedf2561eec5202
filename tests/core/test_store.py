from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import inspect

from advbench.errors import StoreError
from advbench.plan import Cell
from advbench.store import open_store, resolve_url


def test_url_resolution():
    assert resolve_url(None) == "sqlite:///results.db"
    assert resolve_url("x/y.db") == "sqlite:///x/y.db"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_schema_comes_from_alembic_migrations(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    tables = set(inspect(store.engine).get_table_names())
    assert {"runs", "cells", "metrics", "alembic_version"} <= tables
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == ("0002",)
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)


def test_writes_are_idempotent(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    cell = Cell("detect", "k1", "d", "m", transform="All", feature="counting", detector="svm")
    for _ in range(2):
        run = store.start_run(benchmark="b", config_hash="h", config_text="", seed=0, versions={})
        store.record_cell(run, cell, status="ok", metrics=[("accuracy", "", 0.9), ("eer", "", 0.1), ("detection_rate", "fgsm", 1.0)])
        store.finish_run(run, "ok")
    with sqlite3.connect(tmp_path / "r.db") as conn:
        counts = [conn.execute(f"select count(*) from {t}").fetchone()[0] for t in ("runs", "cells", "metrics")]
    assert counts == [1, 1, 3]
    [row] = store.cells(run)
    assert {(m.name, m.subset): m.value for m in row.metrics}[("detection_rate", "fgsm")] == 1.0


def test_nan_is_stored_as_null_and_a_new_config_is_a_new_run(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    a = store.start_run(benchmark="b", config_hash="h1", config_text="", seed=0, versions={})
    b = store.start_run(benchmark="b", config_hash="h2", config_text="", seed=0, versions={})
    store.record_cell(a, Cell("attack", "k", "d", "m"), status="ok", metrics=[("mean_l2", "", float("nan"))])
    assert a != b and store.cells(a)[0].metrics[0].value is None
    assert store.latest_run("b").id == b


def test_missing_store_and_unknown_run_are_user_errors(tmp_path):
    with pytest.raises(StoreError, match="no results store"):
        open_store(str(tmp_path / "none.db"), create=False)
    store = open_store(str(tmp_path / "r.db"))
    with pytest.raises(StoreError, match="no run of benchmark 'zzz'"):
        store.latest_run("zzz")
    with pytest.raises(StoreError, match="no run with id 42"):
        store.get_run(42)
