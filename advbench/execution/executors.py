"""Executors run ready cells and hand back their outcomes: in this process, in a pool of forked
workers (``--workers N``), or as Ray tasks (:mod:`advbench.execution.ray_executor`).

A submission is a batch: one cell, or the ready cells of one group of a batched stage (the
predictions of one image set under its operations), run by
:func:`advbench.execution.execute.execute_batch` on cells named by their keys and a
:class:`~advbench.execution.context.Job`; a worker builds its own context from the Job (the same
plan: it is a pure function). Only the driver writes to the store.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from advbench.errors import DataError
from advbench.execution.context import CellContext, Contexts, Job
from advbench.execution.execute import CellOutcome, execute_batch
from advbench.plan import Cell
from advbench.registry import Registry


class Executor(Protocol):
    def submit(self, job: Job, cells: Sequence[Cell]) -> None:
        """Run ``cells`` (one cell, or a batch of one group) and report each one's outcome."""

    def collect(self) -> list[CellOutcome]:
        """Block until at least one submission has finished; return the outcomes of every finished one."""

    def busy(self) -> int:
        """How many submissions have not been collected."""

    def close(self, cancel: bool = False) -> None: ...


class InProcess:
    """Runs each submission in this process, one per :meth:`collect`, in submission order."""

    def __init__(self, context: Callable[[Job], CellContext]):
        self.context = context
        self.queue: deque[tuple[Job, Sequence[Cell]]] = deque()

    def submit(self, job: Job, cells: Sequence[Cell]) -> None:
        self.queue.append((job, cells))

    def collect(self) -> list[CellOutcome]:
        job, cells = self.queue.popleft()
        return execute_batch(self.context(job), cells)

    def busy(self) -> int:
        return len(self.queue)

    def close(self, cancel: bool = False) -> None:
        self.queue.clear()


# --- forked workers --------------------------------------------------------------------------

_registry: Registry | None = None  # the driver's registry, inherited by forked workers
_contexts = Contexts(lambda job: CellContext.from_job(job, _registry))  # type: ignore[arg-type]


def _init_worker(parent: int, threads: int | None) -> None:
    from advbench import threads as thread_settings
    from advbench.lifetime import die_with_parent

    die_with_parent(parent)  # a killed driver must not leave its workers waiting forever
    thread_settings.apply(threads)  # the run's count per process (None: the user's OMP_NUM_THREADS)


def worker_context(job: Job) -> CellContext:
    """This process's context for ``job`` (built once per job and process)."""
    return _contexts.get(job)


def _work(job: Job, keys: tuple[str, ...]) -> list[CellOutcome]:
    ctx = worker_context(job)
    return execute_batch(ctx, [ctx.plan.by_key[k] for k in keys])


class ForkPool:
    """Runs submissions in ``workers`` forked processes; outcomes in completion order."""

    def __init__(self, workers: int, registry: Registry, context: Callable[[Job], CellContext] | None = None,
                 threads: int | None = 1):
        global _registry
        _registry = registry
        self.workers, self.threads = workers, threads
        self.context = context  # the driver's: forked workers inherit it with its loaded models
        self.pool: ProcessPoolExecutor | None = None
        self.futures: set[Future] = set()

    @staticmethod
    def available() -> bool:
        return sys.platform.startswith("linux")

    def submit(self, job: Job, cells: Sequence[Cell]) -> None:
        if self.pool is None:  # forked at the first submission: models loaded by then are shared
            if self.context is not None:
                _contexts.seed(job, self.context(job))
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_init_worker, initargs=(os.getpid(), self.threads))
        self.futures.add(self.pool.submit(_work, job, tuple(c.key for c in cells)))

    def collect(self) -> list[CellOutcome]:
        done, self.futures = wait(self.futures, return_when=FIRST_COMPLETED)
        try:
            return [outcome for f in done for outcome in f.result()]
        except BrokenProcessPool as e:
            raise DataError(f"a --workers process died (killed, out of memory?); cells finished so far are "
                            f"kept: run again with fewer workers ({self.workers} now)") from e

    def busy(self) -> int:
        return len(self.futures)

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=cancel)  # Ctrl-C or an error: drop the queued cells
            self.pool = None
        self.futures = set()
