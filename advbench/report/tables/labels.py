"""What a cell's labels say about the image set it makes or scores (budget, threat model,
target, attack family, the defense it applies), which sets are evaluation sets, and which
cells pair up (the closest names, the same norm and budget).

The cell's budget, threat and target columns are read with getattr: stores written before they
existed hold the labels only ("pgd@0.03", "eot-pgd@0.03>svm/differences/JPEG"), parsed here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from advbench.plan import IMAGES

_BUDGET_IN_LABEL = re.compile(r"@([0-9.eE+-]+)$")


def budget(cell) -> float | None:
    """The budget of an attack, adaptive or score cell's image set; None for a primary attack."""
    value = getattr(cell, "budget", None)
    if value is not None:
        return float(value)
    found = _BUDGET_IN_LABEL.search((cell.attack or "").split(">", 1)[0])
    try:
        return float(found.group(1)) if found else None
    except ValueError:
        return None


def budget_text(value: float | None) -> str:
    """A budget as the tables print it: "0.03", or "–" (none)."""
    return "–" if value is None else f"{value:g}"


def threat(cell) -> str:
    """"oblivious" or "adaptive" for attack, adaptive and score cells; "" for the others."""
    value = getattr(cell, "threat", "") or ""
    if value:
        return value
    if cell.stage == "adaptive" or (cell.stage == "score" and ">" in (cell.attack or "")):
        return "adaptive"
    return "oblivious" if cell.stage in ("attack", "score") else ""


def target(cell) -> str:
    """The defense an adaptive set was made against ("" for oblivious sets)."""
    value = getattr(cell, "target", "") or ""
    return value or ((cell.attack or "").split(">", 1)[1] if ">" in (cell.attack or "") else "")


def family(cell) -> str:
    """The attack entry's label without budget and target: "pgd@0.03" -> "pgd"."""
    label = (cell.attack or "").split(">", 1)[0]
    if budget(cell) is not None and "@" in label:
        label = label.rsplit("@", 1)[0]
    return label


def defense(cell) -> str:
    """The label of the defense a score cell applies: a detector cell as "detector/feature/group"
    (the label adaptive targets use), a corrector as "corrector/group", the detect-then-correct
    pipeline as "pipeline: detector/feature → corrector/group"."""
    det = "/".join(p for p in (cell.detector, cell.feature, "" if cell.transform == IMAGES else cell.transform) if p)
    if cell.detector and cell.corrector:
        return f"pipeline: {'/'.join(p for p in (cell.detector, cell.feature) if p)} → {cell.corrector}/{cell.transform}"
    return det if cell.detector else f"{cell.corrector}/{cell.transform}"


def targeted(cell, target_label: str) -> bool:
    """Whether a score cell applies the defense an adaptive set targets: that detector cell, the
    pipeline, or, for a group's operations, every detector and corrector over that group."""
    if target_label == "pipeline":
        return bool(cell.detector and cell.corrector)
    return defense(cell) == target_label or (not (cell.detector and cell.corrector) and cell.transform == target_label)


def evaluation_sets(cells) -> set[tuple[str, str, str]]:
    """(dataset, model, label) of the attack and adaptive cells that make evaluation sets (eval
    sources only, scored, never trained on): a cell's own ``evaluation`` flag where it has one,
    else an adaptive set, a budget grid point, or a set that score cells were run on (an
    ``evaluation = true`` entry without budgets)."""
    scored = {(c.dataset, c.model, c.attack) for c in cells if c.stage == "score"}
    out = set()
    for c in cells:
        if c.stage not in ("attack", "adaptive"):
            continue
        flag = getattr(c, "evaluation", None)
        name = (c.dataset, c.model, c.attack)
        if flag if flag is not None else (threat(c) == "adaptive" or budget(c) is not None or name in scored):
            out.add(name)
    return out


def same_budget(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def same_norm(a, b) -> bool:
    """Whether two cells' budgets are in the same norm; true where a store does not say."""
    na, nb = getattr(a, "norm", "") or "", getattr(b, "norm", "") or ""
    return not na or not nb or na == nb


def _name_parts(label: str) -> set[str]:
    return set(re.split(r"[^a-z0-9]+", label.lower())) - {""}


def closest(items: Sequence, name: str, name_of: Callable[[Any], str], or_all: bool = True) -> list:
    """The items whose name matches ``name`` best: the same name, else those sharing the most
    name parts ("eot-pgd" and "pgd-grid" share "pgd"), else (``or_all``) all of them when none
    shares a part. The store does not say which attacks are related; their names are what it has."""
    if not items:
        return []
    same = [i for i in items if name_of(i) == name]
    if same:
        return same
    parts = _name_parts(name)
    shared = [len(parts & _name_parts(name_of(i))) for i in items]
    best = max(shared)
    return [i for i, k in zip(items, shared) if k == best] if best else list(items) if or_all else []
