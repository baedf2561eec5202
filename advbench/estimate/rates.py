"""Seconds measured on this machine: a network's passes per image (CPU or GPU) and each image
operation's CPU time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from advbench.estimate.flops import Shape
from advbench.plan import Plan
from advbench.registry import Registry

#: Seconds a timed batch should take at least, so timer noise stays small.
_TIMED_SECONDS = 0.3


@dataclass(frozen=True)
class Rates:
    """Seconds per image of one forward pass and of the backward pass alone, and how known."""

    forward_s: float
    backward_s: float
    how: str


def _timed(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    """The median of ``repeats`` timings of ``fn`` (a shared machine's spikes fall outside it)."""
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure_rates(module: Any, shape: tuple[int, int, int], batch: int, device: str, *, training: bool = False,
                  repeats: int = 3) -> Rates:
    """Seconds per image of a forward pass and of the backward pass alone on ``device``.

    On a GPU at ``batch``. On the CPU with one torch thread (on a shared machine a second
    thread's barrier waits make two-thread timings swing tenfold; one core is what
    :class:`Hardware` scales from), at a batch of at most ``batch`` that takes about
    ``_TIMED_SECONDS`` (seconds per image barely change with the batch on a CPU, and 32 ImageNet
    images through VGG-16 would take a minute). Each timing repeats the pass for
    ``_TIMED_SECONDS`` at least; the median of ``repeats`` timings counts (a pass longer than a
    second is timed once)."""
    import torch

    on_gpu = device.startswith("cuda")
    threads = torch.get_num_threads()
    module = module.to(device).train(training)
    for p in module.parameters():
        p.requires_grad_(training)
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    smallest = 2 if training else 1  # batch norm trains on two images at least

    def run(n: int, backward: bool) -> None:
        x = torch.rand((n, *shape), device=device, requires_grad=backward and not training)
        if backward:
            module(x).float().sum().backward()
            module.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                module(x)

    def per_image(n: int, backward: bool) -> float:
        once = _timed(lambda: run(n, backward), 1, sync)
        if once > 1.0:
            return once / n
        times = max(1, math.ceil(_TIMED_SECONDS / max(once, 1e-9)))
        return _timed(lambda: [run(n, backward) for _ in range(times)], repeats, sync) / (times * n)

    if not on_gpu:
        torch.set_num_threads(1)
    try:
        # warm-up: the allocator, autograd's threads, cuDNN's choice of algorithms
        n = batch if on_gpu else smallest
        run(n, False)
        first = _timed(lambda: run(n, True), 1, sync) / n
        if not on_gpu:
            n = int(max(smallest, min(batch, _TIMED_SECONDS // max(first, 1e-9))))
        forward_s = per_image(n, False)
        both_s = per_image(n, True)
    finally:
        torch.set_num_threads(threads)
    where = "cpu, 1 thread" if not on_gpu else device
    return Rates(forward_s, max(0.0, both_s - forward_s), f"measured on {where}, batch {n}")


def _test_image(width: int, height: int) -> Any:
    """A deterministic image with smooth regions and texture, as photographs have."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(1, width), yy * 255 / max(1, height), (xx + yy) * 127 / max(1, width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def time_operations(plan: Plan, registry: Registry, shape: Shape,
                    log: Callable[[str], None] = lambda s: None) -> dict[str, tuple[float, Shape]]:
    """CPU seconds per image of each operation (as the predict cells apply it) and the shape of
    its output, on one image of the model's input size. An operation that fails on it is left
    out (its predict cells say its time is unknown)."""
    import torch

    bench = plan.benchmark
    _, h, w = shape
    image = _test_image(w, h)
    batch = torch.rand((8, *shape))
    timed = {}
    for op in bench.transforms:
        spec = registry.get("transform", op.plugin)
        tensor = bench.prediction.backend == "tensor" and spec.apply_tensor is not None
        try:
            if tensor:
                seconds = _timed(lambda: spec.apply_tensor(batch, op.params), 3, lambda: None) / len(batch)
                out_shape = tuple(spec.apply_tensor(batch[:1], op.params).shape[1:])
            else:
                seconds = _timed(lambda: [spec.apply(image, op.params) for _ in range(5)], 3, lambda: None) / 5
                result = spec.apply(image, op.params)
                out_shape = (3, result.size[1], result.size[0])
        except Exception as exc:  # a plugin's failure on a synthetic image: report, do not stop
            log(f"operation {op.label}: not timed ({type(exc).__name__}: {exc})")
            continue
        timed[op.label] = (seconds, out_shape)
    return timed
