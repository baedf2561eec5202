"""``[[robust]]``: the robust evaluation of a defense, as AutoAttack evaluates a classifier
(Croce & Hein 2020): an ensemble of adaptive attacks (members) run against one defense at
ascending budgets, the per-image worst case kept (docs/threat-models.md, "Robust evaluation").

```toml
[[robust]]
name = "robust"                                  # optional label
budgets = ["2/255", "4/255", "8/255", "16/255"]  # ascending; numbers or "a/b"
targets = [{ detector = "svm", feature = "differences", group = "All" }, "pipeline"]
members = [
    { plugin = "eot-pgd", name = "eot-ce", steps = 20, eot_samples = 8 },
    { plugin = "rank-eot", steps = 50, per_budget = { rel_stepsize = [0.25, 0.2, 0.1, 0.05] } },
    # only at these budgets, and only against these defenses
    { plugin = "system-hsj", max_queries = 300, budgets = ["16/255"], targets = ["pipeline"] },
]
```

A member is an adaptive attack plugin with its parameters inline; ``per_budget`` gives a
parameter one value per budget of the entry (per-budget step sizes), ``budgets`` the budgets the
member runs at (default: all), ``targets`` the defenses it attacks (default: every one of the
entry's that its plugin can attack). The member's budget parameter is set to each budget; a member
without one (label-only HopSkipJump) has its images projected into each budget's ball.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from advbench.registry import Registry, unknown_plugin_message
from advbench.specs import Params

NORMS = ("linf", "l2")
ROBUST_TARGET_KINDS = ("detector", "pipeline")


@dataclass(frozen=True)
class Member:
    """One attack configuration of a robust ensemble: its parameters at each budget of the
    entry (None where it does not run)."""

    label: str
    plugin: str
    params: tuple[Params | None, ...]
    targets: tuple[str, ...] = ()  # labels of the defenses it attacks; empty: every one it can

    def identity(self, index: int) -> dict[str, Any]:
        p = self.params[index]
        return {"label": self.label, "plugin": self.plugin, "params": None if p is None else p.model_dump(mode="json"),
                "targets": list(self.targets)}

    def attacks(self, target_label: str) -> bool:
        return not self.targets or target_label in self.targets


@dataclass(frozen=True)
class RobustEntry:
    """A ``[[robust]]`` entry: members, ascending budgets (per pixel value, in ``norm``), and
    the defenses (``Target``) each attacked at every budget."""

    label: str
    norm: str
    budgets: tuple[float, ...]
    targets: tuple[Any, ...]  # config.Target
    members: tuple[Member, ...]

    @property
    def family(self) -> str:
        return self.label

    def members_for(self, target_label: str) -> tuple[Member, ...]:
        """The members that attack one defense, in order: what its cells depend on (their
        keys), and whose warm starts they carry."""
        return tuple(m for m in self.members if m.attacks(target_label))

    def identity(self) -> dict[str, Any]:
        return {"label": self.label, "norm": self.norm, "budgets": list(self.budgets),
                "targets": [t.label for t in self.targets],
                "members": [[m.identity(i) for i in range(len(self.budgets))] for m in self.members]}


def parse_budget(value: Any) -> float | None:
    """A positive budget: a number, or a fraction written "a/b" ("8/255"); None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    if isinstance(value, str):
        try:
            number = float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            return None
        return number if number > 0 else None
    return None


def _budgets(raw: Any, where: str, problems: list[str]) -> tuple[float, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}: required: a non-empty list of budgets per pixel value, e.g. "
                        "[\"2/255\", \"4/255\", \"8/255\", \"16/255\"]")
        return ()
    values = [parse_budget(b) for b in raw]
    bad = [b for b, v in zip(raw, values) if v is None]
    if bad:
        problems.append(f"{where}: expected positive numbers or fractions \"a/b\", found {', '.join(map(repr, bad))}")
        return ()
    above = [b for b, v in zip(raw, values) if v > 1]  # type: ignore[operator]
    if above:
        problems.append(f"{where}: budget {above[0]!r} is above 1: budgets are per pixel value of images in [0, 1] "
                        "(L2: the norm divided by sqrt(D))")
        return ()
    return tuple(sorted(set(values)))  # type: ignore[arg-type]


def parse_robust(items: Any, registry: Registry, problems: list[str], parse_target) -> tuple[RobustEntry, ...]:
    """The ``[[robust]]`` entries of a benchmark; every problem is appended to ``problems``.
    ``parse_target(raw, where, problems)`` reads one ``targets`` item (config's rule)."""
    if items is None:
        return ()
    if not isinstance(items, list) or not items:
        problems.append("robust: expected a non-empty list of [[robust]] tables")
        return ()
    entries, labels = [], set()
    for i, item in enumerate(items):
        where = f"robust[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a table, found {item!r}")
            continue
        unknown = sorted(set(item) - {"name", "norm", "budgets", "targets", "members"})
        if unknown:
            problems.append(f"{where}: unknown key {', '.join(map(repr, unknown))}; valid: name, norm, budgets, targets, "
                            "members")
        label = str(item.get("name", "robust"))
        if label in labels:
            problems.append(f"{where}.name: duplicate robust name {label!r}; give each entry a distinct 'name'")
        labels.add(label)
        norm = item.get("norm", "linf")
        if norm not in NORMS:
            problems.append(f"{where}.norm: expected one of {', '.join(NORMS)}, found {norm!r}")
            continue
        budgets = _budgets(item.get("budgets"), f"{where}.budgets", problems)
        targets = _targets(item.get("targets"), f"{where}.targets", problems, parse_target)
        members = _members(item.get("members"), f"{where}.members", norm, budgets, registry, problems, parse_target)
        for j, m in enumerate(members):
            unknown_targets = [t for t in m.targets if t not in [x.label for x in targets]]
            if unknown_targets:
                problems.append(f"{where}.members[{m.label}].targets: {', '.join(map(repr, unknown_targets))} not among "
                                f"the entry's targets; valid: {', '.join(t.label for t in targets)}")
        for t in targets:
            able = [m.label for m in members if t.kind in registry.get("attack", m.plugin).adaptive  # type: ignore[attr-defined]
                    and m.attacks(t.label)]
            if members and not able:
                problems.append(f"{where}.targets: no member can attack {t.label!r} (a {t.kind} defense); add one "
                                "whose plugin lists it in 'adaptive' (advbench plugins --kind attack)")
        if budgets and members:
            entries.append(RobustEntry(label, norm, budgets, targets, members))
    return tuple(entries)


def _targets(raw: Any, where: str, problems: list[str], parse_target) -> tuple[Any, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}: required: a non-empty list of defenses, e.g. "
                        "[{ detector = \"svm\", feature = \"differences\", group = \"All\" }, \"pipeline\"]")
        return ()
    targets = []
    for j, raw_t in enumerate(raw):
        t = parse_target(raw_t, f"{where}[{j}]", problems)
        if t is None:
            continue
        if t.kind not in ROBUST_TARGET_KINDS:
            problems.append(f"{where}[{j}]: a robust evaluation needs a system that decides (a detector or "
                            f"\"pipeline\"); {t.label!r} is a group's operations only")
            continue
        targets.append(t)
    return tuple(targets)


def _members(raw: Any, where: str, norm: str, budgets: tuple[float, ...], registry: Registry,
             problems: list[str], parse_target) -> tuple[Member, ...]:
    if not isinstance(raw, list) or not raw:
        problems.append(f"{where}: required: a non-empty list of attacks, e.g. [{{ plugin = \"eot-pgd\" }}]")
        return ()
    members, labels = [], set()
    for j, item in enumerate(raw):
        here = f"{where}[{j}]"
        if not isinstance(item, dict) or not isinstance(item.get("plugin"), str):
            problems.append(f"{here}: expected a table with 'plugin' (an adaptive attack), found {item!r}")
            continue
        item = dict(item)
        plugin = item.pop("plugin")
        if registry.find("attack", plugin) is None:
            problems.append(f"{here}.plugin: {unknown_plugin_message('attack', plugin, registry.names('attack'))}")
            continue
        spec = registry.get("attack", plugin)
        able = [n for n in registry.names("attack") if registry.get("attack", n).adaptive]  # type: ignore[attr-defined]
        if not spec.adaptive:  # type: ignore[attr-defined]
            problems.append(f"{here}.plugin: {plugin!r} is not an adaptive attack; valid: {', '.join(able)}")
            continue
        if spec.targeted:  # type: ignore[attr-defined]
            problems.append(f"{here}.plugin: {plugin!r} is targeted; a robust evaluation judges every member by the "
                            "benchmark's non-targeted rule")
            continue
        budget_param = spec.budget_param  # type: ignore[attr-defined]
        if budget_param and spec.norm != norm:  # type: ignore[attr-defined]
            problems.append(f"{here}.plugin: {plugin!r} measures its budget in {spec.norm}, the entry in {norm}")  # type: ignore[attr-defined]
            continue
        label = str(item.pop("name", plugin))
        if label in labels:
            problems.append(f"{here}.name: duplicate member name {label!r}; give each member a distinct 'name'")
            continue
        labels.add(label)
        runs_at = _budgets(item.pop("budgets"), f"{here}.budgets", problems) if "budgets" in item else budgets
        aimed = _targets(item.pop("targets"), f"{here}.targets", problems, parse_target) if "targets" in item else ()
        missing = [b for b in runs_at if b not in budgets]
        if missing:
            problems.append(f"{here}.budgets: {', '.join(f'{b:g}' for b in missing)} not among the entry's budgets")
        per_budget = item.pop("per_budget", {})
        if not isinstance(per_budget, dict) or not all(isinstance(v, list) and len(v) == len(budgets)
                                                       for v in per_budget.values()):
            problems.append(f"{here}.per_budget: expected a table of lists with one value per budget "
                            f"({len(budgets)}), found {per_budget!r}")
            continue
        if budget_param in item or budget_param in per_budget:
            problems.append(f"{here}: {budget_param!r} is set by the entry's budgets; remove it")
            continue
        params: list[Params | None] = []
        for b_index, budget in enumerate(budgets):
            if budget not in runs_at:
                params.append(None)
                continue
            values = {**item, **{k: v[b_index] for k, v in per_budget.items()}}
            if budget_param:
                values[budget_param] = budget
            try:
                params.append(spec.params.model_validate(values))
            except ValidationError as err:
                for e in err.errors():
                    loc = ".".join(str(x) for x in e["loc"])
                    problems.append(f"{here}.{loc}: {e['msg']} (found {e.get('input')!r})" if e["type"] != "extra_forbidden"
                                    else f"{here}.{loc}: unknown parameter of {plugin!r}; valid: "
                                         f"{', '.join(spec.params.model_fields)}")
                params = []
                break
        if params:
            members.append(Member(label, plugin, tuple(params), tuple(t.label for t in aimed)))
    return tuple(members)
