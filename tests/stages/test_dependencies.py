"""Every cell's deps name every artefact it reads, so no scheduler (forked workers, Ray, several
processes) can start a cell before what it reads exists."""

from __future__ import annotations

from collections import defaultdict

from advbench.cache import Cache
from advbench.execution import execute
from advbench.testing import run_tiny, tiny_benchmark
from tests.conftest import EVALUATION_ADAPTIVE, EVALUATION_DETECTION


def test_every_cell_reads_only_artefacts_it_depends_on(tmp_path, registry, monkeypatch):
    reads: dict = defaultdict(set)
    running: list = []
    path = Cache.path

    def recording_path(self, stage, key):
        if running:
            reads[running[-1]].add(key)
        return path(self, stage, key)

    def recording(compute_of):
        def of(stage):
            compute = compute_of(stage)

            def run(ctx, cell, out):
                running.append(cell)
                try:
                    return compute(ctx, cell, out)
                finally:
                    running.pop()
            return run
        return of

    def recording_many(compute_many_of):  # a batch: each of its cells may read what the batch read
        def of(stage):
            compute_many = compute_many_of(stage)

            def run(ctx, cells, outs):
                batch = tuple(cells)
                running.append(batch)
                try:
                    return compute_many(ctx, cells, outs)
                finally:
                    running.pop()
                    read = reads.pop(batch, set()) - {c.key for c in cells}
                    for cell in cells:
                        reads[cell] |= read
            return run
        return of

    monkeypatch.setattr(Cache, "path", recording_path)
    monkeypatch.setattr(execute, "compute_of", recording(execute.compute_of))
    monkeypatch.setattr(execute, "compute_many_of", recording_many(execute.compute_many_of))
    # a feature detector and an image detector, a budget grid, held-out cells, a subset search,
    # adaptive sets and the detect-then-correct pipeline
    toml = tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5',
                                   'plugin = "fgsm"\nname = "fgsm-grid"\nbudgets = [0.1, 0.3]'],
                          detectors=['plugin = "lda"', 'plugin = "feature-squeezing"'],
                          detection=EVALUATION_DETECTION, images=30,
                          extra=EVALUATION_ADAPTIVE + '\n[correction]\npipeline = { detector = "lda", feature = '
                                                      '"counting", group = "All" }\n')
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    assert {c.stage for c in reads} >= {"attack", "split", "predict", "detect", "adaptive", "score",
                                         "correct", "subset"}
    undeclared = {c.title: sorted(keys - {c.key} - set(c.deps)) for c, keys in reads.items()
                  if keys - {c.key} - set(c.deps)}
    assert not undeclared, undeclared
