"""Plots of a stored run, and CNN detectors (images in, logits out) through the whole runner."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image

from advbench.cache import Cache
from advbench.errors import AdvbenchError
from advbench.report import figures, tables
from advbench.store import open_store
from advbench.testing import run_tiny, tiny_benchmark

PNG = b"\x89PNG\r\n\x1a\n"


def _valid_png(path):
    assert path.read_bytes()[:8] == PNG
    with Image.open(path) as image:
        assert image.size[0] > 100


def test_roc_heatmap_and_cost_plots_of_a_run(tiny_run, tmp_path):
    result, root = tiny_run
    cells = open_store(str(root / "results.db")).cells(result.run_id)
    cache = Cache(root / "cache")
    _valid_png(figures.roc(cells, cache, tmp_path / "roc.png"))
    _valid_png(figures.heatmap(cells, tmp_path / "heat.png"))
    _valid_png(figures.cost(cells, tmp_path / "cost.png"))
    assert (figures.heatmap(cells, tmp_path / "heat.svg")).read_text().lstrip().startswith(("<?xml", "<svg"))


def test_cnn_detectors_with_and_without_softmax_give_table6_rows_and_the_logit_plot(tmp_path, registry):
    toml = tiny_benchmark(detectors=['plugin = "lda"',
                                     'plugin = "cnn-small"\nname = "cnn-softmax"\nsoftmax = true\nepochs = 3\ndevice = "cpu"',
                                     'plugin = "cnn-small"\nname = "cnn-no-softmax"\nsoftmax = false\nepochs = 3\ndevice = "cpu"'],
                          images=40)
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    cells = open_store(str(tmp_path / "results.db")).cells(result.run_id)
    [t6] = tables.table6(cells)
    names = [r[0] for r in t6.rows]
    assert "cnn-softmax" in names and "cnn-no-softmax" in names and any(n.startswith("lda") for n in names)
    _valid_png(figures.logits(cells, Cache(tmp_path / "cache"), tmp_path / "logits.png"))
    # the same panels from the store's per-image rows, with no cache at all
    images = open_store(str(tmp_path / "results.db")).images(result.run_id, stage="detect")
    drawn, notes = {}, []
    real = figures.plots.logit_scatter
    figures.plots.logit_scatter = lambda panels, path: drawn.setdefault("panels", []).append(panels) or real(panels, path)
    try:
        figures.logits(cells, Cache(tmp_path / "no-cache"), tmp_path / "l1.png", images=images, on_note=notes.append)
        figures.logits(cells, Cache(tmp_path / "cache"), tmp_path / "l2.png", on_note=notes.append)
    finally:
        figures.plots.logit_scatter = real
    from_store, from_cache = drawn["panels"]
    assert [p[0] for p in from_store] == [p[0] for p in from_cache] == ["cnn-softmax / images", "cnn-no-softmax / images"]
    for (_, z_store, y_store), (_, z_cache, y_cache) in zip(from_store, from_cache):
        assert z_store.tolist() == z_cache.tolist() and y_store.tolist() == y_cache.tolist()
    assert len(notes) == 1 and notes[0].startswith("logits: cnn-softmax / images, cnn-no-softmax / images read from")


def _cell(model, imageset, share, operation="jpeg@90"):
    metrics = [SimpleNamespace(name="images", subset="", value=10.0),
               SimpleNamespace(name="topk_misclassified", subset="", value=10.0 * share)]
    return SimpleNamespace(stage="predict", status="ok", dataset="d", model=model, imageset=imageset,
                           operation=operation, feature="", detector="", key=model + imageset, metrics=metrics)


def test_the_heatmap_keeps_each_model_apart(monkeypatch, tmp_path):
    drawn = {}
    monkeypatch.setattr(figures.plots, "heatmap", lambda title, rows, cols, values, path, **kw: drawn.update(
        cols=cols, values=values))
    figures.heatmap([_cell("vgg16", "fgsm", 0.1), _cell("resnet50", "fgsm", 0.9)], tmp_path / "h.png")
    assert drawn["cols"] == ["vgg16: fgsm", "resnet50: fgsm"] and drawn["values"].tolist() == [[10.0, 90.0]]


def test_plots_that_need_artefacts_name_the_missing_cache(tiny_run, tmp_path):
    result, root = tiny_run
    cells = open_store(str(root / "results.db")).cells(result.run_id)
    with pytest.raises(AdvbenchError, match="not in the cache .*--cache-dir"):
        figures.roc(cells, Cache(tmp_path / "elsewhere"), tmp_path / "roc.png")
    with pytest.raises(AdvbenchError, match="no finished detector cells"):
        figures.logits([c for c in cells if c.stage != "detect"], Cache(root / "cache"), tmp_path / "l.png")


# --- the evaluation protocol: security curves, subset curves, ROC from the store ------------------


@pytest.fixture(scope="module")
def evaluation(evaluation_run):
    result, root = evaluation_run
    store = open_store(str(root / "results.db"))
    return store, result.run_id, store.cells(result.run_id), root


def test_security_plot_of_a_run_with_budgets(evaluation, tmp_path, monkeypatch):
    _, _, cells, _ = evaluation
    _valid_png(figures.security(cells, tmp_path / "security.png"))
    drawn = {}
    monkeypatch.setattr(figures.plots, "security_curves", lambda panels, path: drawn.update(panels=panels))
    figures.security(cells, tmp_path / "s.png")
    titles = [t for t, _ in drawn["panels"]]
    assert titles == ["fgsm-grid (oblivious)", "eot-pgd (adaptive vs JPEG)"]  # system-hsj has no budgets: no curve
    detection, system = drawn["panels"][0][1]
    [score] = [c for c in cells if c.stage == "score" and c.imageset == "fgsm-grid@0.3" and c.detector == "lda"
               and c.feature_group == "JPEG"]
    jpeg = next(s for s in system if s[0] == "lda/counting/JPEG")
    assert list(jpeg[1]) == [0.1, 0.3] and jpeg[2][1] == tables.metric(score, "system_success")
    assert system[-1][0] == "(attack alone)" and not any(s[0].startswith("vote") for s in detection)


def test_an_adaptive_panel_always_shows_the_defense_it_attacks(evaluation, tmp_path, monkeypatch):
    _, _, cells, _ = evaluation
    drawn = {}
    monkeypatch.setattr(figures.plots, "security_curves", lambda panels, path: drawn.update(panels=panels))
    figures.security(cells, tmp_path / "s.png", top=1)
    oblivious, adaptive = (dict(drawn["panels"])[t][0] for t in ("fgsm-grid (oblivious)", "eot-pgd (adaptive vs JPEG)"))
    assert len(oblivious) == 1 and not any("(targeted)" in s[0] for s in oblivious)
    # the adaptive set targets the JPEG group's operations: every detector over JPEG is its defense
    targeted = sorted(s[0] for s in adaptive if s[0].endswith("(targeted)"))
    assert targeted and all("/JPEG (targeted)" in name for name in targeted), targeted


def test_security_plot_needs_budgets(tiny_run, tmp_path):
    result, root = tiny_run
    cells = open_store(str(root / "results.db")).cells(result.run_id)
    with pytest.raises(AdvbenchError, match="no evaluation sets with budgets"):
        figures.security(cells, tmp_path / "s.png")


def test_cost_plot_draws_the_subset_search(evaluation, tmp_path, monkeypatch):
    _, _, cells, _ = evaluation
    _valid_png(figures.cost(cells, tmp_path / "cost.png"))
    drawn = {}
    monkeypatch.setattr(figures.plots, "accuracy_vs_cost", lambda points, path, curves=(): drawn.update(
        points=points, curves=curves))
    figures.cost(cells, tmp_path / "c.png")
    [(name, sizes, accuracy)] = drawn["curves"]
    [subset] = [c for c in cells if c.stage == "subset"]
    assert name.startswith("subset search") and sizes == [1, 2]
    assert accuracy == [tables.metric(subset, "accuracy", w) for _, _, w in tables.subset_steps(subset)]
    assert len(drawn["points"]) == 2  # the standard detect cells only: held-out cells are not costed


def test_roc_reads_the_store_and_falls_back_to_the_cache(evaluation, tmp_path, monkeypatch):
    store, run_id, cells, root = evaluation
    images = store.images(run_id, stage="detect")
    notes, curves = [], {}
    real = figures.plots.roc_curves
    monkeypatch.setattr(figures.plots, "roc_curves", lambda c, path, title: curves.update(
        {name: (fpr, tpr) for name, fpr, tpr in c}) or real(c, path, title=title))
    _valid_png(figures.roc(cells, Cache(tmp_path / "no-cache"), tmp_path / "roc.png", images=images, on_note=notes.append))
    assert notes == [] and set(curves) == {"lda / counting / JPEG", "lda / counting / All"}
    from_store = dict(curves)
    curves.clear()  # the cache gives the same curves, and says so
    figures.roc(cells, Cache(root / "cache"), tmp_path / "roc2.png", images=None, on_note=notes.append)
    assert len(notes) == 1 and "artefact cache" in notes[0]
    for name, (fpr, tpr) in from_store.items():
        assert list(fpr) == list(curves[name][0]) and list(tpr) == list(curves[name][1])
    with pytest.raises(AdvbenchError, match="store holds no per-image scores .* --cache-dir"):
        figures.roc(cells, Cache(tmp_path / "no-cache"), tmp_path / "roc3.png", images={"cell_key": []})


def test_eval_scores_keep_eval_rows_of_cells_with_every_score():
    images = {"cell_key": ["a", "a", "a", "b", "b"], "split": ["train", "eval", "eval", "eval", "eval"],
              "y": [0, 0, 1, 0, 1], "score": [9.0, 0.1, 0.8, 0.2, None]}
    scores = figures.eval_scores(images)
    assert list(scores) == ["a"] and scores["a"][0].tolist() == [0, 1] and scores["a"][1].tolist() == [0.1, 0.8]
    assert figures.eval_scores(None) == {} and figures.eval_scores({"cell_key": []}) == {}
