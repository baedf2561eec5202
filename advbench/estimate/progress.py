"""Time left of a run, for its progress lines: each remaining cell priced by the plan's cost
estimate (what ``advbench validate --estimate`` prints), calibrated by the cells computed so far.

A stage's cells differ by orders of magnitude from another's (an attack is not a score), so a
stage none of whose cells has finished cannot be priced at the mean of the others: it is priced
by the estimate (the FLOPs of its passes through each network, and its image operations), scaled
by how the computed cells compared with their own estimates. Cells the
estimate does not price (statistical fits, array work) count at the mean of such cells computed
so far. Each settled cell's share of the run's other time (the store, scheduling) is added
per remaining cell. Without the estimate (a model that cannot be built here), a stage counts
only once one of its cells has finished.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from advbench.plan import Plan
from advbench.registry import Registry

#: Each cell of a plan by key: its stage and expected seconds (``None``: not priced by the estimate).
Expected = Mapping[str, "tuple[str, float | None]"]


#: Nominal speed that turns the estimate's FLOPs into seconds until the run's own cells calibrate
#: it (one core of a 2020s CPU on small convolutions; the digits CNN ran at ~31 GFLOP/s here).
NOMINAL_CPU_FLOPS = 2e10


def expected_seconds(plan: Plan, registry: Registry, cache_dir: Path | None = None,
                     ) -> dict[str, tuple[str, float | None]]:
    """Each cell's expected seconds: the estimate's FLOPs (its passes through each network; counted,
    not timed: timing the networks took 4 s of a 35 s run) at a nominal speed, plus its image
    operations on one core (timed here). The calibration by computed cells corrects the speed."""
    import torch

    from advbench.estimate.counting import count_work
    from advbench.estimate.gathering import Options, gather
    from advbench.estimate.summary import DEFAULT_GPU_TFLOPS, Hardware, price

    device = plan.benchmark.settings.device
    gpus = 1 if device != "cpu" and torch.cuda.is_available() else 0
    facts, networks = gather(plan, registry, Options(gpus=gpus, cpus=1, cache_dir=cache_dir, measure=False))
    hw = Hardware(gpus, 1, 1)
    speed = DEFAULT_GPU_TFLOPS * 1e12 if gpus else NOMINAL_CPU_FLOPS
    expected: dict[str, tuple[str, float | None]] = {}
    for work in count_work(plan, facts):
        flops = sum(price(p, networks, hw)[0] for p in work.passes)
        priced = (flops > 0 or work.cpu_seconds > 0) and math.isfinite(flops)
        expected[work.cell.key] = (work.cell.stage, flops / speed + work.cpu_seconds if priced else None)
    return expected


@dataclass
class _Stage:
    remaining: int = 0
    estimated_left: float = 0.0  # expected seconds of its priced cells not settled yet
    priced_left: int = 0
    observed: float = 0.0  # seconds of its computed priced cells ...
    observed_expected: float = 0.0  # ... and what the estimate said of them
    unpriced_seconds: float = 0.0  # seconds of its computed unpriced cells ...
    unpriced_done: int = 0  # ... and how many


@dataclass
class TimeLeft:
    """Seconds left of a run of ``counts`` cells per stage. ``expected`` (the plan's estimate) is
    called once, when first needed (it builds the models: a few seconds), and may fail: then a
    stage none of whose cells has finished counts nothing. ``parallel``: stage -> cells that run
    at once (``--workers``)."""

    counts: Mapping[str, int]
    expected: Callable[[], Expected] | None = None
    parallel: Mapping[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._stages = {stage: _Stage(remaining=n) for stage, n in self.counts.items()}
        self._costs: Mapping[str, float | None] | None = None
        self._settled: set[str] = set()
        self._done: list[tuple[str, str, float, bool]] = []  # (key, stage, seconds, computed) before pricing
        self._start = self.clock()
        self._cell_seconds = 0.0
        self.priced = False  # whether the plan's estimate was had

    def observe(self, key: str, stage: str, seconds: float, computed: bool) -> None:
        """A cell settled: ``computed`` (``seconds`` of work) or cached, failed or skipped."""
        if key in self._settled:
            return
        self._settled.add(key)
        self._cell_seconds += seconds
        st = self._stages.setdefault(stage, _Stage())
        st.remaining = max(0, st.remaining - 1)
        if self._costs is None:
            self._done.append((key, stage, seconds, computed))
        else:
            self._account(key, st, seconds, computed)

    def seconds(self) -> float:
        """The estimate of the seconds left (wall time)."""
        self._price()
        # the clean cell also loads the dataset and builds (or trains) the model: no guide to the rest
        calibrating = [s for name, s in self._stages.items() if name != "clean"]
        priced_rate = _ratio(sum(s.observed for s in calibrating), sum(s.observed_expected for s in calibrating))
        unpriced_done = sum(s.unpriced_done for s in self._stages.values())
        # with the plan's estimate, the unpriced cells are array work, alike across stages; without
        # it they include attacks, and a stage borrows from none
        unpriced_mean = sum(s.unpriced_seconds for s in self._stages.values()) / unpriced_done \
            if unpriced_done and self.priced else 0.0
        left = 0.0
        for stage, st in self._stages.items():
            if st.remaining <= 0:
                continue
            priced = min(st.priced_left, st.remaining)
            rate = _ratio(st.observed, st.observed_expected) or priced_rate or 1.0
            scale = priced / st.priced_left if st.priced_left else 0.0  # a replan may have dropped some
            work = st.estimated_left * scale * rate
            mean = st.unpriced_seconds / st.unpriced_done if st.unpriced_done else unpriced_mean
            work += (st.remaining - priced) * mean
            left += work / max(1, self.parallel.get(stage, 1))
        settled = len(self._settled)
        overhead = max(0.0, (self.clock() - self._start - self._cell_seconds) / settled) if settled else 0.0
        return left + overhead * sum(max(0, s.remaining) for s in self._stages.values())

    def _price(self) -> None:
        if self._costs is not None:
            return
        expected: Expected = {}
        if self.expected is not None:
            try:
                expected = self.expected()
                self.priced = True
            except Exception:  # noqa: BLE001 - a progress line must never end a run
                expected = {}
        self._costs = {key: cost for key, (_, cost) in expected.items()}
        for key, (stage, cost) in expected.items():
            if cost is not None and key not in self._settled:
                st = self._stages.setdefault(stage, _Stage())
                st.estimated_left += cost
                st.priced_left += 1
        for key, stage, seconds, computed in self._done:
            self._account(key, self._stages[stage], seconds, computed, settled_before=True)
        self._done = []

    def _account(self, key: str, st: _Stage, seconds: float, computed: bool, settled_before: bool = False) -> None:
        cost = self._costs.get(key) if self._costs is not None else None
        if cost is not None and not settled_before:
            st.estimated_left -= cost
            st.priced_left -= 1
        if not computed:
            return
        if cost is not None:
            st.observed += seconds
            st.observed_expected += cost
        else:
            st.unpriced_seconds += seconds
            st.unpriced_done += 1


def _ratio(observed: float, expected: float) -> float | None:
    return observed / expected if expected > 0 and observed > 0 else None
