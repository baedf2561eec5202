from __future__ import annotations

import shutil
import types

import numpy as np

from advbench import hookimpl
from advbench.specs import AttackSpec
from advbench.execution.execute import comparable
from advbench.store import open_store
from advbench.testing import registry_with, run_tiny


def _copy_world(tiny_run, tmp_path):
    _, root = tiny_run
    shutil.copytree(root / "cache", tmp_path / "cache")
    shutil.copy(root / "results.db", tmp_path / "results.db")
    return (root / "benchmark.toml").read_text()


def test_the_tiny_world_ran_every_stage(tiny_run):
    result, _ = tiny_run
    stages = {o.cell.stage for o in result.outcomes}
    assert stages == {"clean", "attack", "split", "predict", "detect", "correct"}
    assert all(o.status == "ok" for o in result.outcomes)


def test_second_run_recomputes_nothing(tiny_run, tmp_path, registry):
    toml = _copy_world(tiny_run, tmp_path)
    again = run_tiny(tmp_path, toml, registry=registry)
    assert again.computed == [] and all(o.cached for o in again.outcomes)
    first = {o.cell.key: repr(o.metrics) for o in tiny_run[0].outcomes}  # repr: nan == nan
    assert {o.cell.key: repr(o.metrics) for o in again.outcomes} == first


def test_changing_one_attack_parameter_recomputes_only_its_cells(tiny_run, tmp_path, registry):
    toml = _copy_world(tiny_run, tmp_path).replace("steps = 5", "steps = 4")
    edited = run_tiny(tmp_path, toml, registry=registry)
    computed = {o.cell.title for o in edited.computed}
    assert "attack:testing-digits/testing-cnn/bim" in computed
    assert not any(t.startswith("attack:") and "fgsm" in t for t in computed)
    assert not any(t.startswith(("clean:", "predict:testing-digits/testing-cnn/clean",
                                 "predict:testing-digits/testing-cnn/fgsm")) for t in computed)
    assert {t.split(":")[0] for t in computed} == {"attack", "split", "predict", "detect", "correct"}


def test_fresh_recomputes_and_gives_identical_results(tiny_run, tmp_path, registry):
    toml = _copy_world(tiny_run, tmp_path)
    fresh = run_tiny(tmp_path, toml, registry=registry, fresh=True)
    assert all(not o.cached for o in fresh.outcomes)
    first = {o.cell.key: comparable(o.metrics) for o in tiny_run[0].outcomes}
    again = {o.cell.key: comparable(o.metrics) for o in fresh.outcomes}
    assert again == first  # determinism: same config and seed, same results


def _exploding_module() -> types.ModuleType:
    module = types.ModuleType("exploding_attack")

    def run(model, images, criterion, params, ctx):
        raise RuntimeError("boom")

    @hookimpl
    def advbench_register_attacks(register):
        register(AttackSpec(name="explode", summary="always raises", run=run))

    module.advbench_register_attacks = advbench_register_attacks
    return module


def test_a_failing_plugin_is_isolated_to_its_cell(tiny_run, tmp_path):
    toml = _copy_world(tiny_run, tmp_path).replace('[[attacks]]\nplugin = "fgsm"', '[[attacks]]\nplugin = "explode"\n\n[[attacks]]\nplugin = "fgsm"')
    result = run_tiny(tmp_path, toml, registry=registry_with(_exploding_module()))
    failed = [o for o in result.outcomes if o.status == "failed"]
    assert [o.cell.title for o in failed] == ["attack:testing-digits/testing-cnn/explode"]
    assert "RuntimeError: boom" in failed[0].error
    detect = [o for o in result.outcomes if o.cell.stage == "detect"]
    assert detect and all(o.status == "ok" for o in detect)  # detection goes on without it
    store = open_store(str(tmp_path / "results.db"))
    cells = store.cells(result.run_id)
    assert any(c.status == "failed" and "boom" in c.error for c in cells)
    assert store.get_run(result.run_id).status == "failed"
    assert "boom" in result.log_path.read_text()


def test_artefacts_are_on_disk_with_a_manifest(tiny_run):
    result, root = tiny_run
    attack = next(o for o in result.outcomes if o.cell.stage == "attack" and o.cell.imageset == "fgsm")
    directory = next((root / "cache" / "attack").rglob(attack.cell.key))
    import json
    manifest = json.loads((directory / "manifest.json").read_text())
    kept = [m for m in manifest if m["success_after_save"]]
    assert len(kept) == len(np.load(directory / "images.npy"))
    assert all((directory / m["file"]).exists() and m["linf"] > 0 for m in kept)


def test_adding_a_detector_recomputes_no_predictions(tiny_run, tmp_path, registry):
    toml = _copy_world(tiny_run, tmp_path).replace('[[detectors]]\nplugin = "lda"',
                                                   '[[detectors]]\nplugin = "lda"\n\n[[detectors]]\nplugin = "random-forest"')
    more = run_tiny(tmp_path, toml, registry=registry)
    assert more.computed and {o.cell.stage for o in more.computed} == {"detect"}
    assert {o.cell.detector for o in more.computed} == {"random-forest"}


def test_a_detector_search_chooses_on_dev_and_records_the_choice(tiny_run, tmp_path, registry):
    import json

    toml = _copy_world(tiny_run, tmp_path).replace(
        '[[detectors]]\nplugin = "lda"', '[[detectors]]\nplugin = "lda"\n\n[[detectors]]\nplugin = "random-forest"\n'
        'name = "forest-searched"\nn_estimators = 10\nsearch = { max_depth = [1, 4] }')
    result = run_tiny(tmp_path, toml, registry=registry)
    searched = [o for o in result.computed if o.cell.detector == "forest-searched"]
    assert searched and {o.cell.stage for o in result.computed} == {"detect"}
    for outcome in searched:
        metrics = {(n, s): v for n, s, v in outcome.metrics}
        trials = json.loads(next((tmp_path / "cache" / "detect").rglob(f"{outcome.cell.key}/search.json")).read_text())
        [chosen] = [t for t in trials if t["chosen"]]
        assert metrics[("search_candidates", "")] == 2 and metrics[("chosen_max_depth", "")] == chosen["params"]["max_depth"]
        assert chosen["dev_accuracy"] == max(t["dev_accuracy"] for t in trials) == metrics[("accuracy", "dev")]


def test_correction_cells_report_restored_labels(tiny_run):
    result, _ = tiny_run
    correct = [o for o in result.outcomes if o.cell.stage == "correct"]
    assert {o.cell.corrector for o in correct} == {"vote", "top1-majority", "rank-weighted"}
    for o in correct:
        metrics = {(n, s): v for n, s, v in o.metrics}
        assert 0 <= metrics[("topk_restored", "adversarial")] <= 1
        assert metrics[("top1_before", "normal")] > 0.5  # normal images were correctly classified


def test_a_pipeline_that_matches_no_detector_cell_is_a_config_error(tiny_run, tmp_path, registry):
    import pytest

    from advbench.errors import ConfigError

    toml = _copy_world(tiny_run, tmp_path) + '\n[correction]\npipeline = { detector = "lda" }\n'
    with pytest.raises(ConfigError, match=r"correction.pipeline: detector 'lda' works on features; set both 'feature'"):
        run_tiny(tmp_path, toml, registry=registry)


def test_pipeline_metrics_are_stored_when_it_matches(tiny_run, tmp_path, registry):
    toml = _copy_world(tiny_run, tmp_path) + \
        '\n[correction]\npipeline = { detector = "lda", feature = "counting", group = "All" }\n'
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed
    rows = {(n, s) for o in result.outcomes if o.cell.stage == "correct" for n, s, _ in o.metrics}
    assert ("pipeline_accuracy_after", "eval") in rows
    from advbench.report import tables
    from advbench.store import open_store

    st = open_store(result.store_url, create=False)
    table5 = tables.table5(st.cells(result.run_id))[0]
    for row in table5.rows:  # the pipeline's accuracies before and after carry their intervals and n
        before, after = row[-2:]
        assert before.has_interval and after.has_interval and before.n == after.n > 0
