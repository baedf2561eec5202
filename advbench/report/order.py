"""A run's cells in one order, whatever order the store holds them in.

The store numbers cells as they finish, so a run resumed after a kill, or run with workers,
holds them in another order than a quiet run, and every table that lists rows "as first seen"
(Tables 3 and 4, the detection rows) or breaks a tie by position (Table 6) changed with it.
Reports read the cells through :func:`in_plan_order`: by stage, then by each label's position
in the benchmark file the run was made from (its sections, grids and [detection] groups in
file order), then by the label itself (numbers compared as numbers), then by content hash.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from collections.abc import Iterable
from typing import Any

from advbench.config import DEFAULT_GROUPS
from advbench.plan import CLEAN, IMAGES, ORIGINAL
from advbench.stages import STAGES

_NUMBER = re.compile(r"(\d+(?:\.\d+)?(?:e[-+]?\d+)?)")


def natural(label: str) -> tuple:
    """A label's sort key with its numbers compared as numbers (jpeg@30 < jpeg@100)."""
    return tuple((0, float(part)) if i % 2 else (1, part) for i, part in enumerate(_NUMBER.split(label or "")))


class _Positions:
    """Where each label of a section comes in the benchmark file (an entry's label, or the
    label before a grid or budget suffix, ``name@...``)."""

    def __init__(self, labels: Iterable[str]):
        self.index = {label: i for i, label in enumerate(dict.fromkeys(labels))}

    def __call__(self, label: str) -> tuple:
        label = label or ""
        found = self.index.get(label, self.index.get(label.split("@")[0], math.inf))
        return (found, natural(label))


def _labels(doc: dict[str, Any], section: str) -> list[str]:
    items = doc.get(section)
    if not isinstance(items, list):
        return []
    return [str(item.get("name", item.get("plugin", ""))) for item in items if isinstance(item, dict)]


def _operations(doc: dict[str, Any]) -> list[str]:
    """Operation labels in file order, a grid's points in the order config expands them."""
    out = []
    for item in doc.get("transforms") or []:
        if not isinstance(item, dict):
            continue
        base, grid = str(item.get("name", item.get("plugin", ""))), item.get("grid")
        if isinstance(grid, dict) and all(isinstance(v, list) for v in grid.values()):
            out += [base + "".join(f"@{v}" for v in values) for values in itertools.product(*grid.values())]
        out.append(base)
    return out


def _groups(doc: dict[str, Any]) -> list[str]:
    detection = doc.get("detection")
    groups = detection.get("groups") if isinstance(detection, dict) else None
    return list(groups) if isinstance(groups, dict) else list(DEFAULT_GROUPS)


def in_plan_order(cells, config_text: str = "") -> list:
    """``cells`` sorted by stage, then each label's place in the run's benchmark file
    (``config_text``; without it, by the labels alone)."""
    try:
        doc = tomllib.loads(config_text) if config_text else {}
    except tomllib.TOMLDecodeError:
        doc = {}
    stage = {name: i for i, name in enumerate(STAGES)}
    datasets, models = _Positions(_labels(doc, "datasets")), _Positions(_labels(doc, "models"))
    imagesets = _Positions([CLEAN, *_labels(doc, "attacks"), *_labels(doc, "adaptive")])
    operations = _Positions([ORIGINAL, *_operations(doc)])
    groups = _Positions([*_groups(doc), IMAGES])
    features, detectors = _Positions(_labels(doc, "features")), _Positions(_labels(doc, "detectors"))
    correctors = _Positions(_labels(doc, "correctors"))

    def key(cell) -> tuple:
        budget = getattr(cell, "budget", None)
        return (stage.get(cell.stage, len(stage)), datasets(cell.dataset), models(cell.model), imagesets(cell.imageset),
                operations(cell.operation), groups(cell.feature_group), groups(cell.correction_group),
                features(cell.feature),
                detectors(cell.detector), correctors(getattr(cell, "corrector", "")),
                imagesets(getattr(cell, "holdout", "") or ""), math.inf if budget is None else budget,
                natural(getattr(cell, "target", "") or ""), cell.key)

    return sorted(cells, key=key)
