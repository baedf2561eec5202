"""Robust cells: the worst case of an ensemble of adaptive attacks against one defense at one
budget (``[[robust]]``; docs/threat-models.md, "Robust evaluation").

One cell per (entry, defense, budget), reading the cell of the budget below. Rows it broke stay
broken here (their images are inside this larger ball); every member then attacks the rows
still standing, in the configured order, each from its own image of the budget below (warm
start), and the defended system judges each candidate exactly as the score cells judge an
evaluation set: the 8-bit image, saved and reloaded as the database stores it, the success
rule on the classifier before and after, then the detector on the configured prediction
backend (and the pipeline's corrector). The bookkeeping is :mod:`advbench.engine.worst_case`.

Metrics: ``attempted``, ``success`` (the rule holds), ``detected``, ``detection_rate``,
``broken``, ``system_success``, ``carried`` (broken at a smaller budget); per member (subset =
its label) ``member_attacked``, ``member_broken``, ``member_seconds``, the per-image numbers it
returns (``mean_steps``...), and its ``steps``, ``eot_samples``, ``restarts``/``rounds``,
``max_queries`` and ``rel_stepsize`` parameters, as a negative result must state them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from advbench.cache import load_columns, save_arrays, save_columns
from advbench.config import Target
from advbench.criteria import PaperCriterion
from advbench.engine import predict
from advbench.engine.imagesets import images_of
from advbench.engine.detect import EVAL
from advbench.engine.worst_case import WorstCase, into_ball, keep_worst, perturbation
from advbench.errors import DataError, PluginError
from advbench.imaging import jpeg_roundtrip, to_tensor, to_uint8
from advbench.plan import IMAGES, Cell
from advbench.robust_config import Member, RobustEntry
from advbench.specs import AttackContext, Defense, Probabilities
from advbench.stages import adaptive
from advbench.stages.attack import attacked_sources
from advbench.execution.context import CellContext, MetricRows
from advbench.stages.detect import trained as trained_detector
from advbench.stages.correct import corrected_labels
from advbench.stages.inputs import feature_matrix
from advbench.engine.detect import LabelledSet
from advbench.stages.per_image import SPLIT_NAMES
from advbench.stages.predict import backend_operation
from advbench.stages.score import system_undone

STATE = "state"  # the worst case so far, for the cell of the next budget
OUT_OF_SCOPE = "not configured at this budget"
#: parameters a member's search is described by (steps, samples, restarts), when it has them
SEARCH_PARAMS = ("steps", "eot_samples", "restarts", "rounds", "rel_stepsize", "max_queries", "confidence",
                 "rank_margin", "detector_margin")



def entry_target_index(ctx: CellContext, cell: Cell) -> tuple[RobustEntry, Target, int]:
    entry = next(e for e in ctx.bench.robust if e.label == cell.family)
    target = next(t for t in entry.targets if t.label == cell.target)
    index = next(i for i, b in enumerate(entry.budgets) if math.isclose(b, float(cell.budget), rel_tol=1e-12))
    return entry, target, index


def label_of(entry: RobustEntry, index: int, target: Target) -> str:
    return f"{entry.label}@{entry.budgets[index]:g}>{target.label}"


# --- what the defended system says of stored images ------------------------------------------


def _labels_under(ctx: CellContext, cell: Cell, images: np.ndarray, group: str,
                  k: int) -> tuple[np.ndarray, np.ndarray, Probabilities]:
    """Top-k labels without and under each operation of ``group``, and the softmax outputs."""
    ops = [backend_operation(ctx, t.label) for t in ctx.plan.group_ops(group)]
    results = list(predict.predict_under_operations(
        ctx.model(cell.model), images, [(None, None), *ops], top_k=ctx.bench.labels_k,
        batch_size=ctx.bench.prediction.batch_size, device=ctx.device))
    original, rest = results[0], results[1:]
    transformed = np.stack([r["labels"][:, :k] for r in rest], 1) if rest else \
        np.zeros((len(images), 0, k), np.int32)
    full = np.stack([r["full"] for r in rest], 1).astype(np.float32) if rest else \
        np.zeros((len(images), 0, original["full"].shape[1]), np.float32)
    return original["labels"][:, :k], transformed, Probabilities(original["full"].astype(np.float32), full)


def _flags(ctx: CellContext, cell: Cell, det_cell: Cell) -> Callable[[np.ndarray], np.ndarray]:
    detector = trained_detector(ctx, det_cell)
    if det_cell.feature_group == IMAGES:
        return lambda images: np.asarray(detector.predict(images)) == 1
    k = ctx.bench.feature_k(ctx.entry("feature", det_cell.feature))

    def flags(images: np.ndarray) -> np.ndarray:
        original, transformed, probs = _labels_under(ctx, cell, images, det_cell.feature_group, k)
        n = len(images)
        data = LabelledSet(original, transformed, np.ones(n, int), np.full(n, EVAL), np.full(n, "", object),
                           np.zeros(n, int), np.zeros((n, 0)), np.arange(n), probs=probs)
        return np.asarray(detector.predict(feature_matrix(ctx, det_cell.feature, data))) == 1

    return flags


@dataclasses.dataclass(frozen=True)
class SystemJudge:
    """The defended system on uint8 images, exactly as the score cells judge them: ``flags``
    (the detector), ``correct`` (the pipeline's corrected top-1, or None)."""

    flags: Callable[[np.ndarray], np.ndarray]
    correct: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, stored: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flagged, undone) of stored images that fool the classifier, ``truth`` their labels:
        a detector undoes what it flags, the pipeline what it flags and restores to the truth."""
        flagged = self.flags(stored)
        return flagged, system_undone(flagged, None if self.correct is None else self.correct(stored), truth)

    def as_defense(self, defense: Defense) -> Defense:
        """``defense`` whose decision callables are this judge's (float batches in, the 8-bit
        image judged), so that a member stops where the core's verdict would."""
        def flags(x):
            return torch.from_numpy(self.flags(to_uint8(x))).to(x.device)

        def correct(x):
            return torch.from_numpy(np.asarray(self.correct(to_uint8(x)))).to(x.device)  # type: ignore[misc]

        return dataclasses.replace(defense, flags=flags, correct=correct if self.correct is not None else None)


def system_judge(ctx: CellContext, cell: Cell, target: Target) -> SystemJudge:
    """The judge of a robust cell's defense (a detector cell, or the pipeline)."""
    if target.kind == "pipeline":
        key = ctx.plan.pipeline_key(cell.dataset, cell.model)
        if key is None:
            raise DataError("robust target 'pipeline': no [correction] pipeline detector cell in this world")
        group, corrector, k = ctx.bench.correction_groups()[0], ctx.bench.correctors[0].label, ctx.bench.settings.top_k

        def correct(stored: np.ndarray) -> np.ndarray:
            _, transformed, _ = _labels_under(ctx, cell, stored, group, k)
            return corrected_labels(ctx, corrector, transformed, k)[:, 0]

        return SystemJudge(_flags(ctx, cell, ctx.plan.by_key[key]), correct)
    key = ctx.plan.detect_key(cell.dataset, cell.model, target.detector, target.feature, target.group)
    if key is None:
        raise DataError(f"robust target {target.label!r}: no such detector cell in this world")
    return SystemJudge(_flags(ctx, cell, ctx.plan.by_key[key]))


# --- the cell ------------------------------------------------------------------------------


@dataclasses.dataclass
class _MemberLog:
    attacked: int = 0  # images it attacked at this budget
    fresh: int = 0  # of those, attacked (again) from the clean image
    broken: int = 0
    seconds: float = 0.0
    skipped: str = ""
    per_image: dict[str, list[float]] = dataclasses.field(default_factory=dict)


def compute(ctx: CellContext, cell: Cell, out: Path) -> MetricRows:
    entry, target, index = entry_target_index(ctx, cell)
    budget = entry.budgets[index]
    db = ctx.bench.database
    clean = ctx.clean_arrays(cell)
    sources = attacked_sources(ctx, cell)
    images = np.asarray(clean["images"])[sources]
    members = entry.members_for(target.label)
    if index == 0:
        state = WorstCase.fresh(images, len(members))
    else:
        previous = ctx.plan.key("robust", cell.dataset, cell.model, label_of(entry, index - 1, target))
        state = WorstCase.from_arrays(load_columns(ctx.dir_of(previous), STATE))
    carried = int(state.broken.sum())
    model = ctx.model(cell.model)
    judge = system_judge(ctx, cell, target)
    # the members see the defense's decision as the core judges it (the configured prediction
    # backend on the 8-bit image), so none stops on an image the verdict below would undo
    defense = judge.as_defense(dataclasses.replace(adaptive.build_defense(ctx, cell, target),
                                                   storage=adaptive.storage(db.image_format, db.jpeg_quality)))
    base = ctx.build_context("attack", members[0].plugin)
    top1 = torch.from_numpy(clean["top1"][sources]).long()
    logs = []
    for m_index, member in enumerate(members):
        log = _MemberLog()
        logs.append(log)
        params = member.params[index]
        spec = ctx.registry.get("attack", member.plugin)
        if params is None:
            log.skipped = OUT_OF_SCOPE
            continue
        if target.kind not in spec.adaptive:
            log.skipped = f"cannot attack a {target.kind} defense"
            continue
        # from its own image of the budget below (warm start), then, on what still stands, from
        # the clean image exactly as the member runs alone: never weaker than the member alone
        warm = spec.warm_start and bool(state.has_start[m_index])
        chain = state.starts[m_index].copy()
        for from_start in (True, False) if warm else (False,):
            rows = state.pending()
            if not _run_member(ctx, cell, spec, params, model, defense, judge, state, rows, images, top1, clean,
                               sources, entry, budget, index, m_index, from_start, base, log):
                break
            log.attacked += 0 if warm and not from_start else len(rows)
            log.fresh += 0 if from_start else len(rows)
            if from_start or not warm:
                chain[rows] = state.starts[m_index, rows]
        state.starts[m_index] = chain  # the next budget continues the warm chain, not the fresh run
    _save(out, ctx, cell, state, sources, clean, entry, members, images, logs)
    return _metrics(state, entry, members, index, carried, logs)


def _run_member(ctx: CellContext, cell: Cell, spec, params, model, defense: Defense, judge: SystemJudge,
                state: WorstCase, rows: np.ndarray, images: np.ndarray, top1: torch.Tensor, clean: dict,
                sources: np.ndarray, entry: RobustEntry, budget: float, index: int, m_index: int, from_start: bool,
                base, log: _MemberLog) -> bool:
    """One run of a member on ``rows`` (from its warm starts, or from the clean images), each
    candidate judged and folded into ``state``; False when the defense lacks what it needs."""
    s, db = ctx.bench.settings, ctx.bench.database
    for start in range(0, len(rows), db.batch_size):
        batch = rows[start:start + db.batch_size]
        x = to_tensor(images[batch], ctx.device)
        criterion = PaperCriterion(False, top1[batch].to(ctx.device), None, k=s.top_k, threshold=db.target_threshold)
        warm = to_tensor(state.starts[m_index, batch], ctx.device) if from_start else None
        attack_ctx = AttackContext(cache_dir=base.cache_dir, device=base.device, defense=defense, start=warm,
                                   seed=s.seed + 1_000_000 * index + 10_000 * m_index + start)
        torch.manual_seed(attack_ctx.seed)
        t0 = time.perf_counter()
        try:
            output = spec.run(model.module, x, criterion, params, attack_ctx)
        except PluginError as exc:  # the defense lacks what the member needs (e.g. differentiable scores)
            if start > 0:
                raise
            log.skipped = str(exc)
            return False
        log.seconds += time.perf_counter() - t0
        output = images_of(output, log.per_image)
        finite = torch.isfinite(output).flatten(1).all(1).view(-1, 1, 1, 1)
        output = torch.where(finite, output, x)
        candidate = output.detach().clamp(0, 1).mul(255).permute(0, 2, 3, 1).cpu().double().numpy()
        submitted = into_ball(images[batch], candidate, entry.norm, budget)
        stored, fooled = _save_and_check(model, submitted, criterion, db.image_format, db.jpeg_quality, ctx.device)
        flagged, undone = np.zeros(len(batch), bool), np.zeros(len(batch), bool)
        if fooled.any():
            hit = np.flatnonzero(fooled)
            flagged[hit], undone[hit] = judge(stored[hit], clean["labels"][sources[batch[hit]]])
        log.broken += len(keep_worst(state, batch, submitted, stored, fooled, flagged & fooled, fooled & ~undone,
                                     m_index, index))
    return True


def _save_and_check(model, submitted: np.ndarray, criterion, fmt: str, quality: int,
                    device: str) -> tuple[np.ndarray, np.ndarray]:
    """The database's save -> reload of each image, and where the rule holds before and after."""
    with torch.no_grad():
        before = criterion(model.module(to_tensor(submitted, device))).cpu().numpy()
        stored = np.stack([jpeg_roundtrip(a, quality) for a in submitted]) if fmt == "jpeg" else submitted.copy()
        after = criterion(model.module(to_tensor(stored, device))).cpu().numpy()
    return stored, before & after


def _save(out: Path, ctx: CellContext, cell: Cell, state: WorstCase, sources: np.ndarray, clean: dict,
          entry: RobustEntry, members: tuple[Member, ...], images: np.ndarray, logs: list[_MemberLog]) -> None:
    """The worst case for the next budget; the stored images that fool the classifier (an
    image set: images, source); a manifest per attacked image; per-image rows for the store."""
    save_columns(out, STATE, **state.arrays())
    fooled = np.flatnonzero(state.fooled)
    save_arrays(out, images=state.stored[fooled], source=sources[fooled])
    sizes = perturbation(images, state.submitted, entry.norm)
    names = [m.label for m in members]
    manifest = [{"source": str(clean["ids"][src]), "fooled": bool(state.fooled[i]), "flagged": bool(state.flagged[i]),
                 "broken": bool(state.broken[i]),
                 "broken_at": None if state.broken_at[i] < 0 else entry.budgets[state.broken_at[i]],
                 "member": None if state.member[i] < 0 else names[state.member[i]], entry.norm: float(sizes[i])}
                for i, src in enumerate(sources)]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "members.json").write_text(json.dumps([{"member": m.label, "plugin": m.plugin, "attacked": log.attacked,
                                                   "broken": log.broken, "seconds": log.seconds,
                                                   "skipped": log.skipped} for m, log in zip(members, logs)],
                                                 indent=1))
    save_columns(out, "per_image", source=clean["ids"][sources[fooled]].astype(str),
                 origin=np.full(len(fooled), cell.imageset), split=np.full(len(fooled), SPLIT_NAMES[EVAL]),
                 y=np.ones(len(fooled), np.int64), truth=clean["labels"][sources[fooled]].astype(np.int64),
                 decision=state.flagged[fooled].astype(np.int64))


def _metrics(state: WorstCase, entry: RobustEntry, members: tuple[Member, ...], index: int, carried: int,
             logs: list[_MemberLog]) -> MetricRows:
    n, fooled = len(state.broken), int(state.fooled.sum())
    detected, broken = int((state.fooled & state.flagged).sum()), int(state.broken.sum())
    rows: MetricRows = [
        ("attempted", "", float(n)), ("success", "", float(fooled)), ("n", "", float(fooled)),
        ("detected", "", float(detected)), ("detection_rate", "", detected / fooled if fooled else float("nan")),
        ("broken", "", float(broken)), ("fooled", "", float(broken)),
        ("system_success", "", broken / n if n else float("nan")), ("carried", "", float(carried)),
        ("budget", "", float(entry.budgets[index])), ("budget_index", "", float(index))]
    for member, log in zip(members, logs):
        if log.skipped == OUT_OF_SCOPE:
            continue
        sub = member.label
        rows += [("member_attacked", sub, float(log.attacked)), ("member_fresh", sub, float(log.fresh)),
                 ("member_broken", sub, float(log.broken)),
                 ("member_seconds", sub, log.seconds), ("member_skipped", sub, float(bool(log.skipped)))]
        rows += [(f"mean_{name}", sub, float(np.mean(v))) for name, v in log.per_image.items() if v]
        rows += [(f"max_{name}", sub, float(np.max(v))) for name, v in log.per_image.items() if v]
        params = member.params[index]
        if params is not None:
            rows += [(name, sub, float(getattr(params, name))) for name in SEARCH_PARAMS
                     if isinstance(getattr(params, name, None), (int, float))
                     and not isinstance(getattr(params, name), bool)]
    return rows
