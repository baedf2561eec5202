"""User text (benchmark, entry and group names, plugin summaries) made safe for each output.

Labels come from benchmark files and plugins, so a report must print them as text, never run
them: Markdown would pass ``<script>`` and split a row on ``|``; a spreadsheet opening a CSV
runs a cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return as a formula
(OWASP's "CSV injection"). HTML is escaped where it is written (``html.escape``), LaTeX in
:mod:`advbench.report.formats`, rich markup by printing :class:`rich.text.Text`, and matplotlib's
mathtext is switched off for every text of a figure (:mod:`advbench.report.plots`).
"""

from __future__ import annotations

import html
import re
from typing import Any

#: characters with a meaning in Markdown (GitHub's included) inside a table cell
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
#: what a spreadsheet may take for the start of a formula
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")


def markdown_text(text: str) -> str:
    """``text`` as literal Markdown inside a table cell or a heading: HTML escaped, Markdown
    punctuation backslash-escaped, line breaks as spaces (a row is one line)."""
    text = html.escape(str(text), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def csv_cell(value: Any) -> Any:
    """A CSV field that a spreadsheet shows as text, never runs: a string starting like a
    formula gets a leading ``'`` (OWASP); numbers, and strings that are numbers ("-0.5"), are
    left as they are so that they stay numbers, and so is a lone "-" (an empty cell's mark)."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and value != "-" and not _NUMBER.match(value):
        return "'" + value
    return value
