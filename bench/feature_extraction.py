"""Throughput of the prediction engine (``advbench.engine.predict``) vs its floor and a naive loop.

For each model, every image goes through the original plus the paper's 38 operations
(1 + 38 predictions per image, as the "predict" cells of a benchmark do):

* engine (pillow): ``predict_under_operation`` with the Pillow operations, images read from a
  memory-mapped .npy as the runner does;
* engine (tensor): the same with the tensor backend (``apply_tensor`` functions);
* floor: only the batched forward passes of the very same (1 + 38) x N input tensors
  (transforms precomputed, not timed), same batch size, timed in both OpenMP regimes (see
  ``omp_helper``) operation by operation; the faster of the two counts;
* engine (pipelined): the original by ``predict_under_operation``, then the 38 operations in one
  ``predict_under_operations`` call (the next operation's first chunk is prepared while the model
  runs on the last chunk of the one before); timed once per repeat, after the rest, and checked
  to give the very arrays of the one-call-per-operation engine;
* naive: per image and per operation, Pillow op then a single-image forward pass (on
  ``--naive-images`` images; its rate is per prediction too).

Throughput is images/s counted as (1 + 38) x N predictions per second. All methods are timed
operation by operation in turn, in one process, ``--repeats`` times; rates are medians over the
repeats and ratios medians of the per-repeat ratios, [min-max] after them (the machine may be
shared: each repeat also prints the 1-minute load average). Targets (Pillow backend, 2 threads):
engine >= 0.95 x floor on ResNet-18 at 224x224 and >= 0.85 x floor on ResNet-20 at 32x32.
``--baseline-engine FILE`` also times another copy of ``predict.py`` (say,
``git show HEAD~1:advbench/engine/predict.py > /tmp/old.py``) and checks its results are the same.
With N <= batch size (the defaults) a call is one chunk, whose Pillow work cannot overlap a
forward pass: the worst case. A predict cell of a benchmark has the whole image set (1,000
CIFAR-10 images: 8 chunks); ``--n20 512`` comes closer to that.

    python bench/feature_extraction.py                       # both models, defaults
    python bench/feature_extraction.py --models resnet20 --n20 128 --repeats 5
    python bench/feature_extraction.py --baseline-engine /tmp/old.py --batch-size 16
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advbench.engine import predict
from advbench.imaging import array_to_pil, pil_to_array, to_tensor
from advbench.specs import LoadedModel
from advbench_plugins.models.cifar_resnet import cifar_resnet
from advbench_plugins.models.loading import IMAGENET_MEAN, IMAGENET_STD, Normalized, load_checkpoint
from advbench_plugins.transforms import operations as ops

SHARED = Path(__file__).resolve().parents[1].parent / "shared"  # --shared changes it
CKPT_NAME = "models/resnet20-cifar10-12fca82f.th"
DATA_NAME = "data/cifar10-test-1000"
TOP_K = 5


def paper_ops() -> list[tuple[str, Callable, Callable]]:
    """(name, Pillow op, tensor op) for the paper's 38 operations."""
    out = []
    for family, _, value in ops.paper_operations():
        p, t = ops.PILLOW_OPS[family], ops.TENSOR_OPS[family]
        out.append((ops.op_key(family, value), lambda im, p=p, v=value: p(im, v), lambda b, t=t, v=value: t(b, v)))
    return out


def load_images(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """n RGB uint8 images (n, size, size, 3): real CIFAR-10 test images (upscaled for size > 32)
    when ../shared is there, else smooth random images."""
    files = sorted((SHARED / DATA_NAME).glob("*/*.jpg")) if (SHARED / DATA_NAME).is_dir() else []
    if files:
        rng = np.random.default_rng(seed)
        picked = [files[i] for i in rng.permutation(len(files))[:n]]
        picked = (picked * (n // len(picked) + 1))[:n]
        images = []
        for f in picked:
            with Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                images.append(np.asarray(im, dtype=np.uint8))
        return np.stack(images), "CIFAR-10 test images" + (f" upscaled to {size}" if size != 32 else "")
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    images = [np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BICUBIC)) for a in low]
    noise = rng.integers(-8, 9, size=(n, size, size, 3))
    return np.clip(np.stack(images).astype(np.int16) + noise, 0, 255).astype(np.uint8), "synthetic smooth images"


def build_model(name: str) -> tuple[LoadedModel, int, str]:
    if name == "resnet20":
        net = cifar_resnet(20)
        source = "random weights"
        if (SHARED / CKPT_NAME).is_file():
            load_checkpoint(SHARED / CKPT_NAME, net)
            source = f"checkpoint {Path(CKPT_NAME).name}"
        module, size, classes = Normalized(net, IMAGENET_MEAN, IMAGENET_STD).eval(), 32, 10
    elif name == "resnet18":
        import torchvision

        module = Normalized(torchvision.models.resnet18(weights=None), IMAGENET_MEAN, IMAGENET_STD).eval()
        size, classes, source = 224, 1000, "random weights"
    else:
        raise SystemExit(f"unknown model {name!r}")
    return LoadedModel(module=module, input_size=(size, size), num_classes=classes, prepare=lambda im: im), size, source


def load_engine(path: str | None):
    """``advbench.engine.predict``, or the module in ``path`` (e.g. an older version to compare)."""
    if path is None:
        return predict
    spec = importlib.util.spec_from_file_location("baseline_predict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_call(engine, model: LoadedModel, images: np.ndarray, batch_size: int, op=None, tensor_op=None,
                reference=None):
    return engine.predict_under_operation(model, images, top_k=TOP_K, batch_size=batch_size, device="cpu",
                                          op=op, tensor_op=tensor_op, reference=reference)


def floor_inputs(images: np.ndarray, op_list, batch_size: int) -> list[list[torch.Tensor]]:
    """Per operation (original first), the exact batches the engine feeds the model (Pillow backend)."""
    arr = np.asarray(images)
    per_op = []
    for op in [None] + [o[1] for o in op_list]:
        batches = []
        for s in range(0, len(arr), batch_size):
            part = arr[s:s + batch_size]
            if op is not None:
                part = np.stack([pil_to_array(op(array_to_pil(a))) for a in part])
            batches.append(to_tensor(part))
        per_op.append(batches)
    return per_op


def floor_pass(model: LoadedModel, batches: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model.module(b)
    return time.perf_counter() - t0


@contextmanager
def omp_helper(on: bool = True) -> Iterator[None]:
    """Keep a second thread alive that has run a parallel torch op, so it owns an OpenMP team.

    libgomp spin-waits (~300k iterations) at every barrier unless the process has more OpenMP
    threads than CPUs, when it "throttles" (~1k). On a busy machine a 2-thread forward pass then
    burns its time slices spinning for a descheduled team mate (measured 2-6x slower). The
    engine picks the faster regime as it goes; the floor is timed in both, operation by
    operation, and the faster counts.
    """
    if not on:
        yield
        return
    with ThreadPoolExecutor(max_workers=1) as ex:
        ex.submit(lambda: torch.ones(1 << 17).mul_(2)).result()
        yield


def naive_pass(model: LoadedModel, images: np.ndarray, op_list) -> float:
    """Per image, per operation: Pillow op, then a single-image forward (no batching, no overlap)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(len(images)):
            a = np.asarray(images[i])
            for op in [None] + [o[1] for o in op_list]:
                x = a if op is None else pil_to_array(op(array_to_pil(a)))
                p = torch.softmax(model.module(to_tensor(x[None])), dim=1)
                p.topk(TOP_K, dim=1)
    return time.perf_counter() - t0


def one_repeat(model, images, op_list, per_op_batches, batch_size: int, tensor: bool,
               baseline=None, pipelined: bool = True) -> dict[str, float]:
    """Seconds per method for all 1 + 38 operations, interleaved operation by operation so that
    load changes on a shared machine hit every method alike; then, with ``pipelined``, the
    original plus one ``predict_under_operations`` call for the 38 (checked: the same arrays)."""
    t = {"engine": 0.0, "floor": 0.0, "floor_plain": 0.0, "floor_throttled": 0.0}
    outs = []
    if baseline is not None:
        t["baseline"] = 0.0
    if tensor:
        t["tensor"] = 0.0
    ref = None
    for i, (_, pil_op, tensor_op) in enumerate([("original", None, None)] + op_list):
        t0 = time.perf_counter()
        out = engine_call(predict, model, images, batch_size, op=pil_op, reference=ref)
        t["engine"] += time.perf_counter() - t0
        outs.append(out)
        if baseline is not None:
            t0 = time.perf_counter()
            base = engine_call(baseline, model, images, batch_size, op=pil_op, reference=ref)
            t["baseline"] += time.perf_counter() - t0
            if any(out[k].tobytes() != base[k].tobytes() for k in ("labels", "probs", "full") if k in base):
                raise SystemExit("the engine's results differ from the baseline engine's")
        if tensor:
            t0 = time.perf_counter()
            engine_call(predict, model, images, batch_size, tensor_op=tensor_op, reference=ref)
            t["tensor"] += time.perf_counter() - t0
        ref = out["labels"] if ref is None else ref
        plain = floor_pass(model, per_op_batches[i])
        with omp_helper():
            throttled = floor_pass(model, per_op_batches[i])
        t["floor_plain"] += plain
        t["floor_throttled"] += throttled
        t["floor"] += min(plain, throttled)
    if pipelined:
        t0 = time.perf_counter()
        original = engine_call(predict, model, images, batch_size)
        results = list(predict.predict_under_operations(
            model, images, [(o[1], None) for o in op_list], top_k=TOP_K, batch_size=batch_size, device="cpu",
            reference=original["labels"]))
        t["pipelined"] = time.perf_counter() - t0
        if any(a[k].tobytes() != b[k].tobytes() for a, b in zip(outs, [original, *results]) for k in a):
            raise SystemExit("predict_under_operations' results differ from predict_under_operation's")
    return t


def fmt(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def bench_model(name: str, n: int, batch_size: int, repeats: int, naive_n: int, tensor: bool,
                baseline=None, pipelined: bool = True) -> dict:
    model, size, source = build_model(name)
    data, data_source = load_images(n, size)
    op_list = paper_ops()
    total = (1 + len(op_list)) * n
    print(f"\n== {name} {size}x{size} ({source}); N={n} {data_source}; batch {batch_size}; "
          f"{1 + len(op_list)} x {n} = {total} predictions; torch threads {torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "images.npy", data)
        images = np.load(Path(tmp) / "images.npy", mmap_mode="r")
        per_op_batches = floor_inputs(images, op_list, batch_size)
        for batches in per_op_batches:  # warm-up: oneDNN primitives for every input shape
            floor_pass(model, batches[:1])
        engine_call(predict, model, images[:min(n, 8)], batch_size, op=op_list[0][1])
        times: dict[str, list[float]] = {}
        for r in range(repeats):
            for k, v in one_repeat(model, images, op_list, per_op_batches, batch_size, tensor, baseline,
                                   pipelined).items():
                times.setdefault(k, []).append(v)
            print(f"  repeat {r + 1}: " + ", ".join(f"{k} {fmt(total / v[-1])}/s" for k, v in times.items())
                  + f"; load {os.getloadavg()[0]:.1f}", flush=True)
        del per_op_batches
        naive_images = min(n, naive_n)
        naive = None
        if naive_images:
            with omp_helper(statistics.median(times["floor_throttled"]) < statistics.median(times["floor_plain"])):
                naive = naive_pass(model, images[:naive_images], op_list)

    def ratios(a: str, b: str) -> list[float]:  # per repeat, rate(a) / rate(b)
        return [tb / ta for ta, tb in zip(times[a], times[b])]

    def ratio(a: str, b: str) -> float:
        return statistics.median(ratios(a, b))

    def spread(a: str, b: str) -> str:
        r = ratios(a, b)
        return f"{ratio(a, b):.2f} [{min(r):.2f}-{max(r):.2f}]"

    rate = {k: total / statistics.median(v) for k, v in times.items()}
    print(f"  images/s (median of {repeats}): engine(pillow) {fmt(rate['engine'])}, floor {fmt(rate['floor'])} "
          f"(plain {fmt(rate['floor_plain'])}, throttled {fmt(rate['floor_throttled'])})"
          + (f", engine(tensor) {fmt(rate['tensor'])}" if "tensor" in rate else "")
          + (f", engine(pipelined) {fmt(rate['pipelined'])}" if "pipelined" in rate else "")
          + (f", baseline engine(pillow) {fmt(rate['baseline'])}" if "baseline" in rate else ""))
    line = f"  engine/floor {spread('engine', 'floor')}"
    if naive is not None:
        rate["naive"] = (1 + len(op_list)) * naive_images / naive
        line += (f", engine/naive {rate['engine'] / rate['naive']:.1f}x (naive {fmt(rate['naive'])}/s, "
                 f"{naive_images} images)")
    if "pipelined" in rate:
        line += f", pipelined/floor {spread('pipelined', 'floor')}"
    if "tensor" in rate:
        line += f", tensor/floor {spread('tensor', 'floor')}"
    if "baseline" in rate:
        line += f", baseline/floor {spread('baseline', 'floor')}, engine/baseline {spread('engine', 'baseline')}"
    print(line + "  (ratios: median [min-max] of per-repeat ratios)", flush=True)
    return {"rate": rate, "engine_over_floor": ratio("engine", "floor")}


def main(argv: list[str] | None = None) -> int:
    global SHARED
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18"], choices=["resnet20", "resnet18"])
    ap.add_argument("--n20", type=int, default=64, help="images for ResNet-20 (default 64)")
    ap.add_argument("--n18", type=int, default=16, help="images for ResNet-18 (default 16)")
    ap.add_argument("--batch-size", type=int, default=128, help="engine batch size (default 128, the runner's)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of engine/floor/tensor; medians reported")
    ap.add_argument("--naive-images", type=int, default=4,
                    help="images for the (slow) naive loop; its rate is per prediction (default 4)")
    ap.add_argument("--no-tensor", action="store_true", help="skip the tensor backend")
    ap.add_argument("--no-pipelined", action="store_true",
                    help="skip predict_under_operations (the 38 operations in one call)")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)")
    ap.add_argument("--baseline-engine", metavar="FILE",
                    help="also time this copy of predict.py (e.g. from git show HEAD~1:advbench/engine/predict.py)")
    ap.add_argument("--shared", type=Path, default=SHARED,
                    help=f"reference data folder (default {SHARED}; a git worktree elsewhere needs it)")
    args = ap.parse_args(argv)
    SHARED = args.shared
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    baseline = load_engine(args.baseline_engine) if args.baseline_engine else None
    targets = {"resnet20": 0.85, "resnet18": 0.95}
    for name in args.models:
        n = args.n20 if name == "resnet20" else args.n18
        res = bench_model(name, n, args.batch_size, args.repeats, args.naive_images, not args.no_tensor, baseline,
                          not args.no_pipelined)
        met = res["engine_over_floor"] >= targets[name]
        print(f"  target engine/floor >= {targets[name]} (Pillow backend): {'met' if met else 'NOT met'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
