"""The plots of a stored run: data picked from the store (its per-image rows give the ROC
curves; the artefact cache is the fallback for scores and the only source of logits), drawn by
:mod:`advbench.report.plots`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from advbench import metrics as M
from advbench.cache import Cache, load_array
from advbench.engine.detect import EVAL
from advbench.errors import AdvbenchError
from advbench.report import plots
from advbench.plan import CLEAN
from advbench.report.tables import Estimate, defense, metric, security_curves, standard, subset_steps

KINDS = ("roc", "heatmap", "cost", "logits", "security")
CAPTIONS = {"roc": "ROC curves of the most accurate detector cells (eval set)",
            "heatmap": "Table 3 as a heat map: % of images whose label left the top-k after each operation",
            "cost": "detection accuracy against the number of image operations used (lines: operation-subset "
                    "searches)",
            "logits": "logits of the CNN detectors on the eval set (paper Fig. 2)",
            "security": "detection rate and defended-system success against the attack budget (eval images)"}
#: Per-image rows of a run as Store.images() returns them: column name -> list.
ImageColumns = Mapping[str, Sequence]


def _detect_cells(cells) -> list:
    return [c for c in cells if standard(c) and c.status == "ok"]


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
        name = " / ".join(p for p in (cell.detector, cell.feature, cell.feature_group) if p)
        return f"{cell.model}: {name}" if several else name

    return label


def _missing_artefacts(cells, cache: Cache, what: str, store_checked: bool = False) -> AdvbenchError:
    detect = _detect_cells(cells)
    if not detect:
        return AdvbenchError("this run has no finished detector cells")
    if not any(cache.has("detect", c.key) for c in detect):
        where = "the store holds no per-image scores of this run and " if store_checked else ""
        return AdvbenchError(f"{where}the detector artefacts of this run are not in the cache {cache.root}; "
                             f"pass the --cache-dir the run used")
    return AdvbenchError(f"no detector cell of this run saved {what}")


def eval_columns(images: ImageColumns | None, names: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The eval rows of each cell, by cell key, as one float array per column of ``names``, from a
    run's per-image rows; cells with a missing value (NULL: not stored or not finite) in one of
    those columns are left out."""
    if not images or not images.get("cell_key") or any(n not in images for n in names):
        return {}
    evaluated = np.asarray(images["split"], dtype=object) == "eval"
    keys = np.asarray(images["cell_key"], dtype=object)[evaluated]
    values = [np.asarray([np.nan if v is None else v for v in images[n]], dtype=float)[evaluated] for n in names]
    order = np.argsort(keys, kind="stable")  # one pass: each cell's rows become one slice
    keys, values = keys[order], [v[order] for v in values]
    cells, starts = np.unique(keys, return_index=True)
    out = {}
    for key, start, stop in zip(cells, starts, [*starts[1:], len(keys)]):
        parts = [v[start:stop] for v in values]
        if all(np.isfinite(p).all() for p in parts):
            out[str(key)] = parts
    return out


def eval_scores(images: ImageColumns | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(y, score) of the eval images of each cell with every score stored, by cell key."""
    return {key: (y.astype(np.int64), score) for key, (y, score) in eval_columns(images, ("y", "score")).items()}


def roc(cells, cache: Cache, path: Path, top: int = 6, images: ImageColumns | None = None,
        on_note: Callable[[str], None] | None = None) -> Path:
    """ROC curves of the ``top`` most accurate detector cells, from the store's per-image rows
    (``images``, as Store.images returns them) where they hold the cell, else from its cached
    artefacts; ``on_note`` hears when the cache had to be read."""
    label = _labeller(cells)
    ranked = sorted(_detect_cells(cells), key=lambda c: -(metric(c, "accuracy") or 0))
    stored = eval_scores(images)
    curves, from_cache = [], []
    for cell in ranked:
        arrays, cached = stored.get(cell.key), False
        if arrays is None:
            arrays, cached = _eval_arrays(cache, cell, "y", "scores"), True
        if arrays is None or len(set(arrays[0].tolist())) != 2:
            continue
        fpr, tpr, _ = M.roc_curve(*arrays)
        curves.append((label(cell), fpr, tpr))
        if cached:
            from_cache.append(label(cell))
        if len(curves) == top:
            break
    if not curves:
        raise _missing_artefacts(cells, cache, "scores of both classes", store_checked=images is not None)
    if from_cache and on_note is not None:
        on_note(f"roc: scores of {', '.join(from_cache)} read from the artefact cache {cache.root} "
                "(the store holds no per-image rows of those cells)")
    return plots.roc_curves(curves, path, title="ROC of the best detector cells (eval)")


def heatmap(cells, path: Path) -> Path:
    """Table 3 as a heat map: share of images whose reference label left the top-k, per
    operation (rows) and imageset (columns)."""
    predict = [c for c in cells if c.stage == "predict" and c.status == "ok"]
    if not predict:
        raise AdvbenchError("this run has no prediction cells")
    ops = list(dict.fromkeys(c.operation for c in predict))
    columns = list(dict.fromkeys((c.dataset, c.model, c.imageset) for c in predict))  # one per world and imageset
    lookup = {(c.operation, c.dataset, c.model, c.imageset): c for c in predict}
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
    """Detection accuracy against the number of operations each feature group needs; each
    operation-subset search as a line (eval accuracy at each subset size, chosen on dev)."""
    label = _labeller(cells)
    points = [(label(c), metric(c, "operations"), metric(c, "accuracy")) for c in _detect_cells(cells)
              if metric(c, "operations") is not None]
    curves = []
    for c in cells:
        if c.stage == "subset" and c.status == "ok" and (steps := subset_steps(c)):
            curves.append((f"subset search: {label(c)}", [size for size, _, _ in steps],
                           [metric(c, "accuracy", where) for _, _, where in steps]))
    if not points and not curves:
        raise AdvbenchError("this run has no feature-based detector cells")
    return plots.accuracy_vs_cost(points, path, curves=curves)


def security(cells, path: Path, top: int = 6) -> Path:
    """Security curves: per attack family with budgets (oblivious and adaptive side by side), the
    detection rate and the defended system's success against the budget, one line per detector
    (the ``top`` most accurate detector cells, and in an adaptive panel the targeted defense),
    the attack alone for reference."""
    curves = [c for c in security_curves(cells) if sum(b is not None for b in c.budgets) >= 1]
    if not curves:
        raise AdvbenchError("this run has no evaluation sets with budgets (add 'budgets' to an attack or an "
                            "adaptive attack)")
    accuracy = {defense(c): metric(c, "accuracy") or 0.0 for c in _detect_cells(cells)}
    names = list(dict.fromkeys(name for curve in curves for name, detects, _ in curve.defenses if detects))
    shown = set(sorted(names, key=lambda n: -accuracy.get(n, 0.0))[:top])
    several = len({(c.dataset, c.model) for c in curves}) > 1
    panels = []
    for curve in curves:
        keep = [i for i, b in enumerate(curve.budgets) if b is not None]
        x = [curve.budgets[i] for i in keep]
        detection, system = [], []
        for name, detects, points in curve.defenses:
            # an adaptive panel always shows the defense it attacks, however it ranks
            targeted = name in curve.targeted
            if name in shown or targeted:
                label = f"{name} (targeted)" if targeted else name
                detection.append(_series(label, x, [points[i][0] for i in keep]))
                system.append(_series(label, x, [points[i][1] for i in keep]))
        system.append(_series("(attack alone)", x, [curve.attack[i] for i in keep]))
        title = f"{curve.model}: {curve.name}" if several else curve.name
        panels.append((title, [detection, system]))
    return plots.security_curves(panels, path)


def _series(name: str, x: list, estimates: list[Estimate]) -> plots.Series:
    def values(pick) -> list[float]:
        return [np.nan if (v := pick(e)) is None else v for e in estimates]

    return (name, x, values(lambda e: e.value), values(lambda e: e.lo), values(lambda e: e.hi))


def logits(cells, cache: Cache, path: Path, images: ImageColumns | None = None,
           on_note: Callable[[str], None] | None = None) -> Path:
    """Fig. 2: eval-set logits of every detector that exposes them (CNN detectors), from the
    store's per-image rows (``images``) where they hold the cell's logits, else from its cached
    artefacts; ``on_note`` hears when the cache had to be read."""
    label = _labeller(cells)
    stored = eval_columns(images, ("logit_0", "logit_1", "y"))
    panels, from_cache = [], []
    for cell in _detect_cells(cells):
        if cell.key in stored:
            logit_0, logit_1, y = stored[cell.key]
            panels.append((label(cell), np.stack([logit_0, logit_1], axis=1), y.astype(np.int64)))
        elif (arrays := _eval_arrays(cache, cell, "logits", "y")) is not None:
            panels.append((label(cell), *arrays))
            from_cache.append(label(cell))
    if not panels:
        raise _missing_artefacts(cells, cache, 'logits (add a CNN detector, e.g. plugin = "cnn-small")',
                                 store_checked=images is not None)
    if from_cache and on_note is not None:
        on_note(f"logits: {', '.join(from_cache)} read from the artefact cache {cache.root} "
                "(the store holds no per-image logits of those cells)")
    return plots.logit_scatter(panels, path)
