"""Cheap checks of a valid benchmark before any work: what ``advbench validate`` adds to the
schema's checks, and what ``advbench run`` does before it opens the store.

- the files plugins will read: each spec's optional ``check(params)`` (a dataset root that
  exists and holds a readable image, a checkpoint that loads and fits its network);
- every k and the target shift against the datasets' class counts (a DatasetSpec's optional
  ``class_count``): a ``top_k`` at or above the class count leaves no class for a non-targeted
  attack to reach, a shift that is a multiple of it makes every target the top-1 label;
- every label of the plan against the store's column lengths (PostgreSQL refuses a longer
  one, SQLite keeps it): entry names, group names, adaptive sets named after their target.

All problems are raised together, as one :class:`ConfigError`, one line each.
"""

from __future__ import annotations

from collections.abc import Iterator

from advbench.config import Benchmark, Entry
from advbench.errors import AdvbenchError, ConfigError
from advbench.registry import Registry

SECTIONS = ("datasets", "models", "attacks", "transforms", "features", "detectors", "correctors", "adaptive")

#: where a label stored in each cell column comes from, for the message
LABEL_SOURCES = {"dataset": "[[datasets]] name", "model": "[[models]] name",
                 "attack": "[[attacks]] name (adaptive sets: name@budget>target)", "transform": "[[transforms]] "
                 "name or [detection] groups name", "feature": "[[features]] name", "detector": "[[detectors]] name",
                 "corrector": "[[correctors]] name", "holdout": "detection.partitions name", "target": "adaptive targets"}


def preflight(bench: Benchmark, registry: Registry, plan, files: bool = True) -> None:
    """Raise a ConfigError listing every problem the checks find; return when there is none.
    ``files=False`` leaves out the plugins' checks of their files (an estimate made on a machine
    that has not got the data)."""
    problems = [*(plugin_checks(bench, registry) if files else []), *k_problems(bench, registry),
                *label_problems(plan)]
    if problems:
        raise ConfigError(str(bench.path), list(dict.fromkeys(problems)))


def _entries(bench: Benchmark) -> Iterator[tuple[str, Entry]]:
    for section in SECTIONS:
        for entry in getattr(bench, section):
            yield section, entry


def plugin_checks(bench: Benchmark, registry: Registry) -> list[str]:
    """The problems the plugins' own ``check`` finds in what their entries point at (once per
    plugin and parameters: the points of a grid share them)."""
    problems, seen = [], set()
    for section, entry in _entries(bench):
        spec = registry.get(entry.kind, entry.plugin)
        ident = (entry.kind, entry.plugin, entry.params.model_dump_json())
        if spec.check is None or ident in seen:
            continue
        seen.add(ident)
        try:
            spec.check(entry.params)
        except AdvbenchError as exc:
            problems.append(f"{section}[{entry.label}]: {_one_line(exc)}")
    return problems


def class_counts(bench: Benchmark, registry: Registry) -> dict[str, int]:
    """Dataset label -> number of classes, for the datasets whose plugin says it cheaply."""
    counts = {}
    for entry in bench.datasets:
        count = getattr(registry.get("dataset", entry.plugin), "class_count", None)
        try:
            counts[entry.label] = int(count(entry.params)) if count is not None else None
        except AdvbenchError:  # the dataset's check names what is wrong
            continue
    return {label: n for label, n in counts.items() if n is not None}


def k_problems(bench: Benchmark, registry: Registry) -> list[str]:
    """A top-k at or above a dataset's class count: no class is left outside the top-k, so no
    non-targeted attack can succeed; a feature's k above it asks for more labels than exist."""
    problems = []
    for dataset, n in class_counts(bench, registry).items():
        k = bench.settings.top_k
        if k >= n:
            problems.append(f"benchmark.top_k: {k} leaves no class outside the top-k of dataset {dataset!r} ({n} "
                            f"classes), so no non-targeted attack could succeed; choose 1 to {n - 1}")
        for feature in bench.features:
            if feature.k is not None and feature.k > n:
                problems.append(f"features[{feature.label}].k: {feature.k} is more than the {n} classes of dataset "
                                f"{dataset!r}; choose 1 to {n}")
        shift = bench.database.target_shift
        targeted = [a.label for a in (*bench.attacks, *bench.adaptive) if registry.get("attack", a.plugin).targeted]
        if targeted and shift % n == 0:
            problems.append(f"database.target_shift: {shift} is a multiple of the {n} classes of dataset {dataset!r}, "
                            f"so every target of the targeted attacks ({', '.join(targeted[:3])}) would be the top-1 "
                            f"label; choose a shift from 1 to {n - 1}")
    return problems


def label_problems(plan) -> list[str]:
    """Labels of the plan's cells longer than the store's columns keep."""
    from advbench.store.models import Cell

    limits = {c.name: c.type.length for c in Cell.__table__.columns if getattr(c.type, "length", None)}
    problems = []
    for cell in plan.cells:
        for column, limit in limits.items():
            value = getattr(cell, column, None)
            if isinstance(value, str) and len(value) > limit:
                source = LABEL_SOURCES.get(column, column)
                problems.append(f"{source}: label {value[:30] + '...'!r} of {cell.stage} cells has {len(value)} "
                                f"characters; the store keeps at most {limit}: give it a shorter name")
    return problems


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
