"""The example plugin tested the way advbench suggests to plugin authors: ``advbench.testing``."""

import advbench_example_plugin as plugin
from advbench.testing import check_attack, check_detector, check_model_detector, registry_with, run_tiny, tiny_benchmark


def test_attack_meets_the_attack_contract():
    check_attack(plugin.BLEND, min_success=0.25)


def test_detector_meets_the_detector_contract():
    check_detector(plugin.THRESHOLD)


def test_model_aware_detector_meets_the_contract_and_separates_adversarial_digits():
    # fit on tiny-world digits vs. their adversarials; torch_scores, threshold, save/load checked
    assert check_model_detector(plugin.BLUR_SHIFT) >= 0.65  # about 0.7-0.87, with the tiny model's variants


def test_a_tiny_benchmark_runs_the_attack_and_the_detector_end_to_end(tmp_path):
    registry = registry_with(plugin)  # the installed plugins, the tiny world and this package
    toml = tiny_benchmark(attacks='plugin = "example-blend"', detectors='plugin = "example-threshold"')
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    detect = [o for o in result.outcomes if o.cell.stage == "detect"]
    accuracies = [v for o in detect for name, split, v in o.metrics if (name, split) == ("accuracy", "")]
    assert detect and len(accuracies) == len(detect) and all(0 <= a <= 1 for a in accuracies)
