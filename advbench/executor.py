"""Executors run a wave of ready cells: in this process, or in a pool of forked workers.

Cells are pure functions of their inputs (read from and written to the content-addressed
cache), so where they run does not change their result. Forked workers inherit the loaded
models copy-on-write; only the parent writes to the store.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from advbench.errors import DataError

_task: Callable[[Any], Any] | None = None  # set in the parent just before forking


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism


def _call(item: Any) -> Any:
    assert _task is not None
    return _task(item)


class InProcess:
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        for item in items:
            yield fn(item)


class ForkPool:
    """Runs each item in one of ``workers`` forked processes; results in completion order."""

    def __init__(self, workers: int):
        self.workers = workers

    @staticmethod
    def available() -> bool:
        return sys.platform.startswith("linux")

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        global _task
        _task = fn
        pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_worker)
        try:
            futures = [pool.submit(_call, item) for item in items]
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool as e:
            raise DataError(f"a --workers process died (killed, out of memory?); cells finished so far are "
                            f"kept: run again with fewer workers ({self.workers} now)") from e
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C or an error: drop the queued cells
            _task = None


def executor_for(workers: int, n_items: int) -> InProcess | ForkPool:
    if workers > 1 and n_items > 1 and ForkPool.available():
        return ForkPool(min(workers, n_items))
    return InProcess()
