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
CONTRACT = {"advbench.plugin", "advbench.testing"}


def test_plugins_import_only_the_contract():
    offenders = [f"{p.relative_to(PLUGINS.parent)} imports {m}" for p in PLUGINS.rglob("*.py")
                 for m in imported_modules(p) if m.split(".")[0] == "advbench" and m not in CONTRACT]
    assert offenders == []


def test_the_plugin_module_exports_what_it_lists():
    import advbench.plugin

    assert sorted(advbench.plugin.__all__) == sorted(set(advbench.plugin.__all__))
    assert all(hasattr(advbench.plugin, name) for name in advbench.plugin.__all__)


def test_built_in_registration_modules_follow_one_naming_rule():
    """Entry point "<kinds>-<group>" -> advbench_plugins.<kinds>.<group>_plugins, and hooks are
    implemented there only."""
    import tomllib

    points = tomllib.loads((PLUGINS.parent / "pyproject.toml").read_text())["project"]["entry-points"]["advbench"]
    wrong = {name: module for name, module in points.items()
             if module != "advbench_plugins.{}.{}_plugins".format(*name.split("-", 1)).replace("-", "_")}
    assert wrong == {}
    registering = {str(p.relative_to(PLUGINS)) for p in (PLUGINS / "advbench_plugins").rglob("*.py")
                   if "@hookimpl" in p.read_text()}
    assert registering == {"advbench_plugins/{}/{}_plugins.py".format(*n.split("-", 1)).replace("-", "_")
                           for n in points}
