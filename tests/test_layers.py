"""The core never imports the built-in plugins: they reach it only through entry points."""

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "advbench"


def imported_modules(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_core_does_not_import_plugins():
    offenders = [f"{p.relative_to(CORE.parent)} imports {m}" for p in CORE.rglob("*.py")
                 for m in imported_modules(p) if m.split(".")[0] == "advbench_plugins"]
    assert offenders == []


PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
#: what plugins may import from the core: the contract, never the machinery that runs them
CONTRACT = {"advbench", "advbench.hookspecs", "advbench.specs", "advbench.errors", "advbench.imaging",
            "advbench.devices", "advbench.criteria", "advbench.testing", "advbench.verified"}


def test_plugins_import_only_the_contract():
    offenders = [f"{p.relative_to(PLUGINS.parent)} imports {m}" for p in PLUGINS.rglob("*.py")
                 for m in imported_modules(p) if m.split(".")[0] == "advbench" and m not in CONTRACT]
    assert offenders == []
