"""How many adversarial eval images each image set has, and one warning line for the sets with
too few: a rate over a handful of images says little (its 95 % interval spans most of [0, 1]),
and a set with none drops out of the per-attack columns without a word.

A primary attack's eval images are those of the split's eval sources (the split cell's
``adversarial[<attack>]`` count); an evaluation set (a budget of a grid, an adaptive set) is
made on eval sources only, so all its successes count. Works on the store's cell rows and on a
run's outcomes alike: each cell comes as (stage, dataset, model, attack, metric rows).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

#: Fewer adversarial eval images than this, and a set's rates are not worth much.
FEW = 10
_PRIMARY = re.compile(r"^adversarial\[(.+)\]$")

CellMetrics = tuple[str, str, str, str, Sequence[tuple[str, str, float]]]


def eval_adversarial_counts(cells: Iterable[CellMetrics]) -> dict[tuple[str, str, str], int]:
    """(dataset, model, image set) -> adversarial images on eval, in plan order."""
    cells = list(cells)
    counts: dict[tuple[str, str, str], int] = {}
    for stage, dataset, model, _, metrics in cells:
        if stage == "split":
            for name, subset, value in metrics:
                found = _PRIMARY.match(name)
                if found and subset == "eval":
                    counts[(dataset, model, found.group(1))] = int(value)
    for stage, dataset, model, attack, metrics in cells:  # the split counts every primary attack, even at 0
        if stage in ("attack", "adaptive") and (dataset, model, attack) not in counts:
            success = next((v for n, s, v in metrics if n == "success" and s == ""), None)
            if success is not None:
                counts[(dataset, model, attack)] = int(success)
    return counts


def few_adversarial_warning(cells: Iterable[CellMetrics], few: int = FEW) -> str:
    """One line naming the image sets with fewer than ``few`` adversarial eval images ("" if none)."""
    counts = eval_adversarial_counts(cells)
    several = len({k[:2] for k in counts}) > 1
    low = [f"{f'{d}/{m}/' if several else ''}{label} {n}" for (d, m, label), n in counts.items() if n < few]
    if not low:
        return ""
    return (f"warning: few adversarial eval images (< {few}): {', '.join(low)}; rates on them rest on that many "
            "(none: no column); raise the budget, images_per_model or the eval share of [database] split")


def from_store(cells) -> list[CellMetrics]:
    return [(c.stage, c.dataset, c.model, c.imageset, [(m.name, m.subset, m.value) for m in c.metrics]) for c in cells]


def from_outcomes(outcomes) -> list[CellMetrics]:
    return [(o.cell.stage, o.cell.dataset, o.cell.model, o.cell.imageset, list(o.metrics)) for o in outcomes
            if o.status == "ok"]
