"""Plugin discovery through the ``advbench`` entry-point group, and lookup by kind and name.

Built-in plugins are found the same way as third-party ones: each entry point names a module
implementing hooks from :mod:`advbench.hookspecs`. We iterate the entry points ourselves
because ``PluginManager.load_setuptools_entrypoints`` silently skips a name already taken.

Environment switches:
- ``ADVBENCH_LOAD_PLUGINS``: comma-separated distribution names to load (others are ignored);
  empty string loads none.
- ``ADVBENCH_TRACE_HOOKS=1``: print every hook call (pluggy tracing) to stderr.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

import pluggy

from advbench import API_VERSION, hookspecs
from advbench.errors import PluginError
from advbench.specs import KINDS, SPEC_TYPES, PluginSpec

ENTRY_POINT_GROUP = "advbench"


@dataclass(frozen=True)
class Registered:
    spec: PluginSpec
    package: str  # distribution that registered it
    module: str


class Registry:
    """Every discovered plugin, by kind and name.

    ``sources`` names the ``(module, package)`` pairs it was built from, so another process (a
    Ray worker) can build the same registry with :func:`registry_from_sources`."""

    def __init__(self, entries: Iterable[Registered] = (), sources: tuple[tuple[str, str], ...] = ()):
        self.sources = sources
        self._by_kind: dict[str, dict[str, Registered]] = {k: {} for k in KINDS}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Registered) -> None:
        kind = entry.spec.kind
        taken = self._by_kind[kind].get(entry.spec.name)
        if taken is not None:
            raise PluginError(
                f"two {kind} plugins are named {entry.spec.name!r}: one from package "
                f"{taken.package!r} ({taken.module}), one from package {entry.package!r} "
                f"({entry.module}); uninstall one or set ADVBENCH_LOAD_PLUGINS"
            )
        self._by_kind[kind][entry.spec.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def entries(self, kind: str | None = None) -> list[Registered]:
        kinds = [kind] if kind else list(KINDS)
        return [self._by_kind[k][n] for k in kinds for n in sorted(self._by_kind[k])]

    def find(self, kind: str, name: str) -> Registered | None:
        return self._by_kind[kind].get(name)

    def get(self, kind: str, name: str) -> PluginSpec:
        entry = self.find(kind, name)
        if entry is None:
            raise PluginError(unknown_plugin_message(kind, name, self.names(kind)))
        return entry.spec

    def package_of(self, kind: str, name: str) -> str:
        entry = self.find(kind, name)
        return entry.package if entry else ""


def unknown_plugin_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {kind} plugin {name!r}; {hint}valid: {', '.join(valid) or '(none installed)'}"


def _check_api(module: ModuleType, package: str) -> None:
    declared = str(getattr(module, "ADVBENCH_API", API_VERSION))
    if declared.split(".")[0] != API_VERSION.split(".")[0]:
        raise PluginError(
            f"plugin module {module.__name__!r} from package {package!r} was written for "
            f"advbench plugin API {declared}, this advbench provides {API_VERSION}; "
            f"upgrade the plugin package or install a matching advbench"
        )


def _plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("advbench")
    pm.add_hookspecs(hookspecs)
    if os.environ.get("ADVBENCH_TRACE_HOOKS"):
        pm.trace.root.setwriter(lambda msg: sys.stderr.write(msg))
        pm.enable_tracing()
    return pm


def build_registry(modules: Iterable[tuple[ModuleType, str]]) -> Registry:
    """Register each ``(module, package)`` with pluggy and collect its specs."""
    pm = _plugin_manager()
    packages: dict[str, tuple[ModuleType, str]] = {}
    for module, package in modules:
        _check_api(module, package)
        if pm.is_registered(module):
            continue
        plugin_name = f"{package}:{module.__name__}"
        pm.register(module, name=plugin_name)
        packages[plugin_name] = (module, package)
    registry = Registry(sources=tuple((module.__name__, package) for module, package in packages.values()))
    for kind in KINDS:
        hook_name = hookspecs.HOOK_FOR_KIND[kind]
        for plugin_name, (module, package) in packages.items():
            others = [p for n, (p, _) in packages.items() if n != plugin_name]
            caller = pm.subset_hook_caller(hook_name, remove_plugins=others)
            caller(register=_registrar(registry, kind, package, module.__name__))
    return registry


def _registrar(registry: Registry, kind: str, package: str, module: str):
    spec_type = SPEC_TYPES[kind]

    def register(spec: PluginSpec) -> None:
        if not isinstance(spec, spec_type):
            raise PluginError(
                f"{module} (package {package!r}) registered a {type(spec).__name__} from the "
                f"{kind} hook; expected {spec_type.__name__}"
            )
        registry.add(Registered(spec=spec, package=package, module=module))

    return register


def registry_from_sources(sources: Iterable[tuple[str, str]]) -> Registry:
    """The registry built from the modules named in ``sources`` (a :attr:`Registry.sources`),
    imported by name: how a worker on another machine rebuilds the driver's registry."""
    modules = []
    for name, package in sources:
        try:
            parent = name.rpartition(".")[0]
            if parent:  # a synthetic module (advbench.testing.tiny_world_plugins) exists once its parent ran
                importlib.import_module(parent)
            module = sys.modules.get(name) or importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure names the module
            reason = (str(exc).splitlines() or [""])[0]
            raise PluginError(f"cannot import plugin module {name!r} (package {package!r}) on this machine: "
                              f"{type(exc).__name__}: {reason}; install it on every node") from exc
        modules.append((module, package))
    return build_registry(modules)


def entry_point_modules() -> list[tuple[ModuleType, str]]:
    allowed = os.environ.get("ADVBENCH_LOAD_PLUGINS")
    allowed_set = None if allowed is None else {a.strip() for a in allowed.split(",") if a.strip()}
    found = []
    for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name if e.dist else "", e.name)):
        package = ep.dist.name if ep.dist else "?"
        if allowed_set is not None and package not in allowed_set:
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin package must not hide which one it is
            raise PluginError(
                f"cannot load plugin {ep.name!r} ({ep.value}) from package {package!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        found.append((module, package))
    return found


_cached: Registry | None = None


def discover(*, refresh: bool = False) -> Registry:
    """The registry of every installed plugin (built once per process)."""
    global _cached
    if _cached is None or refresh:
        _cached = build_registry(entry_point_modules())
    return _cached
