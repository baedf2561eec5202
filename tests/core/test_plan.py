from __future__ import annotations

from collections import Counter

from advbench.config import parse_benchmark
from advbench.plan import make_plan
from advbench.testing import tiny_benchmark


def plan_of(text, registry):
    return make_plan(parse_benchmark(text, registry), lambda kind, plugin: "1")


def test_matrix_shape(registry):
    plan = plan_of(tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "pgd"'], detectors=['plugin = "lda"', 'plugin = "svm"']), registry)
    counts = Counter(c.stage for c in plan.cells)
    # 1 clean, 2 attacks, 1 split, (1 clean + 2 attacks) x (original + 5 ops), 2 groups x 1 feature x 2
    # detectors, 3 default correctors x the JPEG group
    assert counts == {"clean": 1, "attack": 2, "split": 1, "predict": 18, "detect": 4, "correct": 3}
    assert len({c.key for c in plan.cells}) == len(plan.cells)


def test_plan_is_a_pure_function(registry):
    assert plan_of(tiny_benchmark(), registry).cells == plan_of(tiny_benchmark(), registry).cells


def test_changing_one_attack_changes_only_its_cells(registry):
    base = plan_of(tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "pgd"']), registry)
    edited = plan_of(tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "pgd"\nsteps = 3']), registry)
    changed = {c.title for c in edited.cells} and {c.title for c in edited.cells if c.key not in base.by_key}
    assert "attack:testing-digits/testing-cnn/pgd" in changed
    assert not any("/fgsm" in t for t in changed)
    assert not any(t.startswith("predict:testing-digits/testing-cnn/clean") for t in changed)
    assert "clean:testing-digits/testing-cnn" not in changed
    assert all(t.startswith(("attack", "split", "predict", "detect", "correct")) for t in changed)


def test_adding_a_detector_adds_only_detect_cells(registry):
    base = plan_of(tiny_benchmark(), registry)
    more = plan_of(tiny_benchmark(detectors=['plugin = "lda"', 'plugin = "mlp"']), registry)
    new = [c for c in more.cells if c.key not in base.by_key]
    assert new and all(c.stage == "detect" and c.detector == "mlp" for c in new)


def test_max_images_is_part_of_the_key(registry):
    bench = parse_benchmark(tiny_benchmark(), registry)
    a = make_plan(bench, lambda k, p: "1")
    b = make_plan(bench, lambda k, p: "1", max_images=5)
    assert a.stage("clean")[0].key != b.stage("clean")[0].key


def _adaptive_bench(registry, detectors=('plugin = "lda"', 'plugin = "svm"')):
    return tiny_benchmark(
        attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'], detectors=list(detectors),
        extra='[[adaptive]]\nplugin = "eot-pgd"\nbudgets = [0.1, 0.2]\n'
              'targets = [{ group = "JPEG" }, { detector = "lda", feature = "counting", group = "JPEG" }, '
              '{ detector = "svm", feature = "counting", group = "All" }]\n')


def test_adaptive_cells_depend_on_the_detector_cells_they_attack(registry):
    plan = plan_of(_adaptive_bench(registry), registry)
    adaptive = {c.imageset: c for c in plan.stage("adaptive")}
    assert set(adaptive) == {f"eot-pgd@{b}>{t}" for b in ("0.1", "0.2")
                             for t in ("JPEG", "lda/counting/JPEG", "svm/counting/All")}
    lda = plan.detect_key("testing-digits", "testing-cnn", "lda", "counting", "JPEG")
    svm = plan.detect_key("testing-digits", "testing-cnn", "svm", "counting", "All")
    assert lda in adaptive["eot-pgd@0.1>lda/counting/JPEG"].deps and svm not in adaptive["eot-pgd@0.1>lda/counting/JPEG"].deps
    assert svm in adaptive["eot-pgd@0.2>svm/counting/All"].deps
    assert not {lda, svm} & set(adaptive["eot-pgd@0.1>JPEG"].deps)  # a group's operations need no training
    # each adaptive set is scored by every trained detector of its world (the targeted one and transfer)
    scored = {(c.imageset, c.detector, c.feature_group) for c in plan.stage("score") if c.detector}
    assert {("eot-pgd@0.1>JPEG", d, g) for d in ("lda", "svm") for g in ("JPEG", "All")} <= scored


def test_a_changed_detector_changes_only_the_adaptive_cells_that_target_it(registry):
    base = plan_of(_adaptive_bench(registry), registry)
    edited = plan_of(_adaptive_bench(registry, ('plugin = "lda"\nsolver = "lsqr"', 'plugin = "svm"')), registry)
    changed = {c.imageset for c in edited.stage("adaptive") if c.key not in base.by_key}
    assert changed == {"eot-pgd@0.1>lda/counting/JPEG", "eot-pgd@0.2>lda/counting/JPEG"}


def test_cells_name_their_image_set_and_defense_in_explicit_fields(registry):
    """No label is parsed: entry, family, plugin, budget and target are the cell's own fields,
    and each group has its own column."""
    plan = plan_of(_adaptive_bench(registry), registry)
    [made] = [c for c in plan.stage("adaptive") if c.imageset == "eot-pgd@0.2>lda/counting/JPEG"]
    assert (made.entry, made.family, made.plugin, made.budget, made.norm, made.threat, made.target, made.evaluation) == (
        "eot-pgd@0.2", "eot-pgd", "eot-pgd", 0.2, "linf", "adaptive", "lda/counting/JPEG", True)
    assert (made.feature_group, made.feature, made.detector) == ("JPEG", "counting", "lda")
    scores = [c for c in plan.stage("score") if c.imageset == made.imageset]
    assert all((c.entry, c.family, c.budget, c.target) == (made.entry, made.family, 0.2, made.target) for c in scores)
    voting = [c for c in scores if c.corrector]
    assert voting and all(c.correction_group and not c.feature_group for c in voting)
    predict = [c for c in plan.stage("predict") if c.imageset == "clean" and c.operation != "original"]
    assert {c.operation_group for c in predict} == {"jpeg", "scaling"} and all(c.family == "" for c in predict)
    [fgsm] = [c for c in plan.stage("attack") if c.imageset == "fgsm"]
    assert (fgsm.entry, fgsm.family, fgsm.plugin, fgsm.budget, fgsm.evaluation) == ("fgsm", "fgsm", "fgsm", None, False)


def test_cells_whose_detector_sees_images_say_so_also_in_a_pipeline(registry):
    grid = 'plugin = "fgsm"\nname = "fgsm-grid"\nbudgets = [0.1]'
    from advbench.execution.context import plan_for

    text = tiny_benchmark(attacks=['plugin = "fgsm"', grid], detectors=['plugin = "lda"', 'plugin = "feature-squeezing"'],
                          extra='[correction]\npipeline = { detector = "feature-squeezing" }\n')
    plan = plan_for(parse_benchmark(text, registry), registry)
    seeing = {(c.stage, c.detector, c.corrector != "") for c in plan.cells if c.sees_images}
    assert ("detect", "feature-squeezing", False) in seeing and ("score", "feature-squeezing", True) in seeing
    assert not any(c.sees_images for c in plan.cells if c.detector == "lda")


def test_per_attack_cells_one_per_attack_restricted_as_configured(registry):
    text = tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "pgd"'], detectors=['plugin = "lda"', 'plugin = "svm"'],
                          detection='protocol = ["leave-one-attack-out", "per-attack"]\n'
                                    'per_attack_cells = { attacks = ["pgd"], detectors = ["svm"], groups = ["JPEG"] }')
    plan = plan_of(text, registry)
    per_attack = [c for c in plan.stage("detect") if c.holdout.startswith("per-attack:")]
    assert [(c.detector, c.feature_group, c.holdout) for c in per_attack] == [("svm", "JPEG", "per-attack:pgd")]
    assert plan.holdout_sets("per-attack:pgd") == (["pgd"], ["pgd"])
    assert "trained on pgd alone" in per_attack[0].title
    # leave-one-attack-out cells are not restricted by per_attack_cells
    assert len([c for c in plan.stage("detect") if c.holdout in ("fgsm", "pgd")]) == 2 * 2 * 2
    # the standard cells do not move
    assert {c.key for c in plan_of(tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "pgd"'], detectors=[
        'plugin = "lda"', 'plugin = "svm"']), registry).stage("detect")} <= {c.key for c in plan.stage("detect")}


def test_fair_storage_moves_the_clean_predictions_only(registry):
    base = plan_of(tiny_benchmark(), registry)
    fair = plan_of(tiny_benchmark().replace("[database]\n", "[database]\nfair_storage = true\n"), registry)
    changed = {c.title for c in fair.cells if c.key not in base.by_key}
    assert any(t.startswith("predict:testing-digits/testing-cnn/clean") for t in changed)
    assert not any(t.startswith(("clean", "attack", "split", "predict:testing-digits/testing-cnn/fgsm")) for t in changed)
