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
