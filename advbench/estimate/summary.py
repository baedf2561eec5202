"""Pricing: the hardware the run is planned for, and passes turned into FLOPs and wall time per
stage (a pure function of the counted work and the networks)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from advbench.estimate.counting import CellWork, Facts, Passes, attacked_images
from advbench.estimate.networks import Network
from advbench.estimate.rates import Rates
from advbench.plan import Plan
from advbench.stages import STAGES

#: Assumed, not measured (no GPU where this was written): an A100-class GPU running TF32
#: convolutions in eager PyTorch at batch 32, ~2,500 ResNet-50 images/s forward (8.2 GFLOP each)
#: and ~900 images/s training (24.5 GFLOP), i.e. about 20 TFLOP/s achieved.
DEFAULT_GPU_TFLOPS = 20.0
#: Eager PyTorch on a GPU: a kernel launch and its dispatch per operator, whatever the batch.
DEFAULT_LAUNCH_US = 10.0


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
            if stage in ("attack", "adaptive", "robust"):
                attacks.append(AttackEstimate(w.cell.model, w.cell.imageset,
                                              facts.attack_passes.get((w.cell.model, w.cell.imageset)),
                                              attacked_images(plan, w.cell), sum(f for f, _ in priced), cell_seconds))
        passes = max(sum(device) / hw.gpus, longest) if hw.gpus > 0 else sum(device)
        seconds = max(passes, cpu / hw.cpus) if hw.gpus > 0 else passes + cpu / hw.cpus
        stages.append(StageEstimate(stage, len(cells), fwd, bwd, flops, seconds,
                                    sum(1 for w in cells if w.unknown), any(w.at_least for w in cells),
                                    passes, cpu / hw.cpus))
    return Estimate(tuple(stages), tuple(attacks), tuple(networks.values()), hw, assumptions, tuple(unknown))
