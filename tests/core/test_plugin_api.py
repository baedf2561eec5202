"""The plugin contract of API 1.3: one public module, abilities declared on specs and checked when
a benchmark is validated; a plugin written for 1.2 (imports advbench.specs, declares nothing)
keeps working, its abilities found as 1.2 found them."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch

import advbench
from advbench import plugin
from advbench.config import parse_benchmark
from advbench.errors import ConfigError
from advbench.testing import registry_with, run_tiny, tiny_benchmark


def test_the_plugin_module_is_the_contract_at_one_version():
    assert advbench.API_VERSION == plugin.API_VERSION == "1.4"
    for name in ("hookimpl", "AttackSpec", "DetectorSpec", "Params", "Defense", "to_tensor", "PluginError"):
        assert name in plugin.__all__


class OldDetector:
    """A model-aware detector as a 1.2 plugin wrote it: torch_scores, threshold, save/load, and
    nothing declared on its spec."""

    def __init__(self, params, ctx):
        self.module, self.threshold, self.saved = ctx.model.module, 0.0, 0

    def torch_scores(self, x):
        return -torch.softmax(self.module(x), 1).amax(1)

    def scores(self, images):
        with torch.no_grad():
            return self.torch_scores(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255).double().numpy()

    def fit(self, images, labels):
        s = self.scores(images)
        self.threshold = float((s[labels == 0].mean() + s[labels == 1].mean()) / 2)
        return self

    def predict(self, images):
        return (self.scores(images) > self.threshold).astype(int)

    def save(self, directory):
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "threshold.npy", np.array(self.threshold))

    def load(self, directory):
        self.threshold = float(np.load(directory / "threshold.npy"))
        return self


def _old_module() -> ModuleType:
    from advbench import hookimpl
    from advbench.specs import DetectorSpec  # the 1.2 way; plugins now import advbench.plugin

    module = ModuleType("old_style_plugin")
    module.ADVBENCH_API = "1.2"

    @hookimpl
    def advbench_register_detectors(register):
        register(DetectorSpec(name="old-confidence", summary="t", inputs="model", build=OldDetector))

    module.advbench_register_detectors = advbench_register_detectors
    return module


def test_a_1_2_plugin_runs_and_its_detector_is_saved_and_attacked_through_its_scores(tmp_path):
    registry = registry_with(_old_module())
    toml = tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'],
                          detectors=['plugin = "lda"', 'plugin = "old-confidence"'], images=30,
                          extra='[[adaptive]]\nplugin = "opgd"\nbudgets = [0.3]\nsteps = 5\n'
                                'targets = [{ detector = "old-confidence" }]\n')
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    [detect] = [o for o in result.outcomes if o.cell.stage == "detect" and o.cell.detector == "old-confidence"]
    assert (next((tmp_path / "cache" / "detect").rglob(detect.cell.key)) / "detector" / "threshold.npy").exists()
    [adaptive] = [o for o in result.outcomes if o.cell.stage == "adaptive"]
    assert dict(((n, s), v) for n, s, v in adaptive.metrics)[("attempted", "")] > 0


def test_an_attack_that_needs_scores_cannot_target_a_detector_that_declares_none(registry):
    assert registry.get("attack", "opgd").needs_scores and not registry.get("detector", "lda").differentiable
    toml = tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'],
                          extra='[[adaptive]]\nplugin = "opgd"\nbudgets = [0.3]\n'
                                'targets = [{ detector = "lda", feature = "counting", group = "JPEG" }]\n')
    with pytest.raises(ConfigError) as err:
        parse_benchmark(toml, registry)
    [problem] = err.value.problems
    assert "'opgd' differentiates through the detector's scores" in problem and "'lda'" in problem
