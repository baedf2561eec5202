"""The docs that are generated from the code, or that must name what the code defines, are current."""

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_hookspec_is_documented_in_the_plugin_guide():
    from advbench import hookspecs

    guide = (DOCS / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("advbench_register_")]
    assert len(hooks) == 7 and all(h in guide for h in hooks)


@pytest.mark.parametrize("page", ["configuration", "cli"])
def test_generated_reference_pages_are_up_to_date(page):
    from advbench.docgen import PAGES

    committed = (DOCS / f"{page}.md").read_text()
    assert committed == PAGES[page](), f"stale: run python -m advbench.docgen {page} > docs/{page}.md"


def test_every_local_link_in_the_docs_and_readme_resolves():
    import re

    pages = [*DOCS.glob("*.md"), DOCS.parent / "README.md"]
    broken = [f"{page.name}: {target}" for page in pages
              for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text())
              if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()]
    assert broken == []


def test_the_site_builds_with_every_link_resolved(tmp_path):
    """mkdocs build --strict: a link that works on GitHub but not in the built site (a file
    outside docs/) fails the build; three did."""
    import shutil
    import subprocess
    import sys

    pytest.importorskip("mkdocs", reason='needs mkdocs: pip install -e ".[docs]"')
    root = DOCS.parent
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(root / "mkdocs.yml", tmp_path)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("name", ["results.db", "results.db-wal", "results.db.lock", "report.html"])
def test_what_a_run_leaves_in_the_checkout_is_ignored_by_git(name):
    """A run in the checkout leaves the store, its WAL files and its migration lock file."""
    import shutil
    import subprocess

    root = DOCS.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", name], cwd=root).returncode == 0, name
