"""A network the benchmark runs, priced per image: its FLOPs and operators counted, its rates
measured here or given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from advbench.estimate.flops import count_flops
from advbench.estimate.rates import Rates, measure_rates


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


def price_network(name: str, module: Any, shape: tuple[int, int, int], batch: int, *, training: bool = False,
                  source: str = "built", cpu: bool = True, gpu: bool = False) -> Network:
    """FLOPs and operators of ``module``, and its rates measured on the CPU and/or a GPU here."""
    forward, backward, operators = count_flops(module, shape, batch, training=training)
    on_cpu = measure_rates(module, shape, batch, "cpu", training=training) if cpu else None
    on_gpu = measure_rates(module, shape, batch, "cuda", training=training) if gpu else None
    if on_gpu is not None:
        module.to("cpu")
    return Network(name, shape, batch, forward, backward, operators, training, source, on_cpu, on_gpu)
