"""Registers feature squeezing's operations: bit-depth reduction and the median filter."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.transforms.squeezers import TRANSFORMS


@hookimpl
def advbench_register_transforms(register):
    for spec in TRANSFORMS:
        register(spec)
