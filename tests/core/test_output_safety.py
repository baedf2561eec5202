"""What advbench prints and writes is safe for where it goes: no store password on screen, labels
escaped in Markdown, CSV cells a spreadsheet shows but never runs, and names with ``$`` or rich
markup printed as written instead of crashing a figure or the console."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import advbench.cli as cli
from advbench.redact import mask_passwords
from advbench.report import export, formats, plots
from advbench.report.safe_text import csv_cell, markdown_text
from advbench.report.tables import Estimate, Table

SCRIPT = "<script>alert(1)</script>"


def _cached_world(tiny_run, tmp_path: Path, **replace: str) -> tuple[Path, Path]:
    """The tiny run's config (with ``replace`` applied) and a copy of its cache: every cell cached."""
    _, root = tiny_run
    shutil.copytree(root / "cache", tmp_path / "cache", ignore=shutil.ignore_patterns("logs", "locks"))
    text = (root / "benchmark.toml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    config = tmp_path / "benchmark.toml"
    config.write_text(text)
    return config, tmp_path / "cache"


# --- store passwords --------------------------------------------------------------------------


@pytest.mark.parametrize("text, shown", [
    ("postgresql://user:pass@host/db", "postgresql://user:***@host/db"),
    ("-> postgresql+psycopg://u:p@ss@h:5432/db (run 1)", "-> postgresql+psycopg://u:***@h:5432/db (run 1)"),
    ("postgresql://user@host/db?password=s3cret&sslmode=require", "postgresql://user@host/db?password=***&sslmode=require"),
    ("sqlite:////tmp/results.db", "sqlite:////tmp/results.db"),
    ("http://host:8080/path", "http://host:8080/path"),
])
def test_mask_passwords(text, shown):
    assert mask_passwords(text) == shown


def test_a_store_password_is_never_printed(tiny_run, tmp_path, advbench, postgres_url):
    """The run summary printed "-> postgresql://user:pass@..." and the next: line the same."""
    config, cache = _cached_world(tiny_run, tmp_path)
    with_password = postgres_url.replace("postgres@", "postgres:s3cret-pw@", 1)  # trust auth: any password works
    assert "s3cret-pw" in with_password
    rc, out, err = advbench("run", config, "--cache-dir", cache, "--store", with_password)
    assert rc == 0, err
    assert "s3cret-pw" not in out + err
    summary = next(line for line in err.splitlines() if " cells (" in line)
    assert "-> postgresql+psycopg://postgres:***@/" in summary
    assert next(line for line in err.splitlines() if line.startswith("next:")).startswith(
        "next: advbench report --store postgresql+psycopg://postgres:***@/")


def test_a_store_password_is_not_in_error_lines(advbench, tmp_path):
    for store in ("nosuchdialect://user:s3cret-pw@host/db", "postgresql://user:s3cret-pw@host:notaport/db"):
        rc, out, err = advbench("report", "--store", store)
        assert rc == 2 and "s3cret-pw" not in out + err and "***" in err, err


# --- Markdown ---------------------------------------------------------------------------------


def test_markdown_escapes_labels():
    label = f"{SCRIPT}|x *bold* [link](javascript:alert(1))"
    table = Table(f"Table — {label}", ("Detector", f"col|{SCRIPT}"), ((label, Estimate(0.9, 0.8, 0.95, 100)),),
                  (f"note {SCRIPT}",))
    text = formats.render_markdown([table])
    assert "<script>" not in text and "&lt;script&gt;" in text
    header, rule, row = [line for line in text.splitlines() if line.startswith("|")]
    unescaped = lambda line: line.replace("\\|", "").count("|")  # noqa: E731
    assert unescaped(header) == unescaped(rule) == unescaped(row) == 3  # two columns: no row split by a label
    assert "\\[link\\](javascript:alert(1))" in row and "\\*bold\\*" in row
    assert "0.900 [0.800, 0.950]" in row  # our own numbers stay readable


def test_markdown_text_keeps_a_cell_on_one_line():
    assert markdown_text("a\nb\r\nc") == "a b c"


# --- CSV --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, written", [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+cmd", "'+cmd"), ("-2+3", "'-2+3"),
    ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("-0.5", "-0.5"), ("+1e-3", "+1e-3"), ("-", "-"), (-0.25, -0.25), (3, 3), ("fgsm", "fgsm"),
])
def test_csv_cell_neutralises_formulas_not_numbers(value, written):
    assert csv_cell(value) == written


def test_report_csv_neutralises_labels_and_keeps_negative_numbers():
    table = Table("=cmd|' /C calc'!A0", ("Attack", "=Budget", "Delta"), (("=1+1", "@x", -0.5), ("fgsm", "-3", 2)))
    rows = list(csv.reader(io.StringIO(formats.render_csv([table]))))
    assert rows[0] == ["table", "Attack", "'=Budget", "Delta"]
    assert rows[1] == ["'=cmd|' /C calc'!A0", "'=1+1", "'@x", "-0.5"]
    assert float(rows[1][3]) == -0.5 and float(rows[2][2]) == -3.0  # numbers stay numbers


def test_export_csv_neutralises_labels(tmp_path):
    columns = {"cell_key": ["k1", "k2"], "attack": ["=evil()", "fgsm"], "score": [-0.75, 0.5], "y": [1, 0]}
    path = tmp_path / "images.csv"
    assert export.write_images(columns, path, "csv") == 2
    rows = list(csv.reader(path.open()))
    assert rows[1] == ["k1", "'=evil()", "-0.75", "1"] and rows[2] == ["k2", "fgsm", "0.5", "0"]


# --- matplotlib mathtext ------------------------------------------------------------------------


def test_dollar_labels_do_not_crash_figures(tmp_path):
    """A detector named "$x^$" (not valid mathtext) crashed plot roc and the HTML report."""
    bad = "$x^$"
    fpr, tpr = np.array([0.0, 0.2, 1.0]), np.array([0.0, 0.7, 1.0])
    assert plots.roc_curves([(bad, fpr, tpr)], tmp_path / "roc.png", title=bad).stat().st_size > 0
    assert plots.heatmap(bad, [bad, "ok"], ["a$", "$b"], [[1.0, 2.0], [3.0, 4.0]], tmp_path / "h.svg").exists()
    assert plots.heatmap(bad, [bad], ["$b$"], [[1.0]], tmp_path / "h2.png").exists()


# --- rich markup ------------------------------------------------------------------------------


def test_a_benchmark_named_with_markup_is_printed_as_written(tiny_run, tmp_path, advbench, monkeypatch):
    """name = "bench[/]" ran, then crashed with rich's MarkupError printing the summary."""
    config, cache = _cached_world(tiny_run, tmp_path, **{'name = "tiny"': 'name = "bench[/]"'})
    rc, out, err = advbench("run", config, "--cache-dir", cache, "--store", tmp_path / "r.db")
    assert rc == 0, err
    assert any(line.startswith("bench[/]: ") for line in err.splitlines()), err
    rc, out, err = advbench("report", "--store", tmp_path / "r.db", "--table", "4")
    assert rc == 0 and "Table 4" in out, err

    terminal = io.StringIO()  # the live progress bar of a terminal shows cell titles too
    monkeypatch.setattr(cli, "err", Console(file=terminal, force_terminal=True, width=120))
    rc, _, _ = advbench("run", config, "--cache-dir", cache, "--store", tmp_path / "r2.db")
    assert rc == 0 and "bench[/]: " in terminal.getvalue()


def test_rich_tables_print_titles_and_columns_as_text():
    console = Console(file=io.StringIO(), width=200)
    formats.render_rich([Table("Table 4 — bench[/] / [bold]m[/bold]", ("Group", "[/]"), (("[red]x", 1),))], console)
    text = console.file.getvalue()
    assert "bench[/]" in text and "[bold]m[/bold]" in text and "┃ [/] ┃" in text and "[red]x" in text


def test_plugin_listings_print_markup_as_written(monkeypatch, capsys):
    """`advbench plugins` (and the estimate's tables) print names and summaries from plugins and
    benchmark files: the consoles parse no markup, so "[/]" in one cannot crash them."""
    from advbench.testing import registry_with, variant_module

    registry = registry_with(variant_module("attack", "fgsm", "fgsm-markup", summary="bad [/] summary [bold]"))
    monkeypatch.setattr(cli, "discover", lambda: registry)
    assert cli.main(["plugins", "--kind", "attack"]) == 0
    assert "bad [/] summary [bold]" in capsys.readouterr().out
