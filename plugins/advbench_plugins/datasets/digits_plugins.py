"""Registers scikit-learn's digits, the embedded default dataset."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.datasets.digits import DIGITS


@hookimpl
def advbench_register_datasets(register):
    for spec in [DIGITS]:
        register(spec)
