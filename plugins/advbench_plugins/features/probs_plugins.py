"""Registers the features on the full softmax output (prob-shift)."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.features.prob_features import PROB_SHIFT


@hookimpl
def advbench_register_features(register):
    for spec in [PROB_SHIFT]:
        register(spec)
