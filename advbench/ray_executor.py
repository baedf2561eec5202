"""Run cells as Ray tasks, on one machine or a cluster, with no shared filesystem.

Artefacts travel through Ray's object store. A task receives the :class:`~advbench.stages.context.Job`,
the cell's key and the packed artefact of every cell it reads (object references, so Ray ships
them to whichever node runs it). The worker unpacks them into a node-local cache (reused by
later tasks on that node: artefacts are named by content hash and checked against their
completion records), runs :func:`~advbench.stages.execute.execute` there, and returns the
outcome with the new artefact packed. The driver writes that artefact into its own cache, with
the same completion record, so a later run (or a resumed one) trusts it, and keeps the reference
for the cells that read it until the last of them has been submitted.

A packed artefact is a dict of relative path -> file bytes as a ``uint8`` array, which Ray
moves without pickling and hands to the worker as a zero-copy view: on a 150 MB artefact this
was about 3x faster than a tar built in memory, and 6x faster than a dict of ``bytes``
(docs/cluster.md has the numbers).

Tasks lost to a dead worker or node are retried by Ray (``max_retries``); a cell that raises is
not, because :func:`execute` turns its exception into a failed outcome, recorded like any other.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from advbench.cache import COMPLETE, Cache
from advbench.errors import AdvbenchError, DataError, PluginError
from advbench.plan import Cell, Plan
from advbench.registry import Registry, registry_from_sources
from advbench.stages.context import CellContext, Job
from advbench.stages.execute import CellOutcome, execute

log = logging.getLogger("advbench")

#: stages whose cells run a model on a batch of images: they ask Ray for a GPU when it has any
GPU_STAGES = frozenset({"attack", "adaptive", "robust", "predict"})
NODE_CACHE_ENV = "ADVBENCH_RAY_NODE_CACHE"


def needs_gpu(cell: Cell) -> bool:
    """Attacks, predictions, and detectors that see images (or the model), trained or scored."""
    return cell.stage in GPU_STAGES or (cell.stage in ("detect", "score") and cell.sees_images)


def reads(plan: Plan, cell: Cell) -> tuple[str, ...]:
    """Keys of the artefacts ``cell`` reads: its deps (the planner lists every one)."""
    return tuple(k for k in dict.fromkeys(cell.deps) if k != cell.key)


# --- packed artefacts -------------------------------------------------------------------------


@dataclass(frozen=True)
class Packed:
    """One artefact as it travels: every file, its completion record included, as bytes."""

    stage: str
    key: str
    files: dict[str, np.ndarray]  # relative path -> uint8 array

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.files.values())


def pack(cache: Cache, stage: str, key: str) -> Packed:
    directory = cache.path(stage, key)
    files = {p.relative_to(directory).as_posix(): np.fromfile(p, dtype=np.uint8)
             for p in sorted(directory.rglob("*")) if p.is_file()}
    if COMPLETE not in files:
        raise DataError(f"the {stage} artefact {key} in {cache.root} has no {COMPLETE}; it cannot be shipped")
    return Packed(stage, key, files)


def _holds(cache: Cache, packed: Packed) -> bool:
    """Whether ``cache`` already has this very artefact (same completion record, files intact)."""
    try:
        record = (cache.path(packed.stage, packed.key) / COMPLETE).read_bytes()
    except OSError:
        return False
    return record == packed.files[COMPLETE].tobytes() and cache.state(packed.stage, packed.key).complete


def receive(cache: Cache, packed: Packed) -> None:
    """Write ``packed`` into ``cache`` atomically and check it against its completion record;
    an artefact already there with the same record is kept as it is."""
    if _holds(cache, packed):
        return
    with cache.lock(packed.stage, packed.key):
        if _holds(cache, packed):  # another task on this node wrote it while we waited
            return
        with cache.writing(packed.stage, packed.key) as scratch:
            for name, data in packed.files.items():
                relative = PurePosixPath(name)
                if relative.is_absolute() or ".." in relative.parts:
                    raise DataError(f"a packed {packed.stage} artefact names a file outside it: {name!r}")
                target = scratch / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb") as f:
                    f.write(memoryview(np.ascontiguousarray(data)))
        state = cache.state(packed.stage, packed.key)
        if not state.complete:
            cache.discard(packed.stage, packed.key)
            raise DataError(f"the {packed.stage} artefact {packed.key} arrived damaged ({state.reason})")


# --- the worker side --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Report:
    outcome: CellOutcome
    logs: tuple[tuple[int, str], ...]  # what the cell logged (warnings, errors), for the driver's log
    node: str


_registries: dict[tuple[tuple[str, str], ...], Registry] = {}
_contexts: dict[tuple[Job, tuple[tuple[str, str], ...], str], CellContext] = {}


def node_cache_root(configured: str | None = None) -> str:
    """This node's cache: ``configured`` (from the driver), else $ADVBENCH_RAY_NODE_CACHE as this
    node's ``ray start`` saw it, else a folder in its temp dir."""
    return configured or os.environ.get(NODE_CACHE_ENV) or str(Path(tempfile.gettempdir()) / "advbench-ray-cache")


def worker_context(job: Job, sources: tuple[tuple[str, str], ...], root: str) -> CellContext:
    """This worker process's context for ``job`` over the node cache ``root``; models and
    datasets stay loaded across a replan (the same benchmark, another Job)."""
    memo = (job, sources, root)
    if memo not in _contexts:
        if sources not in _registries:
            _registries.clear()
            _registries[sources] = registry_from_sources(sources)
        ctx = CellContext.from_job(replace(job, cache_root=root), _registries[sources])
        previous = next(iter(_contexts.items()), None)
        if previous is not None and previous[0][1:] == memo[1:] and previous[0][0].config_text == job.config_text:
            ctx._models, ctx._datasets = previous[1]._models, previous[1]._datasets
        _contexts.clear()
        _contexts[memo] = ctx
    return _contexts[memo]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))


@contextmanager
def _captured() -> Iterator[_Capture]:
    handler = _Capture()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def run_cell(job: Job, sources: tuple[tuple[str, str], ...], key: str, cpus: float, node_cache: str | None,
             *inputs: Packed) -> tuple[_Report, Packed | None]:
    """The body of a Ray task: unpack the inputs into the node cache, run the cell, pack it."""
    import ray
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    node = ray.get_runtime_context().get_node_id()[:8]
    with _captured() as captured:
        try:
            ctx = worker_context(job, sources, node_cache_root(node_cache))
            cell = ctx.plan.by_key[key]
            for packed in inputs:
                receive(ctx.cache, packed)
        except AdvbenchError as exc:  # a plugin module missing on this node, an input damaged in transit
            plan_cell = _stub(key)
            return _Report(CellOutcome(plan_cell, "failed", error=f"on Ray node {node}: {exc}", user_error=True),
                           tuple(captured.records), node), None
        outcome = execute(ctx, cell)
        packed_out = pack(ctx.cache, cell.stage, cell.key) if outcome.status == "ok" else None
    return _Report(outcome, tuple(captured.records), node), packed_out


def _stub(key: str) -> Cell:
    return Cell("", key, "", "")  # the driver puts its own cell in place of this one


# --- the driver side --------------------------------------------------------------------------


def _number(env: str, default: float, low: float) -> float:
    text = os.environ.get(env)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < low:
        raise AdvbenchError(f"${env} = {text!r}: expected a number >= {low:g}")
    return value


class RayExecutor:
    """Runs each submitted cell as a Ray task; outcomes in completion order.

    ``address``: None starts a private local Ray instance (joins $RAY_ADDRESS when set), "auto"
    joins the cluster this machine belongs to, "HOST:PORT" a given one; a process that already
    joined one (``ray.init``) keeps it, and only what this executor started is shut down at
    :meth:`close`. Resources per
    cell: ``cpus_per_cell`` CPUs (default 1, $ADVBENCH_RAY_CPUS_PER_CELL), and for attack,
    adaptive, predict and image-detector cells ``gpus_per_cell`` GPUs (default 1, a fraction
    shares one; $ADVBENCH_RAY_GPUS_PER_CELL; 0 never asks) when the cluster has GPUs. A task
    whose worker or node dies is retried up to ``max_retries`` times ($ADVBENCH_RAY_MAX_RETRIES,
    default 3). ``node_cache`` is the artefact folder on every node (default: each node's
    $ADVBENCH_RAY_NODE_CACHE, else its temp dir).
    """

    def __init__(self, registry: Registry, cache: Cache, plan_of: Callable[[Job], Plan], address: str | None = None,
                 *, cpus_per_cell: float | None = None, gpus_per_cell: float | None = None,
                 max_retries: int | None = None, node_cache: str | None = None):
        try:
            import ray
        except ImportError:
            raise AdvbenchError('--executor ray needs Ray on this machine and on every node: '
                                'pip install "advbench[ray]"') from None
        if not registry.sources:
            raise PluginError("Ray workers rebuild the plugin registry from the modules it was made of, and this one "
                              "names none; build it with advbench.registry.build_registry or discover()")
        self.ray = ray
        self.registry, self.cache, self.plan_of = registry, cache, plan_of
        self.cpus = cpus_per_cell if cpus_per_cell is not None else _number("ADVBENCH_RAY_CPUS_PER_CELL", 1, 0.01)
        gpus = gpus_per_cell if gpus_per_cell is not None else _number("ADVBENCH_RAY_GPUS_PER_CELL", 1, 0)
        self.max_retries = int(max_retries if max_retries is not None else _number("ADVBENCH_RAY_MAX_RETRIES", 3, 0))
        self.node_cache = node_cache
        self.started = not ray.is_initialized()
        if self.started:
            self._connect(address)
        self.gpus = gpus if gpus and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        self.task = ray.remote(run_cell)
        self.running: dict[Any, tuple[Cell, Any, Job]] = {}  # outcome ref -> (cell, artefact ref, job)
        self.refs: dict[str, Any] = {}  # artefacts in the object store, by key
        self.waiting_on: dict[str, set[str]] = {}  # key of a held artefact -> cells that read it, not yet submitted
        self.submitted: set[str] = set()
        self.failed: set[str] = set()
        self.unsent: list[CellOutcome] = []  # failed before they could be sent
        self.job: Job | None = None
        self._dependents: dict[Job, dict[str, set[str]]] = {}

    def _connect(self, address: str | None) -> None:
        options: dict[str, Any] = {"address": address or None, "logging_level": logging.WARNING,
                                   "log_to_driver": False}
        if not address and not os.environ.get("RAY_ADDRESS"):  # a private instance, even if one runs here
            options |= {"address": "local", "include_dashboard": False,
                        "_temp_dir": str(Path(tempfile.gettempdir()) / "advbench-ray")}
        try:
            self.ray.init(**options)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = address or "a local instance"
            raise AdvbenchError(f"cannot start or join Ray ({where}): {(str(exc).splitlines() or [''])[0].rstrip('.')}; "
                                f"start the head with `ray start --head` and pass --address auto") from None

    # --- the Executor protocol --------------------------------------------------------------

    def submit(self, job: Job, cell: Cell) -> None:
        plan = self.plan_of(job)
        if job != self.job:  # a replan: the cells still to come read other artefacts
            self.job = job
            for key in list(self.waiting_on):
                self._hold(key, job)
        try:
            inputs = [self._artefact(key, plan) for key in reads(plan, cell)]
        except AdvbenchError as exc:  # an input vanished from this machine's cache
            self.unsent.append(CellOutcome(cell, "failed", error=str(exc), user_error=True))
            return
        resources: dict[str, Any] = {"num_cpus": self.cpus}
        if self.gpus and needs_gpu(cell):
            resources["num_gpus"] = self.gpus
        report, artefact = self.task.options(num_returns=2, max_retries=self.max_retries, retry_exceptions=False,
                                             name=cell.title[:100], **resources).remote(
            job, self.registry.sources, cell.key, self.cpus, self.node_cache, *inputs)
        self.running[report] = (cell, artefact, job)
        self.submitted.add(cell.key)
        for key in reads(plan, cell):  # the task holds its own references now
            waiting = self.waiting_on.get(key)
            if waiting is not None:
                waiting.discard(cell.key)
                if not waiting:
                    self._drop(key)

    def collect(self) -> list[CellOutcome]:
        if self.unsent:
            unsent, self.unsent = self.unsent, []
            self.failed.update(o.cell.key for o in unsent)
            return unsent
        pending = list(self.running)
        if not pending:
            return []
        self.ray.wait(pending, num_returns=1)
        done, _ = self.ray.wait(pending, num_returns=len(pending), timeout=0)
        return [self._finish(ref) for ref in done]

    def busy(self) -> int:
        return len(self.running) + len(self.unsent)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self.running:
                try:
                    self.ray.cancel(ref, force=True)  # queued tasks never start; running ones stop
                except Exception as exc:  # noqa: BLE001 - a task that finished meanwhile
                    log.debug("ray.cancel: %s", exc)
        self.running.clear()
        self.unsent.clear()
        self.refs.clear()
        self.waiting_on.clear()
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False

    # --- artefacts --------------------------------------------------------------------------

    def _artefact(self, key: str, plan: Plan) -> Any:
        """A reference to the packed artefact of ``key``: the one a task returned, or the
        driver's cached copy put into the object store now (a resumed run)."""
        if key not in self.refs:
            stage = plan.by_key[key].stage
            self.refs[key] = self.ray.put(pack(self.cache, stage, key))
            self._hold(key, self.job)
        return self.refs[key]

    def _hold(self, key: str, job: Job | None) -> None:
        """Keep the artefact of ``key`` while a cell of ``job``'s plan that reads it may still be
        submitted: not yet submitted, not cached here, and not reading a failed cell."""
        plan = self.plan_of(job) if job is not None else None
        if plan is None:
            return
        if job not in self._dependents:
            index: dict[str, set[str]] = {}
            for cell in plan.cells:
                for k in reads(plan, cell):
                    index.setdefault(k, set()).add(cell.key)
            self._dependents = {job: index}
        waiting = set()
        for dependent in self._dependents[job].get(key, ()):
            cell = plan.by_key[dependent]
            if dependent in self.submitted or any(k in self.failed for k in reads(plan, cell)):
                continue
            if not job.fresh and (self.cache.path(cell.stage, dependent) / COMPLETE).exists():
                continue  # settled from the cache; should it be damaged, it is packed from here again
            waiting.add(dependent)
        if waiting:
            self.waiting_on[key] = waiting
        else:
            self._drop(key)

    def _drop(self, key: str) -> None:
        self.refs.pop(key, None)
        self.waiting_on.pop(key, None)

    def _finish(self, ref: Any) -> CellOutcome:
        cell, artefact, job = self.running.pop(ref)
        try:
            report: _Report = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # our task code raised: a bug, not retried
            self.failed.add(cell.key)
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return CellOutcome(cell, "failed", error=f"{type(cause).__name__}: {cause}")
        except self.ray.exceptions.RayError as exc:
            self.failed.add(cell.key)
            return CellOutcome(cell, "failed", error=_lost(exc, self.max_retries))
        for level, message in report.logs:
            log.log(level, "[ray node %s] %s", report.node, message)
        outcome = replace(report.outcome, cell=cell)
        if outcome.status == "ok":
            try:
                packed: Packed = self.ray.get(artefact)
                receive(self.cache, packed)
                del packed
            except (AdvbenchError, OSError, self.ray.exceptions.RayError) as exc:
                self.failed.add(cell.key)
                return replace(outcome, status="failed", cached=False, metrics=[],
                               error=f"its artefact did not reach this machine's cache: {exc}",
                               user_error=isinstance(exc, AdvbenchError))
            self.refs[cell.key] = artefact
            self._hold(cell.key, self.job)
        else:
            self.failed.add(cell.key)
            for key in list(self.waiting_on):  # cells reading a failed one are skipped, not submitted
                self._hold(key, self.job)
        return outcome


def _lost(exc: Exception, retries: int) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"its Ray task was lost ({type(exc).__name__}) after {retries} retries (a worker or node died: "
            f"killed, out of memory?): {first}")
