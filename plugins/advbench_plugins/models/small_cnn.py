"""A small CNN for small images, trained on first use on the digits and cached: the embedded
default model. Adaptive pooling lets it take any input size (scaled images included)."""

from __future__ import annotations

import hashlib

import torch
from pydantic import Field
from torch import nn

from advbench.plugin import BuildContext, DataError, LoadedModel, ModelSpec, Params, verified_file

from advbench_plugins.datasets.digits import digits_arrays
from advbench_plugins.models.loading import Normalized, resize_prepare


class SmallCNNParams(Params):
    size: int = Field(32, ge=8, le=256, description="Input side in pixels (match the dataset's size).")
    width: int = Field(16, ge=4, le=256, description="Channels of the first conv layer (doubles twice).")
    epochs: int = Field(8, ge=1, le=200, description="Training epochs on the digits train subset.")
    learning_rate: float = Field(2e-3, gt=0, description="Adam learning rate.")


def small_cnn(num_classes: int = 10, width: int = 32) -> nn.Module:
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(),
        # a 4x4 grid keeps where strokes are (global pooling alone loses it) and still takes any size
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 4 * w, num_classes),
    )


def train_digits_cnn(params: SmallCNNParams, seed: int) -> nn.Module:
    """Trained on one thread: a multi-threaded reduction sums in another order, so the weights
    (and every number of the embedded default) would depend on the machine's core count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(params, seed)
    finally:
        torch.set_num_threads(threads)


def _train(params: SmallCNNParams, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    images, labels = digits_arrays(params.size, "train")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(labels)
    net = Normalized(small_cnn(10, params.width), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    opt = torch.optim.Adam(net.parameters(), lr=params.learning_rate)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(params.epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
    return net.eval()


def build(params: SmallCNNParams, ctx: BuildContext) -> LoadedModel:
    tag = hashlib.sha256(f"{params.model_dump_json()}|{ctx.seed}|v2".encode()).hexdigest()[:16]
    net = Normalized(small_cnn(10, params.width), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    try:  # checksummed: a damaged file is retrained (and named), never loaded
        path = verified_file(ctx.cache_dir / f"digits-cnn-{tag}.pt",
                             lambda tmp: torch.save(train_digits_cnn(params, ctx.seed).state_dict(), tmp),
                             what="digits-cnn's trained weights")
    except OSError as e:
        raise DataError(f"digits-cnn cannot keep its trained weights in {ctx.cache_dir} ({e.strerror}); pass a "
                        f"writable --cache-dir or set ADVBENCH_CACHE_DIR") from None
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return LoadedModel(module=net.eval(), input_size=(params.size, params.size), num_classes=10,
                       prepare=resize_prepare(params.size), fingerprint=tag)


def architecture(params: SmallCNNParams) -> LoadedModel:
    """The untrained network (ModelSpec.architecture): what ``build`` trains, random weights."""
    net = Normalized(small_cnn(10, params.width), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return LoadedModel(module=net.eval(), input_size=(params.size, params.size), num_classes=10,
                       prepare=resize_prepare(params.size), fingerprint="untrained")


SMALL_CNN = ModelSpec(name="digits-cnn", summary="Small CNN trained on the digits train subset on first use, cached.",
                      params=SmallCNNParams, default=True, build=build, version="2", architecture=architecture)
