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


def _cell(model, attack, share, transform="jpeg@90"):
    metrics = [SimpleNamespace(name="images", subset="", value=10.0),
               SimpleNamespace(name="topk_misclassified", subset="", value=10.0 * share)]
    return SimpleNamespace(stage="predict", status="ok", dataset="d", model=model, attack=attack,
                           transform=transform, feature="", detector="", key=model + attack, metrics=metrics)


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
