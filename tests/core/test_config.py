from __future__ import annotations

import pytest

from advbench.config import load_benchmark, parse_benchmark
from advbench.errors import ConfigError
from advbench.testing import tiny_benchmark


def problems(text: str, registry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_benchmark(text, registry)
    return info.value.problems


def test_the_tiny_benchmark_is_valid(registry):
    bench = parse_benchmark(tiny_benchmark(), registry)
    assert [t.label for t in bench.transforms] == ["jpeg@90", "jpeg@60", "jpeg@30", "scaling@0.75", "scaling@1.25"]
    assert bench.transforms[0].params.quality == 90 and bench.transforms[0].group == "jpeg"


def test_omitted_sections_use_the_plugin_defaults(registry):
    bench = parse_benchmark('[benchmark]\nname = "x"\n', registry)
    assert len(bench.transforms) == 38
    assert {t.group for t in bench.transforms} == {"jpeg", "blur", "rotation", "scaling"}
    assert {d.plugin for d in bench.detectors} == {"svm", "random-forest", "lda", "mlp"}
    assert [d.plugin for d in bench.datasets] == ["sklearn-digits"]


def test_unknown_attack_is_one_problem_with_valid_names(registry):
    found = problems('[benchmark]\nname = "bad"\n[[attacks]]\nplugin = "no-such-attack"\n', registry)
    assert len(found) == 1
    assert found[0].startswith("attacks[0].plugin: unknown attack plugin 'no-such-attack'")
    assert "fgsm" in found[0] and "pgd" in found[0]


@pytest.mark.parametrize("section,kind", [("datasets", "dataset"), ("models", "model"), ("attacks", "attack"),
                                          ("transforms", "transform"), ("features", "feature"), ("detectors", "detector")])
def test_unknown_plugin_of_each_kind(registry, section, kind):
    found = problems(f'[benchmark]\nname = "x"\n[[{section}]]\nplugin = "nope"\n', registry)
    assert found == [found[0]] and found[0].startswith(f"{section}[0].plugin: unknown {kind} plugin 'nope'")


def test_every_problem_is_reported_at_once_with_key_paths(registry):
    text = """
[benchmark]
name = "x"
colour = "blue"
top_k = 0
[database]
split = [0.5, 0.5, 0.5]
[[attacks]]
plugin = "fgsm"
epsilonz = [0.1]
[[attacks]]
plugin = "pgd"
steps = "many"
[[detectors]]
plugin = "svm"
kernel = "cubic"
[detection]
groups = { Mine = ["nosuchgroup"] }
"""
    found = problems(text, registry)
    joined = "\n".join(found)
    assert "benchmark.colour: unknown key" in joined
    assert "benchmark.top_k:" in joined
    assert "database.split:" in joined
    assert "attacks[0].epsilonz: unknown key" in joined
    assert "attacks[1].steps:" in joined and "'many'" in joined
    assert "detectors[0].kernel:" in joined
    assert "detection.groups.Mine: unknown transform group 'nosuchgroup'" in joined
    assert len(found) >= 7


def test_duplicate_entry_names_need_distinct_labels(registry):
    found = problems('[benchmark]\nname = "x"\n[[attacks]]\nplugin = "fgsm"\n[[attacks]]\nplugin = "fgsm"\n', registry)
    assert "duplicate attack name 'fgsm'" in found[0]
    parse_benchmark('[benchmark]\nname = "x"\n[[attacks]]\nplugin = "fgsm"\n[[attacks]]\nplugin = "fgsm"\n'
                    'name = "fgsm-big"\nepsilons = [0.3]\n', registry)


def test_invalid_toml_and_missing_file(registry, tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse_benchmark("[benchmark\n", registry)
    with pytest.raises(ConfigError, match="file not found"):
        load_benchmark(tmp_path / "none.toml", registry)


def test_missing_name_and_bad_grid(registry):
    found = problems('[benchmark]\n[[transforms]]\nplugin = "jpeg"\ngrid = { quality = 5 }\n', registry)
    assert any(p.startswith("benchmark.name: required key is missing") for p in found)
    assert any(p.startswith("transforms[0].grid:") for p in found)


def test_config_hash_follows_content(registry):
    a = parse_benchmark(tiny_benchmark(), registry)
    b = parse_benchmark(tiny_benchmark() + "\n# a comment\n", registry)
    c = parse_benchmark(tiny_benchmark(attacks='plugin = "fgsm"\nepsilons = [0.2]'), registry)
    assert a.config_hash == b.config_hash != c.config_hash


def test_a_detector_search_lists_candidates_and_is_part_of_the_cell_identity(registry):
    bench = parse_benchmark(tiny_benchmark(detectors='plugin = "svm"\nkernel = "linear"\nsearch = { C = [0.1, 10] }'), registry)
    [svm] = bench.detectors
    assert [(c.C, c.kernel) for c in svm.candidates] == [(0.1, "linear"), (10.0, "linear")]
    plain = parse_benchmark(tiny_benchmark(detectors='plugin = "svm"\nkernel = "linear"'), registry).detectors[0]
    assert plain.candidates == () and "search" in svm.identity() and plain.identity() != svm.identity()


@pytest.mark.parametrize("search, message", [
    ("{ depth = [1, 2] }", "'depth' is not a parameter of 'svm'; valid: C, kernel, gamma"),
    ("{ C = 3 }", "expected a table of non-empty lists"),
    ("{ C = [-1.0] }", "detectors[0].search.C"),
])
def test_a_bad_detector_search_names_the_key(registry, search, message):
    [found] = problems(tiny_benchmark(detectors=f'plugin = "svm"\nsearch = {search}'), registry)
    assert found.startswith("detectors[0].search") and message in found


SHIPPED = ["benchmarks.toml", "benchmarks/cifar10-resnet20.toml", "benchmarks/cifar10-resnet20-beyond.toml",
           "benchmarks/cifar10-resnet20-fair.toml", "benchmarks/cifar10-resnet20-robust.toml",
           "benchmarks/imagenet-paper.toml"]


@pytest.mark.parametrize("path", SHIPPED)
def test_the_shipped_benchmark_files_are_valid(path):
    from pathlib import Path

    from advbench.registry import discover

    bench = load_benchmark(Path(__file__).resolve().parents[2] / path, discover())
    assert bench.attacks and bench.detectors and len(bench.transforms) == 38


@pytest.mark.parametrize("name", ["cifar10-resnet20-beyond.toml", "cifar10-resnet20-robust.toml"])
def test_the_beyond_benchmarks_contain_the_paper_benchmark_unchanged(name):
    # their paper leaderboard is quoted next to the base file's: the shared part must not drift
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    base = tomllib.loads((root / "cifar10-resnet20.toml").read_text())
    beyond = tomllib.loads((root / name).read_text())
    assert {**beyond["benchmark"], "name": base["benchmark"]["name"]} == base["benchmark"]
    if name == "cifar10-resnet20-beyond.toml":
        # the fair protocol's departures, and nothing else: normal images stored as adversarial ones,
        # the detection images a file range, the rest of each class a reference set
        assert beyond["database"].pop("fair_storage") is True
        assert beyond["datasets"][0].pop("limit_per_class") == 70 and beyond["datasets"][1]["skip_per_class"] == 70
        assert beyond["detection"]["references"] == {beyond["datasets"][0]["name"]: beyond["datasets"][1]["name"]}
    for key, value in base.items():
        if key == "benchmark":
            continue
        if isinstance(value, list):
            assert beyond[key][: len(value)] == value, key
        else:
            assert beyond[key] == value, key


def test_the_robust_benchmark_has_the_beyond_benchmarks_robust_entries_verbatim():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    beyond, robust = (tomllib.loads((root / name).read_text())
                      for name in ("cifar10-resnet20-beyond.toml", "cifar10-resnet20-robust.toml"))
    assert robust["robust"] and robust["robust"] == beyond["robust"]


def test_the_baselines_benchmark_is_valid_and_asks_for_the_per_attack_protocol():
    from pathlib import Path

    from advbench.registry import discover

    bench = load_benchmark(Path(__file__).resolve().parents[2] / "benchmarks/cifar10-resnet20-baselines.toml",
                           discover())
    assert "per-attack" in bench.protocols() and bench.database.fair_storage
    assert bench.reference_for(bench.datasets[0].label) is not None


def test_the_fair_storage_benchmark_is_the_paper_benchmark_with_fair_storage_only():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    base = tomllib.loads((root / "cifar10-resnet20.toml").read_text())
    fair = tomllib.loads((root / "cifar10-resnet20-fair.toml").read_text())
    assert fair["database"].pop("fair_storage") is True
    assert fair["benchmark"].pop("name") == "cifar10-resnet20-fair"
    base["benchmark"].pop("name")
    assert fair == base


@pytest.mark.parametrize("correction, message", [
    ("", "'pipeline' needs a [correction] pipeline to attack"),
    ('[correction]\npipeline = { detector = "lda", feature = "counting", group = "All" }\n',
     "'pipeline' needs a group to correct over"),
])
def test_an_adaptive_attack_on_the_pipeline_needs_one_to_attack(registry, correction, message):
    adaptive = '[[adaptive]]\nplugin = "eot-pgd"\ntargets = ["pipeline"]\n'
    found = problems(tiny_benchmark(groups='{ All = ["*"] }', extra=adaptive + correction), registry)
    assert any(p.startswith("adaptive[eot-pgd].targets: " + message) for p in found), found


def test_default_operations_takes_a_boolean_only(registry):
    found = problems(tiny_benchmark(extra="[prediction]\ndefault_operations = 1\n"), registry)
    assert any(p.startswith("prediction.default_operations") for p in found), found


ROBUST_OK = """
[[robust]]
budgets = ["8/255", 0.0078431372549, "16/255"]
targets = [{ detector = "lda", feature = "counting", group = "All" }]
[[robust.members]]
plugin = "eot-pgd"
steps = 5
per_budget = { rel_stepsize = [0.2, 0.1, 0.05] }
[[robust.members]]
plugin = "rank-eot"
name = "late"
budgets = ["16/255"]
"""


def test_a_robust_entry_parses_budgets_members_and_per_budget_parameters(registry):
    (entry,) = parse_benchmark(tiny_benchmark(extra=ROBUST_OK), registry).robust
    assert entry.label == "robust" and entry.norm == "linf"
    assert entry.budgets == (0.0078431372549, 8 / 255, 16 / 255)  # sorted; "a/b" read as a fraction
    eot, late = entry.members
    assert [p.rel_stepsize for p in eot.params] == [0.2, 0.1, 0.05] and [p.epsilon for p in eot.params] == list(entry.budgets)
    assert late.params[:2] == (None, None) and late.params[2].epsilon == 16 / 255
    assert [t.label for t in entry.targets] == ["lda/counting/All"]


@pytest.mark.parametrize("body,expected", [
    ('budgets = ["8/255"]\ntargets = ["pipeline"]\n[[robust.members]]\nplugin = "fgsm"\n',
     "robust[0].members[0].plugin: 'fgsm' is not an adaptive attack"),
    ('budgets = ["8/255"]\ntargets = [{ group = "All" }]\n[[robust.members]]\nplugin = "eot-pgd"\n',
     "robust[0].targets[0]: a robust evaluation needs a system that decides"),
    ('budgets = ["8/255", "x"]\ntargets = [{ detector = "lda", feature = "counting", group = "All" }]\n'
     '[[robust.members]]\nplugin = "eot-pgd"\n', "robust[0].budgets: expected positive numbers or fractions"),
    ('budgets = [8]\ntargets = [{ detector = "lda", feature = "counting", group = "All" }]\n'
     '[[robust.members]]\nplugin = "eot-pgd"\n', "robust[0].budgets: budget 8 is above 1"),
    ('budgets = ["8/255"]\ntargets = [{ detector = "lda", feature = "counting", group = "All" }]\n'
     '[[robust.members]]\nplugin = "eot-pgd"\nper_budget = { steps = [1, 2] }\n',
     "robust[0].members[0].per_budget: expected a table of lists with one value per budget (1)"),
    ('budgets = ["8/255"]\ntargets = [{ detector = "lda", feature = "counting", group = "All" }]\n'
     '[[robust.members]]\nplugin = "eot-pgd"\nepsilon = 0.1\n', "robust[0].members[0]: 'epsilon' is set by the entry's budgets"),
    ('budgets = ["8/255"]\ntargets = [{ detector = "lda", feature = "counting", group = "All" }]\n'
     '[[robust.members]]\nplugin = "eot-pgd-l2"\n', "robust[0].members[0].plugin: 'eot-pgd-l2' measures its budget in l2"),
    ('budgets = ["8/255"]\ntargets = ["pipeline"]\n[[robust.members]]\nplugin = "opgd"\n'
     '[correction]\npipeline = { detector = "lda", feature = "counting", group = "All" }\n',
     "robust[0].targets: no member can attack 'pipeline'"),
    ('budgets = ["8/255"]\ntargets = [{ detector = "nope", feature = "counting", group = "All" }]\n'
     '[[robust.members]]\nplugin = "eot-pgd"\n', "robust[robust].targets: unknown detector 'nope'"),
    ('budgets = ["8/255"]\ntargets = [{ detector = "lda", feature = "counting", group = "All" }]\n'
     '[[robust.members]]\nplugin = "eot-pgd"\nstepz = 3\n', "robust[0].members[0].stepz: unknown parameter of 'eot-pgd'"),
])
def test_robust_entry_problems_are_one_line_each_with_their_key(registry, body, expected):
    found = problems(tiny_benchmark(extra="[[robust]]\n" + body), registry)
    assert any(p.startswith(expected) for p in found), found

@pytest.mark.parametrize("detection, message", [
    ('protocol = "per-attack"\nper_attack_cells = { attacks = ["nope"] }', "detection.per_attack_cells.attacks[0]: unknown attack 'nope'"),
    ('protocol = "per-attack"\nper_attack_cells = { detectors = ["nope"] }', "detection.per_attack_cells.detectors[0]: unknown detector 'nope'"),
    ('references = { testing-digits = "nope" }', "detection.references.testing-digits: unknown dataset 'nope'"),
    ('references = { testing-digits = "testing-digits" }', "a dataset cannot be its own reference set"),
])
def test_per_attack_cells_and_references_name_what_exists(registry, detection, message):
    found = problems(tiny_benchmark(detection=detection), registry)
    assert any(message in p for p in found), found


def test_new_settings_left_at_their_defaults_keep_the_config_hash(registry):
    plain = parse_benchmark(tiny_benchmark(), registry)
    spelled = parse_benchmark(tiny_benchmark(detection='model_normals = "top-1"').replace(
        "[database]\n", "[database]\nfair_storage = false\n"), registry)
    fair = parse_benchmark(tiny_benchmark().replace("[database]\n", "[database]\nfair_storage = true\n"), registry)
    assert plain.config_hash == spelled.config_hash != fair.config_hash
