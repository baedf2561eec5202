"""One tiny end-to-end world, built once per session and reused by most tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from advbench.testing import registry_with, run_tiny, tiny_benchmark

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def registry():
    return registry_with()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, registry):
    """A completed tiny benchmark: (RunResult, its directory). Do not modify its files."""
    root = tmp_path_factory.mktemp("tiny-world")
    result = run_tiny(root, tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'],
                                           detectors=['plugin = "lda"', 'plugin = "svm"'],
                                           features=['plugin = "counting"', 'plugin = "differences"']),
                      registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    return result, root


def requires_shared(path: str = "") -> Path:
    target = SHARED / path
    if not target.exists():
        pytest.skip(f"needs ../shared/{path} (reference data absent in this checkout)")
    return target
