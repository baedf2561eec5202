"""The results store on SQLite and PostgreSQL: concurrent writers, killed runs, per-image results.

Every test runs on both backends (the ``store_url`` fixture of tests/conftest.py); the
PostgreSQL ones skip, saying why, where no server can be had.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import create_engine, func, insert, select, text

from advbench.errors import StoreError
from advbench.store import Store
from advbench.store.db import IMAGE_CELL_COLUMNS, IMAGE_COLUMNS, _now, head_revision, pid_alive
from advbench.store.models import Cell, Image, ImageSet, Invocation, Metric, Run

from store_workers import N_CELLS, N_IMAGES, StubCell, cell_metrics, identical_run, image_columns, open_only


def _count(store: Store, model) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(model.__table__)).scalar_one()


def _start(store: Store, config_hash: str = "h") -> int:
    return store.start_run(benchmark="b", config_hash=config_hash, config_text="", seed=0, versions={"advbench": "0.1"})


def _spawn(target, args_of, n: int = 4, timeout: float = 240) -> list:
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_of(ctx), results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"child exited with {p.exitcode}"
    return out


# --- writes -------------------------------------------------------------------------------

@pytest.mark.parametrize("upsert", ["on-conflict", "fallback"])
def test_upserts_are_idempotent_and_metrics_are_replaced(store_url, upsert):
    store = Store(store_url)
    store._native_upsert = upsert == "on-conflict"
    run = _start(store)
    assert _start(store) == run
    cell = StubCell("detect", "k1", detector="svm")
    store.record_cell(run, cell, status="ok", metrics=[("accuracy", "", 0.9), ("eer", "", 0.1)])
    store.record_cell(run, cell, status="ok", metrics=[("accuracy", "", 0.8), ("accuracy", "", 0.7)])
    assert (_count(store, Run), _count(store, Cell), _count(store, Metric)) == (1, 1, 1)
    [row] = store.cells(run)
    assert [(m.name, m.value) for m in row.metrics] == [("accuracy", 0.7)]  # replaced, the last value wins


def test_new_cell_columns_round_trip_and_default(store_url):
    store = Store(store_url)
    run = _start(store)
    store.record_cell(run, StubCell("attack", "k1", imageset="pgd@0.03", entry="pgd@0.03", family="pgd", plugin="pgd",
                                    budget=0.03, norm="linf", threat="oblivious", target="least-likely", holdout="fgsm",
                                    evaluation=True), status="ok")
    store.record_cell(run, StubCell("attack", "k2", budget=float("nan")), status="ok")
    store.record_cell(run, StubCell("split", "k3"), status="ok")
    got = {c.key: (c.imageset, c.entry, c.family, c.plugin, c.budget, c.norm, c.threat, c.target, c.holdout,
                   c.evaluation) for c in store.cells(run)}
    assert got == {"k1": ("pgd@0.03", "pgd@0.03", "pgd", "pgd", 0.03, "linf", "oblivious", "least-likely", "fgsm", True),
                   "k2": ("", "", "", "", None, "", "", "", "", False), "k3": ("", "", "", "", None, "", "", "", "", False)}


def test_a_finished_run_drops_the_cells_its_plan_no_longer_has(store_url):
    store = Store(store_url)
    run = _start(store)
    for key in ("a", "b", "c"):
        store.record_cell(run, StubCell("detect", key), status="ok", metrics=[("accuracy", "", 1.0)])
    store.finish_run(run, "ok", keep={"a", "c"})
    assert sorted(c.key for c in store.cells(run)) == ["a", "c"] and _count(store, Metric) == 2
    with pytest.raises(StoreError, match="no run with id 999"):
        store.finish_run(999, "ok")


@pytest.mark.slow  # four processes
def test_four_processes_opening_a_fresh_store_migrate_it_once(store_url):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    errors = _spawn(open_only, lambda _ctx: (store_url, barrier))
    assert errors == [None] * 4, "\n".join(e for e in errors if e)
    store = Store(store_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalars().all() == [head_revision()]


@pytest.mark.parametrize("upsert", ["on-conflict", "fallback"])
@pytest.mark.slow  # four processes
def test_four_identical_runs_at_once_write_one_run_and_no_duplicates(store_url, upsert):
    ctx = multiprocessing.get_context("spawn")
    barriers = (ctx.Barrier(4), ctx.Barrier(4))
    t0 = time.perf_counter()
    results = _spawn(identical_run, lambda _ctx: (store_url, barriers, upsert == "on-conflict"))
    elapsed = time.perf_counter() - t0
    errors = [r[1] for r in results if r[0] != "ok"]
    assert not errors, "\n".join(errors)
    assert len({r[1] for r in results}) == 1  # every process got the same run id
    store = Store(store_url)
    assert (_count(store, Run), _count(store, Cell), _count(store, Metric)) == (1, N_CELLS, 3 * N_CELLS)
    [run] = store.runs()
    assert run.status == "ok" and store.run_status(run) == "ok"
    for cell in store.cells(run.id):
        i = int(cell.key.removeprefix("key"))
        assert sorted((m.name, m.subset, m.value) for m in cell.metrics) == sorted(cell_metrics(i))
        assert (cell.budget, cell.threat) == (0.03, "linf")
    invocations = store.invocations(run.id)
    assert len(invocations) == 4 and {i.status for i in invocations} == {"ok"}
    assert len({i.pid for i in invocations}) == 4
    assert (_count(store, ImageSet), _count(store, Image)) == (1, N_IMAGES)
    print(f"\n4 identical runs x {N_CELLS} cells on {store.dialect} ({upsert}): {elapsed:.1f} s (spawn included)")


# --- killed runs --------------------------------------------------------------------------

def test_a_sigkilled_run_shows_killed_and_the_next_start_marks_it(store_url):
    code = textwrap.dedent(f"""
        import time
        from advbench.store import Store
        store = Store({store_url!r})
        run = store.start_run(benchmark="b", config_hash="h", config_text="", seed=0, versions={{}})
        print(run, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        run = int(child.stdout.readline())
        store = Store(store_url)
        assert store.run_status(run) == "running" and store.get_run(run).status == "running"
        child.kill()
        child.wait(timeout=30)
    finally:
        child.kill()
        child.stdout.close()
    assert store.run_status(run) == "killed"
    assert store.get_run(run).status == "killed" and store.latest_run("b").status == "killed"
    assert [r.status for r in store.runs()] == ["killed"]
    assert [i.status for i in store.invocations(run)] == ["killed"]
    with store.engine.connect() as conn:  # derived only, so far
        assert conn.execute(select(Invocation.status)).scalars().all() == ["running"]
    assert _start(store) == run  # this process takes the run over ...
    with store.engine.connect() as conn:  # ... and marks the dead invocation killed
        assert conn.execute(select(Invocation.status).order_by(Invocation.id)).scalars().all() == ["killed", "running"]
    assert store.run_status(run) == "running"
    store.finish_run(run, "ok")
    assert store.run_status(run) == "ok"


def test_an_invocation_on_another_host_lives_by_its_heartbeat(store_url):
    store = Store(store_url)
    run = _start(store)
    store.finish_run(run, "failed")
    now = _now()
    with store.engine.begin() as conn:
        conn.execute(insert(Invocation), [
            {"run_id": run, "host": "elsewhere", "pid": 1, "proc_start": "", "started_at": now - timedelta(hours=1),
             "heartbeat_at": now - timedelta(minutes=1), "finished_at": None, "status": "running"}])
    assert store.run_status(run) == "running"  # fresh heartbeat: alive, although run was finished here
    with store.engine.begin() as conn:
        conn.execute(Invocation.__table__.update().where(Invocation.host == "elsewhere")
                     .values(heartbeat_at=now - timedelta(minutes=11)))
    assert store.run_status(run) == "failed"  # stale: dead, and the run was finished after it started


def test_a_heartbeat_revives_an_invocation_taken_for_dead(store_url):
    store = Store(store_url)
    run = _start(store)
    with store.engine.begin() as conn:
        conn.execute(Invocation.__table__.update().values(status="killed", finished_at=_now()))
    assert store.run_status(run) == "killed"
    store.heartbeat()
    assert store.run_status(run) == "running" and [i.status for i in store.invocations(run)] == ["running"]


def test_pid_liveness_sees_reuse_and_zombies():
    assert pid_alive(os.getpid())
    assert not pid_alive(os.getpid(), proc_start="1")  # same pid, another process start: a reused pid
    assert not pid_alive(0) and not pid_alive(-1)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while pid_alive(child.pid) and time.time() < deadline:  # exited but not reaped: a zombie
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)


# --- per-image results --------------------------------------------------------------------

def test_per_image_results_round_trip_once_per_cell_key(store_url):
    store = Store(store_url)
    run_a, run_b = _start(store, "h1"), _start(store, "h2")
    for run in (run_a, run_b):  # the same cell (content hash) in two runs
        store.record_cell(run, StubCell("detect", "cellkey", imageset="fgsm", detector="svm", budget=0.1), status="ok")
    store.record_cell(run_a, StubCell("correct", "other", corrector="votes"), status="ok")
    assert not store.has_images("cellkey")
    columns = {"source": np.array(["a.png", "b.png", "c.png"]), "origin": ["clean", "fgsm", "fgsm"],
               "split": ["eval"] * 3, "y": np.array([0, 1, 1]), "truth": np.array([3, 5, 7], dtype=np.int64),
               "score": np.array([0.25, np.nan, 0.75], dtype=np.float32), "decision": [0, 1, None]}
    assert store.record_images("cellkey", columns) is True
    assert store.record_images("cellkey", {**columns, "y": [1, 1, 1]}) is False  # stored once: a no-op
    assert store.record_images("other", {**image_columns(2), "label": np.array([4, 2])}) is True
    assert store.has_images("cellkey") and (_count(store, ImageSet), _count(store, Image)) == (2, 5)

    got = store.images(run_a)
    assert list(got) == list(IMAGE_CELL_COLUMNS + IMAGE_COLUMNS)
    assert {len(v) for v in got.values()} == {5}
    first = {k: v[:3] for k, v in got.items()}
    assert first["cell_key"] == ["cellkey"] * 3 and first["imageset"] == ["fgsm"] * 3 and first["budget"] == [0.1] * 3
    assert first["idx"] == [0, 1, 2] and first["source"] == ["a.png", "b.png", "c.png"]
    assert first["y"] == [0, 1, 1] and first["truth"] == [3, 5, 7]
    assert first["score"] == [0.25, None, 0.75] and first["decision"] == [0, 1, None] and first["label"] == [None] * 3
    assert got["corrector"][3:] == ["votes"] * 2 and got["label"][3:] == [4, 2]
    assert store.images(run_a, stage="correct")["cell_key"] == ["other"] * 2
    assert store.images(run_b)["source"] == ["a.png", "b.png", "c.png"]  # shared, not copied
    assert store.images(run_b, stage="attack") == {k: [] for k in IMAGE_CELL_COLUMNS + IMAGE_COLUMNS}


def test_per_image_columns_are_checked(store_url):
    store = Store(store_url)
    good = image_columns(3)
    with pytest.raises(StoreError, match="unknown column 'scores'; valid: idx, source"):
        store.record_images("k", {**good, "scores": [1, 2, 3]})
    with pytest.raises(StoreError, match="missing column 'truth'"):
        store.record_images("k", {k: v for k, v in good.items() if k != "truth"})
    with pytest.raises(StoreError, match="columns differ in length: .*y=2"):
        store.record_images("k", {**good, "y": [0, 1]})
    with pytest.raises(StoreError, match="'idx' repeats"):
        store.record_images("k", {**good, "idx": [0, 0, 1]})
    assert not store.has_images("k")
    store.record_images("k", {**good, "idx": [10, 20, 30]})
    run = _start(store)
    store.record_cell(run, StubCell("detect", "k"), status="ok")
    assert store.images(run)["idx"] == [10, 20, 30]


def test_100k_image_rows_go_in_within_seconds(store_url):
    n = 100_000
    rng = np.random.default_rng(0)
    columns = {"source": np.array([f"cifar10/test/{i % 1000:05d}.jpg" for i in range(n)]),
               "origin": np.where(np.arange(n) % 2 == 0, "clean", "fgsm"), "split": np.full(n, "eval"),
               "y": np.arange(n) % 2, "truth": rng.integers(0, 10, n), "score": rng.random(n),
               "decision": rng.integers(0, 2, n), "label": rng.integers(0, 10, n)}
    store = Store(store_url)
    t0 = time.perf_counter()
    store.record_images("big", columns)
    elapsed = time.perf_counter() - t0
    print(f"\n{n} image rows into {store.dialect}: {elapsed:.2f} s")
    assert _count(store, Image) == n
    assert elapsed < 60, f"{n} rows took {elapsed:.1f} s: not a bulk insert"


# --- migrations ---------------------------------------------------------------------------

def test_a_0002_store_upgrades_and_keeps_its_rows(store_url):
    from alembic import command

    from advbench.store.db import _alembic_config

    engine = create_engine(_driver(store_url))
    with engine.begin() as conn:  # a store as advbench wrote it before migrations 0003+
        command.upgrade(_alembic_config(conn), "0002")
    with engine.begin() as conn:
        conn.execute(text("insert into runs (benchmark, config_hash, config_text, seed, advbench_version, "
                          "torch_version, foolbox_version, host, started_at, finished_at, status) values "
                          "('b', 'h', 'x', 0, '0.1', '', '', 'old', '2024-01-01 00:00:00', '2024-01-01 01:00:00', 'ok')"))
        run = conn.execute(text("select id from runs")).scalar_one()
        conn.execute(text("insert into cells (run_id, key, stage, dataset, model, attack, transform, feature, "
                          "detector, status, cached, error, seconds, corrector) values "
                          "(:run, 'k', 'detect', 'd', 'm', 'fgsm', 'All', 'counting', 'svm', 'ok', false, '', 1.5, 'votes')"),
                     {"run": run})
        cell = conn.execute(text("select id from cells")).scalar_one()
        conn.execute(text("insert into metrics (cell_id, name, subset, value) values (:cell, 'accuracy', '', 0.9)"),
                     {"cell": cell})
        assert conn.execute(text("select version_num from alembic_version")).scalar() == "0002"
    engine.dispose()
    store = Store(store_url)
    with store.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == head_revision()
    [row] = store.runs()
    assert (row.id, row.benchmark, row.status) == (run, "b", "ok")
    [cell] = store.cells(run)
    assert (cell.corrector, cell.budget, cell.threat, cell.target, cell.holdout) == ("votes", None, "", "", "")
    assert (cell.imageset, cell.feature_group) == ("", "All")  # a detect cell's "transform" was its feature group
    assert [(m.name, m.value) for m in cell.metrics] == [("accuracy", 0.9)]
    assert store.invocations(run) == [] and not store.has_images("k")
    store.record_cell(run, StubCell("detect", "k2"), status="ok")
    assert _start(store) == run and len(store.cells(run)) == 2


OLD_CONFIG = """[benchmark]
name = "b"
[[attacks]]
plugin = "pgd"
name = "pgd-grid"
budgets = [0.004]
[[adaptive]]
plugin = "eot-pgd"
budgets = [0.008]
targets = ["pipeline"]
"""
#: cells as advbench wrote them at revision 0008: (key, stage, attack, transform, feature, detector, corrector,
#: budget, threat, target, evaluation)
OLD_CELLS = [
    ("a1", "attack", "pgd-grid@0.004", "", "", "", "", 0.004, "oblivious", "", True),
    ("a2", "attack", "fgsm", "", "", "", "", None, "oblivious", "", False),
    ("a3", "adaptive", "eot-pgd@0.008>pipeline", "", "", "", "", 0.008, "adaptive", "pipeline", True),
    ("p1", "predict", "pgd-grid@0.004", "jpeg@90", "", "", "", 0.004, "oblivious", "", False),
    ("p2", "predict", "clean", "original", "", "", "", None, "clean", "", False),
    ("d1", "detect", "", "JPEG", "counting", "svm", "", None, "", "", False),
    ("c1", "correct", "", "JPEG", "", "", "vote", None, "", "", False),
    ("s1", "score", "eot-pgd@0.008>pipeline", "JPEG", "counting", "svm", "vote", 0.008, "adaptive", "pipeline", False),
    ("s2", "score", "pgd-grid@0.004", "All", "counting", "svm", "", 0.004, "oblivious", "", False),
    ("s3", "score", "pgd-grid@0.004", "Scaling", "", "", "vote", 0.004, "oblivious", "", False),
]


def test_migration_0009_names_each_cell_column_by_what_it_holds(store_url):
    """A store written by advbench at revision 0008 (labels packed with meaning, one 'transform'
    column for three things) comes out with the explicit columns filled."""
    from alembic import command

    from advbench.store.db import _alembic_config

    engine = create_engine(_driver(store_url))
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0008")
    with engine.begin() as conn:
        conn.execute(text("insert into runs (benchmark, config_hash, config_text, seed, advbench_version, "
                          "torch_version, foolbox_version, host, started_at, finished_at, status) values "
                          "('b', 'h', :config, 0, '0.1', '', '', 'old', '2024-01-01 00:00:00', NULL, 'ok')"),
                     {"config": OLD_CONFIG})
        run = conn.execute(text("select id from runs")).scalar_one()
        for key, stage, attack, transform, feature, detector, corrector, budget, threat, target, evaluation in OLD_CELLS:
            conn.execute(text("insert into cells (run_id, key, stage, dataset, model, attack, transform, feature, "
                              "detector, corrector, budget, threat, target, holdout, evaluation, norm, status, cached, "
                              "error, seconds) values (:run, :key, :stage, 'd', 'm', :attack, :transform, :feature, "
                              ":detector, :corrector, :budget, :threat, :target, '', :evaluation, '', 'ok', false, "
                              "'', 0.0)"),
                         {"run": run, "key": key, "stage": stage, "attack": attack, "transform": transform,
                          "feature": feature, "detector": detector, "corrector": corrector, "budget": budget,
                          "threat": threat, "target": target, "evaluation": evaluation})
    engine.dispose()
    store = Store(store_url)
    got = {c.key: c for c in store.cells(run)}
    assert not hasattr(got["a1"], "attack") and not hasattr(got["a1"], "transform")
    explicit = {k: (c.imageset, c.entry, c.family, c.plugin) for k, c in got.items() if c.imageset}
    assert explicit == {
        "a1": ("pgd-grid@0.004", "pgd-grid@0.004", "pgd-grid", "pgd"), "a2": ("fgsm", "fgsm", "fgsm", ""),
        "a3": ("eot-pgd@0.008>pipeline", "eot-pgd@0.008", "eot-pgd", "eot-pgd"),
        "p1": ("pgd-grid@0.004", "pgd-grid@0.004", "pgd-grid", "pgd"), "p2": ("clean", "", "", ""),
        "s1": ("eot-pgd@0.008>pipeline", "eot-pgd@0.008", "eot-pgd", "eot-pgd"),
        "s2": ("pgd-grid@0.004", "pgd-grid@0.004", "pgd-grid", "pgd"), "s3": ("pgd-grid@0.004",) * 2 + ("pgd-grid", "pgd")}
    groups = {k: (c.operation, c.feature_group, c.correction_group) for k, c in got.items()}
    assert groups == {"a1": ("", "", ""), "a2": ("", "", ""), "a3": ("", "", ""), "p1": ("jpeg@90", "", ""),
                      "p2": ("original", "", ""), "d1": ("", "JPEG", ""), "c1": ("", "", "JPEG"),
                      "s1": ("", "", "JPEG"),  # a pipeline's detector group was never stored
                      "s2": ("", "All", ""), "s3": ("", "", "Scaling")}
    assert (got["a3"].target, got["s1"].threat, got["a1"].budget, got["a1"].evaluation) == (
        "pipeline", "adaptive", 0.004, True)
    from advbench.report import tables
    assert tables.defense(got["s3"]) == "vote/Scaling" and tables.targeted(got["s1"], "pipeline")


def _driver(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


class _RacingCursor:
    """A cursor whose WAL switch loses the lock race ``losses`` times (SQLite skips the busy handler)."""

    def __init__(self, losses: int, message: str = "database is locked"):
        self.losses, self.message, self.mode, self.calls = losses, message, "delete", 0

    def execute(self, sql: str):
        import sqlite3

        if sql == "PRAGMA journal_mode=WAL":
            self.calls += 1
            if self.calls <= self.losses:
                raise sqlite3.OperationalError(self.message)
            self.mode = "wal"
        return self

    def fetchone(self):
        return (self.mode,)


def test_a_store_opened_by_many_at_once_retries_the_wal_switch_it_lost():
    from advbench.store.db import _switch_to_wal

    cur = _RacingCursor(losses=3)
    _switch_to_wal(cur)
    assert (cur.mode, cur.calls) == ("wal", 4)
    with pytest.raises(Exception, match="locked"):
        _switch_to_wal(_RacingCursor(losses=10**6), patience=0.05)
    with pytest.raises(Exception, match="disk I/O"):  # other errors are not retried
        _switch_to_wal(_RacingCursor(losses=1, message="disk I/O error"))
