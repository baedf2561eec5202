"""Registers the paper's attacks that foolbox implements (see foolbox_attacks)."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.attacks.foolbox_attacks import ATTACKS


@hookimpl
def advbench_register_attacks(register):
    for spec in ATTACKS:
        register(spec)
