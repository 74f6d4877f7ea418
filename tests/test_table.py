"""The terminal report's tables (harness/reports/_table.py): widths, wrapping, colour."""

from __future__ import annotations

import re

import pytest
from shutdown_harness.reports._table import Styled, Table, paint

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _table() -> Table:
    table = Table("a title")
    table.add_column("Scenario")
    table.add_column("Runs", justify="right")
    table.add_column("Top signatures")
    table.add_row("concurrent_ops", "300", Styled("sigabrt:pthread_exit ×12, sigsegv:tokio ×3",
                                                   "red"))
    table.add_row("", "9", "")
    return table


def test_columns_line_up_and_numbers_are_right_justified() -> None:
    lines = _table().render(width=200).splitlines()
    assert lines[0] == "a title"
    body = lines[1:]
    assert len({len(line) for line in body}) == 1, "every line of the box is as wide"
    assert body[0].startswith("┏") and body[-1].startswith("└")
    row = next(line for line in body if "concurrent_ops" in line)
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells == ["concurrent_ops", "300", "sigabrt:pthread_exit ×12, sigsegv:tokio ×3"]
    short = next(line for line in body if line.startswith("│ ") and " 9 │" in line)
    assert short.index(" 9 │") + 2 == row.index("300 │") + 3  # right edges meet


@pytest.mark.parametrize("width", [40, 60, 80])
def test_a_narrow_terminal_wraps_the_widest_column_and_loses_no_text(width: int) -> None:
    text = _table().render(width=width)
    lines = text.splitlines()[1:]
    assert max(len(line) for line in lines) <= width
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in lines
            if line.startswith("│")]
    columns = ["".join(row[i] for row in rows).replace(" ", "") for i in range(3)]
    assert columns == ["concurrent_ops", "3009",
                       "sigabrt:pthread_exit×12,sigsegv:tokio×3"], text
    if width >= 60:  # room for every whole word: none is cut
        assert "sigabrt:pthread_exit" in text and "concurrent_ops" in text


def test_colour_only_when_asked_and_never_in_the_padding() -> None:
    assert "\x1b[" not in _table().render(width=100, color=False)
    coloured = _table().render(width=100, color=True)
    assert "\x1b[31msigabrt" in coloured and "\x1b[1mScenario\x1b[0m" in coloured
    assert _ANSI.sub("", coloured) == _table().render(width=100, color=False)
    assert paint("x", "bold red", True) == "\x1b[1;31mx\x1b[0m"
    assert paint("x", "bold red", False) == "x"


def test_a_row_must_fill_the_columns() -> None:
    table = Table()
    table.add_column("a")
    with pytest.raises(ValueError, match="2 cells for 1 columns"):
        table.add_row("x", "y")
    with pytest.raises(ValueError, match="justify"):
        table.add_column("b", justify="middle")
