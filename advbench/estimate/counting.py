"""Counting the work of a plan: the passes each cell makes through a network (images x passes,
forward and backward) and its CPU work, a pure function of the plan and the measured
:class:`Facts`. What each stage computes (``advbench/stages``):

- clean: one forward pass per dataset image (the picked images are then read again, no model);
- attack: the attack's own passes per attacked image (``AttackSpec.cost``, an upper bound), plus
  the two forward passes that re-check each image before and after it is saved; primary attacks
  attack every clean image, the points of a budget grid the eval split's only;
- predict: one forward pass per image of the set under one operation (the operation itself runs
  on the CPU: timed here);
- detect: a statistical detector fits a feature matrix (not priced: seconds); a detector that sees
  the images trains (``DetectorSpec.cost``): epochs over the train split (forward and backward,
  weight gradients included), the dev split after each epoch, then one pass over every image;
- adaptive: as attack, on the eval split, with the number of operations of the targeted defense;
- score: an image detector's forward pass per evaluation image, and its refit when it cannot save
  itself (``Detector.save``/``load``);
- split, correct, subset: array work, not priced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from advbench.config import Entry
from advbench.plan import ORIGINAL, Cell, ImageSet, Plan, group_ops
from advbench.stages import STAGES


@dataclass(frozen=True)
class DetectorFacts:
    kind: str  # "features", "images" or "model"
    network: str = ""  # key of its Network ("" = none or unknown)
    epochs: int = 0
    classifier_forward: float = 0.0
    saves: bool = True  # can save itself: score cells need not refit it
    unknown: str = ""  # why its cost is unknown


@dataclass(frozen=True)
class Facts:
    """What counting needs besides the plan: the networks of each model and detector, each
    attack's passes per image, the operations' CPU time and input size."""

    classifier: Mapping[str, str]  # model label -> Network key ("" = could not be built)
    attack_passes: Mapping[tuple[str, str], tuple[float, float] | None]  # (model, attack label) -> per image
    detectors: Mapping[tuple[str, str], DetectorFacts]  # (model, detector label)
    op_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (model, op) -> CPU s per image
    op_scale: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (model, op) -> FLOPs vs. input
    dataset_images: Mapping[str, int] = field(default_factory=dict)  # dataset label -> images, when known
    success_rate: float = 1.0  # share of attacked images that end in an image set
    unknown_models: Mapping[str, str] = field(default_factory=dict)  # model label -> why it is unpriced


@dataclass(frozen=True)
class Passes:
    network: str
    forward: float  # images x passes
    backward: float
    scale: float = 1.0  # FLOPs and time relative to the network's input size (scaled images)


@dataclass(frozen=True)
class CellWork:
    cell: Cell
    passes: tuple[Passes, ...] = ()
    cpu_seconds: float = 0.0  # one core's seconds of CPU work (image operations)
    unknown: tuple[str, ...] = ()  # why part of the cell's cost is not counted
    at_least: bool = False  # the count is a lower bound


def images_per_model(plan: Plan) -> int:
    """N: clean images picked per dataset/model (an upper bound: fewer when fewer are correct)."""
    s = plan.benchmark.settings
    return min(s.images_per_model, plan.max_images) if plan.max_images else s.images_per_model


def attacked_images(plan: Plan, cell: Cell) -> float:
    """Images an attack or adaptive cell attacks: every clean image for a primary attack, the
    eval split's for a point of a budget grid or an adaptive attack."""
    n = images_per_model(plan)
    primary = cell.stage == "attack" and cell.budget is None
    return float(n) if primary else n * plan.benchmark.database.split[2]


def set_images(plan: Plan, st: ImageSet, success_rate: float) -> float:
    """Expected images of an image set: N clean, or the attacked images that succeed."""
    n = images_per_model(plan)
    if st.threat == "clean":
        return float(n)
    attacked = n if st.training else n * plan.benchmark.database.split[2]
    return attacked * success_rate


def _detector_entry(plan: Plan, label: str) -> Entry:
    return next(e for e in plan.benchmark.detectors if e.label == label)


def _training_passes(plan: Plan, cell: Cell, det: DetectorFacts, facts: Facts, net: str) -> list[Passes]:
    """Fitting an image or model detector on the training sets of ``cell``'s world (each
    candidate of a dev-set search once), then one pass over every image of them."""
    images = sum(set_images(plan, st, facts.success_rate) for st in plan.training_sets(cell))
    train, dev, _ = plan.benchmark.database.split
    fits = max(1, len(_detector_entry(plan, cell.detector).candidates))
    passes = []
    if det.network:
        per_fit = det.epochs * train * images
        passes.append(Passes(det.network, fits * (per_fit + det.epochs * dev * images) + images, fits * per_fit))
    if det.classifier_forward and net:
        passes.append(Passes(net, det.classifier_forward * images * (fits + 1), 0.0))
    return passes


def _entry_and_target(plan: Plan, cell: Cell):
    if cell.stage == "robust":
        entry = next(e for e in plan.benchmark.robust if e.label == cell.family)
    else:
        entry = next(e for e in plan.benchmark.adaptive if e.label == cell.entry)
    return entry, next(t for t in entry.targets if t.label == cell.target)


def adaptive_operations(plan: Plan, cell: Cell) -> int:
    """Image operations of the defense an adaptive cell targets (the larger group of a pipeline's
    detector and corrector)."""
    bench = plan.benchmark
    _, target = _entry_and_target(plan, cell)
    if target.kind in ("operations", "detector"):
        return len(group_ops(bench, target.group)) if target.group else 0
    pipe = bench.correction.pipeline
    groups = [g for g in (pipe.group if pipe else "", *bench.correction_groups()[:1]) if g]
    return max((len(group_ops(bench, g)) for g in groups), default=0)


def _uncounted_detector(plan: Plan, cell: Cell) -> str:
    """The detector that sees images (or the model) inside an adaptive cell's defense: its own
    passes are not the classifier's, and are not counted. "" when there is none."""
    entry, target = _entry_and_target(plan, cell)
    pipe = plan.benchmark.correction.pipeline
    if target.kind == "detector" and not target.feature:
        return f"adaptive {entry.family!r} against {target.detector!r}: the detector's own passes are not counted"
    if target.kind == "pipeline" and pipe is not None and not pipe.feature:
        return f"adaptive {entry.family!r} against the pipeline: detector {pipe.detector!r}'s own passes are not counted"
    return ""


def count_work(plan: Plan, facts: Facts) -> list[CellWork]:
    """The passes (and CPU work) of every cell of ``plan``, by the cost model its stage declares
    (``Stage.cost`` in :mod:`advbench.stages`); see the module docstring."""
    work = []
    for cell in plan.cells:
        net = facts.classifier.get(cell.model, "")
        why_model = () if net else (f"model {cell.model!r}: {facts.unknown_models.get(cell.model, 'not built')}",)
        work.append(_COST_MODELS[STAGES[cell.stage].cost](plan, cell, facts, net, why_model))
    return work


def _dataset_work(plan: Plan, cell: Cell, facts: Facts, net: str, why_model: tuple[str, ...]) -> CellWork:
    """One forward pass per image of the dataset (clean selection)."""
    known = facts.dataset_images.get(cell.dataset)
    images = float(known if known is not None else images_per_model(plan))
    return CellWork(cell, (Passes(net, images, 0.0),) if net else (), unknown=why_model, at_least=known is None)


def _predict_work(plan: Plan, cell: Cell, facts: Facts, net: str, why_model: tuple[str, ...]) -> CellWork:
    """One forward pass per image of the set under one operation, and the operation's CPU time."""
    images = set_images(plan, plan.imageset(cell), facts.success_rate)
    key = (cell.model, cell.operation)
    scale = 1.0 if cell.operation == ORIGINAL else facts.op_scale.get(key, 1.0)
    cpu = 0.0 if cell.operation == ORIGINAL else images * facts.op_seconds.get(key, 0.0)
    missing = () if cell.operation == ORIGINAL or key in facts.op_seconds else \
        (f"operation {cell.operation!r}: its CPU time was not measured",)
    return CellWork(cell, (Passes(net, images, 0.0, scale),) if net else (), cpu, why_model + missing)


def _attack_work(plan: Plan, cell: Cell, facts: Facts, net: str, why_model: tuple[str, ...]) -> CellWork:
    """The attack's declared passes per attacked image (``AttackSpec.cost``) and the core's
    two re-checks (before and after saving)."""
    attacked = attacked_images(plan, cell)
    per_image = facts.attack_passes.get((cell.model, cell.imageset))
    if not net:
        return CellWork(cell, unknown=why_model)
    if per_image is None:
        label = cell.entry
        # the re-checks before and after saving are the core's, whatever the attack
        return CellWork(cell, (Passes(net, 2 * attacked, 0.0),),
                        unknown=(f"attack {label!r}: its plugin declares no cost",), at_least=True)
    forward, backward = per_image
    uncounted = _uncounted_detector(plan, cell) if cell.stage in ("adaptive", "robust") else ""
    unknown = (uncounted,) if uncounted else ()
    return CellWork(cell, (Passes(net, attacked * (forward + 2), attacked * backward),), unknown=unknown,
                    at_least=bool(unknown))


def _detector_work(plan: Plan, cell: Cell, facts: Facts, net: str, why_model: tuple[str, ...] = ()) -> CellWork:
    if not cell.detector:  # a corrector's score cell: votes over stored labels
        return CellWork(cell)
    det = facts.detectors.get((cell.model, cell.detector))
    if det is None or det.kind == "features":
        return CellWork(cell)  # a statistical fit on a feature matrix
    if det.unknown or not (det.network or det.classifier_forward):
        return CellWork(cell, unknown=(f"detector {cell.detector!r}: {det.unknown or 'its plugin declares no cost'}",),
                        at_least=True)
    if cell.stage == "detect":
        return CellWork(cell, tuple(_training_passes(plan, cell, det, facts, net)))
    images = set_images(plan, plan.imageset(cell), facts.success_rate)
    passes = [Passes(det.network, images, 0.0)] if det.network else []
    if det.classifier_forward and net:
        passes.append(Passes(net, det.classifier_forward * images, 0.0))
    if not det.saves:  # trained() fits it again, seeded, on the same data
        passes += _training_passes(plan, cell, det, facts, net)
    return CellWork(cell, tuple(passes))


def _no_work(plan: Plan, cell: Cell, facts: Facts, net: str, why_model: tuple[str, ...]) -> CellWork:
    """Array work (split, correct, subset): not priced."""
    return CellWork(cell)


_COST_MODELS = {"dataset": _dataset_work, "attack": _attack_work, "predict": _predict_work,
                "detector": _detector_work, "none": _no_work}
