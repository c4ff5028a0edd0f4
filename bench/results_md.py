"""Writing one section of bench/RESULTS.md, for every benchmark script.

A section runs from its ``## `` heading to the next one. It is replaced where it
stands (or appended when new), every other section is left alone, and a hand-written
``### Notes (not generated)`` subsection of the old section is carried over.
"""

from __future__ import annotations

import re
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
NOTES_HEADING = "### Notes (not generated)"


def replace_section(text: str, section: str, head: str | None = None) -> str:
    """``text`` (a whole RESULTS.md) with ``section`` in place of the section headed
    ``head`` (default: the section's own first line).
    """
    head = head or section.lstrip().splitlines()[0].strip()
    m = re.search(rf"^{re.escape(head)}[ \t]*$.*?(?=^## (?!#)|\Z)", text, flags=re.M | re.S)
    if m is None:
        return text.rstrip() + "\n\n" + section.strip() + "\n"
    n = re.search(rf"^{re.escape(NOTES_HEADING)}.*?(?=^##|\Z)", m.group(0), flags=re.M | re.S)
    if n:
        section = section.rstrip() + "\n\n" + n.group(0).rstrip() + "\n"
    rest = text[m.end():]
    return text[:m.start()] + section.strip() + "\n" + ("\n" if rest else "") + rest


def write_section(section: str, head: str | None = None, path: Path = RESULTS_MD) -> None:
    """Replace (or append) ``section`` in ``path`` (see :func:`replace_section`)."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(replace_section(old, section, head))
