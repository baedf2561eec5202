"""An edited plugin is not served the cached results of its old code: the version in its cells'
keys carries a hash of its source (advbench/plugin_source.py)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from advbench import plugin_source
from advbench.execution.context import plugin_version
from advbench.testing import registry_with, run_tiny, tiny_benchmark

PLUGINS = '''
from advbench import hookimpl
from advbench.specs import Params, TransformSpec
from pydantic import Field

from {pkg}.ops import darken


class DarkenParams(Params):
    amount: int = Field(40, ge=0, le=255)


@hookimpl
def advbench_register_transforms(register):
    register(TransformSpec(name="{pkg}-darken", summary="Darker.", params=DarkenParams,
                           apply=lambda im, p: darken(im, p.amount)))
'''
OPS = '''
from PIL import ImageChops


def darken(im, amount):
    return ImageChops.subtract(im, im.point(lambda v: min(v, amount)))
'''


@pytest.fixture
def editable(tmp_path, monkeypatch):
    """An 'editable' plugin package on sys.path: (its package name, its folder, the registry)."""
    name = f"edited_plugin_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / "src" / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "plugins.py").write_text(PLUGINS.format(pkg=name))
    (folder / "ops.py").write_text(OPS)
    (folder / "unrelated.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    module = importlib.import_module(f"{name}.plugins")
    yield name, folder, registry_with(module)
    for m in [m for m in sys.modules if m.startswith(name)]:
        del sys.modules[m]


def _new_process() -> None:
    """What a new ``advbench`` process does: read the code again (this one caches it)."""
    plugin_source._closure.cache_clear()
    plugin_source._fingerprint.cache_clear()


def test_the_version_follows_the_plugins_code_and_what_it_imports(editable):
    name, folder, registry = editable
    before = plugin_version(registry, "transform", f"{name}-darken")
    assert "+" in before
    (folder / "unrelated.py").write_text("X = 2\n")  # not imported by the plugin
    _new_process()
    assert plugin_version(registry, "transform", f"{name}-darken") == before
    (folder / "ops.py").write_text(OPS.replace("min(v, amount)", "min(v, amount // 2)"))  # imported: it counts
    _new_process()
    after = plugin_version(registry, "transform", f"{name}-darken")
    assert after != before and after.split("+")[0] == before.split("+")[0]
    assert plugin_version(registry, "transform", "jpeg") == plugin_version(registry, "transform", "jpeg")


def test_editing_a_plugin_recomputes_its_cells_and_keeps_the_others_cached(editable, tmp_path):
    name, folder, registry = editable
    toml = tiny_benchmark(images=20, extra=f'[[transforms]]\nplugin = "{name}-darken"\n')
    first = run_tiny(tmp_path, toml, registry=registry)
    assert not first.failed, [o.error for o in first.failed]
    (folder / "ops.py").write_text(OPS.replace("min(v, amount)", "min(v, amount // 2)"))
    _new_process()
    importlib.reload(sys.modules[f"{name}.ops"])
    second = run_tiny(tmp_path, toml, registry=registry)
    redone = {o.cell.title for o in second.outcomes if not o.cached}
    darkened = {o.cell.title for o in second.outcomes if o.cell.stage == "predict" and "darken" in o.cell.title}
    assert darkened and darkened <= redone  # the edited operation's predictions, not its stale ones
    assert not any(o.cell.stage == "predict" and "jpeg" in o.cell.title for o in second.outcomes if not o.cached)
    assert all(o.cached for o in second.outcomes if o.cell.stage in ("clean", "attack", "split"))
