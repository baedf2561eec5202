"""Planning at scale: what a benchmark will cost before it runs (``advbench validate --estimate``).

For every cell of the plan the estimate counts the passes it makes through a network (images x
passes, forward and backward), prices them in FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` on one batch of the network's real input size, and
turns them into wall time from per-image rates measured on this machine, or given for other
hardware.

The counting (:func:`count_work`, ``counting``: what each stage computes) and the pricing
(:func:`summarize`, ``summary``) are pure functions of the plan and the measured :class:`Facts`;
:func:`gather` (``gathering``) builds the models and measures, at the edge, with ``flops``
(FLOP counts), ``rates`` (timings) and ``networks``; ``render`` prints numbers for people.
Everything assumed is listed in :attr:`Estimate.assumptions`.
"""

from __future__ import annotations

from collections.abc import Callable

from advbench.estimate.counting import (CellWork, DetectorFacts, Facts, Passes, adaptive_operations, attacked_images,
                                        count_work, images_per_model, set_images)
from advbench.estimate.flops import Shape, count_flops
from advbench.estimate.gathering import ARCHITECTURE_ONLY, Options, assumptions_of, gather, load_model
from advbench.estimate.networks import Network, price_network
from advbench.estimate.rates import Rates, measure_rates
from advbench.estimate.render import hardware_line, human_count, human_rate, human_time
from advbench.estimate.summary import (DEFAULT_GPU_TFLOPS, DEFAULT_LAUNCH_US, AttackEstimate, Estimate, Hardware,
                                       StageEstimate, gpu_rates, price, summarize)
from advbench.plan import Plan
from advbench.registry import Registry

__all__ = [
    "ARCHITECTURE_ONLY", "DEFAULT_GPU_TFLOPS", "DEFAULT_LAUNCH_US", "AttackEstimate", "CellWork", "DetectorFacts",
    "Estimate", "Facts", "Hardware", "Network", "Options", "Passes", "Rates", "Shape", "StageEstimate",
    "adaptive_operations", "assumptions_of", "attacked_images", "count_flops", "count_work", "estimate", "gather",
    "gpu_rates", "hardware_line", "human_count", "human_rate", "human_time", "images_per_model", "load_model",
    "measure_rates", "price", "price_network", "set_images", "summarize",
]


def estimate(plan: Plan, registry: Registry, options: Options, log: Callable[[str], None] = lambda s: None) -> Estimate:
    """Count, measure and price every cell of ``plan`` for the hardware of ``options``."""
    facts, networks = gather(plan, registry, options, log)
    hw = Hardware(options.gpus, options.cpus, 1, options.gpu_tflops, options.gpu_launch_us)
    work = count_work(plan, facts)
    return summarize(work, networks, hw, plan, facts, assumptions_of(plan, facts, networks, hw, options))
