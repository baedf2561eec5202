"""The Ray executor: the tiny benchmark on a local Ray instance gives the in-process results,
survives a worker killed mid-cell, isolates a cell that raises, and resumes from the driver's
cache. One Ray instance (2 CPUs) serves the whole module: starting Ray is the slow part.

The plugins below are registered from this module, which the Ray workers import by name (the
registry's sources); the module's folder is on their PYTHONPATH. They misbehave only where
$ADVBENCH_TEST_RAY_DIR is set, i.e. in this module's Ray workers, so the in-process reference
runs are plain.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from advbench import hookimpl
from advbench.cache import COMPLETE, Cache, save_arrays, write_complete
from advbench.config import parse_benchmark
from advbench.errors import DataError, PluginError
from advbench.execution.ray_executor import NODE_CACHE_ENV, Packed, pack, reads, receive
from advbench.registry import registry_from_sources
from advbench.execution.runner import RunOptions, Runner
from advbench.specs import AttackSpec, DetectorSpec
from advbench.execution.execute import comparable
from advbench.store import open_store
from advbench.testing import registry_with, tiny_benchmark

SCRATCH = "ADVBENCH_TEST_RAY_DIR"
requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                  reason='Ray is not installed: pip install -e ".[ray]"')

ADAPTIVE = tiny_benchmark(extra='[[adaptive]]\nplugin = "eot-pgd"\nbudgets = [0.3]\nsteps = 5\n'
                                'targets = [{ group = "JPEG" }]\n')
SLEEPY = tiny_benchmark(detectors=['plugin = "lda"', 'plugin = "sleepy"'])
EXPLODING = tiny_benchmark(attacks=['plugin = "explode"', 'plugin = "fgsm"'])


# --- plugins (imported by name on the workers) ----------------------------------------------


class _Centroids:
    """Nearest class centroid; in a Ray worker, the first fit of the module sleeps until the
    test kills its process (it writes its pid for that)."""

    def fit(self, features, labels):
        scratch = os.environ.get(SCRATCH)
        if scratch:
            with open(Path(scratch) / "sleepy-fits", "a") as f:
                f.write(f"{os.getpid()}\n")
            try:
                fd = os.open(Path(scratch) / "sleepy.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:  # a later fit (the retry, the other group): no sleep
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                time.sleep(120)
        features, labels = np.asarray(features, dtype=float), np.asarray(labels)
        self.centroids = [features[labels == c].mean(axis=0) if (labels == c).any() else np.zeros(features.shape[1])
                          for c in (0, 1)]
        return self

    def scores(self, features):
        features = np.asarray(features, dtype=float)
        return (np.linalg.norm(features - self.centroids[0], axis=1)
                - np.linalg.norm(features - self.centroids[1], axis=1))

    def predict(self, features):
        return (self.scores(features) > 0).astype(int)


def _explode(model, images, criterion, params, ctx):
    scratch = os.environ.get(SCRATCH)
    if scratch:
        with open(Path(scratch) / "explode-calls", "a") as f:
            f.write(f"{os.getpid()}\n")
    raise RuntimeError("boom")


@hookimpl
def advbench_register_detectors(register):
    register(DetectorSpec(name="sleepy", summary="Nearest centroid; its first fit in a Ray worker sleeps.",
                          build=lambda params, seed: _Centroids()))


@hookimpl
def advbench_register_attacks(register):
    register(AttackSpec(name="explode", summary="always raises", run=_explode))


REGISTRY = registry_with(sys.modules[__name__])


# --- helpers --------------------------------------------------------------------------------


@contextmanager
def _one_thread():
    """The in-process reference, computed as a Ray worker computes it: on one torch thread (a
    reduction over more threads sums in another order)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run(root: Path, toml: str, executor: str, store: str | None = None):
    root.mkdir(parents=True, exist_ok=True)
    path = root / "benchmark.toml"
    path.write_text(toml)
    bench = parse_benchmark(toml, REGISTRY, path=path)
    options = RunOptions(store=store or f"sqlite:///{root / 'results.db'}", cache_dir=root / "cache", executor=executor)
    return Runner(bench, REGISTRY, options).run()


def _results(result) -> dict[str, tuple[str, str]]:
    return {o.cell.key: (o.status, comparable(o.metrics)) for o in result.outcomes}


def _reference(root: Path, toml: str) -> dict[str, tuple[str, str]]:
    with _one_thread():
        return _results(_run(root, toml, "local"))


def _stored_once(url: str, result) -> None:
    """Every cell of the run is in the store once, each metric once."""
    cells = open_store(url).cells(result.run_id)
    assert sorted(c.key for c in cells) == sorted(o.cell.key for o in result.outcomes)
    for c in cells:
        names = [(m.name, m.subset) for m in c.metrics]
        assert len(names) == len(set(names)), c.key


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray instance with 2 CPUs; its workers see this module on their path, a node cache
    and a scratch folder of their own. Yields the folder holding both."""
    ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]"')
    if ray.is_initialized():
        pytest.skip("this process already belongs to a Ray instance")
    root = tmp_path_factory.mktemp("ray")
    (root / "scratch").mkdir()
    here = Path(__file__).resolve()  # this module, as "test_ray_executor" or "tests.core.test_ray_executor"
    path = [str(here.parent), str(here.parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {NODE_CACHE_ENV: str(root / "node-cache"), SCRATCH: str(root / "scratch"), "PYTHONPATH": os.pathsep.join(path)}
    temp = tempfile.mkdtemp(prefix="abray-")  # short: Ray's socket paths live under it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": env}, _temp_dir=temp)
    yield root
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


# --- without Ray ----------------------------------------------------------------------------


def test_a_registry_is_rebuilt_from_its_sources():
    rebuilt = registry_from_sources(REGISTRY.sources)
    assert rebuilt.sources == REGISTRY.sources
    assert ("advbench.testing.tiny_world_plugins", "advbench.testing") in rebuilt.sources
    assert [(e.spec.kind, e.spec.name, e.package) for e in rebuilt.entries()] == \
        [(e.spec.kind, e.spec.name, e.package) for e in REGISTRY.entries()]
    with pytest.raises(PluginError, match="cannot import plugin module 'nowhere.plugins' .*ModuleNotFoundError") as err:
        registry_from_sources([("nowhere.plugins", "nowhere")])
    assert "\n" not in str(err.value)


def _artefact(cache: Cache, key: str = "ab" + "0" * 30) -> str:
    with cache.writing("attack", key) as scratch:
        save_arrays(scratch, images=np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3))
        (scratch / "files").mkdir()
        (scratch / "files" / "0.png").write_bytes(b"\x89PNG not really")
        write_complete(scratch, {"metrics": [["success", "", 1.0]]})
    return key


def test_an_artefact_travels_packed_and_is_checked_on_arrival(tmp_path):
    here, there = Cache(tmp_path / "here"), Cache(tmp_path / "there")
    key = _artefact(here)
    packed = pack(here, "attack", key)
    assert set(packed.files) == {"images.npy", "files/0.png", COMPLETE}
    receive(there, packed)
    assert there.state("attack", key).complete and there.metrics("attack", key) == here.metrics("attack", key)
    receive(there, packed)  # already there: kept as it is
    damaged = {**packed.files, "images.npy": packed.files["images.npy"].copy()}
    damaged["images.npy"][-1] ^= 1
    with pytest.raises(DataError, match="arrived damaged"):
        receive(Cache(tmp_path / "elsewhere"), Packed("attack", key, damaged))
    assert not Cache(tmp_path / "elsewhere").path("attack", key).exists()
    with pytest.raises(DataError, match="outside it"):
        receive(Cache(tmp_path / "evil"), Packed("attack", key, {**packed.files, "../x": packed.files[COMPLETE]}))


def test_a_cell_reads_its_deps_which_hold_its_worlds_clean_set():
    from advbench.execution.context import plan_for

    plan = plan_for(parse_benchmark(ADAPTIVE, REGISTRY), REGISTRY)
    clean = plan.stage("clean")[0].key
    for cell in plan.cells:
        assert set(reads(plan, cell)) == set(cell.deps) and (cell.stage == "clean" or clean in cell.deps)
    assert reads(plan, plan.stage("clean")[0]) == ()


# --- on Ray ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adaptive_reference(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("reference"), ADAPTIVE)


@requires_ray
@pytest.mark.slow  # a local Ray instance
def test_the_benchmark_on_ray_equals_the_in_process_run(ray_cluster, adaptive_reference, store_url, tmp_path):
    result = _run(tmp_path, ADAPTIVE, "ray", store_url)
    assert not result.failed, [(o.cell.title, o.error) for o in result.failed]
    assert {o.cell.stage for o in result.outcomes} >= {"clean", "attack", "split", "predict", "detect", "adaptive",
                                                       "score", "correct"}
    assert _results(result) == adaptive_reference
    _stored_once(store_url, result)
    cache = Cache(tmp_path / "cache")  # every artefact came back to the driver, intact
    assert all(cache.state(o.cell.stage, o.cell.key).complete for o in result.outcomes)
    if not store_url.startswith("sqlite"):
        return
    # resume: the driver lost its trained cells, the nodes everything; inputs go out from here
    later = {"detect", "score", "correct", "adaptive"}
    for o in result.outcomes:
        if o.cell.stage in later:
            cache.discard(o.cell.stage, o.cell.key)
    shutil.rmtree(ray_cluster / "node-cache", ignore_errors=True)
    resumed = _run(tmp_path, ADAPTIVE, "ray", store_url)
    assert {o.cell.stage for o in resumed.computed} == later
    assert all(o.cached for o in resumed.outcomes if o.cell.stage not in later)
    assert _results(resumed) == adaptive_reference


def _kill_when_it_sleeps(marker: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            pid = int(marker.read_text())
        except (FileNotFoundError, ValueError):  # not yet written
            time.sleep(0.05)
            continue
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        return


@requires_ray
@pytest.mark.slow  # a local Ray instance
def test_a_worker_killed_mid_cell_is_retried_and_the_run_completes(ray_cluster, tmp_path):
    reference = _reference(tmp_path / "reference", SLEEPY)
    scratch = ray_cluster / "scratch"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_it_sleeps, args=(scratch / "sleepy.pid", killed), daemon=True)
    killer.start()
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    result = _run(tmp_path / "ray", SLEEPY, "ray", url)
    killer.join(timeout=5)
    assert killed, "the sleepy detector never started in a Ray worker"
    fits = (scratch / "sleepy-fits").read_text().split()
    sleepy = [o for o in result.outcomes if o.cell.stage == "detect" and o.cell.detector == "sleepy"]
    assert str(killed[0]) in fits and len(fits) == len(sleepy) + 1  # one fit died, and was run again
    assert not result.failed, [(o.cell.title, o.error) for o in result.failed]
    assert _results(result) == reference
    _stored_once(url, result)


@requires_ray
@pytest.mark.slow  # a local Ray instance
def test_a_cell_that_raises_is_isolated_not_retried_and_the_plan_goes_on(ray_cluster, tmp_path):
    reference = _reference(tmp_path / "reference", EXPLODING)
    result = _run(tmp_path / "ray", EXPLODING, "ray")
    assert [(o.cell.title, o.status) for o in result.failed] == [("attack:testing-digits/testing-cnn/explode", "failed")]
    assert "RuntimeError: boom" in result.failed[0].error
    assert len((ray_cluster / "scratch" / "explode-calls").read_text().split()) == 1  # raised once, not retried
    assert any(o.cell.stage == "detect" and o.status == "ok" for o in result.outcomes)  # replanned without it
    assert _results(result) == reference
    assert "boom" in result.log_path.read_text()  # the worker's log reaches the driver's
