"""Run one cell, or one batch of cells: from the cache when an artefact is complete, else
computed under the cell's lock into a scratch folder that becomes the artefact. The same
functions run in this process, in a forked worker and in a Ray task.

A batch is the ready cells of one group of a batched stage (:mod:`advbench.stages`), e.g. the
predictions of one image set under every operation: computed in one call, each cell still
written, cached and recorded as its own artefact. Should the call fail, each cell is run alone,
so one bad cell fails alone."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from advbench.cache import write_complete
from advbench.errors import AdvbenchError, DataError
from advbench.execution.context import CellContext, MetricRows
from advbench.plan import Cell
from advbench.stages import compute_many_of, compute_of

log = logging.getLogger("advbench")

#: metrics that measure time, not results: they differ between two runs of the same cell
TIMING_METRICS = frozenset({"attack_seconds", "images_per_second", "seconds"})


def comparable(metrics: MetricRows) -> str:
    """A cell's metrics without its timings, as text (nan == nan): equal iff the results are."""
    return repr([m for m in metrics if m[0] not in TIMING_METRICS])


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: str  # ok, failed, skipped
    cached: bool = False
    error: str = ""
    user_error: bool = False
    seconds: float = 0.0
    metrics: MetricRows = field(default_factory=list)
    note: str = ""  # e.g. why a cached artefact was recomputed


def rows(record: dict[str, Any]) -> MetricRows:
    return [tuple(r) for r in record.get("metrics", [])]  # type: ignore[misc]


def cached_outcome(ctx: CellContext, cell: Cell) -> CellOutcome | None:
    """The outcome of a cell whose artefact is complete and intact, else None."""
    if ctx.fresh or not ctx.cache.state(cell.stage, cell.key).complete:
        return None
    return CellOutcome(cell, "ok", cached=True, metrics=rows(ctx.cache.metrics(cell.stage, cell.key)))


def _cache_error(ctx: CellContext, exc: OSError) -> DataError | None:
    """A failure to write the cache is the cache's fault, not the cell's: one clear line."""
    if isinstance(exc, PermissionError):
        return DataError(f"cannot write the cache at {ctx.cache.root} ({exc.strerror}: {exc.filename}); pass a "
                         f"writable --cache-dir or set ADVBENCH_CACHE_DIR")
    if exc.errno in (30, 28):  # EROFS, ENOSPC
        return DataError(f"cannot write the cache at {ctx.cache.root} ({exc.strerror}); pass a writable "
                         f"--cache-dir or set ADVBENCH_CACHE_DIR")
    return None


def _guarded(ctx: CellContext, cells: Sequence[Cell], work: Callable[[], list[CellOutcome]]) -> list[CellOutcome]:
    """``work()``, with an exception turned into a failed outcome of each cell."""
    t0 = time.perf_counter()
    try:
        try:
            return work()
        except OSError as exc:
            error = _cache_error(ctx, exc)
            if error is None:
                raise
            raise error from None
    except AdvbenchError as exc:
        for cell in cells:
            log.error("%s failed: %s", cell.title, exc)
        return [CellOutcome(c, "failed", error=str(exc), user_error=True, seconds=time.perf_counter() - t0)
                for c in cells]
    except Exception as exc:  # isolate a plugin's failure to its cell
        for cell in cells:
            log.error("%s failed:\n%s", cell.title, traceback.format_exc())
        return [CellOutcome(c, "failed", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
                for c in cells]


def _recompute_note(ctx: CellContext, cell: Cell) -> str | None:
    """None when another process finished the cell while we waited for its lock; else the note
    of the outcome ("" or why a damaged artefact is recomputed)."""
    state = ctx.cache.state(cell.stage, cell.key)
    if state.complete and not ctx.fresh:
        return None
    note = f"recomputed: its cached artefact was damaged ({state.reason})" if state.status == "damaged" else ""
    if note:
        log.warning("%s %s", cell.title, note)
    return note


def execute(ctx: CellContext, cell: Cell) -> CellOutcome:
    def work() -> list[CellOutcome]:
        t0 = time.perf_counter()
        with ctx.cache.lock(cell.stage, cell.key):
            note = _recompute_note(ctx, cell)
            if note is None:
                return [CellOutcome(cell, "ok", cached=True, metrics=rows(ctx.cache.metrics(cell.stage, cell.key)))]
            with ctx.cache.writing(cell.stage, cell.key) as scratch:
                metrics = compute_of(cell.stage)(ctx, cell, scratch)
                write_complete(scratch, {"metrics": metrics})
        return [CellOutcome(cell, "ok", seconds=time.perf_counter() - t0, metrics=metrics, note=note)]

    return _guarded(ctx, [cell], work)[0]


class _BatchFailed(Exception):
    pass


def execute_batch(ctx: CellContext, cells: Sequence[Cell]) -> list[CellOutcome]:
    """Run the cells of one group of a batched stage in one ``compute_many`` call (each cell
    locked, checked and written as its own artefact); any other list of cells one by one."""
    if len(cells) < 2:
        return [execute(ctx, c) for c in cells]
    failed: list[CellOutcome] = []

    def work() -> list[CellOutcome]:
        t0 = time.perf_counter()
        done: list[CellOutcome] = []
        with ExitStack() as held:
            for cell in sorted(cells, key=lambda c: c.key):  # one lock order for every process
                held.enter_context(ctx.cache.lock(cell.stage, cell.key))
            todo: list[tuple[Cell, str]] = []
            for cell in cells:
                note = _recompute_note(ctx, cell)
                if note is None:
                    done.append(CellOutcome(cell, "ok", cached=True,
                                            metrics=rows(ctx.cache.metrics(cell.stage, cell.key))))
                else:
                    todo.append((cell, note))
            if not todo:
                return done
            try:
                with ExitStack() as writing:  # an exception leaves no scratch folder behind
                    outs = [writing.enter_context(ctx.cache.writing(c.stage, c.key)) for c, _ in todo]
                    try:
                        metrics = compute_many_of(todo[0][0].stage)(ctx, [c for c, _ in todo], outs)
                    except Exception as exc:
                        raise _BatchFailed from exc
                    for out, m in zip(outs, metrics):
                        write_complete(out, {"metrics": m})
            except _BatchFailed as exc:  # each cell alone will say which one failed
                cause = exc.__cause__
                log.info("a batch of %d %s cells failed (%s: %s); running them one by one", len(todo),
                         todo[0][0].stage, type(cause).__name__, cause)
                failed.extend(CellOutcome(c, "failed") for c, _ in todo)
                return done
        seconds = (time.perf_counter() - t0) / len(todo)
        return done + [CellOutcome(c, "ok", seconds=seconds, metrics=m, note=note)
                       for (c, note), m in zip(todo, metrics)]

    outcomes = _guarded(ctx, cells, work)
    return outcomes + [execute(ctx, o.cell) for o in failed]
