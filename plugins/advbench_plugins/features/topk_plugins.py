"""Registers the paper's features on top-k labels: counting and differences (§3.2)."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.features.topk_features import FEATURES


@hookimpl
def advbench_register_features(register):
    for spec in FEATURES:
        register(spec)
