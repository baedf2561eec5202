"""The CLI end to end, in a subprocess where the exit code and the exact output matter."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advbench.cli import main

SMALL = """
[benchmark]
name = "cli-small"
images_per_model = 20
top_k = 2
device = "cpu"

[database]
target_shift = 3

[detection]
groups = { JPEG = ["jpeg"] }

[[datasets]]
plugin = "sklearn-digits"
size = 16

[[models]]
plugin = "digits-cnn"
size = 16
width = 8
epochs = 3

[[attacks]]
plugin = "fgsm"
epsilons = [0.05, 0.1, 0.2, 0.3]

[[transforms]]
plugin = "jpeg"
grid = { quality = [80, 40] }

[[features]]
plugin = "counting"

[[detectors]]
plugin = "lda"
"""


def advbench(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ADVBENCH_CACHE_DIR": str(cwd / "cache"), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "advbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "small.toml").write_text(SMALL)
    proc = advbench("run", "small.toml", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, proc


@pytest.mark.slow  # advbench in subprocesses
def test_run_writes_results_db_in_the_working_directory(small_run):
    cwd, proc = small_run
    assert (cwd / "results.db").exists()
    assert "0 failed" in proc.stderr


@pytest.mark.slow  # advbench in subprocesses
def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path):
    (tmp_path / "bad.toml").write_text('[benchmark]\nname = "bad"\n[[attacks]]\nplugin = "no-such-attack"\n')
    proc = advbench("run", "bad.toml", cwd=tmp_path)
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "bad.toml" in lines[0] and "attacks[0].plugin" in lines[0] and "fgsm" in lines[0]
    assert not (tmp_path / "results.db").exists()  # validation happens before any work


def test_missing_file_and_unknown_kind_exit_2(tmp_path):
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert main(["plugins", "--kind", "gizmo"]) == 2


@pytest.mark.parametrize("argv", [["run", "x.toml", "--workers", "abc"], ["report", "--no-such-option"],
                                  ["run", "x.toml", "--executor", "spark"]])
def test_usage_errors_exit_2_without_a_traceback(argv, capsys):
    assert main(argv) == 2
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out and "internal error" not in printed.err


@pytest.mark.slow  # advbench in subprocesses
def test_report_formats_parse_back(small_run):
    cwd, _ = small_run
    as_json = json.loads(advbench("report", "--format", "json", cwd=cwd).stdout)
    assert as_json[0]["columns"][:4] == ["Rank", "Detector", "Feature", "Group"]
    assert as_json[0]["rows"][0]["Detector"] == "lda"
    rows = list(csv.reader(io.StringIO(advbench("report", "--format", "csv", cwd=cwd).stdout)))
    assert rows[0][:3] == ["table", "Rank", "Detector"] and len(rows) == 2
    markdown = advbench("report", "--format", "markdown", cwd=cwd).stdout
    assert "| Rank | Detector |" in markdown
    for table in (1, 2, 3, 4):
        proc = advbench("report", "--table", str(table), "--format", "json", cwd=cwd)
        assert proc.returncode == 0 and json.loads(proc.stdout)[0]["rows"], (table, proc.stderr)


@pytest.mark.slow  # advbench in subprocesses
def test_report_without_a_store_is_a_user_error(tmp_path):
    proc = advbench("report", cwd=tmp_path)
    assert proc.returncode == 2 and "no results store" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # advbench in subprocesses
def test_plugins_json_lists_every_kind_with_parameters(tmp_path):
    proc = advbench("plugins", "--json", cwd=tmp_path)
    plugins = json.loads(proc.stdout)
    assert {p["kind"] for p in plugins} == {"dataset", "model", "attack", "transform", "feature", "detector", "corrector"}
    fgsm = next(p for p in plugins if p["name"] == "fgsm")
    assert fgsm["package"] == "advbench" and "epsilons" in fgsm["parameters"]


@pytest.mark.slow  # advbench in subprocesses
def test_missing_dataset_folder_fails_its_cell_with_exit_2(small_run, tmp_path):
    (tmp_path / "fail.toml").write_text(SMALL.replace('name = "cli-small"', 'name = "cli-fail"'))
    # an unreadable dataset folder fails the clean cell inside the run
    text = (tmp_path / "fail.toml").read_text().replace('plugin = "sklearn-digits"\nsize = 16',
                                                        'plugin = "image-folder"\nroot = "no/such/folder"')
    (tmp_path / "fail.toml").write_text(text)
    proc = advbench("run", "fail.toml", cwd=tmp_path)
    assert proc.returncode == 2 and "no/such/folder" in proc.stderr  # a user's missing folder: exit 2
    assert "Traceback" not in proc.stderr


def test_internal_error_exits_1_with_a_log(tmp_path, monkeypatch):
    import advbench.cli as cli

    def broken(*a, **k):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(cli, "load_benchmark", broken)
    monkeypatch.setenv("ADVBENCH_CACHE_DIR", str(tmp_path))
    assert main(["run", "x.toml"]) == 1
    assert any("ZeroDivisionError" in p.read_text() for p in (tmp_path / "logs").glob("crash-*.log"))


def test_help_imports_neither_torch_nor_the_store():
    """`advbench --help` stays fast (well under a second): the CLI module imports no torch,
    scikit-learn or SQLAlchemy; the commands import what they use."""
    import subprocess
    import sys

    code = ("import sys, advbench.cli; heavy = [m for m in ('torch', 'sklearn', 'sqlalchemy', 'foolbox', 'PIL') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_failed_cell_gives_exit_1_and_names_the_log(tmp_path, monkeypatch, capsys):
    import advbench.cli as cli
    from advbench.plan import Cell
    from advbench.execution.runner import CellOutcome, RunResult, Runner

    def fake_run(self, on_cell):
        cell = Cell("attack", "k", "d", "m", imageset="a")
        return RunResult(1, "sqlite://", (CellOutcome(cell, "failed", error="RuntimeError: x"),), tmp_path / "run.log")

    monkeypatch.setattr(Runner, "run_with", fake_run)
    monkeypatch.setenv("ADVBENCH_CACHE_DIR", str(tmp_path))
    (tmp_path / "ok.toml").write_text('[benchmark]\nname = "x"\n\n[database]\ntarget_shift = 3\n')
    assert main(["run", str(tmp_path / "ok.toml")]) == 1
    err = capsys.readouterr().err
    assert "failed: attack:d/m/a: RuntimeError: x" in err and "run.log" in err


# --- report, plot and export on a run with every evaluation-set cell (in process) ----------------


@pytest.fixture(scope="module")
def evaluation_store(evaluation_run):
    result, root = evaluation_run
    return str(root / "results.db"), result.run_id, root


def test_export_csv_and_parquet_load_with_pandas(evaluation_store, tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from advbench.store import open_store

    db, run_id, _ = evaluation_store
    expected = open_store(db).images(run_id)
    assert main(["export", str(run_id), "--out", str(tmp_path / "images.csv"), "--store", db]) == 0
    assert main(["export", str(run_id), "--format", "parquet", "--out", str(tmp_path / "images.pq"), "--store", db]) == 0
    assert f"({len(expected['idx'])} rows," in capsys.readouterr().err
    numeric = ("budget", "score", "decision", "label", "logit_0", "logit_1")  # empty text stays "" elsewhere
    from_csv = pd.read_csv(tmp_path / "images.csv", keep_default_na=False, na_values={c: [""] for c in numeric})
    from_parquet = pd.read_parquet(tmp_path / "images.pq")
    def values(frame, column):  # SQL NULL reads back as NaN; whole numbers as float beside NaN
        return [None if pd.isna(v) else v for v in frame[column].tolist()]

    for frame in (from_csv, from_parquet):
        assert list(frame.columns) == list(expected) and len(frame) == len(expected["idx"]) > 0
        assert frame["cell_key"].tolist() == expected["cell_key"] and frame["source"].tolist() == expected["source"]
        assert frame["y"].tolist() == expected["y"] and frame["truth"].tolist() == expected["truth"]
        for column in ("score", "decision", "label"):  # floats survive both formats exactly
            assert values(frame, column) == expected[column], column
        assert any(v is not None for v in expected["decision"]) and None in expected["label"]
        budgets = {b for b in frame["budget"] if not pd.isna(b)}
        assert budgets == {0.1, 0.3} and set(frame["stage"]) == {"detect", "score", "correct"}
        assert set(frame["holdout"]) == {"", "fgsm", "bim"} and "adaptive" in set(frame["threat"])
    assert main(["export", str(run_id), "--stage", "score", "--out", str(tmp_path / "s.csv"), "--store", db]) == 0
    assert set(pd.read_csv(tmp_path / "s.csv")["stage"]) == {"score"}


def test_export_errors_are_one_line(evaluation_store, tmp_path, capsys, monkeypatch):
    db, run_id, _ = evaluation_store
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # pyarrow not installed
    assert main(["export", str(run_id), "--out", str(tmp_path / "x.parquet"), "--store", db]) == 2
    assert main(["export", "99", "--out", str(tmp_path / "x.csv"), "--store", db]) == 2
    assert main(["export", str(run_id), "--stage", "clean", "--out", str(tmp_path / "x.csv"), "--store", db]) == 2
    assert main(["export", str(run_id), "--stage", "nope", "--out", str(tmp_path / "x.csv"), "--store", db]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and "pip install 'advbench[parquet]'" in lines[0]
    assert "no run with id 99" in lines[1] and "no per-image rows" in lines[2] and "valid: clean" in lines[3]
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_report_tables_plots_and_the_html_page_of_evaluation_sets(evaluation_store, tmp_path, capsys):
    db, _, root = evaluation_store
    for name in ("adaptive", "security", "unseen", "subset"):
        assert main(["report", "--store", db, "--table", name, "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)[0]["rows"], name
    assert main(["plot", "security", "--store", db, "--out", str(tmp_path / "security.png")]) == 0
    assert (tmp_path / "security.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["plot", "roc", "--store", db, "--out", str(tmp_path / "roc.png"),
                 "--cache-dir", str(tmp_path / "no-cache")]) == 0  # per-image rows of the store: no cache needed
    assert "artefact cache" not in capsys.readouterr().err
    page = tmp_path / "run.html"
    assert main(["report", "--store", db, "--format", "html", "--out", str(page), "--cache-dir", str(root / "cache")]) == 0
    text = page.read_text()
    for title in ("Adaptive attacks against the defense", "Security curve — fgsm-grid", "Unseen attacks",
                  "Operation subsets", "Table 1 —"):
        assert title in text, title
    assert "security — detection rate and defended-system success" in text and text.count("<figure>") == 4  # no CNN: no logits


def test_an_evaluation_table_of_a_run_without_its_cells_says_what_it_needs(tiny_run, capsys):
    _, root = tiny_run
    assert main(["report", "--store", str(root / "results.db"), "--table", "unseen"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--table unseen: this run has nothing for it" in line and "leave-one-attack-out" in line


@pytest.mark.parametrize("out, message", [("", "is a directory"), ("images.xlsx", "cannot tell the format")])
def test_export_to_a_directory_or_an_unknown_suffix_is_one_line(evaluation_store, tmp_path, capsys, out, message):
    db, run_id, _ = evaluation_store
    assert main(["export", str(run_id), "--out", str(tmp_path / out), "--store", db]) == 2
    printed = capsys.readouterr().err
    assert message in printed and "Traceback" not in printed and not list(tmp_path.glob(".*partial"))
