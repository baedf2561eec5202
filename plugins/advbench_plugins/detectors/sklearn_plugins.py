"""Registers the paper's statistical detectors on features: SVM, random forest, LDA, MLP (§3.2)."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.detectors.sklearn_detectors import DETECTORS


@hookimpl
def advbench_register_detectors(register):
    for spec in DETECTORS:
        register(spec)
