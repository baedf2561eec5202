"""The edge: build each model (or its architecture), count and time its passes and its
operations, ask each attack and detector plugin for its cost, and list every assumption."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from advbench.config import Entry
from advbench.errors import AdvbenchError
from advbench.estimate.counting import DetectorFacts, Facts, adaptive_operations, images_per_model
from advbench.estimate.flops import flops_ratio, meta_copy
from advbench.estimate.networks import Network, price_network
from advbench.estimate.rates import Rates, time_operations
from advbench.estimate.summary import DEFAULT_GPU_TFLOPS, DEFAULT_LAUNCH_US, Hardware
from advbench.plan import Plan
from advbench.registry import Registry
from advbench.specs import BuildContext, CostInputs, DetectorContext, TrainingCost

#: How a network built without its weights is described (``Network.source``), before the reason.
ARCHITECTURE_ONLY = "architecture only, random weights: weights absent"


@dataclass(frozen=True)
class Options:
    gpus: int
    cpus: int
    success_rate: float = 1.0
    gpu_tflops: float = DEFAULT_GPU_TFLOPS
    gpu_launch_us: float = DEFAULT_LAUNCH_US
    #: model label (or "*") -> (forward, forward+backward) images per second on the planned GPU
    gpu_rates: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    measure: bool = True
    cache_dir: Path | None = None


def load_model(registry: Registry, entry: Entry, ctx: BuildContext) -> tuple[Any, str]:
    """The configured model, or its architecture with random weights when it cannot be built
    here (weights absent); the second value says which."""
    spec = registry.get("model", entry.plugin)
    try:
        return spec.build(entry.params, ctx), "built"
    except AdvbenchError as exc:
        architecture = getattr(spec, "architecture", None)
        if architecture is None:
            raise AdvbenchError(f"model {entry.label!r} cannot be built here ({exc}) and plugin {entry.plugin!r} "
                                "declares no architecture to count on") from exc
        first = str(exc).splitlines()[0]
        return architecture(entry.params), f"{ARCHITECTURE_ONLY} ({first})"


def _gpu_override(options: Options, label: str, network: Network) -> Network:
    given = options.gpu_rates.get(label) or options.gpu_rates.get("*")
    if not given:
        return network
    fwd, both = given
    forward_s = 1 / fwd if fwd else None
    both_s = 1 / both if both else None
    if forward_s is None or both_s is None:  # one given: the other from the FLOP ratio
        ratio = (network.forward_flops + network.backward_flops) / network.forward_flops
        forward_s = forward_s if forward_s is not None else both_s / ratio
        both_s = both_s if both_s is not None else forward_s * ratio
    return replace(network, gpu=Rates(forward_s, max(0.0, both_s - forward_s), "given (--rate-gpu-fwd/--rate-gpu-bwd)"))


def gather(plan: Plan, registry: Registry, options: Options, log: Callable[[str], None] = lambda s: None,
           ) -> tuple[Facts, dict[str, Network]]:
    """Build each model (or its architecture), count and time its passes and its operations, and
    ask each attack and detector plugin for its cost."""
    import torch

    from advbench.cache import default_cache_dir

    bench = plan.benchmark
    root = (options.cache_dir or default_cache_dir()) / "plugins"
    # time where the plan runs: the CPU when it has no GPU, a GPU when one is here
    gpu_here = options.measure and options.gpus > 0 and torch.cuda.is_available()
    cpu_here = options.measure and options.gpus == 0
    networks: dict[str, Network] = {}
    classifier, unknown_models = {}, {}
    attack_passes: dict[tuple[str, str], tuple[float, float] | None] = {}
    detectors: dict[tuple[str, str], DetectorFacts] = {}
    op_seconds, op_scale = {}, {}
    timed_ops: dict[tuple[int, int, int], dict[str, tuple[float, tuple[int, int, int]]]] = {}
    detector_cache: dict[tuple[str, CostInputs], DetectorFacts] = {}
    models = [m for m in bench.models if any(c.model == m.label for c in plan.cells)]
    for entry in models:
        log(f"model {entry.label}: building")
        ctx = BuildContext(cache_dir=root / "model" / entry.plugin, device="cpu", seed=bench.settings.seed)
        try:
            loaded, source = load_model(registry, entry, ctx)
        except AdvbenchError as exc:
            classifier[entry.label], unknown_models[entry.label] = "", str(exc)
            continue
        h, w = loaded.input_size
        shape = (3, int(h), int(w))
        log(f"model {entry.label}: counting FLOPs{', timing passes' if cpu_here or gpu_here else ''} at {h}x{w}")
        network = price_network(f"model {entry.label}", loaded.module, shape, bench.database.batch_size,
                                source=source, cpu=cpu_here, gpu=gpu_here)
        networks[network.name] = _gpu_override(options, entry.label, network)
        classifier[entry.label] = network.name
        if bench.transforms:
            if shape not in timed_ops:  # models of one input size share the operations' timings
                log(f"model {entry.label}: timing {len(bench.transforms)} operations at {h}x{w}")
                timed_ops[shape] = time_operations(plan, registry, shape, log)
            meta = meta_copy(loaded.module)
            for label, (seconds, out_shape) in timed_ops[shape].items():
                op_seconds[(entry.label, label)] = seconds
                op_scale[(entry.label, label)] = flops_ratio(meta, shape, out_shape, network.forward_flops)
        inputs = CostInputs(shape, loaded.num_classes)
        for atk in bench.attacks:
            attack_passes[(entry.label, atk.label)] = _attack_cost(registry, atk, inputs)
        for cell in (c for c in plan.cells if c.stage == "adaptive" and c.model == entry.label):
            atk = next(e for e in bench.adaptive if e.label == cell.entry)
            attack_passes[(entry.label, cell.imageset)] = _attack_cost(
                registry, atk, replace(inputs, operations=adaptive_operations(plan, cell)))
        for cell in (c for c in plan.cells if c.stage == "robust" and c.model == entry.label):
            attack_passes[(entry.label, cell.imageset)] = robust_cost(plan, registry, cell, inputs)
        for det in bench.detectors:
            if (det.label, inputs) not in detector_cache or registry.get("detector", det.plugin).inputs == "model":
                detector_cache[(det.label, inputs)] = _detector_facts(registry, det, inputs, loaded, ctx, networks,
                                                                      cpu_here, gpu_here, log)
            detectors[(entry.label, det.label)] = detector_cache[(det.label, inputs)]
        del loaded
        gc.collect()
    facts = Facts(classifier, attack_passes, detectors, op_seconds, op_scale, success_rate=options.success_rate,
                  unknown_models=unknown_models)
    return facts, networks


def robust_cost(plan, registry: Registry, cell, inputs: CostInputs) -> tuple[float, float] | None:
    """Classifier passes per attacked image of a robust cell, an upper bound: every member that
    runs at its budget on every image (they run on the images still standing), and per member the
    verdict on its candidates (the image before and after the save, then under each operation)."""
    entry = next(e for e in plan.benchmark.robust if e.label == cell.family)
    index = next(i for i, b in enumerate(entry.budgets) if abs(b - cell.budget) <= 1e-12)
    ops = adaptive_operations(plan, cell)
    forward = backward = 0.0
    for member in entry.members:
        params = member.params[index]
        if params is None or not member.attacks(cell.target):
            continue
        cost = getattr(registry.get("attack", member.plugin), "cost", None)
        if cost is None:
            return None
        f, b = cost(params, replace(inputs, operations=ops))
        forward, backward = forward + f + 2 + ops, backward + b
    return forward, backward


def _attack_cost(registry: Registry, entry: Entry, inputs: CostInputs) -> tuple[float, float] | None:
    cost = getattr(registry.get("attack", entry.plugin), "cost", None)
    if cost is None:
        return None
    forward, backward = cost(entry.params, inputs)
    return float(forward), float(backward)


def _detector_facts(registry: Registry, entry: Entry, inputs: CostInputs, loaded: Any, ctx: BuildContext,
                    networks: dict[str, Network], cpu_here: bool, gpu_here: bool, log) -> DetectorFacts:
    spec = registry.get("detector", entry.plugin)
    if spec.inputs == "features":
        return DetectorFacts("features")
    cost = getattr(spec, "cost", None)
    if cost is None:
        return DetectorFacts(spec.inputs, unknown="its plugin declares no cost")
    try:
        training: TrainingCost = cost(entry.params, inputs)
    except AdvbenchError as exc:
        return DetectorFacts(spec.inputs, unknown=str(exc).splitlines()[0])
    try:  # only to learn whether it can save itself; fine-tuning needs weights that may be absent here
        if spec.inputs == "model":
            built = spec.build(entry.params, DetectorContext(cache_dir=ctx.cache_dir, device="cpu", seed=ctx.seed,
                                                             model=loaded))
        else:
            built = spec.build(entry.params, ctx.seed)
        saves = hasattr(built, "save") and hasattr(built, "load")
    except AdvbenchError:
        saves = False  # an upper bound: score cells refit it
    name = ""
    if training.network is not None:
        shape = tuple(training.image_shape or inputs.image_shape)
        size = sum(p.numel() for p in training.network.parameters())
        name = f"detector {entry.plugin} {shape[1]}x{shape[2]} ({size / 1e6:.3g}M weights)"
        if name not in networks:  # entries of one plugin and network share it: price it once
            log(f"detector {entry.label}: counting FLOPs{', timing training passes' if cpu_here or gpu_here else ''}")
            networks[name] = price_network(name, training.network, shape, getattr(entry.params, "batch_size", 32),
                                           training=True, cpu=cpu_here, gpu=gpu_here)
    return DetectorFacts(spec.inputs, name, training.epochs, training.classifier_forward, saves)


def assumptions_of(plan: Plan, facts: Facts, networks: Mapping[str, Network], hw: Hardware,
                   options: Options) -> tuple[str, ...]:
    """Every assumption behind the numbers, one line each."""
    bench = plan.benchmark
    n = images_per_model(plan)
    lines = [
        f"N = {n} clean images per dataset/model (images_per_model{', --max-images' if plan.max_images else ''}); "
        f"attacks with a budget grid and adaptive attacks attack the eval split's {bench.database.split[2]:.0%}.",
        f"{options.success_rate:.0%} of attacked images succeed and are kept (--success-rate; 100% = upper bound): "
        "predictions and detectors see that many adversarial images.",
        "Attack passes per image are each plugin's upper bound (AttackSpec.cost): rows that succeed early stop "
        "sooner in most attacks; +2 forward passes per image re-check it before and after saving.",
        "CNN detectors train every epoch (early stopping may end sooner); statistical detector fits, "
        "image decoding, JPEG saving and array work are not priced.",
        "Stages are summed; the scheduler overlaps them, so the total is an upper bound on that count.",
    ]
    if not facts.dataset_images:
        lines.append("Clean selection: the dataset's size is unknown here, so N forward passes are counted (at least).")
    if hw.gpus > 0:
        measured = [n for n in networks.values() if n.gpu is not None]
        lines.append(f"{hw.gpus} GPU(s): device time spread evenly over them (no stage shorter than its longest "
                     "cell); needs an executor that runs cells on every GPU (--executor ray). The local executor "
                     "runs model cells one at a time.")
        if len(measured) < len(networks):
            lines.append(f"GPU rates without a measurement: FLOPs / {hw.gpu_tflops:g} TFLOP/s achieved (--gpu-tflops; "
                         f"an A100 in TF32 at batch 32), and no faster than {hw.gpu_launch_us:g} µs per operator "
                         "per batch (eager kernel launches).")
        lines.append(f"CPU work (image operations) on {hw.cpus} core(s), overlapping the GPU work.")
    else:
        lines.append(f"No GPU: passes run on {hw.cpus} CPU core(s): rates measured here on {hw.cpu_threads} core "
                     f"(one torch thread) are scaled by {hw.cpus}/{hw.cpu_threads} (linear in cores, assumed). "
                     "CPU rates depend on this machine's load now"
                     + (f" (load average {os.getloadavg()[0]:.1f})." if hasattr(os, "getloadavg") else "."))
    for n in networks.values():
        if n.source.startswith(ARCHITECTURE_ONLY):
            lines.append(f"{n.name}: counted and timed on its architecture with random weights (same FLOPs and "
                         f"speed); {n.source.removeprefix(ARCHITECTURE_ONLY).strip(' ()')}")
    return tuple(lines)
