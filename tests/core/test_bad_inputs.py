"""The bad-input corpus: every case is a benchmark file or a command line a user could write by
mistake, and each must exit 2 with exactly one line on stderr (no traceback) and write nothing
to the store. Cases run in this process through ``advbench.cli.main`` on the tiny world, so the
whole corpus takes seconds; config cases go through ``advbench run`` (the path that would write)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from advbench.testing import tiny_benchmark

BASE = tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "bim"\nepsilons = [0.3]\nsteps = 5'])


def swap(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def with_attack(body: str) -> str:
    return tiny_benchmark(attacks=body)


def extra(section: str) -> str:
    return BASE + "\n" + section + "\n"


#: (id, benchmark text) — one mistake each
CONFIGS = [
    # [benchmark]
    ("seed-true", swap("seed = 0", "seed = true")),
    ("seed-negative", swap("seed = 0", "seed = -1")),
    ("seed-fraction", swap("seed = 0", "seed = 1.5")),
    ("seed-string", swap("seed = 0", 'seed = "0"')),
    ("seed-beyond-numpy", swap("seed = 0", "seed = 4294967296")),
    ("top-k-true", swap("top_k = 2", "top_k = true")),
    ("top-k-zero", swap("top_k = 2", "top_k = 0")),
    ("top-k-all-classes", swap("top_k = 2", "top_k = 10")),
    ("top-k-above-classes", swap("top_k = 2", "top_k = 20")),
    ("images-zero", swap("images_per_model = 30", "images_per_model = 0")),
    ("images-true", swap("images_per_model = 30", "images_per_model = true")),
    ("images-fraction", swap("images_per_model = 30", "images_per_model = 2.5")),
    ("name-empty", swap('name = "tiny"', 'name = ""')),
    ("name-too-long", swap('name = "tiny"', f'name = "{"b" * 201}"')),
    ("name-missing", swap('name = "tiny"\n', "")),
    ("benchmark-missing", swap("[benchmark]\n", "[bench]\n")),
    ("benchmark-unknown-key", swap("seed = 0", "sede = 0")),
    ("device-number", swap('device = "cpu"', "device = 5")),
    # attack budgets
    ("epsilons-inf", with_attack('plugin = "fgsm"\nepsilons = [inf]')),
    ("epsilons-minus-inf", with_attack('plugin = "fgsm"\nepsilons = [-inf]')),
    ("epsilons-nan", with_attack('plugin = "fgsm"\nepsilons = [nan]')),
    ("epsilons-1e308", with_attack('plugin = "fgsm"\nepsilons = [1e308]')),
    ("epsilons-above-one", with_attack('plugin = "fgsm"\nepsilons = [1.5]')),
    ("epsilons-l2-above-one", with_attack('plugin = "l2-iter"\nepsilons = [3.0]')),
    ("epsilons-empty", with_attack('plugin = "fgsm"\nepsilons = []')),
    ("epsilons-negative", with_attack('plugin = "fgsm"\nepsilons = [-0.1]')),
    ("epsilons-true", with_attack('plugin = "fgsm"\nepsilons = [true]')),
    ("epsilons-string", with_attack('plugin = "fgsm"\nepsilons = "0.1"')),
    ("budgets-inf", with_attack('plugin = "fgsm"\nbudgets = [inf]')),
    ("budgets-above-one", with_attack('plugin = "fgsm"\nbudgets = [2.0]')),
    ("budgets-empty", with_attack('plugin = "fgsm"\nbudgets = []')),
    ("budgets-zero", with_attack('plugin = "fgsm"\nbudgets = [0]')),
    ("budgets-without-budget-parameter", with_attack('plugin = "spatial"\nbudgets = [0.1]')),
    ("budgets-and-epsilons", with_attack('plugin = "fgsm"\nbudgets = [0.1]\nepsilons = [0.1]')),
    ("max-norm-inf", with_attack('plugin = "deepfool"\nmax_norm = inf')),
    ("max-norm-huge", with_attack('plugin = "deepfool"\nmax_norm = 1e308')),
    # attack entries
    ("attack-unknown", with_attack('plugin = "fgsmm"')),
    ("attacks-empty", "attacks = []\n" + swap('[[attacks]]\nplugin = "fgsm"\n', "", tiny_benchmark())),
    ("attack-not-a-table", "attacks = [1]\n" + swap('[[attacks]]\nplugin = "fgsm"\n', "", tiny_benchmark())),
    ("attack-plugin-missing", with_attack('name = "x"')),
    ("attack-unknown-parameter", with_attack('plugin = "fgsm"\nepsilon = 0.1')),
    ("attack-steps-true", with_attack('plugin = "bim"\nsteps = true')),
    ("attack-steps-zero", with_attack('plugin = "bim"\nsteps = 0')),
    ("attack-duplicate-name", tiny_benchmark(attacks=['plugin = "fgsm"', 'plugin = "fgsm"'])),
    ("attack-name-too-long", with_attack(f'plugin = "fgsm"\nname = "{"a" * 201}"')),
    ("attack-evaluation-not-bool", with_attack('plugin = "fgsm"\nevaluation = "yes"')),
    # [database]
    ("threshold-zero", swap("target_threshold = 0.9", "target_threshold = 0")),
    ("threshold-above-one", swap("target_threshold = 0.9", "target_threshold = 1.5")),
    ("threshold-nan", swap("target_threshold = 0.9", "target_threshold = nan")),
    ("threshold-true", swap("target_threshold = 0.9", "target_threshold = true")),
    ("jpeg-quality-101", swap("batch_size = 32", "batch_size = 32\njpeg_quality = 101")),
    ("image-format-gif", swap("batch_size = 32", 'batch_size = 32\nimage_format = "gif"')),
    ("split-over-one", swap("batch_size = 32", "batch_size = 32\nsplit = [0.5, 0.5, 0.5]")),
    ("split-empty-share", swap("batch_size = 32", "batch_size = 32\nsplit = [1.0, 0.0, 0.0]")),
    ("attack-batch-zero", swap("batch_size = 32", "batch_size = 0")),
    ("target-shift-true", swap("target_shift = 3", "target_shift = true")),
    ("target-shift-multiple-of-classes", swap("target_shift = 3", "target_shift = 20")),
    # [prediction] and transforms
    ("backend-unknown", extra('[prediction]\nbackend = "gpu"')),
    ("default-operations-string", extra('[prediction]\ndefault_operations = "yes"')),
    ("transform-grid-not-a-table", swap("grid = { quality = [90, 60, 30] }", "grid = [90]")),
    ("transform-grid-empty-list", swap("grid = { quality = [90, 60, 30] }", "grid = { quality = [] }")),
    ("transform-unknown", swap('plugin = "jpeg"', 'plugin = "jpge"')),
    ("transform-quality-zero", swap("grid = { quality = [90, 60, 30] }", "grid = { quality = [0] }")),
    # [detection]
    ("group-unknown-transform", swap('groups = { JPEG = ["jpeg"], All = ["*"] }', 'groups = { JPEG = ["jpg"] }')),
    ("group-name-too-long", swap('groups = { JPEG = ["jpeg"], All = ["*"] }', f'groups = {{ {"G" * 201} = ["jpeg"] }}')),
    ("protocol-unknown", swap("[detection]\n", '[detection]\nprotocol = "loo"\n')),
    ("leave-one-out-one-attack", swap("[detection]\n", '[detection]\nprotocol = "leave-one-attack-out"\n',
                                      tiny_benchmark())),
    ("partition-unknown-attack", swap("[detection]\n", '[detection]\npartitions = { p = { train = ["fgsm"], '
                                                       'test = ["cw"] } }\n')),
    ("subset-search-unknown-detector", swap("[detection]\n", '[detection]\nsubset_search = [{ detector = "svm", '
                                                             'feature = "counting" }]\n')),
    # detectors, features, correction, adaptive, models
    ("detector-unknown", swap('plugin = "lda"', 'plugin = "lda2"')),
    ("detector-search-not-a-table", swap('plugin = "lda"', 'plugin = "svm"\nsearch = [1]')),
    ("detector-parameter-negative", swap('plugin = "lda"', 'plugin = "svm"\nC = -1')),
    ("feature-k-zero", swap('plugin = "counting"', 'plugin = "counting"\nk = 0')),
    ("feature-k-above-classes", swap('plugin = "counting"', 'plugin = "counting"\nk = 11')),
    ("feature-k-true", swap('plugin = "counting"', 'plugin = "counting"\nk = true')),
    ("correction-group-unknown", extra('[correction]\ngroups = ["Blur"]')),
    ("pipeline-unknown-detector", extra('[correction]\npipeline = { detector = "svm", feature = "counting", '
                                        'group = "All" }')),
    ("adaptive-not-adaptive", extra('[[adaptive]]\nplugin = "fgsm"\ntargets = [{ group = "JPEG" }]')),
    ("adaptive-no-targets", extra('[[adaptive]]\nplugin = "eot-pgd"')),
    ("adaptive-unknown-group", extra('[[adaptive]]\nplugin = "eot-pgd"\ntargets = [{ group = "Blur" }]')),
    ("model-unknown-dataset", swap('plugin = "testing-cnn"', 'plugin = "testing-cnn"\ndatasets = ["cifar"]')),
    # not TOML, not text, not a file
    ("toml-syntax", swap("seed = 0", "seed = = 0")),
    ("empty-file", ""),
]


def config_files(tmp: Path) -> dict[str, tuple[str, Path]]:
    """Cases whose file is not plain text, or is not there: id -> (what, path)."""
    binary = tmp / "binary.toml"
    binary.write_bytes(b"\x00\xff\xfe" + os.urandom(64))
    latin1 = tmp / "latin1.toml"
    latin1.write_bytes(BASE.replace('name = "tiny"', 'name = "caf\xe9"').encode("latin-1"))
    (tmp / "folder.toml").mkdir()
    return {"binary": binary, "latin-1": latin1, "missing": tmp / "missing.toml", "a-folder": tmp / "folder.toml"}


DATA = ["folder-missing", "folder-without-classes", "folder-of-junk", "checkpoint-missing",
        "checkpoint-random-bytes", "checkpoint-of-another-depth", "checkpoint-unknown-arch",
        "torchvision-weights-absent"]


def data_config(case: str, tmp: Path) -> str:
    """A benchmark whose dataset or model points at a file that is missing, unreadable or wrong."""
    import torch

    folder = tmp / "images"
    if case == "folder-without-classes":
        folder.mkdir()
    elif case == "folder-of-junk":
        for digit in range(10):
            (folder / str(digit)).mkdir(parents=True)
            (folder / str(digit) / "a.jpg").write_bytes(os.urandom(200))
    if case.startswith("folder"):
        return swap('plugin = "testing-digits"', f'plugin = "image-folder"\nroot = "{folder}"')
    checkpoint = tmp / "weights.th"
    if case == "checkpoint-random-bytes":
        checkpoint.write_bytes(b"\x13" + os.urandom(1023))
    elif case == "checkpoint-of-another-depth":
        from advbench.registry import discover

        net = discover().get("model", "cifar-resnet").architecture(
            discover().get("model", "cifar-resnet").params(depth=20)).module.net
        torch.save(net.state_dict(), checkpoint)
        return swap('plugin = "testing-cnn"', f'plugin = "cifar-resnet"\ndepth = 32\ncheckpoint = "{checkpoint}"')
    if case == "torchvision-weights-absent":  # TORCH_HOME is an empty folder (the test sets it)
        return swap('plugin = "testing-cnn"', 'plugin = "resnet18"')
    if case == "checkpoint-unknown-arch":
        return swap('plugin = "testing-cnn"', f'plugin = "checkpoint"\narch = "resnet99"\npath = "{checkpoint}"')
    return swap('plugin = "testing-cnn"', f'plugin = "cifar-resnet"\ncheckpoint = "{checkpoint}"')


#: (id, arguments) of command lines; CONFIG is a valid benchmark file, STORE and CACHE are paths
COMMANDS = [
    ("run-without-config", ["run"]),
    ("run-workers-zero", ["run", "CONFIG", "--workers", "0"]),
    ("run-max-images-zero", ["run", "CONFIG", "--max-images", "0"]),
    ("run-option-typo", ["run", "CONFIG", "--worker", "2"]),
    ("run-executor-unknown", ["run", "CONFIG", "--executor", "spark"]),
    ("run-address-without-ray", ["run", "CONFIG", "--address", "auto"]),
    ("run-store-a-folder", ["run", "CONFIG", "--store", "FOLDER"]),
    ("run-store-unknown-dialect", ["run", "CONFIG", "--store", "nosuch://x/y"]),
    ("validate-gpus-without-estimate", ["validate", "CONFIG", "--gpus", "2"]),
    ("validate-success-rate-above-one", ["validate", "CONFIG", "--estimate", "--success-rate", "2"]),
    ("validate-gpus-negative", ["validate", "CONFIG", "--estimate", "--gpus", "-1"]),
    ("validate-gpus-of-another-machine-without-its-cpus", ["validate", "CONFIG", "--estimate", "--gpus", "97"]),
    ("validate-rate-not-a-number", ["validate", "CONFIG", "--estimate", "--rate-gpu-fwd", "fast"]),
    ("report-without-store", ["report"]),
    ("report-sort-unknown", ["report", "--sort", "speed"]),
    ("report-format-unknown", ["report", "--format", "xml"]),
    ("plot-kind-unknown", ["plot", "pie"]),
    ("export-format-unknown", ["export", "1", "--out", "OUT.xyz"]),
    ("export-stage-unknown", ["export", "1", "--out", "OUT.csv", "--stage", "nope"]),
    ("export-run-not-a-number", ["export", "one", "--out", "OUT.csv"]),
    ("plugins-kind-unknown", ["plugins", "--kind", "attacks"]),
    ("cache-verify-no-cache", ["cache", "verify", "--cache-dir", "NOCACHE"]),
    ("command-unknown", ["benchmark"]),
]


def assert_refused(rc: int, out: str, err: str, tmp: Path) -> str:
    """Exit 2, one line on stderr (an error, no traceback), and no store anywhere under ``tmp``."""
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err and "\x1b" not in err
    assert not [p for p in tmp.rglob("*.db")], "a store was written"
    return lines[0]


@pytest.mark.parametrize("text", [t for _, t in CONFIGS], ids=[i for i, _ in CONFIGS])
def test_a_bad_benchmark_file_is_refused_in_one_line(advbench, tmp_path, text):
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    line = assert_refused(*advbench("run", config, "--store", tmp_path / "r.db", "--cache-dir", tmp_path / "cache"),
                          tmp_path)
    assert str(config) in line
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("case", ["binary", "latin-1", "missing", "a-folder"])
def test_a_benchmark_file_that_is_not_text_or_not_there_is_refused_in_one_line(advbench, tmp_path, case):
    config = config_files(tmp_path)[case]
    line = assert_refused(*advbench("run", config, "--store", tmp_path / "r.db"), tmp_path)
    assert str(config) in line


@pytest.mark.parametrize("case", DATA)
def test_data_and_checkpoint_errors_are_caught_by_validate_and_before_a_run(advbench, tmp_path, monkeypatch, case):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    config = tmp_path / "data.toml"
    config.write_text(data_config(case, tmp_path))
    for command in (["validate", config], ["run", config, "--store", tmp_path / "r.db"]):
        line = assert_refused(*advbench(*command), tmp_path)
        assert str(config) in line and ("datasets[image-folder]" in line or "models[" in line), line


@pytest.mark.parametrize("args", [a for _, a in COMMANDS], ids=[i for i, _ in COMMANDS])
def test_a_bad_command_line_is_refused_in_one_line(advbench, tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)  # a default results.db would be looked for here
    config = tmp_path / "ok.toml"
    config.write_text(BASE)
    (tmp_path / "folder").mkdir()
    paths = {"CONFIG": config, "FOLDER": tmp_path / "folder", "NOCACHE": tmp_path / "nocache",
             "OUT.xyz": tmp_path / "out.xyz", "OUT.csv": tmp_path / "out.csv"}
    assert_refused(*advbench(*(paths.get(a, a) for a in args)), tmp_path)


def test_the_corpus_has_at_least_seventy_cases():
    assert len(CONFIGS) + 4 + len(DATA) + len(COMMANDS) >= 70


def test_validate_names_the_label_too_long_for_the_store_and_the_limit_matches_the_store():
    from advbench.config import LABEL_MAX
    from advbench.store.models import Cell, Run

    assert Run.__table__.c.benchmark.type.length == LABEL_MAX
    assert {Cell.__table__.c[n].type.length for n in ("dataset", "model", "imageset", "entry", "family", "operation",
                                                     "feature_group", "feature", "detector")} == {LABEL_MAX}


def test_a_warning_is_one_line_on_stderr(advbench, monkeypatch):
    """A plugin's or a library's warning (e.g. the files an image folder skipped) prints as one
    line, like an error, not Python's two (file:line, then the source line)."""
    import warnings

    import advbench.cli as cli

    def warns(*args, **kwargs):
        warnings.warn("image folder /data: skipped 3 unreadable files\n(first: /data/a/x.jpg)", UserWarning)
        return 0

    monkeypatch.setattr(cli, "app", warns)
    rc, out, err = advbench("plugins")
    assert rc == 0 and err == "warning: image folder /data: skipped 3 unreadable files (first: /data/a/x.jpg)\n"


def test_an_estimate_for_another_machine_says_what_this_one_lacks_and_goes_on(advbench, tmp_path):
    """validate refuses a missing dataset root; validate --estimate (planning a machine that has
    the data) says so on one line and estimates."""
    config = tmp_path / "elsewhere.toml"
    config.write_text(swap('plugin = "testing-digits"', f'plugin = "image-folder"\nroot = "{tmp_path / "absent"}"'))
    assert_refused(*advbench("validate", config), tmp_path)
    rc, out, err = advbench("validate", config, "--estimate", "--gpus", "0", "--cpus", "2")
    assert rc == 0, err
    said = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert said == [f"warning: {config}: datasets[image-folder]: image folder not found: {tmp_path / 'absent'} "
                    "(on this machine)"]
    assert "estimate for 2 CPU core(s), no GPU" in out
