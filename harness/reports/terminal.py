"""Terminal report: a rich table of scenario x strategy (rates, intervals, top signatures),
the verdict sentences, gates and notes; and the `compare` view."""

from __future__ import annotations

import io
import shutil

from rich.console import Console
from rich.table import Table
from rich.text import Text
from shutdown_harness.reports._common import (
    ReportData,
    cell_label,
    gate_status,
    title,
    top_signatures_text,
    varying_pythons,
    verdicts,
)

__all__ = ["render", "render_compare", "cells_table"]


def _console(color: bool, width: int | None) -> tuple[Console, io.StringIO]:
    """A console writing to a string: the terminal's width when coloured, else 140 columns."""
    if width is None:
        width = shutil.get_terminal_size((140, 40)).columns if color else 140
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=color, no_color=not color,
                      color_system="auto" if color else None, highlight=False)
    return console, buf


def cells_table(data: ReportData) -> Table:
    agg = data.agg
    table = Table(title=title(agg), title_justify="left", show_lines=False)
    table.add_column("Scenario")
    table.add_column("Strategy")
    table.add_column("Runs", justify="right")
    table.add_column("Fail", justify="right")
    table.add_column("Failure rate [95% CI]", justify="right")
    table.add_column("Top signatures")
    pythons = varying_pythons(agg)
    if pythons:
        table.add_column("Python")
    if agg.infra:
        table.add_column("Infra", justify="right")
    if data.gates:
        table.add_column("Gates")
    previous = None
    for cell in agg.cells:
        style = "yellow" if cell.not_runnable else ("red" if cell.failures else "green")
        row: list[str | Text] = [
            cell.scenario if cell.scenario != previous else "",
            cell_label(cell, agg),
            str(cell.runs),
            str(cell.failures),
            Text(cell.rate_text(), style=style),
            top_signatures_text(cell),
        ]
        if pythons:
            row.append(", ".join(sorted(cell.pythons)))
        if agg.infra:
            row.append(str(cell.infra))
        if data.gates:
            status = gate_status(data, cell)
            row.append(Text(status, style="bold red" if status.startswith("FAIL") else "green"))
        table.add_row(*row)
        previous = cell.scenario
    return table


def _fidelity(console: Console, data: ReportData) -> None:
    """``run --warm``: each warm cell against its cold controls; a difference is loud."""
    fidelity = data.agg.fidelity
    if not fidelity:
        return
    console.print("\n[bold]Fidelity[/bold] (warm start vs cold controls, Fisher's exact test)")
    for f in fidelity:
        if f.differs:
            console.print(" [bold red]✘[/bold red] ", Text(f.sentence(), style="bold red"),
                          sep="")
        else:
            console.print(" · ", Text(f.sentence()), sep="")


def _tail(console: Console, data: ReportData) -> None:
    _fidelity(console, data)
    lines = verdicts(data.agg)
    if lines:
        console.print("\n[bold]Verdicts[/bold]")
        for cc, sentence in lines:
            mark = "[green]✔[/green]" if cc.comparison.direction == "lower" else (
                "[red]✘[/red]" if cc.comparison.direction == "higher" else "·")
            console.print(f" {mark} ", Text(sentence), sep="")
    failed = [g for g in data.gates if not g.passed]
    if data.gates:
        state = "[bold red]FAILED[/bold red]" if failed else "[green]passed[/green]"
        console.print(f"\n[bold]Gates[/bold] {state}: {len(data.gates) - len(failed)}/"
                      f"{len(data.gates)} checks pass")
        for g in failed:
            where = f"{g.cell.scenario} / {cell_label(g.cell, data.agg)}"
            console.print(" [red]✘[/red] ", Text(f"{where}: {g.message}"), sep="")
    for gate in data.unmatched_gates:
        console.print(Text(f" ! gate {gate.name} matches no cell of this campaign"),
                      style="yellow")
    if data.agg.notes:
        console.print("\n[bold]Notes[/bold]")
        for note in data.agg.notes:
            console.print(" - ", Text(note), sep="")


def render(data: ReportData, color: bool = False, width: int | None = None) -> str:
    """The terminal report as text (ANSI colors only when `color`)."""
    console, buf = _console(color, width)
    console.print(cells_table(data))
    _tail(console, data)
    return buf.getvalue()


def render_compare(data: ReportData, color: bool = False, width: int | None = None) -> str:
    """`compare`: per scenario (and load), strategies side by side, then every pair's verdict."""
    agg = data.agg
    console, buf = _console(color, width)
    groups: dict[tuple[str, str], list] = {}
    for cell in agg.cells:
        groups.setdefault((cell.scenario, cell.load_label), []).append(cell)
    for (scenario, label), cells in groups.items():
        table = Table(title=f"{scenario} — {label}", title_justify="left")
        table.add_column("", style="bold")
        for cell in cells:
            table.add_column(cell.strategy, justify="right")
        table.add_row("runs", *[str(c.runs) for c in cells])
        table.add_row("failures", *[str(c.failures) for c in cells])
        table.add_row("rate [95% CI]", *[Text(c.rate_text(), style="red" if c.failures
                                              else "green") for c in cells])
        signatures = list(dict.fromkeys(s.signature for c in cells for s in c.top_signatures()))
        for sig in signatures:
            table.add_row(sig, *[str(c.signatures[sig].count) if sig in c.signatures else "·"
                                 for c in cells])
        console.print(table)
        for cc in agg.comparisons:
            if cc.scenario == scenario and cc.load_label == label:
                console.print(" • ", Text(cc.comparison.sentence()), sep="")
        console.print()
    if not groups:
        console.print("no runs to compare")
    _fidelity(console, data)
    for note in agg.notes:
        console.print(" - ", Text(note), sep="")
    return buf.getvalue()
