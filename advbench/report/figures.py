"""The plots of a stored run: data picked from the store (and the artefact cache for per-image
scores and logits), drawn by :mod:`advbench.report.plots`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advbench import metrics as M
from advbench.cache import Cache, load_array
from advbench.engine.detect import EVAL
from advbench.errors import AdvbenchError
from advbench.report import plots
from advbench.plan import CLEAN
from advbench.report.tables import metric

KINDS = ("roc", "heatmap", "cost", "logits")
CAPTIONS = {"roc": "ROC curves of the most accurate detector cells (eval set)",
            "heatmap": "Table 3 as a heat map: % of images whose label left the top-k after each operation",
            "cost": "detection accuracy against the number of image operations used",
            "logits": "logits of the CNN detectors on the eval set (paper Fig. 2)"}


def _detect_cells(cells) -> list:
    return [c for c in cells if c.stage == "detect" and c.status == "ok"]


def _eval_arrays(cache: Cache, cell, *names: str) -> list[np.ndarray] | None:
    directory = cache.path("detect", cell.key)
    if not all((directory / f"{n}.npy").exists() for n in ("split", *names)):
        return None
    split = load_array(directory, "split")
    return [load_array(directory, n)[split == EVAL] for n in names]


def _labeller(cells):
    """Cell labels; prefixed by dataset/model when the run has several, so curves of
    different models are told apart."""
    several = len({(c.dataset, c.model) for c in cells if c.stage in ("detect", "predict")}) > 1

    def label(cell) -> str:
        name = " / ".join(p for p in (cell.detector, cell.feature, cell.transform) if p)
        return f"{cell.model}: {name}" if several else name

    return label


def _missing_artefacts(cells, cache: Cache, what: str) -> AdvbenchError:
    detect = _detect_cells(cells)
    if not detect:
        return AdvbenchError("this run has no finished detector cells")
    if not any(cache.has("detect", c.key) for c in detect):
        return AdvbenchError(f"the detector artefacts of this run are not in the cache {cache.root}; "
                             f"pass the --cache-dir the run used")
    return AdvbenchError(f"no detector cell of this run saved {what}")


def roc(cells, cache: Cache, path: Path, top: int = 6) -> Path:
    """ROC curves of the ``top`` most accurate detector cells."""
    label = _labeller(cells)
    ranked = sorted(_detect_cells(cells), key=lambda c: -(metric(c, "accuracy") or 0))
    curves = []
    for cell in ranked:
        arrays = _eval_arrays(cache, cell, "y", "scores")
        if arrays is not None and len(set(arrays[0].tolist())) == 2:
            fpr, tpr, _ = M.roc_curve(*arrays)
            curves.append((label(cell), fpr, tpr))
        if len(curves) == top:
            break
    if not curves:
        raise _missing_artefacts(cells, cache, "scores of both classes")
    return plots.roc_curves(curves, path, title="ROC of the best detector cells (eval)")


def heatmap(cells, path: Path) -> Path:
    """Table 3 as a heat map: share of images whose reference label left the top-k, per
    operation (rows) and imageset (columns)."""
    predict = [c for c in cells if c.stage == "predict" and c.status == "ok"]
    if not predict:
        raise AdvbenchError("this run has no prediction cells")
    ops = list(dict.fromkeys(c.transform for c in predict))
    columns = list(dict.fromkeys((c.dataset, c.model, c.attack) for c in predict))  # one per world and imageset
    lookup = {(c.transform, c.dataset, c.model, c.attack): c for c in predict}
    values = np.full((len(ops), len(columns)), np.nan)
    for i, op in enumerate(ops):
        for j, column in enumerate(columns):
            c = lookup.get((op, *column))
            n = metric(c, "images") if c else None
            if c and n:
                values[i, j] = 100 * (metric(c, "topk_misclassified") or 0) / n
    several = len({(d, m) for d, m, _ in columns}) > 1
    names = [("normal" if s == CLEAN else s) if not several else f"{m}: {'normal' if s == CLEAN else s}"
             for _, m, s in columns]
    return plots.heatmap("Top-k misclassified after each operation (%)", ops,
                         names, values, path, fmt="{:.0f}",
                         colorbar_label="% of images")


def cost(cells, path: Path) -> Path:
    """Detection accuracy against the number of operations each feature group needs."""
    label = _labeller(cells)
    points = [(label(c), metric(c, "operations"), metric(c, "accuracy")) for c in _detect_cells(cells)
              if metric(c, "operations") is not None]
    if not points:
        raise AdvbenchError("this run has no feature-based detector cells")
    return plots.accuracy_vs_cost(points, path)


def logits(cells, cache: Cache, path: Path) -> Path:
    """Fig. 2: eval-set logits of every detector that exposes them (CNN detectors)."""
    label = _labeller(cells)
    panels = [(label(cell), *arrays) for cell in _detect_cells(cells)
              if (arrays := _eval_arrays(cache, cell, "logits", "y")) is not None]
    if not panels:
        raise _missing_artefacts(cells, cache, 'logits (add a CNN detector, e.g. plugin = "cnn-small")')
    return plots.logit_scatter(panels, path)
