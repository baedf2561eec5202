"""Contract checks of a plugin spec, one named check per property, in scikit-learn's style.

:func:`checks` yields every check that applies to a spec (some follow its declared abilities:
``differentiable``, ``saves``, ``run_budgets`` ...) as ``(name, call)`` pairs;
:func:`parametrize_with_checks` turns specs into one pytest case each, named
``<plugin>-<check>``, so a failing property shows by name::

    from advbench.testing import parametrize_with_checks
    from my_package.attacks import NOISE

    @parametrize_with_checks([NOISE])
    def test_noise(check):
        check()

:func:`check_plugin` runs them all at once (the first failure raises, naming its check). The
checks run on the tiny world (:mod:`advbench.testing.world`); thresholds and sizes are
:class:`CheckOptions`. Checks exist for every kind: datasets, models, attacks, transforms,
features, detectors (on features, and model-aware ones) and correctors.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from advbench.criteria import PaperCriterion, target_labels
from advbench.imaging import to_tensor
from advbench.specs import (AttackOutput, AttackSpec, BuildContext, CorrectorSpec, CostInputs, DatasetSpec,
                            DetectorContext, DetectorSpec, FeatureSpec, FitInfo, LoadedModel, ModelSpec, Params, PluginSpec,
                            Probabilities, TrainingCost, TransformSpec)
from advbench.testing.world import DetectionSplit, digits, tiny_detection_splits, tiny_model

#: a detector's abilities, declared on its spec (never probed by the core)
DETECTOR_ABILITIES = ("selects_on_dev", "has_logits", "differentiable", "saves")
_METHODS = {"selects_on_dev": (), "has_logits": ("logits",), "differentiable": ("torch_scores",),
            "saves": ("save", "load")}


@dataclass(frozen=True)
class CheckOptions:
    """Sizes and thresholds of the checks (the defaults suit the tiny world)."""

    n: int = 16  # images an attack, transform, model or dataset check uses
    min_success: float = 0.25  # attacks: share of images made adversarial
    min_accuracy: float = 0.9  # feature detectors: accuracy on two separable blobs
    min_auroc: float = 0.65  # model-aware detectors: eval AUROC on the tiny adversarial world
    atol: float = 1e-4  # model-aware detectors: torch_scores vs scores, relative to their spread
    tolerance: float = 2.0  # transforms: mean gap between the Pillow and tensor backends, 0..255
    n_repeat: int = 4  # attacks: images of the checks that run an attack again (same seed, each budget alone)
    operations: int = 5  # features and correctors: operations per image
    k: int = 3  # features and correctors: labels per list
    classes: int = 10


_CHECKS: dict[str, list[tuple[str, Callable[..., Any], Callable[[Any], bool]]]] = {}


def _check(kind: str, applies: Callable[[Any], bool] = lambda spec: True):
    """Register ``check_<property>(spec, params, options)`` as a named check of ``kind``."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        _CHECKS.setdefault(kind, []).append((fn.__name__.removeprefix("check_"), fn, applies))
        return fn
    return register


def _kind(spec: PluginSpec) -> str:
    if isinstance(spec, DetectorSpec):
        return "model detector" if spec.inputs == "model" else "image detector" if spec.inputs == "images" \
            else "detector"
    return spec.kind


def checks(spec: PluginSpec, params: Params | None = None,
           options: CheckOptions = CheckOptions()) -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(name, call)`` of every check that applies to ``spec`` (with ``params``, default: the
    plugin's defaults); ``call()`` raises ``AssertionError`` naming the plugin and the property."""
    params = params if params is not None else spec.params()
    for name, fn, applies in _CHECKS.get(_kind(spec), []):
        if applies(spec):
            yield name, partial(fn, spec, params, options)


def check_plugin(spec: PluginSpec, params: Params | None = None, options: CheckOptions = CheckOptions()) -> dict:
    """Run every check of ``spec``; returns {check name: what it measured}."""
    return _run_checks(spec, params, options)


def _run_checks(spec: PluginSpec, params: Params | None, options: CheckOptions,
                only: tuple[str, ...] | None = None) -> dict:
    results = {}
    for name, call in checks(spec, params, options):
        if only is None or name in only:
            try:
                results[name] = call()
            except AssertionError as exc:
                raise AssertionError(f"{spec.name}: check {name!r} failed: {exc}") from exc
    return results


def parametrize_with_checks(specs: Iterable[PluginSpec | tuple[PluginSpec, Params]],
                            options: CheckOptions = CheckOptions()):
    """A ``pytest.mark.parametrize`` over ``check``: one case per check of each spec (a spec, or
    a ``(spec, params)`` pair), with the id ``<plugin>-<check>``."""
    import pytest

    cases, ids = [], []
    for item in specs:
        spec, params = item if isinstance(item, tuple) else (item, None)
        for name, call in checks(spec, params, options):
            cases.append(call)
            ids.append(f"{spec.name}-{name}")
    return pytest.mark.parametrize("check", cases, ids=ids)


def _ensure(condition: Any, spec: PluginSpec, message: str) -> None:
    if not condition:
        raise AssertionError(f"{spec.name}: {message}")


# --- datasets ---------------------------------------------------------------------------------


def _samples(spec: DatasetSpec, params: Params, n: int) -> tuple[Any, list]:
    with tempfile.TemporaryDirectory() as scratch:
        source = spec.load(params, BuildContext(cache_dir=Path(scratch), device="cpu", seed=0))
        samples = []
        for sample in source:
            samples.append(sample)
            if len(samples) == n:
                break
    return source, samples


@_check("dataset")
def check_lists_its_classes(spec, params, options) -> int:
    source, _ = _samples(spec, params, 1)
    names = list(source.class_names)
    _ensure(names and all(isinstance(c, str) for c in names), spec, "class_names must be a non-empty list of str")
    _ensure(len(set(names)) == len(names), spec, "class_names must be distinct")
    return len(names)


@_check("dataset")
def check_yields_labelled_rgb_images(spec, params, options) -> int:
    source, samples = _samples(spec, params, options.n)
    _ensure(samples, spec, "yielded no sample")
    for s in samples:
        _ensure(isinstance(s.image, Image.Image) and s.image.mode == "RGB", spec, f"sample {s.id!r}: not an RGB PIL image")
        _ensure(isinstance(s.label, int) and 0 <= s.label < len(source.class_names), spec,
                f"sample {s.id!r}: label {s.label!r} is not a class index")
    _ensure(len({s.id for s in samples}) == len(samples), spec, "sample ids repeat")
    _ensure(isinstance(source.skipped, int) and source.skipped >= 0, spec, "skipped must count unreadable files")
    return len(samples)


@_check("dataset")
def check_yields_the_same_samples_again(spec, params, options) -> None:
    _, first = _samples(spec, params, options.n)
    _, again = _samples(spec, params, options.n)
    _ensure([(s.id, s.label) for s in first] == [(s.id, s.label) for s in again], spec,
            "two loads gave other samples (the selection and split need a fixed order)")


# --- models -----------------------------------------------------------------------------------


@cache
def _scratch() -> Path:
    """A folder for what the checks build and keep for this process (removed at exit)."""
    folder = tempfile.TemporaryDirectory(prefix="advbench-checks-")
    _KEPT.append(folder)
    return Path(folder.name)


_KEPT: list[tempfile.TemporaryDirectory] = []


_MEMO: dict[tuple, Any] = {}


def _kept(make: Callable[..., Any], spec: PluginSpec, params: Params, *more: Any) -> Any:
    """``make(spec, params, *more)``, made once per process (the checks of a spec share it;
    parameters holding lists are unhashable, so they are keyed by their JSON)."""
    key = (make.__name__, id(spec), spec.name, params.model_dump_json(), *more)
    if key not in _MEMO:
        _MEMO[key] = make(spec, params, *more)
    return _MEMO[key]


def _built(spec: ModelSpec, params: Params) -> LoadedModel:
    def build(spec, params):
        return spec.build(params, BuildContext(cache_dir=_scratch() / "models" / spec.name, device="cpu", seed=0))
    return _kept(build, spec, params)


def _inputs(model: LoadedModel, n: int) -> torch.Tensor:
    images = [model.prepare(Image.fromarray(a)) for a in digits()[0][1::2][:n]]
    return to_tensor(np.stack([np.asarray(im.convert("RGB")) for im in images]))


@_check("model")
def check_builds_a_loaded_model(spec, params, options) -> None:
    model = _built(spec, params)
    _ensure(isinstance(model, LoadedModel), spec, "build must return a LoadedModel")
    _ensure(isinstance(model.module, torch.nn.Module) and not model.module.training, spec,
            "module must be an nn.Module in eval mode")
    _ensure(len(model.input_size) == 2 and model.num_classes >= 2, spec, "input_size (H, W) and num_classes >= 2")


@_check("model")
def check_prepares_images_to_its_input_size(spec, params, options) -> None:
    model = _built(spec, params)
    prepared = model.prepare(Image.fromarray(digits()[0][1]))
    _ensure(isinstance(prepared, Image.Image) and prepared.size[::-1] == tuple(model.input_size), spec,
            f"prepare must give a PIL image of input_size {model.input_size}")


@_check("model")
def check_gives_finite_logits_per_class(spec, params, options) -> None:
    model = _built(spec, params)
    x = _inputs(model, options.n)
    with torch.no_grad():
        logits = model.module(x)
        again = model.module(x)
    _ensure(tuple(logits.shape) == (len(x), model.num_classes), spec,
            f"logits of shape {tuple(logits.shape)}, expected {(len(x), model.num_classes)}")
    _ensure(torch.isfinite(logits).all(), spec, "logits must be finite")
    _ensure(torch.equal(logits, again), spec, "two forward passes of the same batch differ")


@_check("model", applies=lambda spec: spec.architecture is not None)
def check_architecture_has_the_model_s_shape(spec, params, options) -> None:
    model, bare = _built(spec, params), spec.architecture(params)
    _ensure(tuple(bare.input_size) == tuple(model.input_size) and bare.num_classes == model.num_classes, spec,
            "architecture must have the built model's input size and classes")
    with torch.no_grad():
        _ensure(tuple(bare.module.eval()(_inputs(model, 2)).shape) == (2, model.num_classes), spec,
                "architecture's network gives another output shape")


# --- attacks ----------------------------------------------------------------------------------


def _attack_world(spec: AttackSpec, n: int) -> tuple[LoadedModel, torch.Tensor, PaperCriterion]:
    model = tiny_model()
    x = to_tensor(digits()[0][1::2][:n])
    with torch.no_grad():
        top1 = model.module(x).argmax(1)
    targets = target_labels(top1, 3, 10) if spec.targeted else None
    return model, x, PaperCriterion(spec.targeted, top1, targets, k=2, threshold=0.9)


def _run_attack(spec: AttackSpec, params: Params, n: int, seed: int = 0) -> tuple[Any, torch.Tensor, Any]:
    """(output, the images attacked, criterion) of one seeded call (kept: the checks share it)."""
    return _kept(_fresh_run, spec, params, n, seed)


def _fresh_run(spec: AttackSpec, params: Params, n: int, seed: int = 0) -> tuple[Any, torch.Tensor, Any]:
    """One call of ``run`` from ``torch.manual_seed(seed)``, as the core makes it; the input
    must come back untouched."""
    model, x, criterion = _attack_world(spec, n)
    given = x.clone()
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:  # a plugin that caches must not write into the caller's folder
        out = spec.run(model.module, given, criterion, params, BuildContext(cache_dir=Path(scratch), device="cpu",
                                                                             seed=seed))
    _ensure(torch.equal(given, x), spec, "run must not modify its input images")
    return out, x, criterion


def _images(spec: AttackSpec, out: Any, n: int) -> torch.Tensor:
    if isinstance(out, AttackOutput):
        for name, values in out.per_image.items():
            _ensure(tuple(torch.as_tensor(values).shape) == (n,), spec, f"per_image[{name!r}] must hold one value per image")
        out = out.images
    return out


_OBLIVIOUS = lambda spec: not spec.adaptive  # noqa: E731 - adaptive attacks need a trained defense to run


@_check("attack", applies=_OBLIVIOUS)
def check_returns_images_like_its_input(spec, params, options) -> None:
    out, x, _ = _run_attack(spec, params, options.n)
    out = _images(spec, out, options.n)
    _ensure(isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype, spec,
            f"output {getattr(out, 'shape', None)} must be a tensor like the input {tuple(x.shape)}")
    _ensure(torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, spec, "output must be finite, in [0, 1]")


@_check("attack", applies=_OBLIVIOUS)
def check_finds_adversarial_examples(spec, params, options) -> float:
    out, _, criterion = _run_attack(spec, params, options.n)
    with torch.no_grad():
        rate = criterion(tiny_model().module(_images(spec, out, options.n))).float().mean().item()
    _ensure(rate >= options.min_success, spec,
            f"only {rate:.0%} of {options.n} images adversarial (< {options.min_success:.0%})")
    return rate


@_check("attack", applies=_OBLIVIOUS)
def check_is_deterministic_for_a_seed(spec, params, options) -> None:
    n = options.n_repeat
    first = _images(spec, _run_attack(spec, params, n)[0], n)
    again = _images(spec, _fresh_run(spec, params, n)[0], n)
    _ensure(torch.equal(first, again), spec, "two runs from the same seed differ (the core reseeds before each call)")


def _budget(spec: AttackSpec, params: Params) -> float | None:
    value = getattr(params, spec.budget_param, None) if spec.budget_param else None
    return max(value) if isinstance(value, list) else value


@_check("attack", applies=lambda spec: not spec.adaptive and spec.norm in ("linf", "l2", "l1") and bool(spec.budget_param))
def check_stays_within_its_budget(spec, params, options) -> None:
    budget = _budget(spec, params)
    if budget is None:  # an unbounded setting (max_norm = None)
        return
    out, x, _ = _run_attack(spec, params, options.n)
    delta = (_images(spec, out, options.n) - x).flatten(1)
    d = x[0].numel()
    size = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1) / math.sqrt(d), "l1": delta.abs().sum(1) / d}[spec.norm]
    _ensure((size <= budget * (1 + 1e-4) + 1e-6).all(), spec,
            f"a perturbation of {float(size.max()):.4g} ({spec.norm}, per pixel value) exceeds the budget {budget:g}")


@_check("attack", applies=lambda spec: not spec.adaptive and spec.run_budgets is not None)
def check_takes_a_budget_grid_in_one_call(spec, params, options) -> None:
    """``run_budgets``: one result per budget, in order, each what ``run`` gives for that budget
    alone from the same seed."""
    budget = _budget(spec, params) or 0.1
    grid, n = [budget / 2, budget], options.n_repeat
    model, x, criterion = _attack_world(spec, n)
    as_list = isinstance(getattr(params, spec.budget_param), list)
    at = [params.model_copy(update={spec.budget_param: [b] if as_list else b}) for b in grid]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        ctx = BuildContext(cache_dir=Path(scratch), device="cpu", seed=0)
        results = list(spec.run_budgets(model.module, x.clone(), criterion, at[0], grid, ctx))
    _ensure(len(results) == len(grid), spec, f"run_budgets gave {len(results)} results for {len(grid)} budgets")
    for b, p, result in zip(grid, at, results):
        alone = _images(spec, _run_attack(spec, p, n)[0], n)
        _ensure(torch.equal(_images(spec, result, n), alone), spec,
                f"run_budgets at {b:g} differs from run with that budget alone (its cells are cached per "
                "budget, whatever grid made them)")


@_check("attack", applies=lambda spec: spec.cost is not None)
def check_declares_its_passes(spec, params, options) -> None:
    forward, backward = spec.cost(params, CostInputs((3, 16, 16), 10, operations=3 if spec.adaptive else 0))
    _ensure(all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in (forward, backward)), spec,
            f"cost must return (forward, backward) passes per image >= 0, got {(forward, backward)}")


# --- transforms -------------------------------------------------------------------------------


def _pillow(spec: TransformSpec, params: Params, n: int) -> tuple[np.ndarray, list, list]:
    arrays = digits()[0][1::2][:n]
    images = [Image.fromarray(a) for a in arrays]
    return arrays, images, [spec.apply(im, params) for im in images]


@_check("transform")
def check_maps_rgb_images_to_rgb_images(spec, params, options) -> None:
    arrays, images, outs = _pillow(spec, params, options.n)
    for a, im, out in zip(arrays, images, outs):
        _ensure(isinstance(out, Image.Image) and out.mode == "RGB", spec, "apply must return an RGB PIL image")
        _ensure(np.array_equal(np.asarray(im), a), spec, "apply must not modify its input")
    sizes = {out.size for out in outs}
    _ensure(len(sizes) == 1, spec, f"same-size inputs gave outputs of sizes {sorted(sizes)}")
    _ensure(np.array_equal(np.asarray(spec.apply(images[0], params)), np.asarray(outs[0])), spec,
            "apply is not deterministic")


@_check("transform", applies=lambda spec: spec.apply_tensor is not None)
def check_tensor_backend_agrees_with_pillow(spec, params, options) -> float:
    arrays, _, outs = _pillow(spec, params, options.n)
    x = to_tensor(arrays)
    y = spec.apply_tensor(x.clone(), params)
    _ensure(isinstance(y, torch.Tensor) and y.dtype == x.dtype and y.device == x.device, spec,
            "apply_tensor must return a tensor of the input's dtype and device")
    width, height = outs[0].size
    _ensure(tuple(y.shape) == (len(x), 3, height, width), spec,
            f"apply_tensor gave {tuple(y.shape)}, the Pillow backend {(len(x), 3, height, width)}")
    _ensure(torch.isfinite(y).all() and y.min() >= -1e-6 and y.max() <= 1 + 1e-6, spec,
            "apply_tensor output must be finite, in [0, 1]")
    pil = np.stack([np.asarray(out, dtype=np.float64) for out in outs])
    gap = float(np.abs(pil - y.detach().permute(0, 2, 3, 1).double().numpy() * 255).mean())
    _ensure(gap <= options.tolerance, spec, f"backends differ by {gap:.2f}/255 on average (> {options.tolerance})")
    return gap


@_check("transform", applies=lambda spec: spec.differentiable)
def check_passes_a_gradient(spec, params, options) -> None:
    _ensure(spec.apply_tensor is not None, spec, "differentiable = True needs apply_tensor")
    xg = to_tensor(digits()[0][1::2][:options.n]).requires_grad_(True)
    out = spec.apply_tensor(xg, params)
    _ensure(out.requires_grad, spec, "differentiable = True but no gradient reaches the input")
    out.sum().backward()
    _ensure(xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0, spec,
            "differentiable = True but no gradient reaches the input")


# --- features ---------------------------------------------------------------------------------


def _label_lists(options: CheckOptions, n: int = 12) -> tuple[np.ndarray, np.ndarray, Probabilities]:
    rng = np.random.default_rng(0)
    k, classes = options.k, options.classes
    original = np.stack([rng.permutation(classes)[:k] for _ in range(n)])
    transformed = np.stack([[rng.permutation(classes)[:k] for _ in range(options.operations)] for _ in range(n)])
    logits = rng.normal(size=(n, options.operations + 1, classes)) * 3
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
    return original, transformed, Probabilities(original=p[:, 0], transformed=p[:, 1:])


def _feature(spec: FeatureSpec, params: Params, options: CheckOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    original, transformed, probs = _label_lists(options)
    before = (original.copy(), transformed.copy())
    out = np.asarray(spec.compute(original, transformed, params, **({"probs": probs} if spec.takes_probs else {})))
    _ensure(np.array_equal(original, before[0]) and np.array_equal(transformed, before[1]), spec,
            "compute must not modify its inputs")
    return original, transformed, out


@_check("feature")
def check_declares_whether_it_takes_probs(spec, params, options) -> None:
    _ensure(spec.takes_probs is not None, spec, "declare takes_probs = True or False on the FeatureSpec (API 1.3)")


@_check("feature", applies=lambda spec: spec.takes_probs is not None)
def check_returns_a_finite_matrix(spec, params, options) -> np.ndarray:
    original, _, out = _feature(spec, params, options)
    _ensure(out.ndim == 2 and out.shape[0] == len(original) and out.shape[1] >= 1, spec,
            f"compute must return an (N, D) matrix, got shape {out.shape}")
    _ensure(np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer), spec,
            f"compute must return numbers, got {out.dtype}")
    _ensure(np.isfinite(out).all(), spec, "compute returned non-finite values")
    return out


@_check("feature", applies=lambda spec: spec.takes_probs is not None)
def check_is_a_pure_function(spec, params, options) -> None:
    _, _, out = _feature(spec, params, options)
    _, _, again = _feature(spec, params, options)
    _ensure(np.array_equal(out, again), spec, "compute is not deterministic")


# --- detectors on features --------------------------------------------------------------------


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    return rng.normal(size=(200, 6)) + y[:, None] * 3.0, y


def _fit_blobs(spec: DetectorSpec, params: Params) -> Any:
    x, y = _blobs()
    detector = spec.build(params, 0)
    if spec.selects_on_dev:
        detector.fit(x[::4], y[::4], dev=(x[2::4], y[2::4]))
    else:
        detector.fit(x[::2], y[::2])
    return detector


@_check("detector")
def check_declares_its_abilities(spec, params, options) -> None:
    missing = [a for a in DETECTOR_ABILITIES if getattr(spec, a) is None]
    _ensure(not missing, spec, f"declare {', '.join(missing)} (True or False) on the DetectorSpec (API 1.3)")


def _methods_match(spec, detector) -> None:
    for ability in ("has_logits", "differentiable", "saves"):
        has = all(callable(getattr(detector, m, None)) for m in _METHODS[ability])
        if getattr(spec, ability):
            _ensure(has, spec, f"{ability} = True but the detector lacks {', '.join(_METHODS[ability])}()")



@_check("detector")
def check_fits_and_separates_two_blobs(spec, params, options) -> float:
    x, y = _blobs()
    detector = _fit_blobs(spec, params)
    _methods_match(spec, detector)
    pred, scores = np.asarray(detector.predict(x[1::2])), np.asarray(detector.scores(x[1::2]), dtype=float)
    _ensure(pred.shape == (100,) and scores.shape == (100,), spec, "predict/scores must return one value per row")
    accuracy = float((pred == y[1::2]).mean())
    _ensure(accuracy >= options.min_accuracy, spec,
            f"accuracy {accuracy:.2f} on separable blobs (< {options.min_accuracy})")
    _ensure(scores[y[1::2] == 1].mean() > scores[y[1::2] == 0].mean(), spec, "scores must grow with adversarial-ness")
    return accuracy


@_check("detector", applies=lambda spec: bool(spec.saves))
def check_comes_back_the_same_after_save_and_load(spec, params, options) -> None:
    x, _ = _blobs()
    detector = _fit_blobs(spec, params)
    with tempfile.TemporaryDirectory() as folder:
        detector.save(Path(folder))
        again = spec.build(params, 0)
        again.load(Path(folder))
    _ensure(np.array_equal(np.asarray(again.predict(x)), np.asarray(detector.predict(x))), spec,
            "load() changed predict()")
    _ensure(np.allclose(np.asarray(again.scores(x), dtype=float), np.asarray(detector.scores(x), dtype=float)), spec,
            "load() changed scores()")


@_check("detector", applies=lambda spec: bool(spec.has_logits))
def check_gives_two_logits_per_row(spec, params, options) -> None:
    x, _ = _blobs()
    _ensure(np.shape(_fit_blobs(spec, params).logits(x)) == (len(x), 2), spec, "logits(X) must be (N, 2)")


# --- detectors that see the images or the model -----------------------------------------------


def _model_detector(spec: DetectorSpec, params: Params, scratch: str) -> Any:
    return spec.build(params, DetectorContext(cache_dir=Path(scratch) / "cache", device="cpu", seed=0,
                                              model=tiny_model()))


def _fit_split(spec: DetectorSpec, detector: Any, train: DetectionSplit, dev: DetectionSplit) -> None:
    """Fit on train (dev given when the spec selects on it; ``info=FitInfo(sources)`` when it
    declares ``fit_info``)."""
    kwargs = {"info": FitInfo(sources=train.sources)} if spec.fit_info else {}
    if spec.selects_on_dev:
        detector.fit(train.images, train.labels, dev=(dev.images, dev.labels), **kwargs)
    else:
        detector.fit(train.images, train.labels, **kwargs)


def _fitted_model_detector(spec: DetectorSpec, params: Params) -> tuple[Any, np.ndarray, np.ndarray]:
    """A model-aware detector fit on the tiny adversarial world: (detector, eval predictions,
    eval scores), kept for the checks of the spec."""
    return _kept(_fit_model_detector, spec, params)


def _fit_model_detector(spec: DetectorSpec, params: Params) -> tuple[Any, np.ndarray, np.ndarray]:
    splits = tiny_detection_splits()
    module = tiny_model().module
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    detector = _model_detector(spec, params, str(_scratch() / "detectors" / spec.name))
    _fit_split(spec, detector, splits["train"], splits["dev"])
    test = splits["eval"]
    fitted = detector, np.asarray(detector.predict(test.images)), np.asarray(detector.scores(test.images))
    hooks = [name for name, m in module.named_modules() if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]
    _AFTER_FIT[(id(spec), params.model_dump_json())] = (module.training, hooks, all(
        torch.equal(v, weights[k]) for k, v in module.state_dict().items()))
    return fitted


#: what fitting and scoring left on the shared classifier: (training mode, hooked modules, weights kept)
_AFTER_FIT: dict[tuple, tuple[bool, list[str], bool]] = {}


_MODEL = "model detector"
_check(_MODEL)(check_declares_its_abilities)


@_check(_MODEL)
def check_separates_adversarial_digits(spec, params, options) -> float:
    from advbench.metrics import auroc

    detector, pred, scores = _fitted_model_detector(spec, params)
    for method in ("fit", "predict", "scores"):
        _ensure(callable(getattr(detector, method, None)), spec, f"the detector has no {method}()")
    _methods_match(spec, detector)
    test = tiny_detection_splits()["eval"]
    n = len(test.labels)
    _ensure(pred.shape == (n,) and scores.shape == (n,), spec, "predict/scores must give one value per image")
    _ensure(np.isin(pred, (0, 1)).all(), spec, "predict must return 0/1")
    _ensure(np.isfinite(scores.astype(float)).all(), spec, "scores must be finite")
    value = float(auroc(test.labels, scores))
    _ensure(value >= options.min_auroc, spec, f"eval AUROC {value:.3f} on the tiny world (< {options.min_auroc})")
    return value


@_check(_MODEL)
def check_fits_the_same_twice(spec, params, options) -> None:
    _, _, scores = _fitted_model_detector(spec, params)
    splits = tiny_detection_splits()
    with tempfile.TemporaryDirectory() as scratch:
        twin = _model_detector(spec, params, scratch)
        _fit_split(spec, twin, splits["train"], splits["dev"])
        _ensure(np.allclose(np.asarray(twin.scores(splits["eval"].images)), scores, rtol=1e-5, atol=1e-6), spec,
                "two fits with the same seed gave different scores")


@_check(_MODEL)
def check_leaves_the_classifier_as_found(spec, params, options) -> None:
    _fitted_model_detector(spec, params)
    training, hooks, kept = _AFTER_FIT[(id(spec), params.model_dump_json())]
    _ensure(not training, spec, "the classifier was left in training mode")
    _ensure(not hooks, spec, f"hooks left on the classifier's modules {hooks}")
    _ensure(kept, spec, "the classifier's weights changed")


@_check(_MODEL, applies=lambda spec: bool(spec.differentiable))
def check_torch_scores_are_the_scores_and_differentiable(spec, params, options) -> None:
    detector, pred, scores = _fitted_model_detector(spec, params)
    test = tiny_detection_splits()["eval"]
    spread = float(np.ptp(scores)) or 1.0
    x = to_tensor(test.images).requires_grad_(True)
    differentiable = detector.torch_scores(x)
    _ensure(tuple(differentiable.shape) == (len(test.labels),), spec, "torch_scores must give one value per image")
    gap = float(np.abs(differentiable.detach().double().numpy() - scores).max())
    _ensure(gap <= options.atol * spread, spec, f"torch_scores and scores differ by {gap:.3g}")
    differentiable.sum().backward()
    _ensure(x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, spec,
            "no finite gradient of torch_scores reaches the input")
    threshold = getattr(detector, "threshold", None)
    _ensure(isinstance(threshold, (int, float)), spec, "torch_scores needs a numeric attribute threshold")
    clear = np.abs(scores - threshold) > options.atol * spread
    _ensure(np.array_equal(pred[clear], (scores[clear] > threshold).astype(int)), spec,
            "predict must equal scores > threshold")


@_check(_MODEL, applies=lambda spec: bool(spec.saves))
def check_saves_without_pickle_and_loads_the_same(spec, params, options) -> None:
    detector, pred, scores = _fitted_model_detector(spec, params)
    test = tiny_detection_splits()["eval"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "saved"
        detector.save(folder)
        for file in folder.rglob("*"):
            _ensure(file.suffix not in (".pkl", ".pickle", ".joblib"), spec, f"save wrote a pickle: {file.name}")
            if file.suffix == ".npy":
                np.load(file, allow_pickle=False)
            elif file.is_file() and file.suffix in (".pt", ".pth", ".bin"):
                torch.load(file, map_location="cpu", weights_only=True)
        restored = _model_detector(spec, params, scratch)
        restored.load(folder)
        _ensure(np.allclose(np.asarray(restored.scores(test.images)), scores, rtol=1e-5, atol=1e-6), spec,
                "scores changed after save/load")
        _ensure(np.array_equal(np.asarray(restored.predict(test.images)), pred), spec,
                "predictions changed after save/load")


@_check(_MODEL, applies=lambda spec: spec.cost is not None)
def check_declares_its_training_cost(spec, params, options) -> None:
    cost = spec.cost(params, CostInputs((3, 16, 16), 10))
    _ensure(isinstance(cost, TrainingCost) and cost.epochs >= 0 and cost.classifier_forward >= 0, spec,
            "cost must return a TrainingCost with epochs and classifier passes >= 0")


# the image detectors (CNNs on the images) share the declaration checks
_check("image detector")(check_declares_its_abilities)
_check("image detector", applies=lambda spec: spec.cost is not None)(check_declares_its_training_cost)


# --- correctors -------------------------------------------------------------------------------


def _correct(spec: CorrectorSpec, params: Params, transformed: np.ndarray, k: int) -> np.ndarray:
    before = transformed.copy()
    out = np.asarray(spec.correct(transformed, k, params))
    _ensure(np.array_equal(transformed, before), spec, "correct must not modify its input")
    return out


@_check("corrector")
def check_returns_k_labels_per_image(spec, params, options) -> None:
    _, transformed, _ = _label_lists(options)
    out = _correct(spec, params, transformed, options.k)
    _ensure(out.shape == (len(transformed), options.k) and np.issubdtype(out.dtype, np.integer), spec,
            f"correct must return (N, k) integer labels, got {out.shape} {out.dtype}")
    _ensure(np.array_equal(out, _correct(spec, params, transformed, options.k)), spec, "correct is not deterministic")
    seen = [set(row.ravel().tolist()) for row in transformed]
    _ensure(all(out[i, 0] in seen[i] for i in range(len(out))), spec, "a corrected top-1 label no operation gave")


@_check("corrector")
def check_restores_a_unanimous_label(spec, params, options) -> None:
    _, transformed, _ = _label_lists(options)
    unanimous = transformed.copy()
    unanimous[:, :, 0] = 7  # every operation's top-1 agrees
    unanimous[:, :, 1:][unanimous[:, :, 1:] == 7] = 8
    out = _correct(spec, params, unanimous, options.k)
    _ensure((out[:, 0] == 7).all(), spec, "when every operation's top-1 is one label, it must be the corrected top-1")


KINDS_CHECKED = tuple(_CHECKS)


def names(kind: str) -> list[str]:
    """The names of the checks of a kind (``"detector"``, ``"model detector"``, ``"attack"``...)."""
    return [name for name, _, _ in _CHECKS.get(kind, [])]


def declared_as_probed(spec: PluginSpec, params: Params | None = None) -> PluginSpec:
    """``spec`` with the abilities it leaves undeclared (``None``: written for API 1.2 or
    earlier) filled in as the core finds them for such a plugin (:mod:`advbench.abilities`)."""
    from advbench.abilities import detector_can, takes_probs

    params = params if params is not None else spec.params()
    if isinstance(spec, FeatureSpec) and spec.takes_probs is None:
        return dataclasses.replace(spec, takes_probs=takes_probs(spec))
    if isinstance(spec, DetectorSpec) and any(getattr(spec, a) is None for a in DETECTOR_ABILITIES):
        with tempfile.TemporaryDirectory() as scratch:
            detector = _model_detector(spec, params, scratch) if spec.inputs == "model" else spec.build(params, 0)
        return dataclasses.replace(spec, **{a: detector_can(spec, detector, a) for a in DETECTOR_ABILITIES})
    return spec


def legacy_check(measured: str, default: Any = None, inputs: str | None = None,
                 only: tuple[str, ...] | None = None) -> Callable[..., Any]:
    """The API 1.2 entry points (``check_attack(spec, params, n=..., min_success=...)`` ...):
    the checks of the spec's kind (``only`` these, where given: what the 1.2 function checked),
    undeclared abilities probed as the core probes them for an old plugin; returns what the
    ``measured`` check measured. ``inputs``: the detectors it is for."""
    def run(spec: PluginSpec, params: Params | None = None, **options: Any) -> Any:
        if inputs is not None:
            assert getattr(spec, "inputs", None) == inputs, \
                f"{spec.name}: check_{measured} is for inputs = {inputs!r}, not {getattr(spec, 'inputs', None)!r}"
        results = _run_checks(declared_as_probed(spec, params), params,
                              dataclasses.replace(CheckOptions(), **options), only)
        return results.get(measured, default)
    return run
