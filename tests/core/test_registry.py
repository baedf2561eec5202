from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from advbench import hookimpl
from advbench.errors import PluginError
from advbench.registry import build_registry, discover, entry_point_modules
from advbench.specs import KINDS, DetectorSpec
from advbench.testing import registry_with, run_tiny, tiny_benchmark

EXAMPLE = Path(__file__).resolve().parents[2] / "plugins" / "example-plugin"


def test_builtins_are_found_through_the_entry_point_group():
    registry = discover(refresh=True)
    for kind in KINDS:
        assert registry.names(kind), f"no built-in {kind} plugin"
    assert {"fgsm", "pgd", "lbfgs", "jsma", "adef", "cw"} <= set(registry.names("attack"))
    assert registry.package_of("attack", "fgsm") == "advbench"
    modules = [m.__name__ for m, _ in entry_point_modules()]
    assert all(name.startswith("advbench_plugins.") for name in modules)


def _module(name: str, detector_name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def advbench_register_detectors(register):
        register(DetectorSpec(name=detector_name, summary="x", build=lambda p, s: None))

    module.advbench_register_detectors = advbench_register_detectors
    return module


def test_two_plugins_with_one_name_is_an_error_naming_both_packages():
    with pytest.raises(PluginError) as info:
        build_registry([(_module("pkg_a.det", "clash"), "pkg-a"), (_module("pkg_b.det", "clash"), "pkg-b")])
    message = str(info.value)
    assert "'clash'" in message and "pkg-a" in message and "pkg-b" in message


def test_clash_with_a_builtin_is_reported():
    with pytest.raises(PluginError, match="svm.*advbench.*my_pkg"):
        registry_with(_module("my_pkg.det", "svm"))


def test_unknown_name_suggests_close_names(registry):
    with pytest.raises(PluginError, match="did you mean 'fgsm'"):
        registry.get("attack", "fgms")


def test_incompatible_api_version_is_refused():
    module = _module("old_pkg.det", "old")
    module.ADVBENCH_API = "0.3"
    with pytest.raises(PluginError, match="old-pkg.*API 0.3"):
        build_registry([(module, "old-pkg")])


def test_a_plugin_written_for_api_1_0_still_loads_and_runs(tmp_path):
    """Contract 1.1 only added optional fields: a 1.0 detector (build(params, seed), features)
    is built and fitted as before."""
    from advbench_plugins.detectors.sklearn_detectors import SklearnDetector
    from sklearn.linear_model import LogisticRegression

    module = types.ModuleType("v1_pkg.det")
    module.ADVBENCH_API = "1.0"

    @hookimpl
    def advbench_register_detectors(register):
        register(DetectorSpec(name="logistic-1-0", summary="a 1.0-era detector",
                              build=lambda params, seed: SklearnDetector(LogisticRegression(random_state=seed))))

    module.advbench_register_detectors = advbench_register_detectors
    registry = registry_with(module)
    result = run_tiny(tmp_path, tiny_benchmark(detectors='plugin = "logistic-1-0"'), registry=registry)
    detect = [o for o in result.outcomes if o.cell.stage == "detect"]
    assert detect and all(o.status == "ok" for o in detect) and not result.failed


def test_load_plugins_switch_limits_packages(monkeypatch):
    monkeypatch.setenv("ADVBENCH_LOAD_PLUGINS", "")
    assert entry_point_modules() == []


def test_wrong_spec_type_names_the_module():
    module = types.ModuleType("bad_pkg.mod")

    @hookimpl
    def advbench_register_attacks(register):
        register(DetectorSpec(name="x", summary="x"))

    module.advbench_register_attacks = advbench_register_attacks
    with pytest.raises(PluginError, match="bad_pkg.mod.*expected AttackSpec"):
        build_registry([(module, "bad-pkg")])


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example third-party package, pip-installed (not editable) into a private folder;
    built from a copy so the build leaves nothing in the repository."""
    source = tmp_path_factory.mktemp("src") / "example-plugin"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True)
    sys.path.insert(0, str(target))
    yield source, target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("advbench_example_plugin")]:
        del sys.modules[name]


def test_third_party_package_is_discovered_and_runs_end_to_end(installed_example, tmp_path):
    registry = registry_with()
    assert registry.package_of("attack", "example-blend") == "advbench-example-plugin"
    assert registry.package_of("detector", "example-threshold") == "advbench-example-plugin"
    toml = tiny_benchmark(attacks='plugin = "example-blend"', detectors='plugin = "example-threshold"')
    result = run_tiny(tmp_path, toml, registry=registry)
    assert not result.failed, [o.error for o in result.failed]
    attack = next(o for o in result.outcomes if o.cell.stage == "attack")
    assert dict(((n, s), v) for n, s, v in attack.metrics)[("success", "")] > 0
    detect = [o for o in result.outcomes if o.cell.stage == "detect"]
    assert detect and all(dict(((n, s), v) for n, s, v in o.metrics).get(("accuracy", "")) is not None for o in detect)


def test_the_example_package_passes_its_own_tests_once_installed(installed_example):
    source, target = installed_example
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=source, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "4 passed" in done.stdout
