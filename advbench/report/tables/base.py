"""What every table is made of: :class:`Table`, a rate with its interval (:class:`Estimate`),
a leaderboard position (:class:`Rank`), and reading a cell's metrics as estimates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from advbench import metrics as M

CONFIDENCE = 0.95
INTERVAL_NOTE = ("[lo, hi]: 95 % intervals — Wilson score for rates (balanced accuracy: effective n = "
                 "4 / (1/n_normal + 1/n_adversarial)), stratified bootstrap for EER, AUROC and TNR@95%TPR; "
                 "[–]: none stored")
DECIMALS_NOTE = "decimals follow n (no more digits than the interval resolves): 2 below 100 images, 3 below 10,000, else 4"


def decimals_for(n: float | None) -> int:
    """Digits a rate over ``n`` items can carry: a 95 % interval is about ±1/sqrt(n) wide at
    p = 1/2, so n < 100 resolves hundredths at best, n < 10,000 thousandths."""
    if n is None:
        return 3
    return 2 if n < 100 else 3 if n < 10_000 else 4


@dataclass(frozen=True)
class Estimate:
    """A rate with its 95 % interval and the number of items behind it; ``None`` = not stored."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    n: int | None = None

    @property
    def has_interval(self) -> bool:
        return self.lo is not None and self.hi is not None

    def text(self) -> str:
        if self.value is None:
            return "–"
        d = decimals_for(self.n)
        interval = f"{self.lo:.{d}f}, {self.hi:.{d}f}" if self.has_interval else "–"
        return f"{self.value:.{d}f} [{interval}]"

    def fields(self, column: str) -> list[tuple[str, Any]]:
        return [(column, self.value), (f"{column} lo", self.lo), (f"{column} hi", self.hi), (f"{column} n", self.n)]

    def overlaps(self, other: Estimate) -> bool:
        return (self.has_interval and other.has_interval
                and self.lo <= other.hi and other.lo <= self.hi)  # type: ignore[operator]


@dataclass(frozen=True)
class Rank:
    """A leaderboard position; ``tied``: shared with another item (shown ``=1``: not ranked
    apart from the leader, whose interval it overlaps; ``=4``: an equal value)."""

    position: int
    tied: bool = False

    def text(self) -> str:
        return f"={self.position}" if self.tied else str(self.position)

    def fields(self, column: str) -> list[tuple[str, Any]]:
        return [(column, self.position)]

    def trailing_fields(self, column: str) -> list[tuple[str, Any]]:
        # after every other column, so machine readers keep the leading Rank/Detector/... layout
        return [("Tied", self.tied)]


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    notes: tuple[str, ...] = field(default=())
    key_columns: int = 1  # leading columns that name a row: repeated when a wide table is split

    def flat(self) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Columns and rows with each Estimate spread into value, lo, hi, n columns and each
        Rank into its position (plus a trailing "Tied" column): plain values, for CSV and JSON."""
        templates = [next((r[i] for r in self.rows if hasattr(r[i], "fields")), None) for i in range(len(self.columns))]
        columns: list[str] = []
        trailing: list[str] = []
        for col, tmpl in zip(self.columns, templates):
            columns += [col] if tmpl is None else [name for name, _ in tmpl.fields(col)]
            if hasattr(tmpl, "trailing_fields"):
                trailing += [name for name, _ in tmpl.trailing_fields(col)]
        rows = []
        for row in self.rows:
            values: list[Any] = []
            extra: dict[str, Any] = {}
            for col, tmpl, v in zip(self.columns, templates, row):
                if tmpl is None:
                    values.append(v)
                elif hasattr(v, "fields"):
                    values += [x for _, x in v.fields(col)]
                    extra.update(v.trailing_fields(col) if hasattr(v, "trailing_fields") else ())
                else:  # a failed cell's status or "-" in a column of estimates
                    values += [v] + [None] * (len(tmpl.fields(col)) - 1)
            rows.append((*values, *(extra.get(name) for name in trailing)))
        return (*columns, *trailing), rows

    def records(self) -> list[dict[str, Any]]:
        columns, rows = self.flat()
        return [dict(zip(columns, row)) for row in rows]


def metric(cell, name: str, subset: str = "") -> float | None:
    for m in cell.metrics:
        if m.name == name and m.subset == subset:
            return m.value
    return None


def standard(cell) -> bool:
    """A detect cell of the standard protocol (trained on every primary attack); held-out cells
    (``holdout``: an unseen attack or a partition) have their own table, ``unseen``."""
    return cell.stage == "detect" and not (getattr(cell, "holdout", "") or "")


def by_world(cells) -> dict[tuple[str, str], list]:
    """Cells grouped by (dataset, model), in the order first seen."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for c in cells:
        groups[(c.dataset, c.model)].append(c)
    return groups


def counted(cell, name: str = "success"):
    """A cell's metric as a whole number; a failed cell's status; None where absent."""
    if cell is None or cell.status != "ok":
        return None if cell is None else cell.status
    value = metric(cell, name)
    return None if value is None else int(value)


def span(values: Sequence[float | None]) -> str:
    """The range of some counts, as a note prints it: "40", "38–40", or "–" (none)."""
    present = sorted({int(v) for v in values if v is not None})
    if not present:
        return "–"
    return f"{present[0]}" if len(present) == 1 else f"{present[0]}–{present[-1]}"


def wilson(value: float | None, n: float | None, exact: bool = True) -> Estimate:
    """``value`` (a share of ``n`` items) with its Wilson interval; ``exact``: ``value · n`` is
    a whole count (float dust rounded away), else an effective, fractional one."""
    count = None if n is None else int(round(n))
    if value is None or n is None or n <= 0:
        return Estimate(value, n=count)
    successes = min(max(round(value * n) if exact else value * n, 0), n)
    lo, hi = M.wilson_interval(successes, n, CONFIDENCE)
    return Estimate(value, lo, hi, count)


def detection_rate_overall(cell) -> Estimate:
    """TPR on the eval set at the detector's own threshold (``detected`` of ``n_adversarial``),
    as the detect cell stores it. Cells stored before it was (an older store or cache) have it
    recovered exactly from their accuracy, FPR and counts: FP = fpr·n_normal, TP = accuracy·n −
    (n_normal − FP)."""
    detected, n_adv = metric(cell, "detected"), metric(cell, "n_adversarial")
    if detected is not None and n_adv:
        return wilson(detected / n_adv, n_adv)
    acc, fpr, n = metric(cell, "accuracy"), metric(cell, "fpr"), metric(cell, "n")
    n_normal = metric(cell, "n_normal")
    if acc is None or n is None or n_normal is None or not n_adv:
        return Estimate(None, n=None if n_adv is None else int(n_adv))
    false_pos = round((fpr or 0.0) * n_normal)  # fpr is not stored (nan) when n_normal = 0
    true_pos = round(acc * n) - (round(n_normal) - false_pos)
    return wilson(true_pos / n_adv, n_adv)


def detection_rate_on(detect, label: str) -> Estimate:
    """A detect cell's detection rate on one attack's eval images (``label``: the metric subset)."""
    return Estimate(None) if detect is None else wilson(metric(detect, "detection_rate", label), metric(detect, "n", label))


def estimate(cell, name: str) -> Estimate:
    """An eval-set metric of a detector cell with its 95 % interval, where the cell stores
    what the interval needs (counts; bootstrap bounds for EER and AUROC), else without one."""
    if name == "detection_rate":
        return detection_rate_overall(cell)
    value, n = metric(cell, name), metric(cell, "n")
    if name in ("eer", "auroc", "tnr_at_95tpr"):
        lo, hi = metric(cell, f"{name}_lo"), metric(cell, f"{name}_hi")
        return Estimate(value, lo, hi, None if n is None else int(n))
    if name == "balanced_accuracy":
        n0, n1 = metric(cell, "n_normal"), metric(cell, "n_adversarial")
        # Var((TPR + TNR)/2) = p(1-p)·(1/n0 + 1/n1)/4 when both recalls are near p
        n_eff = 4 / (1 / n0 + 1 / n1) if n0 and n1 else n
        return wilson(value, n_eff, exact=False) if n_eff else Estimate(value, n=None if n is None else int(n))
    counts = {"accuracy": n, "fpr": metric(cell, "n_normal"), "tpr_at_5fpr": metric(cell, "n_adversarial"),
              "tpr_at_dev_5fpr": metric(cell, "n_adversarial"), "fpr_at_dev_5fpr": metric(cell, "n_normal")}
    if name not in counts:  # a metric without an interval rule: its value, decimals from n
        return Estimate(value, n=None if n is None else int(n))
    return wilson(value, counts[name])
