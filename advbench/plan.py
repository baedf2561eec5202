"""Benchmark -> cells: a pure function, easy to test and to print (``advbench validate``).

A cell is one unit of work named by the content hash of everything that determines its
result, so it can be cached, skipped, retried or run elsewhere. ``deps`` lists every artefact a
cell reads, so a cell is ready as soon as those are settled, and an executor that ships
artefacts knows what to ship. Stages, in data-flow order:

    clean    (dataset, model)                       correctly classified images, N picked
    attack   (dataset, model, attack[@budget])      adversarial images, saved and re-verified
    split    (dataset, model)                       train/dev/eval by source image
    predict  (dataset, model, imageset, op)         top-k labels and probabilities under one op
    detect   (dataset, model, feature, group, detector[, holdout])   fit on train, metrics on eval
             (a holdout variant: leave-one-attack-out, a partition, or per-attack)
             (dataset, model, detector[, holdout])  detectors that see images (or the model)
    adaptive (dataset, model, attack@budget, target) adversarial images made against a trained defense
    robust   (dataset, model, entry@budget, target)  the worst case of an attack ensemble (reads the budget below)
    score    (dataset, model, imageset, defense)    a trained detector or corrector on an evaluation set
    correct  (dataset, model, group, corrector)     labels restored by voting (§3.3)
    subset   (dataset, model, detector, feature, group)  greedy operation-subset search on dev

Image sets are of three roles. The clean set and the *primary* attacks (entries without
``budgets``) make the split and the mixture every detector trains on. Attacks with ``budgets``
(one set per budget) and adaptive attacks make *evaluation sets*: each source image keeps its
split, trained detectors and correctors score their eval images (``score`` cells), and adding
one never changes the detectors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from advbench import __version__
from advbench.config import Benchmark, Entry, Target, stable_hash
from advbench.robust_config import RobustEntry
from advbench.schema import IMAGES, PER_ATTACK, Cell

#: Bumped when the files a stage writes change, so old artefacts are never mistaken for new.
ARTEFACT_SCHEMA = 5
#: Bumped when a robust cell searches or judges differently (what its members stop on, where they start).
ROBUST_JUDGE = 3

ORIGINAL = "original"  # the pseudo-operation "no operation"
CLEAN = "clean"  # the imageset of normal images

__all__ = ["CLEAN", "IMAGES", "ORIGINAL", "PER_ATTACK", "Cell", "ImageSet", "Plan", "make_plan"]


@dataclass(frozen=True)
class ImageSet:
    """One set of images of a dataset/model: clean, an oblivious attack, or an adaptive one."""

    label: str
    key: str  # the clean, attack or adaptive cell that makes it
    entry: str = ""  # the attack (or adaptive) entry's label
    family: str = ""  # its label without the budget
    plugin: str = ""  # its attack plugin
    budget: float | None = None
    threat: str = "clean"  # "clean", "oblivious" or "adaptive"
    target: str = ""  # adaptive: the defense it was made against
    training: bool = False  # the clean set and primary attacks: split and detector training
    norm: str = ""  # the norm of its budget (the attack plugin's)

    @property
    def evaluation_only(self) -> bool:
        return not self.training and self.threat != "clean"


@dataclass(frozen=True)
class Plan:
    benchmark: Benchmark
    cells: tuple[Cell, ...]
    max_images: int | None = None
    by_key: dict[str, Cell] = field(default_factory=dict, compare=False)
    #: (dataset, model) -> key of the detect cell named by [correction] pipeline
    pipelines: dict[tuple[str, str], str] = field(default_factory=dict, compare=False)
    #: (dataset, model) -> its image sets by label
    imagesets: dict[tuple[str, str], dict[str, ImageSet]] = field(default_factory=dict, compare=False)
    index: dict[tuple, str] = field(default_factory=dict, compare=False)

    def stage(self, name: str) -> list[Cell]:
        return [c for c in self.cells if c.stage == name]

    def pipeline_key(self, dataset: str, model: str) -> str | None:
        """The detect cell whose predictions drive the detect-then-correct pipeline."""
        return self.pipelines.get((dataset, model))

    def group_ops(self, group: str) -> list[Entry]:
        return group_ops(self.benchmark, group)

    def key(self, stage: str, dataset: str, model: str, imageset: str = "", operation: str = "") -> str:
        """Key of the clean, attack, adaptive, split or predict cell so named."""
        return self.index[(stage, dataset, model, imageset, operation)]

    def detect_key(self, dataset: str, model: str, detector: str, feature: str = "", group: str = "",
                   holdout: str = "") -> str | None:
        return self.index.get(("detect", dataset, model, detector, feature, group, holdout))

    def training_sets(self, cell: Cell) -> list[ImageSet]:
        return [s for s in self.imagesets[(cell.dataset, cell.model)].values() if s.training]

    def imageset(self, cell: Cell, label: str | None = None) -> ImageSet:
        return self.imagesets[(cell.dataset, cell.model)][label or cell.imageset]

    def holdout_sets(self, holdout: str) -> tuple[list[str], list[str]]:
        """(attacks trained on, attacks scored on) of a held-out detector cell."""
        return holdout_sets(self.benchmark, holdout)


def group_ops(bench: Benchmark, group: str) -> list[Entry]:
    """The operations of a [detection] group ("*" = all of them), in config order."""
    members = bench.detection.groups[group]
    return [t for t in bench.transforms if "*" in members or t.group in members]


def holdout_sets(bench: Benchmark, holdout: str) -> tuple[list[str], list[str]]:
    primary = [a.label for a in bench.primary_attacks]
    if holdout.startswith(PER_ATTACK):
        attack = holdout.removeprefix(PER_ATTACK)
        return [attack], [attack]
    part = bench.detection.partitions.get(holdout)
    if part is not None:
        return list(part.train), list(part.test)
    return [a for a in primary if a != holdout], [holdout]


def holdouts(bench: Benchmark) -> list[str]:
    """Variants of the detector cells beside the standard one: one per attack
    (leave-one-attack-out), one per named partition, and one per attack trained on it alone
    (per-attack, named ``per-attack:<attack>``)."""
    protocols = bench.protocols()
    out = [a.label for a in bench.primary_attacks] if "leave-one-attack-out" in protocols else []
    out += [name for name in bench.detection.partitions if name not in out]
    if "per-attack" in protocols:
        wanted = bench.detection.per_attack_cells.attacks
        out += [PER_ATTACK + a.label for a in bench.primary_attacks if _wanted(wanted, a.label)]
    return out


def variant_cells(bench: Benchmark, holdout: str):
    """Which groups, features and detectors get cells of a variant (``holdout``)."""
    d = bench.detection
    return d.per_attack_cells if holdout.startswith(PER_ATTACK) else d.holdout_cells


def _wanted(selection: list[str] | None, label: str) -> bool:
    return selection is None or label in selection


def make_plan(bench: Benchmark, versions: Callable[[str, str], str], max_images: int | None = None,
              failed_attacks: frozenset[tuple[str, str, str]] = frozenset(),
              detector_inputs: Callable[[str], str] = lambda plugin: "features") -> Plan:
    """Expand a benchmark into cells. ``versions(kind, plugin)`` gives the plugin package's
    version, so upgrading a plugin invalidates exactly the cells it determines.

    ``failed_attacks`` holds (dataset, model, attack) whose attack cell failed: the split,
    predictions and detectors of that dataset/model then go on without that attack.
    ``detector_inputs(plugin)`` says whether a detector sees "features", "images" or "model"."""
    builder = _Builder(bench, versions, max_images, failed_attacks, detector_inputs)
    for ds in bench.benchmarked_datasets:
        for mdl in bench.models_for(ds):
            builder.world(ds, mdl)
    cells = tuple(builder.cells)
    return Plan(bench, cells, max_images, {c.key: c for c in cells}, builder.pipelines, builder.imagesets,
                builder.index)


class _Builder:
    """Accumulates the cells of every dataset/model; one method per stage."""

    def __init__(self, bench: Benchmark, versions, max_images, failed_attacks, detector_inputs):
        self.bench, self.versions, self.failed = bench, versions, failed_attacks
        self.inputs_of = detector_inputs
        s = bench.settings
        self.n_images = min(s.images_per_model, max_images) if max_images else s.images_per_model
        self.cells: list[Cell] = []
        self.pipelines: dict[tuple[str, str], str] = {}
        self.imagesets: dict[tuple[str, str], dict[str, ImageSet]] = {}
        self.index: dict[tuple, str] = {}

    def ident(self, entry: Entry) -> dict:
        return entry.identity() | {"version": self.versions(entry.kind, entry.plugin)}

    def add(self, cell: Cell, *index: tuple) -> Cell:
        self.cells.append(cell)
        for i in index:
            self.index[i] = cell.key
        return cell

    # --- one dataset/model ----------------------------------------------------------------

    def world(self, ds: Entry, mdl: Entry) -> None:
        bench, s, db = self.bench, self.bench.settings, self.bench.database
        d, m = ds.label, mdl.label
        clean_key = stable_hash({
            "stage": "clean", "advbench": __version__, "schema": ARTEFACT_SCHEMA, "dataset": self.ident(ds),
            "model": self.ident(mdl), "top_k": s.top_k, "n": self.n_images, "seed": s.seed,
        })
        self.add(Cell("clean", clean_key, d, m), ("clean", d, m, "", ""))
        sets: dict[str, ImageSet] = {CLEAN: ImageSet(CLEAN, clean_key, training=True)}
        self.imagesets[(d, m)] = sets
        for atk in bench.primary_attacks:
            key = self.attack_cell(d, m, atk, clean_key)
            if (d, m, atk.label) not in self.failed:
                sets[atk.label] = ImageSet(atk.label, key, atk.label, atk.family, atk.plugin, None, "oblivious",
                                           training=True, norm=atk.norm)
        training = {label: st.key for label, st in sets.items()}
        split_key = stable_hash({"stage": "split", "sets": training, "split": db.split, "seed": s.seed})
        self.add(Cell("split", split_key, d, m, deps=tuple(training.values())), ("split", d, m, "", ""))
        for atk in bench.attacks:
            if atk.evaluation:  # evaluation sets: made on the eval split's sources only
                key = self.attack_cell(d, m, atk, clean_key, split_key)
                sets[atk.label] = ImageSet(atk.label, key, atk.label, atk.family, atk.plugin, atk.budget, "oblivious",
                                           norm=atk.norm)
        for st in list(sets.values()):
            self.predictions(d, m, st)
        detect = self.detectors(d, m, clean_key, split_key, sets)
        corrects = self.correctors(d, m, clean_key, split_key, sets)
        for entry in bench.adaptive:
            for target in entry.targets:
                st = self.adaptive(d, m, clean_key, split_key, entry, target)
                sets[st.label] = st
                self.predictions(d, m, st)
        for st in sets.values():
            if st.evaluation_only:
                self.scores(d, m, clean_key, split_key, st, detect, corrects)
        for robust in bench.robust:
            for target in robust.targets:
                self.robust(d, m, clean_key, split_key, robust, target)
        self.subsets(d, m, clean_key, split_key, sets)

    # --- stages ---------------------------------------------------------------------------

    def attack_cell(self, d: str, m: str, atk: Entry, clean_key: str, split_key: str = "") -> str:
        s, db = self.bench.settings, self.bench.database
        key = stable_hash({
            "stage": "attack", "clean": clean_key, "attack": self.ident(atk), "db": db.identity(),
            "top_k": s.top_k, "seed": s.seed, **({"split": split_key} if split_key else {}),
        })
        deps = (clean_key, split_key) if split_key else (clean_key,)
        self.add(Cell("attack", key, d, m, imageset=atk.label, entry=atk.label, family=atk.family, plugin=atk.plugin,
                      budget=atk.budget, norm=atk.norm, threat="oblivious", evaluation=atk.evaluation, deps=deps),
                 ("attack", d, m, atk.label, ""))
        return key

    def predictions(self, d: str, m: str, st: ImageSet) -> None:
        bench = self.bench
        clean_key = self.index[("clean", d, m, "", "")]  # labels to keep (Table 3), source ids
        for op in (None, *bench.transforms):
            op_label = op.label if op else ORIGINAL
            key = stable_hash({
                "stage": "predict", "schema": ARTEFACT_SCHEMA, "set": st.key, "op": self.ident(op) if op else ORIGINAL,
                "k": bench.labels_k, "backend": bench.prediction.backend if op else "",
                **({"stored": bench.database.identity()} if st.label == CLEAN and bench.database.fair_storage else {}),
            })
            # every op cell reads the original top-k of its imageset (probabilities of it)
            deps = tuple(dict.fromkeys((st.key, clean_key) if op is None else
                                       (st.key, clean_key, self.index[("predict", d, m, st.label, ORIGINAL)])))
            self.add(Cell("predict", key, d, m, **_origin(st), operation=op_label,
                          operation_group=op.group if op else "", deps=deps),
                     ("predict", d, m, st.label, op_label))

    def _predict_keys(self, d: str, m: str, sets: Iterable[ImageSet], ops: list[str]) -> list[str]:
        return sorted(self.index[("predict", d, m, st.label, op)] for st in sets for op in [ORIGINAL, *ops])

    def _set_keys(self, sets: Iterable[ImageSet]) -> list[str]:
        return sorted(st.key for st in sets)

    def detectors(self, d: str, m: str, clean_key: str, split_key: str, sets: dict[str, ImageSet]) -> list[Cell]:
        bench, seed = self.bench, self.bench.settings.seed
        training = [st for st in sets.values() if st.training]
        variants = [""] + [h for h in holdouts(bench)
                           if all(a in sets for a in holdout_sets(bench, h)[1])]  # a failed held-out attack: none
        made: list[Cell] = []
        for holdout in variants:
            hold = variant_cells(bench, holdout)
            used = training if not holdout else [st for st in training if st.threat == "clean" or st.label in
                                                   sum(holdout_sets(bench, holdout), [])]
            for group in bench.detection.groups:
                ops = [t.label for t in group_ops(bench, group)]
                if not ops or (holdout and not _wanted(hold.groups, group)):
                    continue
                inputs = self._predict_keys(d, m, used, ops)
                for feat in bench.features:
                    if holdout and not _wanted(hold.features, feat.label):
                        continue
                    for det in bench.detectors:
                        if self.inputs_of(det.plugin) != "features" or (holdout and not _wanted(hold.detectors, det.label)):
                            continue
                        key = stable_hash({
                            "stage": "detect", "schema": ARTEFACT_SCHEMA, "split": split_key, "inputs": inputs,
                            "ops": ops, "feature": self.ident(feat), "k": bench.feature_k(feat),
                            "detector": self.ident(det), "seed": seed, "holdout": holdout,
                        })
                        made.append(self.add(
                            Cell("detect", key, d, m, feature_group=group, feature=feat.label, detector=det.label,
                                 deps=(split_key, clean_key, *self._set_keys(used), *inputs), holdout=holdout),
                            ("detect", d, m, det.label, feat.label, group, holdout)))
            for det in bench.detectors:
                inputs = self.inputs_of(det.plugin)
                if inputs == "features" or (holdout and not _wanted(hold.detectors, det.label)):
                    continue
                # it reads each set's original top-k too (the rows' labels)
                originals = self._predict_keys(d, m, used, [])
                key = stable_hash({"stage": "detect", "schema": ARTEFACT_SCHEMA, "split": split_key,
                                   "sets": self._set_keys(used), "inputs": originals, "detector": self.ident(det),
                                   "seed": seed, "holdout": holdout, **self._model_protocol(d, inputs)})
                made.append(self.add(
                    Cell("detect", key, d, m, feature_group=IMAGES, detector=det.label,
                         deps=(split_key, clean_key, *self._set_keys(used), *originals), holdout=holdout),
                    ("detect", d, m, det.label, "", "", holdout)))
        pipe = bench.correction.pipeline
        if pipe is not None:
            key = self.index.get(("detect", d, m, pipe.detector, pipe.feature, pipe.group, ""))
            if key:
                self.pipelines[(d, m)] = key
        return [c for c in made if not c.holdout]

    def _model_protocol(self, d: str, inputs: str) -> dict:
        """What else determines a model-aware detector cell: which images it sees and its
        reference dataset (fair storage reaches its key through the clean set's predictions)."""
        if inputs != "model":
            return {}
        bench = self.bench
        reference = bench.reference_for(d)
        out = {"normals": bench.detection.model_normals}
        if reference is not None:
            out["reference"] = self.ident(reference)
        return out

    def correctors(self, d: str, m: str, clean_key: str, split_key: str, sets: dict[str, ImageSet]) -> list[Cell]:
        bench = self.bench
        training = [st for st in sets.values() if st.training]
        pipeline_key = self.pipelines.get((d, m))
        made = []
        for group in bench.correction_groups():
            ops = [t.label for t in group_ops(bench, group)]
            inputs = self._predict_keys(d, m, training, ops)
            deps = (split_key, clean_key, *self._set_keys(training), *inputs, *((pipeline_key,) if pipeline_key else ()))
            for cor in bench.correctors:
                key = stable_hash({"stage": "correct", "inputs": inputs, "ops": ops, "split": split_key,
                                   "corrector": self.ident(cor), "pipeline": pipeline_key or "", "k": bench.settings.top_k})
                made.append(self.add(Cell("correct", key, d, m, correction_group=group, corrector=cor.label, deps=deps),
                                     ("correct", d, m, cor.label, group)))
        return made

    def _defense_cells(self, d: str, m: str, target: Target) -> list[str]:
        """Keys of the trained cells a target needs (none for a group's operations)."""
        bench = self.bench
        if target.kind == "operations":
            return []
        if target.kind == "pipeline":
            pipe = bench.correction.pipeline
            key = self.pipelines.get((d, m))
            cor = self.index.get(("correct", d, m, bench.correctors[0].label, bench.correction_groups()[0])) \
                if bench.correctors and bench.correction_groups() else None
            return [k for k in (key, cor) if k] if pipe else []
        key = self.index.get(("detect", d, m, target.detector, target.feature, target.group, ""))
        return [key] if key else []

    def adaptive(self, d: str, m: str, clean_key: str, split_key: str, entry: Entry, target: Target) -> ImageSet:
        bench, s, db = self.bench, self.bench.settings, self.bench.database
        trained = self._defense_cells(d, m, target)
        reads = sorted({dep for k in trained for dep in self._cell(k).deps} | set(trained))
        label = f"{entry.label}>{target.label}"
        key = stable_hash({
            "stage": "adaptive", "schema": ARTEFACT_SCHEMA, "clean": clean_key, "attack": self.ident(entry),
            "target": target.label, "ops": [self.ident(t) for t in group_ops(bench, target.group)] if target.group else [],
            "trained": trained, "db": db.identity(), "top_k": s.top_k, "seed": s.seed,
        })
        made = ImageSet(label, key, entry.label, entry.family, entry.plugin, entry.budget, "adaptive", target.label,
                        norm=entry.norm)
        self.add(Cell("adaptive", key, d, m, **_origin(made), feature_group=target.group,
                      feature=target.feature, detector=target.detector,
                      deps=tuple(dict.fromkeys((clean_key, split_key, *reads)))),
                 ("adaptive", d, m, label, ""))
        return made

    def robust(self, d: str, m: str, clean_key: str, split_key: str, entry: RobustEntry, target: Target) -> None:
        """One cell per budget of a ``[[robust]]`` entry against one defense, each reading the
        worst case of the budget below (stages/robust.py)."""
        bench = self.bench
        trained = self._defense_cells(d, m, target)
        reads = sorted({dep for k in trained for dep in self._cell(k).deps} | set(trained))
        previous = ""
        for index, budget in enumerate(entry.budgets):
            label = f"{entry.label}@{budget:g}>{target.label}"
            key = stable_hash({
                "stage": "robust", "schema": ARTEFACT_SCHEMA, "judge": ROBUST_JUDGE, "clean": clean_key, "split": split_key,
                "members": [m_.identity(index) | {"version": self.versions("attack", m_.plugin)}
                            for m_ in entry.members_for(target.label)],
                "norm": entry.norm, "budget": budget, "target": target.label, "trained": trained, "previous": previous,
                "db": bench.database.identity(), "prediction": bench.prediction.model_dump(mode="json"),
                "top_k": bench.settings.top_k, "seed": bench.settings.seed,
            })
            # an ensemble: no one plugin; the entry at this budget and the entry's label as its family
            self.add(Cell("robust", key, d, m, imageset=label, entry=f"{entry.label}@{budget:g}", family=entry.label,
                          feature_group=target.group, feature=target.feature,
                          detector=target.detector, deps=tuple(dict.fromkeys((clean_key, split_key, *reads,
                                                                              *([previous] if previous else [])))),
                          budget=budget, threat="adaptive", target=target.label, evaluation=True, norm=entry.norm),
                     ("robust", d, m, label, ""))
            previous = key

    def _cell(self, key: str) -> Cell:
        return next(c for c in reversed(self.cells) if c.key == key)

    def scores(self, d: str, m: str, clean_key: str, split_key: str, st: ImageSet, detect: list[Cell],
               corrects: list[Cell]) -> None:
        """Each trained detector and corrector of the world, and the detect-then-correct
        pipeline, on one evaluation set."""
        defenses: list[tuple[Cell, ...]] = [(c,) for c in (*detect, *corrects)]
        pipeline = self._defense_cells(d, m, Target("pipeline"))
        if len(pipeline) == 2:
            defenses.append(tuple(self._cell(k) for k in pipeline))
        for cells in defenses:
            det = next((c for c in cells if c.stage == "detect"), None)
            cor = next((c for c in cells if c.stage == "correct"), None)
            groups = [g for c in cells for g in (c.feature_group, c.correction_group) if g and g != IMAGES]
            reads = self._predict_keys(d, m, [st], [t.label for g in groups for t in group_ops(self.bench, g)])
            keys = [c.key for c in cells]
            key = stable_hash({"stage": "score", "schema": ARTEFACT_SCHEMA, "set": st.key, "defense": keys,
                               "reads": reads})
            deps = tuple(dict.fromkeys((st.key, clean_key, split_key, *keys, *(x for c in cells for x in c.deps), *reads)))
            self.add(Cell("score", key, d, m, **_origin(st), feature_group=det.feature_group if det else "",
                          feature=det.feature if det else "", detector=det.detector if det else "",
                          correction_group=cor.correction_group if cor else "", corrector=cor.corrector if cor else "",
                          deps=deps),
                     ("score", d, m, st.label, *keys))

    def subsets(self, d: str, m: str, clean_key: str, split_key: str, sets: dict[str, ImageSet]) -> None:
        bench = self.bench
        training = [st for st in sets.values() if st.training]
        for search in bench.detection.subset_search:
            det = next(e for e in bench.detectors if e.label == search.detector)
            feat = next(e for e in bench.features if e.label == search.feature)
            if self.inputs_of(det.plugin) != "features":
                continue
            ops = [t.label for t in group_ops(bench, search.group)]
            inputs = self._predict_keys(d, m, training, ops)
            key = stable_hash({"stage": "subset", "schema": ARTEFACT_SCHEMA, "split": split_key, "inputs": inputs,
                               "ops": ops, "feature": self.ident(feat), "k": bench.feature_k(feat),
                               "detector": self.ident(det), "max": search.max_operations,
                               "seed": bench.settings.seed})
            self.add(Cell("subset", key, d, m, feature_group=search.group, feature=feat.label, detector=det.label,
                          deps=(split_key, clean_key, *self._set_keys(training), *inputs)),
                     ("subset", d, m, det.label, feat.label, search.group))


def _origin(st: ImageSet) -> dict:
    """The cell fields that say where an image set comes from (for the cells that make,
    predict or score it)."""
    return {"imageset": st.label, "entry": st.entry, "family": st.family, "plugin": st.plugin, "budget": st.budget,
            "norm": st.norm, "threat": st.threat, "target": st.target, "evaluation": st.evaluation_only}
