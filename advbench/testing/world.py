"""The tiny world: scikit-learn's digits at 16x16 and a small CNN trained in about a second,
registered as the plugins ``testing-digits`` and ``testing-cnn`` through the same registry
path as every plugin; and the tiny world's adversarial images (the detectors' checks fit on
them)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import numpy as np
import torch
from PIL import Image
from torch import nn

from advbench.hookspecs import hookimpl
from advbench.imaging import to_tensor, to_uint8
from advbench.specs import DatasetSpec, LoadedModel, ModelSpec, Sample

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
