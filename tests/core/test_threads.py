"""The thread count of a run (``advbench.threads``): one per process unless the user says
otherwise, never over a user's OMP_NUM_THREADS; applied by the runner and in forked workers."""

from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from advbench import threads
from advbench import cli
from advbench.config import parse_benchmark
from advbench.errors import AdvbenchError
from advbench.execution.executors import _init_worker
from advbench.execution.runner import RunOptions, Runner
from advbench.testing import tiny_benchmark


@pytest.mark.parametrize("requested, environ, expected", [
    (None, {}, 1),                                               # the default
    (None, {"ADVBENCH_THREADS": "3"}, 3),
    (None, {"ADVBENCH_THREADS": "3", "OMP_NUM_THREADS": "4"}, 3),  # ours is the more specific
    (None, {"OMP_NUM_THREADS": "4"}, None),                      # the user's: left alone
    (None, {"MKL_NUM_THREADS": "2"}, None),
    ("2", {"ADVBENCH_THREADS": "3", "OMP_NUM_THREADS": "4"}, 2),  # the command line wins
    (5, {}, 5),
])
def test_the_thread_count_comes_from_the_option_the_environment_or_the_default(requested, environ, expected):
    assert threads.choose(requested, environ).threads == expected


def test_a_user_omp_num_threads_is_named_not_overridden():
    choice = threads.choose(None, {"OMP_NUM_THREADS": " 4 "})
    assert choice.threads is None and choice.describe() == "torch threads as OMP_NUM_THREADS=4 says"
    assert threads.choose(None, {}).describe() == "1 torch thread (default)"


@pytest.mark.parametrize("cores, load, workers, expected", [
    (2, 0.1, 1, 2),   # quiet: every core
    (2, 0.6, 1, 1),   # a core mostly busy
    (2, 2.7, 1, 1),   # busy: one, never zero
    (16, 3.2, 1, 13),
    (16, 0.0, 4, 4),  # shared by the workers
    (2, 0.0, 4, 1),
    (8, None, 1, 1),  # load unknown: the safe side
])
def test_auto_takes_the_idle_cores(cores, load, workers, expected):
    assert threads.auto_threads(cores, load, workers) == expected


def test_auto_says_what_it_saw():
    choice = threads.choose("auto", {}, cores=4, load=1.2)
    assert choice.threads == 3 and choice.describe() == "3 torch threads (--threads=auto: 4 cores, load 1.2)"
    assert threads.choose(None, {"ADVBENCH_THREADS": "AUTO"}, cores=2, load=0.0).threads == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_bad_settings_are_one_line_errors(value):
    with pytest.raises(AdvbenchError, match=r"expected a whole number >= 1 or 'auto'"):
        threads.choose(value, {})
    if value.strip():
        with pytest.raises(AdvbenchError, match=r"^ADVBENCH_THREADS "):
            threads.choose(None, {"ADVBENCH_THREADS": value})


def test_a_bad_threads_option_exits_2_in_one_line(tmp_path, capsys, monkeypatch, registry):
    monkeypatch.setattr(cli, "discover", lambda: registry)
    config = tmp_path / "b.toml"
    config.write_text(tiny_benchmark(images=12))
    assert cli.main(["run", str(config), "--threads", "0", "--store", str(tmp_path / "r.db"),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --threads '0': expected a whole number >= 1 or 'auto'"]
    assert not (tmp_path / "r.db").exists()


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_limited_sets_torch_and_blas_and_restores_them():
    before = torch.get_num_threads()
    with threads.limited(1):
        assert torch.get_num_threads() == 1
        assert _blas_threads() <= {1}
    assert torch.get_num_threads() == before
    with threads.limited(None):  # the user's OMP_NUM_THREADS: untouched
        assert torch.get_num_threads() == before


def test_the_runner_computes_its_cells_with_the_chosen_count(tmp_path, registry, monkeypatch):
    seen = []
    monkeypatch.setattr(Runner, "_schedule", lambda self, *args: seen.append(torch.get_num_threads()))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV, raising=False)
    bench = parse_benchmark(tiny_benchmark(images=12), registry)
    before = torch.get_num_threads()
    for option, expected in ((None, 1), (3, 3)):
        Runner(bench, registry, RunOptions(store=str(tmp_path / "r.db"), cache_dir=tmp_path / "c",
                                           threads=option)).run()
    assert seen == [1, 3] and torch.get_num_threads() == before


def test_a_forked_worker_takes_the_runs_count(monkeypatch):
    import advbench.lifetime

    monkeypatch.setattr(advbench.lifetime, "die_with_parent", lambda parent: "test")  # not this process
    before = torch.get_num_threads()
    try:
        _init_worker(0, 3)
        assert torch.get_num_threads() == 3
        _init_worker(0, None)  # the user's OMP_NUM_THREADS: what the worker inherited
        assert torch.get_num_threads() == 3
    finally:
        threads.apply(before)
