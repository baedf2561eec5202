"""Registers the black-box attacks: Square, HopSkipJump, Boundary and the spatial grid search."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.attacks.blackbox_attacks import ATTACKS


@hookimpl
def advbench_register_attacks(register):
    for spec in ATTACKS:
        register(spec)
