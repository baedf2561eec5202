"""A whole tiny benchmark on the tiny world, with any installed plugin: its TOML, and a run of it
with its cache and store in a folder (clean selection, attack, split, predictions, features,
detectors, store) in seconds."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from advbench.config import parse_benchmark
from advbench.execution.runner import RunOptions, RunResult, Runner
from advbench.hookspecs import hookimpl
from advbench.registry import Registry, build_registry, entry_point_modules
from advbench.testing.world import tiny_world_plugins


def registry_with(*modules: ModuleType, installed: bool = True) -> Registry:
    """The installed plugins (unless ``installed=False``), the tiny world and ``modules``."""
    found = entry_point_modules() if installed else []
    return build_registry([*found, (tiny_world_plugins, "advbench.testing"),
                           *((m, getattr(m, "__package__", None) or m.__name__) for m in modules)])


def variant_module(kind: str, plugin: str, name: str, **changes) -> ModuleType:
    """A plugin module registering a copy of the installed ``kind`` plugin ``plugin`` under
    ``name`` with the spec fields in ``changes`` replaced (e.g. an attack with a budget grid)."""
    import dataclasses

    from advbench.registry import discover

    spec = dataclasses.replace(discover().get(kind, plugin), name=name, **changes)
    module = ModuleType(f"variant_{kind}_{name.replace('-', '_')}")

    def register_variant(register):
        register(spec)

    setattr(module, f"advbench_register_{kind}s", hookimpl(register_variant))
    return module


#: the tiny benchmark's own operations: three JPEG qualities and two scalings
DEFAULT_TRANSFORMS = ('plugin = "jpeg"\ngrid = { quality = [90, 60, 30] }', 'plugin = "scaling"\ngrid = { factor = [0.75, 1.25] }')


def tiny_benchmark(attacks: str | Iterable[str] = 'plugin = "fgsm"', detectors: str | Iterable[str] = 'plugin = "lda"',
                   extra: str = "", name: str = "tiny", images: int = 30,
                   features: str | Iterable[str] = 'plugin = "counting"',
                   groups: str = '{ JPEG = ["jpeg"], All = ["*"] }', detection: str = "",
                   transforms: str | Iterable[str] = (), default_transforms: bool = True) -> str:
    """TOML of a tiny benchmark on the tiny world; ``attacks``/``detectors``/``features`` are
    the bodies of one ``[[attacks]]``/``[[detectors]]``/``[[features]]`` table each (or lists of
    bodies); ``transforms`` bodies of ``[[transforms]]`` tables beside the benchmark's own three
    JPEG qualities and two scalings (``default_transforms = False``: instead of them; a
    transform's group is its plugin's name unless it sets ``group``, and the "All" group takes
    every operation); ``groups`` the [detection] groups and ``detection`` more lines of that
    section (e.g. a protocol)."""
    def tables(section: str, bodies: str | Iterable[str]) -> str:
        bodies = [bodies] if isinstance(bodies, str) else list(bodies)
        return "\n".join(f"[[{section}]]\n{textwrap.dedent(b).strip()}\n" for b in bodies)

    operations = [*(DEFAULT_TRANSFORMS if default_transforms else ()),
                  *([transforms] if isinstance(transforms, str) else transforms)]

    return f"""
[benchmark]
name = "{name}"
seed = 0
images_per_model = {images}
top_k = 2
device = "cpu"

[database]
target_shift = 3
target_threshold = 0.9
batch_size = 32

[detection]
groups = {groups}
{detection}

[[datasets]]
plugin = "testing-digits"

[[models]]
plugin = "testing-cnn"

{tables("attacks", attacks)}
{tables("transforms", operations)}
{tables("features", features)}
{tables("detectors", detectors)}
{extra}
"""


def run_tiny(tmp_path: Path, toml: str | None = None, *modules: ModuleType, fresh: bool = False,
             registry: Registry | None = None) -> RunResult:
    """Run a tiny benchmark with its cache and store under ``tmp_path``; ``modules`` are added to
    the installed plugins, or pass a ready ``registry`` (then no modules)."""
    if registry is not None and modules:
        raise TypeError("run_tiny: pass plugin modules or a registry, not both")
    registry = registry or registry_with(*modules)
    path = Path(tmp_path) / "benchmark.toml"
    path.write_text(toml or tiny_benchmark())
    bench = parse_benchmark(path.read_text(), registry, path=path)
    options = RunOptions(store=str(Path(tmp_path) / "results.db"), cache_dir=Path(tmp_path) / "cache", fresh=fresh)
    return Runner(bench, registry, options).run()
