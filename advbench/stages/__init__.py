"""Each stage's computation as a function a worker can run anywhere: ``compute(ctx, cell, out)``
reads its inputs' artefacts through the :class:`~advbench.stages.context.CellContext`, writes
its own into ``out`` and returns its metric rows. :func:`execute` runs one cell with the cache's
lock, completeness check and atomic write; the runner only schedules."""

from __future__ import annotations

from advbench.stages import adaptive, attack, clean, correct, detect, predict, robust, score, split, subset

COMPUTE = {"clean": clean.compute, "attack": attack.compute, "split": split.compute, "predict": predict.compute,
           "detect": detect.compute, "adaptive": adaptive.compute, "robust": robust.compute, "score": score.compute,
           "correct": correct.compute, "subset": subset.compute}
