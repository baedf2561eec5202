"""Helpers for testing advbench and plugins: a tiny world and contract checks.

A plugin author's test suite can be three lines::

    from advbench.testing import check_attack
    def test_my_attack():
        check_attack(MY_ATTACK_SPEC)

The tiny world is a dataset (scikit-learn digits at 16x16) and a small CNN trained in about a
second, registered as the plugins ``testing-digits`` and ``testing-cnn`` through the same
registry path as every plugin, so a tiny end-to-end benchmark runs in seconds.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from torch import nn

from advbench.config import parse_benchmark
from advbench.criteria import PaperCriterion, target_labels
from advbench.hookspecs import hookimpl
from advbench.registry import Registry, build_registry, entry_point_modules
from advbench.runner import RunOptions, RunResult, Runner
from advbench.specs import AttackOutput, AttackSpec, BuildContext, DatasetSpec, DetectorSpec, LoadedModel, ModelSpec, Params, Sample

SIZE = 16


@cache
def digits(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 scikit-learn digits as (N, size, size, 3) uint8 RGB and (N,) labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = [np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR).convert("RGB"))
              for im in data.images]
    return np.stack(images), data.target.astype(np.int64)


class _Scaled(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.5)


@cache
def tiny_model(seed: int = 0) -> LoadedModel:
    """A small CNN trained on the even-indexed digits (~1 s on a CPU); eval mode, [0,1] inputs.

    Trained on one thread: a multi-threaded reduction sums in another order, and the weights
    (so every tiny-world number) would depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_tiny_model(seed)
    finally:
        torch.set_num_threads(threads)


def _train_tiny_model(seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    images, labels = digits()
    x = torch.from_numpy(images[::2]).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels[::2])
    net = _Scaled(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(256, 10)))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(6):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    net.eval().requires_grad_(False)
    return LoadedModel(module=net, input_size=(SIZE, SIZE), num_classes=10,
                       prepare=lambda im: im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))


# --- the tiny world as plugins --------------------------------------------------------------


class _TinySource:
    class_names = [str(i) for i in range(10)]
    skipped = 0

    def __iter__(self) -> Iterator[Sample]:
        images, labels = digits()
        for i in range(1, len(labels), 2):  # odd indices: never seen in training
            yield Sample(id=f"digit-{i:04d}", image=Image.fromarray(images[i]), label=int(labels[i]))


class _TinyWorld(ModuleType):
    pass


tiny_world_plugins = _TinyWorld("advbench.testing.tiny_world_plugins")


@hookimpl
def _register_datasets(register):
    register(DatasetSpec(name="testing-digits", summary="Digits at 16x16 (advbench.testing).", load=lambda p, ctx: _TinySource(),
                         class_count=lambda p: len(_TinySource.class_names)))


@hookimpl
def _register_models(register):
    register(ModelSpec(name="testing-cnn", summary="Tiny CNN trained in a second (advbench.testing).",
                       build=lambda p, ctx: tiny_model(ctx.seed)))


tiny_world_plugins.advbench_register_datasets = _register_datasets
tiny_world_plugins.advbench_register_models = _register_models
sys.modules.setdefault(tiny_world_plugins.__name__, tiny_world_plugins)


def registry_with(*modules: ModuleType, installed: bool = True) -> Registry:
    """The installed plugins (unless ``installed=False``), the tiny world and ``modules``."""
    found = entry_point_modules() if installed else []
    return build_registry([*found, (tiny_world_plugins, "advbench.testing"),
                           *((m, getattr(m, "__package__", None) or m.__name__) for m in modules)])


def variant_module(kind: str, plugin: str, name: str, **changes) -> ModuleType:
    """A plugin module registering a copy of the installed ``kind`` plugin ``plugin`` under
    ``name`` with the spec fields in ``changes`` replaced (e.g. an attack with a budget grid)."""
    import dataclasses

    from advbench.registry import discover

    spec = dataclasses.replace(discover().get(kind, plugin), name=name, **changes)
    module = ModuleType(f"variant_{kind}_{name.replace('-', '_')}")

    def register_variant(register):
        register(spec)

    setattr(module, f"advbench_register_{kind}s", hookimpl(register_variant))
    return module


def tiny_benchmark(attacks: str = 'plugin = "fgsm"', detectors: str = 'plugin = "lda"', extra: str = "",
                   name: str = "tiny", images: int = 30, features: str = 'plugin = "counting"',
                   groups: str = '{ JPEG = ["jpeg"], All = ["*"] }', detection: str = "") -> str:
    """TOML of a tiny benchmark on the tiny world; ``attacks``/``detectors`` are the bodies of
    one ``[[attacks]]``/``[[detectors]]`` table each (or lists of bodies); ``groups`` the
    [detection] groups and ``detection`` more lines of that section (e.g. a protocol)."""
    def tables(section: str, bodies: str | Iterable[str]) -> str:
        bodies = [bodies] if isinstance(bodies, str) else list(bodies)
        return "\n".join(f"[[{section}]]\n{textwrap.dedent(b).strip()}\n" for b in bodies)

    return f"""
[benchmark]
name = "{name}"
seed = 0
images_per_model = {images}
top_k = 2
device = "cpu"

[database]
target_shift = 3
target_threshold = 0.9
batch_size = 32

[detection]
groups = {groups}
{detection}

[[datasets]]
plugin = "testing-digits"

[[models]]
plugin = "testing-cnn"

{tables("attacks", attacks)}
[[transforms]]
plugin = "jpeg"
grid = {{ quality = [90, 60, 30] }}

[[transforms]]
plugin = "scaling"
grid = {{ factor = [0.75, 1.25] }}

{tables("features", features)}
{tables("detectors", detectors)}
{extra}
"""


def run_tiny(tmp_path: Path, toml: str | None = None, *modules: ModuleType, fresh: bool = False,
             registry: Registry | None = None) -> RunResult:
    """Run a tiny benchmark with its cache and store under ``tmp_path``; ``modules`` are added to
    the installed plugins, or pass a ready ``registry`` (then no modules)."""
    if registry is not None and modules:
        raise TypeError("run_tiny: pass plugin modules or a registry, not both")
    registry = registry or registry_with(*modules)
    path = Path(tmp_path) / "benchmark.toml"
    path.write_text(toml or tiny_benchmark())
    bench = parse_benchmark(path.read_text(), registry, path=path)
    options = RunOptions(store=str(Path(tmp_path) / "results.db"), cache_dir=Path(tmp_path) / "cache", fresh=fresh)
    return Runner(bench, registry, options).run()


# --- contract checks ------------------------------------------------------------------------


def check_attack(spec: AttackSpec, params: Params | None = None, n: int = 16, min_success: float = 0.25) -> float:
    """Run an attack plugin on tiny-world images under the paper's criterion; assert the
    output contract and that at least ``min_success`` of the images became adversarial."""
    model = tiny_model()
    images, labels = digits()
    x = torch.from_numpy(images[1::2][:n]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        top1 = model.module(x).argmax(1)
    targets = target_labels(top1, 3, 10) if spec.targeted else None
    criterion = PaperCriterion(spec.targeted, top1, targets, k=2, threshold=0.9)
    with tempfile.TemporaryDirectory() as scratch:  # a plugin that caches must not write into the caller's folder
        out = spec.run(model.module, x.clone(), criterion, params or spec.params(),
                       BuildContext(cache_dir=Path(scratch), device="cpu", seed=0))
    if isinstance(out, AttackOutput):
        for name, values in out.per_image.items():
            assert tuple(torch.as_tensor(values).shape) == (n,), f"{spec.name}: per_image[{name!r}] must hold one value per image"
        out = out.images
    assert isinstance(out, torch.Tensor) and out.shape == x.shape, f"{spec.name}: output shape {getattr(out, 'shape', None)} != {tuple(x.shape)}"
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1, f"{spec.name}: output must be finite, in [0, 1]"
    with torch.no_grad():
        rate = criterion(model.module(out)).float().mean().item()
    assert rate >= min_success, f"{spec.name}: only {rate:.0%} of {n} images adversarial (< {min_success:.0%})"
    return rate


def check_detector(spec: DetectorSpec, params: Params | None = None, min_accuracy: float = 0.9) -> float:
    """Fit a detector plugin on two separable blobs; assert the Detector protocol and accuracy."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    x = rng.normal(size=(200, 6)) + y[:, None] * 3.0
    detector = spec.build(params or spec.params(), 0)
    detector.fit(x[::2], y[::2])
    pred, scores = np.asarray(detector.predict(x[1::2])), np.asarray(detector.scores(x[1::2]), dtype=float)
    assert pred.shape == (100,) and scores.shape == (100,), f"{spec.name}: predict/scores must return one value per row"
    accuracy = float((pred == y[1::2]).mean())
    assert accuracy >= min_accuracy, f"{spec.name}: accuracy {accuracy:.2f} on separable blobs (< {min_accuracy})"
    assert scores[y[1::2] == 1].mean() > scores[y[1::2] == 0].mean(), f"{spec.name}: scores must grow with adversarial-ness"
    if hasattr(detector, "save") and hasattr(detector, "load"):  # a saved detector must come back the same
        with tempfile.TemporaryDirectory() as folder:
            detector.save(Path(folder))
            again = spec.build(params or spec.params(), 0)
            again.load(Path(folder))
        assert np.array_equal(np.asarray(again.predict(x[1::2])), pred), f"{spec.name}: load() changed predict()"
        assert np.allclose(np.asarray(again.scores(x[1::2]), dtype=float), scores), f"{spec.name}: load() changed scores()"
    return accuracy


# --- contract checks for transforms, features and model-aware detectors ------------------------
# (imports here keep this section additive; they are cheap or already loaded above)

import inspect  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from advbench.imaging import to_tensor, to_uint8  # noqa: E402
from advbench.specs import DetectorContext, FeatureSpec, FitInfo, Probabilities, TransformSpec  # noqa: E402


def check_transform(spec: TransformSpec, params: Params | None = None, n: int = 6,
                    tolerance: float = 2.0) -> float:
    """Apply an image operation to tiny-world images with both backends; assert the contract and
    return the mean absolute difference between them (0..255 scale).

    Pillow: an RGB PIL image in, an RGB PIL image out, the input untouched, deterministic.
    Tensor (when ``apply_tensor`` is set): a float (n, 3, H, W) batch in [0, 1] in, a batch of
    the same dtype and device, 3 channels, finite, in [0, 1], of the Pillow output's size; the two
    differ by at most ``tolerance`` on average. With ``differentiable = True`` a gradient must
    reach the input."""
    params = params or spec.params()
    arrays = digits()[0][1::2][:n]
    images = [Image.fromarray(a) for a in arrays]
    outs = [spec.apply(im, params) for im in images]
    for a, im, out in zip(arrays, images, outs):
        assert isinstance(out, Image.Image) and out.mode == "RGB", f"{spec.name}: apply must return an RGB PIL image"
        assert np.array_equal(np.asarray(im), a), f"{spec.name}: apply must not modify its input"
    sizes = {out.size for out in outs}
    assert len(sizes) == 1, f"{spec.name}: same-size inputs gave outputs of sizes {sorted(sizes)}"
    again = np.asarray(spec.apply(images[0], params))
    assert np.array_equal(again, np.asarray(outs[0])), f"{spec.name}: apply is not deterministic"
    if spec.apply_tensor is None:
        assert not spec.differentiable, f"{spec.name}: differentiable = True needs apply_tensor"
        return 0.0
    x = to_tensor(arrays)
    y = spec.apply_tensor(x.clone(), params)
    assert isinstance(y, torch.Tensor) and y.dtype == x.dtype and y.device == x.device, \
        f"{spec.name}: apply_tensor must return a tensor of the input's dtype and device"
    width, height = sizes.pop()
    assert tuple(y.shape) == (n, 3, height, width), \
        f"{spec.name}: apply_tensor gave {tuple(y.shape)}, the Pillow backend {(n, 3, height, width)}"
    assert torch.isfinite(y).all() and y.min() >= -1e-6 and y.max() <= 1 + 1e-6, \
        f"{spec.name}: apply_tensor output must be finite, in [0, 1]"
    pil = np.stack([np.asarray(out, dtype=np.float64) for out in outs])
    gap = float(np.abs(pil - y.detach().permute(0, 2, 3, 1).double().numpy() * 255).mean())
    assert gap <= tolerance, f"{spec.name}: backends differ by {gap:.2f}/255 on average (> {tolerance})"
    if spec.differentiable:
        xg = x.clone().requires_grad_(True)
        out = spec.apply_tensor(xg, params)
        assert out.requires_grad, f"{spec.name}: differentiable = True but no gradient reaches the input"
        out.sum().backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0, \
            f"{spec.name}: differentiable = True but no gradient reaches the input"
    return gap


def check_feature(spec: FeatureSpec, params: Params | None = None, n: int = 12, operations: int = 5,
                  k: int = 3, classes: int = 10) -> np.ndarray:
    """Compute a feature on random top-k labels (and softmax outputs, when ``compute`` takes
    ``probs``); assert an (N, D) finite float matrix, deterministic, inputs untouched. Returns it."""
    params = params or spec.params()
    rng = np.random.default_rng(0)
    original = np.stack([rng.permutation(classes)[:k] for _ in range(n)])
    transformed = np.stack([[rng.permutation(classes)[:k] for _ in range(operations)] for _ in range(n)])
    kwargs = {}
    if "probs" in inspect.signature(spec.compute).parameters:
        logits = rng.normal(size=(n, operations + 1, classes)) * 3
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p = (p / p.sum(-1, keepdims=True)).astype(np.float32)
        kwargs["probs"] = Probabilities(original=p[:, 0], transformed=p[:, 1:])
    before = (original.copy(), transformed.copy())
    out = np.asarray(spec.compute(original, transformed, params, **kwargs))
    assert out.ndim == 2 and out.shape[0] == n and out.shape[1] >= 1, \
        f"{spec.name}: compute must return an (N, D) matrix, got shape {out.shape}"
    assert np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer), \
        f"{spec.name}: compute must return numbers, got {out.dtype}"
    assert np.isfinite(out).all(), f"{spec.name}: compute returned non-finite values"
    assert np.array_equal(original, before[0]) and np.array_equal(transformed, before[1]), \
        f"{spec.name}: compute must not modify its inputs"
    again = np.asarray(spec.compute(original, transformed, params, **kwargs))
    assert np.array_equal(out, again), f"{spec.name}: compute is not deterministic"
    return out


@dataclass(frozen=True)
class DetectionSplit:
    """uint8 images (N, H, W, 3) and labels (1 = adversarial) of one split of the tiny world."""

    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray | None = None  # source id of each row: a normal image and its adversarial share one


@cache
def tiny_adversarial_world(n: int = 300, epsilon: float = 0.1, steps: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Tiny-world digits (odd indices: unseen in training) that the tiny model classifies
    correctly, and their L-inf basic iterative attack adversarials (foolbox, ``epsilon``, no
    random start) that stay misclassified after rounding to uint8: (normal, adversarial), both
    uint8 (m, 16, 16, 3), row i of one the source or the adversarial of row i of the other."""
    import foolbox as fb

    model = tiny_model()
    images, labels = digits()
    x, y = to_tensor(images[1::2][:n]), torch.from_numpy(labels[1::2][:n])
    with torch.no_grad():
        correct = model.module(x).argmax(1) == y
    x, y = x[correct], y[correct]
    _, adversarial, _ = fb.attacks.LinfBasicIterativeAttack(steps=steps)(
        fb.PyTorchModel(model.module, bounds=(0, 1)), x, y, epsilons=epsilon)
    adversarial = to_uint8(adversarial)
    with torch.no_grad():
        fooled = (model.module(to_tensor(adversarial)).argmax(1) != y).numpy()
    return to_uint8(x)[fooled], adversarial[fooled]


def tiny_detection_splits(n: int = 300) -> dict[str, DetectionSplit]:
    """The tiny adversarial world split by source image, as the core splits a database: train
    (half of the sources, drawn with seed 0), dev (a fifth), eval (the rest); each with the
    normal images and their adversarials. (The digits come grouped by writer: a split in
    dataset order would put other writers in eval than in train.)"""
    normal, adversarial = tiny_adversarial_world(n)
    order = np.random.default_rng(0).permutation(len(normal))
    normal, adversarial = normal[order], adversarial[order]
    m = len(normal)
    cuts = {"train": (0, m // 2), "dev": (m // 2, m // 2 + m // 5), "eval": (m // 2 + m // 5, m)}
    return {name: DetectionSplit(np.concatenate([normal[a:b], adversarial[a:b]]), np.repeat([0, 1], b - a),
                                 np.tile(order[a:b], 2)) for name, (a, b) in cuts.items()}


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from advbench.metrics import auroc

    return float(auroc(labels, scores))


def _fit(detector, split: DetectionSplit, dev: DetectionSplit, fit_info: bool = False) -> None:
    kwargs = {"info": FitInfo(sources=split.sources)} if fit_info else {}
    if "dev" in inspect.signature(detector.fit).parameters:
        detector.fit(split.images, split.labels, dev=(dev.images, dev.labels), **kwargs)
    else:
        detector.fit(split.images, split.labels, **kwargs)


def check_model_detector(spec: DetectorSpec, params: Params | None = None, min_auroc: float = 0.65,
                         atol: float = 1e-4) -> float:
    """Build a model-aware detector (``inputs = "model"``) around the tiny model, fit it on
    tiny-world digits against their adversarials (train split; dev given when ``fit`` takes it;
    ``info=FitInfo(sources)`` when the spec declares ``fit_info``), and assert the contract on the
    eval split. Returns the eval AUROC.

    Asserts: predict (N,) of 0/1 and scores (N,) finite; scores separate the classes (AUROC >=
    ``min_auroc``); a second detector built and fit alike gives the same scores; the classifier
    is left as found (eval mode, weights, no hooks). When present: ``torch_scores`` agrees with
    ``scores`` (``atol``, relative to their spread), a gradient reaches the input, and ``predict``
    equals ``scores > threshold``; ``save``/``load`` restore the same scores, from files that
    load without pickle.

    The tiny model's weights depend on the seed and on torch's thread count when it is first
    trained, and with them the adversarial images: leave ``min_auroc`` about 0.1 below what your
    detector measures (the baselines vary by up to 0.12 between such variants)."""
    assert spec.inputs == "model", f"{spec.name}: check_model_detector is for inputs = 'model', not {spec.inputs!r}"
    params = params or spec.params()
    model = tiny_model()
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}
    splits = tiny_detection_splits()
    train, dev, test = splits["train"], splits["dev"], splits["eval"]
    with tempfile.TemporaryDirectory() as scratch:
        ctx = DetectorContext(cache_dir=Path(scratch) / "cache", device="cpu", seed=0, model=model)
        detector = spec.build(params, ctx)
        for method in ("fit", "predict", "scores"):
            assert callable(getattr(detector, method, None)), f"{spec.name}: the detector has no {method}()"
        _fit(detector, train, dev, spec.fit_info)
        pred, scores = np.asarray(detector.predict(test.images)), np.asarray(detector.scores(test.images))
        n = len(test.labels)
        assert pred.shape == (n,) and scores.shape == (n,), f"{spec.name}: predict/scores must give one value per image"
        assert np.isin(pred, (0, 1)).all(), f"{spec.name}: predict must return 0/1"
        assert np.isfinite(scores.astype(float)).all(), f"{spec.name}: scores must be finite"
        auroc = _auroc(test.labels, scores)
        assert auroc >= min_auroc, f"{spec.name}: eval AUROC {auroc:.3f} on the tiny world (< {min_auroc})"

        twin = spec.build(params, ctx)
        _fit(twin, train, dev, spec.fit_info)
        assert np.allclose(np.asarray(twin.scores(test.images)), scores, rtol=1e-5, atol=1e-6), \
            f"{spec.name}: two fits with the same seed gave different scores"

        module = model.module
        assert not module.training, f"{spec.name}: the classifier was left in training mode"
        hooks = [name for name, m in module.named_modules()
                 if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]
        assert not hooks, f"{spec.name}: hooks left on the classifier's modules {hooks}"
        assert all(torch.equal(v, weights[k]) for k, v in module.state_dict().items()), \
            f"{spec.name}: the classifier's weights changed"

        spread = float(np.ptp(scores)) or 1.0
        if hasattr(detector, "torch_scores"):
            x = to_tensor(test.images).requires_grad_(True)
            differentiable = detector.torch_scores(x)
            assert tuple(differentiable.shape) == (n,), f"{spec.name}: torch_scores must give one value per image"
            gap = float(np.abs(differentiable.detach().double().numpy() - scores).max())
            assert gap <= atol * spread, f"{spec.name}: torch_scores and scores differ by {gap:.3g}"
            differentiable.sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, \
                f"{spec.name}: no finite gradient of torch_scores reaches the input"
            threshold = getattr(detector, "threshold", None)
            assert isinstance(threshold, (int, float)), f"{spec.name}: torch_scores needs a numeric attribute threshold"
            clear = np.abs(scores - threshold) > atol * spread
            assert np.array_equal(pred[clear], (scores[clear] > threshold).astype(int)), \
                f"{spec.name}: predict must equal scores > threshold"
        if hasattr(detector, "save") and hasattr(detector, "load"):
            folder = Path(scratch) / "saved"
            detector.save(folder)
            for file in folder.rglob("*"):
                if file.suffix == ".npy":
                    np.load(file, allow_pickle=False)
                elif file.is_file() and file.suffix in (".pt", ".pth", ".bin"):
                    torch.load(file, map_location="cpu", weights_only=True)
                assert file.suffix not in (".pkl", ".pickle", ".joblib"), f"{spec.name}: save wrote a pickle: {file.name}"
            restored = spec.build(params, ctx)
            restored.load(folder)
            assert np.allclose(np.asarray(restored.scores(test.images)), scores, rtol=1e-5, atol=1e-6), \
                f"{spec.name}: scores changed after save/load"
            assert np.array_equal(np.asarray(restored.predict(test.images)), pred), \
                f"{spec.name}: predictions changed after save/load"
    return auroc
