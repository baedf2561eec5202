"""Hardening: every bad input is one line on stderr with exit code 2 (no traceback), and damaged
state (truncated records and arrays, stale scratch folders, killed runs, read-only caches) is
recovered or named. Runs go through ``advbench.cli.main`` (stderr is not a terminal under
pytest, so the plain progress lines are what a batch log gets) or through the Runner, on the
tiny world."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import advbench.cli as cli
from advbench.cache import COMPLETE, Cache
from advbench.execution.execute import comparable
from advbench.store import open_store
from advbench.testing import run_tiny, tiny_benchmark

#: one operation per group (JPEG at quality 60, scaling by 0.75), as in the reliability report:
#: count features of one operation are constant or class-constant, which crashed LDA
WORLD = (tiny_benchmark(groups='{ JPEG = ["jpeg"], Scale = ["scaling"] }', images=20)
         .replace("grid = { quality = [90, 60, 30] }", "grid = { quality = [60] }")
         .replace("grid = { factor = [0.75, 1.25] }", "grid = { factor = [0.75] }"))
#: the same world with one operation changed: its predict cells and what reads them must be computed
CHANGED = WORLD.replace("grid = { quality = [60] }", "grid = { quality = [50] }")

PROGRESS_LINE = re.compile(r"^\[(\d+)/(\d+)\] (computed|cached|failed|skipped) (\S+(?: \(unseen [^)]*\))?) "
                           r"(\d+\.\d)s(?: \((.*)\))?$")

#: runs ``advbench`` with the installed plugins and the tiny world (as the tests' registry)
CLI_WITH_TINY_WORLD = ("import sys, advbench.cli as c; from advbench.testing import registry_with; "
                       "c.discover = registry_with; sys.exit(c.main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def world(tmp_path_factory, registry):
    """The one-operation world, run once, uninterrupted: (RunResult, its directory)."""
    root = tmp_path_factory.mktemp("one-op-world")
    result = run_tiny(root, WORLD, registry=registry)
    return result, root


def copy_world(world, tmp_path: Path, toml: str = WORLD) -> tuple[Path, Path, Path]:
    """A private copy of the world's cache, its config and a fresh store: (config, cache, store)."""
    _, root = world
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache, ignore=shutil.ignore_patterns("logs", "locks"))
    config = tmp_path / "benchmark.toml"
    config.write_text(toml)
    return config, cache, tmp_path / "results.db"


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    """Exit 2, no traceback, and exactly one line of stderr besides the progress lines (which
    may repeat a failed cell's error) holding every needle; that line."""
    assert rc == 2, err
    assert "Traceback" not in err and "\x1b" not in err, err
    found = [line for line in lines(err) if all(n in line for n in needles) and not PROGRESS_LINE.match(line)]
    assert len(found) == 1, f"wanted one line with {needles}, got:\n{err}"
    return found[0]


def cell_of(result, stage: str, title_part: str = ""):
    return next(o for o in result.outcomes if o.cell.stage == stage and title_part in o.cell.title)


# --- 1. attack parameters are validated -----------------------------------------------------


@pytest.mark.parametrize("epsilons", ["[]", "[-0.1]"])
def test_empty_or_negative_epsilons_fail_validate(advbench, tmp_path, epsilons):
    """Both passed validate; [] then crashed in eagerpy and [-0.1] "succeeded"."""
    config = tmp_path / "eps.toml"
    config.write_text(tiny_benchmark(attacks=f'plugin = "fgsm"\nepsilons = {epsilons}'))
    rc, out, err = advbench("validate", config)
    assert_one_line_error(rc, out + err, str(config), "attacks[0].epsilons")


# --- 2. LDA on one-operation groups ---------------------------------------------------------


def test_lda_on_one_operation_groups_completes(world):
    """digits; JPEG and scaling groups of one operation each; counting; LDA: exited 1 with
    IndexError in scikit-learn's SVD solver, now every cell completes."""
    result, _ = world
    assert not result.failed, [(o.cell.title, o.error) for o in result.failed]
    for group in ("JPEG", "Scale"):
        detect = cell_of(result, "detect", f"/{group}/counting/lda")
        assert dict((m[0], m[2]) for m in detect.metrics)["operations"] == 1.0


# --- 3. a read-only cache --------------------------------------------------------------------


def _read_only_runner(tmp_path: Path, how: str):
    """A function running ``advbench ARGS`` against a read-only cache: (rc, stdout, stderr).

    ``chmod``: permissions (chmod -R a-w), in this process; skipped as root, which ignores them.
    ``bind``: a read-only bind mount of the cache in a private mount namespace (unshare), in a
    subprocess; skipped where unshare/mount are not permitted (this is how root gets EROFS)."""
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores file permissions (the bind variant covers root)")
        return None
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount --bind -o ro '{tmp_path}' '{tmp_path}'"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("a read-only bind mount needs unshare --mount and mount permissions (root in a namespace)")

    def run(cache: Path, *args) -> tuple[int, str, str]:
        script = f"mount --bind -o ro '{cache}' '{cache}' && python=\"$0\" code=\"$1\" && shift && exec \"$python\" -c \"$code\" \"$@\""
        proc = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script, sys.executable,
                               CLI_WITH_TINY_WORLD, *map(str, args)], capture_output=True, text=True, timeout=600)
        return proc.returncode, proc.stdout, proc.stderr

    return run


@pytest.mark.parametrize("how", ["chmod", "bind"])
@pytest.mark.slow  # advbench in subprocesses
def test_a_read_only_cache_serves_a_cached_run_and_names_itself_otherwise(world, tmp_path, advbench, how):
    runner = _read_only_runner(tmp_path, how)
    config, cache, store = copy_world(world, tmp_path)
    changed = tmp_path / "changed.toml"
    changed.write_text(CHANGED)
    if runner is None:  # chmod -R a-w, in this process
        for path in [cache, *cache.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)

        def runner(cache_dir, *args):
            return advbench(*args)

    try:
        rc, _, err = runner(cache, "run", config, "--cache-dir", cache, "--store", store)
        assert rc == 0, err
        assert f"{len(world[0].outcomes)} cached, 0 failed" in err
        rc, _, err = runner(cache, "run", changed, "--cache-dir", cache, "--store", store)
        line = assert_one_line_error(rc, err, str(cache), "--cache-dir")
        assert line.startswith("error: cannot write the cache at"), err
        assert all(PROGRESS_LINE.match(other) for other in lines(err) if other != line), err  # the cached cells
    finally:
        for path in [cache, *cache.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    statuses = [r.status for r in open_store(str(store), create=False).runs()]
    assert statuses == ["ok", "failed"]  # the failed run is closed, not left running


# --- 4. an image folder without a readable image ---------------------------------------------


def test_an_image_folder_of_junk_is_refused_before_any_work_naming_the_folder(advbench, tmp_path):
    """It failed the clean cell (after 20 warnings, one per file); the dataset's check finds it
    before the store or the cache is touched."""
    root = tmp_path / "junk"
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        (root / str(digit) / "a.jpg").write_bytes(os.urandom(300))
        (root / str(digit) / "b.png").write_text("not an image")
    config = tmp_path / "junk.toml"
    config.write_text(WORLD.replace('plugin = "testing-digits"', f'plugin = "image-folder"\nroot = "{root}"'))
    rc, out, err = advbench("run", config, "--cache-dir", tmp_path / "cache", "--store", tmp_path / "r.db")
    line = assert_one_line_error(rc, err, "datasets[image-folder]:", f"image folder {root}")
    assert "holds no readable image: all 20 files were skipped" in line and len(lines(out + err)) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r.db").exists()


# --- 5. an unreadable checkpoint --------------------------------------------------------------


def test_a_random_bytes_checkpoint_is_one_line_without_unsafe_advice(advbench, tmp_path):
    checkpoint = tmp_path / "weights.th"
    checkpoint.write_bytes(b"\x13" + os.urandom(2047))
    config = tmp_path / "ckpt.toml"
    config.write_text(WORLD.replace('plugin = "testing-cnn"', f'plugin = "cifar-resnet"\ncheckpoint = "{checkpoint}"'))
    rc, _, err = advbench("run", config, "--cache-dir", tmp_path / "cache", "--store", tmp_path / "r.db")
    line = assert_one_line_error(rc, err, f"{checkpoint} is not a readable weights checkpoint")
    assert "expected a file written by torch.save" in line and "weights_only" not in err


# --- 7. --store naming a directory ------------------------------------------------------------


def test_a_store_that_is_a_directory_is_one_line(advbench, tmp_path):
    config = tmp_path / "b.toml"
    config.write_text(WORLD)
    (tmp_path / "folder").mkdir()
    for args in (["run", config, "--cache-dir", tmp_path / "cache"], ["report"]):
        rc, out, err = advbench(*args, "--store", tmp_path / "folder")
        assert_one_line_error(rc, out + err, str(tmp_path / "folder"), "is a directory")
        assert len(lines(out + err)) == 1
    assert not (tmp_path / "cache").exists()  # refused before any work


# --- 8. damaged state -------------------------------------------------------------------------


def test_a_truncated_completion_record_is_recomputed_and_said_in_one_line(world, tmp_path, advbench):
    result, _ = world
    config, cache, store = copy_world(world, tmp_path)
    detect = cell_of(result, "detect", "/JPEG/")
    record = Cache(cache).path("detect", detect.cell.key) / COMPLETE
    record.write_text(record.read_text()[:40])
    rc, _, err = advbench("run", config, "--cache-dir", cache, "--store", store)
    assert rc == 0, err
    said = [line for line in lines(err) if detect.cell.title in line]
    assert len(said) == 1, err
    match = PROGRESS_LINE.match(said[0])
    assert match and match[3] == "computed", said
    assert match[6] == f"recomputed: its cached artefact was damaged (unreadable {COMPLETE} (JSONDecodeError))"
    assert Cache(cache).state("detect", detect.cell.key).complete


def test_a_truncated_array_is_recomputed_and_later_runs_read_the_new_one(world, tmp_path, registry):
    result, _ = world
    _, cache, _ = copy_world(world, tmp_path)
    predict = cell_of(result, "predict", "/fgsm/jpeg@60")
    labels = Cache(cache).path("predict", predict.cell.key) / "labels.npy"
    original = labels.read_bytes()
    labels.write_bytes(original[: len(original) // 2])

    second = run_tiny(tmp_path, WORLD, registry=registry)
    redone = {o.cell.key: o for o in second.outcomes if not o.cached}
    assert list(redone) == [predict.cell.key], [o.cell.title for o in redone.values()]
    assert redone[predict.cell.key].note == (f"recomputed: its cached artefact was damaged (labels.npy has "
                                             f"{len(original) // 2} bytes, its record says {len(original)})")
    assert comparable(redone[predict.cell.key].metrics) == comparable(predict.metrics)
    assert labels.read_bytes() == original  # the same numbers again

    third = run_tiny(tmp_path, WORLD, registry=registry)
    assert all(o.cached for o in third.outcomes) and not third.failed
    assert Cache(cache).state("predict", predict.cell.key).complete


def test_cache_verify_reports_damage_and_fix_deletes_it(world, tmp_path, advbench):
    result, _ = world
    _, cache, _ = copy_world(world, tmp_path)
    split = cell_of(result, "split")
    directory = Cache(cache).path("split", split.cell.key)
    victim = next(p for p in sorted(directory.iterdir()) if p.suffix == ".npy")
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))  # one bit, same size
    rc, out, _ = advbench("cache", "verify", "--cache-dir", cache)
    assert rc == 1
    assert f"damaged: split/{split.cell.key}: {victim.name} does not match its checksum" in lines(out)
    assert f"{len(result.outcomes)} artefacts, 1 damaged" in out
    rc, out, _ = advbench("cache", "verify", "--cache-dir", cache, "--fix")
    assert rc == 0 and "(deleted)" in out and not directory.exists()
    rc, out, _ = advbench("cache", "verify", "--cache-dir", cache)
    assert rc == 0 and f"{len(result.outcomes) - 1} artefacts, 0 damaged" in out


def test_scratch_folders_of_killed_runs_are_swept_and_locks_do_not_pile_up(world, tmp_path, advbench, registry):
    result, root = world
    assert not list((root / "cache" / "locks").glob("*.lock"))  # a finished run leaves no lock files
    _, cache, _ = copy_world(world, tmp_path)
    c = Cache(cache)
    redo, kept = cell_of(result, "detect", "/Scale/"), cell_of(result, "split")
    shutil.rmtree(c.path("detect", redo.cell.key))  # a cell the next run computes: takes its lock
    stale = [c.path(o.cell.stage, o.cell.key).parent / f".{o.cell.key}.{hexa}.tmp"
             for o in (redo, kept) for hexa in ("0badc0de", "deadbeef")]
    for path in stale:
        path.mkdir(parents=True)
        (path / "half.npy").write_bytes(b"\x93NUMPY")

    second = run_tiny(tmp_path, WORLD, registry=registry)
    assert [o.cell.key for o in second.outcomes if not o.cached] == [redo.cell.key]
    assert [p.exists() for p in stale] == [False, False, True, True]  # swept under the lock taken
    assert not list((cache / "locks").glob("*.lock"))

    (cache / "locks" / f"split-{kept.cell.key}.lock").touch()  # as a killed run leaves one
    rc, out, _ = advbench("cache", "prune", "--cache-dir", cache)
    assert rc == 0 and "removed 2 stale scratch folders, 1 lock files and 0 temporary files" in out
    assert not any(p.exists() for p in stale) and not list((cache / "locks").glob("*.lock"))
    assert c.state("split", kept.cell.key).complete  # artefacts untouched


@pytest.mark.slow  # advbench in subprocesses
def test_a_run_killed_with_sigkill_is_completed_by_the_next_with_identical_results(world, tmp_path, registry):
    result, _ = world
    config = tmp_path / "benchmark.toml"
    config.write_text(WORLD)
    cache, store = tmp_path / "cache", tmp_path / "results.db"
    proc = subprocess.Popen([sys.executable, "-c", CLI_WITH_TINY_WORLD, "run", str(config), "--cache-dir", str(cache),
                             "--store", str(store)], stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:  # plain progress: one line per finished cell
            seen.append(line)
            if PROGRESS_LINE.match(line.strip()) and " computed " in line:
                proc.send_signal(signal.SIGKILL)  # the next cell (the attack) is at work now
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    assert len([line for line in seen if PROGRESS_LINE.match(line.strip())]) == 1

    second = run_tiny(tmp_path, WORLD, registry=registry)
    assert not second.failed and cell_of(second, "clean").cached and second.computed
    baseline = {o.cell.key: comparable(o.metrics) for o in result.outcomes}
    assert {o.cell.key: comparable(o.metrics) for o in second.outcomes} == baseline
    assert not list(cache.rglob(".*.tmp")) and not list((cache / "locks").glob("*.lock"))
    assert [r.status for r in open_store(str(store), create=False).runs()] == ["ok"]  # the same run, completed


# --- 9. features take their own k -------------------------------------------------------------


def test_a_feature_takes_its_own_k_and_the_rule_keeps_the_benchmarks(tmp_path, registry):
    toml = WORLD.replace("top_k = 2", "top_k = 1").replace('[[features]]\nplugin = "counting"',
                                                            '[[features]]\nplugin = "counting"\nk = 3')
    assert "k = 3" in toml and "top_k = 1" in toml
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [(o.cell.title, o.error) for o in result.failed]
    cache = Cache(tmp_path / "cache")
    for o in (o for o in result.outcomes if o.cell.stage == "detect"):
        assert dict((m[0], m[2]) for m in o.metrics)["feature_size"] == 3.0  # C(a), C(b), C(c)
    clean = cell_of(result, "clean")
    keep = np.load(cache.path("clean", clean.cell.key) / "top1.npy")
    for o in (o for o in result.outcomes if o.cell.stage == "predict" and "/fgsm/" in o.cell.title):
        labels = np.load(cache.path("predict", o.cell.key) / "labels.npy")
        assert labels.shape[1] == 3  # predictions record max(k) labels
        source = np.load(cache.path("attack", cell_of(result, "attack").cell.key) / "source.npy")
        top1_rule = int(np.sum(labels[:, 0] != keep[source]))  # Table 3's count, by the top-1 rule
        assert dict((m[0], m[2]) for m in o.metrics)["topk_misclassified"] == top1_rule
    attacked = np.load(cache.path("predict", cell_of(result, "predict", "/fgsm/original").cell.key) / "labels.npy")
    assert (attacked[:, 0] != keep[source]).all()  # adversarial under the top-1 rule ...
    assert (attacked == keep[source][:, None]).any()  # ... though not all under a top-3 one


# --- 10. batch-friendly output ----------------------------------------------------------------


def test_run_without_a_terminal_prints_one_plain_line_per_cell(world, tmp_path, advbench):
    result, _ = world
    config, cache, store = copy_world(world, tmp_path)
    shutil.rmtree(Cache(cache).path("split", cell_of(result, "split").cell.key))
    rc, out, err = advbench("run", config, "--cache-dir", cache, "--store", store)
    assert rc == 0 and "\x1b" not in err and "\x1b" not in out
    progress = [PROGRESS_LINE.match(line) for line in lines(err)]
    done = [m for m in progress if m]
    assert [int(m[1]) for m in done] == list(range(1, len(result.outcomes) + 1))
    assert {int(m[2]) for m in done} == {len(result.outcomes)}
    assert sorted(m[4] for m in done) == sorted(o.cell.title for o in result.outcomes)  # one line per cell
    assert [m[4] for m in done if m[3] == "computed"] == [cell_of(result, "split").cell.title]
    others = [line for line, m in zip(lines(err), progress) if not m]
    assert len(others) == 3 and others[0].startswith("tiny: ") and others[2].startswith("next: advbench report")
    assert others[1].startswith("warning: few adversarial eval images")  # a tiny world: a handful per set


def test_plain_progress_prints_a_progress_line_now_and_then():
    import io

    from rich.console import Console

    from advbench.plan import Cell
    from advbench.execution.execute import CellOutcome

    buffer = io.StringIO()
    progress = cli.PlainProgress({"predict": 3}, Console(file=buffer, width=40), every=0.0)
    cells = [Cell("predict", f"k{i}", "digits", "cnn", imageset="fgsm", operation=f"jpeg@{q}") for i, q in enumerate((90, 60, 30))]
    progress(CellOutcome(cells[0], "ok", seconds=1.25))
    progress(CellOutcome(cells[1], "ok", cached=True))
    progress(CellOutcome(cells[2], "failed", error="DataError: a long message " * 3, seconds=0.5))
    text = buffer.getvalue().splitlines()
    assert text[0] == "[1/3] computed predict:digits/cnn/fgsm/jpeg@90 1.2s"
    assert re.fullmatch(r"progress: 1/3 cells, \d+\.\d min elapsed, ~\d+\.\d min left", text[1])
    assert text[2] == "[2/3] cached predict:digits/cnn/fgsm/jpeg@60 0.0s" and text[3].startswith("progress: 2/3")
    assert text[4] == "[3/3] failed predict:digits/cnn/fgsm/jpeg@30 0.5s (" + "DataError: a long message " * 3 + ")"
    assert len(text) == 5  # no progress line after the last cell; long lines are not wrapped
    assert all(PROGRESS_LINE.match(line) for line in (text[0], text[2], text[4]))


def test_the_time_left_weighs_each_stage_by_its_own_computed_cells():
    import io

    from rich.console import Console

    from advbench.plan import Cell
    from advbench.execution.execute import CellOutcome

    progress = cli.PlainProgress({"attack": 2, "score": 10}, Console(file=io.StringIO()), every=1e9)
    progress(CellOutcome(Cell("attack", "a1", "d", "m", imageset="pgd"), "ok", seconds=100.0))
    progress(CellOutcome(Cell("score", "s1", "d", "m", imageset="pgd@1"), "ok", seconds=1.0))
    assert progress.left() == 100.0 + 9 * 1.0  # one attack at 100 s, nine scores at 1 s
