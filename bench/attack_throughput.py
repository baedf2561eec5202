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

``--overhead`` times instead the advbench wrapper against the same foolbox attack called
directly (PGD, DeepFool, CW): one batch, the same model, criterion rule, parameters and seed,
the two alternated ``--repeats`` times; it prints the median seconds of each and their ratio,
and checks that the wrapper's images are the direct call's (after the wrapper's documented
per-image choice). ``--random-inputs`` attacks uniform random 32x32 inputs instead of the
CIFAR-10 images (labels = the model's top-1).

    python bench/attack_throughput.py --overhead --attacks pgd,deepfool,cw --images 32 --repeats 7

Needs ../shared (the ResNet-20 checkpoint and the 1,000 CIFAR-10 test images; ``--shared DIR``
points elsewhere); skips with a message when they are absent. The machine may be shared: run it
on a quiet machine, or compare only numbers from the same invocation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import foolbox as fb
import torch

from advbench.config import load_benchmark
from advbench.criteria import PaperCriterion, target_labels
from advbench.engine.imagesets import select_clean
from advbench.imaging import to_tensor
from advbench.registry import discover
from advbench.specs import AttackOutput, BuildContext
from advbench_plugins.attacks.foolbox_attacks import foolbox_criterion

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
CKPT = Path("models") / "resnet20-cifar10-12fca82f.th"
DATA = Path("data") / "cifar10-test-1000"
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
        if isinstance(adversarial, AttackOutput):
            adversarial = adversarial.images
        with torch.no_grad():
            successes += int(criterion(model.module(adversarial)).sum())
    return seconds, successes, model.calls, model.rows


# --- wrapper overhead: advbench's plugin vs the same foolbox attack called directly ----------


def direct_call(name: str, params, fmodel, x: torch.Tensor, rule: PaperCriterion):
    """The foolbox attack behind plugin ``name`` on ``x``: foolbox's (raw, clipped, success)."""
    criterion = foolbox_criterion(rule)  # the plugin's adapter: the very criterion foolbox sees either way
    if name == "pgd":
        attack = fb.attacks.LinfPGD(rel_stepsize=params.rel_stepsize, steps=params.steps)
        return attack(fmodel, x, criterion, epsilons=list(params.epsilons))
    if name == "deepfool":
        attack = fb.attacks.L2DeepFoolAttack(steps=params.steps, candidates=params.candidates,
                                             overshoot=params.overshoot)
        return attack(fmodel, x, criterion, epsilons=None)
    if name == "cw":
        return fb.attacks.L2CarliniWagnerAttack(**params.model_dump(exclude={"max_norm"}))(
            fmodel, x, criterion, epsilons=None)
    raise SystemExit(f"--overhead: no direct foolbox call for '{name}' (pgd, deepfool, cw)")


def expected_from_direct(name: str, x: torch.Tensor, direct) -> torch.Tensor:
    """What the wrapper documents it returns, computed from the direct call's outputs: the
    smallest successful budget per image (PGD), or the result where foolbox succeeded and the
    clean image elsewhere (minimal-norm attacks; CW's all-black 'not found' rows stay clean)."""
    _, clipped, success = direct
    if name == "pgd":
        best = clipped[-1].clone()
        for adv, ok in zip(reversed(clipped), reversed(success)):
            best[ok] = adv[ok]
        return best
    flat = clipped.flatten(1)
    sentinel = (flat == 0).all(1) & (x.flatten(1) != 0).any(1)
    keep = success & ~sentinel & torch.isfinite(flat).all(1)
    return torch.where(keep.view(-1, 1, 1, 1), clipped, x).clamp(0, 1)


class InsideFoolbox:
    """Seconds spent inside foolbox attacks' ``__call__`` (patched for the block): the wrapper's
    own time is its total minus this, a number the machine's load hardly touches."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        self.saved = {cls: cls.__call__ for cls in (fb.attacks.base.FixedEpsilonAttack,
                                                    fb.attacks.base.MinimizationAttack)}
        for cls, call in self.saved.items():
            cls.__call__ = self._timed(call)
        return self

    def _timed(self, call):
        def timed(attack, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return call(attack, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return timed

    def __exit__(self, *exc):
        for cls, call in self.saved.items():
            cls.__call__ = call


def overhead(registry, names: list[str], config: Path | None, model: torch.nn.Module, x: torch.Tensor,
             top1: torch.Tensor, *, top_k: int, shift: int, threshold: float, repeats: int, ctx) -> None:
    print("wall: median seconds; ratio: median wrapper / median direct wall time; cpu ratio: median of the\n"
          "per-repeat ratios of process CPU time (less sensitive to other jobs), [lowest, highest] of them;\n"
          "own ms: median wrapper time outside foolbox's attack call; same: the wrapper's images are the\n"
          "direct call's")
    print(f"{'attack':<10} {'params':<22} {'wrapper':>8} {'direct':>8} {'ratio':>6} {'cpu ratio':>21} "
          f"{'own ms':>7} {'same':>5}")
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=x.device)  # built once, outside the timing
    for name in names:
        spec, params, origin = attack_params(registry, name, config)
        targets = target_labels(top1, shift, 10) if spec.targeted else None
        rule = PaperCriterion(spec.targeted, top1, targets, k=top_k, threshold=threshold)
        wall: dict[str, list[float]] = {"wrapper": [], "direct": []}  # alternated: load drift hits both
        cpu: dict[str, list[float]] = {"wrapper": [], "direct": []}
        own = []
        for repeat in range(repeats):
            # alternate which goes first, so an order effect (warm caches, allocator) cancels
            for mode in ("wrapper", "direct") if repeat % 2 == 0 else ("direct", "wrapper"):
                torch.manual_seed(0)  # PGD's random start: the same draws in both
                with InsideFoolbox() as inside:
                    t0, c0 = time.perf_counter(), time.process_time()
                    if mode == "wrapper":
                        out = spec.run(model, x.clone(), rule, params, ctx)
                    else:
                        direct = direct_call(name, params, fmodel, x.clone(), rule)
                    wall[mode].append(time.perf_counter() - t0)
                    cpu[mode].append(time.process_time() - c0)
                if mode == "wrapper":
                    own.append(wall[mode][-1] - inside.seconds)
        same = torch.equal(out, expected_from_direct(name, x, direct))
        w, d = statistics.median(wall["wrapper"]), statistics.median(wall["direct"])
        ratios = [a / b for a, b in zip(cpu["wrapper"], cpu["direct"])]
        spread = f"{statistics.median(ratios):.3f} [{min(ratios):.2f}, {max(ratios):.2f}]"
        print(f"{name:<10} {origin:<22} {w:8.3f} {d:8.3f} {w / d:6.3f} {spread:>21} "
              f"{statistics.median(own) * 1e3:7.1f} {str(same):>5}", flush=True)


def load_world(args, registry, ctx):
    """The ResNet-20 and its clean images (or random inputs); None when ../shared is absent."""
    shared = args.shared
    ckpt, data = shared / CKPT, shared / DATA
    if not ckpt.is_file() or not (args.random_inputs or data.is_dir()):
        return None
    mspec = registry.get("model", "cifar-resnet")
    model = mspec.build(mspec.params(depth=20, checkpoint=str(ckpt)), ctx)
    model.module.eval().requires_grad_(False)
    if args.random_inputs:
        x = torch.rand(args.images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return model, x, model.module(x).argmax(1)
    source = registry.get("dataset", "image-folder").load(
        registry.get("dataset", "image-folder").params(root=str(data)), ctx)
    arrays, _ = select_clean(source, model, top_k=args.top_k, n=args.images, seed=0, device="cpu")
    return model, to_tensor(arrays["images"], "cpu"), torch.from_numpy(arrays["top1"]).long()


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
    ap.add_argument("--shared", type=Path, default=SHARED, help="The reference data folder (default ../shared).")
    ap.add_argument("--overhead", action="store_true",
                    help="Time the advbench wrapper against the foolbox attack called directly (one batch).")
    ap.add_argument("--random-inputs", action="store_true", help="Uniform random 32x32 inputs, not CIFAR-10 images.")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    registry = discover()
    ctx = BuildContext(cache_dir=Path("."), device="cpu", seed=0)
    world = load_world(args, registry, ctx)
    if world is None:
        print(f"skipped: needs {args.shared / CKPT} and {args.shared / DATA} (reference data absent)")
        return 0
    model, x, top1 = world
    n = len(x)
    config = None if args.defaults else args.config
    names = [a.strip() for a in args.attacks.split(",") if a.strip()]

    inputs = "random inputs" if args.random_inputs else "images"
    print(f"CIFAR-10 ResNet-20, {n} {inputs} 32x32, cpu, {torch.get_num_threads()} torch threads, "
          f"top-{args.top_k} / shift {args.shift} / P(target) >= {args.threshold}")
    counted = Counting(model.module).eval()  # foolbox warns about modules in training mode
    if args.overhead:
        overhead(registry, names, config, counted, x, top1, top_k=args.top_k, shift=args.shift,
                 threshold=args.threshold, repeats=max(1, args.repeats), ctx=ctx)
        return 0
    header = (f"{'attack':<10} {'params':<22} {'mode':<10} {'seconds':>8} {'images/s':>9} {'successes':>9} "
              f"{'fwd calls':>9} {'img-fwds':>9}")
    print(header)
    print("-" * len(header))
    modes = ((f"batch {args.batch_size}", args.batch_size), ("single", 1))
    speedups = []
    for name in names:
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
