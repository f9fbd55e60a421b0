"""Figures that tests measure, reported after the run instead of printed by the tests.

A test asks for the ``report`` fixture (``tests/conftest.py``) and calls
``report(section, line)``; the lines are kept in the session and written by
``pytest_terminal_summary`` in a section of the terminal summary titled :data:`TITLE`::

    ==================== figures ====================
    load:
      4 senders, 8 series, 384 instances in 12.3 s ...

``benchmarks/robustness_report.py`` runs the robustness tests and reads that section back
with :func:`parse_summary`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

#: ``report(section, line)``: what the ``report`` fixture gives a test.
Report = Callable[[str, str], None]
#: Title of the terminal summary section.
TITLE = "figures"


def summary_lines(records: Iterable[tuple[str, str]]) -> list[str]:
    """The section's lines: each section name once, in first-seen order, its lines indented."""
    records = list(records)
    lines: list[str] = []
    for section in dict.fromkeys(s for s, _ in records):
        lines.append(f"{section}:")
        lines += [f"  {line}" for s, line in records if s == section]
    return lines


def parse_summary(output: str) -> list[str]:
    """The non-blank lines of the figures section in a pytest terminal output (none: [])."""
    lines = output.splitlines()
    header = re.compile(rf"^=+ {re.escape(TITLE)} =+$")
    for i, line in enumerate(lines):
        if header.match(line):
            section = []
            for following in lines[i + 1:]:
                if re.match(r"^=+( .* =+)?$", following):
                    break
                if following.strip():
                    section.append(following)
            return section
    return []
