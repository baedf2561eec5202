"""``benchmarks.toml`` -> a validated, typed :class:`Benchmark`, reporting every problem at once.

Each plugin entry is a table with ``plugin`` (the registered name), an optional ``name`` (a
label, so one plugin can appear twice with different parameters) and the plugin's parameters
inline. Transform entries also take ``group`` and ``grid`` (lists of values whose cartesian
product gives one operation each); detector entries take ``search`` (the same kind of table:
candidates chosen on the dev set). A section left out means the plugins flagged ``default``
(for transforms: the paper's 38 operations).
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import tomllib
from typing import get_args, get_origin
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, field_validator

from advbench.errors import ConfigError
from advbench.registry import Registry, unknown_plugin_message
from advbench.robust_config import RobustEntry, parse_robust
from advbench.specs import KINDS, NumbersAreNotBooleans, Params

SECTION_FOR_KIND = {k: k + "s" for k in KINDS}  # dataset -> datasets, ...
#: the longest label (benchmark name, entry name, group name) the store keeps: its String(200) columns
LABEL_MAX = 200
#: norms whose budgets are per pixel value of [0, 1] images (L2 divided by sqrt(D), L1 by D): at most 1
PER_VALUE_NORMS = {"linf": "L∞", "l2": "L2", "l1": "L1"}


class _Strict(NumbersAreNotBooleans):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BenchmarkSettings(_Strict):
    name: str = Field(min_length=1, max_length=LABEL_MAX, description="Benchmark name, the key of its results in the store.")
    seed: StrictInt = Field(0, ge=0, le=2**32 - 1, description="Seed for selection, attacks, splits and detectors "
                                                                "(0 to 2**32 - 1, numpy's range).")
    store: str | None = Field(None, description="SQLAlchemy URL or SQLite path of the results store.")
    top_k: StrictInt = Field(5, ge=1, description="k of the top-k labels (selection, criteria, features); below the "
                                                  "number of classes.")
    images_per_model: StrictInt = Field(1000, ge=1, description="Clean images picked per model (N).")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'...")


class DatabaseSettings(_Strict):
    target_shift: StrictInt = Field(100, ge=1, description="Target label = (top-1 + shift) mod C.")
    target_threshold: float = Field(0.99, gt=0, le=1, description="Targeted success: P(target) >= this.")
    image_format: Literal["jpeg", "png"] = Field("jpeg", description="File format of saved adversarial images.")
    jpeg_quality: StrictInt = Field(100, ge=1, le=100, description="JPEG quality of saved adversarial images.")
    batch_size: StrictInt = Field(32, ge=1, description="Images per attack batch.")
    split: tuple[float, float, float] = Field((0.70, 0.15, 0.15), description="train/dev/eval shares.")
    fair_storage: StrictBool = Field(
        False, description="Normal images go through the same save -> reload (image_format, jpeg_quality) as "
                           "adversarial ones before anything sees them, so a detector cannot flag the re-encoding "
                           "itself; false (the paper's protocol): only adversarial images are re-encoded.")

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, split: tuple[float, float, float]):
        if abs(sum(split) - 1.0) > 1e-6 or min(split) <= 0:
            raise ValueError("split shares must be positive and sum to 1")
        return split

    def identity(self) -> dict[str, Any]:
        """What of these settings determines an adversarial image (attack and adaptive cell
        keys): everything but ``fair_storage``, which acts on normal images only."""
        return self.model_dump(mode="json", exclude={"fair_storage"})


class PredictionSettings(_Strict):
    backend: Literal["pillow", "tensor"] = Field("pillow", description="How operations are applied.")
    batch_size: StrictInt = Field(128, ge=1, description="Images per forward pass.")
    default_operations: StrictBool | None = Field(
        None, description="Keep the default operations (the paper's 38) beside the listed [[transforms]]: "
                          "true adds the listed ones to them; null (the default) keeps them only when no "
                          "[[transforms]] is listed.")


DEFAULT_GROUPS = {
    "JPEG": ["jpeg"],
    "Scaling": ["scaling"],
    "Blur": ["blur"],
    "Rotation": ["rotation"],
    "JPEG+Scaling": ["jpeg", "scaling"],
    "All": ["*"],
}


Protocol = Literal["standard", "leave-one-attack-out", "per-attack"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)


class PartitionSettings(_Strict):
    train: list[str] = Field(min_length=1, description="Attack labels the detectors train on.")
    test: list[str] = Field(min_length=1, description="Attack labels they are then scored on (never trained on).")


class HoldoutCells(_Strict):
    groups: list[str] | None = Field(None, description="Feature groups that get held-out cells (default: all).")
    features: list[str] | None = Field(None, description="Features that get held-out cells (default: all).")
    detectors: list[str] | None = Field(None, description="Detectors that get held-out cells (default: all).")


class PerAttackCells(HoldoutCells):
    attacks: list[str] | None = Field(None, description="Primary attacks that get a per-attack detector cell "
                                                        "(default: all).")


class SubsetSearchSettings(_Strict):
    detector: str = Field(description="Detector label whose operation subsets are searched.")
    feature: str = Field(description="Feature label it is fitted on.")
    group: str = Field("All", description="Feature group whose operations are the candidates.")
    max_operations: StrictInt = Field(8, ge=1, description="Largest subset size the greedy search reaches.")


class DetectionSettings(_Strict):
    groups: dict[str, list[str]] = Field(
        default_factory=lambda: dict(DEFAULT_GROUPS),
        description="Feature groups: name -> transform groups ('*' = all operations).",
    )
    protocol: Protocol | tuple[Protocol, ...] = Field(
        "standard", description="Detector cells beside the standard ones (trained on the mixture of every primary "
                                "attack): 'leave-one-attack-out' adds, per attack, cells trained without it and scored "
                                "on it alone (unseen attacks); 'per-attack' adds, per attack, cells trained on normal "
                                "images and that attack alone and scored on it (the baselines' papers' protocol); a "
                                "list takes several.")

    @field_validator("protocol", mode="before")
    @classmethod
    def _known_protocols(cls, value: Any):
        # one message for a bad name (the union would report one per branch)
        names = [value] if isinstance(value, str) else value
        if isinstance(names, (list, tuple)):
            bad = [n for n in names if n not in PROTOCOLS]
            if bad:
                raise ValueError(f"unknown protocol {bad[0]!r}; valid: {', '.join(PROTOCOLS)} (or a list of them)")
        return value

    per_attack_cells: PerAttackCells = Field(PerAttackCells(), description="Which attacks, groups, features and "
                                                                           "detectors get per-attack cells.")
    model_normals: Literal["top-1", "top-k"] = Field(
        "top-1", description="Images the model-aware detectors (inputs = 'model') fit and are scored on: 'top-1' those "
                             "whose source the classifier gets right at top-1 (the baselines' papers), normal and "
                             "adversarial; 'top-k' every image of the benchmark. The FPR on top-1-wrong normal eval "
                             "images is reported beside, either way.")
    references: dict[str, str] = Field(
        default_factory=dict, description="Dataset label -> label of another [[datasets]] entry whose images, with "
                                          "their true labels, are the labelled reference set of the model-aware "
                                          "detectors' class statistics (kernel densities, Mahalanobis means). A "
                                          "reference dataset gets no cells of its own and must share no image "
                                          "with the one it serves (checked).")
    partitions: dict[str, PartitionSettings] = Field(
        default_factory=dict, description="Named train/test partitions of the attacks: detector cells trained "
                                          "on 'train' and scored on 'test' (e.g. L∞ → L2).")
    holdout_cells: HoldoutCells = Field(HoldoutCells(), description="Which detector cells get the held-out "
                                                                    "variants of 'protocol' and 'partitions'.")
    subset_search: list[SubsetSearchSettings] = Field(
        default_factory=list, description="Greedy forward selection of operations on dev for a detector and "
                                          "feature (the paper's cost question).")


class PipelineSettings(_Strict):
    detector: str = Field(description="Detector label whose eval predictions decide what gets corrected.")
    feature: str = Field("", description="Feature label of that detector cell (features detectors).")
    group: str = Field("", description="Feature group of that detector cell (features detectors).")


class CorrectionSettings(_Strict):
    groups: list[str] | None = Field(None, description="Operation groups (names from [detection] groups) voted "
                                     "over; default: those of JPEG, Scaling, JPEG+Scaling that exist (the paper's).")
    pipeline: PipelineSettings | None = Field(None, description="Detect, then correct only what the detector flags.")


class _Document(_Strict):
    benchmark: BenchmarkSettings
    database: DatabaseSettings = DatabaseSettings()
    prediction: PredictionSettings = PredictionSettings()
    detection: DetectionSettings = DetectionSettings()
    correction: CorrectionSettings = CorrectionSettings()
    adaptive: list[dict[str, Any]] | None = None
    robust: list[dict[str, Any]] | None = None
    datasets: list[dict[str, Any]] | None = None
    models: list[dict[str, Any]] | None = None
    attacks: list[dict[str, Any]] | None = None
    transforms: list[dict[str, Any]] | None = None
    features: list[dict[str, Any]] | None = None
    detectors: list[dict[str, Any]] | None = None
    correctors: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Target:
    """The defense an adaptive attack entry targets: a group's operations, a detector cell
    (``feature``/``group`` empty for detectors that see images), or the [correction] pipeline."""

    kind: str  # "operations", "detector" or "pipeline"
    group: str = ""
    feature: str = ""
    detector: str = ""

    @property
    def label(self) -> str:
        if self.kind == "operations":
            return self.group
        if self.kind == "pipeline":
            return "pipeline"
        return "/".join(p for p in (self.detector, self.feature, self.group) if p)


@dataclass(frozen=True)
class Entry:
    """One configured plugin instance."""

    kind: str
    plugin: str
    label: str
    params: Params
    group: str = ""  # transforms only
    datasets: tuple[str, ...] = ()  # models only: restrict to these dataset labels
    candidates: tuple[Params, ...] = ()  # detectors only: the dev-set search, in config order
    budget: float | None = None  # attacks: the budget of one point of a ``budgets`` grid
    family: str = ""  # attacks: the entry's label without the budget suffix
    targets: tuple[Target, ...] = ()  # adaptive attacks: the defenses attacked
    k: int | None = None  # features: their own k (default: benchmark.top_k)
    evaluation: bool = False  # attacks: an evaluation set (a budget grid point, or evaluation = true)
    norm: str = ""  # attacks: the norm their budget is measured in (the plugin's AttackSpec.norm)

    def identity(self) -> dict[str, Any]:
        ident = {"plugin": self.plugin, "params": self.params.model_dump(mode="json")}
        if self.candidates:
            ident["search"] = [c.model_dump(mode="json") for c in self.candidates]
        if self.k is not None:
            ident["k"] = self.k
        return ident


@dataclass(frozen=True)
class Benchmark:
    path: Path
    text: str
    settings: BenchmarkSettings
    database: DatabaseSettings
    prediction: PredictionSettings
    detection: DetectionSettings
    correction: CorrectionSettings
    datasets: tuple[Entry, ...]
    models: tuple[Entry, ...]
    attacks: tuple[Entry, ...]
    transforms: tuple[Entry, ...]
    features: tuple[Entry, ...]
    detectors: tuple[Entry, ...]
    correctors: tuple[Entry, ...]
    adaptive: tuple[Entry, ...] = ()
    robust: tuple[RobustEntry, ...] = ()
    config_hash: str = field(default="")

    @property
    def primary_attacks(self) -> tuple[Entry, ...]:
        """Attacks without a budget grid: the mixture detectors train on and the split follows."""
        return tuple(a for a in self.attacks if not a.evaluation)

    def feature_k(self, feature: Entry) -> int:
        return feature.k or self.settings.top_k

    @property
    def labels_k(self) -> int:
        """How many top labels predictions record: the largest k any feature or the rule needs."""
        return max([self.settings.top_k, *(self.feature_k(f) for f in self.features)])

    def correction_groups(self) -> list[str]:
        return correction_groups(self.correction, self.detection.groups)

    def models_for(self, dataset: Entry) -> list[Entry]:
        return [m for m in self.models if not m.datasets or dataset.label in m.datasets]

    @property
    def benchmarked_datasets(self) -> tuple[Entry, ...]:
        """Datasets that get cells: all but those named as another's reference set."""
        references = set(self.detection.references.values())
        return tuple(d for d in self.datasets if d.label not in references)

    def reference_for(self, dataset: str) -> Entry | None:
        """The labelled reference dataset of ``dataset`` ([detection] references), or None."""
        label = self.detection.references.get(dataset)
        return next((d for d in self.datasets if d.label == label), None) if label else None

    def protocols(self) -> tuple[str, ...]:
        p = self.detection.protocol
        return (p,) if isinstance(p, str) else tuple(p)


def correction_groups(correction: CorrectionSettings, groups: dict) -> list[str]:
    """The groups votes are taken over: the configured ones, else the paper's that exist."""
    if correction.groups is not None:
        return list(correction.groups)
    return [g for g in ("JPEG", "Scaling", "JPEG+Scaling") if g in groups]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _pydantic_problems(err: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    errors = err.errors()
    lead = tuple(prefix.split(".")) if prefix else ()
    missing = {tuple(e["loc"]): e for e in errors if e["type"] == "missing"}
    misspelt = {}  # a required key given under a close name: one problem, not two
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden" and isinstance(loc[-1], str):
            siblings = [m[-1] for m in missing if m[:-1] == loc[:-1] and isinstance(m[-1], str)]
            close = difflib.get_close_matches(loc[-1], siblings, n=1, cutoff=0.6)
            if close:
                misspelt[loc] = close[0]
                missing.pop(loc[:-1] + (close[0],))
    for e in errors:
        loc = tuple(e["loc"])
        where = _loc(lead + loc)
        if loc in misspelt:
            problems.append(f"{where}: unknown key; did you mean {misspelt[loc]!r}? (a required key)")
        elif e["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key (found {_shown(e['input'])})")
        elif e["type"] == "missing":
            if loc in missing:
                problems.append(f"{where}: required key is missing")
        else:
            message = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message} (found {_shown(e.get('input'))})")
    return problems


def _shown(value: Any, limit: int = 60) -> str:
    """A found value for a one-line message: its repr, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(value) if hasattr(value, '__len__') else len(text)} long)"


def load_benchmark(path: str | Path, registry: Registry) -> Benchmark:
    """Parse and validate a benchmark file; raise :class:`ConfigError` with every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not a UTF-8 text file (byte 0x{exc.object[exc.start]:02x} at offset "
                                      f"{exc.start}); a benchmark file is TOML text"]) from None
    return parse_benchmark(text, registry, path=path)


def parse_benchmark(text: str, registry: Registry, path: Path = Path("<string>")) -> Benchmark:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"invalid TOML: {exc}"]) from None
    problems: list[str] = []
    try:
        doc = _Document.model_validate(raw)
    except ValidationError as err:
        problems += _pydantic_problems(err)
        doc = None
    entries: dict[str, tuple[Entry, ...]] = {}
    broken: set[str] = set()
    for kind in KINDS:
        section = SECTION_FOR_KIND[kind]
        items = raw.get(section)
        if items is not None and not isinstance(items, list):
            continue  # already reported by the schema
        before = len(problems)
        entries[kind] = tuple(_entries(kind, items, registry, problems))
        if len(problems) > before:
            broken.add(kind)
    prediction = raw.get("prediction", {})
    default_ops = prediction.get("default_operations") if isinstance(prediction, dict) else None
    if raw.get("transforms") is not None and default_ops is True and "transform" not in broken:
        entries["transform"] = _with_default_operations(entries["transform"], registry, problems)
    elif raw.get("transforms") is None and default_ops is False:
        problems.append("prediction.default_operations: false, but no [[transforms]] is listed: there would be "
                        "no operation; list [[transforms]] or remove the key")
    adaptive_items = raw.get("adaptive")
    adaptive = tuple(_entries("attack", adaptive_items, registry, problems, adaptive=True)) \
        if isinstance(adaptive_items, list) else ()
    robust = parse_robust(raw.get("robust"), registry, problems, lambda t, where, probs: _target(t, where, None, probs))
    try:  # checked even when other sections are broken, so every problem shows at once
        detection = DetectionSettings.model_validate(raw.get("detection", {}))
    except ValidationError:
        detection = None  # already reported through the document schema
    if detection is not None and "transform" not in broken:
        _check_groups(detection.groups, entries.get("transform", ()), problems)
    if "dataset" not in broken:
        _check_model_datasets(entries.get("model", ()), entries.get("dataset", ()), problems)
    if doc is not None and detection is not None:
        _check_correction(doc.correction, detection.groups, entries, registry, problems)
        _check_protocol(detection, entries, problems)
        _check_targets(adaptive, detection.groups, doc.correction, entries, registry, problems)
        _check_targets(robust, detection.groups, doc.correction, entries, registry, problems, section="robust")
    if problems:
        raise ConfigError(str(path), list(dict.fromkeys(problems)))  # a grid repeats its points' problems
    assert doc is not None
    bench = Benchmark(
        path=path, text=text, settings=doc.benchmark, database=doc.database,
        prediction=doc.prediction, detection=doc.detection, correction=doc.correction,
        datasets=entries["dataset"], models=entries["model"], attacks=entries["attack"],
        transforms=entries["transform"], features=entries["feature"], detectors=entries["detector"],
        correctors=entries["corrector"], adaptive=adaptive, robust=robust,
    )
    return _with_hash(bench)


def _entries(kind: str, items: list | None, registry: Registry, problems: list[str], adaptive: bool = False):
    section = "adaptive" if adaptive else SECTION_FOR_KIND[kind]
    if items is None:  # omitted: the plugins' default set (no adaptive attack is run by default)
        if not adaptive:
            yield from _default_entries(kind, registry)
        return
    if not items:
        problems.append(f"{section}: empty; list at least one {kind} (valid: {', '.join(registry.names(kind))})")
    labels: set[str] = set()
    for i, item in enumerate(items):
        where = f"{section}[{i}]"
        if not isinstance(item, dict):  # the document's schema says so: "Input should be a valid dictionary"
            continue
        item = dict(item)
        plugin = item.pop("plugin", None)
        if not isinstance(plugin, str):
            problems.append(f"{where}.plugin: required key is missing (valid: {', '.join(registry.names(kind))})")
            continue
        if registry.find(kind, plugin) is None:
            problems.append(f"{where}.plugin: {unknown_plugin_message(kind, plugin, registry.names(kind))}")
            continue
        spec = registry.get(kind, plugin)
        label = str(item.pop("name", plugin))
        group = str(item.pop("group", getattr(spec, "default_group", "") or plugin)) if kind == "transform" else ""
        grid = item.pop("grid", None) if kind == "transform" else None
        datasets = item.pop("datasets", None) if kind == "model" else None
        search = item.pop("search", None) if kind == "detector" else None
        budgets = item.pop("budgets", None) if kind == "attack" else None
        targets = item.pop("targets", None) if adaptive else None
        k = item.pop("k", None) if kind == "feature" else None
        evaluation = item.pop("evaluation", False) if kind == "attack" and not adaptive else False
        if not isinstance(evaluation, bool):
            problems.append(f"{where}.evaluation: expected true or false, found {evaluation!r}")
            evaluation = False
        if datasets is not None and not (isinstance(datasets, list) and all(isinstance(d, str) for d in datasets)):
            problems.append(f"{where}.datasets: expected a list of dataset names, found {datasets!r}")
            datasets = None
        if k is not None and not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
            problems.append(f"{where}.k: expected a whole number >= 1 (the feature's own top-k), found {k!r}")
            k = None
        if adaptive:
            if not spec.adaptive:  # type: ignore[attr-defined]
                able = [n for n in registry.names("attack") if registry.get("attack", n).adaptive]  # type: ignore[attr-defined]
                problems.append(f"{where}.plugin: {plugin!r} is not an adaptive attack; valid: {', '.join(able) or '(none installed)'}")
                continue
            if not isinstance(targets, list) or not targets:
                problems.append(f"{where}.targets: required: a non-empty list of defenses, e.g. "
                                f"[{{ group = \"JPEG\" }}, {{ detector = \"svm\", feature = \"differences\", group = \"All\" }}, \"pipeline\"]")
                continue
            parsed_targets = tuple(t for i, raw_t in enumerate(targets)
                                   if (t := _target(raw_t, f"{where}.targets[{i}]", spec, problems)) is not None)
        else:
            parsed_targets = ()
        for params, suffix in _expand_grid(item, grid, where, problems):
            for budget_params, budget in _expand_budgets(spec, params, budgets, f"{where}.budgets", problems):
                try:
                    validated = spec.params.model_validate(budget_params)
                except ValidationError as err:
                    problems += _pydantic_problems(err, prefix=where)
                    continue
                family = label + suffix
                entry_label = family + ("" if budget is None else f"@{budget:g}")
                if len(entry_label) > LABEL_MAX:
                    problems.append(f"{where}.name: label {entry_label[:30] + '...'!r} has {len(entry_label)} characters; "
                                    f"the store keeps at most {LABEL_MAX}: give the entry a shorter 'name'")
                    continue
                if kind == "attack":
                    problems += _budget_problems(spec, validated, f"{where}.budgets" if budget is not None else where)
                if entry_label in labels:
                    problems.append(f"{where}.name: duplicate {kind} name {entry_label!r}; give each entry a distinct 'name'")
                    continue
                labels.add(entry_label)
                candidates = _search_candidates(spec, params, search, f"{where}.search", problems) if search is not None else ()
                yield Entry(kind, plugin, entry_label, validated, group, tuple(datasets or ()), candidates,
                            budget=budget, family=family if kind == "attack" else "", targets=parsed_targets, k=k,
                            evaluation=kind == "attack" and (evaluation or budget is not None or adaptive),
                            norm=getattr(spec, "norm", "") if kind == "attack" else "")


def _budget_problems(spec, params: Params, where: str) -> list[str]:
    """Budgets of an attack's ``budget_param`` outside what its norm allows: per pixel value of
    [0, 1] images a budget above 1 allows any image (and 1e308 overflows inside the attack)."""
    name, norm = getattr(spec, "budget_param", ""), getattr(spec, "norm", "")
    value = getattr(params, name, None) if name else None
    if norm not in PER_VALUE_NORMS or value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    bad = [v for v in values if isinstance(v, (int, float)) and not 0 < v <= 1]
    if not bad:
        return []
    key = where if where.endswith(".budgets") else f"{where}.{name}"
    return [f"{key}: budget {bad[0]:g} is outside (0, 1]: {PER_VALUE_NORMS[norm]} budgets are per pixel value of "
            f"images in [0, 1]" + ("" if norm == "linf" else f" (the {PER_VALUE_NORMS[norm]} norm divided by "
                                   f"{'sqrt(D)' if norm == 'l2' else 'D'}, D values per image)")]


def _expand_budgets(spec, params: dict, budgets: Any, where: str, problems: list[str]):
    """One parameter set per budget of an attack entry's ``budgets`` grid (or ``params`` alone)."""
    if budgets is None:
        yield params, None
        return
    name = getattr(spec, "budget_param", "")
    if not name:
        problems.append(f"{where}: attack {spec.name!r} has no budget parameter, so it cannot take budgets")
        return
    if not (isinstance(budgets, list) and budgets and all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                          and 0 < b < float("inf") for b in budgets)):
        problems.append(f"{where}: expected a non-empty list of positive, finite numbers, found {budgets!r}")
        return
    if name in params:
        problems.append(f"{where}: set either budgets or {name!r}, not both (budgets sets {name!r})")
        return
    field_info = spec.params.model_fields.get(name)
    as_list = field_info is not None and get_origin(field_info.annotation) is list or isinstance(
        getattr(field_info, "default", None), list)
    for budget in sorted(set(float(b) for b in budgets)):
        yield {**params, name: [budget] if as_list else budget}, budget


def _target(raw: Any, where: str, spec, problems: list[str]) -> Target | None:
    """A ``targets`` item: "pipeline", { group = ... }, or { detector = ..., feature = ..., group = ... }."""
    if raw == "pipeline":
        target = Target("pipeline")
    elif isinstance(raw, dict) and set(raw) <= {"group", "feature", "detector"} and all(isinstance(v, str) for v in raw.values()):
        if "detector" in raw:
            target = Target("detector", raw.get("group", ""), raw.get("feature", ""), raw["detector"])
        elif set(raw) == {"group"}:
            target = Target("operations", group=raw["group"])
        else:
            problems.append(f"{where}: a table with only 'group' targets a group's operations; add 'detector' to target a detector cell")
            return None
    else:
        problems.append(f"{where}: expected \"pipeline\", {{ group = ... }} or {{ detector = ..., feature = ..., group = ... }}, found {raw!r}")
        return None
    if spec is not None and target.kind not in spec.adaptive:
        problems.append(f"{where}: {spec.name!r} cannot attack a {target.kind} defense; it attacks: {', '.join(spec.adaptive)}")
        return None
    return target


def _expand_grid(fixed: dict, grid: Any, where: str, problems: list[str]):
    if grid is None:
        yield fixed, ""
        return
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        problems.append(f"{where}.grid: expected a table of non-empty lists, found {grid!r}")
        return
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        yield {**fixed, **dict(zip(keys, values))}, "".join(f"@{v}" for v in values)


def _search_candidates(spec, fixed: dict, search: Any, where: str, problems: list[str]) -> tuple[Params, ...]:
    """The parameter sets a detector's dev-set search tries: ``fixed`` with each combination of
    ``search`` (a table of lists, like a transform's ``grid``)."""
    if not isinstance(search, dict) or not search or not all(isinstance(v, list) and v for v in search.values()):
        problems.append(f"{where}: expected a table of non-empty lists (e.g. {{ C = [0.1, 1, 10] }}), found {search!r}")
        return ()
    unknown = [k for k in search if k not in spec.params.model_fields]
    if unknown:
        valid = ", ".join(spec.params.model_fields) or "none (this plugin has no parameters)"
        problems.append(f"{where}: {', '.join(map(repr, unknown))} is not a parameter of {spec.name!r}; valid: {valid}")
        return ()
    fixed = {k: v for k, v in fixed.items() if k not in search}
    candidates = []
    for params, _ in _expand_grid(fixed, search, where, problems):
        try:
            candidates.append(spec.params.model_validate(params))
        except ValidationError as err:
            problems += _pydantic_problems(err, prefix=where)
            return ()
    return tuple(candidates)


def _default_entries(kind: str, registry: Registry):
    for reg in registry.entries(kind):
        spec = reg.spec
        if kind == "transform":
            grid = dict(spec.default_grid)  # type: ignore[attr-defined]
            if not grid or not spec.default:
                continue
            for params, suffix in _expand_grid({}, grid, "", []):
                yield Entry(kind, spec.name, spec.name + suffix, spec.params.model_validate(params),
                            spec.default_group or spec.name)  # type: ignore[attr-defined]
        elif spec.default:
            yield Entry(kind, spec.name, spec.name, spec.params())


def _check_groups(groups: dict[str, list[str]], transforms: tuple[Entry, ...], problems: list[str]):
    known = sorted({t.group for t in transforms})
    for name, members in groups.items():
        for member in members:
            if member != "*" and member not in known:
                problems.append(
                    f"detection.groups.{name}: unknown transform group {member!r}; valid: {', '.join(known + ['*'])}"
                )


def _check_correction(correction: CorrectionSettings, groups: dict, entries: dict, registry: Registry,
                      problems: list[str]):
    for i, name in enumerate(correction.groups or []):
        if name not in groups:
            problems.append(f"correction.groups[{i}]: unknown group {name!r}; valid: {', '.join(groups)}")
    pipe = correction.pipeline
    if pipe is None:
        return
    detectors = [d.label for d in entries.get("detector", ())]
    features = [f.label for f in entries.get("feature", ())]
    if pipe.detector not in detectors:
        problems.append(f"correction.pipeline.detector: unknown detector {pipe.detector!r}; valid: {', '.join(detectors)}")
    else:
        entry = next(d for d in entries["detector"] if d.label == pipe.detector)
        on_images = registry.get("detector", entry.plugin).sees_images  # type: ignore[attr-defined]
        if on_images and (pipe.feature or pipe.group):
            problems.append(f"correction.pipeline: detector {pipe.detector!r} sees images; remove 'feature' and 'group'")
        elif not on_images and not (pipe.feature and pipe.group):
            problems.append(f"correction.pipeline: detector {pipe.detector!r} works on features; set both 'feature' "
                            f"(valid: {', '.join(features)}) and 'group' (valid: {', '.join(groups)})")
    if pipe.feature and pipe.feature not in features:
        problems.append(f"correction.pipeline.feature: unknown feature {pipe.feature!r}; valid: {', '.join(features)}")
    if pipe.group and pipe.group not in groups:
        problems.append(f"correction.pipeline.group: unknown group {pipe.group!r}; valid: {', '.join(groups)}")


def _with_default_operations(listed: tuple[Entry, ...], registry: Registry, problems: list[str]) -> tuple[Entry, ...]:
    """The default operations followed by the listed ones (prediction.default_operations = true)."""
    defaults = tuple(_default_entries("transform", registry))
    taken = {e.label for e in defaults}
    for i, entry in enumerate(listed):
        if entry.label in taken:
            problems.append(f"transforms[{i}]: {entry.label!r} is already a default operation; drop it or give it "
                            f"another 'name'")
    return defaults + tuple(e for e in listed if e.label not in taken)


def _check_protocol(detection: DetectionSettings, entries: dict, problems: list[str]) -> None:
    attacks = [a.label for a in entries.get("attack", ()) if not a.evaluation]
    for name, part in detection.partitions.items():
        for side in ("train", "test"):
            for i, label in enumerate(getattr(part, side)):
                if label not in attacks:
                    problems.append(f"detection.partitions.{name}.{side}[{i}]: unknown attack {label!r}; valid: "
                                    f"{', '.join(attacks)} (attacks without budgets)")
        if set(part.train) & set(part.test):
            problems.append(f"detection.partitions.{name}: {', '.join(sorted(set(part.train) & set(part.test)))} "
                            f"in both train and test; an unseen attack must not be trained on")
    protocols = (detection.protocol,) if isinstance(detection.protocol, str) else detection.protocol
    if "leave-one-attack-out" in protocols and len(attacks) < 2:
        problems.append("detection.protocol: leave-one-attack-out needs at least two attacks without budgets; "
                        f"found {len(attacks)}")
    known = {"groups": list(detection.groups), "features": [f.label for f in entries.get("feature", ())],
             "detectors": [d.label for d in entries.get("detector", ())]}
    for key, valid in known.items():
        for i, label in enumerate(getattr(detection.holdout_cells, key) or []):
            if label not in valid:
                problems.append(f"detection.holdout_cells.{key}[{i}]: unknown {key[:-1]} {label!r}; valid: {', '.join(valid)}")
    for i, label in enumerate(detection.per_attack_cells.attacks or []):
        if label not in attacks:
            problems.append(f"detection.per_attack_cells.attacks[{i}]: unknown attack {label!r}; valid: "
                            f"{', '.join(attacks)} (attacks without budgets)")
    for key, valid in known.items():
        for i, label in enumerate(getattr(detection.per_attack_cells, key) or []):
            if label not in valid:
                problems.append(f"detection.per_attack_cells.{key}[{i}]: unknown {key[:-1]} {label!r}; valid: "
                                f"{', '.join(valid)}")
    datasets = [d.label for d in entries.get("dataset", ())]
    for served, reference in detection.references.items():
        for side, label in (("", served), (f".{served}", reference)):
            if label not in datasets:
                problems.append(f"detection.references{side}: unknown dataset {label!r}; valid: {', '.join(datasets)}")
        if served == reference:
            problems.append(f"detection.references.{served}: a dataset cannot be its own reference set")
        elif reference in detection.references:
            problems.append(f"detection.references.{served}: {reference!r} is itself served by a reference set; "
                            "a reference dataset gets no cells")
    for i, search in enumerate(detection.subset_search):
        for key, value in (("detectors", search.detector), ("features", search.feature), ("groups", search.group)):
            if value not in known[key]:
                problems.append(f"detection.subset_search[{i}].{key[:-1]}: unknown {key[:-1]} {value!r}; valid: "
                                f"{', '.join(known[key])}")


def _check_targets(adaptive: tuple[Entry, ...] | tuple[RobustEntry, ...], groups: dict, correction: CorrectionSettings,
                   entries: dict, registry: Registry, problems: list[str], section: str = "adaptive") -> None:
    detectors = {d.label: registry.get("detector", d.plugin) for d in entries.get("detector", ())}
    features = [f.label for f in entries.get("feature", ())]
    seen: set[int] = set()
    for entry in adaptive:
        if id(entry.targets) in seen:  # budgets share one targets tuple: check it once
            continue
        seen.add(id(entry.targets))
        where = f"{section}[{entry.family}].targets"
        for t in entry.targets:
            if t.kind == "pipeline" and correction.pipeline is None:
                problems.append(f"{where}: 'pipeline' needs a [correction] pipeline to attack")
            elif t.kind == "pipeline" and not correction_groups(correction, groups):
                problems.append(f"{where}: 'pipeline' needs a group to correct over: set [correction] groups or "
                                f"add JPEG, Scaling or JPEG+Scaling to [detection] groups")
            if t.group and t.group not in groups:
                problems.append(f"{where}: unknown group {t.group!r}; valid: {', '.join(groups)}")
            if t.kind != "detector":
                continue
            spec = detectors.get(t.detector)
            # a [[robust]] ensemble skips the members a defense cannot meet; an adaptive entry is one attack
            plugin = getattr(entry, "plugin", None)
            needs_scores = plugin is not None and registry.get("attack", plugin).needs_scores  # type: ignore[attr-defined]
            if spec is None:
                problems.append(f"{where}: unknown detector {t.detector!r}; valid: {', '.join(detectors)}")
            elif needs_scores and spec.differentiable is False:  # type: ignore[attr-defined]
                able = [d for d, s in detectors.items() if s.differentiable]  # type: ignore[attr-defined]
                problems.append(f"{where}: {entry.plugin!r} differentiates through the detector's scores and detector "
                                f"{t.detector!r} declares none (differentiable = False); target one that does "
                                f"({', '.join(able) or 'none configured'}) or use a label-only attack (system-hsj)")
            elif spec.inputs == "features" and not (t.feature in features and t.group):  # type: ignore[attr-defined]
                problems.append(f"{where}: detector {t.detector!r} works on features; give 'feature' (valid: "
                                f"{', '.join(features)}) and 'group' (valid: {', '.join(groups)})")
            elif spec.inputs != "features" and (t.feature or t.group):  # type: ignore[attr-defined]
                problems.append(f"{where}: detector {t.detector!r} sees images; remove 'feature' and 'group'")


def _check_model_datasets(models: tuple[Entry, ...], datasets: tuple[Entry, ...], problems: list[str]):
    known = [d.label for d in datasets]
    for i, model in enumerate(models):
        for name in model.datasets:
            if name not in known:
                problems.append(f"models[{i}].datasets: unknown dataset {name!r}; valid: {', '.join(known)}")


def stable_hash(obj: Any) -> str:
    """A short content hash of a JSON-able object (the cache and store key)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _without_defaults(settings: BaseModel, newer: tuple[str, ...]) -> dict[str, Any]:
    """``settings`` as JSON less the fields of ``newer`` left at their defaults: settings added
    later keep the hash of a benchmark that does not use them."""
    dump = settings.model_dump(mode="json")
    for name in newer:
        default = type(settings).model_fields[name].get_default(call_default_factory=True)
        if dump[name] == (default.model_dump(mode="json") if isinstance(default, BaseModel) else default):
            dump.pop(name)
    return dump


def _with_hash(bench: Benchmark) -> Benchmark:
    from dataclasses import replace

    ident = {
        "settings": bench.settings.model_dump(mode="json"),
        "database": _without_defaults(bench.database, ("fair_storage",)),
        "prediction": bench.prediction.model_dump(mode="json"),
        "detection": _without_defaults(bench.detection, ("per_attack_cells", "model_normals", "references")),
        "correction": bench.correction.model_dump(mode="json"),
        **{SECTION_FOR_KIND[k]: [e.identity() | {"label": e.label, "group": e.group}
                                 for e in getattr(bench, SECTION_FOR_KIND[k])] for k in KINDS},
        "adaptive": [e.identity() | {"label": e.label, "targets": [t.label for t in e.targets]} for e in bench.adaptive],
        **({"robust": [e.identity() for e in bench.robust]} if bench.robust else {}),
    }
    return replace(bench, config_hash=stable_hash(ident))
