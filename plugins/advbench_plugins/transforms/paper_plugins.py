"""Registers the paper's image operations (JPEG, scaling, blur, rotation)."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.transforms.paper_ops import TRANSFORMS


@hookimpl
def advbench_register_transforms(register):
    for spec in TRANSFORMS:
        register(spec)
