"""Text tables and colour for the terminal report: box-drawn columns, cells wrapped to the
width, ANSI colour only when asked.

This is the part of rich the terminal report used. It is its own small module because the
terminal report is printed at the end of every ``run``, and importing ``rich.console`` and
``rich.table`` was ~45 ms there, more than twice a bare Python's start (``python -X importtime``
on this project's 2-CPU machines; a one-run campaign took 17.6x a bare ``python -c pass``).
rich stays for what only a terminal shows: the live progress display, ``doctor``, ``sweep``.

    table = Table("title")
    table.add_column("Runs", justify="right")
    table.add_row(Styled("12.5% [3.1-40%]", "red"))
    text = table.render(width=100, color=False)
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Styled", "Table", "paint", "plain"]

#: ANSI SGR codes of the styles the reports use ("bold red": both).
_SGR = {"bold": "1", "italic": "3", "red": "31", "green": "32", "yellow": "33"}


@dataclass(frozen=True)
class Styled:
    """Text shown in a style (see :data:`_SGR`) when colour is on."""

    text: str
    style: str = ""


Cell = str | Styled


def paint(text: str, style: str, color: bool) -> str:
    """``text`` in ``style`` (ANSI escapes) when ``color``, else as it is."""
    if not color or not style or not text:
        return text
    codes = ";".join(_SGR[word] for word in style.split())
    return f"\x1b[{codes}m{text}\x1b[0m"


def plain(cell: Cell) -> str:
    return cell.text if isinstance(cell, Styled) else cell


@dataclass
class _Column:
    header: str
    justify: str  # "left" or "right"
    style: str


@dataclass
class Table:
    """Columns of cells under a title, drawn with box characters (rich's default look)."""

    title: str = ""
    columns: list[_Column] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)

    def add_column(self, header: str, justify: str = "left", style: str = "") -> None:
        if justify not in ("left", "right"):
            raise ValueError(f"justify must be 'left' or 'right', not {justify!r}")
        self.columns.append(_Column(header, justify, style))

    def add_row(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))

    def widths(self, width: int) -> list[int]:
        """Each column's text width: its longest line, the widest columns narrowed (down to
        their longest word, then further) until the table fits ``width`` characters."""
        natural = [max(len(line) for text in (c.header, *(plain(r[i]) for r in self.rows))
                       for line in (text.splitlines() or [""]))
                   for i, c in enumerate(self.columns)]
        room = width - (3 * len(self.columns) + 1)  # "│ " + " │ " between + " │"
        widths = list(natural)
        floors = [max([len(c.header), *(len(word) for r in self.rows
                                         for word in plain(r[i]).split())], default=1)
                  for i, c in enumerate(self.columns)]
        for floor in (floors, [1] * len(widths)):  # keep whole words first, then cut them
            while sum(widths) > room:
                i = max(range(len(widths)), key=lambda j: (widths[j] - floor[j], widths[j]))
                if widths[i] <= floor[i]:
                    break
                widths[i] -= 1
        return widths

    def render(self, width: int = 140, color: bool = False) -> str:
        widths = self.widths(width)
        out = [paint(self.title, "italic", color)] if self.title else []
        out.append("┏" + "┳".join("━" * (w + 2) for w in widths) + "┓")
        out += self._lines([c.header for c in self.columns], widths, "┃", "bold", color)
        out.append("┡" + "╇".join("━" * (w + 2) for w in widths) + "┩")
        for row in self.rows:
            out += self._lines(row, widths, "│", "", color)
        out.append("└" + "┴".join("─" * (w + 2) for w in widths) + "┘")
        return "\n".join(out) + "\n"

    def _lines(self, cells: Sequence[Cell], widths: list[int], bar: str, header_style: str,
               color: bool) -> list[str]:
        wrapped = [_wrap(plain(cell), w) for cell, w in zip(cells, widths, strict=True)]
        height = max(len(lines) for lines in wrapped)
        out = []
        for n in range(height):
            parts = []
            for column, cell, lines, w in zip(self.columns, cells, wrapped, widths, strict=True):
                text = lines[n] if n < len(lines) else ""
                padded = text.rjust(w) if column.justify == "right" else text.ljust(w)
                style = header_style or (cell.style if isinstance(cell, Styled) else column.style)
                # padding stays unpainted, as rich leaves it
                lead, core, trail = _split_padding(padded)
                parts.append(lead + paint(core, style, color) + trail)
            out.append(f"{bar} " + f" {bar} ".join(parts) + f" {bar}")
        return out


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width, break_long_words=True,
                               break_on_hyphens=False) or [""]
    return lines


def _split_padding(text: str) -> tuple[str, str, str]:
    core = text.strip(" ")
    if not core:
        return text, "", ""
    start = text.index(core)
    return text[:start], core, text[start + len(core):]
