"""What a cell needs to run anywhere: a serialisable :class:`Job` and the :class:`CellContext`
a process builds from it (the benchmark, the plan, the cache and lazily built plugins).

A worker (a forked process, a Ray task on another machine) receives the Job and a cell key; it
parses the benchmark with its own plugin registry, makes the same plan (a pure function), and
loads models and datasets on first use. Nothing large travels with the Job.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from advbench.cache import Cache, load_array
from advbench.config import Benchmark, Entry, parse_benchmark
from advbench.devices import resolve_device
from advbench.engine import imagesets
from advbench.plan import CLEAN, Cell, Plan, make_plan
from advbench.registry import Registry, discover
from advbench.specs import BuildContext, LoadedModel

MetricRows = list[tuple[str, str, float]]


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the cell key; small and picklable."""

    config_text: str
    config_path: str
    cache_root: str
    max_images: int | None = None
    failed_attacks: frozenset[tuple[str, str, str]] = frozenset()
    fresh: bool = False


def plugin_version(registry: Registry, kind: str, plugin: str) -> str:
    """The package version, the spec's version and a hash of the plugin's code (an edited
    editable plugin must not be served its old results: :mod:`advbench.plugin_source`)."""
    import importlib.metadata as md

    from advbench.plugin_source import fingerprint

    package = registry.package_of(kind, plugin)
    entry = registry.find(kind, plugin)
    spec_version = registry.get(kind, plugin).version + (f"+{fingerprint(entry.spec, entry.module)}" if entry else "")
    try:
        return f"{md.version(package)}/{spec_version}"
    except (md.PackageNotFoundError, ValueError):
        return f"/{spec_version}"


def plan_for(bench: Benchmark, registry: Registry, max_images: int | None = None,
             failed_attacks: frozenset[tuple[str, str, str]] = frozenset()) -> Plan:
    return make_plan(bench, lambda kind, plugin: plugin_version(registry, kind, plugin), max_images, failed_attacks,
                     detector_inputs=lambda plugin: registry.get("detector", plugin).inputs)


@dataclass
class CellContext:
    """The benchmark, plan, cache and plugins as one process sees them."""

    bench: Benchmark
    registry: Registry
    cache: Cache
    plan: Plan
    fresh: bool = False
    _models: dict[str, LoadedModel] = field(default_factory=dict)
    _datasets: dict[str, Any] = field(default_factory=dict)
    _fitted: dict[str, Any] = field(default_factory=dict)  # feature detectors loaded, by detect cell key
    _stored: dict[str, np.ndarray] = field(default_factory=dict)  # clean key -> normal images after storage
    _references: dict[tuple[str, str], Any] = field(default_factory=dict)  # (dataset, model) -> ReferenceSet

    @classmethod
    def from_job(cls, job: Job, registry: Registry | None = None) -> CellContext:
        registry = registry or discover()
        bench = parse_benchmark(job.config_text, registry, path=Path(job.config_path))
        plan = plan_for(bench, registry, job.max_images, job.failed_attacks)
        return cls(bench, registry, Cache(job.cache_root), plan, job.fresh)

    @cached_property
    def device(self) -> str:
        return resolve_device(self.bench.settings.device)

    @cached_property
    def entries(self) -> dict[tuple[str, str], Entry]:
        sections = ("datasets", "models", "attacks", "transforms", "features", "detectors", "correctors", "adaptive")
        return {(e.kind, e.label): e for section in sections for e in getattr(self.bench, section)}

    def entry(self, kind: str, label: str) -> Entry:
        return self.entries[(kind, label)]

    def spec(self, kind: str, label: str) -> Any:
        return self.registry.get(kind, self.entry(kind, label).plugin)

    def build_context(self, kind: str, plugin: str) -> BuildContext:
        return BuildContext(cache_dir=self.cache.root / "plugins" / kind / plugin, device=self.device,
                            seed=self.bench.settings.seed)

    # --- lazily built plugins ---------------------------------------------------------------

    def model(self, label: str) -> LoadedModel:
        if label not in self._models:
            entry = self.entry("model", label)
            loaded = self.registry.get("model", entry.plugin).build(entry.params, self.build_context("model", entry.plugin))
            loaded.module.to(self.device).eval().requires_grad_(False)
            self._models[label] = loaded
        return self._models[label]

    def dataset(self, label: str) -> Any:
        if label not in self._datasets:
            entry = self.entry("dataset", label)
            self._datasets[label] = self.registry.get("dataset", entry.plugin).load(
                entry.params, self.build_context("dataset", entry.plugin))
        return self._datasets[label]

    # --- artefacts of other cells -----------------------------------------------------------

    def dir(self, stage: str, cell: Cell, imageset: str = "", operation: str = "") -> Path:
        return self.cache.path(stage, self.plan.key(stage, cell.dataset, cell.model, imageset, operation))

    def dir_of(self, key: str) -> Path:
        return self.cache.path(self.plan.by_key[key].stage, key)

    def clean_arrays(self, cell: Cell, mmap: bool = False) -> dict[str, Any]:
        d = self.dir("clean", cell)
        return {"images": load_array(d, "images", mmap), "labels": load_array(d, "labels"),
                "top1": load_array(d, "top1"), "ids": np.asarray(json.loads((d / "ids.json").read_text()))}

    def split(self, cell: Cell) -> np.ndarray:
        return load_array(self.dir("split", cell), "split")

    def imageset_arrays(self, cell: Cell, label: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(images, source indices into the clean set) of one image set of ``cell``'s world."""
        if label == CLEAN:
            clean = self.clean_arrays(cell, mmap=mmap)
            return self._normal_images(cell, clean["images"]), np.arange(len(clean["labels"]))
        directory = self.dir_of(self.plan.imageset(cell, label).key)
        return load_array(directory, "images", mmap), load_array(directory, "source")

    def _normal_images(self, cell: Cell, images: np.ndarray) -> np.ndarray:
        """The clean set's images as detectors and predictions see them: the dataset's pixels, or
        with ``[database] fair_storage`` after the save -> reload adversarial images go through
        (attacks still start from the dataset's pixels)."""
        db = self.bench.database
        if not db.fair_storage:
            return images
        key = self.plan.key("clean", cell.dataset, cell.model)
        if key not in self._stored:
            self._stored[key] = imagesets.stored(np.asarray(images), db.image_format, db.jpeg_quality)
        return self._stored[key]

    def predictions(self, cell: Cell, label: str, op: str, name: str = "labels") -> np.ndarray:
        return load_array(self.dir("predict", cell, label, op), name)


class Contexts:
    """The one context this process keeps: made by ``make(key)`` for a new key (a new Job, after
    a replan) and then reused; models and datasets already loaded carry over when the new
    context runs the same benchmark with the same plugins. The driver, forked workers and Ray
    workers each hold one."""

    def __init__(self, make: Callable[[Hashable], CellContext]):
        self.make = make
        self._key: Hashable = None
        self._context: CellContext | None = None

    def get(self, key: Hashable) -> CellContext:
        if self._context is None or key != self._key:
            context = self.make(key)
            previous = self._context
            if previous is not None and previous.registry is context.registry and previous.bench.text == context.bench.text:
                context._models, context._datasets = previous._models, previous._datasets
            self._key, self._context = key, context
        return self._context

    def seed(self, key: Hashable, context: CellContext) -> None:
        """Hold ``context`` for ``key`` (a forked worker inherits the driver's, models loaded)."""
        self._key, self._context = key, context
