"""Registers the label correctors: the paper's vote and two variants (§3.3)."""

from __future__ import annotations

from advbench.plugin import hookimpl

from advbench_plugins.correctors.votes import CORRECTORS


@hookimpl
def advbench_register_correctors(register):
    for spec in CORRECTORS:
        register(spec)
