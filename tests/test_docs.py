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
