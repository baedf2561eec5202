"""What the report says of a cell's image set and defense, from the cell's explicit fields
(:class:`advbench.schema.Cell`: budget, norm, threat, target, family, plugin; migration 0009
unpacked them for stores written before they existed): how a budget and a defense are printed,
which score cells apply the defense an adaptive set targets, and which sets are evaluation sets.
"""

from __future__ import annotations

import math

from advbench.schema import IMAGES


def budget_text(value: float | None) -> str:
    """A budget as the tables print it: "0.03", or "–" (none)."""
    return "–" if value is None else f"{value:g}"


def budget_steps(value: float | None) -> str:
    """A budget as "8/255" when it is a whole number of 8-bit steps, else as :func:`budget_text`."""
    steps = None if value is None else value * 255
    if steps is not None and abs(steps - round(steps)) < 1e-6 and round(steps) > 0:
        return f"{round(steps)}/255"
    return budget_text(value)


def detector_label(cell) -> str:
    """A detector cell as adaptive targets name it: "detector/feature/group" ("detector" alone
    for detectors that see images)."""
    group = "" if cell.feature_group == IMAGES else cell.feature_group
    return "/".join(p for p in (cell.detector, cell.feature, group) if p)


def defense(cell) -> str:
    """The label of the defense a score cell applies: a detector cell as "detector/feature/group"
    (the label adaptive targets use), a corrector as "corrector/group", the detect-then-correct
    pipeline as "pipeline: detector/feature → corrector/group"."""
    if cell.detector and cell.corrector:
        return (f"pipeline: {'/'.join(p for p in (cell.detector, cell.feature) if p)} → "
                f"{cell.corrector}/{cell.correction_group}")
    return detector_label(cell) if cell.detector else f"{cell.corrector}/{cell.correction_group}"


def targeted(cell, target_label: str) -> bool:
    """Whether a score cell applies the defense an adaptive set targets: that detector cell, the
    pipeline, or, for a group's operations, every detector and corrector over that group."""
    if target_label == "pipeline":
        return bool(cell.detector and cell.corrector)
    if cell.detector and cell.corrector:
        return False
    return defense(cell) == target_label or (cell.feature_group or cell.correction_group) == target_label


def evaluation_sets(cells) -> set[tuple[str, str, str]]:
    """(dataset, model, image set) of the attack and adaptive cells that make evaluation sets
    (eval sources only, scored, never trained on)."""
    return {(c.dataset, c.model, c.imageset) for c in cells if c.stage in ("attack", "adaptive") and c.evaluation}


def same_budget(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def same_norm(a, b) -> bool:
    """Whether two cells' budgets are in the same norm; true where one does not say."""
    na, nb = getattr(a, "norm", "") or "", getattr(b, "norm", "") or ""
    return not na or not nb or na == nb
