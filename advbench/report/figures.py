"""The plots of a stored run: data picked from the store (and the artefact cache for per-image
scores and logits), drawn by :mod:`advbench.report.plots`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from advbench import metrics as M
from advbench.cache import Cache
from advbench.errors import AdvbenchError
from advbench.report import plots
from advbench.report.tables import metric

KINDS = ("roc", "heatmap", "cost", "logits")
CAPTIONS = {"roc": "ROC curves of the most accurate detector cells (eval set)",
            "heatmap": "Table 3 as a heat map: % of images whose label left the top-k after each operation",
            "cost": "detection accuracy against the number of image operations used",
            "logits": "logits of the CNN detectors on the eval set (paper Fig. 2)"}
EVAL = 2


def _eval_arrays(cache: Cache, cell, *names: str) -> list[np.ndarray] | None:
    directory = cache.path("detect", cell.key)
    try:
        split = np.load(directory / "split.npy")
        return [np.load(directory / f"{n}.npy")[split == EVAL] for n in names]
    except FileNotFoundError:
        return None


def _label(cell) -> str:
    return " / ".join(p for p in (cell.detector, cell.feature, cell.transform) if p)


def roc(cells, cache: Cache, path: Path, top: int = 6) -> Path:
    """ROC curves of the ``top`` most accurate detector cells."""
    ranked = sorted((c for c in cells if c.stage == "detect" and c.status == "ok"),
                    key=lambda c: -(metric(c, "accuracy") or 0))
    curves = []
    for cell in ranked:
        arrays = _eval_arrays(cache, cell, "y", "scores")
        if arrays is not None and len(set(arrays[0].tolist())) == 2:
            fpr, tpr, _ = M.roc_curve(*arrays)
            curves.append((_label(cell), fpr, tpr))
        if len(curves) == top:
            break
    if not curves:
        raise AdvbenchError("no detector cell of this run has scores in the cache; re-run it with this --cache-dir")
    return plots.roc_curves(curves, path, title="ROC of the best detector cells (eval)")


def heatmap(cells, path: Path) -> Path:
    """Table 3 as a heat map: share of images whose reference label left the top-k, per
    operation (rows) and imageset (columns)."""
    predict = [c for c in cells if c.stage == "predict" and c.status == "ok"]
    if not predict:
        raise AdvbenchError("this run has no prediction cells")
    ops = list(dict.fromkeys(c.transform for c in predict))
    sets = list(dict.fromkeys(c.attack for c in predict))
    lookup = {(c.transform, c.attack): c for c in predict}
    values = np.full((len(ops), len(sets)), np.nan)
    for i, op in enumerate(ops):
        for j, s in enumerate(sets):
            c = lookup.get((op, s))
            n = metric(c, "images") if c else None
            if c and n:
                values[i, j] = 100 * (metric(c, "topk_misclassified") or 0) / n
    return plots.heatmap("Top-k misclassified after each operation (%)", ops,
                         ["normal" if s == "clean" else s for s in sets], values, path, fmt="{:.0f}",
                         colorbar_label="% of images")


def cost(cells, path: Path) -> Path:
    """Detection accuracy against the number of operations each feature group needs."""
    points = [(_label(c), metric(c, "operations"), metric(c, "accuracy")) for c in cells
              if c.stage == "detect" and c.status == "ok" and metric(c, "operations") is not None]
    if not points:
        raise AdvbenchError("this run has no feature-based detector cells")
    return plots.accuracy_vs_cost(points, path)


def logits(cells, cache: Cache, path: Path) -> Path:
    """Fig. 2: eval-set logits of every detector that exposes them (CNN detectors)."""
    panels = []
    for cell in cells:
        if cell.stage == "detect" and cell.status == "ok":
            arrays = _eval_arrays(cache, cell, "logits", "y")
            if arrays is not None:
                panels.append((_label(cell), *arrays))
    if not panels:
        raise AdvbenchError("no detector of this run saved logits (add a CNN detector, e.g. plugin = \"cnn-small\")")
    return plots.logit_scatter(panels, path)
