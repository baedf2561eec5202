"""Helpers for testing advbench and plugins: a tiny world, a tiny benchmark, and contract checks.

A plugin author's test suite can be three lines, one pytest case per property of the contract::

    from advbench.testing import parametrize_with_checks
    from my_package.attacks import MY_ATTACK

    @parametrize_with_checks([MY_ATTACK])
    def test_my_attack(check):
        check()

- :mod:`~advbench.testing.world`: the tiny world, a dataset (scikit-learn digits at 16x16) and a
  small CNN trained in about a second, registered as the plugins ``testing-digits`` and
  ``testing-cnn`` through the same registry path as every plugin; its adversarial images;
- :mod:`~advbench.testing.benchmark`: ``tiny_benchmark`` (TOML) and ``run_tiny`` (a whole run
  in seconds, with any installed plugin), ``registry_with``, ``variant_module``;
- :mod:`~advbench.testing.checks`: one named check per property of each plugin kind
  (``checks``, ``check_plugin``, ``parametrize_with_checks``), and the API 1.2 entry points
  ``check_attack``, ``check_detector``, ``check_transform``, ``check_feature`` and
  ``check_model_detector``, which run the same checks.
"""

from __future__ import annotations

from advbench.testing.benchmark import DEFAULT_TRANSFORMS, registry_with, run_tiny, tiny_benchmark, variant_module
from advbench.testing.checks import (CheckOptions, check_plugin, checks, declared_as_probed, legacy_check,
                                     parametrize_with_checks)
from advbench.testing.world import (SIZE, DetectionSplit, digits, tiny_adversarial_world, tiny_detection_splits,
                                    tiny_model, tiny_world_plugins)

#: an attack's output contract and success on the tiny world (what API 1.2 checked); returns the
#: success rate. Every check of an attack: check_plugin or parametrize_with_checks.
check_attack = legacy_check("finds_adversarial_examples",
                            only=("returns_images_like_its_input", "finds_adversarial_examples"))
#: every check of a detector on features; returns its accuracy on two separable blobs
check_detector = legacy_check("fits_and_separates_two_blobs")
#: every check of an image operation; returns the mean gap of its two backends (0 without a tensor one)
check_transform = legacy_check("tensor_backend_agrees_with_pillow", 0.0)
#: every check of a feature; returns the matrix it computed
check_feature = legacy_check("returns_a_finite_matrix")
#: every check of a model-aware detector; returns its eval AUROC on the tiny adversarial world
check_model_detector = legacy_check("separates_adversarial_digits", inputs="model")

__all__ = [
    "DEFAULT_TRANSFORMS", "SIZE", "CheckOptions", "DetectionSplit", "check_attack", "check_detector", "check_feature",
    "check_model_detector", "check_plugin", "check_transform", "checks", "declared_as_probed", "digits",
    "parametrize_with_checks", "registry_with", "run_tiny", "tiny_adversarial_world", "tiny_benchmark",
    "tiny_detection_splits", "tiny_model", "tiny_world_plugins", "variant_module",
]
