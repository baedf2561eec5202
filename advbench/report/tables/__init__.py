"""Tables built from a run's stored cells and metrics: the leaderboard and the paper's tables.

Each builder is a pure function of the cell rows, returning :class:`Table` values that any
format can render. A rate is an :class:`Estimate` (value, 95 % interval, count): human formats
print it as ``0.91 [0.88, 0.94]``, machine formats (CSV, JSON) as separate value/lo/hi/n columns.

- ``base``: Table, Estimate, Rank, and a cell's metrics read as estimates;
- ``leaderboards``: the leaderboard, the leaderboard across runs, two runs compared, failed cells;
- ``paper``: the paper's Tables 1–6;
- ``detection``: each detector's detection rate per attack;
- ``matched``: detectors at matched operating points per attack, mixture and per-attack protocols;
- ``labels``: how a cell's budget and defense are printed, which score cells a target names;
- ``evaluation``: adaptive attacks, security curves, unseen attacks, operation subsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from advbench.errors import AdvbenchError
from advbench.report.tables.base import (CONFIDENCE, DECIMALS_NOTE, INTERVAL_NOTE, Estimate, Rank, Table,
                                         decimals_for, detection_rate_overall, estimate, metric, standard, wilson)
from advbench.report.tables.detection import detection_by_attack
from advbench.report.tables.evaluation import (SUCCEEDS_AT, SecurityCurve, adaptive_tables, attack_estimate,
                                               detection_estimate, security, security_curves,
                                               smallest_succeeding_budget, subset, subset_steps, system_estimate,
                                               unseen)
from advbench.report.tables.labels import budget_text, defense, detector_label, evaluation_sets, targeted
from advbench.report.tables.matched import matched, protocol
from advbench.report.tables.leaderboards import (BOARD_RATES, LEADERBOARD_METRICS, LOWER_IS_BETTER, METRIC_TITLES,
                                                 compare, cross_run_leaderboard, failures, leaderboard)
from advbench.report.tables.paper import table1, table2, table3, table4, table5, table6
from advbench.report.tables.robust import robust_curves, robust_table

__all__ = [
    "BOARD_RATES", "CONFIDENCE", "DECIMALS_NOTE", "EXTRA_TABLES", "INTERVAL_NOTE", "LEADERBOARD_METRICS",
    "LOWER_IS_BETTER", "METRIC_TITLES", "SUCCEEDS_AT", "TABLES", "TABLE_NEEDS", "Estimate", "Rank", "SecurityCurve",
    "Table", "adaptive_tables", "attack_estimate", "budget_text", "compare", "cross_run_leaderboard",
    "decimals_for", "defense", "detection_by_attack", "detection_estimate", "detection_rate_overall",
    "detector_label", "estimate", "evaluation_sets", "failures", "leaderboard", "matched", "metric", "protocol",
    "robust_curves", "robust_table", "security", "security_curves", "smallest_succeeding_budget", "standard",
    "subset", "subset_steps", "system_estimate", "table1", "table2", "table3", "table4", "table5", "table6",
    "table_named", "targeted", "unseen", "wilson",
]

TABLES: dict[int, Callable[[Sequence], list[Table]]] = {1: table1, 2: table2, 3: table3, 4: table4, 5: table5, 6: table6}
"""The paper's tables by number (``report --table N``)."""
EXTRA_TABLES: dict[str, Callable[[Sequence], list[Table]]] = {
    "detection": detection_by_attack, "adaptive": adaptive_tables, "security": security, "unseen": unseen,
    "subset": subset, "robust": robust_table, "matched": matched}
"""Tables by name beyond the paper's (``report --table detection``)."""


#: What a run needs for each extra table to have rows (the hint of an empty report).
TABLE_NEEDS = {"detection": "finished detector cells",
               "adaptive": "[[adaptive]] attacks",
               "security": "attacks with 'budgets' or [[adaptive]] attacks (evaluation sets)",
               "unseen": "held-out detector cells: detection.protocol = \"leave-one-attack-out\" or detection.partitions",
               "subset": "detection.subset_search",
               "robust": "[[robust]] entries (an attack ensemble's worst case per defense and budget)",
               "matched": "finished detector cells (per-attack ones: detection.protocol = \"per-attack\")"}


def table_named(name: str) -> Callable[[Sequence], list[Table]]:
    """The builder of ``report --table NAME``: a paper table by number, or an extra table."""
    if name.isdigit() and int(name) in TABLES:
        return TABLES[int(name)]
    if name in EXTRA_TABLES:
        return EXTRA_TABLES[name]
    raise AdvbenchError(f"--table {name!r}: unknown table; valid: {', '.join(map(str, TABLES))}, {', '.join(EXTRA_TABLES)}")
