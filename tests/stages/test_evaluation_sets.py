"""Budget grids, held-out attacks, operation subsets and adaptive attacks on the tiny world."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from advbench import hookimpl
from advbench.cache import load_array, load_columns
from advbench.specs import AttackSpec, DetectorSpec, Params
from advbench.testing import registry_with, run_tiny, tiny_benchmark, variant_module


def _grid_module():
    """FGSM under another name with a budget parameter, so the plan has evaluation sets."""
    return variant_module("attack", "fgsm", "fgsm-grid", budget_param="epsilons", norm="linf")


GRID = ['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5', 'plugin = "fgsm-grid"\nbudgets = [0.05, 0.3]']


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    registry = registry_with(_grid_module())
    toml = tiny_benchmark(attacks=GRID, images=60, detection='protocol = "leave-one-attack-out"\n'
                          'subset_search = [{ detector = "lda", feature = "counting", group = "All", max_operations = 2 }]')
    result = run_tiny(root, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    return result, root, registry, toml


def test_each_budget_is_its_own_evaluation_set(grid_run):
    result, root, _, _ = grid_run
    attacks = {o.cell.imageset: o for o in result.outcomes if o.cell.stage == "attack"}
    assert {"fgsm-grid@0.05", "fgsm-grid@0.3"} <= set(attacks)
    assert attacks["fgsm-grid@0.3"].cell.budget == 0.3
    split = next(o for o in result.outcomes if o.cell.stage == "split")
    assert not any("fgsm-grid" in n for n, _, _ in split.metrics)  # the grid does not move the split
    split_array = load_array(next((root / "cache" / "split").rglob(split.cell.key)), "split")
    for label in ("fgsm-grid@0.05", "fgsm-grid@0.3"):
        source = load_array(next((root / "cache" / "attack").rglob(attacks[label].cell.key)), "source")
        assert (split_array[source] == 2).all()  # made on eval sources only
    scores = [o for o in result.outcomes if o.cell.stage == "score" and o.cell.imageset == "fgsm-grid@0.3"]
    assert {o.cell.detector for o in scores if o.cell.detector} == {"lda"}
    for o in scores:
        m = {(n, s): v for n, s, v in o.metrics}
        assert 0 <= m[("system_success", "")] <= 1 and m[("n", "")] == len(load_array(
            next((root / "cache" / "attack").rglob(attacks["fgsm-grid@0.3"].cell.key)), "source"))


def test_adding_a_budget_computes_only_its_cells(grid_run, tmp_path):
    import shutil

    _, root, registry, toml = grid_run
    shutil.copytree(root / "cache", tmp_path / "cache")
    more = run_tiny(tmp_path, toml.replace("budgets = [0.05, 0.3]", "budgets = [0.05, 0.1, 0.3]"), registry=registry)
    computed = {(o.cell.stage, o.cell.imageset) for o in more.computed}
    assert computed and all(attack == "fgsm-grid@0.1" for _, attack in computed)
    assert {stage for stage, _ in computed} == {"attack", "predict", "score"}


def test_a_held_out_attack_is_never_trained_on(grid_run):
    result, root, _, _ = grid_run
    held = [o for o in result.outcomes if o.cell.stage == "detect" and o.cell.holdout]
    assert {o.cell.holdout for o in held} == {"fgsm", "bim"}
    for o in held:
        directory = next((root / "cache" / "detect").rglob(o.cell.key))
        columns = load_columns(directory, "per_image")
        train = load_array(directory, "train_index")
        assert len(train) and o.cell.holdout not in set(columns["origin"][train])
        scored = set(columns["origin"][columns["split"] == "eval"])
        assert scored == {"clean", o.cell.holdout}
        rates = {s for n, s, _ in o.metrics if n == "detection_rate"}
        assert rates == {o.cell.holdout, ""}  # per attack, and "": every adversarial eval image (the same here)


def test_the_subset_search_grows_one_operation_at_a_time(grid_run):
    result, root, _, _ = grid_run
    [subset] = [o for o in result.outcomes if o.cell.stage == "subset"]
    steps = json.loads((next((root / "cache" / "subset").rglob(subset.cell.key)) / "subset.json").read_text())
    assert [s["size"] for s in steps] == [1, 2]
    assert len({s["added"] for s in steps}) == 2
    assert steps[1]["seconds_per_1000"] > steps[0]["seconds_per_1000"] > 0


# --- adaptive attacks -------------------------------------------------------------------------


class _Strength(Params):
    epsilon: float = 0.3


def _targeted_pgd(model, images, criterion, epsilon: float, ops, steps: int = 30):
    """PGD towards each image's second-ranked class, stopping per image at the first iterate that
    fools the rule — and, with ``ops`` (EOT), keeps its label under every operation."""
    with torch.no_grad():
        target = model(images).topk(2, 1).indices[:, 1]
    x, best = images.clone(), images.clone()
    done = torch.zeros(len(images), dtype=torch.bool)
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            loss = sum(torch.nn.functional.cross_entropy(z := model(op(x)), target)
                       - torch.nn.functional.cross_entropy(z, criterion.labels) for op in [lambda v: v, *ops])
            (grad,) = torch.autograd.grad(loss, x)
        x = (images + (x.detach() - epsilon / 8 * grad.sign() - images).clamp(-epsilon, epsilon)).clamp(0, 1)
        with torch.no_grad():
            q = torch.round(x * 255) / 255
            label = model(q).argmax(1)
            ok = criterion(model(q)) & ~done
            for op in ops:
                ok &= model(op(q)).argmax(1) == label
        best[ok], done = x[ok], done | ok
    return best


class _Noisy:
    """A planted image detector, easily evaded: flags images whose high-frequency energy (mean
    distance to a 3x3 box blur) exceeds the 95th percentile of normal training images. Sign
    noise, what PGD adds, is high-frequency; an attacker who knows the detector keeps it low."""

    threshold = 0.0

    def torch_scores(self, x):
        return (x - torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs().flatten(1).mean(1)

    def scores(self, images):
        from advbench.imaging import to_tensor

        return self.torch_scores(to_tensor(np.asarray(images))).numpy() if len(images) else np.zeros(0)

    def fit(self, images, labels):
        self.threshold = float(np.quantile(self.scores(images[labels == 0]), 0.95))

    def predict(self, images):
        return (self.scores(images) > self.threshold).astype(int)


def _joint_pgd(model, images, criterion, epsilon: float, defense, steps: int = 40):
    """PGD on the classifier loss plus a penalty while the detector's score is above its
    threshold; per image the first iterate that fools the rule and evades the detector."""
    x, best = images.clone(), images.clone()
    done = torch.zeros(len(images), dtype=torch.bool)
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            over = (defense.detector_scores(x) - 0.8 * defense.threshold).clamp_min(0)
            loss = -torch.nn.functional.cross_entropy(model(x), criterion.labels, reduction="none") + 50 * over
            (grad,) = torch.autograd.grad(loss.sum(), x)
        x = (images + (x.detach() - epsilon / 10 * grad.sign() - images).clamp(-epsilon, epsilon)).clamp(0, 1)
        with torch.no_grad():
            q = torch.round(x * 255) / 255
            ok = criterion(model(q)) & ~defense.flags(q) & ~done
        best[ok], done = x[ok], done | ok
    return best


def _adaptive_module() -> types.ModuleType:
    """A planted pair: the same targeted PGD, oblivious and with EOT over the defense's operations."""
    module = types.ModuleType("planted_adaptive")

    @hookimpl
    def advbench_register_attacks(register):
        register(AttackSpec(name="eot-toy", summary="targeted PGD that survives the operations", params=_Strength,
                            run=lambda m, x, c, p, ctx: _targeted_pgd(m, x, c, p.epsilon, ctx.defense.operations),
                            adaptive=("operations", "detector"), budget_param="epsilon"))
        register(AttackSpec(name="pgd-toy", summary="the same PGD, oblivious", params=_Strength,
                            run=lambda m, x, c, p, ctx: _targeted_pgd(m, x, c, p.epsilon, ()), budget_param="epsilon"))

        register(AttackSpec(name="joint-toy", summary="PGD that keeps the detector's score low", params=_Strength,
                            run=lambda m, x, c, p, ctx: _joint_pgd(m, x, c, p.epsilon, ctx.defense),
                            adaptive=("detector",), budget_param="epsilon"))

    @hookimpl
    def advbench_register_detectors(register):
        register(DetectorSpec(name="noise-energy", summary="flags high-frequency energy", inputs="images",
                              build=lambda p, seed: _Noisy()))

    module.advbench_register_attacks = advbench_register_attacks
    module.advbench_register_detectors = advbench_register_detectors
    return module


def test_an_adaptive_attack_evades_the_defense_it_targets(tmp_path):
    registry = registry_with(_adaptive_module())
    toml = tiny_benchmark(
        attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5', 'plugin = "pgd-toy"\nbudgets = [0.3]'],
        detectors=['plugin = "lda"', 'plugin = "noise-energy"'], images=80,
        extra='[[adaptive]]\nplugin = "joint-toy"\nbudgets = [0.3]\ntargets = [{ detector = "noise-energy" }]\n\n'
              '[[adaptive]]\nplugin = "eot-toy"\nbudgets = [0.3]\n'
              'targets = [{ group = "JPEG" }, { detector = "lda", feature = "counting", group = "JPEG" }]\n')
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    adaptive = {o.cell.imageset: o for o in result.outcomes if o.cell.stage == "adaptive"}
    assert set(adaptive) == {"joint-toy@0.3>noise-energy", "eot-toy@0.3>JPEG", "eot-toy@0.3>lda/counting/JPEG"}
    assert all(o.cell.threat == "adaptive" and o.cell.budget == 0.3 for o in adaptive.values())
    scores = {(o.cell.imageset, o.cell.detector): {(n, s): v for n, s, v in o.metrics}
              for o in result.outcomes if o.cell.stage == "score" and o.cell.detector and not o.cell.corrector
              and o.cell.feature_group in ("images", "JPEG")}
    oblivious, adapted = scores[("pgd-toy@0.3", "noise-energy")], scores[("joint-toy@0.3>noise-energy", "noise-energy")]
    assert oblivious[("n", "")] >= 5 and adapted[("n", "")] >= 5
    assert oblivious[("detection_rate", "")] >= 0.6  # the planted detector catches most of the oblivious attack
    assert adapted[("detection_rate", "")] <= oblivious[("detection_rate", "")] - 0.4, (adapted, oblivious)
    assert adapted[("system_success", "")] > oblivious[("system_success", "")]
    # transfer: every other detector scores the adaptive set too
    assert ("joint-toy@0.3>noise-energy", "lda") in scores and ("eot-toy@0.3>JPEG", "noise-energy") in scores
