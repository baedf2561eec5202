"""The evaluation protocol's tables: adaptive attacks against the defenses they target (and
every detector on their sets), security curves over budgets, detectors scored on attacks they
never trained on, and the greedy operation-subset search."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from advbench.schema import IMAGES, PER_ATTACK
from advbench.report.tables.base import (DECIMALS_NOTE, INTERVAL_NOTE, Estimate, Table, by_world,
                                         detection_rate_on, estimate, metric, standard, wilson)
from advbench.report.tables.labels import budget_steps, budget_text, defense, evaluation_sets, same_budget, same_norm, targeted
from advbench.report.tables.robust import robust_curves

SUCCEEDS_AT = 0.5  # the system success at which an attack "succeeds" against a defense


def detection_estimate(cell) -> Estimate:
    """A score cell's detection rate over the set's successful adversarial eval images."""
    return wilson(metric(cell, "detection_rate"), metric(cell, "n"))


def system_estimate(cell) -> Estimate:
    """A score cell's system success: attacked eval images that end fooling the defended system."""
    return wilson(metric(cell, "system_success"), metric(cell, "attempted"))


def attack_estimate(cell) -> Estimate:
    """An attack or adaptive cell's success rate: successes over attacked images."""
    success, tried = metric(cell, "success"), metric(cell, "attempted")
    return wilson(None if success is None or not tried else success / tried, tried)


def _score_cells(cells) -> list:
    return [c for c in cells if c.stage == "score" and c.status == "ok"]


def _defense_key(cell) -> tuple:
    return (cell.dataset, cell.model, cell.detector, cell.feature, cell.feature_group, cell.corrector,
            cell.correction_group)


def smallest_succeeding_budget(score_cells, threshold: float = SUCCEEDS_AT) -> str:
    """The smallest budget whose system success reaches ``threshold`` among score cells of one
    defense and one attack family: "0.03", "> 0.1" (never, up to the largest budget), "–" (no
    budgets)."""
    points = sorted((c.budget, metric(c, "system_success")) for c in score_cells if c.budget is not None)
    if not points:
        return "–"
    hit = next((b for b, v in points if v is not None and v >= threshold), None)
    return f"{hit:g}" if hit is not None else f"> {points[-1][0]:g}"


def _detect_lookup(cells) -> dict[tuple, Any]:
    return {(c.dataset, c.model, c.detector, c.feature, c.feature_group): c
            for c in cells if standard(c) and c.status == "ok"}


def adaptive_tables(cells) -> list[Table]:
    """Adaptive attacks against the defenses they target, beside oblivious attacks of the same
    budget; then every detector on every adaptive set (transfer)."""
    tables = []
    scores = [c for c in cells if c.stage == "score"]
    detects = _detect_lookup(cells)
    evaluation = evaluation_sets(cells)
    primary = [c for c in cells if c.stage == "attack" and (c.dataset, c.model, c.imageset) not in evaluation]
    for (dataset, model), group in by_world(c for c in cells if c.stage == "adaptive").items():
        world = [c for c in scores if (c.dataset, c.model) == (dataset, model)]
        rows = []
        for made in group:
            label, set_budget, goal = made.imageset, made.budget, made.target
            defended = [c for c in world if c.imageset == label and targeted(c, goal)]
            if made.status != "ok" or not defended:
                rows.append((label, budget_text(set_budget), made.status if made.status != "ok" else "(no trained defense)",
                             "–", "–", attack_estimate(made) if made.status == "ok" else None, *([None] * 7)))
                continue
            for sc in defended:
                if sc.status != "ok":
                    rows.append((label, budget_text(set_budget), defense(sc), "–", "–", attack_estimate(made),
                                 sc.status, *([None] * 6)))
                    continue
                same = [c for c in world if _defense_key(c) == _defense_key(sc) and c.status == "ok"]
                curve = [c for c in same if c.threat == "adaptive" and c.family == sc.family and c.target == goal]
                comparators = [c for c in same if c.threat == "oblivious" and same_norm(c, sc)
                               and same_budget(c.budget, set_budget)]
                for ob in comparators or [None]:
                    first_primary = (_primary_of(primary, dataset, model, ob) if ob else "") \
                        or _primary_of(primary, dataset, model, sc)
                    detect = detects.get((dataset, model, sc.detector, sc.feature, sc.feature_group)) \
                        if sc.detector and not sc.corrector else None
                    oblivious_curve = [c for c in same if ob is not None and c.threat == "oblivious"
                                       and c.family == ob.family]
                    rows.append((label, budget_text(set_budget), defense(sc), ob.imageset if ob else "–",
                                 first_primary or "–", attack_estimate(made),
                                 detection_estimate(sc) if sc.detector else None,
                                 (detection_estimate(ob) if sc.detector else None) if ob else None,
                                 detection_rate_on(detect, first_primary) if first_primary and detect else None,
                                 system_estimate(sc), system_estimate(ob) if ob else None,
                                 smallest_succeeding_budget(curve),
                                 smallest_succeeding_budget(oblivious_curve) if ob else "–"))
        tables.append(Table(
            f"Adaptive attacks against the defense they target — {dataset} / {model} (eval images)",
            ("Adaptive set", "Budget", "Defense", "Oblivious set", "Primary", "Attack success", "Det. adaptive",
             "Det. oblivious", "Det. primary", "System adaptive", "System oblivious",
             f"Adaptive ≥ {SUCCEEDS_AT:g} at", f"Oblivious ≥ {SUCCEEDS_AT:g} at"), tuple(rows),
            ("Adaptive set: attack@budget>target; Defense: each trained cell of that target (for a group's operations, "
             "every detector and corrector over the group); Oblivious set: each oblivious evaluation set of the same "
             "budget and norm (a row each); Primary: the primary attack of that set's attack plugin",
             "Attack success: successes / attacked eval images, under the adaptive attack's own condition; "
             "Det.: share of the set's successful adversarial eval images the defense flags (Det. primary: in the "
             "defense's detect cell, on the primary attack's eval images); System: share of attacked eval images "
             "that fool the classifier and are not undone by the defense",
             f"≥ {SUCCEEDS_AT:g} at: the smallest budget of the family whose system success reaches "
             f"{SUCCEEDS_AT:g} against that defense ('> b': not up to the largest budget b)",
             "[lo, hi]: Wilson score 95 % intervals; " + DECIMALS_NOTE), key_columns=3))
        tables += _transfer(dataset, model, group, world)
    return tables


def _primary_of(primary, dataset: str, model: str, made) -> str:
    """The primary attack of the same world made by the plugin that made ``made``'s set (and in
    its norm), "" when there is none."""
    return next((c.imageset for c in primary if (c.dataset, c.model) == (dataset, model) and made.plugin
                 and c.plugin == made.plugin and same_norm(c, made)), "")


def _transfer(dataset: str, model: str, adaptive_cells, world) -> list[Table]:
    sets = [c.imageset for c in adaptive_cells if c.status == "ok"]
    detectors = [c for c in world if c.detector and c.imageset in sets and c.status == "ok"]
    labels = list(dict.fromkeys(defense(c) for c in detectors))
    if not labels:
        return []
    lookup = {(defense(c), c.imageset): c for c in detectors}
    rows = tuple((name, *(detection_estimate(lookup[(name, s)]) if (name, s) in lookup else None for s in sets))
                 for name in labels)
    return [Table(f"Adaptive sets: detection rate of every detector (transfer) — {dataset} / {model}",
                  ("Detector", *sets), rows,
                  ("a column's target follows '>'; every other detector meets that set as a transfer attack",
                   "share of the set's successful adversarial eval images flagged; [lo, hi]: Wilson score 95 % "
                   "intervals; –: no successful image to score"))]


@dataclass(frozen=True)
class SecurityCurve:
    """Detection rate and system success of each defense against one attack family (and, for an
    adaptive family, one target) over its budgets; ``attack``: the attack's own success rate."""

    dataset: str
    model: str
    family: str
    threat: str
    target: str
    budgets: tuple[float | None, ...]
    #: (defense label, whether it detects, ((detection rate, system success) per budget))
    defenses: tuple[tuple[str, bool, tuple[tuple[Estimate, Estimate], ...]], ...]
    attack: tuple[Estimate, ...]
    #: labels of the defenses an adaptive family targets (``labels.targeted``)
    targeted: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        if self.threat == "robust":
            return f"{self.family} (worst case vs {self.target})"
        return f"{self.family} (adaptive vs {self.target})" if self.threat == "adaptive" else f"{self.family} (oblivious)"


def security_curves(cells) -> list[SecurityCurve]:
    """One curve per dataset/model, attack family, threat model and target, over the budgets of
    its evaluation sets (oblivious families first)."""
    makers = {(c.dataset, c.model, c.imageset): c for c in cells
              if c.stage in ("attack", "adaptive") and c.status == "ok"}
    groups: dict[tuple, list] = defaultdict(list)
    for c in _score_cells(cells):
        groups[(c.dataset, c.model, c.threat == "adaptive", c.family, c.target)].append(c)
    curves = []
    for (dataset, model, adaptive, fam, goal), group in sorted(groups.items(), key=lambda kv: kv[0][:3]):
        budget_of = {c.imageset: c.budget for c in group}
        labels = sorted(budget_of, key=lambda a: budget_of[a] or 0.0)
        budgets = tuple(budget_of[a] for a in labels)
        lookup = {(defense(c), c.imageset): c for c in group}
        names = list(dict.fromkeys(defense(c) for c in group))
        detects = {defense(c): bool(c.detector) for c in group}
        empty = (Estimate(None), Estimate(None))
        rows = tuple((name, detects[name], running_worst(tuple(
            (detection_estimate(c), system_estimate(c)) if (c := lookup.get((name, a))) is not None else empty
            for a in labels))) for name in names)
        attack = tuple(attack_estimate(m) if (m := makers.get((dataset, model, a))) else Estimate(None) for a in labels)
        aimed = frozenset(defense(c) for c in group if adaptive and targeted(c, goal))
        curves.append(SecurityCurve(dataset, model, fam, "adaptive" if adaptive else "oblivious", goal, budgets, rows,
                                    attack, aimed))
    return curves + robust_curves(cells)


def running_worst(points: tuple[tuple[Estimate, Estimate], ...]) -> tuple[tuple[Estimate, Estimate], ...]:
    """Each budget's system success replaced by the largest up to it: an attacker with budget b
    may submit any image of a smaller budget of the family, so a security curve never falls (a
    lower bound of the per-image worst case, which ``[[robust]]`` measures). Detection rates are
    each set's own."""
    out, worst = [], Estimate(None)
    for det, system in points:
        if system.value is not None and (worst.value is None or system.value > worst.value):
            worst = system
        out.append((det, worst))
    return tuple(out)


def security(cells) -> list[Table]:
    """Per attack family with evaluation sets: each defense's detection rate and the defended
    system's success at each budget (a security curve read as a table)."""
    tables = []
    for curve in security_curves(cells):
        marks = ["" if b is None else f" @{budget_steps(b)}" for b in curve.budgets]
        columns = [col for b in marks for col in (f"Det.{b}", f"System{b}")]
        rows = [(name, *(x for det, sys in points for x in (det if detects else None, sys)))
                for name, detects, points in curve.defenses]
        rows.append(("(attack alone)", *(x for est in curve.attack for x in (None, est))))
        tables.append(Table(f"Security curve — {curve.name} — {curve.dataset} / {curve.model} (eval images)",
                            ("Defense", *columns), tuple(rows),
                            ("Det. @b: share of the set's successful adversarial eval images the defense flags; "
                             "System @b: share of attacked eval images that fool the classifier and are not undone "
                             "by the defense (a detector undoes what it flags, a corrector what it restores); for a "
                             "single attack configuration the largest over its budgets up to b (an attacker with "
                             "budget b may submit any of those images), so no curve falls; a worst-case curve "
                             "(--table robust) is the per-image worst case over an ensemble and every smaller budget",
                             "(attack alone): the attack's success rate on the undefended classifier "
                             "(an adaptive attack's: under its defense's condition too)",
                             "[lo, hi]: Wilson score 95 % intervals; –: not a detector, or no successful image; "
                             + DECIMALS_NOTE)))
    return tables


def unseen(cells) -> list[Table]:
    """Detector cells trained without an attack (leave-one-attack-out, or a named partition),
    scored on that unseen attack, beside the standard cell that saw it in training."""
    tables = []
    detects = _detect_lookup(cells)
    held = [c for c in cells if c.stage == "detect" and c.holdout
            and not c.holdout.startswith(PER_ATTACK)]  # per-attack cells: the matched table
    for (dataset, model), group in by_world(held).items():
        rows = []
        for c in group:
            name = (c.detector, c.feature, c.feature_group if c.feature_group != IMAGES else "", c.holdout)
            if c.status != "ok":
                rows.append((*name, "–", *([c.status] * 4), None))
                continue
            seen = detects.get((dataset, model, c.detector, c.feature, c.feature_group))
            for attack in dict.fromkeys(m.subset for m in c.metrics if m.name == "detection_rate" and m.subset):
                rate = detection_rate_on(c, attack)
                before = detection_rate_on(seen, attack)
                drop = None if rate.value is None or before.value is None else rate.value - before.value
                rows.append((*name, attack, rate, before, estimate(c, "fpr"), estimate(c, "accuracy"), drop))
        tables.append(Table(f"Unseen attacks: detectors trained without them — {dataset} / {model} (eval images)",
                            ("Detector", "Feature", "Group", "Held out", "Unseen attack", "Det. unseen", "Det. seen",
                             "FPR", "Accuracy", "Δ det."), tuple(rows),
                            ("Held out: the attack (leave-one-attack-out) or partition kept out of training; "
                             "Det. unseen: share of that attack's adversarial eval images the held-out cell flags; "
                             "Det. seen: the standard cell (trained on every primary attack) on the same images; "
                             "Δ det. = unseen − seen",
                             "FPR and Accuracy: the held-out cell on normal eval images and the unseen attack's",
                             INTERVAL_NOTE, DECIMALS_NOTE), key_columns=5))
    return tables


def subset(cells) -> list[Table]:
    """The greedy operation-subset search: at each size the operation added (chosen on dev), the
    dev and eval accuracy and the cost, beside the detect cell that uses every operation."""
    tables = []
    detects = _detect_lookup(cells)
    for (dataset, model), group in by_world(c for c in cells if c.stage == "subset").items():
        rows = []
        for c in group:
            name = (c.detector, c.feature, c.feature_group)
            if c.status != "ok":
                rows.append((*name, None, c.status, None, None, None))
                continue
            full = detects.get((dataset, model, c.detector, c.feature, c.feature_group))
            n_dev = metric(full, "n", "dev") if full else None
            n_eval = metric(full, "n") if full else None
            for size, added, where in subset_steps(c):
                rows.append((*name, size, added, wilson(metric(c, "dev_accuracy", where), n_dev),
                             wilson(metric(c, "accuracy", where), n_eval), metric(c, "seconds_per_1000", where)))
            if full is not None:
                ops = metric(full, "operations")
                rows.append((*name, None if ops is None else int(ops), "(all operations: detect cell)",
                             wilson(metric(full, "accuracy", "dev"), n_dev), estimate(full, "accuracy"), None))
        tables.append(Table(f"Operation subsets: greedy search on dev — {dataset} / {model}",
                            ("Detector", "Feature", "Group", "Size", "Operation added", "Dev accuracy",
                             "Eval accuracy", "s / 1,000 images"), tuple(rows),
                            ("each step adds the operation with the best dev accuracy (ties: the cheaper); eval "
                             "accuracy is reported, never used to choose",
                             "s / 1,000 images: measured prediction time of the original and the chosen operations",
                             "[lo, hi]: Wilson score 95 % intervals (n: the detect cell's dev and eval images); "
                             + DECIMALS_NOTE), key_columns=4))
    return tables


def subset_steps(cell) -> list[tuple[int, str, str]]:
    """(size, operation added, metric subset) of a subset cell's steps, smallest first; the
    metrics' subsets read "NN +op"."""
    steps = []
    for m in cell.metrics:
        if m.name == "accuracy" and " +" in m.subset:
            size, added = m.subset.split(" +", 1)
            if size.isdigit():
                steps.append((int(size), added, m.subset))
    return sorted(steps)
