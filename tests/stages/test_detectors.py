"""Reloading fitted detectors (``advbench.stages.detect.trained``) for score cells."""

from __future__ import annotations

from advbench.config import parse_benchmark
from advbench.execution.runner import RunOptions, Runner
from advbench.stages import detect as detectors


def test_a_feature_detector_is_loaded_once_per_process_for_all_its_evaluation_sets(evaluation_run, registry,
                                                                                      monkeypatch):
    result, root = evaluation_run
    bench = parse_benchmark((root / "benchmark.toml").read_text(), registry)
    ctx = Runner(bench, registry, RunOptions(store=result.store_url, cache_dir=root / "cache")).context()
    cell = next(c for c in ctx.plan.stage("detect") if c.detector == "lda" and not c.holdout)
    loads = []
    build = detectors.build

    def counting(*args):
        detector = build(*args)
        load = detector.load
        detector.load = lambda directory: (loads.append(directory), load(directory))[1]
        return detector

    monkeypatch.setattr(detectors, "build", counting)
    first = detectors.trained(ctx, cell)
    assert detectors.trained(ctx, cell) is first and len(loads) == 1
