"""The stage table: every fact about a stage, declared once.

Each stage's computation is a function a worker can run anywhere, ``compute(ctx, cell, out)``:
it reads its inputs' artefacts through the :class:`~advbench.execution.context.CellContext`,
writes its own into ``out`` and returns its metric rows. The table names it by module and is
read without importing any stage (or torch): the planner, the scheduler, the executors and the
estimate ask it what they need, and :func:`compute_of` imports a stage's module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Stage:
    """One stage of the data flow.

    ``forkable``: its cells may run in forked workers (CPU work on arrays, no model training).
    ``gpu``: when its cells run a network on batches of images ("always", "image detectors": the
    cells of detectors that see images or the model, "never"); Ray asks a GPU for those.
    ``per_image``: its cells write per-image rows that the store keeps (``advbench export``).
    ``cost``: how ``advbench validate --estimate`` prices a cell (see :mod:`advbench.estimate.counting`).
    ``batch_by``: the cell fields that make a group of cells computed in one call of the
    module's ``compute_many(ctx, cells, outs)`` when they are ready together (each cell still its
    own artefact); empty: one cell per call.
    """

    name: str
    module: str
    forkable: bool = False
    gpu: Literal["always", "image detectors", "never"] = "never"
    per_image: bool = False
    cost: Literal["dataset", "attack", "predict", "detector", "none"] = "none"
    batch_by: tuple[str, ...] = ()

    def batch(self, cell: Any) -> tuple | None:
        """The group of ``cell`` for batched execution; None when its stage is not batched."""
        return (self.name, *(getattr(cell, f) for f in self.batch_by)) if self.batch_by else None

    def needs_gpu(self, sees_images: bool) -> bool:
        return self.gpu == "always" or (self.gpu == "image detectors" and sees_images)


_TABLE = (
    Stage("clean", "advbench.stages.clean", gpu="always", cost="dataset"),
    Stage("attack", "advbench.stages.attack", gpu="always", cost="attack", batch_by=("dataset", "model", "family")),
    Stage("split", "advbench.stages.split"),
    Stage("predict", "advbench.stages.predict", forkable=True, gpu="always", cost="predict",
          batch_by=("dataset", "model", "imageset")),
    Stage("detect", "advbench.stages.detect", forkable=True, gpu="image detectors", per_image=True, cost="detector"),
    Stage("adaptive", "advbench.stages.adaptive", gpu="always", cost="attack",
          batch_by=("dataset", "model", "family", "target")),
    # the worst case over an attack ensemble: each budget's cell reads the one below (no batching)
    Stage("robust", "advbench.stages.robust", gpu="always", per_image=True, cost="attack"),
    Stage("score", "advbench.stages.score", forkable=True, gpu="image detectors", per_image=True, cost="detector"),
    Stage("correct", "advbench.stages.correct", forkable=True, per_image=True),
    Stage("subset", "advbench.stages.subset", forkable=True),
)

#: the stages by name, in data-flow order
STAGES: dict[str, Stage] = {s.name: s for s in _TABLE}


def compute_of(stage: str) -> Callable[..., Any]:
    """``compute(ctx, cell, out)`` of a stage (its module imported on first use)."""
    return importlib.import_module(STAGES[stage].module).compute


def compute_many_of(stage: str) -> Callable[..., Any]:
    """``compute_many(ctx, cells, outs)`` of a batched stage."""
    return importlib.import_module(STAGES[stage].module).compute_many
