"""Every command of the README's tour and the quickstart's tour succeeds on the embedded default
(``benchmarks.toml``), as a newcomer would type it after ``advbench run benchmarks.toml``."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: (page, heading of the section whose first code block is the tour)
TOURS = [(ROOT / "README.md", "## A two-minute tour"), (ROOT / "docs" / "quickstart.md", "## A tour of the reports")]
#: placeholders the pages use, as the first run of a fresh store has them
PLACEHOLDERS = {"RUN": "1", "RUN_A": "1", "RUN_B": "1"}


def tour_commands(page: Path, heading: str) -> list[list[str]]:
    """The ``advbench ...`` lines of the first code block after ``heading``, comments removed."""
    text = page.read_text()
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"{page.name}: no code block after {heading!r}"
    commands = []
    for line in block.group(1).splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("advbench "):
            commands.append([PLACEHOLDERS.get(word, word) for word in shlex.split(line)[1:]])
    return commands


def test_the_tours_are_found():
    for page, heading in TOURS:
        commands = tour_commands(page, heading)
        assert len(commands) >= 15 and ["report"] in commands, page.name


@pytest.mark.slow
def test_every_tour_command_succeeds_on_the_embedded_default(tmp_path, monkeypatch, capsys):
    from advbench import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ADVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("benchmarks.toml", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    assert cli.main(["run", "benchmarks.toml"]) == 0, capsys.readouterr().err
    assert cli.main(["run", "benchmarks.toml"]) == 0  # a cached rerun: a second run to compare with
    assert "0 computed" in capsys.readouterr().err
    commands = [c for page, heading in TOURS for c in tour_commands(page, heading) if c[:1] != ["run"]]
    failed = []
    for args in dict.fromkeys(map(tuple, commands)):
        rc = cli.main(list(args))
        err = capsys.readouterr().err
        if rc != 0 or "Traceback" in err:
            failed.append(f"advbench {shlex.join(args)}: exit {rc}: {err.strip().splitlines()[-1:]}")
    assert failed == []
    for written in ("report.html", "table3.png", "run1.parquet", "table4.tex", "roc.png", "sec.png", "images.csv"):
        assert (tmp_path / written).stat().st_size > 0, written
