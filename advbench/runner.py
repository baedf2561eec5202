"""Execute a plan: every cell once, from cache when its artefact exists, into the store.

A cell that raises is recorded as failed (with its error) and the cells that need its result
are recorded as skipped; every other cell still runs. Plugins are built lazily, so a run whose
cells are all cached never loads a dataset or a model.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advbench import __version__
from advbench.cache import Cache, default_cache_dir, load_array, save_arrays, write_complete
from advbench.config import Benchmark, Entry
from advbench.devices import resolve_device
from advbench.engine import correct, database, detect, predict
from advbench.errors import AdvbenchError, DataError
from advbench.executor import InProcess, executor_for
from advbench.plan import CLEAN, IMAGES, ORIGINAL, STAGES, Cell, Plan, make_plan
from advbench.registry import Registry
from advbench.specs import BuildContext, LoadedModel
from advbench.store import open_store

log = logging.getLogger("advbench")
MetricRows = list[tuple[str, str, float]]


@dataclass(frozen=True)
class RunOptions:
    store: str | None = None
    max_images: int | None = None
    workers: int = 1
    fresh: bool = False
    cache_dir: Path | None = None


@dataclass(frozen=True)
class CellOutcome:
    cell: Cell
    status: str  # ok, failed, skipped
    cached: bool = False
    error: str = ""
    user_error: bool = False
    seconds: float = 0.0
    metrics: MetricRows = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    run_id: int
    store_url: str
    outcomes: tuple[CellOutcome, ...]
    log_path: Path

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def computed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "ok" and not o.cached]


def versions() -> dict[str, str]:
    import importlib.metadata as md

    def v(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return ""

    return {"advbench": __version__, "torch": v("torch"), "foolbox": v("foolbox")}


class Runner:
    def __init__(self, bench: Benchmark, registry: Registry, options: RunOptions = RunOptions(),
                 on_cell: Callable[[CellOutcome], None] | None = None):
        self.bench, self.registry, self.options = bench, registry, options
        self.cache = Cache(options.cache_dir or default_cache_dir())
        self.device = resolve_device(bench.settings.device)
        self.on_cell = on_cell or (lambda outcome: None)
        self.plan: Plan = make_plan(bench, self._plugin_version, options.max_images,
                                    detector_inputs=self._detector_inputs)
        self.failed_attacks: frozenset[tuple[str, str, str]] = frozenset()
        self._index = {(c.stage, c.dataset, c.model, c.attack, c.transform): c.key
                       for c in self.plan.cells if c.stage != "detect"}
        self._entries = {(e.kind, e.label): e for k in ("datasets", "models", "attacks", "transforms",
                                                         "features", "detectors", "correctors") for e in getattr(bench, k)}

    def _detector_inputs(self, plugin: str) -> str:
        return self.registry.get("detector", plugin).inputs

    def _plugin_version(self, kind: str, plugin: str) -> str:
        import importlib.metadata as md

        package = self.registry.package_of(kind, plugin)
        spec_version = self.registry.get(kind, plugin).version
        try:
            return f"{md.version(package)}/{spec_version}"
        except (md.PackageNotFoundError, ValueError):
            return f"/{spec_version}"

    # --- lazily built plugins -------------------------------------------------------------

    def _ctx(self, kind: str, plugin: str) -> BuildContext:
        return BuildContext(cache_dir=self.cache.root / "plugins" / kind / plugin, device=self.device,
                            seed=self.bench.settings.seed)

    @cache  # noqa: B019 - one runner per run
    def model(self, label: str) -> LoadedModel:
        entry = self._entries[("model", label)]
        spec = self.registry.get("model", entry.plugin)
        loaded = spec.build(entry.params, self._ctx("model", entry.plugin))
        loaded.module.to(self.device).eval().requires_grad_(False)
        return loaded

    @cache  # noqa: B019
    def dataset(self, label: str):
        entry = self._entries[("dataset", label)]
        return self.registry.get("dataset", entry.plugin).load(entry.params, self._ctx("dataset", entry.plugin))

    # --- execution ------------------------------------------------------------------------

    def run_with(self, on_cell: Callable[[CellOutcome], None]) -> RunResult:
        self.on_cell = on_cell
        return self.run()

    def run(self) -> RunResult:
        store = open_store(self.options.store or self.bench.settings.store)
        run_id = store.start_run(benchmark=self.bench.settings.name, config_hash=self.bench.config_hash,
                                 config_text=self.bench.text, seed=self.bench.settings.seed, versions=versions())
        log_path = self.cache.root / "logs" / f"run-{run_id}-{datetime.now():%Y%m%d-%H%M%S}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_path)
        log.addHandler(handler)
        outcomes: list[CellOutcome] = []
        bad: set[str] = set()
        try:
            for stage in STAGES:
                if stage == "split":
                    self._replan_without_failed_attacks(outcomes)
                pending = self.plan.stage(stage)
                while pending:  # waves: cells whose inputs are all settled
                    settled = {o.cell.key for o in outcomes}
                    ready = [c for c in pending if all(d in settled for d in c.deps)]
                    pending = [c for c in pending if not all(d in settled for d in c.deps)]
                    for outcome in self._execute(stage, ready, bad):
                        if outcome.status != "ok":
                            bad.add(outcome.cell.key)
                        store.record_cell(run_id, outcome.cell, status=outcome.status, cached=outcome.cached,
                                          error=outcome.error, seconds=outcome.seconds, metrics=outcome.metrics)
                        outcomes.append(outcome)
                        self.on_cell(outcome)
        finally:
            status = "failed" if bad or len(outcomes) < len(self.plan.cells) else "ok"
            store.finish_run(run_id, status, keep={c.key for c in self.plan.cells} | {o.cell.key for o in outcomes})
            log.removeHandler(handler)
            handler.close()
        return RunResult(run_id, store.url, tuple(outcomes), log_path)

    def _execute(self, stage: str, cells: list[Cell], bad: set[str]):
        """Run one wave; predictions and detectors fan out to forked workers (--workers)."""
        run = lambda c: self._run_cell(c, bad)  # noqa: E731
        # cached cells are answered here; image detectors train in this process (a forked worker
        # cannot use CUDA, and on a CPU they use every core already)
        forked = [c for c in cells if (self.options.fresh or not self.cache.has(c.stage, c.key))
                  and c.transform != IMAGES and not any(d in bad for d in c.deps)]
        if stage not in ("predict", "detect") or len(forked) < 2 or self.options.workers < 2:
            return InProcess().map(run, cells)
        if stage == "predict":
            for label in {c.model for c in forked}:
                self.model(label)  # load once, before forking: workers share it copy-on-write
        forked_keys = {c.key for c in forked}
        here = [c for c in cells if c.key not in forked_keys]
        return itertools.chain(InProcess().map(run, here), executor_for(self.options.workers, len(forked)).map(run, forked))

    def _replan_without_failed_attacks(self, outcomes: list[CellOutcome]) -> None:
        failed = frozenset((o.cell.dataset, o.cell.model, o.cell.attack) for o in outcomes
                           if o.cell.stage == "attack" and o.status != "ok")
        if failed:
            self.failed_attacks = failed
            self.plan = make_plan(self.bench, self._plugin_version, self.options.max_images, failed,
                                  detector_inputs=self._detector_inputs)
            self._index.update({(c.stage, c.dataset, c.model, c.attack, c.transform): c.key
                                for c in self.plan.cells if c.stage != "detect"})

    def _attacks_of(self, cell: Cell) -> list[str]:
        return [a.label for a in self.bench.attacks
                if (cell.dataset, cell.model, a.label) not in self.failed_attacks]

    def _run_cell(self, cell: Cell, bad: set[str]) -> CellOutcome:
        upstream = [d for d in cell.deps if d in bad]
        if upstream:
            return CellOutcome(cell, "skipped", error=f"needs {self.plan.by_key[upstream[0]].title}, which did not complete")
        if not self.options.fresh and self.cache.has(cell.stage, cell.key):
            return CellOutcome(cell, "ok", cached=True, metrics=_rows(self.cache.metrics(cell.stage, cell.key)))
        t0 = time.perf_counter()
        try:
            with self.cache.lock(cell.stage, cell.key):
                with self.cache.writing(cell.stage, cell.key) as scratch:
                    rows = getattr(self, f"_compute_{cell.stage}")(cell, scratch)
                    write_complete(scratch, {"metrics": rows})
            return CellOutcome(cell, "ok", seconds=time.perf_counter() - t0, metrics=rows)
        except AdvbenchError as exc:
            log.error("%s failed: %s", cell.title, exc)
            return CellOutcome(cell, "failed", error=str(exc), user_error=True, seconds=time.perf_counter() - t0)
        except Exception as exc:  # isolate a plugin's failure to its cell
            log.error("%s failed:\n%s", cell.title, traceback.format_exc())
            return CellOutcome(cell, "failed", error=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - t0)

    def _dir(self, stage: str, dataset: str, model: str, attack: str = "", transform: str = "") -> Path:
        return self.cache.path(stage, self._index[(stage, dataset, model, attack, transform)])

    # --- stages -----------------------------------------------------------------------------

    def _compute_clean(self, cell: Cell, out: Path) -> MetricRows:
        source, model = self.dataset(cell.dataset), self.model(cell.model)
        if len(source.class_names) != model.num_classes:
            raise DataError(f"model {cell.model!r} has {model.num_classes} classes but dataset {cell.dataset!r} "
                            f"has {len(source.class_names)}; restrict the model with 'datasets = [...]'")
        s = self.bench.settings
        n = min(s.images_per_model, self.options.max_images or s.images_per_model)
        arrays, metrics = database.select_clean(source, model, top_k=s.top_k, n=n, seed=s.seed, device=self.device)
        (out / "ids.json").write_text(json.dumps(arrays.pop("ids").tolist()))
        (out / "classes.json").write_text(json.dumps(list(source.class_names)))
        save_arrays(out, **arrays)
        return [(k, "", float(v)) for k, v in metrics.items()]

    def _clean_arrays(self, cell: Cell, mmap: bool = False) -> dict[str, Any]:
        d = self._dir("clean", cell.dataset, cell.model)
        return {"images": load_array(d, "images", mmap), "labels": load_array(d, "labels"),
                "top1": load_array(d, "top1"), "ids": np.asarray(json.loads((d / "ids.json").read_text()))}

    def _compute_attack(self, cell: Cell, out: Path) -> MetricRows:
        entry = self._entries[("attack", cell.attack)]
        spec = self.registry.get("attack", entry.plugin)
        db, s = self.bench.database, self.bench.settings
        arrays, metrics = database.run_attack(
            spec, entry.params, self.model(cell.model), self._clean_arrays(cell), out_dir=out, top_k=s.top_k,
            shift=db.target_shift, threshold=db.target_threshold, fmt=db.image_format, quality=db.jpeg_quality,
            batch_size=db.batch_size, seed=s.seed, ctx=self._ctx("attack", entry.plugin))
        save_arrays(out, **arrays)
        return [(k, "", float(v)) for k, v in metrics.items()] + [("targeted", "", float(spec.targeted))]

    def _attack_sources(self, cell: Cell) -> dict[str, np.ndarray]:
        return {a: load_array(self._dir("attack", cell.dataset, cell.model, a), "source") for a in self._attacks_of(cell)}

    def _compute_split(self, cell: Cell, out: Path) -> MetricRows:
        n = len(self._clean_arrays(cell)["labels"])
        sources = self._attack_sources(cell)
        successes = {a: np.isin(np.arange(n), src) for a, src in sources.items()}
        split = database.split_sources(n, successes, self.bench.database.split, self.bench.settings.seed)
        save_arrays(out, split=split)
        rows = []
        for i, name in enumerate(database.SPLITS):
            adversarial = sum(int((split[src] == i).sum()) for src in sources.values())
            rows += [("normal", name, float((split == i).sum())), ("adversarial", name, float(adversarial))]
            rows += [(f"adversarial[{a}]", name, float((split[src] == i).sum())) for a, src in sources.items()]
        return rows

    def _imageset(self, cell: Cell, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Images of a predict cell's imageset and the label each should keep (Table 3)."""
        clean = self._clean_arrays(cell, mmap=mmap)
        if cell.attack == CLEAN:
            return clean["images"], clean["labels"]
        d = self._dir("attack", cell.dataset, cell.model, cell.attack)
        return load_array(d, "images", mmap), clean["top1"][load_array(d, "source")]

    def _compute_predict(self, cell: Cell, out: Path) -> MetricRows:
        images, keep_labels = self._imageset(cell)
        reference = op = tensor_op = None
        if cell.transform != ORIGINAL:
            entry = self._entries[("transform", cell.transform)]
            spec = self.registry.get("transform", entry.plugin)
            reference = load_array(self._dir("predict", cell.dataset, cell.model, cell.attack, ORIGINAL), "labels")
            if self.bench.prediction.backend == "tensor":
                if spec.apply_tensor is None:
                    raise DataError(f"transform plugin {entry.plugin!r} has no tensor backend; use prediction.backend = 'pillow'")
                tensor_op = lambda batch: spec.apply_tensor(batch, entry.params)  # noqa: E731
            else:
                op = lambda image: spec.apply(image, entry.params)  # noqa: E731
        result = predict.predict_under_operation(
            self.model(cell.model), images, top_k=self.bench.settings.top_k,
            batch_size=self.bench.prediction.batch_size, device=self.device, op=op, tensor_op=tensor_op,
            reference=reference)
        save_arrays(out, **result)
        return [("topk_misclassified", "", float(predict.topk_misclassified(result["labels"], keep_labels))),
                ("images", "", float(len(images)))]

    def _labelled_set(self, cell: Cell, with_images: bool = False) -> detect.LabelledSet:
        """Normal then adversarial images of a cell's dataset/model, in a fixed order."""
        ops = [] if cell.transform == IMAGES else [t.label for t in self.plan.group_ops(cell.transform)]
        split = load_array(self._dir("split", cell.dataset, cell.model), "split")
        clean = self._clean_arrays(cell, mmap=True)
        parts = []
        for set_label in [CLEAN, *self._attacks_of(cell)]:
            def labels(op: str) -> np.ndarray:
                return load_array(self._dir("predict", cell.dataset, cell.model, set_label, op), "labels")
            if set_label == CLEAN:
                source, images = np.arange(len(split)), clean["images"]
            else:
                d = self._dir("attack", cell.dataset, cell.model, set_label)
                source, images = load_array(d, "source"), load_array(d, "images", mmap=True)
            original = labels(ORIGINAL)
            transformed = np.stack([labels(op) for op in ops], axis=1) if ops and len(original) else \
                np.zeros((len(original), len(ops), original.shape[1]), np.int32)
            parts.append((original, transformed, np.full(len(source), int(set_label != CLEAN)), split[source],
                          np.full(len(source), set_label, dtype=object), clean["labels"][source],
                          np.asarray(images) if with_images else np.zeros((len(source), 0))))
        return detect.LabelledSet(*(np.concatenate(p) for p in zip(*parts)))

    def _compute_detect(self, cell: Cell, out: Path) -> MetricRows:
        detector = self._entries[("detector", cell.detector)]
        spec = self.registry.get("detector", detector.plugin)
        if cell.transform == IMAGES:
            data = self._labelled_set(cell, with_images=True)
            inputs, extra = data.images, []
        else:
            data = self._labelled_set(cell)
            feature = self._entries[("feature", cell.feature)]
            inputs = np.asarray(self.registry.get("feature", feature.plugin).compute(
                data.original, data.transformed, feature.params), dtype=np.float64)
            extra = [("feature_size", "", float(inputs.shape[1])), ("operations", "", float(data.transformed.shape[1]))]
        seed = self.bench.settings.seed
        if detector.candidates:
            chosen, model, dev_accuracies = detect.select_on_dev(
                [partial(spec.build, c, seed) for c in detector.candidates], inputs, data)
            (out / "search.json").write_text(json.dumps(
                [{"params": c.model_dump(mode="json"), "dev_accuracy": a, "chosen": i == chosen}
                 for i, (c, a) in enumerate(zip(detector.candidates, dev_accuracies))], indent=1))
            extra.append(("search_candidates", "", float(len(dev_accuracies))))
            extra += [(f"chosen_{k}", "", float(v)) for k, v in detector.candidates[chosen].model_dump().items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool)]
        else:
            model = spec.build(detector.params, seed)
            detect.fit_detector(model, inputs, data)
        pred, scores = np.asarray(model.predict(inputs)), np.asarray(model.scores(inputs), dtype=float)
        save_arrays(out, pred=pred, scores=scores, y=data.y, split=data.split)
        if hasattr(model, "logits"):  # for the logit scatter of §4 (Fig. 2)
            save_arrays(out, logits=model.logits(inputs))
        return detect.detection_metrics(data, pred, scores) + extra

    def _compute_correct(self, cell: Cell, out: Path) -> MetricRows:
        data = self._labelled_set(cell)
        entry = self._entries[("corrector", cell.corrector)]
        k = data.original.shape[1]
        corrected = np.asarray(self.registry.get("corrector", entry.plugin).correct(data.transformed, k, entry.params))
        save_arrays(out, corrected=corrected)
        flagged = None
        pipe = self.bench.correction.pipeline
        if pipe is not None:
            key = self.plan.pipeline_key(cell.dataset, cell.model)
            if key is None:
                raise DataError(f"correction.pipeline = {pipe.model_dump()} matches no detector cell of "
                                f"{cell.dataset}/{cell.model}: feature detectors need 'feature' and 'group', "
                                f"image detectors neither")
            flagged = load_array(self.cache.path("detect", key), "pred")
        return correct.correction_metrics(data, corrected, flagged)


def _rows(complete: dict[str, Any]) -> MetricRows:
    return [tuple(r) for r in complete.get("metrics", [])]  # type: ignore[misc]
