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


def test_every_hookspec_is_documented_in_the_plugin_guide():
    from advbench import hookspecs

    guide = (CORE.parent / "docs" / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("advbench_register_")]
    assert len(hooks) == 7 and all(h in guide for h in hooks)


def test_configuration_reference_is_up_to_date():
    from advbench.docgen import configuration_reference
    from advbench.registry import discover

    committed = (CORE.parent / "docs" / "configuration.md").read_text()
    assert committed == configuration_reference(discover()), "run: python -m advbench.docgen > docs/configuration.md"
