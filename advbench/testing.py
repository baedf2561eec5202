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
    """A small CNN trained on the even-indexed digits (~1 s on a CPU); eval mode, [0,1] inputs."""
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
    register(DatasetSpec(name="testing-digits", summary="Digits at 16x16 (advbench.testing).", load=lambda p, ctx: _TinySource()))


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
