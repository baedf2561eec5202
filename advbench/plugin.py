"""The plugin contract: everything a plugin package imports from advbench, in one module.

A plugin module imports from here (and, in its tests, from :mod:`advbench.testing`), never from
the machinery that runs it; a layer test holds the built-in plugins to that, and the example
package in ``plugins/example-plugin`` shows a third-party package doing the same::

    from advbench.plugin import AttackSpec, Params, hookimpl

    ADVBENCH_API = "1.4"

    @hookimpl
    def advbench_register_attacks(register):
        register(AttackSpec(name="noise", summary="Gaussian noise.", params=NoiseParams, run=noise))

What is here (``docs/plugins.md`` documents each piece and the API's changelog):

- the hook marker and the API version: :data:`hookimpl`, :data:`API_VERSION`;
- the specs a hook registers, one per plugin kind, and the parameter base classes: ``Params``,
  ``NoParams``, ``DatasetSpec``, ``ModelSpec``, ``AttackSpec``, ``TransformSpec``,
  ``FeatureSpec``, ``DetectorSpec``, ``CorrectorSpec``;
- what the core hands to a plugin and takes back: ``BuildContext``, ``AttackContext``,
  ``DetectorContext``, ``Sample``, ``ImageSource``, ``LoadedModel``, ``Criterion``, ``Defense``,
  ``AttackOutput``, ``Probabilities``, ``Detector``, ``CostInputs``, ``TrainingCost``, ``FitInfo``,
  ``ReferenceSet``;
- errors a plugin raises for a user's mistake: ``PluginError``, ``DataError``;
- helpers: image conversions (``to_tensor``, ``to_uint8``, ``pil_to_array``, ``array_to_pil``,
  ``jpeg_roundtrip``), ``resolve_device``, the paper's success rule (``PaperCriterion``,
  ``target_labels``) and gradient stand-ins for operations without one (``straight_through``,
  ``bpda``); ``verified_file`` for files a plugin keeps in its cache.
"""

from __future__ import annotations

from advbench import API_VERSION
from advbench.criteria import PaperCriterion, target_labels
from advbench.devices import resolve_device
from advbench.differentiable import bpda, straight_through
from advbench.errors import DataError, PluginError
from advbench.hookspecs import hookimpl
from advbench.imaging import array_to_pil, jpeg_roundtrip, pil_to_array, to_tensor, to_uint8
from advbench.specs import (AttackContext, AttackOutput, AttackSpec, BuildContext, CorrectorSpec, CostInputs, Criterion,
                            DatasetSpec, Defense, Detector, DetectorContext, DetectorSpec, FeatureSpec, FitInfo,
                            ImageSource, LoadedModel, ModelSpec, NoParams, Params, Probabilities, ReferenceSet, Sample,
                            TrainingCost, TransformSpec)
from advbench.verified import verified_file

__all__ = [
    "API_VERSION", "AttackContext", "AttackOutput", "AttackSpec", "BuildContext", "CorrectorSpec", "CostInputs",
    "Criterion", "DataError", "DatasetSpec", "Defense", "Detector", "DetectorContext", "DetectorSpec", "FeatureSpec",
    "FitInfo", "ImageSource", "LoadedModel", "ModelSpec", "NoParams", "PaperCriterion", "Params", "PluginError", "Probabilities",
    "ReferenceSet", "Sample", "TrainingCost", "TransformSpec", "array_to_pil", "bpda", "hookimpl", "jpeg_roundtrip", "pil_to_array",
    "resolve_device", "straight_through", "target_labels", "to_tensor", "to_uint8", "verified_file",
]
