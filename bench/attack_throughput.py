"""Throughput of attack plugins: batched vs one image at a time, on the CIFAR-10 ResNet-20.

Each attack is the registered plugin (``advbench.registry.discover().get("attack", name)``)
run as the database stage runs it: ``spec.run(model, images, criterion, params, ctx)`` with
:class:`advbench.criteria.PaperCriterion` (targeted: P(target) >= threshold with target =
(top-1 + shift) mod 10; non-targeted: top-1 leaves the top-k). The same ``--images`` clean
images (labels in the top-k, picked as the benchmark does) are attacked in batches of
``--batch-size`` and then one at a time (alternately, ``--repeats`` times; medians are
printed); images/s is images / seconds spent inside ``spec.run``. The model is wrapped in a
counter, so the table also shows the work done: forward calls and image-forwards (rows through
the network), which do not depend on the machine's load. Attack parameters come from
``--config`` (the entry for that plugin in the CIFAR benchmark file) or the plugin defaults
with ``--defaults``.

    python bench/attack_throughput.py                                 # PGD and CW, 64 images, batch 32
    python bench/attack_throughput.py --images 64 --batch-size 64 --attacks pgd,cw,deepfool

Needs ../shared (the ResNet-20 checkpoint and the 1,000 CIFAR-10 test images); skips with a
message when they are absent. The machine may be shared: run it on a quiet machine, or compare
only numbers from the same invocation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from advbench.config import load_benchmark
from advbench.criteria import PaperCriterion, target_labels
from advbench.engine.database import select_clean
from advbench.imaging import to_tensor
from advbench.registry import discover
from advbench.specs import BuildContext

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
CKPT = SHARED / "models" / "resnet20-cifar10-12fca82f.th"
DATA = SHARED / "data" / "cifar10-test-1000"
CONFIG = ROOT / "benchmarks" / "cifar10-resnet20.toml"


def attack_params(registry, name: str, config: Path | None):
    spec = registry.get("attack", name)
    if config is not None:
        bench = load_benchmark(config, registry)  # validation only: no file is read but the TOML
        for entry in bench.attacks:
            if entry.plugin == name:
                return spec, entry.params, f"{config.name}"
    return spec, spec.params(), "defaults"


class Counting(torch.nn.Module):
    """The model, counting forward calls and rows (image-forwards)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module
        self.calls = self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += len(x)
        return self.module(x)


def run_attack(spec, params, model: Counting, x: torch.Tensor, top1: torch.Tensor, batch_size: int, *, top_k: int,
               shift: int, threshold: float, ctx: BuildContext, seed: int = 0) -> tuple[float, int, int, int]:
    """Seconds inside ``spec.run``, successes (criterion on the float output), forward calls
    and image-forwards made by the attack."""
    targets = target_labels(top1, shift, 10) if spec.targeted else None
    seconds, successes = 0.0, 0
    model.calls = model.rows = 0
    for start in range(0, len(x), batch_size):
        index = slice(start, start + batch_size)
        criterion = PaperCriterion(spec.targeted, top1[index], None if targets is None else targets[index],
                                   k=top_k, threshold=threshold)
        torch.manual_seed(seed + start)
        t0 = time.perf_counter()
        adversarial = spec.run(model, x[index].clone(), criterion, params, ctx)
        seconds += time.perf_counter() - t0
        with torch.no_grad():
            successes += int(criterion(model.module(adversarial)).sum())
    return seconds, successes, model.calls, model.rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64, help="Images attacked (the same ones in both modes).")
    ap.add_argument("--batch-size", type=int, default=32, help="Batch size of the batched mode.")
    ap.add_argument("--attacks", default="pgd,cw", help="Comma-separated attack plugin names.")
    ap.add_argument("--config", type=Path, default=CONFIG, help="Benchmark file whose attack parameters are used.")
    ap.add_argument("--defaults", action="store_true", help="Use the plugins' default parameters instead.")
    ap.add_argument("--top-k", type=int, default=3, help="k of the non-targeted rule (the CIFAR benchmark's).")
    ap.add_argument("--shift", type=int, default=5, help="Target shift of targeted attacks.")
    ap.add_argument("--threshold", type=float, default=0.99, help="P(target) needed by targeted attacks.")
    ap.add_argument("--repeats", type=int, default=1, help="Alternate the two modes this often; print medians.")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = ap.parse_args(argv)

    if not (CKPT.is_file() and DATA.is_dir()):
        print(f"skipped: needs {CKPT} and {DATA} (../shared is absent)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    registry = discover()
    mspec = registry.get("model", "cifar-resnet")
    ctx = BuildContext(cache_dir=Path("."), device="cpu", seed=0)
    model = mspec.build(mspec.params(depth=20, checkpoint=str(CKPT)), ctx)
    model.module.eval().requires_grad_(False)
    source = registry.get("dataset", "image-folder").load(
        registry.get("dataset", "image-folder").params(root=str(DATA)), ctx)
    arrays, _ = select_clean(source, model, top_k=args.top_k, n=args.images, seed=0, device="cpu")
    x, top1 = to_tensor(arrays["images"], "cpu"), torch.from_numpy(arrays["top1"]).long()
    n = len(x)
    config = None if args.defaults else args.config

    print(f"CIFAR-10 ResNet-20, {n} images 32x32, cpu, {torch.get_num_threads()} torch threads, "
          f"top-{args.top_k} / shift {args.shift} / P(target) >= {args.threshold}")
    header = (f"{'attack':<10} {'params':<22} {'mode':<10} {'seconds':>8} {'images/s':>9} {'successes':>9} "
              f"{'fwd calls':>9} {'img-fwds':>9}")
    print(header)
    print("-" * len(header))
    counted = Counting(model.module).eval()  # foolbox warns about modules in training mode
    modes = ((f"batch {args.batch_size}", args.batch_size), ("single", 1))
    speedups = []
    for name in [a.strip() for a in args.attacks.split(",") if a.strip()]:
        spec, params, origin = attack_params(registry, name, config)
        runs: dict[str, list] = {mode: [] for mode, _ in modes}
        for _ in range(max(1, args.repeats)):
            for mode, bs in modes:
                runs[mode].append(run_attack(spec, params, counted, x, top1, bs, top_k=args.top_k,
                                             shift=args.shift, threshold=args.threshold, ctx=ctx))
        seconds = {}
        for mode, _ in modes:
            seconds[mode] = statistics.median(r[0] for r in runs[mode])
            _, ok, calls, rows = runs[mode][-1]
            print(f"{name:<10} {origin:<22} {mode:<10} {seconds[mode]:8.2f} {n / seconds[mode]:9.2f} "
                  f"{ok:>5}/{n:<3} {calls:>9} {rows:>9}", flush=True)
        speedups.append((name, seconds["single"] / seconds[modes[0][0]]))
    print()
    for name, speedup in speedups:
        print(f"{name}: batched (batch {args.batch_size}) is {speedup:.2f}x the throughput of one image at a time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
