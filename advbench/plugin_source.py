"""A plugin's source fingerprint, part of the version its cache keys carry.

A package version changes when a release does; the code of an editable install (``pip install
-e``, every plugin under development, the built-ins of a checkout) changes without it, and a
cache keyed by version alone served the results of the old code. So the version of a plugin
also names a hash of its code: the module that registered it and the modules of the spec's
callables, with every module of the same top-level package they import, transitively (read
from their ``import`` statements). An edit to one attack recomputes the cells that attack
determines, not the model's. The core (``advbench``) is not followed: its own version and
artefact schema key what it computes.

We hash rather than warn: a warning is easy to miss and the stale numbers it would warn about
are what a benchmark must never serve. The price is a recompute after an edit that changes no
result (a comment); a wheel and an editable install of the same code hash alike.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from functools import cache
from pathlib import Path
from typing import Any

CORE = "advbench"


def fingerprint(spec: Any, registering_module: str = "") -> str:
    """A short hash of the code behind ``spec`` ("" when none of it is in a file)."""
    roots = {registering_module} | {m for m in (_module_of(v) for v in vars(spec).values()) if m}
    roots.add(getattr(getattr(spec, "params", None), "__module__", "") or "")
    return _fingerprint(frozenset(r for r in roots if r and r.split(".")[0] != CORE))


def _module_of(value: Any) -> str:
    return getattr(value, "__module__", "") if callable(value) and not isinstance(value, type) else ""


@cache
def _fingerprint(roots: frozenset[str]) -> str:
    files = {}
    for root in roots:
        files.update(_closure(root))
    if not files:
        return ""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()[:12]


@cache
def _closure(module: str) -> dict[str, bytes]:
    """Module name -> source of ``module`` and of every module of its top-level package it
    imports, directly or not."""
    package = module.split(".")[0]
    found: dict[str, bytes] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = _file_of(name)
        if path is None:
            continue
        source = path.read_bytes()
        found[name] = source
        todo += [m for m in _imports(name, path, source) if m.split(".")[0] == package and m not in found]
    return found


def _file_of(name: str) -> Path | None:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if file is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        file = spec.origin if spec is not None and spec.has_location else None
    return Path(file) if file and str(file).endswith(".py") and Path(file).is_file() else None


def _imports(name: str, path: Path, source: bytes) -> list[str]:
    """The module names ``source`` imports (``from a import b`` may name the module ``a.b``)."""
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError:
        return []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if n]
