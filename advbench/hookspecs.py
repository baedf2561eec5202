"""The whole plugin contract: one hook per plugin kind.

A plugin module implements any of these hooks with ``@advbench.hookimpl`` and is declared in
its package's ``pyproject.toml`` under the entry-point group ``advbench``::

    [project.entry-points.advbench]
    my_attacks = "my_package.attacks"

Each hook is called once at start-up with a ``register`` callback; call ``register(spec)`` once
per plugin. Names are unique within a kind across every installed package: a clash is an
error naming both packages. A module may set ``ADVBENCH_API = "1.3"``; a module written for
another major version of the contract is refused. Plugins import ``hookimpl`` and every spec
from :mod:`advbench.plugin`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("advbench")
hookimpl = pluggy.HookimplMarker("advbench")


@hookspec
def advbench_register_datasets(register):
    """Register dataset plugins.

    Call ``register(spec)`` with a :class:`advbench.specs.DatasetSpec` per dataset. ``spec.load``
    receives the validated parameters and a :class:`~advbench.specs.BuildContext` and returns an
    :class:`~advbench.specs.ImageSource` yielding RGB samples. Returns nothing.
    """


@hookspec
def advbench_register_models(register):
    """Register model plugins.

    Call ``register(spec)`` with a :class:`advbench.specs.ModelSpec` per classifier.
    ``spec.build`` returns a :class:`~advbench.specs.LoadedModel` that takes images in [0, 1]
    and normalises inside. Returns nothing.
    """


@hookspec
def advbench_register_attacks(register):
    """Register attack plugins.

    Call ``register(spec)`` with a :class:`advbench.specs.AttackSpec` per attack. ``spec.run``
    receives the model, a batch of images in [0, 1], the benchmark's success criterion, the
    validated parameters and a build context, and returns candidate adversarial images.
    Returns nothing.
    """


@hookspec
def advbench_register_transforms(register):
    """Register image operations.

    Call ``register(spec)`` with a :class:`advbench.specs.TransformSpec` per operation family
    (e.g. JPEG with a ``quality`` parameter). Returns nothing.
    """


@hookspec
def advbench_register_features(register):
    """Register detection features.

    Call ``register(spec)`` with a :class:`advbench.specs.FeatureSpec` per feature: a pure
    function of the top-k label arrays before and after the operations. Returns nothing.
    """


@hookspec
def advbench_register_detectors(register):
    """Register detectors.

    Call ``register(spec)`` with a :class:`advbench.specs.DetectorSpec` per detector: a
    factory of binary classifiers over feature matrices. Returns nothing.
    """


@hookspec
def advbench_register_correctors(register):
    """Register label correctors.

    Call ``register(spec)`` with a :class:`advbench.specs.CorrectorSpec` per corrector: a pure
    function from the top-k labels under the selected operations to corrected top-k labels
    (the paper's vote, §3.3). Returns nothing.
    """


HOOK_FOR_KIND = {
    "dataset": "advbench_register_datasets",
    "model": "advbench_register_models",
    "attack": "advbench_register_attacks",
    "transform": "advbench_register_transforms",
    "feature": "advbench_register_features",
    "detector": "advbench_register_detectors",
    "corrector": "advbench_register_correctors",
}
