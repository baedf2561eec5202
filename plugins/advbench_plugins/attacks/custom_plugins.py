"""Registers the attacks implemented here rather than by foolbox: L-BFGS, JSMA, ADef."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.attacks.custom_attacks import ATTACKS


@hookimpl
def advbench_register_attacks(register):
    for spec in ATTACKS:
        register(spec)
