"""Run one cell: from the cache when its artefact is complete, else computed under the cell's
lock into a scratch folder that becomes the artefact. The same function runs in this process,
in a forked worker and in a Ray task."""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from advbench.cache import write_complete
from advbench.errors import AdvbenchError, DataError
from advbench.plan import Cell
from advbench.stages import COMPUTE
from advbench.stages.context import CellContext, MetricRows

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


def execute(ctx: CellContext, cell: Cell) -> CellOutcome:
    t0 = time.perf_counter()
    try:
        try:
            with ctx.cache.lock(cell.stage, cell.key):
                state = ctx.cache.state(cell.stage, cell.key)
                if state.complete and not ctx.fresh:  # another process finished it while we waited
                    return CellOutcome(cell, "ok", cached=True, metrics=rows(ctx.cache.metrics(cell.stage, cell.key)))
                note = f"recomputed: its cached artefact was damaged ({state.reason})" if state.status == "damaged" else ""
                if note:
                    log.warning("%s %s", cell.title, note)
                with ctx.cache.writing(cell.stage, cell.key) as scratch:
                    metrics = COMPUTE[cell.stage](ctx, cell, scratch)
                    write_complete(scratch, {"metrics": metrics})
        except PermissionError as exc:
            raise DataError(f"cannot write the cache at {ctx.cache.root} ({exc.strerror}: {exc.filename}); pass a "
                            f"writable --cache-dir or set ADVBENCH_CACHE_DIR") from None
        except OSError as exc:
            if exc.errno in (30, 28):  # EROFS, ENOSPC: the cache's fault, not the cell's
                raise DataError(f"cannot write the cache at {ctx.cache.root} ({exc.strerror}); pass a writable "
                                f"--cache-dir or set ADVBENCH_CACHE_DIR") from None
            raise
        return CellOutcome(cell, "ok", seconds=time.perf_counter() - t0, metrics=metrics, note=note)
    except AdvbenchError as exc:
        log.error("%s failed: %s", cell.title, exc)
        return CellOutcome(cell, "failed", error=str(exc), user_error=True, seconds=time.perf_counter() - t0)
    except Exception as exc:  # isolate a plugin's failure to its cell
        log.error("%s failed:\n%s", cell.title, traceback.format_exc())
        return CellOutcome(cell, "failed", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)
