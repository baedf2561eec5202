"""Figures for reports: Fig. 2's logit scatter, ROC curves, heatmaps (Table 3), accuracy vs cost,
security curves (rates against the attack budget).

Each function draws one figure from plain arrays and writes it to ``path``; the format follows
the suffix (``.png``, ``.svg`` or ``.pdf``). The path is returned. matplotlib is imported on first
use (so commands that draw nothing do not pay for it); figures are drawn on a
bare :class:`matplotlib.figure.Figure` (no pyplot, no global backend or state), so these are
safe to call from worker threads and headless machines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from advbench.errors import AdvbenchError

FORMATS = (".png", ".svg", ".pdf")
NORMAL_COLOR = "tab:blue"
ADVERSARIAL_COLOR = "tab:red"
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _target(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise AdvbenchError(f"{path}: cannot tell the figure format; use a file name ending in {', '.join(FORMATS)}")
    return path


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.text import Text

    for text in fig.findobj(Text):  # labels are names, not TeX: "$x$" prints as written, never crashes
        text.set_parse_math(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, metadata={"Software": None} if path.suffix.lower() == ".png" else None)
    return path


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(max(n, 1) / cols), cols


# --- Fig. 2 --------------------------------------------------------------------------------


def logit_scatter(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | os.PathLike[str],
                  *, max_cols: int = 3, max_points: int | None = 5000, seed: int = 0) -> Path:
    """Fig. 2: one panel per detector, x = normal logit, y = adversarial logit.

    ``panels``: ``(title, logits (N, 2) with columns [normal, adversarial], labels (N,))``,
    label 1 = adversarial (red), 0 = normal (blue). The dashed diagonal
    ``logit_norm = logit_adv`` is the decision boundary. ``max_points`` subsamples each panel
    (seeded) to keep vector files small; None draws every point.
    """
    path = _target(path)
    if not panels:
        raise ValueError("logit_scatter needs at least one panel")
    rows, cols = _grid(len(panels), max_cols)
    fig = _figure(4.0 * cols, 3.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    rng = np.random.default_rng(seed)
    for i, (title, logits, labels) in enumerate(panels):
        z, y = np.asarray(logits, dtype=float), np.asarray(labels).ravel()
        if z.ndim != 2 or z.shape[1] != 2 or len(z) != len(y):
            raise ValueError(f"panel {title!r}: logits must be (N, 2) and labels (N,), got {z.shape} and {y.shape}")
        if max_points is not None and len(z) > max_points:
            keep = np.sort(rng.choice(len(z), max_points, replace=False))
            z, y = z[keep], y[keep]
        ax = axes[i // cols][i % cols]
        for label, color, name in ((0, NORMAL_COLOR, "normal"), (1, ADVERSARIAL_COLOR, "adversarial")):
            pts = z[y == label]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, c=color, alpha=0.6, linewidths=0, label=f"{name} ({len(pts)})")
        finite = z[np.isfinite(z).all(axis=1)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (-1.0, 1.0)
        pad = 0.05 * (hi - lo) or 1.0
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="boundary")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_title(str(title), fontsize=10)
        ax.set_xlabel("normal logit")
        ax.set_ylabel("adversarial logit")
        ax.legend(loc="best", fontsize=7, markerscale=2)
    for j in range(len(panels), rows * cols):
        axes[j // cols][j % cols].set_axis_off()
    return _save(fig, path)


# --- ROC -----------------------------------------------------------------------------------


def roc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | os.PathLike[str],
               *, title: str = "ROC") -> Path:
    """ROC curves, one per ``(name, fpr, tpr)``; the legend gives each curve's AUC."""
    path = _target(path)
    fig = _figure(5.0, 4.5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":", label="chance")
    for name, fpr, tpr in curves:
        fpr, tpr = np.asarray(fpr, dtype=float).ravel(), np.asarray(tpr, dtype=float).ravel()
        if fpr.shape != tpr.shape:
            raise ValueError(f"curve {name!r}: fpr and tpr differ in length ({len(fpr)} vs {len(tpr)})")
        order = np.lexsort((tpr, fpr))
        auc = float(_trapezoid(tpr[order], fpr[order])) if len(fpr) > 1 else float("nan")
        ax.plot(fpr[order], tpr[order], lw=1.4, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


# --- heatmap -------------------------------------------------------------------------------


def heatmap(title: str, row_labels: Sequence[str], col_labels: Sequence[str], values: Any,
            path: str | os.PathLike[str], *, fmt: str = "{:.1f}", cmap: str = "viridis",
            colorbar_label: str = "") -> Path:
    """A labelled heatmap with each cell's value written in it (NaN cells stay blank).

    Made for Table 3 (rows: image operations, columns: attacks, values: the share of labels
    changed), but any 2-D table fits.
    """
    path = _target(path)
    v = np.asarray(values, dtype=float)
    if v.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values have shape {v.shape}, labels say ({len(row_labels)}, {len(col_labels)})")
    fig = _figure(max(4.0, 1.1 + 0.75 * len(col_labels)), max(2.5, 1.2 + 0.32 * len(row_labels)))
    ax = fig.subplots()
    masked = np.ma.masked_invalid(v)
    image = ax.imshow(masked, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels], fontsize=8)
    finite = v[np.isfinite(v)]
    if finite.size:
        mid = (float(finite.min()) + float(finite.max())) / 2
        for (r, c), x in np.ndenumerate(v):
            if np.isfinite(x):
                ax.text(c, r, fmt.format(x), ha="center", va="center", fontsize=7,
                        color="black" if x > mid else "white")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_title(title)
    return _save(fig, path)


# --- accuracy vs cost ----------------------------------------------------------------------


LABEL_ALL_UP_TO = 8


def accuracy_vs_cost(points: Sequence[tuple[str, float, float]], path: str | os.PathLike[str],
                     *, title: str = "Accuracy vs number of operations", ylabel: str = "accuracy",
                     curves: Sequence[tuple[str, Sequence[float], Sequence[float]]] = ()) -> Path:
    """Each ``(name, n_ops, accuracy)`` as a point; the dashed line is the Pareto front (the best
    accuracy reachable with at most that many image operations). Only the front's points are
    named when there are many (dozens of labels on one plot are unreadable). Each of ``curves``,
    ``(name, n_ops, accuracy)`` sequences (e.g. an operation-subset search), is a line with markers."""
    path = _target(path)
    fig = _figure(5.5, 4.0)
    ax = fig.subplots()
    for i, (name, x, y) in enumerate(curves):  # C0 is the detector cells' colour
        ax.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker="s", ms=4, lw=1.2, zorder=2,
                color=f"C{1 + i % 9}", label=str(name))
    if points:
        names = [str(p[0]) for p in points]
        x = np.asarray([p[1] for p in points], dtype=float)
        y = np.asarray([p[2] for p in points], dtype=float)
        front, best = [], -np.inf
        for i in np.lexsort((-y, x)):
            if np.isfinite(y[i]) and y[i] > best:
                best = y[i]
                front.append(i)
        labelled = range(len(points)) if len(points) <= LABEL_ALL_UP_TO else front
        ax.scatter(x, y, s=20, c="tab:blue", alpha=0.45, zorder=3, label="detector cell")
        ax.scatter(x[front], y[front], s=28, c="tab:blue", zorder=4)
        for i in labelled:
            ax.annotate(names[i], (x[i], y[i]), textcoords="offset points", xytext=(4, -10), fontsize=7)
        if len(front) > 1:
            ax.step(x[front], y[front], where="post", ls="--", lw=0.9, color="0.4", label="Pareto front")
    if points or curves:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("number of image operations")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --- security curves -----------------------------------------------------------------------

#: (name, budgets, values, lower bounds, upper bounds); NaN where there is no value
Series = tuple[str, Sequence[float], Sequence[float], Sequence[float], Sequence[float]]


def security_curves(panels: Sequence[tuple[str, Sequence[Sequence[Series]]]], path: str | os.PathLike[str],
                    *, rows: Sequence[str] = ("detection rate", "system success"), xlabel: str = "budget",
                    max_cols: int = 4, title: str = "") -> Path:
    """Rates against the attack budget: one column of panels per ``(title, series per row)``
    (an attack family), one row of panels per quantity in ``rows``; each series a line with
    its 95 % interval as a band. A name keeps its colour in every panel; names starting with
    "(" (a reference such as the attack alone) are drawn dashed and black."""
    path = _target(path)
    if not panels:
        raise ValueError("security_curves needs at least one panel")
    if any(len(per_row) != len(rows) for _, per_row in panels):
        raise ValueError(f"each panel needs one list of series per row ({len(rows)})")
    n_rows, cols = _grid(len(panels), max_cols)
    fig = _figure(3.6 * cols, 2.9 * len(rows) * n_rows)
    axes = fig.subplots(len(rows) * n_rows, cols, squeeze=False)
    names = list(dict.fromkeys(s[0] for _, per_row in panels for series in per_row for s in series
                               if not str(s[0]).startswith("(")))
    colours = {name: f"C{i % 10}" for i, name in enumerate(names)}
    for i, (panel_title, per_row) in enumerate(panels):
        block, col = divmod(i, cols)
        xs = np.asarray([v for series in per_row for s in series for v in s[1]], dtype=float)
        x_lo, x_hi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
        pad = 0.05 * (x_hi - x_lo) or 0.05 * abs(x_hi) or 0.05  # one budget: a visible range around it
        for r, (quantity, series) in enumerate(zip(rows, per_row)):
            ax = axes[block * len(rows) + r][col]
            for name, x, y, lo, hi in series:
                x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
                lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
                reference = str(name).startswith("(")
                colour = "black" if reference else colours[name]
                ax.plot(x, y, marker="o", ms=3.5, lw=1.3, color=colour, ls="--" if reference else "-", label=str(name))
                if np.isfinite(lo).any():
                    ax.fill_between(x, lo, hi, color=colour, alpha=0.12, lw=0)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlim(x_lo - pad, x_hi + pad)  # the rows of a column share the budgets
            ax.grid(alpha=0.3)
            ax.set_ylabel(quantity)
            if r == 0:
                ax.set_title(str(panel_title), fontsize=9)
            if r == len(rows) - 1:
                ax.set_xlabel(xlabel)
    for j in range(len(panels), n_rows * cols):
        block, col = divmod(j, cols)
        for r in range(len(rows)):
            axes[block * len(rows) + r][col].set_axis_off()
    handles, labels = {}, []
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if handles:
        fig.legend([handles[label] for label in labels], labels, loc="outside lower center", fontsize=7,
                   ncols=min(4, len(labels)))
    if title:
        fig.suptitle(title)
    return _save(fig, path)
