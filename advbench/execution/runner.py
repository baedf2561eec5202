"""Execute a plan: the scheduler. Cells run as soon as every artefact they read is settled, on
an executor (this process, forked workers, Ray); outcomes go to the store.

A cell that raises is recorded as failed (with its error) and the cells that need its result
are recorded as skipped; every other cell still runs. A failed primary attack is left out of
its dataset/model's split and detectors (the plan is made again without it). Plugins are built
lazily, so a run whose cells are all cached never loads a dataset or a model.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from advbench import __version__, threads
from advbench.cache import Cache, default_cache_dir, load_columns
from advbench.config import Benchmark
from advbench.errors import DataError
from advbench.execution.context import CellContext, Contexts, Job, plan_for
from advbench.execution.execute import CellOutcome, cached_outcome
from advbench.execution.executors import Executor, ForkPool, InProcess
from advbench.plan import Cell, Plan
from advbench.registry import Registry
from advbench.stages import STAGES
from advbench.store import open_store

log = logging.getLogger("advbench")

HEARTBEAT_SECONDS = 10.0


@dataclass(frozen=True)
class RunOptions:
    store: str | None = None
    max_images: int | None = None
    workers: int = 1
    fresh: bool = False
    cache_dir: Path | None = None
    executor: str = "local"  # "local" (this process / --workers forks) or "ray"
    address: str | None = None  # Ray cluster address
    threads: str | int | None = None  # torch threads per process: N or "auto"; None: $ADVBENCH_THREADS, else 1


@dataclass(frozen=True)
class RunResult:
    run_id: int
    store_url: str
    outcomes: tuple[CellOutcome, ...]
    log_path: Path

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def computed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "ok" and not o.cached]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return ""

    return {"advbench": __version__, "torch": v("torch"), "foolbox": v("foolbox")}


class Runner:
    def __init__(self, bench: Benchmark, registry: Registry, options: RunOptions = RunOptions(),
                 on_cell: Callable[[CellOutcome], None] | None = None):
        self.bench, self.registry, self.options = bench, registry, options
        self.cache = Cache(options.cache_dir or default_cache_dir())
        self.on_cell = on_cell or (lambda outcome: None)
        self.plan: Plan = plan_for(bench, registry, options.max_images)
        self.job = Job(bench.text, str(bench.path), str(self.cache.root), options.max_images, frozenset(), options.fresh)
        self._contexts = Contexts(lambda job: CellContext(self.bench, self.registry, self.cache, plan_for(
            self.bench, self.registry, job.max_images, job.failed_attacks), job.fresh))
        self._writable = False  # the cache root took a file (checked before the first computed cell)
        self.thread_choice = threads.choose(options.threads, workers=options.workers)

    def context(self, job: Job | None = None) -> CellContext:
        """The driver's own context (models stay loaded across replans)."""
        return self._contexts.get(job or self.job)

    # --- execution ------------------------------------------------------------------------

    def run_with(self, on_cell: Callable[[CellOutcome], None]) -> RunResult:
        self.on_cell = on_cell
        return self.run()

    def run(self) -> RunResult:
        store = open_store(self.options.store or self.bench.settings.store)
        run_id = store.start_run(benchmark=self.bench.settings.name, config_hash=self.bench.config_hash,
                                 config_text=self.bench.text, seed=self.bench.settings.seed, versions=versions())
        outcomes: dict[str, CellOutcome] = {}
        handler = None
        log_path = Path(os.devnull)
        try:
            log_path = self._log_path(run_id)
            handler = logging.FileHandler(log_path)
            log.addHandler(handler)
            with threads.limited(self.thread_choice.threads):
                self._schedule(store, run_id, outcomes)
        finally:
            done = list(outcomes.values())
            failed = any(o.status != "ok" for o in done) or len(done) < len(self.plan.cells)
            store.finish_run(run_id, "failed" if failed else "ok",
                             keep={c.key for c in self.plan.cells} | set(outcomes))
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
        return RunResult(run_id, store.url, tuple(outcomes.values()), log_path)

    def _log_path(self, run_id: int) -> Path:
        name = f"run-{run_id}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
        try:
            folder = self.cache.root / "logs"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.touch()
            return path
        except OSError:  # a read-only cache can still serve a fully cached run
            return Path(tempfile.gettempdir()) / f"advbench-{name}"

    def _require_writable_cache(self) -> None:
        """Before the first cell is computed: a cache that cannot take artefacts fails the run
        in one line, not each cell (a fully cached run never asks, so a read-only cache serves it)."""
        if self._writable:
            return
        try:
            self.cache.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.cache.root):
                pass
        except OSError as exc:
            raise DataError(f"cannot write the cache at {self.cache.root} ({exc.strerror}); pass a writable "
                            f"--cache-dir or set ADVBENCH_CACHE_DIR") from None
        self._writable = True

    def _executors(self) -> tuple[Executor, Executor]:
        """(executor for cells that must stay here, executor for the rest)."""
        local = InProcess(lambda job: self.context(job))
        if self.options.executor == "ray":
            from advbench.execution.ray_executor import RayExecutor

            return local, RayExecutor(self.registry, self.cache, self.plan_of, self.options.address)
        if self.options.workers > 1 and ForkPool.available():
            return local, ForkPool(self.options.workers, self.registry, self.context, self.thread_choice.threads)
        return local, local

    def plan_of(self, job: Job) -> Plan:
        return self.context(job).plan

    def _goes_out(self, cell: Cell) -> bool:
        """Whether a cell may leave this process (forked workers cannot use CUDA; image
        detectors train on every core already)."""
        if self.options.executor == "ray":
            return True
        stage = STAGES[cell.stage]
        on_gpu = self.context().device.startswith("cuda")
        return stage.forkable and not cell.sees_images and not (on_gpu and stage.needs_gpu(cell.sees_images))

    def _schedule(self, store, run_id: int, outcomes: dict[str, CellOutcome]) -> None:
        local, remote = self._executors()
        waiting = _Waiting(self.plan.cells, outcomes)
        in_flight: set[str] = set()
        last_beat = time.monotonic()
        try:
            while waiting or in_flight:
                for batch in self._to_compute(store, run_id, outcomes, waiting):
                    self._require_writable_cache()
                    (remote if self._goes_out(batch[0]) else local).submit(self.job, batch)
                    in_flight.update(c.key for c in batch)
                if not in_flight:
                    if waiting.has_ready():
                        continue
                    if waiting:  # nothing runs and nothing can: a cycle would be a planner bug
                        raise RuntimeError(f"{len(waiting)} cells wait on inputs that never come")
                    break
                executor = local if local.busy() else remote
                for outcome in executor.collect():
                    in_flight.discard(outcome.cell.key)
                    self._settle(store, run_id, outcomes, outcome)
                    waiting.settled(outcome.cell.key)
                    if outcome.cell.stage == "attack" and outcome.status != "ok" and not outcome.cell.evaluation:
                        self._replan(outcomes)
                        waiting = _Waiting([c for c in self.plan.cells if c.key not in in_flight], outcomes)
                if time.monotonic() - last_beat > HEARTBEAT_SECONDS and hasattr(store, "heartbeat"):
                    store.heartbeat()
                    last_beat = time.monotonic()
        except BaseException:
            for executor in {id(local): local, id(remote): remote}.values():
                executor.close(cancel=True)
            raise
        for executor in {id(local): local, id(remote): remote}.values():
            executor.close()

    def _to_compute(self, store, run_id: int, outcomes: dict[str, CellOutcome], waiting: _Waiting) -> list[list[Cell]]:
        """The ready cells that must be computed, in batches (one cell, or the ready cells of
        one group of a batched stage), in plan order; the others are settled here: skipped
        when an input failed, or served from the cache."""
        batches: dict[object, list[Cell]] = {}
        for cell in waiting.ready():
            upstream = [d for d in cell.deps if outcomes[d].status != "ok"]
            if upstream:
                title = outcomes[upstream[0]].cell.title
                self._settle(store, run_id, outcomes, CellOutcome(
                    cell, "skipped", error=f"needs {title}, which did not complete"))
                waiting.settled(cell.key)
                continue
            cached = cached_outcome(self.context(), cell)
            if cached is not None:
                self._settle(store, run_id, outcomes, cached)
                waiting.settled(cell.key)
                continue
            group = STAGES[cell.stage].batch(cell)
            batches.setdefault(cell.key if group is None else group, []).append(cell)
        return list(batches.values())

    def _settle(self, store, run_id: int, outcomes: dict[str, CellOutcome], outcome: CellOutcome) -> None:
        outcomes[outcome.cell.key] = outcome
        store.record_cell(run_id, outcome.cell, status=outcome.status, cached=outcome.cached, error=outcome.error,
                          seconds=outcome.seconds, metrics=outcome.metrics)
        if outcome.status == "ok" and STAGES[outcome.cell.stage].per_image and hasattr(store, "record_images") \
                and not store.has_images(outcome.cell.key):
            columns = load_columns(self.cache.path(outcome.cell.stage, outcome.cell.key), "per_image")
            if columns is not None:
                store.record_images(outcome.cell.key, columns)
        self.on_cell(outcome)

    def _replan(self, outcomes: dict[str, CellOutcome]) -> None:
        """A primary attack failed: plan again without it; cells not yet started follow the new plan."""
        failed = frozenset((o.cell.dataset, o.cell.model, o.cell.imageset) for o in outcomes.values()
                           if o.cell.stage == "attack" and o.status != "ok" and not o.cell.evaluation)
        self.job = Job(self.job.config_text, self.job.config_path, self.job.cache_root, self.job.max_images, failed,
                       self.job.fresh)
        self.plan = self.context(self.job).plan


class _Waiting:
    """Cells not yet settled, each with the inputs it still waits for; ready ones in plan order."""

    def __init__(self, cells, outcomes: dict[str, CellOutcome]):
        self.missing: dict[str, set[str]] = {}
        self.dependents: dict[str, list[str]] = {}
        self.cells: dict[str, Cell] = {}
        self.order: dict[str, int] = {}
        self._ready: list[str] = []
        for i, cell in enumerate(c for c in cells if c.key not in outcomes):
            self.cells[cell.key], self.order[cell.key] = cell, i
            missing = {d for d in cell.deps if d not in outcomes}
            self.missing[cell.key] = missing
            for d in missing:
                self.dependents.setdefault(d, []).append(cell.key)
            if not missing:
                self._ready.append(cell.key)

    def __len__(self) -> int:
        return len(self.missing)

    def has_ready(self) -> bool:
        return bool(self._ready)

    def ready(self) -> list[Cell]:
        """The cells whose inputs are all settled (each handed out once), in plan order."""
        keys = sorted(self._ready, key=self.order.__getitem__)
        self._ready = []
        for key in keys:
            del self.missing[key]
        return [self.cells[k] for k in keys]

    def settled(self, key: str) -> None:
        for dependent in self.dependents.pop(key, []):
            missing = self.missing.get(dependent)
            if missing is not None and key in missing:
                missing.discard(key)
                if not missing:
                    self._ready.append(dependent)
