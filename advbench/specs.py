"""What a plugin hands to the core: one frozen dataclass per plugin kind.

Every spec carries a ``name`` (unique within its kind), a one-line ``summary``, and a pydantic
``params`` model (``extra="forbid"``) that declares its parameters: names, types, defaults and
help text. The config is validated against it, ``advbench plugins`` lists it, the docs are
generated from it. ``default=True`` puts the plugin in the set used when a benchmark file
omits that section.

Optional abilities (a feature that reads probabilities, a detector that saves itself or offers
differentiable scores, an attack that takes every budget at once) are declared as spec fields;
the core reads the declaration and never probes the plugin's objects. A field left ``None`` (a
plugin written for API 1.2 or earlier) is probed once, as before (:mod:`advbench.abilities`).
Plugins import all of this from :mod:`advbench.plugin`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, ClassVar, Protocol, Union, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


_UNIONS = (Union, UnionType)


def _options(annotation: Any) -> tuple[Any, ...]:
    """The members of a union (``X | None``), else the annotation alone."""
    return get_args(annotation) if get_origin(annotation) in _UNIONS else (annotation,)


def _admits_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    return get_origin(annotation) in _UNIONS and any(_admits_bool(a) for a in get_args(annotation))


def _item_type(annotation: Any) -> Any:
    """The element type of ``list[X]``/``tuple[X, ...]``/``X | None`` of those, else None."""
    for option in _options(annotation):
        if get_origin(option) in (list, tuple, set, frozenset) and get_args(option):
            return get_args(option)[0]
    return None


class NumbersAreNotBooleans(BaseModel):
    """pydantic's lax mode reads ``true`` as 1 for a number (``seed = true`` ran with seed 1):
    a boolean is taken only where the field's type admits one."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        if isinstance(value, bool) and not _admits_bool(field.annotation):
            raise ValueError(f"expected {_expected(field.annotation)}, not a boolean")
        item = _item_type(field.annotation)
        if isinstance(value, (list, tuple)) and item is not None and not _admits_bool(item) \
                and any(isinstance(v, bool) for v in value):
            raise ValueError(f"expected a list of {_expected(item).removeprefix('a ')}s, not booleans")
        return value


def _expected(annotation: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "a string"}
    return next((names[o] for o in _options(annotation) if o in names), "value of another type")


class Params(NumbersAreNotBooleans):
    """Base class for plugin parameter models: unknown keys are errors, values are frozen,
    numbers are finite and never booleans."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoParams(Params):
    """For plugins that take no parameters."""


@dataclass(frozen=True)
class PluginSpec:
    name: str
    summary: str
    params: type[Params] = NoParams
    default: bool = False
    #: Bump when the plugin's results change within one package version: cached cells that it
    #: determines are then recomputed.
    version: str = "1"
    #: Optional cheap checks of what ``params`` point at (a file exists, opens, fits the network),
    #: run by ``advbench validate`` and by ``advbench run`` before any work; raises a one-line
    #: :class:`~advbench.errors.DataError` naming the file and what would be valid.
    check: Callable[[Any], None] | None = None
    kind: ClassVar[str] = ""


# --- context handed to plugins -------------------------------------------------------------


@dataclass(frozen=True)
class BuildContext:
    """Where a plugin may keep files and which device/seed to use."""

    cache_dir: Path
    device: str = "cpu"
    seed: int = 0


# --- datasets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``image`` is a PIL image in RGB mode."""

    id: str
    image: Any
    label: int


class ImageSource(Protocol):
    """What a dataset plugin returns: class names and an iterator of samples.

    ``skipped`` counts unreadable files seen so far (they are skipped with a warning).
    """

    class_names: Sequence[str]
    skipped: int

    def __iter__(self) -> Iterator[Sample]: ...


@dataclass(frozen=True)
class DatasetSpec(PluginSpec):
    load: Callable[[Any, BuildContext], ImageSource] = None  # type: ignore[assignment]
    #: Optional: the number of classes, known without reading an image, so that validation
    #: catches a ``top_k`` no attack could meet before any work (else the clean cell does).
    class_count: Callable[[Any], int] | None = None
    kind: ClassVar[str] = "dataset"


# --- models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A classifier that takes float images in [0, 1] (N, 3, H, W) and returns logits.

    Normalisation happens inside ``module`` so attacks and transforms work in pixel space.
    ``prepare`` maps any RGB PIL image to the model's input size (resize/crop policy).
    """

    module: Any  # torch.nn.Module, in eval mode
    input_size: tuple[int, int]
    num_classes: int
    prepare: Callable[[Any], Any]
    fingerprint: str = ""  # identifies the weights, so caches follow a retrained model


@dataclass(frozen=True)
class ModelSpec(PluginSpec):
    """``build(params, ctx)`` returns the :class:`LoadedModel`.

    ``architecture(params)`` (optional) returns the same network with random weights, built
    without reading or training any weights: ``advbench validate --estimate`` counts FLOPs and
    times passes on it when ``build`` cannot run offline (weights absent).
    """

    build: Callable[[Any, BuildContext], LoadedModel] = None  # type: ignore[assignment]
    architecture: Callable[[Any], LoadedModel] | None = None
    kind: ClassVar[str] = "model"


# --- costs, for estimates ------------------------------------------------------------------


@dataclass(frozen=True)
class CostInputs:
    """What a plugin's ``cost`` function is told about the work it prices
    (``advbench validate --estimate``): the classifier's input, (C, H, W), its number of
    classes, and for an adaptive attack the number of image operations of the defense it
    targets (0 for an oblivious attack)."""

    image_shape: tuple[int, int, int]
    num_classes: int
    operations: int = 0


@dataclass(frozen=True)
class TrainingCost:
    """What fitting a detector that sees images costs, from ``DetectorSpec.cost``: ``epochs``
    passes (forward and backward, weight gradients included) of ``network`` (an ``nn.Module``
    with random weights taking float (N, 3, H, W) batches) over the train split, a forward pass
    over the dev split after each epoch, and one forward pass per image it scores; inputs of
    ``image_shape`` when the detector resizes them (default: the classifier's).
    ``classifier_forward``: forward passes of the classifier per image the detector fits on or
    scores (model-aware detectors)."""

    network: Any = None
    epochs: int = 0
    image_shape: tuple[int, int, int] | None = None
    classifier_forward: float = 0.0


# --- attacks -------------------------------------------------------------------------------


class Criterion(Protocol):
    """Decides, from logits, which rows are adversarial under the benchmark's success rule."""

    targeted: bool
    labels: Any  # (N,) original top-1 labels
    targets: Any  # (N,) target labels, or None for non-targeted attacks

    def __call__(self, logits: Any) -> Any: ...  # (N, C) -> bool (N,)


@dataclass(frozen=True)
class AttackOutput:
    """What ``AttackSpec.run`` may return instead of a bare tensor: the candidates and per-image
    numbers the core stores beside them (e.g. ``{"queries": (N,) tensor}`` for a black-box
    attack: the mean, median and max go to the store, each value to the manifest)."""

    images: Any  # float (N, 3, H, W) in [0, 1]
    per_image: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Defense:
    """The defense an adaptive attack targets (``AttackSpec.adaptive``), handed in as
    ``ctx.defense`` (an :class:`AttackContext`). Built by the core from trained artefacts; every
    callable takes float (N, 3, H, W) batches in [0, 1] on ``ctx.device``.

    - ``operations``: the targeted group's image operations, differentiable (a straight-through
      estimator, BPDA, stands in for the gradient of an operation that has none, e.g. JPEG);
    - ``detector_scores``: differentiable detector scores (higher = more adversarial), flagged
      when ``> threshold``; ``None`` when the detector is not differentiable;
    - ``flags``: the whole detector as a decision (N,) bool, differentiable or not (label-only
      attacks query it);
    - ``correct``: the corrected top-1 labels (N,) of a detect-then-correct pipeline, or None;
    - ``storage``: what the system does to a submitted image before anything sees it, the
      database's save -> reload (8-bit rounding, JPEG q100 by default): exact on the forward
      pass, the identity on the backward pass (straight-through). An attacker who knows the
      system optimises ``storage(x)``; on 32x32 images the JPEG round trip alone moves pixels by
      up to ~30/255 and undoes most small-budget evasions. None: no such step;
    - ``top_k``: how many top-ranked labels the defense's feature compares under each operation
      (the feature's k; 0 where the defense reads no ranking), for attacks on the ranking itself.
    """

    kind: str  # "operations", "detector" or "pipeline"
    name: str
    operations: tuple[Callable[[Any], Any], ...] = ()
    detector_scores: Callable[[Any], Any] | None = None
    threshold: float = 0.0
    flags: Callable[[Any], Any] | None = None
    correct: Callable[[Any], Any] | None = None
    storage: Callable[[Any], Any] | None = None
    top_k: int = 0


@dataclass(frozen=True)
class AttackContext(BuildContext):
    """The context of an attack cell: a :class:`BuildContext` plus, for adaptive attacks, the
    :class:`Defense` they target (None for oblivious ones), and for an attack that declares
    ``AttackSpec.warm_start`` the point each row starts from: a float (N, 3, H, W) batch inside
    the budget ball of ``images`` (e.g. the row's adversarial image at a smaller budget), or
    None (the attack's own start)."""

    defense: Defense | None = None
    start: Any = None


@dataclass(frozen=True)
class AttackSpec(PluginSpec):
    """``run(model, images, criterion, params, ctx)`` returns candidate adversarial images.

    ``run_budgets(model, images, criterion, params, budgets, ctx)`` (optional) attacks under every
    budget of an entry's ``budgets = [...]`` grid in one call, as foolbox's ``epsilons`` do:
    ``budgets`` is the grid, ascending (per pixel value, in ``norm``), ``params`` the entry's
    parameters with ``budget_param`` at the smallest budget, and it returns one result per budget
    (a tensor or an :class:`AttackOutput`, as ``run``), in the order of ``budgets``. It sees every
    budget, so it may share work across them (a minimal-perturbation attack runs once, unbounded,
    and clips that run to each ball). Each budget's result must be what a call of ``run`` with
    that budget alone would give from the same random state (reseed with
    ``torch.manual_seed(ctx.seed)`` before each budget if the attack draws random numbers):
    cached cells are keyed per budget, whatever grid made them. Without it the core calls ``run``
    once per budget, reseeded alike. ``needs_scores``: the adaptive attack differentiates
    through the targeted detector's scores (``Defense.detector_scores``), so it can only target
    detectors that declare ``differentiable = True`` (checked when the config is validated).

    ``images`` is a float tensor in [0, 1]; the result (a tensor, or an :class:`AttackOutput`)
    has the same shape and range. Rows the attack could not make adversarial may be returned
    unchanged: the core re-checks every row with the criterion, before and after saving to file.

    ``budget_param`` names the parameter that an attack entry's ``budgets = [...]`` varies (one
    adversarial set per budget; a list-valued parameter receives ``[budget]``), ``norm`` the norm
    it is measured in (``linf``, ``l2``, ``l1``, or ``""``), ``threat`` what the attacker sees
    (``white-box``, ``score-based`` or ``decision-based``). ``adaptive`` lists the kinds of
    :class:`Defense` the attack can target (``operations``, ``detector``, ``pipeline``); empty
    for an oblivious attack. ``warm_start``: ``run`` begins from ``ctx.start`` when it is given
    (the robust evaluation's warm start from a smaller budget's image).

    ``cost(params, inputs)`` (optional) returns ``(forward, backward)``: the passes through the
    classifier per attacked image, an upper bound (a forward pass followed by a backward pass
    counts one of each; a pass over a batch of n images counts n/n = 1 per image). ``inputs`` is
    a :class:`CostInputs`. ``advbench validate --estimate`` multiplies it by the images attacked;
    an attack without ``cost`` is reported as "unknown".
    """

    targeted: bool = False
    run: Callable[..., Any] = None  # type: ignore[assignment]
    cost: Callable[[Any, CostInputs], tuple[float, float]] | None = None
    budget_param: str = ""
    norm: str = ""
    threat: str = "white-box"
    adaptive: tuple[str, ...] = ()
    run_budgets: Callable[..., Sequence[Any]] | None = None
    needs_scores: bool = False
    warm_start: bool = False
    kind: ClassVar[str] = "attack"


# --- transforms ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformSpec(PluginSpec):
    """An image operation. ``apply(image, params)`` maps an RGB PIL image to an RGB PIL image.

    ``apply_tensor(batch, params)`` (optional) does the same on a float (N, 3, H, W) batch in
    [0, 1] for the tensor backend. ``default_grid`` and ``default_group`` define the operations
    used when a benchmark omits ``[[transforms]]`` (the paper's set).
    """

    apply: Callable[[Any, Any], Any] = None  # type: ignore[assignment]
    apply_tensor: Callable[[Any, Any], Any] | None = None
    #: ``apply_tensor`` has useful gradients (adaptive attacks differentiate through it); when
    #: False they use a straight-through estimator (BPDA) in its place, if the size is kept
    differentiable: bool = False
    default_grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    default_group: str = ""
    kind: ClassVar[str] = "transform"


# --- features ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probabilities:
    """The classifier's full softmax output, handed to features that take a ``probs`` argument:
    ``original`` (N, C) without operation, ``transformed`` (N, n, C) under each operation
    (float32; stored as float16)."""

    original: np.ndarray
    transformed: np.ndarray


@dataclass(frozen=True)
class FeatureSpec(PluginSpec):
    """``compute(original, transformed, params)`` -> float matrix (N, D).

    ``original`` is the (N, k) top-k labels of the untransformed images; ``transformed`` is
    (N, n, k): the top-k labels under each of the n selected operations. With ``takes_probs =
    True`` ``compute`` also receives ``probs=``:class:`Probabilities` (``None``: the core looks
    for a ``probs`` parameter in its signature, as API 1.2 did).
    """

    compute: Callable[[np.ndarray, np.ndarray, Any], np.ndarray] = None  # type: ignore[assignment]
    takes_probs: bool | None = None
    kind: ClassVar[str] = "feature"


# --- detectors -----------------------------------------------------------------------------


class Detector(Protocol):
    """A binary classifier: label 1 = adversarial. ``scores`` grow with adversarial-ness."""

    def fit(self, features: np.ndarray, labels: np.ndarray) -> Any: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...

    def scores(self, features: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class DetectorContext(BuildContext):
    """What a model-aware detector (``inputs = "model"``) is built with: a :class:`BuildContext`
    (private ``cache_dir``, ``device``, ``seed``) and the classifier under attack. ``model.module``
    is an ``nn.Module`` in eval mode taking [0, 1] images, so forward hooks reach its layers."""

    model: LoadedModel | None = None


@dataclass(frozen=True)
class ReferenceSet:
    """Labelled images for a detector's class statistics (kernel densities, Gaussian means):
    uint8 (N, H, W, 3) ``images`` with their TRUE ``labels`` (N,), disjoint from the images the
    detector is fitted and scored on (``[detection] references``)."""

    images: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class FitInfo:
    """What the core tells a detector with ``DetectorSpec.fit_info`` about the rows it fits on:
    ``sources`` (N,) the id of each row's source image, the same id for a normal image and every
    adversarial image made from it (its index in the benchmark's clean set); ``reference`` the
    labelled reference set, or None where the benchmark names none."""

    sources: np.ndarray
    reference: ReferenceSet | None = None


@dataclass(frozen=True)
class DetectorSpec(PluginSpec):
    """``build(params, seed)`` returns an unfitted :class:`Detector`.

    ``inputs = "features"``: the detector sees a feature matrix, one cell per feature and
    operation group. ``inputs = "images"``: it sees the uint8 images (N, H, W, 3) themselves
    (CNN detectors, §4), one cell per dataset/model. ``inputs = "model"``: it sees the images
    too and is built with ``build(params, ctx)``, ``ctx`` a :class:`DetectorContext` holding the
    classifier (feature squeezing, kernel density, LID, Mahalanobis), one cell per
    dataset/model.

    Optional abilities of the detectors it builds, declared here (the core uses what is declared
    and never probes; ``None``, as in API 1.2 and earlier, means "look for the method"):

    - ``selects_on_dev``: ``fit(X, y, dev=(X, y))`` takes the dev split for model selection;
    - ``has_logits``: ``logits(X)`` returns the (N, 2) logits (Fig. 2);
    - ``differentiable``: ``torch_scores(x)`` returns differentiable scores of a float
      (N, 3, H, W) batch in [0, 1] (image and model detectors; adaptive attacks with
      ``needs_scores`` differentiate through it), with the attribute ``threshold`` (flagged when
      ``torch_scores > threshold``);
    - ``saves``: ``save(directory)``/``load(directory)`` keep a fitted detector in the cache, so
      cells that score new images against it need not refit it (without them it is refit, seeded).

    ``cost(params, inputs)`` (optional, for detectors that see images or the model) returns a
    :class:`TrainingCost` (``inputs``: a :class:`CostInputs`) for ``advbench validate
    --estimate``; without it their cost is reported as "unknown". Feature detectors need none.

    ``fit_info = True``: ``fit`` also takes ``info=``:class:`FitInfo` (each row's source image,
    the labelled reference set). ``select_by``: what the core's dev-set search over the
    detector's parameters maximises: ``"accuracy"`` (the paper's rule: the detector's own
    decision) or ``"auroc"`` (a score-based detector, whose threshold is a separate choice).
    """

    build: Callable[[Any, Any], Detector] = None  # type: ignore[assignment]
    cost: Callable[[Any, CostInputs], TrainingCost] | None = None
    inputs: str = "features"
    selects_on_dev: bool | None = None
    has_logits: bool | None = None
    differentiable: bool | None = None
    saves: bool | None = None
    fit_info: bool = False
    select_by: str = "accuracy"
    kind: ClassVar[str] = "detector"

    @property
    def sees_images(self) -> bool:
        return self.inputs in ("images", "model")


# --- correctors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrectorSpec(PluginSpec):
    """``correct(transformed, k, params)`` -> corrected top-k labels (N, k).

    ``transformed`` is (N, n, k): the top-k labels of each image under the n selected
    operations (§3.3). A pure function; ties must be broken deterministically.
    """

    correct: Callable[[np.ndarray, int, Any], np.ndarray] = None  # type: ignore[assignment]
    kind: ClassVar[str] = "corrector"


SPEC_TYPES: dict[str, type[PluginSpec]] = {
    s.kind: s for s in (DatasetSpec, ModelSpec, AttackSpec, TransformSpec, FeatureSpec, DetectorSpec, CorrectorSpec)
}
KINDS: tuple[str, ...] = tuple(SPEC_TYPES)
