"""The testing kit (advbench.testing): one named check per property, as pytest cases, for every
kind of plugin; the checks catch what they name; the API 1.2 entry points keep working for a
plugin that declares no abilities; tiny_benchmark takes transforms beside its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from advbench.plugin import AttackSpec, DetectorSpec, NoParams
from advbench.testing import (CheckOptions, check_detector, check_plugin, checks, parametrize_with_checks,
                              registry_with, run_tiny, tiny_benchmark)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: more threads only contend

REGISTRY = registry_with()
# every built-in plugin of these kinds that runs offline on the tiny world, with its defaults
CHEAP = [REGISTRY.get(kind, name) for kind in ("transform", "feature", "corrector")
         for name in REGISTRY.names(kind)]
CHEAP += [REGISTRY.get("detector", name) for name in ("svm", "lda", "random-forest", "mlp")]
CHEAP += [(REGISTRY.get("dataset", "sklearn-digits"), REGISTRY.get("dataset", "sklearn-digits").params(size=16)),
          (REGISTRY.get("model", "testing-cnn"), None),
          (REGISTRY.get("model", "cifar-resnet"), REGISTRY.get("model", "cifar-resnet").params(size=16)),
          (REGISTRY.get("attack", "fgsm"), None),
          (REGISTRY.get("attack", "pgd"), REGISTRY.get("attack", "pgd").params(epsilons=[0.3], steps=20, rel_stepsize=0.1)),
          (REGISTRY.get("attack", "deepfool"), REGISTRY.get("attack", "deepfool").params(steps=10, candidates=4, overshoot=2.0, max_norm=1.0))]


@parametrize_with_checks(CHEAP, CheckOptions(n=8, min_success=0.1, min_accuracy=0.85))
def test_built_in_plugins_pass_every_check(check):
    check()


def test_each_kind_has_its_checks_and_abilities_pick_them():
    def named(spec, params=None):
        return [name for name, _ in checks(spec, params)]

    assert "yields_labelled_rgb_images" in named(REGISTRY.get("dataset", "sklearn-digits"))
    assert "gives_finite_logits_per_class" in named(REGISTRY.get("model", "testing-cnn"))
    assert "restores_a_unanimous_label" in named(REGISTRY.get("corrector", "vote"))
    deepfool, fgsm = REGISTRY.get("attack", "deepfool"), REGISTRY.get("attack", "fgsm")
    assert "takes_a_budget_grid_in_one_call" in named(deepfool) and "takes_a_budget_grid_in_one_call" not in named(fgsm)
    svm, lid = REGISTRY.get("detector", "svm"), REGISTRY.get("detector", "lid")
    assert "comes_back_the_same_after_save_and_load" in named(svm) and "gives_two_logits_per_row" not in named(svm)
    assert "torch_scores_are_the_scores_and_differentiable" in named(lid)
    assert "passes_a_gradient" not in named(REGISTRY.get("transform", "jpeg"))


class _Blobs:
    def fit(self, x, y):
        self.cut = x.mean()
        return self

    def scores(self, x):
        return x.mean(1) - self.cut

    def predict(self, x):
        return (self.scores(x) > 0).astype(int)


def test_an_ability_declared_but_missing_fails_its_named_check():
    spec = DetectorSpec(name="liar", summary="t", build=lambda p, s: _Blobs(), selects_on_dev=False,
                        has_logits=False, differentiable=False, saves=True)
    with pytest.raises(AssertionError, match="check 'fits_and_separates_two_blobs' failed: liar: saves = True"):
        check_plugin(spec)


def test_an_undeclared_plugin_fails_the_declaration_check_but_the_1_2_entry_point_still_passes_it():
    old = DetectorSpec(name="old", summary="t", build=lambda p, s: _Blobs())  # written for API 1.2
    with pytest.raises(AssertionError, match="declare selects_on_dev, has_logits, differentiable, saves"):
        check_plugin(old)
    assert check_detector(old) >= 0.9


def _noisy(model, images, criterion, params, ctx):
    return (images + 0.3 * torch.rand(images.shape)).clamp(0, 1)  # global RNG: reseeded by the core


def test_an_attack_that_ignores_the_seed_or_its_budgets_fails_by_name():
    drifting = AttackSpec(name="drifting", summary="t", run=lambda m, x, c, p, ctx: (x + torch.from_numpy(
        np.random.default_rng().random(tuple(x.shape), dtype=np.float32)) * 0.3).clamp(0, 1))  # fresh entropy
    passed = dict(checks(AttackSpec(name="noisy", summary="t", run=_noisy)))
    passed["is_deterministic_for_a_seed"]()
    with pytest.raises(AssertionError, match="two runs from the same seed differ"):
        dict(checks(drifting))["is_deterministic_for_a_seed"]()
    fgsm = REGISTRY.get("attack", "fgsm")
    wrong = dataclasses.replace(fgsm, name="wrong-grid", run_budgets=lambda m, x, c, p, budgets, ctx: [x] * len(budgets))
    with pytest.raises(AssertionError, match="run_budgets at 0.05 differs from run"):
        dict(checks(wrong, fgsm.params(epsilons=[0.1])))["takes_a_budget_grid_in_one_call"]()


def test_a_corrector_that_ignores_the_votes_fails():
    from advbench.plugin import CorrectorSpec

    spec = CorrectorSpec(name="first-op", summary="t", params=NoParams,
                         correct=lambda t, k, p: np.full((len(t), k), 0))
    with pytest.raises(AssertionError, match="unanimous|no operation gave"):
        check_plugin(spec)


def test_tiny_benchmark_takes_transforms_beside_its_own(tmp_path, registry):
    toml = tiny_benchmark(transforms=['plugin = "blur"\ngrid = { kernel_size = [3] }', 'plugin = "bit-depth"\nbits = 4'],
                          groups='{ JPEG = ["jpeg"], Blur = ["blur"], All = ["*"] }', images=20)
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    operations = {o.cell.operation for o in result.outcomes if o.cell.stage == "predict"}
    assert {"jpeg@90", "scaling@0.75", "blur@3", "bit-depth"} <= operations
    groups = {o.cell.feature_group for o in result.outcomes if o.cell.stage == "detect"}
    assert groups == {"JPEG", "Blur", "All"}
    only = tiny_benchmark(transforms='plugin = "blur"\ngrid = { kernel_size = [3] }', default_transforms=False,
                          groups='{ All = ["*"] }')
    assert "jpeg" not in only and 'plugin = "blur"' in only
