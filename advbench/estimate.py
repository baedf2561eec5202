"""Planning at scale: what a benchmark will cost before it runs (``advbench validate --estimate``).

For every cell of the plan the estimate counts the passes it makes through a network (images x
passes, forward and backward), prices them in FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` on one batch of the network's real input size, and
turns them into wall time from per-image rates measured on this machine, or given for other
hardware. What each stage computes (``advbench/stages``):

- clean: one forward pass per dataset image (the picked images are then read again, no model);
- attack: the attack's own passes per attacked image (``AttackSpec.cost``, an upper bound), plus
  the two forward passes that re-check each image before and after it is saved; primary attacks
  attack every clean image, the points of a budget grid the eval split's only;
- predict: one forward pass per image of the set under one operation (the operation itself runs
  on the CPU: timed here);
- detect: a statistical detector fits a feature matrix (not priced: seconds); a detector that sees
  the images trains (``DetectorSpec.cost``): epochs over the train split (forward and backward,
  weight gradients included), the dev split after each epoch, then one pass over every image;
- adaptive: as attack, on the eval split, with the number of operations of the targeted defense;
- score: an image detector's forward pass per evaluation image, and its refit when it cannot save
  itself (``Detector.save``/``load``);
- split, correct, subset: array work, not priced.

The counting (:func:`count_work`) and the pricing (:func:`summarize`) are pure functions of the
plan and the measured :class:`Facts`; :func:`gather` builds the models and measures, at the edge.
Everything assumed is listed in :attr:`Estimate.assumptions`.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from advbench.config import Entry
from advbench.errors import AdvbenchError
from advbench.plan import ORIGINAL, STAGES, Cell, ImageSet, Plan, group_ops
from advbench.registry import Registry
from advbench.specs import BuildContext, CostInputs, DetectorContext, TrainingCost

#: Assumed, not measured (no GPU where this was written): an A100-class GPU running TF32
#: convolutions in eager PyTorch at batch 32, ~2,500 ResNet-50 images/s forward (8.2 GFLOP each)
#: and ~900 images/s training (24.5 GFLOP), i.e. about 20 TFLOP/s achieved.
DEFAULT_GPU_TFLOPS = 20.0
#: Eager PyTorch on a GPU: a kernel launch and its dispatch per operator, whatever the batch.
DEFAULT_LAUNCH_US = 10.0
#: How a network built without its weights is described (``Network.source``), before the reason.
ARCHITECTURE_ONLY = "architecture only, random weights: weights absent"
#: Seconds a timed batch should take at least, so timer noise stays small.
_TIMED_SECONDS = 0.3


# --- what the estimate is made from ---------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """Seconds per image of one forward pass and of the backward pass alone, and how known."""

    forward_s: float
    backward_s: float
    how: str


@dataclass(frozen=True)
class Network:
    """A network the benchmark runs (a classifier, or a detector's network), priced per image:
    FLOPs counted on one batch of ``batch`` images of ``shape``; ``backward_flops`` is the
    backward pass alone (input gradients of a frozen classifier; weight gradients too for a
    detector in training); ``operators`` the kernels one batch launches (forward, backward)."""

    name: str
    shape: tuple[int, int, int]
    batch: int
    forward_flops: float
    backward_flops: float
    operators: tuple[int, int] = (0, 0)
    training: bool = False
    source: str = ""  # how it was built: "built", or why only the architecture was used
    cpu: Rates | None = None  # measured here on one core (one torch thread)
    gpu: Rates | None = None  # measured on a GPU here, or given


@dataclass(frozen=True)
class DetectorFacts:
    kind: str  # "features", "images" or "model"
    network: str = ""  # key of its Network ("" = none or unknown)
    epochs: int = 0
    classifier_forward: float = 0.0
    saves: bool = True  # can save itself: score cells need not refit it
    unknown: str = ""  # why its cost is unknown


@dataclass(frozen=True)
class Facts:
    """What counting needs besides the plan: the networks of each model and detector, each
    attack's passes per image, the operations' CPU time and input size."""

    classifier: Mapping[str, str]  # model label -> Network key ("" = could not be built)
    attack_passes: Mapping[tuple[str, str], tuple[float, float] | None]  # (model, attack label) -> per image
    detectors: Mapping[tuple[str, str], DetectorFacts]  # (model, detector label)
    op_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (model, op) -> CPU s per image
    op_scale: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (model, op) -> FLOPs vs. input
    dataset_images: Mapping[str, int] = field(default_factory=dict)  # dataset label -> images, when known
    success_rate: float = 1.0  # share of attacked images that end in an image set
    unknown_models: Mapping[str, str] = field(default_factory=dict)  # model label -> why it is unpriced


@dataclass(frozen=True)
class Passes:
    network: str
    forward: float  # images x passes
    backward: float
    scale: float = 1.0  # FLOPs and time relative to the network's input size (scaled images)


@dataclass(frozen=True)
class CellWork:
    cell: Cell
    passes: tuple[Passes, ...] = ()
    cpu_seconds: float = 0.0  # one core's seconds of CPU work (image operations)
    unknown: tuple[str, ...] = ()  # why part of the cell's cost is not counted
    at_least: bool = False  # the count is a lower bound


# --- counting: a pure function of the plan ---------------------------------------------------


def images_per_model(plan: Plan) -> int:
    """N: clean images picked per dataset/model (an upper bound: fewer when fewer are correct)."""
    s = plan.benchmark.settings
    return min(s.images_per_model, plan.max_images) if plan.max_images else s.images_per_model


def attacked_images(plan: Plan, cell: Cell) -> float:
    """Images an attack or adaptive cell attacks: every clean image for a primary attack, the
    eval split's for a point of a budget grid or an adaptive attack."""
    n = images_per_model(plan)
    primary = cell.stage == "attack" and cell.budget is None
    return float(n) if primary else n * plan.benchmark.database.split[2]


def set_images(plan: Plan, st: ImageSet, success_rate: float) -> float:
    """Expected images of an image set: N clean, or the attacked images that succeed."""
    n = images_per_model(plan)
    if st.threat == "clean":
        return float(n)
    attacked = n if st.training else n * plan.benchmark.database.split[2]
    return attacked * success_rate


def _detector_entry(plan: Plan, label: str) -> Entry:
    return next(e for e in plan.benchmark.detectors if e.label == label)


def _training_passes(plan: Plan, cell: Cell, det: DetectorFacts, facts: Facts, net: str) -> list[Passes]:
    """Fitting an image or model detector on the training sets of ``cell``'s world (each
    candidate of a dev-set search once), then one pass over every image of them."""
    images = sum(set_images(plan, st, facts.success_rate) for st in plan.training_sets(cell))
    train, dev, _ = plan.benchmark.database.split
    fits = max(1, len(_detector_entry(plan, cell.detector).candidates))
    passes = []
    if det.network:
        per_fit = det.epochs * train * images
        passes.append(Passes(det.network, fits * (per_fit + det.epochs * dev * images) + images, fits * per_fit))
    if det.classifier_forward and net:
        passes.append(Passes(net, det.classifier_forward * images * (fits + 1), 0.0))
    return passes


def _entry_and_target(plan: Plan, cell: Cell):
    entry = next(e for e in plan.benchmark.adaptive if e.label == cell.attack.rsplit(">", 1)[0])
    return entry, next(t for t in entry.targets if t.label == cell.target)


def adaptive_operations(plan: Plan, cell: Cell) -> int:
    """Image operations of the defense an adaptive cell targets (the larger group of a pipeline's
    detector and corrector)."""
    bench = plan.benchmark
    _, target = _entry_and_target(plan, cell)
    if target.kind in ("operations", "detector"):
        return len(group_ops(bench, target.group)) if target.group else 0
    pipe = bench.correction.pipeline
    groups = [g for g in (pipe.group if pipe else "", *bench.correction_groups()[:1]) if g]
    return max((len(group_ops(bench, g)) for g in groups), default=0)


def _uncounted_detector(plan: Plan, cell: Cell) -> str:
    """The detector that sees images (or the model) inside an adaptive cell's defense: its own
    passes are not the classifier's, and are not counted. "" when there is none."""
    entry, target = _entry_and_target(plan, cell)
    pipe = plan.benchmark.correction.pipeline
    if target.kind == "detector" and not target.feature:
        return f"adaptive {entry.family!r} against {target.detector!r}: the detector's own passes are not counted"
    if target.kind == "pipeline" and pipe is not None and not pipe.feature:
        return f"adaptive {entry.family!r} against the pipeline: detector {pipe.detector!r}'s own passes are not counted"
    return ""


def count_work(plan: Plan, facts: Facts) -> list[CellWork]:
    """The passes (and CPU work) of every cell of ``plan``; see the module docstring."""
    work = []
    for cell in plan.cells:
        net = facts.classifier.get(cell.model, "")
        why_model = () if net else (f"model {cell.model!r}: {facts.unknown_models.get(cell.model, 'not built')}",)
        if cell.stage == "clean":
            known = facts.dataset_images.get(cell.dataset)
            images = float(known if known is not None else images_per_model(plan))
            work.append(CellWork(cell, (Passes(net, images, 0.0),) if net else (), unknown=why_model,
                                 at_least=known is None))
        elif cell.stage in ("attack", "adaptive"):
            work.append(_attack_work(plan, cell, facts, net, why_model))
        elif cell.stage == "predict":
            images = set_images(plan, plan.imageset(cell), facts.success_rate)
            key = (cell.model, cell.transform)
            scale = 1.0 if cell.transform == ORIGINAL else facts.op_scale.get(key, 1.0)
            cpu = 0.0 if cell.transform == ORIGINAL else images * facts.op_seconds.get(key, 0.0)
            missing = () if cell.transform == ORIGINAL or key in facts.op_seconds else \
                (f"operation {cell.transform!r}: its CPU time was not measured",)
            work.append(CellWork(cell, (Passes(net, images, 0.0, scale),) if net else (), cpu, why_model + missing))
        elif cell.stage in ("detect", "score"):
            work.append(_detector_work(plan, cell, facts, net))
        else:  # split, correct, subset: array work
            work.append(CellWork(cell))
    return work


def _attack_work(plan: Plan, cell: Cell, facts: Facts, net: str, why_model: tuple[str, ...]) -> CellWork:
    attacked = attacked_images(plan, cell)
    per_image = facts.attack_passes.get((cell.model, cell.attack))
    if not net:
        return CellWork(cell, unknown=why_model)
    if per_image is None:
        label = cell.attack.rsplit(">", 1)[0] if cell.stage == "adaptive" else cell.attack
        # the re-checks before and after saving are the core's, whatever the attack
        return CellWork(cell, (Passes(net, 2 * attacked, 0.0),),
                        unknown=(f"attack {label!r}: its plugin declares no cost",), at_least=True)
    forward, backward = per_image
    uncounted = _uncounted_detector(plan, cell) if cell.stage == "adaptive" else ""
    unknown = (uncounted,) if uncounted else ()
    return CellWork(cell, (Passes(net, attacked * (forward + 2), attacked * backward),), unknown=unknown,
                    at_least=bool(unknown))


def _detector_work(plan: Plan, cell: Cell, facts: Facts, net: str) -> CellWork:
    if not cell.detector:  # a corrector's score cell: votes over stored labels
        return CellWork(cell)
    det = facts.detectors.get((cell.model, cell.detector))
    if det is None or det.kind == "features":
        return CellWork(cell)  # a statistical fit on a feature matrix
    if det.unknown or not (det.network or det.classifier_forward):
        return CellWork(cell, unknown=(f"detector {cell.detector!r}: {det.unknown or 'its plugin declares no cost'}",),
                        at_least=True)
    if cell.stage == "detect":
        return CellWork(cell, tuple(_training_passes(plan, cell, det, facts, net)))
    images = set_images(plan, plan.imageset(cell), facts.success_rate)
    passes = [Passes(det.network, images, 0.0)] if det.network else []
    if det.classifier_forward and net:
        passes.append(Passes(net, det.classifier_forward * images, 0.0))
    if not det.saves:  # trained() fits it again, seeded, on the same data
        passes += _training_passes(plan, cell, det, facts, net)
    return CellWork(cell, tuple(passes))


# --- pricing: passes -> FLOPs and seconds ------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """What the run is planned for. ``cpu_threads``: the torch threads the CPU rates were
    measured with (CPU time is scaled by ``cpu_threads / cpus``)."""

    gpus: int
    cpus: int
    cpu_threads: int
    gpu_tflops: float = DEFAULT_GPU_TFLOPS
    gpu_launch_us: float = DEFAULT_LAUNCH_US


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    cells: int
    forward: float
    backward: float
    flops: float
    seconds: float  # wall time
    unknown: int = 0  # cells with part of their cost not counted
    at_least: bool = False
    pass_seconds: float = 0.0  # wall time of the network passes alone (on the GPUs, or the CPUs)
    cpu_seconds: float = 0.0  # wall time of the CPU work alone (image operations)


@dataclass(frozen=True)
class AttackEstimate:
    """One attack (or adaptive) cell: its passes per attacked image and its share of the time."""

    model: str
    attack: str
    per_image: tuple[float, float] | None
    images: float
    flops: float
    seconds: float


@dataclass(frozen=True)
class Estimate:
    stages: tuple[StageEstimate, ...]
    attacks: tuple[AttackEstimate, ...]
    networks: tuple[Network, ...]
    hardware: Hardware
    assumptions: tuple[str, ...]
    unknown: tuple[str, ...]  # what was not counted, one line each

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)


def gpu_rates(network: Network, hw: Hardware, batch: int) -> Rates:
    """FLOP-bound rates at ``hw.gpu_tflops``, but no faster than one kernel launch per operator
    per batch (small networks on a GPU are bound by launches, not arithmetic)."""
    per_flop = 1.0 / (hw.gpu_tflops * 1e12)
    launch = hw.gpu_launch_us * 1e-6 / max(1, batch)
    forward = max(network.forward_flops * per_flop, network.operators[0] * launch)
    backward = max(network.backward_flops * per_flop, network.operators[1] * launch)
    return Rates(forward, backward, f"FLOPs at {hw.gpu_tflops:g} TFLOP/s, >= {hw.gpu_launch_us:g} µs per operator")


def _rates(network: Network, hw: Hardware) -> Rates | None:
    if hw.gpus > 0:
        return network.gpu or gpu_rates(network, hw, network.batch)
    if network.cpu is None:
        return None
    factor = hw.cpu_threads / hw.cpus  # assumed: passes scale linearly over cores
    return Rates(network.cpu.forward_s * factor, network.cpu.backward_s * factor, network.cpu.how)


def price(passes: Passes, networks: Mapping[str, Network], hw: Hardware) -> tuple[float, float]:
    """(FLOPs, seconds on the planned hardware's devices) of some passes."""
    net = networks[passes.network]
    flops = (passes.forward * net.forward_flops + passes.backward * net.backward_flops) * passes.scale
    rates = _rates(net, hw)
    seconds = math.nan if rates is None else \
        (passes.forward * rates.forward_s + passes.backward * rates.backward_s) * passes.scale
    return flops, seconds


def summarize(work: list[CellWork], networks: Mapping[str, Network], hw: Hardware, plan: Plan,
              facts: Facts, assumptions: tuple[str, ...] = ()) -> Estimate:
    """Per stage: cells, passes, FLOPs and wall time on ``hw``.

    With GPUs a stage's device time is spread over them (no shorter than its longest cell) and
    its CPU work (image operations) over the CPUs, the two overlapping; without, both share the
    CPUs. Stages are summed, although the scheduler overlaps them: an upper bound."""
    stages, attacks, unknown = [], [], []
    for stage in STAGES:
        cells = [w for w in work if w.cell.stage == stage]
        device, cpu, flops, fwd, bwd, longest = [], 0.0, 0.0, 0.0, 0.0, 0.0
        for w in cells:
            priced = [price(p, networks, hw) for p in w.passes]
            cell_seconds = sum(s for _, s in priced)
            device.append(cell_seconds)
            longest = max(longest, cell_seconds)
            flops += sum(f for f, _ in priced)
            fwd += sum(p.forward for p in w.passes)
            bwd += sum(p.backward for p in w.passes)
            cpu += w.cpu_seconds
            unknown += [u for u in w.unknown if u not in unknown]
            if stage in ("attack", "adaptive"):
                attacks.append(AttackEstimate(w.cell.model, w.cell.attack,
                                              facts.attack_passes.get((w.cell.model, w.cell.attack)),
                                              attacked_images(plan, w.cell), sum(f for f, _ in priced), cell_seconds))
        passes = max(sum(device) / hw.gpus, longest) if hw.gpus > 0 else sum(device)
        seconds = max(passes, cpu / hw.cpus) if hw.gpus > 0 else passes + cpu / hw.cpus
        stages.append(StageEstimate(stage, len(cells), fwd, bwd, flops, seconds,
                                    sum(1 for w in cells if w.unknown), any(w.at_least for w in cells),
                                    passes, cpu / hw.cpus))
    return Estimate(tuple(stages), tuple(attacks), tuple(networks.values()), hw, assumptions, tuple(unknown))


# --- measuring (the edge): FLOPs, operators and seconds of real networks ----------------------


Shape = tuple[int, int, int]  # (C, H, W)


def count_flops(module: Any, shape: Shape, batch: int, *, training: bool = False) -> tuple[float, float, tuple[int, int]]:
    """(forward FLOPs, backward FLOPs) per image and the operators (forward, backward) one batch
    launches, counted with ``FlopCounterMode`` on one batch of ``batch`` images of ``shape``.

    A frozen classifier (``training=False``) is differentiated with respect to its input only,
    as attacks do; a network in training with respect to its weights too. The count runs on a
    copy on the ``meta`` device (shapes only, no arithmetic); a network that cannot run there is
    counted on one real image (FLOPs are linear in the batch)."""
    try:
        return _count(copy.deepcopy(module).to("meta"), shape, batch, "meta", training)
    except (NotImplementedError, RuntimeError):
        forward, backward, operators = _count(copy.deepcopy(module), shape, 1, "cpu", training)
        return forward, backward, operators  # operators of a batch of one: launches do not grow with it


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient of a convolution (input, weights) costs what its forward pass does. torch's
    own formula (2.x) counts the weight gradient of a grouped convolution as a dense one, which
    made Xception's (depthwise) training pass 10x its forward pass."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _count(module: Any, shape: tuple[int, int, int], batch: int, device: str, training: bool):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Operators(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:  # views launch no kernel
                self.count += 1
            return func(*args, **(kwargs or {}))

    module.train(training)
    for p in module.parameters():
        p.requires_grad_(training)
    x = torch.zeros((batch, *shape), device=device, requires_grad=not training)
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as forward_flops, Operators() as forward_ops:
        out = module(x)
    with FlopCounterMode(display=False, custom_mapping=mapping) as backward_flops, Operators() as backward_ops:
        out.float().sum().backward()
    return (forward_flops.get_total_flops() / batch, backward_flops.get_total_flops() / batch,
            (forward_ops.count, backward_ops.count))


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


def price_network(name: str, module: Any, shape: tuple[int, int, int], batch: int, *, training: bool = False,
                  source: str = "built", cpu: bool = True, gpu: bool = False) -> Network:
    """FLOPs and operators of ``module``, and its rates measured on the CPU and/or a GPU here."""
    forward, backward, operators = count_flops(module, shape, batch, training=training)
    on_cpu = measure_rates(module, shape, batch, "cpu", training=training) if cpu else None
    on_gpu = measure_rates(module, shape, batch, "cuda", training=training) if gpu else None
    if on_gpu is not None:
        module.to("cpu")
    return Network(name, shape, batch, forward, backward, operators, training, source, on_cpu, on_gpu)


# --- gathering the facts ---------------------------------------------------------------------


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


def _test_image(width: int, height: int) -> Any:
    """A deterministic image with smooth regions and texture, as photographs have."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(1, width), yy * 255 / max(1, height), (xx + yy) * 127 / max(1, width + height)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _time_operations(plan: Plan, registry: Registry, shape: Shape,
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
                timed_ops[shape] = _time_operations(plan, registry, shape, log)
            meta = _meta_copy(loaded.module)
            for label, (seconds, out_shape) in timed_ops[shape].items():
                op_seconds[(entry.label, label)] = seconds
                op_scale[(entry.label, label)] = _flops_ratio(meta, shape, out_shape, network)
        inputs = CostInputs(shape, loaded.num_classes)
        for atk in bench.attacks:
            attack_passes[(entry.label, atk.label)] = _attack_cost(registry, atk, inputs)
        for cell in (c for c in plan.cells if c.stage == "adaptive" and c.model == entry.label):
            atk = next(e for e in bench.adaptive if e.label == cell.attack.rsplit(">", 1)[0])
            attack_passes[(entry.label, cell.attack)] = _attack_cost(
                registry, atk, replace(inputs, operations=adaptive_operations(plan, cell)))
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


def _meta_copy(module: Any) -> Any:
    try:
        return copy.deepcopy(module).to("meta")
    except (NotImplementedError, RuntimeError):
        return None


def _flops_ratio(meta: Any, shape: tuple[int, int, int], out_shape: tuple[int, int, int], network: Network) -> float:
    """FLOPs of a forward pass at ``out_shape`` (a scaled image) relative to ``shape``."""
    if out_shape == shape or network.forward_flops <= 0 or meta is None:
        return 1.0
    try:
        return _count(meta, out_shape, 1, "meta", False)[0] / network.forward_flops
    except (NotImplementedError, RuntimeError):  # a network that takes one size only fails there too
        return 1.0


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


def estimate(plan: Plan, registry: Registry, options: Options, log: Callable[[str], None] = lambda s: None) -> Estimate:
    """Count, measure and price every cell of ``plan`` for the hardware of ``options``."""
    facts, networks = gather(plan, registry, options, log)
    hw = Hardware(options.gpus, options.cpus, 1, options.gpu_tflops, options.gpu_launch_us)
    work = count_work(plan, facts)
    return summarize(work, networks, hw, plan, facts, assumptions_of(plan, facts, networks, hw, options))


# --- rendering --------------------------------------------------------------------------------


def human_count(x: float) -> str:
    if x != x:
        return "?"
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}" if x else "0"


def human_time(seconds: float) -> str:
    if seconds != seconds:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 or seconds == 0 else "<1 s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def human_rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


def hardware_line(hw: Hardware) -> str:
    where = f"{hw.gpus} GPU(s) and {hw.cpus} CPU core(s)" if hw.gpus else f"{hw.cpus} CPU core(s), no GPU"
    return f"estimate for {where}"
