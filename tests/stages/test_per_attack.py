"""The per-attack protocol, top-1 normals, fair storage and the labelled reference set, on the
tiny world: a spy model-aware detector keeps what the core handed its ``fit``."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advbench import hookimpl
from advbench.cache import load_array, load_columns
from advbench.engine.imagesets import stored
from advbench.errors import DataError
from advbench.plan import CLEAN, PER_ATTACK
from advbench.specs import DetectorSpec
from advbench.testing import digits, registry_with, run_tiny, tiny_benchmark


class Spy:
    """Scores = mean pixel value; keeps the labels, sources, images and reference set of its fit."""

    threshold = 0.5

    def __init__(self):
        self.fit_arrays: dict[str, np.ndarray] = {}

    def fit(self, images, labels, info=None):
        ref = info.reference
        self.fit_arrays = {"labels": np.asarray(labels), "sources": np.asarray(info.sources),
                           "images": np.asarray(images),
                           "reference_labels": np.zeros(0, int) if ref is None else ref.labels,
                           "reference_images": np.zeros((0,), np.uint8) if ref is None else ref.images}
        return self

    def scores(self, images):
        return np.asarray(images, dtype=float).reshape(len(images), -1).mean(1) / 255

    def predict(self, images):
        return (self.scores(images) > self.threshold).astype(int)

    def save(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        for name, values in self.fit_arrays.items():
            np.save(directory / f"{name}.npy", values)

    def load(self, directory):
        self.fit_arrays = {p.stem: np.load(p) for p in Path(directory).glob("*.npy")}
        return self


def spy_module():
    module = types.ModuleType("spy_detector_plugin")

    @hookimpl
    def advbench_register_detectors(register):
        register(DetectorSpec(name="spy", summary="records its fit", inputs="model", fit_info=True,
                              build=lambda params, ctx: Spy()))

    module.advbench_register_detectors = advbench_register_detectors
    return module


ATTACKS = ['plugin = "fgsm"\nepsilons = [0.1, 0.2, 0.3]', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5']


def _run(root, detection: str, database: str = "", extra: str = ""):
    toml = tiny_benchmark(attacks=ATTACKS, detectors=['plugin = "spy"', 'plugin = "lda"'], images=60,
                          detection=detection, extra=extra)
    if database:
        toml = toml.replace("[database]\n", "[database]\n" + database + "\n")
    result = run_tiny(root, toml, registry=registry_with(spy_module()))
    assert not result.failed, [o.error for o in result.failed]
    return result


def _artefact(root, stage, key):
    return next((Path(root) / "cache" / stage).rglob(key))


@pytest.fixture(scope="module")
def per_attack_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("per-attack")
    return _run(root, 'protocol = "per-attack"'), root


def test_per_attack_cells_never_train_on_another_attack(per_attack_run):
    result, root = per_attack_run
    cells = {o.cell.holdout: o.cell for o in result.outcomes if o.cell.stage == "detect" and o.cell.detector == "spy"}
    assert set(cells) == {"", PER_ATTACK + "fgsm", PER_ATTACK + "bim"}
    split = load_array(_artefact(root, "split", next(o.cell.key for o in result.outcomes if o.cell.stage == "split")),
                       "split")
    clean = _artefact(root, "clean", next(o.cell.key for o in result.outcomes if o.cell.stage == "clean"))
    right = load_array(clean, "top1") == load_array(clean, "labels")
    attack = {o.cell.imageset: _artefact(root, "attack", o.cell.key) for o in result.outcomes if o.cell.stage == "attack"}
    for name in ("fgsm", "bim"):
        fitted = _artefact(root, "detect", cells[PER_ATTACK + name].key) / "detector"
        labels, sources, images = (np.load(fitted / f"{k}.npy") for k in ("labels", "sources", "images"))
        source = load_array(attack[name], "source")
        expected = np.flatnonzero((split[source] == 0) & right[source])  # rows of that attack's set
        # the adversarial rows are that attack's train images, by index and by pixels, and none other
        assert np.array_equal(np.sort(sources[labels == 1]), np.sort(source[expected]))
        order = np.argsort(sources[labels == 1])
        assert np.array_equal(images[labels == 1][order], load_array(attack[name], "images")[expected][np.argsort(source[expected])])
        other = "bim" if name == "fgsm" else "fgsm"
        other_images = load_array(attack[other], "images")
        assert not any((other_images == im).all(axis=(1, 2, 3)).any() for im in images[labels == 1])
        # normal rows: the train sources the classifier gets right at top-1
        assert np.array_equal(np.sort(sources[labels == 0]), np.flatnonzero((split == 0) & right))
        # scored on normal images and that attack's only
        columns = load_columns(_artefact(root, "detect", cells[PER_ATTACK + name].key), "per_image")
        used = columns["split"] != "unused"
        assert set(columns["origin"][used]) == {CLEAN, name}


def test_the_mixture_cell_trains_on_every_attack_and_top1_splits_the_fpr(per_attack_run):
    result, root = per_attack_run
    cell = next(o for o in result.outcomes if o.cell.stage == "detect" and o.cell.detector == "spy" and not o.cell.holdout)
    labels = np.load(_artefact(root, "detect", cell.cell.key) / "detector" / "labels.npy")
    assert (labels == 1).sum() > (labels == 0).sum()  # two attacks' train images
    metrics = {(n, s): v for n, s, v in cell.metrics}
    for name in ("tpr_at_dev_5fpr", "fpr_at_dev_5fpr", "tnr_at_95tpr", "tnr_at_95tpr_lo", "auroc_lo"):
        assert ("%s" % name, "") in metrics
    assert ("n", "clean:top1-correct") in metrics
    lda = next(o for o in result.outcomes if o.cell.stage == "detect" and o.cell.detector == "lda" and not o.cell.holdout)
    m = {(n, s): v for n, s, v in lda.metrics}
    assert m[("n", "clean:top1-correct")] + m.get(("n", "clean:top1-wrong"), 0) == m[("n", "clean")]


def test_fair_storage_passes_normal_images_through_the_save_and_reload(tmp_path, per_attack_run):
    plain_result, plain_root = per_attack_run
    result = _run(tmp_path, 'protocol = "per-attack"', database="fair_storage = true")
    keys = lambda r, stage: {(o.cell.imageset, o.cell.operation): o.cell.key for o in r.outcomes if o.cell.stage == stage}
    assert keys(result, "attack") == keys(plain_result, "attack")  # attacks start from the dataset's pixels
    assert keys(result, "predict")[(CLEAN, "original")] != keys(plain_result, "predict")[(CLEAN, "original")]
    cell = next(o.cell for o in result.outcomes if o.cell.stage == "detect" and o.cell.detector == "spy" and not o.cell.holdout)
    fitted = _artefact(tmp_path, "detect", cell.key) / "detector"
    labels, sources, images = (np.load(fitted / f"{k}.npy") for k in ("labels", "sources", "images"))
    clean = load_array(_artefact(tmp_path, "clean", next(o.cell.key for o in result.outcomes if o.cell.stage == "clean")),
                       "images")
    expected = stored(clean[sources[labels == 0]], "jpeg", 100)
    assert np.array_equal(images[labels == 0], expected) and not np.array_equal(expected, clean[sources[labels == 0]])


def _digit_folder(root: Path, per_class: int = 6) -> Path:
    images, labels = digits()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for j, i in enumerate(np.flatnonzero(labels == c)[1::2][:per_class]):
            Image.fromarray(images[i]).save(root / str(c) / f"{j:04d}.png")
    return root


def _folder_run(tmp_path: Path, reference: str):
    folder = _digit_folder(tmp_path / "digits")
    (tmp_path / "run").mkdir()
    return run_tiny(tmp_path / "run", _folder_benchmark(folder, reference), registry=registry_with(spy_module()))


def _folder_benchmark(folder: Path, reference: str) -> str:
    toml = tiny_benchmark(attacks=ATTACKS[:1], detectors=['plugin = "spy"'], images=40,
                          detection='references = { digits = "reference" }')
    return toml.replace('[[datasets]]\nplugin = "testing-digits"\n',
                        f'[[datasets]]\nplugin = "image-folder"\nname = "digits"\nroot = "{folder}"\nlimit_per_class = 4\n\n'
                        f'[[datasets]]\nplugin = "image-folder"\nname = "reference"\nroot = "{folder}"\n{reference}\n')


def test_the_reference_set_reaches_fit_with_true_labels_and_gets_no_cells(tmp_path):
    result = _folder_run(tmp_path, "skip_per_class = 4")
    assert not result.failed, [o.error for o in result.failed]
    assert {o.cell.dataset for o in result.outcomes} == {"digits"}
    cell = next(o.cell for o in result.outcomes if o.cell.stage == "detect" and o.cell.detector == "spy")
    fitted = _artefact(tmp_path / "run", "detect", cell.key) / "detector"
    assert np.array_equal(np.load(fitted / "reference_labels.npy"), np.repeat(np.arange(10), 2))
    assert len(np.load(fitted / "reference_images.npy")) == 20


def test_a_reference_set_that_overlaps_the_benchmarked_images_is_refused(tmp_path):
    result = _folder_run(tmp_path, "skip_per_class = 3")  # file 3 of each class is in both
    failed = [o for o in result.failed if o.cell.stage == "detect"]
    assert failed and "shares" in failed[0].error and "reference" in failed[0].error
