from __future__ import annotations

import sqlite3
import sys

import pytest
from sqlalchemy import inspect

from advbench.errors import StoreError
from advbench.plan import Cell
from advbench.store import Store, open_store, resolve_url
from advbench.store.db import head_revision


def test_url_resolution():
    assert resolve_url(None) == "sqlite:///results.db"
    assert resolve_url("x/y.db") == "sqlite:///x/y.db"
    assert resolve_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_schema_comes_from_alembic_migrations(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    tables = set(inspect(store.engine).get_table_names())
    assert {"runs", "invocations", "cells", "metrics", "image_sets", "images", "alembic_version"} <= tables
    with sqlite3.connect(tmp_path / "r.db") as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == (head_revision(),) == ("0009",)
        assert conn.execute("pragma journal_mode").fetchone() == ("wal",)
    assert (tmp_path / "r.db.lock").exists()  # migrations were serialised by a lock next to the file


def test_the_migrated_tables_have_the_schema_s_columns(tmp_path):
    """The cells and images columns are derived from advbench.schema; the migrations must make the
    same ones (a schema field added without its migration fails here)."""
    from dataclasses import fields

    from advbench import schema
    from advbench.store import models

    store = open_store(str(tmp_path / "r.db"))
    migrated = {t: [c["name"] for c in inspect(store.engine).get_columns(t)] for t in ("cells", "images")}
    assert set(migrated["cells"]) == {c.name for c in models.Cell.__table__.columns}
    assert set(migrated["images"]) == {c.name for c in models.Image.__table__.columns}
    assert {f.name for f in fields(schema.Cell) if f.metadata["store"]} <= set(migrated["cells"])
    assert list(schema.IMAGE_CELL_COLUMNS[1:]) == [c for c in schema.CELL_COLUMNS if c != "key"]


def test_writes_are_idempotent(tmp_path):
    store = open_store(str(tmp_path / "r.db"))
    cell = Cell("detect", "k1", "d", "m", feature_group="All", feature="counting", detector="svm")
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


def test_a_directory_or_a_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(StoreError, match=r"store .*: is a directory; give a file such as .*results\.db or a database URL"):
        open_store(str(tmp_path))
    with pytest.raises(StoreError, match=r"directory .*nowhere does not exist"):
        open_store(str(tmp_path / "nowhere" / "r.db"))
    assert not (tmp_path / "nowhere").exists()


def test_an_unknown_dialect_or_a_missing_driver_names_the_fix(monkeypatch):
    with pytest.raises(StoreError, match="unknown database dialect 'nosuchdb'"):
        Store("nosuchdb://u@h/db")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    with pytest.raises(StoreError, match=r'PostgreSQL driver psycopg is not installed; pip install -e "\.\[postgres\]"'):
        Store("postgresql://user:secret@localhost/db")
    with pytest.raises(StoreError) as info:
        Store("postgresql://user:secret@localhost/db")
    assert "secret" not in str(info.value)  # a password never reaches the message


def test_a_store_from_a_newer_advbench_is_refused(tmp_path):
    open_store(str(tmp_path / "r.db"))
    with sqlite3.connect(tmp_path / "r.db") as conn:
        conn.execute("update alembic_version set version_num = '9999'")
    with pytest.raises(StoreError, match="revision .* newer advbench"):
        open_store(str(tmp_path / "r.db"))
