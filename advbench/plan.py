"""Benchmark -> cells: a pure function, easy to test and to print (``advbench plan``).

A cell is one unit of work named by the content hash of everything that determines its
result, so it can be cached, skipped, retried or run elsewhere. Stages, in data-flow order:

    clean   (dataset, model)                 correctly classified images, N picked
    attack  (dataset, model, attack)         adversarial images, saved and re-verified
    split   (dataset, model)                 train/dev/eval by source image
    predict (dataset, model, imageset, op)   top-k labels under one operation
    detect  (dataset, model, feature, group, detector)   metrics on eval
            (dataset, model, detector)                  for detectors that see images
    correct (dataset, model, group, corrector)       labels restored by voting (§3.3)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from advbench import __version__
from advbench.config import Benchmark, Entry, stable_hash

#: Bumped when the files a stage writes change, so old artefacts are never mistaken for new.
ARTEFACT_SCHEMA = 3

STAGES = ("clean", "attack", "split", "predict", "detect", "correct")
ORIGINAL = "original"  # the pseudo-operation "no operation"
IMAGES = "images"  # the "feature group" of detectors that see the images themselves
CLEAN = "clean"  # the imageset of normal images


@dataclass(frozen=True)
class Cell:
    stage: str
    key: str
    dataset: str
    model: str
    attack: str = ""  # attack label, or "clean" for the normal imageset of a predict cell
    transform: str = ""  # op label (predict) or feature group (detect)
    feature: str = ""
    detector: str = ""
    deps: tuple[str, ...] = ()
    group: str = ""  # predict: the transform group of the op
    corrector: str = ""

    @property
    def title(self) -> str:
        parts = [self.dataset, self.model, self.attack, self.transform, self.feature, self.detector, self.corrector]
        return f"{self.stage}:" + "/".join(p for p in parts if p)


@dataclass(frozen=True)
class Plan:
    benchmark: Benchmark
    cells: tuple[Cell, ...]
    max_images: int | None = None
    by_key: dict[str, Cell] = field(default_factory=dict, compare=False)
    #: (dataset, model) -> key of the detect cell named by [correction] pipeline
    pipelines: dict[tuple[str, str], str] = field(default_factory=dict, compare=False)

    def stage(self, name: str) -> list[Cell]:
        return [c for c in self.cells if c.stage == name]

    def pipeline_key(self, dataset: str, model: str) -> str | None:
        """The detect cell whose predictions drive the detect-then-correct pipeline."""
        return self.pipelines.get((dataset, model))

    def group_ops(self, group: str) -> list[Entry]:
        return group_ops(self.benchmark, group)


def group_ops(bench: Benchmark, group: str) -> list[Entry]:
    """The operations of a [detection] group ("*" = all of them), in config order."""
    members = bench.detection.groups[group]
    return [t for t in bench.transforms if "*" in members or t.group in members]


def make_plan(bench: Benchmark, versions: Callable[[str, str], str], max_images: int | None = None,
              failed_attacks: frozenset[tuple[str, str, str]] = frozenset(),
              detector_inputs: Callable[[str], str] = lambda plugin: "features") -> Plan:
    """Expand a benchmark into cells. ``versions(kind, plugin)`` gives the plugin package's
    version, so upgrading a plugin invalidates exactly the cells it determines.

    ``failed_attacks`` holds (dataset, model, attack) whose attack cell failed: the split,
    predictions and detectors of that dataset/model then go on without that attack.
    ``detector_inputs(plugin)`` says whether a detector sees "features" or "images"."""
    s, db = bench.settings, bench.database
    n_images = min(s.images_per_model, max_images) if max_images else s.images_per_model
    cells: list[Cell] = []
    pipelines: dict[tuple[str, str], str] = {}

    def ident(entry: Entry) -> dict:
        return entry.identity() | {"version": versions(entry.kind, entry.plugin)}

    for ds in bench.datasets:
        for mdl in bench.models_for(ds):
            d, m = ds.label, mdl.label
            clean_key = stable_hash({
                "stage": "clean", "advbench": __version__, "schema": ARTEFACT_SCHEMA, "dataset": ident(ds), "model": ident(mdl),
                "top_k": s.top_k, "n": n_images, "seed": s.seed,
            })
            cells.append(Cell("clean", clean_key, d, m))
            imagesets = {CLEAN: clean_key}
            for atk in bench.attacks:
                key = stable_hash({
                    "stage": "attack", "clean": clean_key, "attack": ident(atk), "db": db.model_dump(mode="json"),
                    "top_k": s.top_k, "seed": s.seed,
                })
                cells.append(Cell("attack", key, d, m, attack=atk.label, deps=(clean_key,)))
                if (d, m, atk.label) not in failed_attacks:
                    imagesets[atk.label] = key
            split_key = stable_hash({"stage": "split", "sets": imagesets, "split": db.split, "seed": s.seed})
            cells.append(Cell("split", split_key, d, m, deps=tuple(imagesets.values())))
            predict_keys: dict[tuple[str, str], str] = {}
            op_entries = [(ORIGINAL, None, "")] + [(t.label, t, t.group) for t in bench.transforms]
            for set_label, set_key in imagesets.items():
                for op_label, op, group in op_entries:
                    key = stable_hash({
                        "stage": "predict", "set": set_key, "op": ident(op) if op else ORIGINAL,
                        "top_k": s.top_k, "backend": bench.prediction.backend if op else "",
                    })
                    predict_keys[(set_label, op_label)] = key
                    # every op cell reads the original top-k of its imageset (probabilities of it)
                    deps = (set_key,) if op is None else (set_key, predict_keys[(set_label, ORIGINAL)])
                    cells.append(Cell("predict", key, d, m, attack=set_label, transform=op_label,
                                      deps=deps, group=group))
            feature_detectors = [x for x in bench.detectors if detector_inputs(x.plugin) == "features"]
            detect_keys: dict[tuple[str, str, str], str] = {}
            def group_inputs(group: str) -> tuple[list[str], list[str]]:
                ops = [t.label for t in group_ops(bench, group)]
                return ops, sorted(predict_keys[(sl, op)] for sl in imagesets for op in [ORIGINAL, *ops])

            for group in bench.detection.groups:
                ops, inputs = group_inputs(group)
                if not ops:
                    continue
                for feat in bench.features:
                    for det in feature_detectors:
                        key = stable_hash({
                            "stage": "detect", "schema": ARTEFACT_SCHEMA, "split": split_key, "inputs": inputs, "ops": ops,
                            "feature": ident(feat), "detector": ident(det), "seed": s.seed,
                        })
                        detect_keys[(det.label, feat.label, group)] = key
                        cells.append(Cell("detect", key, d, m, transform=group, feature=feat.label,
                                          detector=det.label, deps=(split_key, *inputs)))
            for det in bench.detectors:
                if detector_inputs(det.plugin) != "images":
                    continue
                key = stable_hash({"stage": "detect", "schema": ARTEFACT_SCHEMA, "split": split_key, "sets": imagesets,
                                   "detector": ident(det), "seed": s.seed})
                detect_keys[(det.label, "", "")] = key
                cells.append(Cell("detect", key, d, m, transform=IMAGES, detector=det.label,
                                  deps=(split_key, *imagesets.values())))
            pipe = bench.correction.pipeline
            pipeline_key = detect_keys.get((pipe.detector, pipe.feature, pipe.group)) if pipe else None
            if pipeline_key:
                pipelines[(d, m)] = pipeline_key
            for group in bench.correction_groups():
                ops, inputs = group_inputs(group)
                deps = (split_key, *inputs, *((pipeline_key,) if pipeline_key else ()))
                for cor in bench.correctors:
                    key = stable_hash({"stage": "correct", "inputs": inputs, "ops": ops, "split": split_key,
                                       "corrector": ident(cor), "pipeline": pipeline_key or "", "top_k": s.top_k})
                    cells.append(Cell("correct", key, d, m, transform=group, corrector=cor.label, deps=deps))
    return Plan(bench, tuple(cells), max_images, {c.key: c for c in cells}, pipelines)
