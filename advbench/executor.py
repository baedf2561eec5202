"""Executors run ready cells and hand back their outcomes: in this process, in a pool of forked
workers (``--workers N``), or as Ray tasks (:mod:`advbench.ray_executor`).

Each runs the same function, :func:`advbench.stages.execute.execute`, on a cell named by its
key and a :class:`~advbench.stages.context.Job`; a worker builds its own context from the Job
(the same plan: it is a pure function). Only the driver writes to the store.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from advbench.errors import DataError
from advbench.plan import Cell
from advbench.registry import Registry
from advbench.stages.context import CellContext, Job
from advbench.stages.execute import CellOutcome, execute


class Executor(Protocol):
    def submit(self, job: Job, cell: Cell) -> None: ...

    def collect(self) -> list[CellOutcome]:
        """Block until at least one submitted cell has finished; return every finished one."""

    def busy(self) -> int:
        """How many submitted cells have not been collected."""

    def close(self, cancel: bool = False) -> None: ...


class InProcess:
    """Runs each cell in this process, one per :meth:`collect`, in submission order."""

    def __init__(self, context: Callable[[Job], CellContext]):
        self.context = context
        self.queue: deque[tuple[Job, Cell]] = deque()

    def submit(self, job: Job, cell: Cell) -> None:
        self.queue.append((job, cell))

    def collect(self) -> list[CellOutcome]:
        job, cell = self.queue.popleft()
        return [execute(self.context(job), cell)]

    def busy(self) -> int:
        return len(self.queue)

    def close(self, cancel: bool = False) -> None:
        self.queue.clear()


# --- forked workers --------------------------------------------------------------------------

_registry: Registry | None = None  # the driver's registry, inherited by forked workers
_contexts: dict[Job, CellContext] = {}


def _init_worker(parent: int) -> None:
    import torch

    from advbench.lifetime import die_with_parent

    die_with_parent(parent)  # a killed driver must not leave its workers waiting forever
    torch.set_num_threads(1)  # one core per worker; the pool is the parallelism


def worker_context(job: Job) -> CellContext:
    """This process's context for ``job`` (built once per job and process)."""
    if job not in _contexts:
        _contexts.clear()  # a new job (a replan): drop the old plan, keep nothing stale
        _contexts[job] = CellContext.from_job(job, _registry)
    return _contexts[job]


def _work(job: Job, key: str) -> CellOutcome:
    ctx = worker_context(job)
    return execute(ctx, ctx.plan.by_key[key])


class ForkPool:
    """Runs cells in ``workers`` forked processes; outcomes in completion order."""

    def __init__(self, workers: int, registry: Registry, context: Callable[[Job], CellContext] | None = None):
        global _registry
        _registry = registry
        self.workers = workers
        self.context = context  # the driver's: forked workers inherit it with its loaded models
        self.pool: ProcessPoolExecutor | None = None
        self.futures: set[Future] = set()

    @staticmethod
    def available() -> bool:
        return sys.platform.startswith("linux")

    def submit(self, job: Job, cell: Cell) -> None:
        if self.pool is None:  # forked at the first submission: models loaded by then are shared
            if self.context is not None:
                _contexts.clear()
                _contexts[job] = self.context(job)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"),
                                            initializer=_init_worker, initargs=(os.getpid(),))
        self.futures.add(self.pool.submit(_work, job, cell.key))

    def collect(self) -> list[CellOutcome]:
        done, self.futures = wait(self.futures, return_when=FIRST_COMPLETED)
        try:
            return [f.result() for f in done]
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
