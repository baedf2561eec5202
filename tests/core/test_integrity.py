"""Integrity of what a run leaves behind: checksummed metrics and plugin files, no orphaned
workers, reports that do not depend on the order the store holds cells in, and a cache that
prune and verify keep honest."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from advbench import verified
from advbench.cache import COMPLETE, STALE_TMP_SECONDS, Cache
from advbench.report import formats, tables
from advbench.report.order import in_plan_order
from advbench.execution.execute import comparable
from advbench.store import open_store
from advbench.store.db import pid_alive
from advbench.testing import run_tiny, tiny_benchmark

CLI_WITH_TINY_WORLD = ("import sys, advbench.cli as c; from advbench.testing import registry_with; "
                       "c.discover = registry_with; sys.exit(c.main(sys.argv[1:]))")


def _copy(tiny_run, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the tiny run's config and cache: (config, cache)."""
    _, root = tiny_run
    shutil.copytree(root / "cache", tmp_path / "cache", ignore=shutil.ignore_patterns("logs", "locks"))
    shutil.copy(root / "benchmark.toml", tmp_path / "benchmark.toml")
    return tmp_path / "benchmark.toml", tmp_path / "cache"


def _detect(result, part: str = "/JPEG/"):
    return next(o for o in result.outcomes if o.cell.stage == "detect" and part in o.cell.title)


# --- the completion record's metrics are checksummed ----------------------------------------


def test_an_edited_metric_is_not_served_as_cached(tiny_run, tmp_path, registry, advbench):
    """An accuracy typed over in _complete.json (valid JSON, every file intact) was served as
    cached; now the record's checksum names it, verify reports it and the run recomputes it."""
    result, _ = tiny_run
    config, cache = _copy(tiny_run, tmp_path)
    detect = _detect(result)
    record_path = Cache(cache).path("detect", detect.cell.key) / COMPLETE
    record = json.loads(record_path.read_text())
    accuracy = next(m for m in record["metrics"] if m[0] == "accuracy")
    assert accuracy[2] < 1.0
    accuracy[2] = 1.0
    record_path.write_text(json.dumps(record, sort_keys=True))

    assert Cache(cache).state("detect", detect.cell.key).reason == f"{COMPLETE} does not match its checksum (its metrics were edited)"
    rc, out, _ = advbench("cache", "verify", "--cache-dir", cache)
    assert rc == 1 and f"damaged: detect/{detect.cell.key}: {COMPLETE} does not match its checksum" in out

    again = run_tiny(tmp_path, config.read_text(), registry=registry)
    redone = [o for o in again.outcomes if not o.cached]
    assert [o.cell.key for o in redone] == [detect.cell.key]
    assert redone[0].note.startswith("recomputed: its cached artefact was damaged") and "checksum" in redone[0].note
    assert comparable(redone[0].metrics) == comparable(detect.metrics)  # the true accuracy again
    assert Cache(cache).state("detect", detect.cell.key).complete


def test_a_record_without_its_checksum_is_recomputed(tiny_run, tmp_path):
    result, _ = tiny_run
    _, cache = _copy(tiny_run, tmp_path)
    detect = _detect(result)
    record_path = Cache(cache).path("detect", detect.cell.key) / COMPLETE
    record = json.loads(record_path.read_text())
    del record["record_blake2b"]  # as an older advbench wrote it: nothing vouches for its metrics
    record_path.write_text(json.dumps(record))
    state = Cache(cache).state("detect", detect.cell.key)
    assert state.status == "damaged" and "no checksum" in state.reason


# --- files plugins keep in the cache --------------------------------------------------------


def test_cache_verify_checks_plugin_files_and_fix_deletes_the_damaged(tmp_path, advbench):
    cache = tmp_path / "cache"
    folder = cache / "plugins" / "model" / "some-model"
    good = verified.verified_file(folder / "good.pt", lambda tmp: tmp.write_bytes(b"weights" * 100))
    bad = verified.verified_file(folder / "bad.pt", lambda tmp: tmp.write_bytes(b"weights" * 100))
    bad.write_bytes(b"weightz" + bad.read_bytes()[7:])  # same size, other bytes
    (folder / "loose.bin").write_bytes(b"a plugin wrote this without advbench.verified")
    rc, out, _ = advbench("cache", "verify", "--cache-dir", cache)
    assert rc == 1
    assert "damaged: plugins/model/some-model/bad.pt: bad.pt does not match its checksum" in out
    assert "unverified: plugins/model/some-model/loose.bin: loose.bin has no checksum" in out
    assert "0 artefacts, 0 damaged; 3 plugin files, 1 damaged, 1 without a checksum" in out
    rc, out, _ = advbench("cache", "verify", "--cache-dir", cache, "--fix")
    assert rc == 0 and "(deleted)" in out and not bad.exists() and good.exists()
    again = verified.verified_file(bad, lambda tmp: tmp.write_bytes(b"weights" * 100))  # the plugin rebuilds it
    assert verified.file_state(again).ok


def test_verified_file_rebuilds_a_file_without_a_checksum_and_names_it(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"left by an older version")
    with pytest.warns(UserWarning, match=f"rebuilding w.pt: {path} has no checksum"):
        verified.verified_file(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and verified.file_state(path).ok
    calls = []
    verified.verified_file(path, lambda tmp: calls.append(tmp))
    assert calls == []  # intact: used as found


# --- cache prune ------------------------------------------------------------------------------


def test_cache_prune_removes_temporary_files_whose_writer_is_gone(tmp_path, advbench):
    folder = tmp_path / "cache" / "plugins" / "model" / "digits-cnn"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    of_dead = folder / f".w.pt.pid{dead.pid}.0badc0de.tmp"  # a writer killed mid-write
    of_live = folder / f".w.pt.pid{os.getpid()}.deadbeef.tmp"  # a writer at work
    old, fresh = folder / "digits-cnn-abc.tmp", folder / "x.pt12ab.tmp"  # writers unknown: by age
    for path in (of_dead, of_live, old, fresh):
        path.write_bytes(b"half")
    long_ago = time.time() - STALE_TMP_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    rc, out, _ = advbench("cache", "prune", "--cache-dir", tmp_path / "cache")
    assert rc == 0 and "and 2 temporary files" in out
    assert [p.exists() for p in (of_dead, of_live, old, fresh)] == [False, True, False, True]


# --- workers die with the run -----------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers and /proc: Linux")
def test_killing_a_run_with_workers_kills_its_workers(tmp_path):
    """SIGKILL to `advbench run --workers 2` left both workers waiting on their queue forever
    (~600 MB each); now the kernel kills them with their parent (PR_SET_PDEATHSIG)."""
    config = tmp_path / "benchmark.toml"
    config.write_text(tiny_benchmark(images=20))
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_TINY_WORLD, "run", str(config), "--workers", "2",
                             "--cache-dir", str(tmp_path / "cache"), "--store", str(tmp_path / "r.db")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the run finished before its worker pool started"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while any(pid_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(pid_alive(w) for w in workers), f"workers {sorted(workers)} outlived their parent"
    finally:
        proc.kill()
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_worker_whose_parent_is_already_gone_exits(tmp_path):
    """The parent may die between the fork and arming the signal: the worker checks."""
    code = ("import os, sys; from advbench.lifetime import die_with_parent; "
            "die_with_parent(parent=os.getppid() + 999999); print('survived')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "survived" not in done.stdout


# --- reports do not depend on the order of the store's rows -----------------------------------


def _every_table(cells) -> str:
    built = tables.leaderboard(cells) + [t for n in sorted(tables.TABLES) for t in tables.TABLES[n](cells)]
    built += [t for name in sorted(tables.EXTRA_TABLES) for t in tables.EXTRA_TABLES[name](cells)]
    return formats.render_json(built)


def test_every_table_is_the_same_whatever_order_the_cells_finished_in(evaluation_run):
    result, root = evaluation_run
    store = open_store(str(root / "results.db"), create=False)
    run = store.get_run(result.run_id)
    cells = store.cells(run.id)
    expected = _every_table(in_plan_order(cells, run.config_text))
    for seed in range(3):  # as a kill and a resume, or --workers, would have stored them
        shuffled = list(cells)
        random.Random(seed).shuffle(shuffled)
        assert _every_table(shuffled) != expected or seed > 0  # the order did matter
        assert _every_table(in_plan_order(shuffled, run.config_text)) == expected


def test_plan_order_follows_the_benchmark_file(evaluation_run):
    result, root = evaluation_run
    store = open_store(str(root / "results.db"), create=False)
    run = store.get_run(result.run_id)
    cells = in_plan_order(reversed(store.cells(run.id)), run.config_text)
    (table3,) = tables.table3(cells)
    assert [row[0] for row in table3.rows] == ["Original", "jpeg@90", "jpeg@60", "jpeg@30", "scaling@0.75",
                                               "scaling@1.25"]  # the grids as written
    assert table3.columns[1:4] == ("Normal images", "fgsm", "bim")
    (table4,) = tables.table4(cells)
    assert [row[0] for row in table4.rows] == ["JPEG", "All"]  # [detection] groups as written
