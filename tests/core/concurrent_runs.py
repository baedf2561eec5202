"""A tiny benchmark run in a spawned child process (importable by module name)."""

from __future__ import annotations

import traceback
from pathlib import Path

# the tiny world with a little of everything: two attacks, a budget point, two detectors
BENCHMARK = dict(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'],
                 detectors=['plugin = "lda"', 'plugin = "random-forest"\nn_estimators = 10'])


def run_once(root: str, store: str, barrier=None) -> dict:
    """One `advbench run` of the tiny benchmark on a shared cache and store; every cell's outcome."""
    try:
        from advbench.config import parse_benchmark
        from advbench.execution.runner import RunOptions, Runner
        from advbench.execution.execute import comparable
        from advbench.testing import registry_with, tiny_benchmark

        registry = registry_with()
        path = Path(root) / "benchmark.toml"
        bench = parse_benchmark(tiny_benchmark(**BENCHMARK), registry, path=path)
        if barrier is not None:
            barrier.wait()  # start together
        result = Runner(bench, registry, RunOptions(store=store, cache_dir=Path(root) / "cache")).run()
        return {"computed": [o.cell.key for o in result.computed], "failed": [o.error for o in result.failed],
                "metrics": {o.cell.key: comparable(o.metrics) for o in result.outcomes}, "run": result.run_id}
    except BaseException:
        return {"error": traceback.format_exc()}
