"""Registers the small CNN trained on the digits, the embedded default model."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.models.small_cnn import SMALL_CNN


@hookimpl
def advbench_register_models(register):
    for spec in [SMALL_CNN]:
        register(spec)
