"""Throughput of the predict cells through the runner vs the floor of their forward passes.

Runs a benchmark (CIFAR-10 images from ``../shared``, one attack, the paper's 38 operations by
default) with :class:`advbench.execution.runner.Runner`, as ``advbench run`` does, so the
predictions go through everything a run does: the stage table's batching (the operations of one
image set in one pipelined ``predict_under_operations`` call), the cell locks, the cache writes
and the completion records. Then it times the floor: only the batched forward passes of the very
same (1 + 38) x N input tensors of every image set (operations precomputed, same batch size, the
faster OpenMP regime per operation, as ``bench/feature_extraction.py``'s floor).

    runner rate = predictions of the predict cells / the seconds the runner spent on them
    ratio       = runner rate / floor rate            (targets: >= 0.85 at 32 px, >= 0.95 at 224 px)

Models: the CIFAR ResNet-20 at 32x32 (the ``../shared`` checkpoint, through the built-in
``cifar-resnet`` plugin) and a torchvision ResNet-18 at 224x224 with random weights and 10
classes (a plugin module registered here; the images upscaled by its ``prepare``). Each repeat
deletes the cached predict cells and runs the benchmark again (clean selection, attack and split
stay cached), then times the floor on the same image sets: load changes on a shared machine hit
both alike. Each repeat prints the 1-minute load average.

    python bench/predict_cells.py                              # both models, N = 500 / 64
    python bench/predict_cells.py --models resnet20 --n20 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import feature_extraction as fx  # noqa: E402  the floor, measured the same way

from advbench.cache import load_array  # noqa: E402
from advbench.config import parse_benchmark  # noqa: E402
from advbench.execution.runner import RunOptions, Runner  # noqa: E402
from advbench.plugin import LoadedModel, ModelSpec, NoParams, hookimpl  # noqa: E402
from advbench.testing import registry_with  # noqa: E402


def _resnet18(params, ctx) -> LoadedModel:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    module = fx.Normalized(net, fx.IMAGENET_MEAN, fx.IMAGENET_STD).eval()
    return LoadedModel(module=module, input_size=(224, 224), num_classes=10,
                       prepare=lambda image: image.resize((224, 224)))


def _models_module() -> ModuleType:
    module = ModuleType("bench_predict_models")
    module.advbench_register_models = hookimpl(lambda register: register(ModelSpec(
        name="bench-resnet18", summary="torchvision ResNet-18, random weights, 10 classes, 224x224.", params=NoParams,
        build=_resnet18)))
    return module


MODELS = {
    "resnet20": f'plugin = "cifar-resnet"\nname = "resnet20"\ndepth = 20\nsize = 32\ncheckpoint = "{{shared}}/{fx.CKPT_NAME}"'
                '\nmean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]',
    "resnet18": 'plugin = "bench-resnet18"\nname = "resnet18"',
}


def benchmark(model: str, n: int, shared: Path) -> str:
    return f"""
[benchmark]
name = "predict-cells-{model}"
seed = 0
images_per_model = {n}
top_k = 5
device = "cpu"

[[datasets]]
plugin = "image-folder"
name = "cifar10"
root = "{shared}/{fx.DATA_NAME}"

[[models]]
{MODELS[model].format(shared=shared)}

[[attacks]]
plugin = "fgsm"

[[features]]
plugin = "counting"

[[detectors]]
plugin = "lda"
"""


def image_sets(cache: Path, result) -> dict[str, object]:
    """The images of every image set the predict cells read, from the run's cache."""
    sets = {}
    for o in result.outcomes:
        if o.cell.stage in ("clean", "attack"):
            folder = next(p for p in (cache / o.cell.stage).rglob(o.cell.key) if p.is_dir())
            sets[o.cell.imageset or "clean"] = load_array(folder, "images")
    return sets


def one_repeat(bench, registry, cache: Path, store: str, model: LoadedModel, op_list, batch_size: int,
               threads: int) -> dict:
    shutil.rmtree(cache / "predict", ignore_errors=True)
    result = Runner(bench, registry, RunOptions(store=store, cache_dir=cache, threads=threads)).run()
    predicted = [o for o in result.outcomes if o.cell.stage == "predict"]
    failed = [o.error for o in predicted if o.status != "ok"]
    if failed or any(o.cached for o in predicted):  # detectors may fail (a random network): not timed here
        raise SystemExit(f"predict cells failed or were reused: {failed}")
    runner_s = sum(o.seconds for o in predicted)
    predictions = sum(v for o in predicted for name, _, v in o.metrics if name == "images")
    floor_s = 0.0
    for images in image_sets(cache, result).values():
        for batches in fx.floor_inputs(images, op_list, batch_size):
            plain = fx.floor_pass(model, batches)
            with fx.omp_helper():
                throttled = fx.floor_pass(model, batches)
            floor_s += min(plain, throttled)
    return {"cells": len(predicted), "predictions": predictions, "runner": runner_s, "floor": floor_s,
            "load": os.getloadavg()[0]}


def bench_model(name: str, n: int, repeats: int, shared: Path, threads: int) -> None:
    registry = registry_with(_models_module())
    op_list = fx.paper_ops()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "benchmark.toml"
        path.write_text(benchmark(name, n, shared))
        bench = parse_benchmark(path.read_text(), registry, path=path)
        cache, store = Path(tmp) / "cache", str(Path(tmp) / "results.db")
        Runner(bench, registry, RunOptions(store=store, cache_dir=cache, threads=threads)).run()  # cached after
        model = _resnet18(None, None) if name == "resnet18" else fx.build_model(name)[0]  # the run's network
        batch_size = bench.prediction.batch_size
        rows = []
        for r in range(repeats):
            row = one_repeat(bench, registry, cache, store, model, op_list, batch_size, threads)
            rows.append(row)
            print(f"  {name} repeat {r + 1}: {row['cells']} predict cells, {row['predictions']:.0f} predictions; "
                  f"runner {row['predictions'] / row['runner']:,.1f}/s, floor {row['predictions'] / row['floor']:,.1f}/s,"
                  f" ratio {row['floor'] / row['runner']:.3f} (load {row['load']:.1f})", flush=True)
    ratios = [row["floor"] / row["runner"] for row in rows]
    print(f"{name}, N={n}: runner/floor {statistics.median(ratios):.2f} [{min(ratios):.2f}-{max(ratios):.2f}], "
          f"runner {statistics.median(r['predictions'] / r['runner'] for r in rows):,.1f}/s, "
          f"floor {statistics.median(r['predictions'] / r['floor'] for r in rows):,.1f}/s, "
          f"load {min(r['load'] for r in rows):.1f}-{max(r['load'] for r in rows):.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18"], choices=sorted(MODELS))
    ap.add_argument("--n20", type=int, default=500, help="clean images for ResNet-20 (default 500)")
    ap.add_argument("--n18", type=int, default=64, help="clean images for ResNet-18 (default 64)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shared", type=Path, default=fx.SHARED, help="the reference data (default ../shared)")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads of the runner and the floor alike (advbench run's default is 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)  # the floor's; the runner is given the same count
    if not (args.shared / fx.DATA_NAME).is_dir():
        print(f"skipped: no CIFAR-10 images in {args.shared / fx.DATA_NAME}")
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    for name in args.models:
        bench_model(name, args.n20 if name == "resnet20" else args.n18, args.repeats, args.shared.resolve(), args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
